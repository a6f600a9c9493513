"""Provenance sub-commands: ``db upgrade|fail-run``, ``history``, ``runs``,
``model list|promote``.

``history FILE`` answers "what made this file?" (and "what became of this input?"):
it hashes the file, so it still works after the file moved; a path that no longer
exists is looked up as recorded, and a 64-digit sha256 is taken as content.
``runs --model VERSION`` answers "which frames did model VERSION process?".
``--json`` prints the same records for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from flows.db_models import ATTEMPT_STATUSES
from flows.provenance import ProvenanceDB, ProvenanceError, as_json, safe_url
from flows.provenance_records import Frame, History, ModelVersion, Run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = subparsers.add_parser("db", help="provenance database maintenance")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser("upgrade", help="create the database or migrate it to the newest schema")
    up.set_defaults(func=cmd_db_upgrade)
    fail = db_sub.add_parser(
        "fail-run",
        help="record a run in progress whose worker is gone as failed (the nightly or the "
        "next claim then retries it)",
    )
    fail.add_argument(
        "run_key", metavar="RUN", help="its run key, or 6+ of its first digits (starnet runs)"
    )
    fail.add_argument("--reason", required=True, help="why, kept in the run's record")
    fail.add_argument(
        "--force",
        action="store_true",
        help="even when its process is alive on this host (stop that process first)",
    )
    fail.set_defaults(func=cmd_db_fail_run)

    hist = subparsers.add_parser(
        "history", help="what made this file, or what became of it (by path or sha256)"
    )
    hist.add_argument("file", metavar="FILE", help="an input or output file, or a sha256")
    hist.add_argument("--json", action="store_true", help="print JSON")
    hist.set_defaults(func=cmd_history)

    runs = subparsers.add_parser("runs", help="list processing runs, newest first")
    runs.add_argument("--status", choices=ATTEMPT_STATUSES)
    runs.add_argument("--model", metavar="VERSION", help="only runs of this model version")
    runs.add_argument(
        "--since", metavar="DATE", type=parse_since, help="YYYY-MM-DD or ISO time (UTC)"
    )
    runs.add_argument("--limit", metavar="N", type=int, default=50, help="at most N (default 50)")
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.set_defaults(func=cmd_runs)

    model = subparsers.add_parser("model", help="model versions")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    mlist = model_sub.add_parser("list", help="registered model versions")
    mlist.add_argument("--json", action="store_true", help="print JSON")
    mlist.set_defaults(func=cmd_model_list)
    promote = model_sub.add_parser(
        "promote", help="make VERSION the model in use; the previous one is retired"
    )
    promote.add_argument("version", metavar="VERSION")
    promote.set_defaults(func=cmd_model_promote)


def parse_since(text: str) -> datetime:
    """``YYYY-MM-DD`` or an ISO 8601 time; no zone means UTC."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since: expected YYYY-MM-DD or an ISO time, got {text!r}"
        ) from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _db(args: argparse.Namespace) -> ProvenanceDB:
    return ProvenanceDB.from_settings(args.settings)


