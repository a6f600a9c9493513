"""The Prefect flows: task logic through ``.fn()``, then end to end on the test harness."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prefect_fixtures import PipelineEnv, save_tiny_model, write_fits

from flows.frame import load_engine
from flows.pipeline import artifact_key, claim_task, load_run_engine, small_jpeg
from flows.provenance import ProvenanceDB, sha256_file
from flows.retraining import candidate_version, promotion
from flows.settings import RetrainSettings, load_settings

# ---- task logic, no Prefect engine ---------------------------------------------------------


def test_claim_task_logic(pipeline_env: PipelineEnv) -> None:
    settings = pipeline_env.settings
    db = ProvenanceDB.from_settings(settings)
    engine = load_engine(settings)
    frame = write_fits(pipeline_env.incoming / "a.fits")
    first = claim_task.fn(str(frame), settings, db, engine, None)
    second = claim_task.fn(str(frame), settings, db, engine, None)
    assert (first.decision, second.decision) == ("process", "busy")
    assert first.run_key == second.run_key and first.sha256 == db.list_runs()[0].frame_sha256


def test_run_engine_bootstraps_then_follows_the_promoted_model(pipeline_env: PipelineEnv) -> None:
    settings = pipeline_env.settings
    db = ProvenanceDB.from_settings(settings)
    engine, path = load_run_engine(settings, db)
    assert (engine.version, path) == ("tiny-a", str(pipeline_env.weights))
    assert db.promoted_model().version == "tiny-a"  # type: ignore[union-attr]
    b = pipeline_env.root / "models" / "tiny-b.safetensors"
    sha = save_tiny_model(b, "tiny-b", seed=1)
    db.register_model("tiny-b", sha, {"weights_path": str(b)}, status="promoted")
    engine, path = load_run_engine(settings, db)
    assert (engine.version, path) == ("tiny-b", str(b))
    b.write_bytes(b.read_bytes()[:-8] + b"\0" * 8)  # replaced behind the DB's back
    with pytest.raises(ValueError, match="is not the promoted model tiny-b"):
        load_run_engine(settings, db)


def test_artifact_keys_are_valid() -> None:
    key = artifact_key("preview", "/data/incoming/M 42_Ha.FITS", "ab" * 32)
    assert key == "preview-m-42-ha-fits-abababab"
    assert re.fullmatch(r"[a-z0-9-]+", key)


def test_preview_thumbnail_is_kept_small() -> None:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (160, 480, 3), dtype=np.uint8)  # star fields are noisy
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=70)
    small = small_jpeg(buf.getvalue(), height_px=120)
    assert Image.open(io.BytesIO(small)).size == (360, 120)
    assert len(small) < len(buf.getvalue()) / 1.5
    assert small_jpeg(small, height_px=120) == small  # never scaled up or re-encoded


def test_promotion_policy() -> None:
    r = RetrainSettings(promote="better", min_gain_db=0.5)
    parent = {"synthetic_psnr_db": 30.0}
    assert promotion(r, {"synthetic_psnr_db": 31.0}, parent)[0]
    assert not promotion(r, {"synthetic_psnr_db": 30.2}, parent)[0]
    val_parent = {"synthetic_psnr_db": 30.0, "validation_psnr_db": 20.0}
    ok, why = promotion(r, {"synthetic_psnr_db": 30.0, "validation_psnr_db": 21.0}, val_parent)
    assert ok and "validation" in why
    forgot = {"synthetic_psnr_db": 28.0, "validation_psnr_db": 21.0}
    assert not promotion(r, forgot, val_parent)[0]
    flux = "synthetic_residual_star_flux_median"
    ok, why = promotion(r, {"synthetic_psnr_db": 31.0, flux: 0.5}, parent | {flux: 0.4})
    assert not ok and "residual star flux rose" in why
    assert promotion(r, {"synthetic_psnr_db": 31.0, flux: 0.41}, parent | {flux: 0.4})[0]
    assert not promotion(RetrainSettings(promote="never"), {"synthetic_psnr_db": 99.0}, parent)[0]
    with pytest.raises(ValueError, match="retrain.promote"):
        promotion(RetrainSettings(promote="sometimes"), parent, parent)


def test_candidate_version_does_not_grow() -> None:
    from datetime import UTC, datetime

    t = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    v = candidate_version("1.0.0+ft.20240101.000000", t)
    assert v == "1.0.0+ft.20250102.030405"


def test_deployments_carry_schedule_trigger_and_limits(pipeline_env: PipelineEnv) -> None:
    from flows.cli_pipeline import build_deployments, submit_mode

    deps = {d.name: d for d in build_deployments(pipeline_env.settings, pipeline_env.config)}
    assert set(deps) == {
        "starnet-process-frame", "starnet-process-folder", "starnet-nightly", "starnet-retrain"
    }  # fmt: skip
    nightly = deps["starnet-nightly"].schedules[0].schedule
    assert (nightly.cron, nightly.timezone) == ("0 3 * * *", "UTC")
    trigger = deps["starnet-retrain"].triggers[0]
    assert trigger.expect == {"starnet.training.pair.added"}
    assert deps["starnet-process-frame"].parameters == {"config": pipeline_env.config}
    assert submit_mode(pipeline_env.settings, "local") == "local"


# ---- end to end on the harness -------------------------------------------------------------


def _config(env: PipelineEnv, **sections: dict[str, Any]) -> str:
    raw = yaml.safe_load(Path(env.config).read_text(encoding="utf-8"))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path = env.root / "config-variant.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(path)


def _artifacts(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


@pytest.mark.usefixtures("prefect_harness")
def test_process_frame_outputs_db_rows_artifacts_and_skip(pipeline_env: PipelineEnv) -> None:
    from flows.pipeline import process_frame

    env = pipeline_env
    frame = write_fits(env.incoming / "M42.fits")
    state = process_frame(path=str(frame), config=env.config, return_state=True)
    result = state.result()
    assert result["status"] == "succeeded", result
    assert Path(result["outputs"]["starless"]).parent == env.outputs
    db = ProvenanceDB.from_settings(env.settings)
    (run,) = db.list_runs()
    assert run.status == "succeeded" and run.model_version == "tiny-a"
    assert run.flow_run_id == str(state.state_details.flow_run_id)
    arts = {a.type: a for a in _artifacts(state.state_details.flow_run_id)}
    assert set(arts) == {"markdown", "table"}
    uri = re.search(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", arts["markdown"].data).group(1)
    assert base64.b64decode(uri)[:2] == b"\xff\xd8" and len(uri) < 40_000
    figures = {row["figure"] for row in json.loads(arts["table"].data)}
    assert {"model_version", "star_layer_mean", "time_remove_stars_s", "starless_bytes"} <= figures
    assert {"spike_score", "spike_angle_deg", "spike_lowered_fraction"} <= figures
    again = process_frame(path=str(frame), config=env.config)
    assert again["status"] == "skipped"
    assert len(db.list_runs()) == 1


@pytest.mark.usefixtures("prefect_harness")
def test_bad_frame_is_a_failed_run_not_a_crash(
    pipeline_env: PipelineEnv, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """...and a known failure (bad input) is logged as its one-line reason, not with a
    traceback (an operator's watcher log had 40 lines per bad frame)."""
    from flows.pipeline import FramesFailedError, process_folder

    env = pipeline_env
    bad = env.incoming / "broken.fits"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"SIMPLE  = this is not a FITS file" + b" " * 3000)
    good = write_fits(env.incoming / "good.fits")
    state = process_folder(paths=[str(bad), str(good)], config=env.config, return_state=True)
    assert state.is_failed() and "1 of 2 frame(s) failed" in (state.message or "")
    error = state.result(raise_on_failure=False)
    assert isinstance(error, FramesFailedError)
    assert [r["status"] for r in error.results] == ["failed", "succeeded"]
    assert "broken.fits" in error.results[0]["error"]
    db = ProvenanceDB.from_settings(env.settings)
    failed = db.list_runs(status="failed")
    assert len(failed) == 1 and "broken.fits" in (failed[0].error or "")
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "cannot read as FITS" in logged and "Traceback" not in logged


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_reruns_retired_models_frames_and_bounds_retries(pipeline_env: PipelineEnv) -> None:
    from flows.pipeline import FramesFailedError, nightly_rerun, process_folder

    env = pipeline_env
    config = _config(env, prefect={"max_attempts": 2})
    good = write_fits(env.incoming / "old.fits")
    bad = env.incoming / "bad.fits"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(FramesFailedError, match="1 of 2"):
        process_folder(paths=[str(good), str(bad)], config=config)
    db = ProvenanceDB.from_settings(load_settings(config))
    b = env.root / "models" / "tiny-b.safetensors"
    db.register_model("tiny-b", save_tiny_model(b, "tiny-b", seed=1), {"weights_path": str(b)})
    db.promote("tiny-b")  # tiny-a, which made old.fits, is retired
    first = nightly_rerun(config=config)
    assert first == {"frames": 2, "succeeded": 1, "failed": 1}
    redone = db.list_runs(model="tiny-b", status="succeeded")
    assert [Path(r.frame_path).name for r in redone] == ["old.fits"]
    second = nightly_rerun(config=config)
    assert second == {"frames": 1, "failed": 1}  # bad.fits: attempt 2 of 2
    assert nightly_rerun(config=config) == {"frames": 0}
    # rolled back: tiny-a is promoted again, and old.fits's outputs are tiny-b's
    starless = env.outputs / "old_starless.fits"
    assert db.history(starless).produced_by.model_version == "tiny-b"  # type: ignore[union-attr]
    db.promote("tiny-a")  # (bad.fits: tiny-a's second and last attempt)
    assert nightly_rerun(config=config) == {"frames": 2, "succeeded": 1, "failed": 1}
    made_by = db.history(starless).produced_by
    assert made_by is not None and made_by.model_version == "tiny-a" and made_by.attempts == 1
    assert nightly_rerun(config=config) == {"frames": 0}


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_registers_a_candidate_once_per_new_pair(pipeline_env: PipelineEnv) -> None:
    from flows.retraining import retrain

    env = pipeline_env
    config = _config(env, retrain={"promote": "never"})
    original = write_fits(env.root / "pairs" / "original" / "p.fits", seed=1)
    starless = write_fits(env.root / "pairs" / "starless" / "p.fits", seed=2)
    result = retrain(original=str(original), starless=str(starless), config=config, steps=1)
    assert result["status"] == "candidate" and result["parent"] == "tiny-a"
    db = ProvenanceDB.from_settings(env.settings)
    model = db.get_model(result["version"])
    assert model is not None and model.status == "candidate" and model.parent == "tiny-a"
    assert model.benchmark and "synthetic_psnr_db" in model.benchmark["candidate"]
    assert Path(result["weights"]).is_file()
    assert db.promoted_model().version == "tiny-a"  # type: ignore[union-attr]
    assert retrain(config=config)["status"] == "up-to-date"


