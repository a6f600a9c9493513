"""The provenance database, on SQLite and on a real PostgreSQL server (see db_fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from astropy.io import fits
from sqlalchemy import inspect

from flows.cli import main
from flows.db_models import Base
from flows.provenance import (
    HeaderFacts,
    ProvenanceDB,
    ProvenanceError,
    ProvenanceRecord,
    alembic_config,
    make_run_key,
    param_hash,
    sha256_file,
)
from flows.provenance_records import OutputKind

REPO = Path(__file__).resolve().parents[1]
W1 = "1" * 64  # weights sha256 of model v1
W2 = "2" * 64
PARAMS = {"tile_px": 256, "overlap_px": 32, "passes": 1, "stretch": {"mode": "auto"}}
TABLES = {
    "frames",
    "model_versions",
    "runs",
    "run_attempts",
    "outputs",
    "training_pairs",
    "model_training_pairs",
}


def _file(path: Path, seed: int, n_bytes: int = 2048) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def _process(db: ProvenanceDB, frame_path: Path, version: str, weights: str, out_dir: Path) -> str:
    """Simulate one frame through the pipeline: claim, write outputs, finish."""
    frame = db.register_frame(frame_path, {"OBJECT": "M42", "EXPTIME": 300.0, "BITPIX": -32})
    claim = db.claim_run(frame.sha256, version, weights, PARAMS, device="cpu", flow_run_id="fr-1")
    assert claim.owned
    outputs: list[tuple[OutputKind, Path]] = []
    kinds: tuple[OutputKind, ...] = ("starless", "mask")
    for kind in kinds:
        seed = int(param_hash({"frame": frame.sha256, "model": version, "kind": kind})[:8], 16)
        outputs.append((kind, _file(out_dir / f"{frame_path.stem}_{version}_{kind}.fits", seed)))
    db.finish_run(claim.run_key, "succeeded", {"read": 0.01, "remove_stars": 1.5}, outputs=outputs)
    return claim.run_key


# ---- schema -------------------------------------------------------------------------------


def test_migrations_empty_to_head_and_back(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the alembic config must not depend on the working directory
    db = ProvenanceDB(db_url)
    head = db.ensure_schema()
    assert db.current_revision() == head
    assert set(inspect(db.engine).get_table_names()) >= TABLES
    assert db.ensure_schema() == head  # idempotent
    with db.engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not TABLES & set(inspect(db.engine).get_table_names())
    db.ensure_schema()
    assert set(inspect(db.engine).get_table_names()) >= TABLES


def test_models_match_migrations(provenance_db: ProvenanceDB) -> None:
    with provenance_db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []


def test_first_use_creates_the_database(tmp_path: Path) -> None:
    db = ProvenanceDB(f"sqlite:///{tmp_path / 'new' / 'provenance.db'}")
    assert db.list_runs() == []
    assert db.current_revision() is not None
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


# ---- identity -----------------------------------------------------------------------------


def test_param_hash_and_run_key() -> None:
    a = {"tile_px": 256, "stretch": {"b": 1, "a": 2.5}}
    b = {"stretch": {"a": 2.5, "b": 1}, "tile_px": 256}
    assert param_hash(a) == param_hash(b)
    assert param_hash(a) != param_hash({**a, "tile_px": 512})
    with pytest.raises(ValueError, match="params"):
        param_hash({"x": float("nan")})
    key = make_run_key("a" * 64, W1, param_hash(a))
    assert key == make_run_key("A" * 64, W1, param_hash(b))
    assert key != make_run_key("a" * 64, W2, param_hash(a))
    with pytest.raises(ValueError, match="weights_sha256"):
        make_run_key("a" * 64, "xyz", param_hash(a))


def test_register_frame_is_idempotent_and_follows_moves(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    path = _file(tmp_path / "in" / "m42.fits", seed=1)
    header = {"OBJECT": "M42", "DATE-OBS": "2026-01-02T03:04:05", "EXPTIME": 120, "FILTER": "Ha",
              "TELESCOP": "RC8", "INSTRUME": "ASI2600", "BITPIX": 16}  # fmt: skip
    first = db.register_frame(path, HeaderFacts.from_header(header, shape_chw=(3, 40, 60)))
    assert first.sha256 == sha256_file(path) and first.size_bytes == 2048
    assert first.facts.object_name == "M42" and first.facts.exposure_s == 120.0
    assert (first.facts.channels, first.facts.height_px, first.facts.width_px) == (3, 40, 60)
    moved = tmp_path / "archive" / "m42.fits"
    moved.parent.mkdir()
    path.rename(moved)
    again = db.register_frame(moved)
    assert again.id == first.id and again.path == str(moved) and again.facts == first.facts
    assert again.first_seen == first.first_seen and again.last_seen >= first.last_seen
    assert db.is_known_input(first.sha256) and not db.is_known_input("0" * 64)
    with pytest.raises(ProvenanceError, match="does not exist"):
        db.register_frame(tmp_path / "nope.fits")


# ---- claims -------------------------------------------------------------------------------


def test_claim_lifecycle(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=2))
    claim = db.claim_run(frame.sha256, "v1", W1, PARAMS, host="node1", device="cuda:0")
    assert claim.owned and claim.run.attempts == 1 and claim.run.status == "running"
    assert claim.run_key == make_run_key(frame.sha256, W1, param_hash(PARAMS))
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "busy"
    out = _file(tmp_path / "a_starless.fits", seed=3)
    run = db.finish_run(
        claim.run_key, "succeeded", {"remove_stars": 2.0}, outputs=[("starless", out)]
    )
    assert run.status == "succeeded" and run.duration_s is not None and run.duration_s >= 0
    assert run.outputs[0].sha256 == sha256_file(out) and run.outputs[0].size_bytes == 2048
    again = db.claim_run(frame.sha256, "v1", W1, dict(reversed(list(PARAMS.items()))))
    assert again.state == "done" and again.run_key == claim.run_key
    other = db.claim_run(frame.sha256, "v1", W1, {**PARAMS, "passes": 2})
    assert other.owned and other.run_key != claim.run_key
    assert len(db.list_runs()) == 2
    with pytest.raises(ProvenanceError, match="register_frame"):
        db.claim_run("f" * 64, "v1", W1, PARAMS)
    with pytest.raises(ProvenanceError, match="weights sha256"):
        db.claim_run(frame.sha256, "v1", W2, PARAMS)


def test_failed_and_stale_runs_are_claimed_again(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=4))
    key = db.claim_run(frame.sha256, "v1", W1, PARAMS).run_key
    failed = db.finish_run(key, "failed", {"read": 0.1}, error="ValueError: NaN in frame")
    assert failed.error == "ValueError: NaN in frame"
    retry = db.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=3)
    assert retry.owned and retry.run.attempts == 2 and retry.run.error is None
    db.finish_run(key, "failed", error="again")
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=2).state == "exhausted"
    third = db.claim_run(frame.sha256, "v1", W1, PARAMS)  # no bound: a human asked again
    assert third.owned and third.run.attempts == 3
    # the worker died: its run stays "running" until the stale timeout
    impatient = ProvenanceDB(db.url, stale_after_s=1e-6)
    stolen = impatient.claim_run(frame.sha256, "v1", W1, PARAMS, host="node2")
    assert stolen.owned and stolen.run.attempts == 4 and stolen.run.host == "node2"
    # the first worker wakes up and finishes: it must not overwrite node2's run
    with pytest.raises(ProvenanceError, match="claimed again"):
        db.finish_run(key, "succeeded", {"remove_stars": 1.0}, attempt=third.run.attempts)
    now = db.get_run(key)
    assert now is not None and now.status == "running" and now.host == "node2"
    assert db.finish_run(key, "succeeded", attempt=stolen.run.attempts).status == "succeeded"
    with pytest.raises(ValueError, match="error"):
        db.finish_run(key, "failed")
    out = _file(tmp_path / "o.fits", seed=6)
    with pytest.raises(ValueError, match="one file per kind"):
        db.finish_run(key, "succeeded", outputs=[("mask", out), ("mask", out)])
    with pytest.raises(ProvenanceError, match="does not exist"):
        db.finish_run(key, "succeeded", outputs=[("mask", tmp_path / "missing.fits")])


def test_a_frame_that_kills_its_worker_gets_max_attempts_then_is_failed(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    """A run that never ends (worker killed) is taken over when stale, each takeover an
    attempt; after the last allowed one it is recorded failed, and the nightly's
    selection stops offering the frame."""
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=8))
    db.register_model("v1", W1, {}, status="promoted")
    impatient = ProvenanceDB(db.url, stale_after_s=1e-6)
    states = []
    for _night in range(5):
        if not impatient.frames_needing_rerun("v1", max_attempts=3):
            break
        claim = impatient.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=3)
        states.append((claim.state, claim.run.attempts))
        # ... the worker is killed here: no finish_run
    assert states == [("owned", 1), ("owned", 2), ("owned", 3), ("exhausted", 3)]
    run = db.get_run(claim.run_key)
    assert run is not None and run.status == "failed" and run.finished_at is not None
    error = run.error or ""
    assert "no end recorded: counted attempt 3 of 3 (3 in all)" in error
    assert impatient.frames_needing_rerun("v1", max_attempts=3) == []
    # a human may still ask again (no bound), as for any failed run
    assert impatient.claim_run(frame.sha256, "v1", W1, PARAMS).owned


def test_redo_claims_a_done_run_as_its_next_attempt(
    provenance_db: ProvenanceDB, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A user recomputing a frame on purpose: the succeeded run gets a next attempt, and
    its new outputs become the current ones, without a 'finished again' warning."""
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=9))
    key = db.claim_run(frame.sha256, "v1", W1, PARAMS).run_key
    db.finish_run(key, "succeeded", outputs=[("starless", _file(tmp_path / "o1.fits", seed=10))])
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "done"
    again = db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True)
    # attempts count the tries since the last success: a redo starts again at 1
    assert again.owned and again.run.attempts == 1 and again.run.status == "running"
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True).state == "busy"
    # a failed redo keeps what the success recorded: those files are still there
    failed = db.finish_run(key, "failed", error="CUDA out of memory", attempt=1)
    assert failed.status == "succeeded" and [o.kind for o in failed.outputs] == ["starless"]
    assert db.history(tmp_path / "o1.fits").produced_by.run_key == key  # type: ignore[union-attr]
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=3).state == "done"
    retry = db.claim_run(frame.sha256, "v1", W1, PARAMS, max_attempts=3, redo=True)
    assert retry.owned and retry.run.attempts == 2  # the redo's retry
    new = _file(tmp_path / "o2.fits", seed=11)
    with caplog.at_level("WARNING", logger="flows.provenance"):
        run = db.finish_run(key, "succeeded", outputs=[("starless", new)], attempt=2)
    assert not caplog.records
    assert [o.path for o in run.outputs] == [str(new.resolve())]
    assert [o.path for o in run.earlier_outputs] == [str((tmp_path / "o1.fits").resolve())]


