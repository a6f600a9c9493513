"""The folder watcher: new frames in ``incoming/`` and new pairs in the training folder.

A file counts only once it is complete: its size and mtime stayed the same for
``watch.stable_s`` and it can be opened. Uploaders that write ``x.fits.part``
and rename it are seen through ``on_moved`` (the ``.part`` name itself matches
no pattern). Files that arrived while the watcher was down are found by a scan
at start (watchdog reports only changes). Events and the scan name a file alike:
by its path under ``incoming`` (a symlink dropped there is a frame like a file,
named by the link; the flow resolves it when it registers the frame). Files in
hidden and system folders under ``incoming`` (trash, sync versions, NAS
thumbnails: :func:`skipped_part`) are no frames.

Frames are deduplicated by content: a file whose sha256 already has a
succeeded run in the provenance DB, or that this watcher dispatched already,
is not dispatched again (the nightly rerun takes care of newer models). The
flow's own claim is the final guard, so two watchers on one folder are safe.
A file whose handling fails (the DB briefly unreachable, the dispatch or
``on_pair`` raising) is logged with its path and tried again after ``retry_s``;
the other files of that step go on.

Training pairs are ``training/original/X`` + ``training/starless/X`` (identical
names). A complete pair is registered in the DB and announced with the Prefect
event ``starnet.training.pair.added`` (the retrain deployment's trigger).

What a ready frame or pair sets off is up to the caller (``on_frames``,
``on_pair``): :func:`flows.cli_pipeline.cmd_watch` runs the flows in-process
or submits deployment runs.

Stopping (:meth:`Watcher.run` in the main thread): SIGINT or SIGTERM stops the
loop; while frames are being handed on (in local mode: processed by a flow in
this process) it also interrupts them at once, so the frame in progress is
recorded interrupted, as with Ctrl-C. ``systemctl stop``, ``timeout`` and
Ctrl-C signal the whole process group, which ends Prefect's temporary API
server too: the flow then cannot report its crash and Prefect's client retries
for minutes, so a watcher still running ``stop_grace_s`` after the signal exits
at once (the frame is recorded by then; slots are lock files the OS frees).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from flows.provenance import ProvenanceDB, TrainingPair, sha256_file
from flows.settings import image_patterns

log = logging.getLogger("starnet.watch")

PAIR_EVENT = "starnet.training.pair.added"
PAIR_RESOURCE_PREFIX = "starnet.training.pair."
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignal(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM while the watcher hands frames or a pair
    on, so that the flow running them in this process stops at once (the frame in progress
    is recorded interrupted). A BaseException, like KeyboardInterrupt: no ``except
    Exception`` may take it for a failed frame or a dispatch to retry."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _termination_types() -> tuple[type[BaseException], ...]:
    """The exceptions a stop signal raises: ours, Ctrl-C's, and Prefect's SIGTERM handler's
    (installed while a flow runs in the main thread)."""
    try:
        from prefect.exceptions import TerminationSignal
    except ImportError:  # prefect is optional for the watcher itself
        return (StopSignal, KeyboardInterrupt)
    return (StopSignal, KeyboardInterrupt, TerminationSignal)


def raised_by_stop_signal(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, a stop signal's exception: a
    flow whose API went down with the process group replaces Prefect's TerminationSignal
    with the ConnectError of reporting the crash."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, _termination_types()):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _stop_ephemeral_api() -> None:
    """Best effort, before a forced exit: end Prefect's temporary API server (a child
    process started by the first flow; Prefect stops it at exit, which a forced exit skips).
    When the signal went to the whole process group it is gone already."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:  # never imported: no temporary server was started
        return
    with contextlib.suppress(Exception):
        process = module.SubprocessASGIServer().server_process  # the one get_client starts
        if process is not None and process.poll() is None:
            process.terminate()


def matches(path: Path, patterns: Iterable[str]) -> bool:
    """Whether ``path``'s name matches one of the glob ``patterns`` (case-insensitive);
    hidden names (``.x``, editors' and rsync's temporaries) never match."""
    name = path.name.lower()
    return not name.startswith(".") and any(fnmatch.fnmatch(name, p.lower()) for p in patterns)