@pytest.mark.usefixtures("prefect_harness")
def test_frames_of_one_name_keep_their_incoming_sub_folder(pipeline_env: PipelineEnv) -> None:
    from flows.pipeline import process_folder

    env = pipeline_env
    night1 = write_fits(env.incoming / "n1" / "M42.fits", seed=1)
    night2 = write_fits(env.incoming / "n2" / "M42.fits", seed=2)
    elsewhere = write_fits(env.root / "elsewhere" / "x.fits", seed=3)
    results = process_folder(paths=[str(night1), str(night2), str(elsewhere)], config=env.config)
    assert [r["status"] for r in results] == ["succeeded"] * 3
    starless = [Path(r["outputs"]["starless"]) for r in results]
    assert starless == [
        env.outputs / "n1" / "M42_starless.fits",
        env.outputs / "n2" / "M42_starless.fits",
        env.outputs / "x_starless.fits",  # outside incoming/: in output_dir itself
    ]
    db = ProvenanceDB.from_settings(env.settings)
    for frame, r in zip((night1, night2, elsewhere), results, strict=True):
        run = db.get_run(r["run_key"])
        assert run is not None and run.frame_path == str(frame)
        assert all(sha256_file(o.path) == o.sha256 for o in run.outputs)


@pytest.mark.usefixtures("prefect_harness")
def test_an_output_folder_that_is_a_file_fails_each_frame_not_the_flow(
    pipeline_env: PipelineEnv,
) -> None:
    from flows.pipeline import FramesFailedError, process_folder

    env = pipeline_env
    frames = [str(write_fits(env.incoming / f"{n}.fits", seed=i)) for i, n in enumerate("cd")]
    not_a_folder = env.root / "notadir"
    not_a_folder.touch()
    with pytest.raises(FramesFailedError, match="2 of 2") as caught:
        process_folder(paths=frames, out_dir=str(not_a_folder), config=env.config)
    assert [r["status"] for r in caught.value.results] == ["failed", "failed"]
    db = ProvenanceDB.from_settings(env.settings)
    runs = db.list_runs()
    assert [r.status for r in runs] == ["failed", "failed"]
    assert all(f"{not_a_folder}: cannot write outputs here: not a folder" in (r.error or "")
               for r in runs)  # fmt: skip


