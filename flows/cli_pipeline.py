"""``starnet watch | serve | run | demo | nightly | retrain``: the observatory pipeline.

Without ``PREFECT_API_URL`` every command runs its flow in this process on
Prefect's embedded (ephemeral) API: nothing to set up, runs are kept in
``$PREFECT_HOME``. With a Prefect server (``deploy/README.md``), ``starnet
serve`` serves the deployments and ``starnet watch`` submits runs to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flows.provenance_records import TrainingPair
from flows.settings import SUBMIT_MODES, Settings
from flows.watcher import Watcher, emit_pair_event, matches

if TYPE_CHECKING:
    from flows.provenance import ProvenanceDB

log = logging.getLogger("starnet.pipeline")

PROCESS_DEPLOYMENT = "starnet-process-frame"


# Defaults for the embedded API when the environment says nothing: a slow or busy machine
# needs more than Prefect's 20 s to start it with a fresh PREFECT_HOME (measured: 12-70 s on
# 2 loaded cores), and an offline observatory needs no telemetry errors in every log.
PREFECT_ENV_DEFAULTS = {
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def register(sub: Any) -> None:
    for key, value in PREFECT_ENV_DEFAULTS.items():  # before prefect is imported
        os.environ.setdefault(key, value)
    w = sub.add_parser(
        "watch",
        help="process every frame that lands in incoming/; retrain on new training pairs",
        description=(
            "Watch INCOMING (default: incoming_dir) and the training folder. Local mode runs "
            "the flows in this process; deployment mode (PREFECT_API_URL set, or --submit "
            "deployment) submits runs to `starnet serve` or workers."
        ),
    )
    w.add_argument("incoming", nargs="?", help="folder to watch (default: incoming_dir)")
    w.add_argument("--out", help="output folder (default: output_dir)")
    w.add_argument("--training", help="training folder with original/ and starless/")
    w.add_argument("--submit", choices=SUBMIT_MODES, help="override prefect.submit")
    w.set_defaults(func=cmd_watch)

    s = sub.add_parser("serve", help="serve the process-frame, nightly and retrain deployments")
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("run", help="process files or folders once through the process flow")
    r.add_argument("paths", nargs="+", help="frames, or folders (searched for watch.patterns)")
    r.add_argument("--out", help="output folder (default: output_dir)")
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="write a synthetic frame into incoming/ and process it")
    d.add_argument("--size", type=int, default=512, help="frame side in px (default 512)")
    d.add_argument("--out", help="output folder (default: output_dir)")
    d.set_defaults(func=cmd_demo)

    n = sub.add_parser("nightly", help="run the nightly rerun once")
    n.add_argument("--max-frames", type=int, help="stop after this many frames")
    n.add_argument("--out", help="output folder (default: output_dir)")
    n.set_defaults(func=cmd_nightly)

    t = sub.add_parser("retrain", help="run the retrain flow once (all registered pairs)")
    t.add_argument("--original", help="register this original first (with --starless)")
    t.add_argument("--starless", help="its hand-made starless version")
    t.add_argument("--steps", type=int, help="override retrain.steps")
    t.add_argument("--force", action="store_true", help="retrain even with no new pair")
    t.set_defaults(func=cmd_retrain)


def _print_results(results: list[dict[str, Any]]) -> int:
    failed = 0
    for r in results:
        line = f"{r['status']:9s} {r['path']}"
        if r.get("error"):
            line += f"  {r['error']}"
        for kind, p in r.get("outputs", {}).items():
            line += f"\n          {kind}: {p}"
        print(line)
        failed += r["status"] == "failed"
    return 1 if failed else 0


def _frames_in(paths: list[str], settings: Settings) -> list[str]:
    found: list[str] = []
    for raw in paths:  # absolute: the paths go into run parameters and the provenance DB
        p = Path(raw).expanduser().resolve()
        if p.is_dir():
            found += [
                str(f) for f in sorted(p.rglob("*"))
                if f.is_file() and matches(f, settings.watch.patterns)
            ]  # fmt: skip
        else:
            found.append(str(p))
    return found


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import FramesFailedError, process_folder

    paths = _frames_in(args.paths, args.settings)
    if not paths:
        print(f"starnet run: no frames matching {args.settings.watch.patterns} in {args.paths}")
        return 2
    try:  # a returned Failed state raises on a direct call: the flows give back plain data
        results = cast(
            list[dict[str, Any]], process_folder(paths=paths, out_dir=args.out, config=args.config)
        )
    except FramesFailedError as e:
        results = e.results
    return _print_results(results)


def write_demo_frame(folder: Path, size_px: int, seed: int = 2) -> Path:
    """A synthetic star field (3, size, size) float32 FITS in ``folder`` (atomic write).

    Never a dense Milky Way field: there the stars touch everywhere, so the star mask
    is white all over and the enhancement has nothing to brighten. Seed 2 at the
    default 512 px is a blue reflection nebula among about 1,000 coloured stars, the
    bright ones with diffraction spikes: every product shows what it does."""
    import numpy as np
    from astropy.io import fits

    from starnet_core.synthetic import make_pair

    original, _, scene = make_pair(np.random.default_rng(seed), size_px, dense=False)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"demo_{seed}_{size_px}px.fits"
    header = fits.Header({"OBJECT": "starnet demo", "EXPTIME": 1.0})
    header["HISTORY"] = f"synthetic star field, seed {seed}, {len(scene.star_xy)} stars"
    part = out.with_name(out.name + ".part")
    fits.PrimaryHDU(original, header=header).writeto(part, overwrite=True)
    part.replace(out)
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.pipeline import FramesFailedError, process_frame

    settings = args.settings
    path = write_demo_frame(settings.resolve(settings.incoming_dir), args.size)
    print(f"wrote {path}")
    try:
        result = process_frame(path=str(path), out_dir=args.out, config=args.config)
        results = [cast(dict[str, Any], result)]
    except FramesFailedError as e:
        results = e.results
    rc = _print_results(results)
    starless = results[0].get("outputs", {}).get("starless") if results else None
    print(
        f"\nprovenance database: {settings.database_url}\n"
        f"  starnet history {starless or path}    # what made this file\n"
        "  starnet runs                            # every run, newest first\n"
        "Prefect UI: this demo used Prefect's temporary API, which stops with it. To watch\n"
        "runs in the UI: `prefect server start` (then open http://127.0.0.1:4200), and in\n"
        "another shell `export PREFECT_API_URL=http://127.0.0.1:4200/api` before\n"
        "`starnet demo` or `starnet watch` (deploy/README.md)."
    )
    return rc


def cmd_nightly(args: argparse.Namespace) -> int:
    from flows.pipeline import nightly_rerun

    counts = nightly_rerun(config=args.config, out_dir=args.out, max_frames=args.max_frames)
    print(json.dumps(counts))
    return 1 if counts.get("failed") else 0


def cmd_retrain(args: argparse.Namespace) -> int:
    if bool(args.original) != bool(args.starless):
        print("starnet retrain: --original and --starless go together", file=sys.stderr)
        return 2
    for option, raw in (("--original", args.original), ("--starless", args.starless)):
        if raw and not Path(raw).expanduser().is_file():  # before Prefect starts
            print(f"starnet retrain: {option} {raw}: no such file", file=sys.stderr)
            return 2
    if args.steps is not None and args.steps < 1:
        print(f"starnet retrain: --steps must be at least 1, got {args.steps}", file=sys.stderr)
        return 2
    from flows.provenance_records import ProvenanceError
    from flows.retraining import retrain
    from starnet_core.train import read_pair

    if args.original:  # read before it is registered: a bad pair is refused, not recorded
        try:
            read_pair(
                Path(args.original).expanduser(),
                Path(args.starless).expanduser(),
                nan_policy=args.settings.validation.nan_policy,  # as the flow reads it
                max_nonfinite_fraction=args.settings.validation.max_nonfinite_fraction,
            )
        except (OSError, ValueError) as e:
            print(f"starnet retrain: training pair refused: {e}", file=sys.stderr)
            return 2

    try:
        result = retrain(
            original=args.original, starless=args.starless, config=args.config,
            steps=args.steps, force=args.force,
        )  # fmt: skip
    except (ProvenanceError, ValueError) as e:  # bad pairs: the flow run's log has the details
        print(f"starnet retrain: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, default=str))
    return 0


# ---- serve ------------------------------------------------------------------------------------


def build_deployments(settings: Settings, config: str | None) -> list[Any]:
    """The three deployments ``starnet serve`` runs (deploy/prefect.yaml has the same for
    work pools)."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    from flows.pipeline import nightly_rerun, process_folder, process_frame
    from flows.retraining import retrain
    from flows.watcher import PAIR_EVENT, PAIR_RESOURCE_PREFIX

    params = {"config": str(Path(config).resolve())} if config else {}
    p = settings.prefect
    return [
        process_frame.to_deployment(name=PROCESS_DEPLOYMENT, parameters=params, tags=["starnet"]),
        process_folder.to_deployment(
            name="starnet-process-folder", parameters=params, tags=["starnet"]
        ),
        nightly_rerun.to_deployment(
            name="starnet-nightly",
            schedules=[Cron(p.nightly_cron, timezone=p.timezone)],
            parameters=params,
            tags=["starnet"],
        ),
        retrain.to_deployment(
            name="starnet-retrain",
            parameters=params,
            concurrency_limit=1,
            tags=["starnet"],
            triggers=[
                DeploymentEventTrigger(
                    expect={PAIR_EVENT},
                    match={"prefect.resource.id": f"{PAIR_RESOURCE_PREFIX}*"},
                    parameters={
                        "original": "{{ event.payload.original }}",
                        "starless": "{{ event.payload.starless }}",
                    },
                )
            ],
        ),
    ]