def test_a_candidates_try_is_not_a_rollback_but_a_retired_models_output_is(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    """The nightly redoes a frame whose latest outputs another promoted-at-some-time model
    made (a rollback), not one a never-promoted candidate was tried on."""
    db = provenance_db
    db.register_model("v1", W1, {}, status="promoted")
    db.register_model("v2", W2, {})  # a candidate, tried by hand on the frame
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=12))
    for version, weights in (("v1", W1), ("v2", W2)):
        key = db.claim_run(frame.sha256, version, weights, PARAMS).run_key
        db.finish_run(key, "succeeded")
    assert db.frames_needing_rerun("v1") == []
    db.promote("v2")
    db.promote("v1")  # v2 was promoted, then rolled back: its outputs are the latest
    assert [f.sha256 for f in db.frames_needing_rerun("v1")] == [frame.sha256]


def test_queued_then_started(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=5))
    queued = db.claim_run(frame.sha256, "v1", W1, PARAMS, status="queued")
    assert queued.owned and queued.run.status == "queued"
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS, status="queued").state == "busy"
    started = db.claim_run(frame.sha256, "v1", W1, PARAMS, flow_run_id="abc")
    assert started.owned and started.run.status == "running" and started.run.attempts == 1
    assert db.start_run(started.run_key).status == "running"  # heartbeat
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "busy"


