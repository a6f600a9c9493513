"""Which paths the folder watcher takes for frames, alike for watchdog's events and the scan
at start: a symlink dropped into ``incoming`` is a frame (named by the link), files in
hidden and system folders under ``incoming`` (trash, sync versions, NAS thumbnails) are
not; the training folder follows the same rules."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect_fixtures import write_fits

from flows.provenance import ProvenanceDB, TrainingPair
from flows.watcher import Watcher

PATTERNS = ("*.fits", "*.jpg")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _watcher(tmp_path: Path, db: ProvenanceDB, **kw: object) -> tuple[Watcher, list[list[Path]]]:
    batches: list[list[Path]] = []
    w = Watcher(
        incoming=tmp_path / "incoming",
        db=db,
        on_frames=batches.append,
        training=tmp_path / "training",
        patterns=PATTERNS,
        stable_s=kw.pop("stable_s", 0.0),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return w, batches


def _event_frames(w: Watcher, *paths: Path) -> list[Path]:
    """What ``w`` dispatches when watchdog reports ``paths``."""
    for p in paths:
        w.inbox.put(p)
    return w.step()


def _scan_frames(w: Watcher) -> list[Path]:
    """What ``w`` dispatches from its scan at start."""
    w.scan()
    return w.step()


# ---- symlinks: events and the scan agree ------------------------------------------------


def test_symlink_in_incoming_is_a_frame_for_events_and_scan_alike(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    target = write_fits(tmp_path / "elsewhere" / "a.fits", seed=1)
    link = tmp_path / "incoming" / "night1" / "link_a.fits"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    w, batches = _watcher(tmp_path, provenance_db)
    assert _event_frames(w, link) == [link]  # named by the link, as the scan names it
    w_restarted, _ = _watcher(tmp_path, provenance_db)
    assert _scan_frames(w_restarted) == [link]
    assert batches == [[link]]


def test_symlink_event_with_a_relative_target(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    write_fits(tmp_path / "elsewhere" / "b.fits", seed=2)
    (tmp_path / "incoming").mkdir()
    link = tmp_path / "incoming" / "b.fits"
    link.symlink_to(Path("..") / "elsewhere" / "b.fits")
    w, _ = _watcher(tmp_path, provenance_db)
    assert _event_frames(w, link) == [link]


def test_dangling_symlink_is_no_frame(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    (tmp_path / "incoming").mkdir()
    link = tmp_path / "incoming" / "gone.fits"
    link.symlink_to(tmp_path / "nowhere.fits")
    w, _ = _watcher(tmp_path, provenance_db)
    assert _event_frames(w, link) == []
    assert w.scan() == 0


def test_symlink_into_the_output_folder_is_no_frame(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    out = write_fits(tmp_path / "outputs" / "M42_starless.fits", seed=3)
    (tmp_path / "incoming").mkdir()
    link = tmp_path / "incoming" / "M42_starless.fits"
    link.symlink_to(out)
    w, _ = _watcher(tmp_path, provenance_db, exclude=(tmp_path / "outputs",))
    assert _event_frames(w, link) == []
    assert w.scan() == 0


def test_incoming_reached_through_a_symlinked_folder(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    """The caller's spelling of a path may go through a symlinked folder (macOS's ``/var``):
    it is still the frame under ``incoming``."""
    real = tmp_path / "real"
    (real / "incoming").mkdir(parents=True)
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    f = write_fits(alias / "incoming" / "M42.fits", seed=4)
    w, _ = _watcher(alias, provenance_db)
    assert _event_frames(w, f) == [real / "incoming" / "M42.fits"]


def test_symlinked_training_pair_is_registered(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    orig = write_fits(tmp_path / "elsewhere" / "o.fits", seed=5)
    star = write_fits(tmp_path / "elsewhere" / "s.fits", seed=6)
    lo, ls = (
        tmp_path / "training" / "original" / "p1.fits",
        tmp_path / "training" / "starless" / "p1.fits",
    )
    for link, target in ((lo, orig), (ls, star)):
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    seen: list[tuple[TrainingPair, bool]] = []
    w, batches = _watcher(tmp_path, provenance_db)
    w.on_pair = lambda pair, is_new: seen.append((pair, is_new))
    _event_frames(w, lo, ls)
    assert [new for _, new in seen] == [True]
    assert batches == []
    assert len(provenance_db.list_training_pairs()) == 1


# ---- hidden and system folders ----------------------------------------------------------

SKIPPED = [
    ".Trash-1000/files/M42.fits",  # freedesktop trash on a mounted drive
    ".stversions/M42~20240101-101010.fits",  # Syncthing's older versions
    "night1/.stversions/M42~20240101-101010.fits",
    "@eaDir/M42.fits/SYNOFILE_THUMB_M.jpg",  # Synology's thumbnails
    "night1/@eaDir/M42.fits/SYNOFILE_THUMB_XL.jpg",
    "#recycle/night1/M42.fits",  # Synology's recycle bin
    "#snapshot/GMT+01_2024-01-01-10.00/night1/M42.fits",  # Synology's snapshots
    "$RECYCLE.BIN/S-1-5-21-1/$R3F2A1.fits",  # Windows' recycle bin on a drive
    "@M42.fits",
]


@pytest.mark.parametrize("rel", SKIPPED)
def test_files_in_hidden_and_system_folders_are_no_frames(
    tmp_path: Path, provenance_db: ProvenanceDB, rel: str
) -> None:
    inc = tmp_path / "incoming"
    junk = write_fits(inc / rel, seed=7)
    frame = write_fits(inc / "night1" / "M42.fits", seed=8)
    w, batches = _watcher(tmp_path, provenance_db)
    assert _event_frames(w, junk, frame) == [frame]
    w_restarted, _ = _watcher(tmp_path, provenance_db)
    assert w_restarted.scan() == 1
    assert w_restarted.step() == [frame]


def test_only_parts_below_incoming_count(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    """``incoming`` itself may lie in a hidden folder (``~/.local/share/...``)."""
    root = tmp_path / ".local" / "@share"
    frame = write_fits(root / "incoming" / "M42.fits", seed=9)
    w, _ = _watcher(root, provenance_db)
    assert _event_frames(w, frame) == [frame]
    assert _scan_frames(_watcher(root, provenance_db)[0]) == [frame]


def test_training_follows_the_same_rule(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    for side, seed in (("original", 10), ("starless", 11)):
        write_fits(tmp_path / "training" / side / "@p1.fits", seed=seed)
    seen: list[tuple[TrainingPair, bool]] = []
    w, _ = _watcher(tmp_path, provenance_db)
    w.on_pair = lambda pair, is_new: seen.append((pair, is_new))
    assert w.scan() == 0
    _event_frames(
        w,
        tmp_path / "training" / "original" / "@p1.fits",
        tmp_path / "training" / "starless" / "@p1.fits",
    )
    assert seen == [] and provenance_db.list_training_pairs() == []


# ---- the real loop: watchdog's events ---------------------------------------------------


def _wait(cond: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


@contextmanager
def _running(w: Watcher) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # the observer is up
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_watchdog_symlink_dropped_in_is_dispatched(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    target = write_fits(tmp_path / "elsewhere" / "a.fits", seed=12)
    w, batches = _watcher(tmp_path, provenance_db, poll_s=0.05, stable_s=0.3)
    link = tmp_path / "incoming" / "link_a.fits"
    with _running(w):
        os.symlink(target, link)
        assert _wait(lambda: bool(batches), timeout_s=10.0), "the link was never dispatched"
    assert batches == [[link]]


# watchdog's inotify emitter warns (RuntimeWarning) when folders are made faster than it
# adds their watches; the test config makes warnings errors, which killed its thread
@pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")
def test_watchdog_ignores_trash_versions_and_thumbnails(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    w, batches = _watcher(tmp_path, provenance_db, poll_s=0.05, stable_s=0.3)
    inc = tmp_path / "incoming"
    ready = write_fits(tmp_path / "elsewhere" / "M42.fits", seed=19)
    with _running(w):
        for seed, rel in enumerate(SKIPPED, start=20):
            write_fits(inc / rel, seed=seed)
        frame = inc / "night1" / "M42.fits"
        frame.parent.mkdir(exist_ok=True)
        ready.rename(frame)  # whole at once: one dispatch, whatever stable_s
        assert _wait(lambda: frame in [p for b in batches for p in b], timeout_s=10.0)
        time.sleep(1.0)  # the others had their events by now
    assert [p for b in batches for p in b] == [frame], batches


def test_a_dead_file_event_thread_is_restarted_and_what_arrived_meanwhile_found(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    w, batches = _watcher(tmp_path, provenance_db, poll_s=0.05, stable_s=0.3)
    inc = tmp_path / "incoming"
    with _running(w):
        dead = w._observer
        dead.stop()  # as when an exception in watchdog's emitter ends its thread
        dead.join(timeout=5)
        missed = write_fits(inc / "while_blind.fits", seed=31)
        assert _wait(lambda: w._observer is not dead and w._observer.is_alive(), timeout_s=5.0)
        assert _wait(lambda: missed in [p for b in batches for p in b], timeout_s=10.0)
        later = write_fits(inc / "after.fits", seed=32)  # events flow again
        assert _wait(lambda: later in [p for b in batches for p in b], timeout_s=10.0)
