"""Which process holds a claim (a dead one is taken over at once), failing a run by hand,
and the code version (package version and git revision)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

import flows.provenance as provenance
from flows.provenance import ProvenanceDB, ProvenanceError, default_code_version

REPO = Path(__file__).resolve().parents[1]
W1 = "1" * 64
PARAMS = {"tile_px": 256}
LINUX = Path("/proc/self/stat").is_file()

CLAIMER = """
import os, signal, sys
from flows.provenance import ProvenanceDB
url, path, then = sys.argv[1:]
db = ProvenanceDB(url)
claim = db.claim_run(db.register_frame(path).sha256, "v1", "1" * 64, {"tile_px": 256})
print(claim.state, claim.run_key, flush=True)
if then == "die":
    os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does mid-compute
sys.stdin.read()  # "wait": alive until the test closes stdin
"""


def _file(path: Path, seed: int) -> Path:
    path.write_bytes(np.random.default_rng(seed).bytes(512))
    return path


Claimer = Callable[[Path, str], tuple["subprocess.Popen[str]", str]]


@pytest.fixture
def claimer(db_url: str) -> Iterator[Claimer]:
    """Start a process that claims a frame's run, then dies at once or waits."""
    procs: list[subprocess.Popen[str]] = []

    def start(path: Path, then: str) -> tuple[subprocess.Popen[str], str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        p = subprocess.Popen(
            [sys.executable, "-c", CLAIMER, db_url, str(path), then],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        procs.append(p)
        assert p.stdout is not None
        state, key = p.stdout.readline().split()
        assert state == "owned"
        if then == "die":
            p.wait(timeout=60)
            assert p.returncode == -signal.SIGKILL
        return p, key

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=60)


def _set_attempt(db: ProvenanceDB, **values: object) -> None:
    from flows.db_models import RunAttemptRow

    with Session(db.engine) as s, s.begin():
        s.execute(update(RunAttemptRow).values(**values))


# ---- B: a claim whose process is gone ------------------------------------------------------


def test_a_run_whose_process_was_killed_is_taken_over_at_once(
    provenance_db: ProvenanceDB, claimer: Claimer, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=1))
    _proc, key = claimer(tmp_path / "a.fits", "die")
    (run,) = db.list_runs(status="running")
    # the nightly offers it now, not 2 h later (database.stale_run_s)
    assert [f.sha256 for f in db.frames_needing_rerun("v1", 3)] == [frame.sha256]
    again = db.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=3)
    assert again.owned and again.run.attempts == 2 and again.run_key == key
    assert run.attempt_log[0].pid is not None and run.attempt_log[0].pid != os.getpid()
    first = db.get_run(key).attempt_log[0]  # type: ignore[union-attr]
    assert first.status == "failed" and "is gone" in (first.error or "")
    assert first.finished_at is not None


def test_a_run_whose_process_lives_is_busy_until_it_dies(
    provenance_db: ProvenanceDB, claimer: Claimer, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=2))
    proc, _key = claimer(tmp_path / "a.fits", "wait")
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "busy"
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True).state == "busy"
    assert db.frames_needing_rerun("v1", 3) == []
    proc.kill()
    proc.wait(timeout=60)
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).owned


@pytest.mark.skipif(not LINUX, reason="process start times come from /proc")
def test_a_reused_pid_or_a_restarted_host_is_no_claim(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=3))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = provenance.proc_stat(sleeper.pid)[1]  # type: ignore[index]
        db.claim_run(frame.sha256, "v1", W1, PARAMS)
        _set_attempt(db, pid=sleeper.pid, pid_start=start)  # the sleeper holds it
        assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "busy"
        _set_attempt(db, pid_start=start - 1)  # that pid was another process's at the claim
        claim = db.claim_run(frame.sha256, "v1", W1, PARAMS)
        assert claim.owned and claim.run.attempts == 2
        assert "the pid was reused" in (claim.run.attempt_log[0].error or "")
    finally:
        sleeper.kill()
        sleeper.wait()
    booted = provenance._boot_time()
    assert booted is not None
    # a claim of this host's name in another boot: before this boot, the host restarted
    # since (power cut); after it, another machine of the same name claimed it
    # (not stale by time either: the host restarted within database.stale_run_s)
    patient = ProvenanceDB(db.url, stale_after_s=datetime.now(UTC).timestamp() - booted + 3600)
    _set_attempt(db, boot_id="0" * 36, started_at=datetime.now(UTC))
    assert patient.claim_run(frame.sha256, "v1", W1, PARAMS).state == "busy"
    _set_attempt(db, started_at=datetime.fromtimestamp(booted - 60, UTC))
    claim = patient.claim_run(frame.sha256, "v1", W1, PARAMS)
    assert claim.owned and "restarted since its claim" in (claim.run.attempt_log[-2].error or "")