# Folders (and files) under a watched folder that hold no new frames, though they may hold
# files with image names: deleted frames in a trash, older versions kept by a sync tool,
# a NAS's thumbnails and snapshots. These appear where ``incoming`` is a synced folder, a
# NAS share or a mounted drive.
SKIP_PREFIXES = (
    ".",  # hidden: .Trash-1000 (freedesktop trash on a mounted drive), .stversions
    #       (Syncthing), .sync / .dropbox.cache, QNAP's .@__thumb, rsync's temporaries
    "@",  # Synology's @eaDir (thumbnails, per folder) and @tmp, QNAP's @Recycle
)
SKIP_NAMES = frozenset(
    {
        "#recycle",  # Synology's recycle bin at a shared folder's top: deleted frames
        "#snapshot",  # Synology's snapshots, when visible over SMB: copies of the share
        "$recycle.bin",  # Windows' recycle bin on a USB drive or card: $R....fits files
        "system volume information",  # Windows' own folder on a drive
    }
)


def skipped_part(relative: Path) -> str | None:
    """The first part (folder or file name) of ``relative``, a path relative to a watched
    folder, that marks it as no frame of the user's (:data:`SKIP_PREFIXES`,
    :data:`SKIP_NAMES`, case-insensitive), else None."""
    for part in relative.parts:
        name = part.lower()
        if name.startswith(SKIP_PREFIXES) or name in SKIP_NAMES:
            return part
    return None


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time the (size, mtime) pair was first seen