@pytest.mark.usefixtures("prefect_harness")
def test_nightly_does_not_take_a_moved_or_replaced_file_for_its_frame(
    pipeline_env: PipelineEnv,
) -> None:
    from flows.pipeline import nightly_rerun, process_folder

    env = pipeline_env
    config = _config(env, prefect={"max_attempts": 2})
    moved = write_fits(env.incoming / "x.fits", seed=1)
    replaced = write_fits(env.incoming / "y.fits", seed=2)
    process_folder(paths=[str(moved), str(replaced)], config=config)
    db = ProvenanceDB.from_settings(load_settings(config))
    old_sha = {p.name: sha256_file(p) for p in (moved, replaced)}
    b = env.root / "models" / "tiny-b.safetensors"
    db.register_model("tiny-b", save_tiny_model(b, "tiny-b", seed=1), {"weights_path": str(b)})
    db.promote("tiny-b")
    moved.rename(env.root / "x_archived.fits")
    replaced.unlink()
    write_fits(replaced, seed=99)  # re-stacked under the same name
    assert nightly_rerun(config=config) == {"frames": 2, "failed": 2}
    failed = db.list_runs(model="tiny-b", status="failed")
    assert {r.frame_sha256 for r in failed} == set(old_sha.values())
    assert all("input moved, deleted or replaced" in (r.error or "") for r in failed)
    assert not db.is_known_input(sha256_file(replaced))  # not processed as that frame
    assert nightly_rerun(config=config) == {"frames": 2, "failed": 2}  # attempt 2 of 2
    assert nightly_rerun(config=config) == {"frames": 0}
