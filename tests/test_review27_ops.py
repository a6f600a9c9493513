"""Operations review 27: an interrupted attempt is not counted toward ``max_attempts`` (a
few service restarts mid-frame no longer exhaust it), runs left ``running`` by a process
that is gone are ended when the services start, the ``prefect.*`` settings are checked
when they load, a missing incoming folder is not created in the mount's place, and the
deploy files."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

import flows.provenance as provenance
from flows.provenance import ProvenanceDB

REPO = Path(__file__).resolve().parents[1]
W1 = "1" * 64
PARAMS = {"tile_px": 256}


def _frame(db: ProvenanceDB, path: Path, seed: int) -> str:
    path.write_bytes(np.random.default_rng(seed).bytes(512))
    return db.register_frame(path).sha256


def _interrupt(db: ProvenanceDB, sha: str, max_attempts: int = 3) -> int:
    claim = db.claim_run(sha, "v1", W1, PARAMS, max_attempts=max_attempts)
    assert claim.owned, claim.state
    db.finish_run(
        claim.run_key, "interrupted", error="a.fits: interrupted: TerminationSignal: SIGTERM",
        attempt=claim.run.attempts,
    )  # fmt: skip
    return claim.run.attempts


def _fail(db: ProvenanceDB, sha: str, max_attempts: int = 3) -> int:
    claim = db.claim_run(sha, "v1", W1, PARAMS, max_attempts=max_attempts)
    assert claim.owned, claim.state
    db.finish_run(claim.run_key, "failed", error="a.fits: bad", attempt=claim.run.attempts)
    return claim.run.attempts


# ---- 1. interrupted attempts ---------------------------------------------------------------


def test_interruptions_do_not_exhaust_a_frame_but_failures_still_do(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    db.register_model("v1", W1, {})
    sha = _frame(db, tmp_path / "a.fits", seed=1)
    for n in range(1, 6):  # five service stops mid-frame, max_attempts 3
        assert _interrupt(db, sha) == n
        (run,) = db.list_runs()
        assert run.status == "interrupted" and run.attempt_log[-1].status == "interrupted"
        # the nightly still offers it, the watcher's claim still takes it
        assert [f.sha256 for f in db.frames_needing_rerun("v1", 3)] == [sha]
    assert [r.status for r in db.list_runs(status="interrupted")] == ["interrupted"]
    assert db.list_runs(status="failed") == []
    assert _fail(db, sha) == 6 and _fail(db, sha) == 7  # two real failures: not yet
    assert [f.sha256 for f in db.frames_needing_rerun("v1", 3)] == [sha]
    assert db.list_runs(status="failed")[0].status == "failed"
    assert _fail(db, sha) == 8  # the third real failure exhausts it
    assert db.frames_needing_rerun("v1", 3) == []
    assert db.claim_run(sha, "v1", W1, PARAMS, max_attempts=3).state == "exhausted"
    statuses = [a.status for a in db.list_runs()[0].attempt_log]
    assert statuses == ["interrupted"] * 5 + ["failed"] * 3


def test_a_frame_interrupted_every_time_is_still_not_tried_forever(
    provenance_db: ProvenanceDB, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provenance, "FREE_INTERRUPTIONS", 2)
    db = provenance_db
    db.register_model("v1", W1, {})
    sha = _frame(db, tmp_path / "a.fits", seed=2)
    for _ in range(4):  # 2 free, then counted: 2 counted of 3 allowed
        _interrupt(db, sha)
        assert [f.sha256 for f in db.frames_needing_rerun("v1", 3)] == [sha]
    _interrupt(db, sha)  # the fifth: 3 counted
    assert db.frames_needing_rerun("v1", 3) == []
    assert db.claim_run(sha, "v1", W1, PARAMS, max_attempts=3).state == "exhausted"


def test_a_redo_interrupted_keeps_the_success_and_is_shown_interrupted(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    sha = _frame(db, tmp_path / "a.fits", seed=3)
    claim = db.claim_run(sha, "v1", W1, PARAMS)
    db.finish_run(claim.run_key, "succeeded", attempt=1)
    redo = db.claim_run(sha, "v1", W1, PARAMS, redo=True, max_attempts=1)
    assert redo.owned and redo.run.attempts == 1
    db.finish_run(redo.run_key, "interrupted", error="a.fits: interrupted: KeyboardInterrupt",
                  attempt=1)  # fmt: skip
    (run,) = db.list_runs()
    assert run.status == "succeeded" and run.attempt_log[-1].status == "interrupted"
    again = db.claim_run(sha, "v1", W1, PARAMS, redo=True, max_attempts=1)
    assert again.owned and again.run.attempts == 2  # not exhausted by the interruption
    with pytest.raises(ValueError, match="interrupted run needs its error"):
        db.finish_run(again.run_key, "interrupted", attempt=2)


def _set_attempt(db: ProvenanceDB, **values: object) -> None:
    from flows.db_models import RunAttemptRow

    with Session(db.engine) as s, s.begin():
        s.execute(update(RunAttemptRow).values(**values))


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="Linux /proc")
def test_a_dead_worker_counts_unless_the_host_restarted(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    """A worker killed in this boot (OOM kill on a poison frame) counts, so such a frame
    ends after max_attempts; one whose host restarted since its claim does not."""
    db = provenance_db
    sha = _frame(db, tmp_path / "a.fits", seed=4)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for n in (1, 2):
        claim = db.claim_run(sha, "v1", W1, PARAMS, max_attempts=2)
        assert claim.owned and claim.run.attempts == n
        _set_attempt(db, pid=dead.pid)  # the claiming process was killed
    claim = db.claim_run(sha, "v1", W1, PARAMS, max_attempts=2)
    assert claim.state == "exhausted"
    last = claim.run.attempt_log[-1]
    assert last.status == "failed" and "attempt 2 of 2" in (last.error or "")

    other = _frame(db, tmp_path / "b.fits", seed=5)
    booted = provenance._boot_time()
    assert booted is not None
    from datetime import UTC, datetime

    patient = ProvenanceDB(db.url, stale_after_s=datetime.now(UTC).timestamp() - booted + 3600)
    first = patient.claim_run(other, "v1", W1, PARAMS, max_attempts=1)
    _claimed_before_this_boot(db, first.run_key, booted - 60)  # the host restarted
    again = patient.claim_run(other, "v1", W1, PARAMS, max_attempts=1)
    assert again.owned and again.run.attempts == 2
    assert again.run.attempt_log[0].status == "interrupted"
    assert "restarted since its claim" in (again.run.attempt_log[0].error or "")


def _claimed_before_this_boot(db: ProvenanceDB, run_key: str, started: float) -> None:
    """The run's attempts as a claim made in an earlier boot of this host, at ``started``
    (a POSIX time before this boot)."""
    from datetime import UTC, datetime

    from flows.db_models import RunAttemptRow

    with Session(db.engine) as s, s.begin():
        s.execute(
            update(RunAttemptRow)
            .where(RunAttemptRow.run_id == s.scalar(_run_id(run_key)))
            .values(boot_id="0" * 36, started_at=datetime.fromtimestamp(started, UTC))
        )


def _run_id(run_key: str) -> Any:
    from sqlalchemy import select

    from flows.db_models import RunRow

    return select(RunRow.id).where(RunRow.run_key == run_key)


def test_a_stale_submission_never_started_is_not_counted(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = ProvenanceDB(provenance_db.url, stale_after_s=1)
    sha = _frame(db, tmp_path / "a.fits", seed=6)
    db.claim_run(sha, "v1", W1, PARAMS, status="queued", max_attempts=1)
    time.sleep(1.2)
    claim = db.claim_run(sha, "v1", W1, PARAMS, max_attempts=1)
    assert claim.owned and claim.run.attempt_log[0].status == "interrupted"


# ---- 2. runs left running by a process that is gone ----------------------------------------


def test_end_gone_runs_ends_only_the_runs_whose_process_is_gone(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    mine = _frame(db, tmp_path / "a.fits", seed=7)
    gone = _frame(db, tmp_path / "b.fits", seed=8)
    db.claim_run(mine, "v1", W1, PARAMS)  # this live process's claim
    key = db.claim_run(gone, "v1", W1, PARAMS).run_key
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from flows.db_models import RunAttemptRow

    with Session(db.engine) as s, s.begin():
        s.execute(
            update(RunAttemptRow)
            .where(RunAttemptRow.run_id == s.scalar(_run_id(key)))
            .values(pid=dead.pid)
        )
    (ended,) = db.end_gone_runs()
    assert ended.run_key == key and ended.status == "failed"
    assert "no end recorded" in (ended.error or "") and "is gone" in (ended.error or "")
    assert {r.frame_sha256 for r in db.list_runs(status="running")} == {mine}
    assert db.end_gone_runs() == []


# ---- 5. the prefect.* settings are checked when they load ----------------------------------


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("timezone", "Mars/Olympus", "IANA time zone"),
        ("nightly_cron", "0 25 * * *", "hour '25'"),
        ("nightly_cron", "0 3 * *", "expected 5 fields"),
        ("gpu_limit_name", "gpu-{hostname}", "KeyError"),
        ("gpu_limit_name", "gpu-{0}", "IndexError"),
        ("retrain_limit_name", "retrain-{", "ValueError"),
        ("process_deployment", "nope", "flow-name/deployment-name"),
    ],
)
def test_a_bad_prefect_setting_is_one_line_naming_file_and_key(
    tmp_path: Path, key: str, value: str, said: str
) -> None:
    import yaml

    from flows.settings import SettingsError, load_settings

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"prefect": {key: value}}), encoding="utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(cfg)
    message = str(caught.value)
    assert message.startswith(f"{cfg}.prefect.{key}: ") and said in message
    assert "\n" not in message


def test_good_prefect_settings_load(tmp_path: Path) -> None:
    import yaml

    from flows.settings import load_settings

    cfg = tmp_path / "config.yaml"
    good = {"timezone": "Europe/Berlin", "nightly_cron": "30 2 * * mon-fri",
            "gpu_limit_name": "starnet-gpu-{host}", "process_deployment": "a/b"}  # fmt: skip
    cfg.write_text(yaml.safe_dump({"prefect": good}), encoding="utf-8")
    assert load_settings(cfg).prefect.nightly_cron == "30 2 * * mon-fri"
    from flows.settings import cron_problem

    for cron in ("@daily", "*/15 0-6 1,15 jan-mar 0", "0 3 L * *", "0 0 * * 7"):
        assert cron_problem(cron) is None, cron


# ---- 6. a missing incoming folder is not made where a mount belongs ------------------------


def _watcher(db: ProvenanceDB, incoming: Path, training: Path | None = None) -> Any:
    from flows.watcher import Watcher

    return Watcher(
        incoming=incoming, db=db, on_frames=lambda paths: None, training=training,
        incoming_setting="incoming_dir", training_setting="training_dir",
    )  # fmt: skip


def test_a_watched_folder_is_made_only_in_a_folder_that_exists(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    unmounted = tmp_path / "not_mounted" / "incoming"
    w = _watcher(provenance_db, unmounted)
    with pytest.raises(FileNotFoundError, match=r"^incoming_dir: .*not_mounted/incoming does"):
        w._make_folders()
    assert not (tmp_path / "not_mounted").exists()  # before: made, parents and all

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"^incoming_dir: .*afile is not a folder"):
        _watcher(provenance_db, afile)._make_folders()

    data = tmp_path / "data"
    data.mkdir()
    w = _watcher(provenance_db, data / "incoming", training=data / "training")
    w._make_folders()  # the default layout in an existing data_dir
    assert (data / "incoming").is_dir() and (data / "training" / "starless").is_dir()
    bad = _watcher(provenance_db, data / "incoming", training=tmp_path / "x" / "training")
    with pytest.raises(FileNotFoundError, match=r"^training_dir: "):
        bad._make_folders()


def test_starnet_watch_on_a_missing_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    import flows.cli as cli

    monkeypatch.delenv("STARNET_DATABASE_URL", raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                   "prefect": {"submit": "local"}}), encoding="utf-8")  # fmt: skip
    (tmp_path / "data").mkdir()
    missing = tmp_path / "nas" / "incoming"
    assert cli.main(["--config", str(cfg), "watch", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("starnet watch: starnet watch INCOMING: ") and str(missing) in err
    assert "\n" not in err and not missing.parent.exists()


# ---- 3, 4. deploy files ---------------------------------------------------------------------


def _unit(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (REPO / "deploy" / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            k, v = line.split("=", 1)
            values.setdefault(k.strip(), []).append(v.strip())
    return values


def test_the_serve_unit_exists_and_the_data_mount_is_required() -> None:
    serve = _unit("starnet-serve.service")
    assert serve["ExecStart"] == ["/opt/starnet/.venv/bin/starnet serve"]
    assert serve["WorkingDirectory"] == ["/var/lib/starnet"]
    assert "starnet-prefect-server.service" in " ".join(serve["After"])
    for name in ("starnet-serve.service", "starnet-watcher.service", "starnet-worker@.service"):
        assert _unit(name).get("RequiresMountsFor") == ["/srv/starnet"], name
    readme = (REPO / "deploy" / "README.md").read_text()
    assert "starnet-serve.service" in readme
    # section 2 names the commands by their full path (sudo resets PATH)
    assert not re.search(r"(?m)(?:;|bash -c '|^\s*)\s*(starnet serve|prefect server start)", readme)


def test_a_stale_claim_from_before_a_reboot_is_interrupted_on_a_direct_claim_too(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    """A power cut longer than stale_run_s, then `starnet transform` on the frame before
    any service started: the claim from before the reboot is interrupted, not counted, as
    end_gone_runs records it (review 2: a stale claim never reached the reboot check)."""
    db = provenance_db
    booted = provenance._boot_time()
    assert booted is not None
    sha = _frame(db, tmp_path / "c.fits", seed=6)
    impatient = ProvenanceDB(db.url, stale_after_s=1.0)
    first = impatient.claim_run(sha, "v1", W1, PARAMS, max_attempts=1)
    _claimed_before_this_boot(db, first.run_key, booted - 86400)
    again = impatient.claim_run(sha, "v1", W1, PARAMS, max_attempts=1)
    assert again.owned and again.run.attempts == 2
    assert again.run.attempt_log[0].status == "interrupted"
    assert "restarted since its claim" in (again.run.attempt_log[0].error or "")


def test_serve_stops_its_flow_runs_first_so_they_record_their_frames(tmp_path: Path) -> None:
    """Prefect's runner stopped on SIGTERM at once and killed its flow runs, so a frame
    stayed `running`; starnet serve's runner first sends each child SIGTERM and waits (up
    to a grace) for it to end. Measured end to end with a Prefect server: the frame is then
    recorded `interrupted: TerminationSignal: SIGTERM` (BENCHMARKS / note)."""
    from flows.cli_pipeline import _child_pids, stop_flow_runs

    marker = tmp_path / "recorded"
    polite = (
        "import signal, sys, time, pathlib\n"
        "def bye(*a):\n"
        f"    time.sleep(0.3); pathlib.Path({str(marker)!r}).write_text('interrupted')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    stubborn = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    kids = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for code in (polite, stubborn)
    ]
    try:
        for kid in kids:
            assert kid.stdout is not None and kid.stdout.readline().strip() == "ready"
        pids = _child_pids()
        assert {k.pid for k in kids} <= set(pids)
        t0 = time.monotonic()
        left = stop_flow_runs([k.pid for k in kids], grace_s=3.0)
        assert left == [kids[1].pid] and 2.5 < time.monotonic() - t0 < 10
        assert marker.read_text() == "interrupted"  # the polite one had time to record
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()
            if kid.stdout is not None:
                kid.stdout.close()
