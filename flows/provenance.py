"""The provenance database: which input, model, parameters, code, host and flow run made a file.

Use from a flow (one short session per call; the engine is cached per URL)::

    db = ProvenanceDB.from_settings(settings)       # SQLite in data_dir unless configured
    frame = db.register_frame(path, header)          # content-addressed, idempotent
    claim = db.claim_run(frame.sha256, card.version, card.sha256, params, device="cuda:0",
                         flow_run_id=str(flow_run.id))
    if not claim.owned:
        return claim.state                           # done / busy / exhausted
    try:
        ...                                          # process; write outputs with
        rec = claim.record(timings)                  # rec.to_header_cards(), rec.to_history()
        db.finish_run(claim.run_key, "succeeded", timings, outputs=[("starless", p), ...],
                      figures=figures, attempt=claim.run.attempts)
    except Exception as e:
        db.finish_run(claim.run_key, "failed", timings, error=f"{type(e).__name__}: {e}",
                      attempt=claim.run.attempts)
        raise

Every claim is an attempt (``Run.attempt_log``) recorded with the claiming process (pid,
start time, boot id): a claim whose process on this host is gone is taken over at once;
one on another host after ``stale_after_s``, or by hand (:meth:`ProvenanceDB.fail_run`).
A redo of a succeeded run leaves the success (status, times, outputs) as it is until it
succeeds itself; its outputs then supersede the earlier ones, which stay on record.

The schema is created and migrated (Alembic, ``flows/migrations``) on first use.
SQLite runs in WAL mode with a busy timeout, and every writing transaction starts
with ``BEGIN IMMEDIATE`` so concurrent writers queue instead of failing; on
PostgreSQL the claim relies on the unique ``run_key`` and a row lock.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import socket
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from sqlalchemy import case, exists, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, selectinload

from flows.db_engine import (
    alembic_config,
    dispose_engines,
    get_engine,
    is_ready,
    mark_ready,
    safe_url,
)
from flows.db_models import (
    ATTEMPT_STATUSES,
    MODEL_STATUSES,
    OUTPUT_KINDS,
    FrameRow,
    ModelVersionRow,
    OutputRow,
    RunAttemptRow,
    RunRow,
    TrainingPairRow,
    run_query,
    to_frame,
    to_model,
    to_output,
    to_pair,
    to_run,
    utcnow,
)
from flows.provenance_records import (
    Attempt,
    Claim,
    ClaimState,
    Frame,
    HeaderFacts,
    History,
    ModelStatus,
    ModelVersion,
    OutputKind,
    ProvenanceError,
    ProvenanceRecord,
    Run,
    RunStatus,
    TrainingPair,
    as_json,
    canonical_params,
    check_sha256,
    is_sha256,
    make_run_key,
    param_hash,
    sha256_file,
)

if TYPE_CHECKING:
    from flows.settings import Settings

__all__ = [
    "Attempt",
    "Claim",
    "Frame",
    "HeaderFacts",
    "History",
    "ModelVersion",
    "ProvenanceDB",
    "ProvenanceError",
    "ProvenanceRecord",
    "Run",
    "TrainingPair",
    "alembic_config",
    "as_json",
    "default_code_version",
    "dispose_engines",
    "make_run_key",
    "param_hash",
    "safe_url",
    "sha256_file",
]

log = logging.getLogger(__name__)

_PG_MIGRATION_LOCK = 0x57A2_0E7  # pg_advisory_xact_lock key: one migrator at a time
_ERROR_MAX_CHARS = 20_000
# interrupted attempts (a stop signal, the host restarting) are not counted toward
# max_attempts, up to this many since the run's last success: a frame whose every attempt
# is interrupted (something stops its worker each time) is still not tried forever
FREE_INTERRUPTIONS = 10


def default_code_version() -> str:
    """``starnet <package version>``, and when the package runs from a git checkout
    ``git <commit>`` with ``+dirty`` when its tracked files differ from that commit,
    e.g. ``starnet 0.1.0 git 4adb593c1f2e+dirty``. Git runs once per process; without
    git (or outside a checkout) it is the package version alone."""
    try:
        code = f"starnet {package_version('starnet')}"
    except PackageNotFoundError:
        code = "starnet unknown"
    revision = git_revision(_PACKAGE_ROOT)
    return f"{code} git {revision}" if revision else code


_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=8)
def git_revision(root: Path) -> str | None:
    """The short commit of the git checkout whose top folder is ``root``, with ``+dirty``
    when a tracked file differs from it; None when ``root`` is no checkout (an installed
    package) or git is missing or fails. Local only (``git status``), cached per root."""
    if not (root / ".git").exists():  # a file in a worktree or submodule
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_OPTIONAL_LOCKS="0", LC_ALL="C")  # never write the index: read only
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "-uno"],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.debug("git status in %s: %s", root, e)
        return None
    if done.returncode != 0:
        log.debug("git status in %s: %s", root, done.stderr.strip())
        return None
    commit, dirty = None, False
    for line in done.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.split()[2]
        elif line and not line.startswith("#"):
            dirty = True
    if commit is None or not re.fullmatch(r"[0-9a-f]{7,64}", commit):  # "(initial)": none
        return None
    return commit[:12] + ("+dirty" if dirty else "")


# ---- which process holds a claim, and whether it is gone ------------------------------------


@dataclasses.dataclass(frozen=True)
class _Process:
    pid: int
    pid_start: int | None  # clock ticks after boot (/proc/<pid>/stat field 22)
    pid_ns: int | None  # inode of /proc/<pid>/ns/pid
    boot_id: str | None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@functools.cache
def _boot_id() -> str | None:
    """This host's boot id (Linux), None elsewhere."""
    text = _read("/proc/sys/kernel/random/boot_id")
    return (text.strip() or None) if text else None


@functools.cache
def _boot_time() -> float | None:
    """When this host booted (seconds since the epoch; Linux ``/proc/stat`` btime)."""
    for line in (_read("/proc/stat") or "").splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of ``pid`` from ``/proc``; None when
    there is no such process. Raises OSError when /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and ")"
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime)


def _pid_ns(pid: int | str) -> int | None:
    try:
        link = os.readlink(f"/proc/{pid}/ns/pid")  # "pid:[4026531836]"
        return int(link[link.index("[") + 1 : -1])
    except (OSError, ValueError):
        return None


_this: dict[int, _Process] = {}