RACE_WORKER = """
import json, os, sys, time
from flows.provenance import ProvenanceDB
url, ready, go, *frames = sys.argv[1:]
db = ProvenanceDB(url)
open(os.path.join(ready, str(os.getpid())), "w").close()
while not os.path.exists(go):
    time.sleep(0.002)
states = []
for path in frames:
    frame = db.register_frame(path)
    claim = db.claim_run(frame.sha256, "v1", "1" * 64, {"tile_px": 256}, host=str(os.getpid()))
    if claim.owned:
        db.finish_run(claim.run_key, "succeeded", {"remove_stars": 0.0})
    states.append(claim.state)
print(json.dumps(states))
"""


def test_two_processes_race_for_the_same_frames(db_url: str, tmp_path: Path) -> None:
    """Two OS processes start together on an empty database (no schema yet), register the
    same frames and claim the same runs: every run is owned by exactly one of them."""
    frames = [str(_file(tmp_path / f"f{i}.fits", seed=100 + i, n_bytes=256)) for i in range(12)]
    go, ready = tmp_path / "go", tmp_path / "ready"
    ready.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_WORKER, db_url, str(ready), str(go), *frames],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(ready.iterdir())) < len(procs):  # both interpreters up and waiting
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.01)
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    for a, b in zip(*results, strict=True):
        assert sorted([a, b]) in (["busy", "owned"], ["done", "owned"])
    runs = ProvenanceDB(db_url).list_runs(limit=None)
    assert len(runs) == len(frames) and all(r.status == "succeeded" for r in runs)
    assert all(r.attempts == 1 for r in runs)


