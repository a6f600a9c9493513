"""The folder watcher: completion, .part renames, content dedupe, training pairs, and the
real loop (watchdog + flows in-process) end to end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prefect_fixtures import PipelineEnv, write_fits
from sqlalchemy.exc import OperationalError

from flows.provenance import ProvenanceDB, TrainingPair
from flows.watcher import CompletionTracker, Watcher, matches

PATTERNS = ("*.fits", "*.fits.gz", "*.tif")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_matches_patterns_and_hidden_names() -> None:
    assert matches(Path("a/M42.FITS"), PATTERNS)
    assert matches(Path("M42.fits.gz"), PATTERNS)
    assert not matches(Path("M42.fits.part"), PATTERNS)
    assert not matches(Path(".M42.fits"), PATTERNS)
    assert not matches(Path("notes.txt"), PATTERNS)


def test_tracker_waits_for_stable_size_and_mtime(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletionTracker(stable_s=2.0, clock=clock)
    f = tmp_path / "a.fits"
    f.write_bytes(b"x" * 10)
    tracker.note(f)
    assert tracker.ready() == []  # first sight starts the clock
    clock.t = 1.5
    with f.open("ab") as fh:  # still growing
        fh.write(b"y" * 10)
    assert tracker.ready() == []
    clock.t = 3.0
    assert tracker.ready() == []  # 1.5 s since the last change
    clock.t = 3.6
    assert tracker.ready() == [f]
    assert tracker.ready() == []  # reported once


def test_tracker_waits_for_a_fits_file_shorter_than_its_headers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy that stalls for longer than stable_s: the FITS file's headers say how long
    it will be, so it waits for the rest (up to incomplete_wait_s after its last change)
    instead of failing as truncated and counting a failed attempt."""
    import numpy as np
    from astropy.io import fits

    clock = Clock()
    tracker = CompletionTracker(stable_s=2.0, clock=clock, incomplete_wait_s=60.0)
    whole = tmp_path / "whole.fits"
    fits.PrimaryHDU(np.zeros((40, 50), np.float32)).writeto(whole)
    data = whole.read_bytes()
    f = tmp_path / "M42.fits"
    f.write_bytes(data[:5000])  # the copy stalls here
    tracker.note(f)
    tracker.ready()
    clock.t = 10.0
    with caplog.at_level("INFO", logger="starnet.watch"):
        assert tracker.ready() == []  # stable, but short: waiting
    assert "shorter than its FITS headers say" in caplog.text
    f.write_bytes(data)  # the copy completes
    clock.t = 11.0
    assert tracker.ready() == []  # changed: stable_s again
    clock.t = 13.5
    assert tracker.ready() == [f]
    # a copy that never completes is handed on after incomplete_wait_s
    g = tmp_path / "stuck.fits"
    g.write_bytes(data[:5000])
    tracker.note(g)
    tracker.ready()
    clock.t = 13.5 + 59.0
    assert tracker.ready() == []
    clock.t = 13.5 + 61.0
    assert tracker.ready() == [g]
    # other formats, and compressed FITS, are judged by size and mtime alone
    tif = tmp_path / "a.tif"
    tif.write_bytes(b"II*\x00" + b"x" * 100)
    tracker.note(tif)
    tracker.ready()
    clock.t += 2.5
    assert tracker.ready() == [tif]