def _this_process() -> _Process:
    """This process (cached per pid: a forked child is another process)."""
    pid = os.getpid()
    me = _this.get(pid)
    if me is None:
        try:
            stat = proc_stat(pid) if os.path.isdir("/proc/self") else None
        except (OSError, ValueError, IndexError):
            stat = None
        me = _this[pid] = _Process(pid, stat[1] if stat else None, _pid_ns("self"), _boot_id())
    return me


def _process_gone(attempt: RunAttemptRow) -> str | None:
    """Why the process that claimed ``attempt`` is certainly gone, or None (alive, or not
    knowable from here). Judged only on the host that claimed it, and only in the same
    boot and pid namespace (a container has its own): a host with another boot id
    rebooted since the claim (a claim made before this boot), a pid that no longer
    exists, is a zombie, or now belongs to a process started later (reused) is gone."""
    if attempt.pid is None or attempt.host != socket.gethostname():
        return None
    me = _this_process()
    if attempt.boot_id is not None and me.boot_id is not None and attempt.boot_id != me.boot_id:
        booted = _boot_time()  # another host of the same name claimed it since?
        if booted is not None and attempt.started_at.timestamp() < booted:
            return (
                f"{attempt.host} restarted since its claim (boot id {attempt.boot_id[:8]}, "
                f"now {me.boot_id[:8]})"
            )
        return None
    if attempt.boot_id != me.boot_id or attempt.pid_ns != me.pid_ns or os.name != "posix":
        return None
    if attempt.pid == me.pid:
        return None
    if os.path.isdir("/proc/self"):
        try:
            stat = proc_stat(attempt.pid)
        except (OSError, ValueError, IndexError):
            return None
        if stat is None:
            return f"its process {attempt.pid} on {attempt.host} is gone"
        state, start = stat
        if state in ("Z", "X", "x"):
            return f"its process {attempt.pid} on {attempt.host} has exited"
        if attempt.pid_start is not None and start != attempt.pid_start:
            return f"its process {attempt.pid} on {attempt.host} is gone (the pid was reused)"
        return None
    try:
        os.kill(attempt.pid, 0)  # POSIX: signal 0 only checks that the process exists
    except ProcessLookupError:
        return f"its process {attempt.pid} on {attempt.host} is gone"
    except OSError:  # PermissionError: it exists, under another user
        return None
    return None


def _process_alive(attempt: RunAttemptRow) -> bool:
    """Whether the process that claimed ``attempt`` is known to be alive (on this host)."""
    me = _this_process()
    return (
        attempt.pid is not None
        and attempt.host == socket.gethostname()
        and attempt.boot_id == me.boot_id
        and attempt.pid_ns == me.pid_ns
        and os.name == "posix"
        and _process_gone(attempt) is None
    )


def _rebooted(attempt: RunAttemptRow) -> bool:
    """Whether the claim ``attempt`` was made on this host before its last boot (the
    attempt's process is gone because the host restarted: a power cut, a reboot), not
    killed in this boot (out of memory, SIGKILL, a crash of its own)."""
    me = _this_process()
    return (
        attempt.host == socket.gethostname()
        and attempt.boot_id is not None
        and me.boot_id is not None
        and attempt.boot_id != me.boot_id
    )


def _counted(row: RunRow) -> int:
    """How many of the run's attempts since its last success count toward ``max_attempts``:
    the newest attempt's number less its interrupted attempts (at most
    ``FREE_INTERRUPTIONS`` of them)."""
    att = _latest(row)
    interrupted = 0
    for t in reversed(row.tries):
        if t.status == "succeeded":
            break
        interrupted += t.status == "interrupted"
    return att.attempt - min(interrupted, FREE_INTERRUPTIONS)


def _identity(host: str) -> dict[str, Any]:
    """The claiming process's identity for an attempt on ``host``: this process's when it
    is this host, else nothing (a claim made on behalf of another host)."""
    if host != socket.gethostname():
        return {"pid": None, "pid_start": None, "pid_ns": None, "boot_id": None}
    me = _this_process()
    return {"pid": me.pid, "pid_start": me.pid_start, "pid_ns": me.pid_ns, "boot_id": me.boot_id}


def _new_attempt(
    number: int, status: RunStatus, now: datetime, owner: Mapping[str, Any]
) -> RunAttemptRow:
    return RunAttemptRow(
        attempt=number, status=status, started_at=now, **owner, **_identity(owner["host"])
    )


def _last_sign(att: RunAttemptRow) -> datetime:
    """When the attempt's worker last showed it was alive: its last heartbeat, or its start."""
    return att.heartbeat_at if att.heartbeat_at is not None else att.started_at


def _latest(row: RunRow) -> RunAttemptRow:
    """The run's current (newest) attempt; a run recorded without one (written before
    attempts were) gets one from its own columns."""
    if not row.tries:
        row.tries.append(
            RunAttemptRow(
                attempt=row.attempts,
                status=row.status,
                host=row.host,
                device=row.device,
                code_version=row.code_version,
                flow_run_id=row.flow_run_id,
                started_at=row.started_at,
                finished_at=row.finished_at,
                error=row.error,
            )
        )
    return row.tries[-1]


def _end_attempt(
    row: RunRow,
    att: RunAttemptRow,
    now: datetime,
    error: str,
    timings: dict[str, float] | None = None,
    status: Literal["failed", "interrupted"] = "failed",
) -> None:
    """The attempt ``att`` failed (or was ``interrupted``) with ``error``; the run is then
    ``failed`` unless it succeeded before (``timings``: a real end the worker reported,
    with its duration). An interrupted attempt's run is recorded ``failed`` and shown
    ``interrupted`` (:func:`flows.db_models.run_status`)."""
    att.status = status
    att.finished_at = now
    att.error = error[:_ERROR_MAX_CHARS]
    if row.status == "succeeded":
        return
    row.status = "failed"
    row.finished_at = now
    row.error = att.error
    if timings is not None:
        row.timings = timings
        row.duration_s = (now - att.started_at).total_seconds()


def _free_interruptions() -> Any:
    """The number of the enclosing query's run's interrupted attempts since its last
    success, at most ``FREE_INTERRUPTIONS`` (a correlated subquery; :func:`_counted`)."""
    ok, it = aliased(RunAttemptRow), aliased(RunAttemptRow)
    last_success = (
        select(func.coalesce(func.max(ok.id), 0))
        .where(ok.run_id == RunRow.id, ok.status == "succeeded")
        .correlate(RunRow)
        .scalar_subquery()
    )
    n = (
        select(func.count(it.id))
        .where(it.run_id == RunRow.id, it.status == "interrupted", it.id > last_success)
        .correlate(RunRow)
        .scalar_subquery()
    )
    return case((n > FREE_INTERRUPTIONS, FREE_INTERRUPTIONS), else_=n)