class CompletionTracker:
    """Decides when a file is complete: same size and mtime for ``stable_s``, readable,
    and, for an uncompressed FITS file, as long as its headers say
    (:func:`starnet_core.imageio.fits_shortfall`): a copy that stalled for longer than
    ``stable_s`` waits for the rest, up to ``incomplete_wait_s`` after its last change,
    then is handed on anyway (it fails as truncated, naming the file).

    Not thread-safe: the watcher loop owns it; watchdog threads only post paths.
    """

    def __init__(
        self,
        stable_s: float,
        clock: Callable[[], float] = time.monotonic,
        incomplete_wait_s: float = 600.0,
    ) -> None:
        if stable_s < 0:
            raise ValueError(f"stable_s: expected >= 0, got {stable_s!r}")
        if incomplete_wait_s < 0:
            raise ValueError(f"incomplete_wait_s: expected >= 0, got {incomplete_wait_s!r}")
        self.stable_s = stable_s
        self.incomplete_wait_s = incomplete_wait_s
        self.clock = clock
        self.pending: dict[Path, _Seen | None] = {}
        self.short: dict[Path, int] = {}  # files found short, and by how much (logged once)

    def note(self, path: Path) -> None:
        """``path`` changed (or was found): watch it until it is stable."""
        self.pending[path] = None

    def ready(self) -> list[Path]:
        """The pending files that are complete now (they stop being pending)."""
        now = self.clock()
        done = []
        for path, seen in list(self.pending.items()):
            try:
                st = path.stat()
            except FileNotFoundError:  # renamed away or deleted: its new name has its own event
                del self.pending[path]
                continue
            if seen is None or (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self.pending[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                if self.stable_s > 0:
                    continue
                seen = self.pending[path]
            assert seen is not None
            if st.st_size == 0 or now - seen.since < self.stable_s or not _readable(path):
                continue
            if self._still_arriving(path, now - seen.since):
                continue
            del self.pending[path]
            self.short.pop(path, None)
            done.append(path)
        return sorted(done)

    def _still_arriving(self, path: Path, unchanged_s: float) -> bool:
        """Whether ``path`` is a FITS file shorter than its headers say that may still
        grow: unchanged for less than ``incomplete_wait_s``."""
        from starnet_core.imageio import fits_shortfall  # astropy & co. only when watching

        missing = fits_shortfall(path)
        if not missing:
            return False
        if unchanged_s < self.incomplete_wait_s:
            if self.short.get(path) != missing:
                log.info(
                    "%s: %d bytes shorter than its FITS headers say: waiting for the rest "
                    "(up to watch.incomplete_wait_s = %g s after its last change)",
                    path, missing, self.incomplete_wait_s,
                )  # fmt: skip
                self.short[path] = missing
            return True
        log.warning(
            "%s: still %d bytes shorter than its FITS headers say after %g s without a "
            "change (watch.incomplete_wait_s): processed as it is",
            path, missing, unchanged_s,
        )  # fmt: skip
        return False


def _readable(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        log.debug("%s: not readable yet (%s)", path, e)
        return False
    return True


class _Post(FileSystemEventHandler):
    """Forwards every created/modified/moved file path to the loop's queue."""

    def __init__(self, inbox: queue.SimpleQueue[Path]) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        target = event.dest_path if event.event_type == "moved" else event.src_path
        if target:
            self.inbox.put(Path(str(target)))


@dataclass
class Watcher:
    """Watches ``incoming`` (recursively) and ``training`` (``original/`` + ``starless/``).

    ``on_frames(paths)`` gets each batch of complete, new frames; ``on_pair(pair, is_new)``
    each complete training pair after it was registered in ``db``. Paths under
    ``exclude`` (the output folder, when it lies inside ``incoming``) are ignored.
    """

    incoming: Path
    db: ProvenanceDB
    on_frames: Callable[[list[Path]], None]
    on_pair: Callable[[TrainingPair, bool], None] | None = None
    training: Path | None = None
    # every file name imageio reads (the settings pass watch.patterns, whose default it is)
    patterns: tuple[str, ...] = field(default_factory=lambda: tuple(image_patterns()))
    stable_s: float = 2.0
    incomplete_wait_s: float = 600.0  # a FITS file shorter than its headers: CompletionTracker
    poll_s: float = 0.5
    retry_s: float = 30.0  # after a failed dispatch
    stop_grace_s: float = 5.0  # after SIGINT/SIGTERM: then exit (run() in the main thread)
    exclude: tuple[Path, ...] = ()
    # what the messages call ``incoming`` and ``training`` (the settings they came from)
    incoming_setting: str = "incoming"
    training_setting: str = "training"
    clock: Callable[[], float] = time.monotonic
    dispatched: set[str] = field(default_factory=set)  # sha256 handed on by this watcher
    inbox: queue.SimpleQueue[Path] = field(default_factory=queue.SimpleQueue)

    def __post_init__(self) -> None:
        if self.poll_s <= 0:
            raise ValueError(f"poll_s: expected > 0, got {self.poll_s!r}")
        self.incoming = self.incoming.expanduser().resolve()
        if self.training is not None:
            self.training = self.training.expanduser().resolve()
        self.exclude = tuple(p.expanduser().resolve() for p in self.exclude)
        self.tracker = CompletionTracker(self.stable_s, self.clock, self.incomplete_wait_s)
        self.training_done: set[Path] = set()
        self.frame_digest: dict[Path, str] = {}  # frames of the batch being dispatched
        self.retry_at: dict[Path, float] = {}
        self.pairs_unannounced: set[int] = set()  # new pairs whose on_pair has not succeeded
        self.stop_signal: int | None = None  # the first SIGINT/SIGTERM run() received
        self._stop: threading.Event | None = None  # run()'s
        self._handing_on = False  # inside on_frames / on_pair: a stop signal interrupts them
        self._interrupted = False  # the stop signal's exception was raised (once is enough)
        self._signal_lock = threading.RLock()  # a 2nd handler may interrupt the 1st

    # ---- classification --------------------------------------------------------------

    def _pair_side(self, path: Path) -> str | None:
        """``original`` / ``starless`` for a training image, else None."""
        if self.training is None or path.parent.parent != self.training:
            return None
        side = path.parent.name
        return side if side in ("original", "starless") else None

    def _under_watch(self, path: Path) -> bool:
        return path.is_relative_to(self.incoming) or (
            self.training is not None and path.is_relative_to(self.training)
        )

    def _normalise(self, path: Path) -> Path:
        """``path`` as the scan names it: absolute and normalised, the file's own name kept
        (not resolved: a symlink dropped in ``incoming`` is the frame ``incoming/<link>``,
        though its target lies elsewhere). A path under no watched folder may still reach
        one through a symlinked folder (macOS's ``/var`` -> ``/private/var``): its folder
        is resolved then."""
        p = Path(os.path.abspath(path.expanduser()))
        if self._under_watch(p):
            return p
        return p.parent.resolve() / p.name

    def _wanted(self, path: Path) -> bool:
        """Whether ``path`` (as :meth:`_normalise` names it) is a frame or a training image
        to watch: a name of ``patterns``, under ``incoming`` (but not under ``exclude``) or
        a side of ``training``, in no hidden or system folder there (:func:`skipped_part`)."""
        if not matches(path, self.patterns):
            return False
        if self._pair_side(path) is not None:
            assert self.training is not None
            return skipped_part(path.relative_to(self.training)) is None
        if not path.is_relative_to(self.incoming):
            return False
        if skipped_part(path.relative_to(self.incoming)) is not None:
            return False
        if any(path.is_relative_to(e) for e in self.exclude):
            return False
        # a link into the output folder: outputs are no frames, whichever name they have
        return not (self.exclude and any(path.resolve().is_relative_to(e) for e in self.exclude))

    # ---- one step --------------------------------------------------------------------

    def scan(self) -> int:
        """Note every existing file (catch-up after downtime); returns how many."""
        roots = [self.incoming]
        if self.training is not None:
            roots += [self.training / "original", self.training / "starless"]
        n = 0
        for root in roots:
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*")):  # named as events name them: not resolved
                if self._wanted(p) and p.is_file():
                    self.tracker.note(p)
                    n += 1
        log.info("scan: %d file(s) already in %s", n, ", ".join(str(r) for r in roots))
        return n

    def step(self) -> list[Path]:
        """Take the queued events, then hand on what became complete; returns the frames
        dispatched."""
        while True:
            try:
                p = self.inbox.get_nowait()
            except queue.Empty:
                break
            p = self._normalise(p)
            if self._wanted(p):
                self.tracker.note(p)
        now = self.clock()
        for p, t in list(self.retry_at.items()):
            if t <= now:
                del self.retry_at[p]
                self.tracker.note(p)
        frames: list[Path] = []
        for p in self.tracker.ready():  # no longer pending: a failure must put it back
            try:
                if self._pair_side(p) is not None:
                    self._training_file(p)
                elif self._new_frame(p):
                    frames.append(p)
            except Exception:  # e.g. the DB is briefly unreachable: this file, later
                log.exception("%s: cannot handle it now; retrying in %g s", p, self.retry_s)
                self._retry_later(p)
        if frames:
            log.info("dispatching %d frame(s): %s", len(frames), ", ".join(p.name for p in frames))
            try:
                with self._handing_on_context():
                    self.on_frames(frames)
            except Exception as e:  # API down, flow crashed: try these again later
                if self._stopping(e):  # not while stopping: its own API may be gone with it
                    log.warning(
                        "dispatch of %s ended by the stop (%s: %s); the next start picks "
                        "them up", ", ".join(str(p) for p in frames), type(e).__name__, e,
                    )  # fmt: skip
                    return []
                log.exception(
                    "dispatch of %s failed; retrying in %g s",
                    ", ".join(str(p) for p in frames), self.retry_s,
                )  # fmt: skip
                for p in frames:
                    self._retry_later(p)
                return []
            for p in frames:
                del self.frame_digest[p]
        return frames

    def _retry_later(self, path: Path) -> None:
        """Hand ``path`` on again after ``retry_s``: it is noted anew then, and its content
        counts as not dispatched."""
        digest = self.frame_digest.pop(path, None)
        if digest is not None:
            self.dispatched.discard(digest)
        self.retry_at[path] = self.clock() + self.retry_s

    def _new_frame(self, path: Path) -> bool:
        try:
            digest = sha256_file(path)
        except OSError as e:  # vanished or unreadable between the checks
            log.warning("%s: cannot hash (%s); skipped until it changes again", path, e)
            return False
        if digest in self.dispatched:
            log.info(
                "%s: same content as a frame already dispatched (%s); skipped", path, digest[:12]
            )
            return False
        if self.db.is_known_input(digest) and self.db.list_runs(
            status="succeeded", frame_sha256=digest, limit=1
        ):
            log.info("%s: already processed (sha256 %s); skipped", path, digest[:12])
            return False
        self.dispatched.add(digest)
        self.frame_digest[path] = digest
        return True

    def _training_file(self, path: Path) -> None:
        assert self.training is not None
        self.training_done.add(path)
        side = self._pair_side(path)
        other = self.training / ("starless" if side == "original" else "original") / path.name
        if other not in self.training_done:
            log.info("training: %s waits for its partner %s", path, other)
            return
        original, starless = (path, other) if side == "original" else (other, path)
        pair, is_new = self.db.add_training_pair(original, starless)
        is_new = is_new or pair.id in self.pairs_unannounced  # on_pair failed on it before
        log.info("training pair %d %s (%s)", pair.id, path.name, "new" if is_new else "known")
        if is_new:
            self.pairs_unannounced.add(pair.id)
        if self.on_pair is not None:
            with self._handing_on_context():
                self.on_pair(pair, is_new)
        self.pairs_unannounced.discard(pair.id)

    # ---- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set. A failing dispatch is logged and the loop goes on.

        In the main thread, SIGINT and SIGTERM set ``stop`` while it runs (the handlers
        before are restored after): see :meth:`_stop_on_signals`.
        """
        self._stop = stop
        self._observer = self._start_observer()
        try:
            with self._stop_on_signals(stop):
                self._loop(stop)
        finally:
            self._observer.stop()
            self._observer.join(timeout=5)

    def _start_observer(self) -> BaseObserver:
        observer = Observer()
        handler = _Post(self.inbox)
        self._make_folders()
        for folder in self._folders():
            observer.schedule(handler, str(folder), recursive=True)
        observer.start()
        return observer

    def _check_observer(self) -> None:
        """A file-event thread that died (an exception in watchdog's emitter, a watched
        folder removed and made again) would leave the watcher blind to new files while
        it looks alive: start a new one and scan for what arrived meanwhile."""
        if self._observer.is_alive():
            return
        log.warning(
            "the file-event watcher stopped; started again, and %s scanned for what arrived "
            "meanwhile", ", ".join(str(f) for f in self._folders()),
        )  # fmt: skip
        with contextlib.suppress(Exception):
            self._observer.stop()
        self._observer = self._start_observer()
        self.scan()

    def _loop(self, stop: threading.Event) -> None:
        try:
            self.scan()
            log.info("watching %s", ", ".join(str(f) for f in self._folders()))
            while not stop.is_set():
                try:
                    self._check_observer()
                    self.step()
                except Exception:  # e.g. the DB is unreachable: the watcher outlives it
                    log.exception("watch step failed; the watcher goes on")
                stop.wait(self.poll_s)
        except _termination_types() as e:  # a stop signal interrupted a dispatch
            stop.set()
            signum = self.stop_signal or getattr(e, "signum", None) or getattr(e, "signal", 0)
            by = signal.Signals(signum).name if signum else type(e).__name__
            log.info(
                "stopped by %s while handing frames on; a frame in progress was recorded "
                "interrupted, the rest are picked up at the next start", by,
            )  # fmt: skip

    # ---- stopping --------------------------------------------------------------------

    @contextlib.contextmanager
    def _handing_on_context(self) -> Iterator[None]:
        self._handing_on = True
        try:
            yield
        finally:
            self._handing_on = False

    def _stopping(self, error: BaseException) -> bool:
        """Whether a failed dispatch is the stop's doing: ``stop`` set, or ``error`` raised
        while a stop signal's exception was being handled (the signal may have reached
        Prefect's handler only). Sets ``stop`` then, so the loop ends."""
        stopping = self._stop is not None and self._stop.is_set()
        if not stopping and raised_by_stop_signal(error):
            stopping = True
            if self._stop is not None:
                self._stop.set()
        return stopping

    @contextlib.contextmanager
    def _stop_on_signals(self, stop: threading.Event) -> Iterator[None]:
        """SIGINT/SIGTERM set ``stop`` (only in the main thread: elsewhere, do nothing).

        While frames or a pair are handed on, the first one also raises :class:`StopSignal`
        there: the flow running in this process is interrupted and its frame recorded
        interrupted. A flow installs Prefect's own SIGTERM handler while it runs (it raises
        TerminationSignal, and sets nothing of ours), so a wakeup fd lets a helper thread
        see every stop signal whichever Python handler takes it. ``stop_grace_s`` after
        the first one, a process still alive exits (:meth:`_exit_now`): with the signal
        sent to the process group, Prefect's temporary API died with it, and the flow's
        crash report and Prefect's exit hooks retry against it for minutes.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        reader, writer = socket.socketpair()
        writer.setblocking(False)  # set_wakeup_fd wants it; a full buffer only drops bytes
        before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        watcher = threading.Thread(
            target=self._watch_signals, args=(reader,), name="stop-signals", daemon=True
        )
        watcher.start()
        try:
            for sig in STOP_SIGNALS:
                signal.signal(sig, self._on_signal)
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
            if signal.set_wakeup_fd(old_fd) != writer.fileno():  # someone else's meanwhile
                signal.set_wakeup_fd(old_fd)
            writer.close()  # the helper reads EOF and ends
            watcher.join(timeout=1.0)
            reader.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled(signum, by_helper=False)
        if self._handing_on and not self._interrupted:
            self._interrupted = True
            raise StopSignal(signum)

    def _watch_signals(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._signalled(signum, by_helper=True)

    def _signalled(self, signum: int, by_helper: bool) -> None:
        """Note a stop signal (seen by our handler, or by the helper thread reading the
        wakeup fd); the first one is logged and arms the forced exit."""
        with self._signal_lock:
            first = self.stop_signal is None
            if first:
                self.stop_signal = signum
            if by_helper and signal.getsignal(signum) != self._on_signal:
                self._interrupted = True  # another handler (Prefect's) raised in our stead
        if self._stop is not None:
            self._stop.set()
        if not first:
            return
        name = signal.Signals(signum).name
        busy = " and interrupting the frames in progress" if self._handing_on else ""
        log.info("%s: stopping%s (exit within %g s)", name, busy, self.stop_grace_s)
        threading.Thread(
            target=self._exit_now, args=(signum,), name="stop-grace", daemon=True
        ).start()

    def _exit_now(self, signum: int) -> None:
        """After ``stop_grace_s``: end a process that is still running, as if the signal
        had killed it (exit status 128 + signal). What is left to do is reporting to an API
        that is gone; the frame was recorded interrupted before, and the GPU slot is a lock
        that the OS gives back."""
        time.sleep(self.stop_grace_s)
        log.error(
            "still running %g s after %s (Prefect's temporary API ended with the process "
            "group?): exiting now", self.stop_grace_s, signal.Signals(signum).name,
        )  # fmt: skip
        _stop_ephemeral_api()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        for h in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                h.flush()
        os._exit(128 + signum)

    def _make_folders(self) -> None:
        """Make the watched folders that are missing, but only in a folder that exists: a
        watcher started before its NAS share is mounted (or given a mistyped path) must
        not watch a local folder the mount then hides, where uploads never arrive. A
        missing parent, or a file in a folder's place, is an OSError naming the setting."""
        roots = [(self.incoming, self.incoming_setting, [self.incoming])]
        if self.training is not None:
            sides = [self.training / "original", self.training / "starless"]
            roots.append((self.training, self.training_setting, sides))
        for root, setting, folders in roots:
            if not root.is_dir():
                if root.exists():
                    raise NotADirectoryError(f"{setting}: {root} is not a folder")
                if not root.parent.is_dir():
                    raise FileNotFoundError(
                        f"{setting}: {root} does not exist, nor the folder {root.parent} it "
                        "would be made in (a share not mounted yet, or a mistyped path?)"
                    )
                root.mkdir(exist_ok=True)
                log.info("%s: made %s", setting, root)
            for folder in folders:
                if folder.exists() and not folder.is_dir():
                    raise NotADirectoryError(f"{setting}: {folder} is not a folder")
                folder.mkdir(exist_ok=True)

    def _folders(self) -> list[Path]:
        folders = [self.incoming]
        if self.training is not None:
            folders += [self.training / "original", self.training / "starless"]
        return folders


def emit_pair_event(pair: TrainingPair) -> None:
    """Announce a new training pair: ``starnet.training.pair.added`` on resource
    ``starnet.training.pair.<id>`` with both paths in the payload."""
    from prefect.events import emit_event

    emit_event(
        event=PAIR_EVENT,
        resource={
            "prefect.resource.id": f"{PAIR_RESOURCE_PREFIX}{pair.id}",
            "prefect.resource.name": Path(pair.original_path).name,
        },
        payload={
            "original": pair.original_path,
            "starless": pair.starless_path,
            "pair_id": pair.id,
        },
    )
    log.info("event %s for pair %d", PAIR_EVENT, pair.id)