def end_gone_runs(db: ProvenanceDB, who: str) -> None:
    """End the runs left ``running`` by a process of this host that is gone (a ``starnet
    serve`` stopped with its flow runs, a killed worker): at a start, nothing of this
    host's earlier processes is still computing them."""
    for run in db.end_gone_runs():
        log.warning(
            "%s: run %s (%s) left running: %s", who, run.run_key[:12],
            Path(run.frame_path).name, run.error,
        )  # fmt: skip


# After a stop signal, how long `starnet serve` gives its flow runs to record their frames
# interrupted before Prefect's runner stops (and kills what is left).
SERVE_STOP_GRACE_S = 20.0


def _exited(pid: int) -> bool:
    """Whether the process ``pid`` has ended (gone, or a zombie not reaped yet)."""
    from flows.provenance import proc_stat

    try:
        stat = proc_stat(pid)
    except (OSError, ValueError, IndexError):  # /proc cannot tell: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return stat is None or stat[0] in ("Z", "X", "x")


def _child_pids() -> list[int]:
    """This process's child processes (Linux: ``/proc/self/task/*/children``); none
    where that cannot be read."""
    pids: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/self/task/{task}/children", encoding="ascii") as fh,
            ):
                pids.update(int(x) for x in fh.read().split())
    return sorted(pids)


