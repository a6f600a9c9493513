"""Prefect flows for the observatory: process frames, and rerun them nightly.

The work is in :mod:`flows.frame` (claim, compute, finish: the same code as
``starnet transform``); the tasks here are thin adapters around it and pass
paths and small records only. Each frame's compute holds one slot of the GPU
limit ``prefect.gpu_limit_name`` (:func:`gpu_slot`), so flow runs on one
machine never fight over its GPU: with a Prefect API server, its global
concurrency limit (created at start when missing); in local (ephemeral) mode,
lock files that the OS frees when their process dies. The model is
loaded once per flow run: batch frames with :func:`process_folder` where the
per-run start (a served run is a fresh process that imports torch) matters.

Which model: with ``prefect.follow_promoted`` the promoted model of the
provenance DB (its weights file is recorded by the ``retrain`` flow), else
``inference.weights``. A promoted model whose weights file is not on this host
stops the flows (:class:`PromotedModelUnavailableError`) unless
``inference.weights`` is that same model: never another model's outputs in its
place, nor a nightly that redoes its frames with an older one. A DB with no
promoted model yet promotes the first model it runs, so the nightly rerun has
something to compare against.

A frame's run is kept alive in the DB while it waits for the GPU and computes
(:class:`Heartbeat`, every ``database.stale_run_s / 4``), so a long frame is not
taken for a dead one and claimed again; a finish the DB refuses all the same
(claimed again, failed by hand) fails that frame, not the flow.

Every flow takes ``config`` (a config.yaml path; None: the usual lookup) so a
deployment or a worker on another machine reads the same settings.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import io
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.states import Failed
from sqlalchemy.exc import OperationalError

from flows.frame import (
    Engine,
    FrameClaim,
    FrameOutputs,
    FrameResult,
    Heartbeat,
    OutputGuard,
    claim_frame,
    compute_outputs,
    finish_frame,
    frame_error,
    frame_params,
    load_engine,
    model_record,
    out_of_memory,
    output_folder,
)
from flows.provenance import ProvenanceDB, ProvenanceError
from flows.settings import Settings, load_settings
from starnet_core.imageio import ImageError

log = logging.getLogger("starnet.pipeline")


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow or task run (it reaches the UI), else the module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


# ---- set-up ---------------------------------------------------------------------------------


def ensure_concurrency_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit ``name`` with ``slots`` when it does not exist.

    An existing limit is left as it is (an operator may have changed it in the UI);
    a differing slot count is logged.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    if slots < 1:
        raise ValueError(f"slots: expected >= 1 for concurrency limit {name!r}, got {slots!r}")
    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots)
                )
                _logger().info("created global concurrency limit %r with %d slot(s)", name, slots)
            except ObjectAlreadyExists:  # another flow run created it just now
                pass
            return
    if current.limit != slots:
        _logger().warning(
            "global concurrency limit %r has %d slot(s), config says %d; keeping %d",
            name, current.limit, slots, current.limit,
        )  # fmt: skip


def gpu_limit(settings: Settings) -> str:
    """The GPU limit's name; ``{host}`` in ``prefect.gpu_limit_name`` becomes this machine's
    name, so that with workers on several machines each GPU has its own limit."""
    return settings.prefect.gpu_limit_name.format(host=socket.gethostname().split(".")[0])


# ---- the GPU slot ---------------------------------------------------------------------------

SLOT_LEASE_S = 300.0  # server mode: a dead holder's slot comes back when its lease expires
SLOT_WAIT_INFO_S = 1.0  # a wait for a slot longer than this is logged (INFO) ...
SLOT_WAIT_WARN_S = 60.0  # ... and this long a WARNING says who may hold it,
SLOT_WAIT_REPEAT_S = 300.0  # repeated this often while the wait lasts
SLOT_POLL_S = 0.2  # local mode: how often the first waiter tries the slot files


def api_server_configured() -> bool:
    """Whether the flows talk to a Prefect API server (``PREFECT_API_URL`` set: the test of
    Prefect's own ``get_client``) rather than to the temporary one that Prefect starts in
    this process when none is set (ephemeral mode, ``PREFECT_HOME``'s SQLite DB).

    It decides how a slot is held (:func:`concurrency_slot`): Prefect keeps each slot's
    lease in the server process's memory, and only a real server runs the service that
    gives back the slots of expired leases (the repossessor; the ephemeral server runs no
    services). A local process that dies holding a slot (SIGKILL, or SIGTERM to its process
    group, which also ends its ephemeral server before the slot is released) left the
    limit's ``active_slots`` taken in the DB for good: every later local run waited forever.
    """
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def ensure_slot_limit(name: str, slots: int) -> None:
    """Make the limit ``name`` usable by :func:`concurrency_slot`: with an API server, create
    Prefect's global concurrency limit when missing (:func:`ensure_concurrency_limit`); in
    local mode there is nothing to create (lock files appear on first use)."""
    if slots < 1:
        raise ValueError(f"slots: expected >= 1 for concurrency limit {name!r}, got {slots!r}")
    if api_server_configured():
        ensure_concurrency_limit(name, slots)


def _open_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except PermissionError:  # another user's file: flock needs no write access, only the note
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _holder_note(what: str) -> str:
    """Who holds a slot, for the warnings of those waiting for it."""
    command = " ".join(sys.argv)[:200] or "python"
    run_id = flow_run.id
    return (
        f"pid {os.getpid()} on {socket.gethostname()} ({command}) since "
        f"{datetime.now():%Y-%m-%d %H:%M:%S}: {what}" + (f", flow run {run_id}" if run_id else "")
    )


@dataclasses.dataclass(frozen=True)
class FileSlots:
    """``slots`` slots of the limit ``name`` as lock files ``<name>.<i>.lock`` in ``folder``.

    A slot is an exclusive ``flock`` on one of the files. The kernel drops it when its
    process ends, however it ends (SIGKILL, a signal to the process group, a crash), so a
    slot cannot leak, which Prefect's limit does in local mode (see
    :func:`api_server_configured`). Every process that uses the same folder and limit name
    shares the slots, whatever its ``PREFECT_HOME``; two processes configured with different
    slot counts for one name each use their own count of files.

    A waiter first takes ``<name>.queue.lock`` (a blocking ``flock``) and only then polls the
    slot files, so a process that gives a slot back and asks again at once (the next frame
    of a batch) queues behind the processes already waiting instead of starving them. The
    holder writes who it is into its slot file (waiters' warnings quote it) and empties the
    file before it lets go. Local file systems (``flock`` over NFS is emulated, best effort).
    """

    folder: Path
    name: str
    slots: int

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots: expected >= 1 for limit {self.name!r}, got {self.slots!r}")

    def path(self, which: str) -> Path:
        """The lock file ``which`` (a slot's index, or ``queue``)."""
        return self.folder / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', self.name)}.{which}.lock"

    def acquire(self, note: str, poll_s: float = SLOT_POLL_S) -> int:
        """Wait for a free slot and take it; returns the descriptor to :meth:`release`. A
        signal whose handler raises (Ctrl-C, Prefect's SIGTERM handler) ends the wait."""
        self.folder.mkdir(parents=True, exist_ok=True)
        queue = _open_lock(self.path("queue"))
        try:
            fcntl.flock(queue, fcntl.LOCK_EX)
            while True:
                for i in range(self.slots):
                    fd = _open_lock(self.path(str(i)))
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    except BaseException:
                        os.close(fd)
                        raise
                    with contextlib.suppress(OSError):  # a read-only descriptor: no note
                        os.ftruncate(fd, 0)
                        os.pwrite(fd, note.encode("utf-8", "replace"), 0)
                    return fd
                time.sleep(poll_s)
        finally:
            os.close(queue)  # releases the queue lock

    @staticmethod
    def release(fd: int) -> None:
        """Give the slot of ``fd`` back. ``LOCK_UN`` before closing: a child forked meanwhile
        (and holding a copy of the descriptor) must not keep the slot."""
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holders(self) -> list[str]:
        """The notes of the slots taken now (a slot taken a moment ago may have none yet)."""
        notes = []
        for i in range(self.slots):
            try:
                fd = os.open(self.path(str(i)), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    note = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
                    notes.append(note or "a process that has not written its note yet")
                else:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # free
            finally:
                os.close(fd)
        return notes

    def describe_holders(self) -> str:
        """For a waiter's warning: how many slots are taken and by whom."""
        where = f"lock files {self.path('*')}"
        notes = self.holders()
        if not notes:
            return f"its {self.slots} slot(s) ({where}) just came free; other waiters go first"
        return f"{len(notes)} of {self.slots} slot(s) ({where}) held by: " + "; ".join(notes)


def _prefect_holders(name: str) -> str:
    """For a waiter's warning in server mode: the limit's state, and what to do about it."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
        taken = f"{limit.active_slots} of {limit.limit} slot(s) taken"
    except Exception as e:  # the warning must not fail: say why the state is unknown
        taken = f"slots unknown ({type(e).__name__}: {e})"
    return (
        f"Prefect global concurrency limit {name!r}: {taken} by other flow runs (see "
        f"`prefect gcl inspect {name}`). A holder that died gives its slot back when its "
        f"lease expires (about {SLOT_LEASE_S / 60:.0f} min, the server's repossessor); "
        f"if no run holds it, free it with `prefect gcl update {name} --active-slots 0`"
    )


class _SlotWait:
    """Says, from a helper thread, that ``what`` waits for a slot of ``limit``: INFO after
    ``info_after_s``; after ``warn_after_s`` (then every ``repeat_s``) a WARNING with how long
    and ``holders()`` (who may hold the slots); INFO again once the slot is taken. The
    acquire blocks and cannot log by itself, and a silent wait looks like a hang: a leaked
    slot once stalled every later local run for good without a word."""

    def __init__(
        self,
        limit: str,
        what: str,
        kind: str,
        holders: Callable[[], str],
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        *,
        info_after_s: float = SLOT_WAIT_INFO_S,
        warn_after_s: float = SLOT_WAIT_WARN_S,
        repeat_s: float = SLOT_WAIT_REPEAT_S,
    ) -> None:
        self.limit, self.what, self.kind, self.holders, self.logger = (
            limit, what, kind, holders, logger,
        )  # fmt: skip
        self.info_after_s, self.warn_after_s, self.repeat_s = info_after_s, warn_after_s, repeat_s
        self._done = threading.Event()
        self._said = False
        self._t0 = 0.0
        self._thread = threading.Thread(target=self._report, name=f"wait {limit}", daemon=True)

    def __enter__(self) -> _SlotWait:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=1.0)
        if self._said and exc_type is None:
            waited = time.monotonic() - self._t0
            self.logger.info("%s: got a slot of %r after %.1f s", self.what, self.limit, waited)

    def _report(self) -> None:
        if self._done.wait(self.info_after_s):
            return
        self._said = True
        self.logger.info("%s: waiting for a slot of %r (%s)", self.what, self.limit, self.kind)
        due = self.warn_after_s
        while not self._done.wait(max(0.0, due - (time.monotonic() - self._t0))):
            try:
                held = self.holders()
            except Exception as e:  # the warning itself must not fail
                held = f"cannot tell who holds it ({type(e).__name__}: {e})"
            if self._done.is_set():
                return
            self.logger.warning(
                "%s: still waiting for a slot of %r after %.0f s; %s",
                self.what, self.limit, time.monotonic() - self._t0, held,
            )  # fmt: skip
            due += self.repeat_s


@contextlib.contextmanager
def concurrency_slot(
    settings: Settings,
    name: str,
    slots: int,
    what: str,
    *,
    warn_after_s: float = SLOT_WAIT_WARN_S,
) -> Iterator[None]:
    """Hold one slot of the limit ``name`` (``slots`` slots) for the block; ``what`` (e.g.
    ``frame /data/incoming/a.fits``) names the holder in logs and notes.

    With an API server (:func:`api_server_configured`): Prefect's global concurrency limit
    ``name`` (strict: made by :func:`ensure_slot_limit`), shared by every machine on that
    server; a dead holder's slot comes back when its lease expires. In local mode: lock
    files in ``<data_dir>/locks`` (:class:`FileSlots`), which the OS frees when their
    process dies; Prefect's limit would leak there. Either way the wait is logged
    (:class:`_SlotWait`).
    """
    logger = _logger()
    if api_server_configured():
        from prefect.concurrency.sync import concurrency

        slot = concurrency(name, occupy=1, strict=True, lease_duration=SLOT_LEASE_S)
        wait = _SlotWait(
            name, what, "Prefect global concurrency limit", lambda: _prefect_holders(name),
            logger, warn_after_s=warn_after_s,
        )  # fmt: skip
        entered = False
        try:
            with wait:
                slot.__enter__()
                entered = True
            yield
        except BaseException as e:
            if entered:
                try:
                    slot.__exit__(type(e), e, e.__traceback__)
                except Exception as gone:  # the API is gone: the original error matters
                    logger.warning(
                        "%s: could not give back the slot of %r (%s: %s); the server frees "
                        "it when its lease expires", what, name, type(gone).__name__, gone,
                    )  # fmt: skip
            raise
        slot.__exit__(None, None, None)
        return
    files = FileSlots(settings.resolve("locks").resolve(), name, slots)
    wait = _SlotWait(
        name, what, f"{slots} slot(s), local lock files in {files.folder}",
        files.describe_holders, logger, warn_after_s=warn_after_s,
    )  # fmt: skip
    fd = -1
    try:
        with wait:
            fd = files.acquire(_holder_note(what))
        yield
    finally:
        if fd >= 0:
            files.release(fd)


def gpu_slot(settings: Settings, what: str = "a frame") -> contextlib.AbstractContextManager[None]:
    """One slot of this machine's GPU limit (:func:`gpu_limit`, ``prefect.gpu_slots`` slots)
    for the block (:func:`concurrency_slot`): every use of the GPU by the flows takes it."""
    return concurrency_slot(settings, gpu_limit(settings), settings.prefect.gpu_slots, what)


def ensure_gpu_limit(settings: Settings) -> None:
    """Make the GPU limit usable by :func:`gpu_slot` (once per flow run that takes it)."""
    ensure_slot_limit(gpu_limit(settings), settings.prefect.gpu_slots)


class PromotedModelUnavailableError(ProvenanceError):
    """With ``prefect.follow_promoted``, the promoted model cannot be run on this host (its
    weights file is not here, or none is recorded) and ``inference.weights`` is another
    model: the run stops (:func:`load_run_engine`), naming the file and the fixes."""


def load_run_engine(
    settings: Settings,
    db: ProvenanceDB,
    *,
    purpose: str = "this run",
    would: str = "use it",
) -> tuple[Engine, str]:
    """The model this run uses (see the module docstring) and its weights file.

    With ``prefect.follow_promoted``, a promoted model whose weights file is not on this
    host is refused (:class:`PromotedModelUnavailableError`) unless ``inference.weights``
    is the same model (same sha256): running ``inference.weights`` instead, as this did
    with a warning, made new frames' outputs with an older model, and the nightly rerun
    redid every frame the promoted model had made with it. The message says that
    ``purpose`` stops rather than ``would`` with the other model, and how to fix it.
    ``prefect.follow_promoted: false`` runs ``inference.weights`` on purpose.
    """
    promoted = db.promoted_model()
    chosen = settings
    recorded: str | None = None
    missing = False  # the promoted model's own file cannot be loaded here
    if settings.prefect.follow_promoted and promoted is not None:
        recorded = promoted.config.get("weights_path")
        if recorded and Path(recorded).is_file():
            chosen = dataclasses.replace(
                settings, inference=dataclasses.replace(settings.inference, weights=recorded)
            )
        else:
            missing = True
    engine = load_engine(chosen)
    path = engine.weights_path
    if promoted is not None and missing:
        why = (
            f"its weights file {recorded} is not on this host ({socket.gethostname()})"
            if recorded
            else "no weights file is recorded for it"
        )
        if engine.weights_sha256 != promoted.weights_sha256:
            put = f"put its file at {recorded}" if recorded else "make its weights file available"
            raise PromotedModelUnavailableError(
                f"promoted model {promoted.version} ({promoted.weights_sha256[:12]}) cannot "
                f"run here: {why}, and inference.weights is another model, {engine.version} "
                f"({engine.weights_sha256[:12]}, {path}); {purpose} stops rather than "
                f"{would} with {engine.version}. Fix: {put} (data_dir/models, on storage "
                "every worker mounts), promote a model whose weights are here (starnet model "
                "list; starnet model promote VERSION), or set prefect.follow_promoted: false "
                "to run inference.weights on purpose"
            )
        _logger().info(
            "promoted model %s: %s; inference.weights (%s) is the same model",
            promoted.version, why, path,
        )  # fmt: skip
    if (
        promoted is not None
        and chosen is not settings
        and (engine.weights_sha256 != promoted.weights_sha256)
    ):
        raise ValueError(
            f"{path}: sha256 {engine.weights_sha256} is not the promoted model "
            f"{promoted.version}'s {promoted.weights_sha256}; the file was replaced"
        )
    db.register_model(
        engine.version,
        engine.weights_sha256,
        model_record(engine),
        status="promoted" if promoted is None else None,
    )
    if promoted is None:
        _logger().info("no promoted model yet: promoted %s (%s)", engine.version, path)
    _logger().info("model %s (%s) on %s", engine.version, engine.weights_sha256[:12], engine.device)
    return engine, path


# ---- tasks ----------------------------------------------------------------------------------


def _io_error(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what a second try can fix: file system and database I/O."""
    try:
        state.result()
    except (OSError, OperationalError):
        return True
    except Exception:  # any other failure is final
        return False
    return False


@task(
    name="claim", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
    retry_condition_fn=_io_error,
)  # fmt: skip
def claim_task(
    path: str,
    settings: Settings,
    db: ProvenanceDB,
    engine: Engine,
    max_attempts: int | None,
    expect_sha256: str | None = None,
    redo: bool = False,
) -> FrameClaim:
    """Hash and register the frame, claim its run (process / skip / busy / exhausted).
    ``expect_sha256``: the frame meant; a file gone or replaced is recorded failed.
    ``redo``: a done run is claimed again (the nightly, after a rollback)."""
    run_id = flow_run.id
    return claim_frame(
        path, settings, db, engine, flow_run_id=str(run_id) if run_id else None,
        max_attempts=max_attempts, expect_sha256=expect_sha256, redo=redo,
    )  # fmt: skip


@task(name="compute", cache_policy=NO_CACHE)
def compute_task(
    path: str,
    settings: Settings,
    engine: Engine,
    claim: FrameClaim,
    out_dir: str,
    db: ProvenanceDB,
    guard: OutputGuard,
) -> FrameOutputs | State:
    """Read, stretch, remove stars, write the outputs (atomically, provenance in headers;
    never over another input's outputs). A bad input, an output that cannot be written or
    running out of memory is the task's Failed state, holding the exception (the
    operator's log gets its one-line reason, not a traceback of a known failure); any
    other error is raised, with its traceback."""
    try:
        return compute_outputs(path, settings, engine, claim, out_dir=out_dir, db=db, guard=guard)
    except Exception as e:
        if not isinstance(e, ValueError) and not out_of_memory(e):
            raise
        return Failed(message=frame_error(path, e), data=e)


@task(
    name="finish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
    retry_condition_fn=_io_error,
)  # fmt: skip
def finish_task(
    db: ProvenanceDB, claim: FrameClaim, outputs: FrameOutputs | None, error: str | None
) -> None:
    """Record the run's success (outputs with checksums) or its failure and reason."""
    finish_frame(db, claim, outputs, error)


# ---- one frame ------------------------------------------------------------------------------


def run_frame(
    path: str,
    settings: Settings,
    db: ProvenanceDB,
    engine: Engine,
    out_dir: str,
    *,
    guard: OutputGuard,
    max_attempts: int | None = None,
    expect_sha256: str | None = None,
    redo: bool = False,
) -> FrameResult:
    """Claim -> compute (holding a GPU slot) -> finish, inside a flow run. A bad input (or
    an output that cannot be written) is a failed result naming the file and the
    reason, never an exception.

    Outputs go to ``out_dir``, in the frame's sub-folder of ``incoming_dir`` when it lies
    there (:func:`flows.frame.output_folder`); ``guard`` (one per flow run) keeps frames
    from overwriting each other's outputs. ``expect_sha256``: the frame meant (the
    nightly rerun): a file moved, deleted or replaced is a failed run, not that frame.
    ``redo``: the run is done again even if it succeeded before (the nightly picks only
    frames whose outputs another model made since: a rolled-back promotion).

    From the claim to the end of the computation a :class:`Heartbeat` keeps the run from
    going stale. A finish the DB refuses (the run was claimed again by another worker,
    or failed by hand) is the frame's failed result, saying that its outputs were
    written (they stay, unrecorded; the result lists them); the next frames go on.
    """
    try:
        claim = claim_task(path, settings, db, engine, max_attempts, expect_sha256, redo)
    except ImageError as e:
        return FrameResult(path, "failed", None, error=str(e))
    if claim.decision != "process":
        status = "skipped" if claim.decision == "skip" else claim.decision
        _logger().info("%s: %s (run %s)", path, claim.reason or status, claim.run_key[:12])
        return FrameResult(claim.path, status, claim.run_key, error=claim.reason)
    target = str(output_folder(path, out_dir, settings.resolve(settings.incoming_dir)))
    try:
        # the heartbeat spans the wait for the slot and the computation: the run is
        # claimed `running` from the claim on, and either may outlast stale_run_s
        with (
            Heartbeat.of(db, claim, settings, _logger()),
            gpu_slot(settings, f"frame {path}"),
        ):
            # running from now: the wait for the slot is over (refused if claimed again since)
            db.start_run(claim.run_key, attempt=claim.attempt)
            outputs = compute_task(path, settings, engine, claim, target, db, guard)
            if isinstance(outputs, State):  # a known failure, returned as the task's state
                failure = outputs.result(raise_on_failure=False)
                raise (
                    failure
                    if isinstance(failure, Exception)
                    else RuntimeError(outputs.message or "the compute task failed")
                )
    except Exception as e:  # bad input, out of memory, ...: record it, go on with the next frame
        message = frame_error(path, e)
        try:
            finish_task(db, claim, None, message)
        except ProvenanceError as refused:  # claimed again meanwhile: the frame's failure
            message += f"; not recorded as this run's failure: {refused}"
        return _failed(claim, path, message)
    except BaseException as e:  # cancel or stop signal: the run is interrupted, then re-raised
        try:  # interrupted: taken up again, not counted toward max_attempts
            finish_frame(
                db, claim, None, f"{path}: interrupted: {_interruption(e)}", interrupted=True
            )
        except Exception:  # e.g. the DB is locked: the interrupt must still reach the caller
            _logger().exception("%s: could not record the interrupted run", path)
        raise
    try:
        finish_task(db, claim, outputs, None)
    except ProvenanceError as e:
        # the DB refused the end of this attempt (claimed again by another worker or the
        # nightly, failed by hand): the outputs are written, but they are not this run's
        # record; the frame fails, the flow goes on with the next frames
        written = ", ".join(str(p) for p in outputs.outputs.values())
        message = (
            f"{path}: outputs written ({written}) but not recorded in the provenance database: {e}"
        )
        result = _failed(claim, path, message)
        return dataclasses.replace(
            result, outputs=outputs.outputs, timings_s=outputs.timings_s, figures=outputs.figures
        )
    publish_frame_artifacts(claim, outputs, settings.prefect.thumbnail_px)
    return FrameResult(
        claim.path, "succeeded", claim.run_key, outputs.outputs, outputs.timings_s,
        outputs.figures,
    )  # fmt: skip


def _failed(claim: FrameClaim, path: str, message: str) -> FrameResult:
    """A frame's failed result: logged, and a markdown artifact with the reason."""
    _logger().error("%s", message)
    create_markdown_artifact(
        markdown=f"### {Path(path).name}: failed\n\n```\n{message}\n```",
        key=artifact_key("failed", path, claim.sha256),
        description=f"{Path(path).name}: failed",
    )
    return FrameResult(claim.path, "failed", claim.run_key, error=message)


def _interruption(e: BaseException) -> str:
    """``Type: message`` of what interrupted a frame; Prefect's TerminationSignal has no
    message, only its signal number."""
    detail = str(e)
    signum = getattr(e, "signal", None)
    if not detail and isinstance(signum, int):
        with contextlib.suppress(ValueError):
            detail = signal.Signals(signum).name
    return f"{type(e).__name__}: {detail}" if detail else type(e).__name__


def artifact_key(prefix: str, path: str, sha256: str) -> str:
    """``prefix-<file stem>-<sha256[:8]>`` in the characters Prefect allows in keys."""
    stem = re.sub(r"[^a-z0-9]+", "-", Path(path).name.lower()).strip("-")[:40]
    return f"{prefix}-{stem}-{sha256[:8]}"


def frame_table(claim: FrameClaim, outputs: FrameOutputs) -> list[dict[str, str]]:
    """The rows of a frame's figures table: figures, timings, file sizes."""
    rows = [{"figure": "input", "value": claim.path}, {"figure": "sha256", "value": claim.sha256}]
    rows.append({"figure": "input_bytes", "value": str(Path(claim.path).stat().st_size)})
    rows.append({"figure": "run_key", "value": claim.run_key})
    rows.append({"figure": "attempt", "value": str(claim.attempt)})
    for k, v in outputs.figures.items():
        rows.append({"figure": k, "value": f"{v:.6g}" if isinstance(v, float) else str(v)})
    for k, v in outputs.timings_s.items():
        rows.append({"figure": f"time_{k}_s", "value": f"{v:.3f}"})
    for kind, p in outputs.outputs.items():
        size = Path(p).stat().st_size
        rows.append({"figure": f"{kind}_bytes", "value": str(size)})
    return rows


def small_jpeg(jpeg: bytes, height_px: int, quality: int = 60) -> bytes:
    """``jpeg`` scaled down to ``height_px`` (never up): the preview lives in Prefect's
    database, once per frame, and star fields are noisy (160 px high: ~14 KB; 120: ~7 KB)."""
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg))
    if img.height <= height_px:
        return jpeg
    img.thumbnail((img.width, height_px), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def publish_frame_artifacts(claim: FrameClaim, outputs: FrameOutputs, thumbnail_px: int) -> None:
    """A markdown preview (before | starless | mask) and a table of the frame's figures."""
    name = Path(claim.path).name
    lines = [f"### {name}", "", "before | starless | star mask", ""]
    if outputs.thumbnail_jpeg:
        jpeg = small_jpeg(outputs.thumbnail_jpeg, thumbnail_px)
        data = base64.b64encode(jpeg).decode("ascii")
        lines.append(f"![before, starless, mask of {name}](data:image/jpeg;base64,{data})")
    lines += ["", "| output | path |", "|---|---|"]
    lines += [f"| {kind} | `{p}` |" for kind, p in outputs.outputs.items()]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=artifact_key("preview", claim.path, claim.sha256),
        description=f"{name}: before | starless | mask",
    )
    create_table_artifact(
        table=frame_table(claim, outputs),
        key=artifact_key("figures", claim.path, claim.sha256),
        description=f"{name}: figures of run {claim.run_key[:12]}",
    )


# ---- flows ----------------------------------------------------------------------------------


def _frames(
    paths: Sequence[str], settings: Settings, out_dir: str | None, max_attempts: int | None
) -> list[FrameResult]:
    ensure_gpu_limit(settings)
    db = ProvenanceDB.from_settings(settings)
    engine, _ = load_run_engine(settings, db, would="make the frames' outputs")
    target = out_dir or str(settings.resolve(settings.output_dir))
    guard = OutputGuard()
    return [
        run_frame(p, settings, db, engine, target, guard=guard, max_attempts=max_attempts)
        for p in paths
    ]


class FramesFailedError(RuntimeError):
    """Frames of a run failed on their input (each recorded in the DB with its reason). The
    flow run ends Failed with this message, so the UI shows it; ``results`` holds every
    frame's result (``FrameResult`` as a dict) for callers that want them."""

    def __init__(self, results: list[dict[str, Any]]) -> None:
        failed = [r for r in results if r["status"] == "failed"]
        super().__init__(f"{len(failed)} of {len(results)} frame(s) failed: {failed[0]['error']}")
        self.results = results


def _outcome(results: Sequence[FrameResult]) -> list[dict[str, Any]] | State[Any]:
    data = [dataclasses.asdict(r) for r in results]
    if any(r.status == "failed" for r in results):
        error = FramesFailedError(data)
        return Failed(message=str(error), data=error)
    return data


def _frame_run_name() -> str:
    return Path(str(flow_run.parameters.get("path", "frame"))).name


@flow(name="process-frame", flow_run_name=_frame_run_name, log_prints=False)
def process_frame(
    path: str, out_dir: str | None = None, config: str | None = None
) -> dict[str, Any] | State[Any]:
    """Remove the stars from one frame; outputs go to ``out_dir`` (default: output_dir).
    A bad input ends the run Failed (:class:`FramesFailedError`), recorded in the DB."""
    settings = load_settings(config)
    outcome = _outcome(_frames([path], settings, out_dir, settings.prefect.max_attempts))
    return outcome[0] if isinstance(outcome, list) else outcome


@flow(name="process-folder", log_prints=False)
def process_folder(
    paths: list[str], out_dir: str | None = None, config: str | None = None
) -> list[dict[str, Any]] | State[Any]:
    """Several frames in one run: the model loads once (a served run is a fresh process).
    Any bad input ends the run Failed (:class:`FramesFailedError`) after all frames were tried."""
    settings = load_settings(config)
    results = _frames(paths, settings, out_dir, settings.prefect.max_attempts)
    if len(results) > 1:
        create_table_artifact(table=_summary_rows(results), description="frames of this run")
    return _outcome(results)


def _summary_rows(results: Sequence[FrameResult]) -> list[dict[str, str]]:
    return [
        {
            "frame": Path(r.path).name,
            "status": r.status,
            "model": str(r.figures.get("model_version", "")),
            "seconds": f"{sum(r.timings_s.values()):.2f}" if r.timings_s else "",
            "error": r.error or "",
        }
        for r in results
    ]


@flow(name="nightly-rerun", log_prints=False)
def nightly_rerun(
    config: str | None = None, out_dir: str | None = None, max_frames: int | None = None
) -> dict[str, int]:
    """Reprocess every frame the current model has not made yet (frames an older model made,
    frames never processed) and retry failed ones below ``prefect.max_attempts``.

    Frames are picked by content and found at their last-seen path: a frame whose file
    is gone or holds other content there is not processed; its run is recorded failed
    ("input moved, deleted or replaced"), so it stops being picked after max_attempts."""
    logger = get_run_logger()
    settings = load_settings(config)
    ensure_gpu_limit(settings)
    db = ProvenanceDB.from_settings(settings)
    # refused when the promoted model cannot run here: another model would redo every
    # frame the promoted one made (a silent rollback)
    engine, _ = load_run_engine(
        settings, db, purpose="the nightly rerun", would="redo the promoted model's frames"
    )
    max_attempts = settings.prefect.max_attempts
    for run in db.end_gone_runs():  # left `running` by a worker on this host that is gone
        logger.warning("run %s (%s): %s", run.run_key[:12], Path(run.frame_path).name, run.error)
    frames = db.frames_needing_rerun(
        engine.version, max_attempts=max_attempts, params=frame_params(settings)
    )  # exhausted: failed that often with these parameters (a changed tile size retries)
    frames = frames[:max_frames] if max_frames is not None else frames
    logger.info("%d frame(s) to rerun with model %s", len(frames), engine.version)
    target = out_dir or str(settings.resolve(settings.output_dir))
    progress = cast(
        UUID,
        create_progress_artifact(
            0.0, key="nightly-rerun-progress", description=f"frames rerun with {engine.version}"
        ),
    )
    results = []
    guard = OutputGuard()
    for i, frame in enumerate(frames, 1):
        results.append(
            run_frame(
                frame.path,
                settings,
                db,
                engine,
                target,
                guard=guard,
                max_attempts=max_attempts,
                expect_sha256=frame.sha256,
                redo=True,  # picked because another model made its outputs since
            )  # fmt: skip
        )
        update_progress_artifact(progress, 100.0 * i / len(frames))
    if not frames:
        update_progress_artifact(progress, 100.0)
    counts: dict[str, int] = {"frames": len(results)}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    create_table_artifact(
        table=_summary_rows(results) or [{"frame": "-", "status": "nothing to rerun"}],
        key="nightly-rerun-summary",
        description=f"nightly rerun with {engine.version}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items()),
    )
    return counts