def _newest_attempt_id() -> Any:
    """The id of the newest attempt of the enclosing query's run (a correlated subquery)."""
    return (
        select(func.max(RunAttemptRow.id))
        .where(RunAttemptRow.run_id == RunRow.id)
        .correlate(RunRow)
        .scalar_subquery()
    )


def _newest_of(run_id: Any) -> Any:
    """The id of the newest attempt of the run ``run_id`` (a correlated subquery)."""
    newer = aliased(RunAttemptRow)
    return select(func.max(newer.id)).where(newer.run_id == run_id).scalar_subquery()


def _view(row: RunRow) -> Run:
    """The run as its current attempt sees it: a succeeded run with a redo going (or
    failed) shows that attempt's status, claimant, start and error."""
    run = to_run(row)
    att = row.tries[-1] if row.tries else None
    if row.status != "succeeded" or att is None or att.status == "succeeded":
        return run
    took = None if att.finished_at is None else (att.finished_at - att.started_at).total_seconds()
    return dataclasses.replace(
        run,
        status=cast(RunStatus, att.status),
        attempts=att.attempt,
        host=att.host,
        device=att.device,
        code_version=att.code_version,
        flow_run_id=att.flow_run_id,
        error=att.error,
        timings={},
        started_at=att.started_at,
        finished_at=att.finished_at,
        duration_s=took,
    )


def _aware(t: datetime | date) -> datetime:
    if not isinstance(t, datetime):
        return datetime(t.year, t.month, t.day, tzinfo=UTC)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _fit(row: type[Any], column: str, value: Any) -> Any:
    """``value`` cut to the length of ``row``'s String column (PostgreSQL refuses longer
    text, SQLite would keep it): a header's DATE-OBS of more than 32 characters."""
    length = getattr(row.__table__.c[column].type, "length", None)
    if isinstance(value, str) and length is not None and len(value) > length:
        log.debug("%s.%s: %r cut to %d characters", row.__tablename__, column, value, length)
        return value[:length]
    return value


def _json_data(value: Mapping[str, Any]) -> dict[str, Any]:
    """A model's config or benchmark as JSON data; NaN and infinity (a figure that could
    not be computed) become None."""

    def finite(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, Mapping):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [finite(x) for x in v]
        return v

    return dict(json.loads(canonical_params(finite(value))))