def stop_flow_runs(pids: list[int], grace_s: float) -> list[int]:
    """SIGTERM to each flow-run process, then wait up to ``grace_s`` for them to end (each
    records its frame ``interrupted`` on the way out); returns the ones still running."""
    import signal
    import time

    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    left = [pid for pid in pids if not _exited(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [pid for pid in left if not _exited(pid)]
    return left


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from flows.pipeline import ensure_concurrency_limit, gpu_limit
    from flows.provenance import ProvenanceDB

    class StarnetRunner(Runner):
        """Prefect's runner, but a stop signal first lets the flow runs end: Prefect's own
        handler stops at once and kills them, so their frames stayed ``running`` in the
        provenance DB until a later start ended them as failures."""

        def handle_sigterm(self, *a: Any, **kw: Any) -> None:
            pids = _child_pids()  # the flow runs (its only child processes)
            if pids:
                log.info("stop signal: %d flow run(s) to stop first", len(pids))
                left = stop_flow_runs(pids, SERVE_STOP_GRACE_S)
                if left:
                    log.warning("flow run process(es) %s still running: stopped", left)
            super().handle_sigterm(*a, **kw)

    settings = args.settings
    end_gone_runs(ProvenanceDB.from_settings(settings), "starnet serve")
    p = settings.prefect
    ensure_concurrency_limit(gpu_limit(settings), p.gpu_slots)
    ensure_concurrency_limit(p.retrain_limit_name, 1)
    # prefect.serve(), with this runner
    runner = StarnetRunner(pause_on_shutdown=True, limit=p.serve_limit)
    deployments = build_deployments(settings, args.config)
    for deployment in deployments:
        runner.add_deployment(deployment)
    print(
        "starnet serve: " + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
        + " (Ctrl-C stops)"
    )  # fmt: skip
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as e:
        log.info("%s: stopped", type(e).__name__)
    return 0


# ---- watch ------------------------------------------------------------------------------------


def submit_mode(settings: Settings, override: str | None = None) -> str:
    """``local`` or ``deployment``: ``auto`` is deployment exactly when a Prefect API URL is
    configured (environment or profile)."""
    mode = override or settings.prefect.submit
    if mode not in SUBMIT_MODES:
        raise ValueError(f"prefect.submit: expected one of {SUBMIT_MODES}, got {mode!r}")
    if mode == "auto":
        from prefect.settings import PREFECT_API_URL

        return "deployment" if PREFECT_API_URL.value() else "local"
    return mode


def submit_frames(paths: list[Path], deployment: str, out_dir: str | None) -> list[str]:
    """One run of ``deployment`` per frame; returns the flow run ids. The idempotency key
    (path, mtime, size) makes a resubmission of the same file version the same run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    ids = []
    for p in paths:
        st = p.stat()
        params: dict[str, Any] = {"path": str(p)}
        if out_dir:
            params["out_dir"] = out_dir
        run = cast(
            FlowRun,
            run_deployment(
                deployment,
                parameters=params,
                timeout=0,
                idempotency_key=f"{p}:{st.st_mtime_ns}:{st.st_size}",
            ),
        )
        log.info("%s: submitted flow run %s", p.name, run.id)
        ids.append(str(run.id))
    return ids


def build_watcher(
    settings: Settings,
    *,
    config: str | None,
    mode: str,
    incoming: Path | None = None,
    training: Path | None = None,
    out_dir: str | None = None,
) -> Watcher:
    """The watcher of ``starnet watch``: ``mode`` ``local`` runs the flows in this process
    (frames in batches; a retrain after ``watch.retrain_after_pairs`` new pairs, blocking
    the watcher meanwhile); ``deployment`` submits frame runs and emits the pair event
    that triggers the retrain deployment."""
    from flows.provenance import ProvenanceDB

    incoming_given, training_given = incoming is not None, training is not None
    incoming = incoming or settings.resolve(settings.incoming_dir)
    training = training or settings.resolve(settings.training_dir)
    target = out_dir or str(settings.resolve(settings.output_dir))
    pending_pairs = 0

    def on_frames(paths: list[Path]) -> None:
        if mode == "deployment":
            submit_frames(paths, settings.prefect.process_deployment, out_dir)
            return
        from flows.pipeline import FramesFailedError, process_folder, process_frame

        try:
            if len(paths) == 1:
                process_frame(path=str(paths[0]), out_dir=target, config=config)
            else:
                process_folder(paths=[str(p) for p in paths], out_dir=target, config=config)
        except FramesFailedError as e:  # bad inputs: recorded in the DB, nothing to retry
            log.warning("%s", e)

    def on_pair(pair: TrainingPair, is_new: bool) -> None:
        nonlocal pending_pairs
        if not is_new:
            return
        if mode == "deployment":  # the retrain deployment's trigger takes it from here
            emit_pair_event(pair)
            return
        pending_pairs += 1
        if pending_pairs >= settings.watch.retrain_after_pairs:
            from flows.retraining import retrain

            pending_pairs = 0
            retrain(config=config)

    return Watcher(
        incoming=incoming,
        db=ProvenanceDB.from_settings(settings),
        on_frames=on_frames,
        on_pair=on_pair,
        training=training,
        patterns=tuple(settings.watch.patterns),
        stable_s=settings.watch.stable_s,
        incomplete_wait_s=settings.watch.incomplete_wait_s,
        poll_s=settings.watch.poll_s,
        exclude=(Path(target),),
        incoming_setting="starnet watch INCOMING" if incoming_given else "incoming_dir",
        training_setting="starnet watch --training" if training_given else "training_dir",
    )


def cmd_watch(args: argparse.Namespace) -> int:
    settings: Settings = args.settings
    mode = submit_mode(settings, args.submit)
    watcher = build_watcher(
        settings,
        config=args.config,
        mode=mode,
        incoming=Path(args.incoming) if args.incoming else None,
        training=Path(args.training) if args.training else None,
        out_dir=args.out,
    )
    end_gone_runs(watcher.db, "starnet watch")
    print(f"starnet watch: {watcher.incoming} ({mode} mode); Ctrl-C stops")
    watcher.run(threading.Event())  # its own SIGINT/SIGTERM handlers set it while it runs
    return 0