def test_a_claim_on_another_host_is_never_judged_from_here(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    mine = db.register_frame(_file(tmp_path / "b.fits", seed=40))
    key = db.claim_run(mine.sha256, "v1", W1, PARAMS).run_key  # this live process's claim
    with pytest.raises(ProvenanceError, match="its process .* is alive"):
        db.fail_run(key, "worker hung")
    assert db.fail_run(key, "worker hung", force=True).status == "failed"
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=4))
    claim = db.claim_run(frame.sha256, "v1", W1, PARAMS, host="node2")
    assert claim.run.attempt_log[0].pid is None  # no process of this host to record
    _set_attempt(db, pid=2**22 + 12345)  # (no such pid here)
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "busy"
    # what an operator does when node2 died: fail it by hand (a prefix of the key will do)
    with pytest.raises(ValueError, match="reason"):
        db.fail_run(claim.run_key, " ")
    run = db.fail_run(claim.run_key[:12], "node2 lost power")
    assert run.status == "failed" and run.error == "failed by hand: node2 lost power"
    with pytest.raises(ProvenanceError, match="not in progress"):
        db.fail_run(claim.run_key, "again")
    with pytest.raises(ProvenanceError, match="no run"):
        db.fail_run("f" * 12, "x")
    again = db.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=3)
    assert again.owned and again.run.attempts == 2


def test_failing_a_dead_redo_by_hand_keeps_the_success(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=5))
    key = db.claim_run(frame.sha256, "v1", W1, PARAMS).run_key
    db.finish_run(key, "succeeded", attempt=1)
    db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True, host="node2")
    assert [r.run_key for r in db.list_runs(status="running")] == [key]
    view = db.fail_run(key, "node2 was reinstalled")
    assert view.status == "failed" and view.attempts == 1  # the redo's attempt
    run = db.get_run(key)
    assert run is not None and run.status == "succeeded"
    assert [a.status for a in run.attempt_log] == ["succeeded", "failed"]


def test_the_heartbeat_records_the_computing_process(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=6))
    claim = db.claim_run(frame.sha256, "v1", W1, PARAMS)
    _set_attempt(db, pid=1)
    run = db.start_run(claim.run_key)
    assert run.attempt_log[-1].pid == os.getpid() and run.status == "running"
    # a worker whose claim was taken over beats no more for the new owner's attempt
    impatient = ProvenanceDB(db.url, stale_after_s=1e-6)
    assert impatient.claim_run(frame.sha256, "v1", W1, PARAMS, host="node2").owned
    with pytest.raises(ProvenanceError, match="claimed again"):
        db.start_run(claim.run_key, attempt=claim.run.attempts)
    assert db.get_run(claim.run_key).attempt_log[-1].host == "node2"  # type: ignore[union-attr]


# ---- F: the code version -------------------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(root), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_code_version_names_the_git_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git_revision = provenance.git_revision
    root = tmp_path / "checkout"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "a.py").write_text("x = 1\n")
    assert git_revision(root) is None  # no commit yet
    git_revision.cache_clear()
    _git(root, "add", "a.py")
    _git(root, "commit", "-q", "-m", "one")
    head = _git(root, "rev-parse", "HEAD").strip()
    (root / "untracked.txt").write_text("not code")
    assert git_revision(root) == head[:12]
    git_revision.cache_clear()
    (root / "a.py").write_text("x = 2\n")
    assert git_revision(root) == head[:12] + "+dirty"
    (root / "a.py").write_text("x = 3\n")
    assert git_revision(root) == head[:12] + "+dirty"  # once per process (cached)
    git_revision.cache_clear()
    assert git_revision(tmp_path) is None  # not a checkout (an installed package)
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert git_revision(root) is None  # no git: never an error
    git_revision.cache_clear()


@pytest.mark.skipif(
    shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a checkout"
)
def test_the_default_code_version_of_this_checkout() -> None:
    head = _git(REPO, "rev-parse", "HEAD").strip()
    code = default_code_version()
    assert code.startswith("starnet ") and f" git {head[:12]}" in code
    assert len(code) <= 64


def test_the_code_version_without_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "git_revision", lambda root: None)
    assert default_code_version().startswith("starnet ")
    assert " git " not in default_code_version()


def test_a_heartbeat_keeps_a_run_and_leaves_its_start_alone(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "b.fits", seed=7))
    claim = db.claim_run(frame.sha256, "v1", W1, PARAMS)
    started = db.start_run(claim.run_key).started_at
    other = ProvenanceDB(db.url, stale_after_s=0.5)  # another worker, with a short patience
    time.sleep(0.7)
    assert db.heartbeat(claim.run_key, claim.run.attempts) is None
    again = other.claim_run(frame.sha256, "v1", W1, PARAMS, host="node2")
    assert again.state == "busy"  # a beat 0 s ago: alive, though started 0.7 s ago
    assert db.get_run(claim.run_key).started_at == started  # type: ignore[union-attr]
    time.sleep(0.7)  # no beat since: stale
    assert other.claim_run(frame.sha256, "v1", W1, PARAMS, host="node2").owned
    lost = db.heartbeat(claim.run_key, claim.run.attempts)
    assert lost is not None and lost.startswith("claimed again (now attempt 2 on node2)")