# ---- models, reruns, training pairs -------------------------------------------------------


def test_models_promote_and_rerun_selection(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    db.register_model(
        "v1", W1, {"widths": [16, 32]}, status="promoted", benchmark={"psnr_db": 30.1}
    )
    paths = [_file(tmp_path / f"f{i}.fits", seed=10 + i) for i in range(4)]
    for p in paths[:3]:
        _process(db, p, "v1", W1, tmp_path / "out")
    db.register_frame(paths[3])  # seen, never processed
    bench = {"psnr_db": 31.0, "ssim": float("nan")}  # a figure that could not be computed
    db.register_model("v2", W2, {"widths": [16, 32]}, parent="v1", benchmark=bench)
    assert db.get_model("v2").benchmark == {"psnr_db": 31.0, "ssim": None}  # type: ignore[union-attr]
    assert db.promoted_model().version == "v1"  # type: ignore[union-attr]
    v2 = db.promote("v2")
    assert v2.status == "promoted" and v2.parent == "v1"
    assert {m.version: m.status for m in db.list_models()} == {"v1": "retired", "v2": "promoted"}
    with pytest.raises(ProvenanceError, match="unknown model version 'v9'"):
        db.promote("v9")
    with pytest.raises(ProvenanceError, match="weights sha256"):
        db.register_model("v2", W1, {})

    assert {f.path for f in db.frames_needing_rerun("v2")} == {str(p) for p in paths}
    _process(db, paths[0], "v2", W2, tmp_path / "out")  # rerun done
    frame1 = db.register_frame(paths[1])
    c = db.claim_run(frame1.sha256, "v2", W2, PARAMS)  # rerun in progress
    frame2 = db.register_frame(paths[2])
    k2 = db.claim_run(frame2.sha256, "v2", W2, PARAMS).run_key  # rerun failed once
    db.finish_run(k2, "failed", error="CUDA out of memory")
    need = db.frames_needing_rerun(max_attempts=2)  # the promoted model by default
    assert [f.path for f in need] == [str(paths[2]), str(paths[3])]
    db.claim_run(frame2.sha256, "v2", W2, PARAMS, max_attempts=2)
    db.finish_run(k2, "failed", error="CUDA out of memory")
    assert [f.path for f in db.frames_needing_rerun(max_attempts=2)] == [str(paths[3])]
    assert c.owned

    v1_runs = db.list_runs(model="v1")
    assert {r.frame_path for r in v1_runs} == {str(p) for p in paths[:3]}
    assert [r.status for r in db.list_runs(status="failed")] == ["failed"]
    assert db.list_runs(since=datetime.now(UTC) + timedelta(days=1)) == []
    assert len(db.list_runs(limit=2)) == 2


def test_training_pairs(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    orig, starless = (
        _file(tmp_path / "p1.tif", seed=20),
        _file(tmp_path / "p1_starless.tif", seed=21),
    )
    pair, is_new = db.add_training_pair(orig, starless)
    assert is_new and pair.original_sha256 == sha256_file(orig) and pair.used_by == ()
    again, is_new = db.add_training_pair(orig, starless)
    assert not is_new and again.id == pair.id
    db.register_model("v3", W2, {}, training_pair_ids=[pair.id])
    assert db.get_model("v3").training_pair_ids == (pair.id,)  # type: ignore[union-attr]
    assert db.list_training_pairs(unused_by="v3") == []
    assert db.find_by_sha256(pair.starless_sha256).training_pairs[0].used_by == ("v3",)
    with pytest.raises(ProvenanceError, match="training pair"):
        db.register_model("v3", W2, {}, training_pair_ids=[999])


# ---- history ------------------------------------------------------------------------------


def test_history_by_content_path_and_sha(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    frame_path = _file(tmp_path / "in" / "m42.fits", seed=30)
    key = _process(db, frame_path, "v1", W1, tmp_path / "out")
    starless = tmp_path / "out" / "m42_v1_starless.fits"
    h = db.history(starless)
    assert h.role == "output" and h.produced_by is not None and h.produced_by.run_key == key
    assert h.produced_by.model_version == "v1" and h.produced_by.params == PARAMS
    assert h.frame is not None and h.frame.path == str(frame_path)
    moved = tmp_path / "elsewhere.fits"
    starless.rename(moved)
    assert db.history(moved).produced_by.run_key == key  # type: ignore[union-attr]
    assert db.history(starless).role == "output"  # gone from disk: by the recorded path
    by_sha = db.history(h.sha256.upper())  # type: ignore[union-attr]
    assert by_sha.role == "output"
    as_input = db.history(frame_path)
    assert as_input.role == "input" and [r.run_key for r in as_input.runs] == [key]
    stranger = db.history(_file(tmp_path / "stranger.fits", seed=31))
    assert stranger.role == "unknown" and stranger.sha256 is not None
    _file(frame_path, seed=32)  # overwritten in place
    changed = db.history(frame_path)
    assert changed.role == "input" and changed.note and "not what was recorded" in changed.note
    assert db.history(tmp_path / "never.fits").role == "unknown"


# ---- header provenance --------------------------------------------------------------------


def test_provenance_record_goes_into_a_fits_header(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    deep = tmp_path.joinpath(*["very_long_directory_name"] * 4) / "frame.fits"
    frame = db.register_frame(_file(deep, seed=40))
    claim = db.claim_run(frame.sha256, "v1", W1, PARAMS, flow_run_id="0f1e2d3c-aaaa-bbbb")
    record = claim.record({"read": 0.25, "remove stars": 3.5}, finished_at=datetime.now(UTC))
    assert isinstance(record, ProvenanceRecord)
    cards = record.to_header_cards()
    assert cards["RUNKEY"] == claim.run_key and cards["PHASH"] == param_hash(PARAMS)
    assert cards["INSHA"] == frame.sha256 and cards["WSHA"] == W1 and cards["MODEL"] == "v1"
    assert cards["T_REMOVE_STARS"] == 3.5 and str(cards["INPUT"]).endswith("frame.fits")
    assert all(len(str(v)) <= 68 for v in cards.values())
    history = record.to_history()
    assert all(len(line) <= 72 for line in history)
    first = next(i for i, line in enumerate(history) if line.startswith("params "))
    params_json = "".join(history[first:])[len("params ") :]  # the last entry, wrapped
    hdu = fits.PrimaryHDU(np.zeros((2, 2), np.float32))
    for k, v in cards.items():
        hdu.header[f"HIERARCH STARNET {k}"] = v
    for line in history:
        hdu.header.add_history(line)
    hdu.writeto(tmp_path / "out.fits")
    header = fits.getheader(tmp_path / "out.fits")
    assert header["HIERARCH STARNET RUNKEY"] == claim.run_key
    assert "".join(header["HISTORY"]).count("phash") == 1
    assert json.loads(params_json) == PARAMS


# ---- CLI ----------------------------------------------------------------------------------


def test_cli_answers_what_made_this_file(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STARNET_CONFIG", raising=False)
    monkeypatch.setenv("STARNET_DATABASE_URL", db_url)
    assert main(["db", "upgrade"]) == 0
    assert "schema revision" in capsys.readouterr().out
    db = ProvenanceDB(db_url)
    db.register_model("v1", W1, {}, status="promoted")
    v2_file = _file(tmp_path / "models" / "v2.safetensors", seed=60)
    db.register_model("v2", W2, {"weights_path": str(v2_file)}, parent="v1")
    db.register_model("v3", "3" * 64, {})  # met through `transform --weights` long ago
    frames = [_file(tmp_path / "incoming" / f"ngc{i}.fits", seed=50 + i) for i in range(3)]
    for f in frames:
        _process(db, f, "v1", W1, tmp_path / "out")
    _process(db, frames[0], "v2", W2, tmp_path / "out")

    assert main(["history", str(tmp_path / "out" / "ngc0_v1_mask.fits")]) == 0
    out = capsys.readouterr().out
    assert "is the mask output of" in out and "model     v1" in out and "ngc0.fits" in out
    assert main(["history", "--json", str(frames[0])]) == 0
    h = json.loads(capsys.readouterr().out)
    assert h["role"] == "input" and {r["model_version"] for r in h["runs"]} == {"v1", "v2"}

    assert main(["runs", "--model", "v1", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert sorted(Path(r["frame_path"]).name for r in runs) == [
        "ngc0.fits",
        "ngc1.fits",
        "ngc2.fits",
    ]
    assert main(["runs", "--status", "succeeded", "--since", "2000-01-01", "--limit", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["STARTED", "STATUS", "MODEL"] and len(table) == 3

    # a version without its weights file here cannot be run, so it is not promoted
    assert main(["model", "promote", "v3"]) == 1
    assert "model v3: no weights file recorded" in capsys.readouterr().err
    v2_file.rename(tmp_path / "moved.safetensors")
    assert main(["model", "promote", "v2"]) == 1
    assert f"its weights file {v2_file} is not here" in capsys.readouterr().err
    (tmp_path / "moved.safetensors").rename(v2_file)
    assert main(["model", "promote", "v2"]) == 0
    assert capsys.readouterr().out.strip() == "model v2 promoted; v1 retired"
    assert main(["model", "list"]) == 0
    listing = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listing == [["v1", "retired"], ["v2", "promoted"], ["v3", "candidate"]]
    assert main(["model", "promote", "nope"]) == 1
    assert "unknown model version 'nope'" in capsys.readouterr().err