def test_tracker_skips_empty_and_vanished_files(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletionTracker(stable_s=0.0, clock=clock)
    empty, gone = tmp_path / "empty.fits", tmp_path / "gone.fits"
    empty.touch()
    gone.write_bytes(b"x")
    tracker.note(empty)
    tracker.note(gone)
    gone.unlink()
    assert tracker.ready() == []
    assert list(tracker.pending) == [empty]  # the empty one may still grow


def _watcher(tmp_path: Path, db: ProvenanceDB, **kw: object) -> tuple[Watcher, list[list[Path]]]:
    batches: list[list[Path]] = []
    w = Watcher(
        incoming=tmp_path / "incoming",
        db=db,
        on_frames=batches.append,
        training=tmp_path / "training",
        patterns=PATTERNS,
        stable_s=1.0,
        clock=kw.pop("clock", time.monotonic),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return w, batches


def test_part_then_rename_dispatches_once_and_dedupes_content(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    clock = Clock()
    w, batches = _watcher(tmp_path, provenance_db, clock=clock)
    part = tmp_path / "incoming" / "night1" / "M42.fits.part"
    write_fits(part)
    w.inbox.put(part)  # what watchdog reports while the upload runs
    final = part.with_name("M42.fits")
    part.rename(final)
    w.inbox.put(final)  # on_moved: the destination
    w.step()
    clock.t = 1.1
    assert w.step() == [final]
    assert batches == [[final]]
    w.inbox.put(final)  # e.g. a late modified event
    copy = final.with_name("M42_copy.fits")
    copy.write_bytes(final.read_bytes())
    w.inbox.put(copy)
    w.step()
    clock.t = 2.5
    assert w.step() == []  # same content: not again
    assert batches == [[final]]


def test_scan_at_start_and_skip_frames_processed_before(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    done = write_fits(tmp_path / "incoming" / "done.fits", seed=1)
    new = write_fits(tmp_path / "incoming" / "new.fits", seed=2)
    (tmp_path / "incoming" / "upload.fits.part").write_bytes(b"partial")
    provenance_db.register_frame(done)
    sha = provenance_db.register_frame(done).sha256
    claim = provenance_db.claim_run(sha, "m1", "a" * 64, {})
    provenance_db.finish_run(claim.run_key, "succeeded")
    clock = Clock()
    w, batches = _watcher(tmp_path, provenance_db, clock=clock)
    assert w.scan() == 2
    w.step()
    clock.t = 1.5
    w.step()
    assert batches == [[new.resolve()]]


def test_failed_dispatch_is_retried(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    clock = Clock()
    calls: list[list[Path]] = []

    def flaky(paths: list[Path]) -> None:
        calls.append(paths)
        if len(calls) == 1:
            raise ConnectionError("API down")

    w = Watcher(
        incoming=tmp_path / "incoming", db=provenance_db, on_frames=flaky,
        patterns=PATTERNS, stable_s=0.0, clock=clock, retry_s=10.0,
    )  # fmt: skip
    f = write_fits(tmp_path / "incoming" / "a.fits")
    w.inbox.put(f)
    assert w.step() == []
    clock.t = 5.0
    w.step()
    assert len(calls) == 1
    clock.t = 11.0
    assert w.step() == [f]
    assert len(calls) == 2


def test_training_pair_needs_both_sides(tmp_path: Path, provenance_db: ProvenanceDB) -> None:
    seen: list[tuple[TrainingPair, bool]] = []
    clock = Clock()
    w, batches = _watcher(tmp_path, provenance_db, clock=clock)
    w.on_pair = lambda pair, is_new: seen.append((pair, is_new))
    orig = write_fits(tmp_path / "training" / "original" / "p1.fits", seed=3)
    w.inbox.put(orig)
    w.step()
    clock.t = 1.1
    w.step()
    assert seen == []
    star = write_fits(tmp_path / "training" / "starless" / "p1.fits", seed=4)
    w.inbox.put(star)
    w.step()
    clock.t = 2.2
    w.step()
    assert [(p.original_path, p.starless_path, new) for p, new in seen] == [
        (str(orig.resolve()), str(star.resolve()), True)
    ]
    assert batches == []  # training images are not frames
    assert len(provenance_db.list_training_pairs()) == 1


class FailOnce:
    """Wraps one method of the real DB (or a callback) so that its first call raises: a brief
    outage (PostgreSQL restarting), everything else real."""

    def __init__(self, real: object) -> None:
        self.real, self.calls = real, 0

    def __call__(self, *args: object) -> object:
        self.calls += 1
        if self.calls == 1:
            raise OperationalError("SELECT", {}, Exception("server closed the connection"))
        return self.real(*args)  # type: ignore[operator]


def test_db_outage_while_checking_frames_loses_none(
    tmp_path: Path, provenance_db: ProvenanceDB, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    w, batches = _watcher(tmp_path, provenance_db, clock=clock, retry_s=10.0)
    w.stable_s = w.tracker.stable_s = 0.0
    a = write_fits(tmp_path / "incoming" / "A.fits", seed=1).resolve()
    b = write_fits(tmp_path / "incoming" / "B.fits", seed=2).resolve()
    provenance_db.is_known_input = FailOnce(provenance_db.is_known_input)  # type: ignore[method-assign]
    assert w.scan() == 2
    assert w.step() == [b]  # A's check failed; B, the other file of the step, goes on
    assert f"{a}: cannot handle it now" in caplog.text
    assert "server closed the connection" in caplog.text
    clock.t = 5.0
    assert w.step() == []  # not before retry_s
    clock.t = 11.0
    assert w.step() == [a]  # tried again: not lost
    assert batches == [[b], [a]]


def test_db_outage_leaves_no_hash_behind_so_a_touch_brings_the_file_back(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    clock = Clock()
    w, batches = _watcher(tmp_path, provenance_db, clock=clock, retry_s=1000.0)
    w.stable_s = w.tracker.stable_s = 0.0
    a = write_fits(tmp_path / "incoming" / "A.fits", seed=1).resolve()
    provenance_db.is_known_input = FailOnce(provenance_db.is_known_input)  # type: ignore[method-assign]
    w.inbox.put(a)
    assert w.step() == []
    assert w.dispatched == set()
    w.inbox.put(a)  # touched again before the retry is due
    assert w.step() == [a]
    assert batches == [[a]]


def test_failed_pair_registration_or_retrain_is_retried_as_new(
    tmp_path: Path, provenance_db: ProvenanceDB, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    w, batches = _watcher(tmp_path, provenance_db, clock=clock, retry_s=10.0)
    w.stable_s = w.tracker.stable_s = 0.0
    seen: list[tuple[int, bool]] = []

    def on_pair(pair: TrainingPair, is_new: bool) -> None:
        seen.append((pair.id, is_new))
        if len(seen) == 1:
            raise RuntimeError("retrain crashed")

    w.on_pair = on_pair
    provenance_db.add_training_pair = FailOnce(provenance_db.add_training_pair)  # type: ignore[method-assign]
    orig = write_fits(tmp_path / "training" / "original" / "p1.fits", seed=3).resolve()
    star = write_fits(tmp_path / "training" / "starless" / "p1.fits", seed=4).resolve()
    frame = write_fits(tmp_path / "incoming" / "F.fits", seed=5).resolve()
    assert w.scan() == 3
    assert w.step() == [frame]  # the pair's registration failed; the frame goes on
    assert f"{star}: cannot handle it now" in caplog.text and seen == []
    clock.t = 11.0
    w.step()  # registered now, but on_pair (local mode: the retrain) fails
    assert seen == [(1, True)] and "retrain crashed" in caplog.text
    assert len(provenance_db.list_training_pairs()) == 1
    clock.t = 22.0
    w.step()  # the pair is known to the DB by now, but on_pair never succeeded on it
    assert seen == [(1, True), (1, True)]
    clock.t = 40.0
    w.inbox.put(orig)
    w.step()
    assert seen[-1] == (1, False)  # announced once it went through
    assert batches == [[frame]]


# ---- end to end: watchdog + in-process flows ----------------------------------------------


def _wait(cond: object, timeout_s: float = 45.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the watcher")


@pytest.mark.usefixtures("prefect_harness")
def test_watch_processes_part_upload_once_and_retrains_on_pair(pipeline_env: PipelineEnv) -> None:
    from flows.cli_pipeline import build_watcher

    env = pipeline_env
    settings = env.settings
    watcher = build_watcher(settings, config=env.config, mode="local")
    dispatched: list[list[Path]] = []
    inner = watcher.on_frames
    watcher.on_frames = lambda paths: (dispatched.append(paths), inner(paths))[1]
    db = ProvenanceDB.from_settings(settings)
    early = write_fits(env.incoming / "early.fits", seed=5)  # arrived while it was down
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,), daemon=True)
    t0 = time.monotonic()
    thread.start()
    try:
        _wait(lambda: len(db.list_runs(status="succeeded")) == 1)
        part = write_fits(env.incoming / "M42.fits.part", seed=6)
        t_complete = time.monotonic()
        part.rename(env.incoming / "M42.fits")
        _wait(lambda: len(db.list_runs(status="succeeded")) == 2)
        latency_s = time.monotonic() - t_complete
        write_fits(env.training / "original" / "pair.fits", seed=7)
        write_fits(env.training / "starless" / "pair.fits", seed=8)
        _wait(lambda: len(db.list_models()) == 2, timeout_s=60)
        time.sleep(3 * settings.watch.poll_s)
    finally:
        stop.set()
        thread.join(timeout=30)
    print(f"first frame {t_complete - t0:.1f} s after start; .part -> done {latency_s:.1f} s")
    names = [p.name for batch in dispatched for p in batch]
    assert sorted(names) == ["M42.fits", "early.fits"]  # each exactly once, never the .part
    runs = db.list_runs()
    assert len(runs) == 2 and all(r.status == "succeeded" for r in runs)
    m42 = next(r for r in runs if r.frame_path.endswith("M42.fits"))
    assert {o.kind for o in m42.outputs} >= {"starless", "mask"}
    assert all(Path(o.path).is_file() for o in m42.outputs)
    assert (env.outputs / "M42_starless.fits").is_file()
    assert not early.with_name("early_starless.fits").exists()  # outputs go to outputs/
    candidate = [m for m in db.list_models() if m.parent == "tiny-a"]
    assert len(candidate) == 1 and candidate[0].training_pair_ids
    assert Path(candidate[0].config["weights_path"]).is_file()