def _fail(message: str) -> int:
    print(f"starnet: {message}", file=sys.stderr)
    return 1


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _size(n_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: left-aligned columns, two spaces apart."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    db = _db(args)
    revision = db.ensure_schema()  # a newer schema: one line from flows.cli naming the setting
    print(f"provenance database {safe_url(db.url)} is at schema revision {revision}")
    return 0


def cmd_db_fail_run(args: argparse.Namespace) -> int:
    """``starnet db fail-run RUN --reason TEXT``: a run left ``running`` by a worker that
    died where nothing can tell (another host, before its first heartbeat) is otherwise
    taken up again only ``database.stale_run_s`` after its last heartbeat."""
    try:
        run = _db(args).fail_run(args.run_key, args.reason, force=args.force)
    except (ProvenanceError, ValueError) as e:
        return _fail(str(e))
    last = run.attempt_log[-1] if run.attempt_log else None
    attempt = f"attempt {last.attempt} on {last.host}" if last else f"attempt {run.attempts}"
    print(
        f"run {run.run_key[:12]} ({_frame_name(run)}, model {run.model_version}): {attempt} "
        f"recorded failed: {last.error if last else run.error}"
    )
    return 0


def _frame_line(frame: Frame) -> str:
    f = frame.facts
    facts = [
        f"OBJECT {f.object_name}" if f.object_name else "",
        f"DATE-OBS {f.date_obs}" if f.date_obs else "",
        f"EXPTIME {f.exposure_s:g} s" if f.exposure_s is not None else "",
        f"FILTER {f.filter_name}" if f.filter_name else "",
        f"{f.channels}x{f.height_px}x{f.width_px}" if f.height_px else "",
    ]
    extra = ", ".join(x for x in facts if x)
    return f"{frame.path}  ({_size(frame.size_bytes)}{'; ' + extra if extra else ''})"


def _run_details(run: Run, indent: str = "  ") -> list[str]:
    took = f" ({run.duration_s:.1f} s)" if run.duration_s is not None else ""
    lines = [
        f"run       {run.run_key}  {run.status}, attempt {run.attempts}",
        f"input     {run.frame_path}",
        f"          sha256 {run.frame_sha256}",
        f"model     {run.model_version}  weights sha256 {run.weights_sha256}",
        f"params    {json.dumps(run.params, sort_keys=True)}",
        f"          hash {run.param_hash}",
        f"code      {run.code_version}   host {run.host}   device {run.device}",
    ]
    if run.flow_run_id:
        lines.append(f"flow run  {run.flow_run_id}")
    lines.append(f"when      {_when(run.started_at)} -> {_when(run.finished_at)}{took}")
    if run.timings:
        lines.append("timings   " + ", ".join(f"{k} {v:.2f} s" for k, v in run.timings.items()))
    if run.error:
        lines.append(f"error     {run.error}")
    for o in run.outputs:
        lines.append(
            f"output    {o.kind:<9} {o.path}  ({_size(o.size_bytes)}, sha256 {o.sha256[:16]})"
        )
    return [indent + line for line in lines]


def _frame_name(run: Run) -> str:
    return run.frame_path.rsplit("/", 1)[-1]


def _reason(run: Run) -> str:
    """The first line of a run's error without the input's path in front (``"<path>: "``,
    the FRAME column names it): the reason, not the start of a long absolute path."""
    line = run.error.splitlines()[0] if run.error else ""
    if line.startswith(f"{run.frame_path}: "):
        return line[len(run.frame_path) + 2 :]
    # the same file named another way (relative, through a link): its name ends the head
    head, sep, reason = line.partition(": ")
    name = _frame_name(run)
    if sep and (head == name or head.endswith((f"/{name}", f"\\{name}"))):
        return reason
    return line


def _runs_table(runs: Sequence[Run]) -> str:
    rows = [
        (
            _when(r.started_at),
            r.status,
            r.model_version,
            _frame_name(r),
            "-" if r.duration_s is None else f"{r.duration_s:.1f}",
            r.attempts,
            r.host,
            r.run_key[:12],
            _reason(r)[:50],
        )
        for r in runs
    ]
    headers = ("STARTED", "STATUS", "MODEL", "FRAME", "SECONDS", "TRY", "HOST", "RUN", "ERROR")
    return table(headers, rows)


def format_history(h: History) -> str:
    """The human-readable answer of ``starnet history``."""
    if h.role == "unknown":
        what = f"sha256 {h.sha256}" if h.sha256 else "no such file or recorded path"
        return f"{h.query}: not in the provenance database ({what})"
    out = [f"{h.query}", f"  sha256 {h.sha256}"]
    if h.note:
        out.append(f"  note: {h.note}")
    if h.produced_by is not None:
        kind: str = ""  # which of its outputs (an earlier one: superseded since)
        if h.output is not None:
            kind = h.output.kind
        else:
            kind = next((o.kind for o in h.produced_by.outputs if o.sha256 == h.sha256), kind)
        later = ""
        if h.output is not None and h.output.superseded_at is not None:
            later = f" (superseded {_when(h.output.superseded_at)} by a later run of it)"
        out.append(f"  is the {kind + ' ' if kind else ''}output of{later}:")
        out.extend(_run_details(h.produced_by, indent="    "))
    elif h.frame is not None:
        out.append(f"  is an input: {_frame_line(h.frame)}")
        out.append(
            f"  first seen {_when(h.frame.first_seen)}, last seen {_when(h.frame.last_seen)}"
        )
    if h.runs:
        out.append(f"  runs of its input ({len(h.runs)}):")
        out.extend("    " + line for line in _runs_table(h.runs).splitlines())
        if h.produced_by is None:
            for run in h.runs:
                out.append("")
                out.extend(_run_details(run, indent="    "))
    for p in h.training_pairs:
        used = ", ".join(p.used_by) or "no model yet"
        out.append(
            f"  training pair {p.id}: {p.original_path} / {p.starless_path} (used by {used})"
        )
    return "\n".join(out)


def cmd_history(args: argparse.Namespace) -> int:
    h = _db(args).history(args.file)  # a ProvenanceError is one line from flows.cli
    print(json.dumps(as_json(h), indent=2) if args.json else format_history(h))
    return 0 if h.role != "unknown" else 1


def cmd_runs(args: argparse.Namespace) -> int:
    if args.limit < 1:
        return _fail(f"--limit: expected >= 1, got {args.limit}")
    runs = _db(args).list_runs(
        status=args.status, model=args.model, since=args.since, limit=args.limit
    )
    if args.json:
        print(json.dumps(as_json(runs), indent=2))
    elif not runs:
        print("no runs match")
    else:
        print(_runs_table(runs))
    return 0


def _models_table(models: Sequence[ModelVersion]) -> str:
    rows = [
        (
            m.version,
            m.status,
            _when(m.created_at),
            m.weights_sha256[:12],
            m.parent or "-",
            len(m.training_pair_ids),
            json.dumps(m.benchmark, sort_keys=True)[:60] if m.benchmark else "-",
        )
        for m in models
    ]
    headers = ("VERSION", "STATUS", "CREATED", "WEIGHTS", "PARENT", "PAIRS", "BENCHMARK")
    return table(headers, rows)


def cmd_model_list(args: argparse.Namespace) -> int:
    models = _db(args).list_models()
    if args.json:
        print(json.dumps(as_json(models), indent=2))
    elif not models:
        print("no model versions registered")
    else:
        print(_models_table(models))
    return 0


def cmd_model_promote(args: argparse.Namespace) -> int:
    db = _db(args)
    before = db.promoted_model()
    wanted = db.get_model(args.version)
    path = wanted.config.get("weights_path") if wanted is not None else None
    if wanted is not None and not (path and Path(str(path)).is_file()):
        # the pipeline could not run it (it stops rather than run another model instead)
        where = f"its weights file {path} is not here" if path else "no weights file recorded"
        return _fail(f"model {args.version}: {where}; the pipeline could not run it")
    try:
        model = db.promote(args.version)
    except ProvenanceError as e:
        return _fail(str(e))
    retired = f"; {before.version} retired" if before and before.version != model.version else ""
    print(f"model {model.version} promoted{retired}")
    return 0