class ProvenanceDB:
    """The provenance database at ``url``; every method is one short transaction."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 30.0,
        stale_after_s: float = 7200.0,
        auto_migrate: bool = True,
    ) -> None:
        """``stale_after_s``: a run still ``running``/``queued`` after this long (without
        :meth:`start_run` refreshing it) is taken to be dead and may be claimed again."""
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s: expected > 0, got {stale_after_s!r}")
        self.url = url
        self.stale_after_s = float(stale_after_s)
        self.auto_migrate = auto_migrate
        self.engine = get_engine(url, busy_timeout_s)
        self._write_engine = self.engine.execution_options(starnet_write=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProvenanceDB:
        return cls(
            settings.database_url,
            busy_timeout_s=settings.database.busy_timeout_s,
            stale_after_s=settings.database.stale_run_s,
        )

    def __repr__(self) -> str:
        return f"ProvenanceDB({safe_url(self.url)!r})"

    # ---- schema -------------------------------------------------------------------------

    def ensure_schema(self) -> str:
        """Create or upgrade the schema to the newest migration; returns that revision."""
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = alembic_config()
        script = ScriptDirectory.from_config(cfg)
        head = script.get_current_head()
        with self._write_engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, one migrator
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            current = MigrationContext.configure(conn).get_current_revision()
            if current is not None and current not in {r.revision for r in script.walk_revisions()}:
                raise ProvenanceError(
                    f"database {safe_url(self.url)}: schema revision {current!r} is newer than "
                    f"this starnet knows (head {head!r}); upgrade starnet"
                )
            if current != head:
                log.info("migrating %s from %s to %s", safe_url(self.url), current, head)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        mark_ready(self.url)
        return str(head)

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def _ready(self) -> None:
        if not self.auto_migrate or is_ready(self.url):
            return
        from alembic.script import ScriptDirectory

        if (
            self.current_revision()
            != ScriptDirectory.from_config(alembic_config()).get_current_head()
        ):
            self.ensure_schema()
        mark_ready(self.url)

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        self._ready()
        bind = self._write_engine if write else self.engine
        with Session(bind, expire_on_commit=False) as s, s.begin():
            yield s

    def _insert_ignore(
        self, s: Session, row: type[Any], values: dict[str, Any], keys: list[str]
    ) -> int | None:
        """INSERT ... ON CONFLICT (keys) DO NOTHING RETURNING id: the new id, or None."""
        table = row.__table__
        insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=keys)
        return cast(int | None, s.execute(stmt.returning(table.c.id)).scalar_one_or_none())

    # ---- frames -------------------------------------------------------------------------

    def register_frame(
        self,
        path: str | Path,
        header_facts: HeaderFacts | Mapping[str, Any] | None = None,
        *,
        sha256: str | None = None,
    ) -> Frame:
        """Record an input by content (idempotent); ``path`` becomes its last-seen place.

        ``header_facts``: :class:`HeaderFacts` or a FITS-style header mapping. ``sha256``
        skips hashing when the caller has it already.
        """
        p = Path(path).expanduser().resolve()
        try:
            st = p.stat()
        except FileNotFoundError:
            raise ProvenanceError(f"path: input file {str(p)!r} does not exist") from None
        digest = check_sha256("sha256", sha256) if sha256 else sha256_file(p)
        facts = header_facts
        if facts is not None and not isinstance(facts, HeaderFacts):
            facts = HeaderFacts.from_header(facts)
        now = utcnow()
        seen = {
            "path": str(p),
            "size_bytes": st.st_size,
            "mtime": datetime.fromtimestamp(st.st_mtime, UTC),
            "last_seen": now,
        }
        with self._session(write=True) as s:
            values = {"sha256": digest, "first_seen": now, **seen}
            self._insert_ignore(s, FrameRow, values, ["sha256"])
            row = s.execute(select(FrameRow).where(FrameRow.sha256 == digest)).scalar_one()
            for k, v in seen.items():
                setattr(row, k, v)
            if facts is not None:
                for k, v in vars(facts).items():
                    if v is not None:
                        setattr(row, k, _fit(FrameRow, k, v))
            s.flush()
            return to_frame(row)

    def is_known_input(self, sha256: str) -> bool:
        digest = check_sha256("sha256", sha256)
        with self._session() as s:
            return bool(s.scalar(select(exists().where(FrameRow.sha256 == digest))))

    def get_frame(self, sha256: str) -> Frame | None:
        digest = check_sha256("sha256", sha256)
        with self._session() as s:
            row = s.scalar(select(FrameRow).where(FrameRow.sha256 == digest))
            return None if row is None else to_frame(row)

    # ---- models -------------------------------------------------------------------------

    def register_model(
        self,
        version: str,
        weights_sha256: str,
        config: Mapping[str, Any],
        *,
        parent: str | None = None,
        status: ModelStatus | None = None,
        benchmark: Mapping[str, Any] | None = None,
        training_pair_ids: Iterable[int] = (),
    ) -> ModelVersion:
        """Record a model version (idempotent for the same weights).

        ``status`` None: ``candidate`` when new, unchanged when known; ``promoted``
        promotes it (retiring the previous one). The same version with other weights
        is an error.
        """
        weights = check_sha256("weights_sha256", weights_sha256)
        if status is not None and status not in MODEL_STATUSES:
            raise ValueError(f"status: expected one of {MODEL_STATUSES}, got {status!r}")
        with self._session(write=True) as s:
            row = self._model_row(s, version, weights, config)
            if parent is not None:
                row.parent = self._require_model(s, parent, "parent")
            if benchmark is not None:
                row.benchmark = _json_data(benchmark)
            pair_ids = sorted(set(training_pair_ids))
            if pair_ids:
                pairs = s.scalars(
                    select(TrainingPairRow).where(TrainingPairRow.id.in_(pair_ids))
                ).all()
                missing = sorted(set(pair_ids) - {p.id for p in pairs})
                if missing:
                    raise ProvenanceError(
                        f"training_pair_ids: unknown training pair id(s) {missing}"
                    )
                row.training_pairs.extend(p for p in pairs if p not in row.training_pairs)
            if status == "promoted":
                self._promote(s, row)
            elif status is not None:
                row.status = status
            s.flush()
            return to_model(row)

    def _model_row(
        self, s: Session, version: str, weights: str, config: Mapping[str, Any] | None
    ) -> ModelVersionRow:
        if not version or len(version) > 64:
            raise ValueError(f"version: expected 1..64 characters, got {version!r}")
        config_data = _json_data(config or {})
        values = {
            "version": version,
            "weights_sha256": weights,
            "config": config_data,
            "status": "candidate",
            "created_at": utcnow(),
        }
        query = select(ModelVersionRow).where(ModelVersionRow.version == version)
        row = s.scalar(query)
        if row is None:
            self._insert_ignore(s, ModelVersionRow, values, ["version"])
            row = s.execute(query).scalar_one()
        if row.weights_sha256 != weights:
            raise ProvenanceError(
                f"model version {version!r} is registered with weights sha256 "
                f"{row.weights_sha256}, not {weights}: give new weights a new version"
            )
        if config_data and not row.config:
            row.config = config_data
        return row

    def _require_model(self, s: Session, version: str, what: str = "version") -> ModelVersionRow:
        row = s.scalar(select(ModelVersionRow).where(ModelVersionRow.version == version))
        if row is None:
            known = s.scalars(select(ModelVersionRow.version).order_by(ModelVersionRow.id)).all()
            raise ProvenanceError(
                f"{what}: unknown model version {version!r}; known: {list(known)}"
            )
        return row

    def get_model(self, version: str) -> ModelVersion | None:
        with self._session() as s:
            row = s.scalar(select(ModelVersionRow).where(ModelVersionRow.version == version))
            return None if row is None else to_model(row)

    def list_models(self) -> list[ModelVersion]:
        with self._session() as s:
            rows = s.scalars(select(ModelVersionRow).order_by(ModelVersionRow.created_at)).all()
            return [to_model(r) for r in rows]

    def promoted_model(self) -> ModelVersion | None:
        with self._session() as s:
            row = s.scalar(select(ModelVersionRow).where(ModelVersionRow.status == "promoted"))
            return None if row is None else to_model(row)

    def promote(self, version: str) -> ModelVersion:
        """Make ``version`` the promoted model; the previously promoted one is retired."""
        for attempt in range(3):
            try:
                with self._session(write=True) as s:
                    row = self._require_model(s, version)
                    self._promote(s, row)
                    s.flush()
                    return to_model(row)
            except IntegrityError:  # a concurrent promote won the one-promoted index
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _promote(self, s: Session, row: ModelVersionRow) -> None:
        if row.status == "promoted":
            return
        current = s.scalars(
            select(ModelVersionRow).where(ModelVersionRow.status == "promoted").with_for_update()
        ).all()
        for old in current:
            old.status = "retired"
            log.info("model %s retired", old.version)
        s.flush()  # retire before promote: the partial unique index allows one promoted
        row.status = "promoted"
        row.promoted_at = utcnow()
        log.info("model %s promoted", row.version)

    # ---- runs ---------------------------------------------------------------------------

    def claim_run(
        self,
        frame_sha256: str,
        model_version: str,
        weights_sha256: str,
        params: Mapping[str, Any],
        *,
        code_version: str | None = None,
        host: str | None = None,
        device: str = "cpu",
        flow_run_id: str | None = None,
        status: RunStatus = "running",
        max_attempts: int | None = None,
        redo: bool = False,
    ) -> Claim:
        """Claim the run of (frame, weights, params); exactly one caller gets ``owned``.

        The frame must be registered; an unknown model version is registered as a
        candidate. Every claim is an attempt of the run (``Run.attempt_log``), recorded
        with the claiming process (pid, its start, the boot id) when ``host`` is this
        host. ``status="queued"`` records a submission (a later ``running`` claim takes
        it over). A failed run, or one stuck longer than ``stale_after_s``, or one whose
        process on this host is gone (killed, out of memory, the host restarted), is
        claimed again with ``attempts + 1`` unless ``max_attempts`` is reached; a stale
        or dead run that has had its ``max_attempts`` (a frame that kills its worker) is
        then marked failed, with an error saying so, and not claimed again.

        Interrupted attempts (``finish_run(..., "interrupted")``: a stop signal; a claim
        whose host restarted since; a submission never started) are claimed again like
        failed ones but not counted toward ``max_attempts`` (up to ``FREE_INTERRUPTIONS``
        since the last success). A worker that died in this boot (killed, out of memory)
        or went stale is counted: it may be the frame that kills it.

        ``redo``: a succeeded run is claimed again too (a user recomputing a frame on
        purpose, the nightly redoing a rolled-back frame), its attempts counted from 1
        again. The success stays recorded as it was (status, times, outputs) while the
        redo runs and when it fails or is interrupted (a failed attempt in
        ``attempt_log``, counted against ``max_attempts``); a redo that succeeds
        becomes the run's record, its outputs superseding (not deleting) the earlier ones.
        """
        frame_digest = check_sha256("frame_sha256", frame_sha256)
        weights = check_sha256("weights_sha256", weights_sha256)
        if status not in ("queued", "running"):
            raise ValueError(f"status: expected 'queued' or 'running', got {status!r}")
        canon = canonical_params(params)
        phash = param_hash(params)
        key = make_run_key(frame_digest, weights, phash)
        now = utcnow()
        owner = {
            "code_version": _fit(RunRow, "code_version", code_version or default_code_version()),
            "host": host or socket.gethostname(),
            "device": _fit(RunRow, "device", device),
            "flow_run_id": flow_run_id,
        }
        with self._session(write=True) as s:
            frame_id = s.scalar(select(FrameRow.id).where(FrameRow.sha256 == frame_digest))
            if frame_id is None:
                raise ProvenanceError(
                    f"frame_sha256: no frame with sha256 {frame_digest}; call register_frame first"
                )
            model = self._model_row(s, model_version, weights, None)
            values = {
                "run_key": key,
                "frame_id": frame_id,
                "model_version_id": model.id,
                "params": json.loads(canon),
                "param_hash": phash,
                "status": status,
                "attempts": 1,
                "timings": {},
                "created_at": now,
                "started_at": now,
                **owner,
            }
            new_id = self._insert_ignore(s, RunRow, values, ["run_key"])
            row = s.execute(
                run_query().where(RunRow.run_key == key).with_for_update(of=RunRow)
            ).scalar_one()
            state: ClaimState = "owned"
            if new_id is None:
                state = self._take_over(row, status, max_attempts, now, owner, redo)
            else:
                row.tries.append(_new_attempt(1, status, now, owner))
            s.flush()
            return Claim(state=state, run=_view(row))

    def _take_over(
        self,
        row: RunRow,
        status: RunStatus,
        max_attempts: int | None,
        now: datetime,
        owner: dict[str, Any],
        redo: bool = False,
    ) -> ClaimState:
        att = _latest(row)
        redoing = row.status == "succeeded"  # the success stays as it is until a redo succeeds
        if redoing and not redo:
            return "done"
        stale = _last_sign(att) < now - timedelta(seconds=self.stale_after_s)
        # a stale claim is asked too: one from before a reboot is interrupted, not counted
        gone = _process_gone(att) if att.status == "running" else None
        if att.status == "running" and not stale and gone is None:
            return "busy"
        if att.status == "queued" and not stale and status == "queued":
            return "busy"
        dead = att.status == "running"  # stale or gone: its worker died without an end
        started = f"{att.started_at:%Y-%m-%d %H:%M:%S} UTC"
        if dead:
            # gone because the host restarted (power cut, reboot): interrupted, not counted;
            # gone in this boot (OOM kill, SIGKILL, a crash) or stale: a failure, counted, so
            # a frame that kills its worker every time ends after max_attempts
            _end_attempt(
                row, att, now, "no end recorded", status="interrupted" if gone and _rebooted(att)
                else "failed",
            )  # fmt: skip
        elif att.status == "queued" and stale:  # a submission nothing ran: not the frame's fault
            _end_attempt(row, att, now, "never started: claimed again", status="interrupted")
        if (
            max_attempts is not None
            and att.status in ("failed", "interrupted")
            and _counted(row) >= max_attempts
        ):
            if dead:
                why = gone or (
                    f"was given up after {self.stale_after_s:.0f} s without a heartbeat "
                    "(its worker died?)"
                )
                att.error = (
                    f"no end recorded: counted attempt {_counted(row)} of {max_attempts} "
                    f"({att.attempt} in all), started {started}, {why}"
                )
                if row.status != "succeeded":
                    row.error = att.error
                log.warning("run %s: %s", row.run_key[:12], att.error)
            return "exhausted"
        if att.status == "succeeded":  # redo: attempts count the tries since a success
            number = 1
        elif att.status == "queued":  # a queued run starting is the same attempt
            number = att.attempt
        else:
            number = att.attempt + 1
        if dead:
            why = gone or f"stale since {started}"
            log.warning("run %s: %s: claimed again", row.run_key[:12], why)
            att.error = f"no end recorded: {why}; claimed again"
            if row.status != "succeeded":
                row.error = att.error
        if number == att.attempt and att.status == "queued":
            att.status = status
            att.started_at = now
            for k, v in {**owner, **_identity(owner["host"])}.items():
                setattr(att, k, v)
        else:
            row.tries.append(_new_attempt(number, status, now, owner))
        if not redoing:
            row.status = status
            row.attempts = number
            row.started_at = now
            row.finished_at = None
            row.duration_s = None
            row.error = None
            row.timings = {}
            for k, v in owner.items():
                setattr(row, k, v)
        return "owned"

    def start_run(
        self, run_key: str, *, flow_run_id: str | None = None, attempt: int | None = None
    ) -> Run:
        """Mark an owned run ``running`` now (after a queue or GPU wait); also the heartbeat
        that keeps a long run from being taken as stale, and the moment the process that
        computes it is recorded (when it is on the claiming host).

        ``attempt``: the attempt the caller claimed (``Claim.run.attempts``); when the run
        was claimed again since, a :class:`ProvenanceError` instead of a beat for the new
        owner's attempt."""
        with self._session(write=True) as s:
            row = self._require_run(s, run_key, lock=True)
            att = _latest(row)
            if attempt is not None and att.attempt != attempt:
                raise ProvenanceError(
                    f"run_key: run {run_key[:12]} was claimed again (now attempt "
                    f"{att.attempt} on {att.host}); this worker's attempt {attempt} is over"
                )
            if att.status in ("succeeded", "failed", "interrupted"):
                raise ProvenanceError(f"run_key: run {run_key} is already {att.status}")
            now = utcnow()
            att.status = "running"
            att.started_at = now
            for k, v in _identity(att.host).items():
                setattr(att, k, v)
            if flow_run_id is not None:
                att.flow_run_id = flow_run_id
            if row.status != "succeeded":
                row.status = "running"
                row.started_at = now
                row.flow_run_id = att.flow_run_id
            s.flush()
            return _view(row)

    def heartbeat(self, run_key: str, attempt: int) -> str | None:
        """A running attempt's sign of life (``heartbeat_at``; its start and duration stay as
        they are), so that a frame computing longer than ``stale_after_s`` is not taken as
        dead. Returns None, or why there was no beat: the run was claimed again since
        (another attempt is current) or its attempt is no longer in progress."""
        with self._session(write=True) as s:
            row = self._require_run(s, run_key, lock=True)
            att = _latest(row)
            if att.attempt != attempt:
                return f"claimed again (now attempt {att.attempt} on {att.host})"
            if att.status not in ("running", "queued"):
                return f"its attempt {attempt} is {att.status}"
            att.heartbeat_at = utcnow()
            return None

    def finish_run(
        self,
        run_key: str,
        status: RunStatus,
        timings: Mapping[str, float] | None = None,
        error: str | None = None,
        outputs: Sequence[tuple[OutputKind, str | Path]] = (),
        attempt: int | None = None,
        figures: Mapping[str, Any] | None = None,
    ) -> Run:
        """Record the end of a run's current attempt: status (``interrupted``: stopped
        from outside, by a stop signal; not counted toward ``max_attempts``), per-stage
        timings (seconds), error text, the outputs (their sha256 and size are computed
        here; the files must exist) and the frame's ``figures`` (JSON data: spike score,
        ...; NaN is kept as null). Outputs and figures belong to a success.

        A success becomes the run's record; the outputs of an earlier success are kept,
        superseded. A failure of a run that succeeded before (a redo) is recorded as its
        failed attempt and leaves the success as it was.

        ``attempt``: the attempt the caller claimed (``Claim.run.attempts``). A worker
        whose run went stale and was claimed again by another gets a
        :class:`ProvenanceError` instead of overwriting the new owner's record.
        """
        if status not in ("succeeded", "failed", "interrupted"):
            raise ValueError(
                f"status: expected 'succeeded', 'failed' or 'interrupted', got {status!r}"
            )
        if status != "succeeded" and not error:
            raise ValueError(f"error: a {status} run needs its error text")
        if status != "succeeded" and (outputs or figures):
            raise ValueError(f"outputs, figures: a {status} run records none")
        facts = []
        kinds = [kind for kind, _ in outputs]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"outputs: one file per kind, got kinds {kinds}")
        for kind, path in outputs:
            if kind not in OUTPUT_KINDS:
                raise ValueError(f"outputs: kind {kind!r} is not one of {OUTPUT_KINDS}")
            p = Path(path).expanduser().resolve()
            if not p.is_file():
                raise ProvenanceError(f"outputs: {kind} file {str(p)!r} does not exist")
            facts.append((kind, str(p), sha256_file(p), p.stat().st_size))
        clean_timings = {str(k): float(v) for k, v in (timings or {}).items()}
        figures_data = None if figures is None else _json_data(figures)
        with self._session(write=True) as s:
            row = self._require_run(s, run_key, lock=True)
            att = _latest(row)
            if attempt is not None and att.attempt != attempt:
                raise ProvenanceError(
                    f"run_key: run {run_key[:12]} was claimed again (now attempt "
                    f"{att.attempt} on {att.host}); this worker's attempt {attempt} "
                    "is not recorded"
                )
            if att.status not in ("running", "queued"):
                if status != "succeeded" and att.status == "succeeded":
                    log.warning(
                        "run %s: a failure reported after its success is not recorded: %s",
                        run_key[:12],
                        error,
                    )
                    return to_run(row)
                log.warning("run %s finished again (was %s)", run_key[:12], att.status)
            now = utcnow()
            if status != "succeeded":
                _end_attempt(
                    row, att, now, cast(str, error), timings=clean_timings,
                    status=cast(Literal["failed", "interrupted"], status),
                )  # fmt: skip
                s.flush()
                return to_run(row)
            att.status, att.finished_at, att.error = "succeeded", now, None
            row.status = "succeeded"
            row.attempts = att.attempt
            for k in ("host", "device", "code_version", "flow_run_id", "started_at"):
                setattr(row, k, getattr(att, k))
            row.finished_at = now
            row.duration_s = (now - att.started_at).total_seconds()
            row.timings = clean_timings
            row.error = None
            row.figures = figures_data
            for out in row.outputs:  # the earlier success's files stay on record
                if out.superseded_at is None:
                    out.superseded_at = now
            s.flush()  # superseded before the new ones take their (run, kind) slots
            for kind, path, digest, size in facts:
                row.outputs.append(OutputRow(kind=kind, path=path, sha256=digest, size_bytes=size))
            s.flush()
            return to_run(row)

    def fail_run(self, run_key: str, reason: str, *, force: bool = False) -> Run:
        """Record the attempt in progress of a run as failed by hand (an operator ending a
        run whose worker died where nothing can tell: another host, no heartbeat yet).

        ``run_key``: the whole key or a unique prefix of at least 6 characters (``starnet
        runs`` shows 12). A run whose claiming process is alive on this host is refused
        unless ``force``. A run that succeeded before keeps its success. A worker still
        alive elsewhere that finishes later records its end over this one."""
        if not reason or not reason.strip():
            raise ValueError("reason: say why the run is failed")
        with self._session(write=True) as s:
            row = self._find_run(s, run_key)
            att = _latest(row)
            if att.status not in ("running", "queued"):
                raise ProvenanceError(
                    f"run_key: run {row.run_key[:12]} is not in progress (its attempt "
                    f"{att.attempt} {att.status})"
                )
            if not force and _process_alive(att):
                raise ProvenanceError(
                    f"run_key: run {row.run_key[:12]} is in progress: its process {att.pid} "
                    f"on {att.host} is alive (stop it, or force)"
                )
            _end_attempt(row, att, utcnow(), f"failed by hand: {reason.strip()}")
            log.warning("run %s: %s", row.run_key[:12], att.error)
            s.flush()
            return _view(row)

    def _find_run(self, s: Session, run_key: str) -> RunRow:
        key = run_key.strip().lower()
        q = run_query().with_for_update(of=RunRow)
        row = s.scalar(q.where(RunRow.run_key == key))
        if row is not None:
            return row
        if not re.fullmatch(r"[0-9a-f]{6,63}", key):
            raise ProvenanceError(f"run_key: no run {run_key!r} (give 6 or more hex digits)")
        rows = s.scalars(q.where(RunRow.run_key.startswith(key)).limit(2)).unique().all()
        if len(rows) != 1:
            what = "no run" if not rows else "more than one run"
            raise ProvenanceError(f"run_key: {what} starts with {key!r}")
        return rows[0]

    def _require_run(self, s: Session, run_key: str, lock: bool = False) -> RunRow:
        q = run_query().where(RunRow.run_key == run_key)
        row = s.scalar(q.with_for_update(of=RunRow) if lock else q)
        if row is None:
            raise ProvenanceError(f"run_key: no run {run_key!r}")
        return row

    def get_run(self, run_key: str) -> Run | None:
        with self._session() as s:
            row = s.scalar(run_query().where(RunRow.run_key == run_key))
            return None if row is None else to_run(row)

    def list_runs(
        self,
        status: RunStatus | None = None,
        model: str | None = None,
        since: datetime | date | None = None,
        limit: int | None = 50,
        frame_sha256: str | None = None,
    ) -> list[Run]:
        """Runs, newest first, filtered by status, model version, start time, frame.

        ``status`` ``running``/``queued`` matches a run whose current attempt is (a redo of
        a succeeded run too, which still shows its success); ``succeeded``/``failed`` the
        run's recorded status; ``interrupted`` a run recorded ``failed`` whose current
        attempt was interrupted (``failed`` leaves those out)."""
        if status is not None and status not in ATTEMPT_STATUSES:
            raise ValueError(f"status: expected one of {ATTEMPT_STATUSES}, got {status!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit: expected >= 1, got {limit!r}")
        q = run_query().order_by(RunRow.started_at.desc(), RunRow.id.desc())
        if status in ("running", "queued"):
            att = aliased(RunAttemptRow)
            q = q.where(
                exists().where(
                    att.run_id == RunRow.id, att.id == _newest_attempt_id(), att.status == status
                )
            )
        elif status in ("failed", "interrupted"):
            att = aliased(RunAttemptRow)
            interrupted = exists().where(
                att.run_id == RunRow.id, att.id == _newest_attempt_id(), att.status == "interrupted"
            )
            q = q.where(RunRow.status == "failed", interrupted if status == "interrupted"
                        else ~interrupted)  # fmt: skip
        elif status is not None:
            q = q.where(RunRow.status == status)
        if model is not None:
            q = q.where(RunRow.model_version.has(ModelVersionRow.version == model))
        if since is not None:
            q = q.where(RunRow.started_at >= _aware(since))
        if frame_sha256 is not None:
            digest = check_sha256("frame_sha256", frame_sha256)
            q = q.where(RunRow.frame.has(FrameRow.sha256 == digest))
        with self._session() as s:
            return [to_run(r) for r in s.scalars(q.limit(limit)).unique()]

    def frames_needing_rerun(
        self,
        promoted_version: str | None = None,
        max_attempts: int = 3,
        params: Mapping[str, Any] | None = None,
    ) -> list[Frame]:
        """Frames whose outputs the (promoted) model did not make: their latest succeeded run
        is another model's (or they have none), none of its runs is in progress, and it
        has not failed ``max_attempts`` times — so frames last made by an older model, or
        by a newer one since rolled back (``starnet model promote`` an earlier version),
        and failed frames still worth a retry. Oldest first. A frame whose last allowed
        attempt went stale (its worker died) comes once more: claiming it records that
        run as failed (``claim_run``), which settles it; so does one whose worker on this
        host is gone. The rerun claims with ``redo``: the model's own earlier run of a
        rolled-back frame is done again.

        "Made by" counts the runs of models ever promoted (a candidate's try is no
        rollback) and of ``promoted_version`` itself (a model never promoted reruns a
        frame once). ``params``: the parameter set the rerun will claim with; only its
        run's failures make a frame exhausted, so a frame that failed ``max_attempts``
        times with other parameters (out of memory at a larger tile) is tried again with
        these. None: the failures of any parameter set count."""
        phash = None if params is None else param_hash(params)
        with self._session() as s:
            if promoted_version is None:
                promoted_version = s.scalar(
                    select(ModelVersionRow.version).where(ModelVersionRow.status == "promoted")
                )
                if promoted_version is None:
                    log.warning("no promoted model: nothing to rerun")
                    return []
            model = self._require_model(s, promoted_version, "promoted_version")
            cutoff = utcnow() - timedelta(seconds=self.stale_after_s)
            done, maker = aliased(RunRow), aliased(ModelVersionRow)
            latest_maker = (
                select(done.model_version_id)
                .join(maker, maker.id == done.model_version_id)
                .where(
                    done.frame_id == FrameRow.id,
                    done.status == "succeeded",
                    or_(maker.promoted_at.is_not(None), maker.id == model.id),
                )
                .order_by(done.finished_at.desc(), done.id.desc())
                .limit(1)
                .scalar_subquery()
            )
            att = aliased(RunAttemptRow)
            active = att.status.in_(("running", "queued")) & (
                func.coalesce(att.heartbeat_at, att.started_at) >= cutoff
            )
            gone = self._gone_attempts(s, cutoff)
            if gone:
                active = active & att.id.not_in(gone)
            exhausted = att.status.in_(("failed", "interrupted")) & (
                att.attempt - _free_interruptions() >= max_attempts
            )  # as _counted: interrupted attempts since the last success are not counted
            if phash is not None:
                exhausted = exhausted & (RunRow.param_hash == phash)
            busy_or_exhausted = exists().where(
                RunRow.frame_id == FrameRow.id,
                RunRow.model_version_id == model.id,
                att.run_id == RunRow.id,
                att.id == _newest_attempt_id(),
                or_(active, exhausted),
            )
            # (coalesce: a frame nothing succeeded on has no maker, and NULL = id is NULL)
            settled = or_(func.coalesce(latest_maker, -1) == model.id, busy_or_exhausted)
            rows = s.scalars(select(FrameRow).where(~settled).order_by(FrameRow.first_seen)).all()
            return [to_frame(r) for r in rows]

    def end_gone_runs(self) -> list[Run]:
        """End the runs in progress whose claiming process on this host is gone (a
        ``starnet serve`` or worker stopped with its flow runs, a process killed), of any
        age: otherwise such a run stays ``running`` until its frame is claimed again,
        which may never happen (another model promoted since). Recorded as a claim
        takeover records them: ``failed`` (counted) when the process died in this boot,
        ``interrupted`` when the host restarted since. Returns the runs ended. The
        watcher, ``starnet serve`` and the nightly call this when they start."""
        ended = []
        with self._session(write=True) as s:
            ids = s.scalars(
                select(RunAttemptRow.run_id).where(
                    RunAttemptRow.status == "running",
                    RunAttemptRow.host == socket.gethostname(),
                    RunAttemptRow.pid.is_not(None),
                    RunAttemptRow.id == _newest_of(RunAttemptRow.run_id),
                )
            ).all()
            if not ids:
                return []
            rows = s.scalars(
                run_query().where(RunRow.id.in_(ids)).with_for_update(of=RunRow)
            ).unique()
            for row in rows:
                att = _latest(row)
                gone = None if att.status != "running" else _process_gone(att)
                if gone is None:
                    continue
                status: Literal["failed", "interrupted"] = (
                    "interrupted" if _rebooted(att) else "failed"
                )
                _end_attempt(row, att, utcnow(), f"no end recorded: {gone}", status=status)
                log.warning("run %s: %s", row.run_key[:12], att.error)
                ended.append(_view(row))
            s.flush()
        return ended

    def _gone_attempts(self, s: Session, since: datetime) -> list[int]:
        """Ids of the running attempts (started after ``since``) claimed on this host by a
        process that is gone."""
        rows = s.scalars(
            select(RunAttemptRow).where(
                RunAttemptRow.status == "running",
                RunAttemptRow.host == socket.gethostname(),
                RunAttemptRow.pid.is_not(None),
                func.coalesce(RunAttemptRow.heartbeat_at, RunAttemptRow.started_at) >= since,
            )
        ).all()
        return [a.id for a in rows if _process_gone(a) is not None]

    # ---- lookups ------------------------------------------------------------------------

    def find_by_sha256(self, sha256: str) -> History:
        """Everything known about the content ``sha256``: as an input, an output or a
        training image."""
        return self._history(check_sha256("sha256", sha256), query=sha256)

    def history(self, path_or_sha: str | Path) -> History:
        """Everything known about a file: by content when the file exists (so it works after
        a move), else by the path recorded for an input or output, or by a sha256 string.

        A file whose content is unknown but whose path is recorded gets the recorded
        history with a ``note`` that the content differs."""
        query = str(path_or_sha)
        p = Path(query).expanduser()
        if not p.is_file() and is_sha256(query.lower()):
            return self._history(query.lower(), query=query)
        found = None
        if p.is_file():
            found = self._history(sha256_file(p), query=query)
            if found.role != "unknown":
                return found
        resolved = str(p.resolve())
        with self._session() as s:
            recorded = s.scalar(select(FrameRow.sha256).where(FrameRow.path == resolved))
            if recorded is None:
                recorded = s.scalar(
                    select(OutputRow.sha256)
                    .where(OutputRow.path == resolved)
                    .order_by(OutputRow.id.desc())
                )
        if recorded is None:
            return found or History(query=query, sha256=None, role="unknown")
        h = self._history(recorded, query=query)
        if found is not None:
            note = f"the file's content (sha256 {found.sha256}) is not what was recorded here"
            h = dataclasses.replace(h, note=note)
        return h

    def _history(self, digest: str, query: str) -> History:
        with self._session() as s:
            frame = s.scalar(select(FrameRow).where(FrameRow.sha256 == digest))
            produced_by = None
            output = None
            if frame is None:
                out = s.scalar(
                    select(OutputRow)
                    .where(OutputRow.sha256 == digest)
                    .order_by(OutputRow.id.desc())
                )
                if out is not None:
                    run_row = s.scalar(run_query().where(RunRow.id == out.run_id))
                    produced_by = None if run_row is None else to_run(run_row)
                    output = to_output(out)
                    frame = run_row.frame if run_row is not None else None
            runs: tuple[Run, ...] = ()
            if frame is not None:
                q = run_query().where(RunRow.frame_id == frame.id)
                rows = s.scalars(q.order_by(RunRow.started_at.desc())).unique()
                runs = tuple(to_run(r) for r in rows)
            pairs = s.scalars(
                select(TrainingPairRow)
                .options(selectinload(TrainingPairRow.used_by))
                .where(
                    or_(
                        TrainingPairRow.original_sha256 == digest,
                        TrainingPairRow.starless_sha256 == digest,
                    )
                )
            ).all()
            role: Literal["input", "output", "training", "unknown"] = (
                "output" if produced_by
                else "input" if frame
                else "training" if pairs
                else "unknown"
            )  # fmt: skip
            return History(
                query=query,
                sha256=digest,
                role=role,
                frame=None if frame is None else to_frame(frame),
                produced_by=produced_by,
                output=output,
                runs=runs,
                training_pairs=tuple(to_pair(p) for p in pairs),
            )

    # ---- training pairs -----------------------------------------------------------------

    def add_training_pair(
        self, original: str | Path, starless: str | Path
    ) -> tuple[TrainingPair, bool]:
        """Record a (original, hand-made starless) pair by content; ``is_new`` is False when
        the same two contents were recorded before (their paths are updated)."""
        files = {}
        for name, path in (("original", original), ("starless", starless)):
            p = Path(path).expanduser().resolve()
            if not p.is_file():
                raise ProvenanceError(f"{name}: training file {str(p)!r} does not exist")
            files[name] = (str(p), sha256_file(p))
        (o_path, o_sha), (s_path, s_sha) = files["original"], files["starless"]
        with self._session(write=True) as s:
            values = {
                "original_path": o_path,
                "original_sha256": o_sha,
                "starless_path": s_path,
                "starless_sha256": s_sha,
                "added_at": utcnow(),
            }
            keys = ["original_sha256", "starless_sha256"]
            is_new = self._insert_ignore(s, TrainingPairRow, values, keys) is not None
            row = s.execute(
                select(TrainingPairRow)
                .options(selectinload(TrainingPairRow.used_by))
                .where(
                    TrainingPairRow.original_sha256 == o_sha,
                    TrainingPairRow.starless_sha256 == s_sha,
                )
            ).scalar_one()
            row.original_path, row.starless_path = o_path, s_path
            s.flush()
            return to_pair(row), is_new

    def list_training_pairs(self, unused_by: str | None = None) -> list[TrainingPair]:
        """All training pairs, oldest first; ``unused_by``: only those that model version
        was not trained on."""
        q = select(TrainingPairRow).options(selectinload(TrainingPairRow.used_by))
        if unused_by is not None:
            q = q.where(~TrainingPairRow.used_by.any(ModelVersionRow.version == unused_by))
        with self._session() as s:
            return [to_pair(r) for r in s.scalars(q.order_by(TrainingPairRow.id)).all()]
