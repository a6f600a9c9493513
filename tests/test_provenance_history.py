"""The provenance database keeps history: redos, earlier outputs, figures, the nightly's
selection, and the 0001 -> 0002 migration of a database with data (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from sqlalchemy import text

from flows.provenance import (
    ProvenanceDB,
    alembic_config,
    make_run_key,
    param_hash,
    sha256_file,
)

W1 = "1" * 64
W2 = "2" * 64
PARAMS = {"tile_px": 256, "overlap_px": 32}


def _file(path: Path, seed: int, n_bytes: int = 1024) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(n_bytes))
    return path


def _succeed(db: ProvenanceDB, sha: str, version: str, weights: str, **kw: object) -> str:
    claim = db.claim_run(sha, version, weights, PARAMS, **kw)  # type: ignore[arg-type]
    assert claim.owned
    db.finish_run(claim.run_key, "succeeded", {"x": 1.0}, attempt=claim.run.attempts)
    return claim.run_key


# ---- C: a redo keeps the earlier outputs' provenance ----------------------------------------


def test_a_redo_into_another_folder_keeps_the_first_outputs_history(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "in" / "a.fits", seed=1))
    first = db.claim_run(frame.sha256, "v1", W1, PARAMS)
    a_star, a_mask = _file(tmp_path / "A" / "a_starless.fits", 2), _file(tmp_path / "A" / "m", 3)
    db.finish_run(first.run_key, "succeeded", outputs=[("starless", a_star), ("mask", a_mask)])
    redo = db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True)
    assert redo.owned and redo.run_key == first.run_key
    b_star = _file(tmp_path / "B" / "a_starless.fits", 4)
    run = db.finish_run(redo.run_key, "succeeded", outputs=[("starless", b_star)], attempt=1)
    h = db.history(a_star)  # the first folder's file, still there
    assert h.role == "output" and h.produced_by is not None
    assert h.produced_by.run_key == first.run_key and h.produced_by.status == "succeeded"
    assert [o.path for o in run.outputs] == [str(b_star)]
    assert {o.path for o in run.earlier_outputs} == {str(a_star), str(a_mask)}
    assert all(o.superseded_at is not None for o in run.earlier_outputs)
    assert h.output is not None and h.output.kind == "starless" and h.output.path == str(a_star)
    assert h.output.superseded_at is not None
    from flows.cli_db import format_history

    said = format_history(h)
    assert "is the starless output of (superseded " in said and "by a later run of it):" in said
    current = db.history(b_star)
    assert "  is the starless output of:" in format_history(current)
    assert current.output is not None and current.output.superseded_at is None
    # a redo into the same folder: the file there is the new one, found by content or path
    again = db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True)
    _file(b_star, 5)
    run = db.finish_run(again.run_key, "succeeded", outputs=[("starless", b_star)], attempt=1)
    assert [o.sha256 for o in run.outputs] == [sha256_file(b_star)]
    assert db.history(b_star).output.sha256 == sha256_file(b_star)  # type: ignore[union-attr]
    b_star.unlink()
    by_path = db.history(b_star)
    assert by_path.output is not None and by_path.output.superseded_at is None
    assert db.history(a_star).role == "output"


# ---- D: a failed or interrupted redo leaves the success as it was ---------------------------


def test_a_failed_redo_keeps_the_success(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=10))
    claim = db.claim_run(frame.sha256, "v1", W1, PARAMS, device="cuda:0")
    out = _file(tmp_path / "out" / "a_starless.fits", seed=11)
    db.finish_run(claim.run_key, "succeeded", {"remove_stars": 2.0}, outputs=[("starless", out)])
    before = db.get_run(claim.run_key)
    assert before is not None
    redo = db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True, device="cpu")
    assert redo.owned and redo.run.status == "running" and redo.run.device == "cpu"
    # while the redo runs, the success is still the run's record, and the redo shows
    assert db.list_runs(status="succeeded") == [db.get_run(claim.run_key)]
    assert db.claim_run(frame.sha256, "v1", W1, PARAMS).state == "done"  # the watcher's view
    assert [r.run_key for r in db.list_runs(status="running")] == [claim.run_key]
    db.finish_run(
        claim.run_key, "failed", error="a.fits: interrupted: KeyboardInterrupt", attempt=1
    )
    after = db.get_run(claim.run_key)
    assert after is not None and after.status == "succeeded" and after.error is None
    for field in ("attempts", "started_at", "finished_at", "duration_s", "timings", "outputs",
                  "device", "host", "code_version"):  # fmt: skip
        assert getattr(after, field) == getattr(before, field), field
    assert [r.run_key for r in db.list_runs(status="succeeded")] == [claim.run_key]
    assert [(a.attempt, a.status) for a in after.attempt_log] == [(1, "succeeded"), (1, "failed")]
    assert "interrupted" in (after.attempt_log[-1].error or "")
    assert db.list_runs(status="running") == [] and db.list_runs(status="failed") == []
    assert db.history(out).produced_by.status == "succeeded"  # type: ignore[union-attr]
    # the next redo is the redo's second attempt, bounded by max_attempts
    db.finish_run(
        db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True, max_attempts=2).run_key,
        "failed", error="out of memory", attempt=2,
    )  # fmt: skip
    exhausted = db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True, max_attempts=2)
    assert exhausted.state == "exhausted" and exhausted.run.error == "out of memory"
    assert db.get_run(claim.run_key).status == "succeeded"  # type: ignore[union-attr]


def test_a_failed_redo_of_a_rolled_back_frame_is_not_picked_forever(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    db.register_model("v1", W1, {}, status="promoted")
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=12))
    _succeed(db, frame.sha256, "v1", W1)
    db.register_model("v2", W2, {}, status="promoted")
    _succeed(db, frame.sha256, "v2", W2)
    db.promote("v1")  # rolled back: v2's outputs are the latest
    picked = []
    for _night in range(4):
        need = db.frames_needing_rerun("v1", max_attempts=2, params=PARAMS)
        picked.append(len(need))
        for f in need:
            claim = db.claim_run(f.sha256, "v1", W1, PARAMS, redo=True, max_attempts=2)
            if claim.owned:
                db.finish_run(claim.run_key, "failed", error="moved", attempt=claim.run.attempts)
    assert picked == [1, 1, 0, 0]
    assert {r.status for r in db.list_runs()} == {"succeeded"}


# ---- A: a model that was never promoted ----------------------------------------------------


def test_the_nightly_with_a_model_never_promoted_reruns_a_frame_once(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=13))
    db.register_model("1.0", W1, {}, status="promoted")
    _succeed(db, frame.sha256, "1.0", W1)
    db.register_model("2.0", W2, {})  # inference.weights, follow_promoted false: a candidate
    nights = []
    for _night in range(3):
        need = db.frames_needing_rerun("2.0", max_attempts=3)
        nights.append(len(need))
        for f in need:
            _succeed(db, f.sha256, "2.0", W2, redo=True, max_attempts=3)
    assert nights == [1, 0, 0]
    # its try is still no rollback for the promoted model
    assert db.frames_needing_rerun("1.0") == []


# ---- E: exhausted with the parameters the nightly will use ----------------------------------


def test_a_frame_exhausted_with_other_parameters_is_tried_with_the_new_ones(
    provenance_db: ProvenanceDB, tmp_path: Path
) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=14))
    db.register_model("2.0", W2, {}, status="promoted")
    old, new = {"inference": {"tile_px": 2048}}, {"inference": {"tile_px": 512}}
    for _ in range(3):
        c = db.claim_run(frame.sha256, "2.0", W2, old, max_attempts=3, redo=True)
        db.finish_run(c.run_key, "failed", error="CUDA out of memory", attempt=c.run.attempts)
    assert db.frames_needing_rerun("2.0", 3, params=old) == []
    assert db.frames_needing_rerun("2.0", 3) == []  # no params: any parameter set's failures
    assert [f.sha256 for f in db.frames_needing_rerun("2.0", 3, params=new)] == [frame.sha256]
    c = db.claim_run(frame.sha256, "2.0", W2, new, max_attempts=3, redo=True)
    assert c.owned
    db.finish_run(c.run_key, "succeeded", attempt=c.run.attempts)
    assert db.frames_needing_rerun("2.0", 3, params=new) == []


# ---- G: figures; DATE-OBS -------------------------------------------------------------------


def test_figures_are_recorded_with_the_success(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    db = provenance_db
    frame = db.register_frame(_file(tmp_path / "a.fits", seed=15))
    c = db.claim_run(frame.sha256, "v1", W1, PARAMS)
    figures = {"spike_score": 7.25, "stars": 12, "psnr": math.nan, "model_version": "v1"}
    run = db.finish_run(c.run_key, "succeeded", figures=figures, attempt=1)
    expected = {"spike_score": 7.25, "stars": 12, "psnr": None, "model_version": "v1"}
    assert run.figures == expected and db.get_run(c.run_key).figures == expected  # type: ignore[union-attr]
    assert db.list_runs()[0].figures == expected
    redo = db.claim_run(frame.sha256, "v1", W1, PARAMS, redo=True)
    with pytest.raises(ValueError, match="failed run records none"):
        db.finish_run(redo.run_key, "failed", error="x", figures={"a": 1.0})
    db.finish_run(redo.run_key, "failed", error="x", attempt=1)
    assert db.get_run(c.run_key).figures == expected  # type: ignore[union-attr]


def test_a_long_date_obs_is_cut_to_its_column(provenance_db: ProvenanceDB, tmp_path: Path) -> None:
    date_obs = "2024-01-01T00:00:00.123456789 UTC (from the GPS receiver)"
    frame = provenance_db.register_frame(
        _file(tmp_path / "a.fits", seed=16), {"DATE-OBS": date_obs, "OBJECT": "M42"}
    )
    assert frame.facts.date_obs == date_obs[:32] and frame.facts.object_name == "M42"


# ---- the migration, with data --------------------------------------------------------------


def _alembic(db: ProvenanceDB, action: str, revision: str) -> None:
    with db.engine.begin() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def test_upgrading_a_database_with_runs_keeps_them(db_url: str, tmp_path: Path) -> None:
    db = ProvenanceDB(db_url, auto_migrate=False)
    _alembic(db, "upgrade", "0001")
    frame_path = _file(tmp_path / "a.fits", seed=17)
    sha = sha256_file(frame_path)
    out = _file(tmp_path / "a_starless.fits", seed=18)
    done_key = make_run_key(sha, W1, param_hash(PARAMS))
    busy_key = make_run_key(sha, W1, param_hash({"p": 2}))
    t = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
    t += "+00:00" if db.engine.dialect.name == "postgresql" else ""  # SQLite keeps UTC, zoneless
    with db.engine.begin() as conn:  # as starnet of revision 0001 wrote them
        conn.execute(
            text(
                "INSERT INTO frames (sha256, path, size_bytes, first_seen, last_seen) "
                "VALUES (:sha, :path, 1024, :t, :t)"
            ),
            {"sha": sha, "path": str(frame_path), "t": t},
        )
        conn.execute(
            text(
                "INSERT INTO model_versions (version, weights_sha256, config, status, "
                "created_at, promoted_at) VALUES ('v1', :w, '{}', 'promoted', :t, :t)"
            ),
            {"w": W1, "t": t},
        )
        for key, params, status, attempts in (
            (done_key, PARAMS, "succeeded", 1),
            (busy_key, {"p": 2}, "running", 2),
        ):
            conn.execute(
                text(
                    "INSERT INTO runs (run_key, frame_id, model_version_id, params, param_hash,"
                    " code_version, host, device, status, attempts, timings, created_at,"
                    " started_at, finished_at) VALUES (:key, 1, 1, :params, :ph,"
                    " 'starnet 0.1.0', 'old-host', 'cpu', :status, :attempts, '{}', :t, :t, :t)"
                ),
                {
                    "key": key,
                    "params": json.dumps(params),
                    "ph": param_hash(params),
                    "status": status,
                    "attempts": attempts,
                    "t": t,
                },  # fmt: skip
            )
        conn.execute(
            text(
                "INSERT INTO outputs (run_id, kind, path, sha256, size_bytes) "
                "VALUES (1, 'starless', :path, :sha, 1024)"
            ),
            {"path": str(out), "sha": sha256_file(out)},
        )
    db.ensure_schema()
    done, busy = db.get_run(done_key), db.get_run(busy_key)
    assert done is not None and busy is not None
    assert [(a.attempt, a.status, a.host) for a in done.attempt_log] == [
        (1, "succeeded", "old-host")
    ]
    assert [(a.attempt, a.status) for a in busy.attempt_log] == [(2, "running")]
    assert done.outputs[0].path == str(out) and done.figures is None
    assert db.history(out).produced_by.run_key == done_key  # type: ignore[union-attr]
    assert db.claim_run(sha, "v1", W1, {"p": 2}).state == "busy"
    # a redo on the upgraded database supersedes the old output, which stays
    redo = db.claim_run(sha, "v1", W1, PARAMS, redo=True)
    assert redo.owned and redo.run_key == done_key and redo.run.attempts == 1
    new = _file(tmp_path / "new" / "a_starless.fits", seed=19)
    db.finish_run(redo.run_key, "succeeded", outputs=[("starless", new)], attempt=1)
    assert db.history(out).output.superseded_at is not None  # type: ignore[union-attr]
    # downgrade: runs and their current outputs stay, the superseded ones go
    _alembic(db, "downgrade", "0001")
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT path FROM outputs")).scalars().all() == [str(new)]
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 2
    _alembic(db, "upgrade", "head")
    assert db.get_run(done_key).outputs[0].path == str(new)  # type: ignore[union-attr]
