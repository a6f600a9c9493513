"""The retrain flow's failure paths: a bad training pair is left out (or refused) by name
and never blocks the others; registration and promotion are one transaction; the
evaluation sets are read before the fine-tune and a candidate that is not registered
leaves no file; the ``retrain`` numbers are checked when the config is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prefect_fixtures import PipelineEnv, write_fits

from flows.cli import main
from flows.provenance import ProvenanceDB
from flows.retraining import held_out, read_pairs, train_config
from flows.settings import RetrainSettings, Settings, SettingsError, load_settings
from starnet_core.train import read_pair


def _write_fits(path: Path, shape: tuple[int, ...], seed: int = 0) -> Path:
    from astropy.io import fits

    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).normal(100.0, 2.0, shape).astype(np.float32)
    fits.PrimaryHDU(data).writeto(path)
    return path.resolve()


def _config(env: PipelineEnv, **retrain: Any) -> str:
    raw = yaml.safe_load(Path(env.config).read_text(encoding="utf-8"))
    raw["retrain"].update(retrain)
    config = env.root / "config-fixes.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return str(config)


def _candidate_files(env: PipelineEnv) -> list[str]:
    models = Path(env.settings.data_dir) / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


# ---- one bad pair ------------------------------------------------------------------------


def test_a_pair_of_two_sizes_or_channel_counts_is_left_out_alone(
    tmp_path: Path, provenance_db: ProvenanceDB
) -> None:
    good, _ = provenance_db.add_training_pair(
        _write_fits(tmp_path / "g.fits", (64, 64), 1), _write_fits(tmp_path / "g_s.fits", (64, 64))
    )
    cropped = _write_fits(tmp_path / "c_s.fits", (60, 64))
    crop, _ = provenance_db.add_training_pair(_write_fits(tmp_path / "c.fits", (64, 64)), cropped)
    rgb = _write_fits(tmp_path / "m_s.fits", (3, 64, 64))
    mono, _ = provenance_db.add_training_pair(_write_fits(tmp_path / "m.fits", (64, 64)), rgb)
    images, problems = read_pairs(provenance_db.list_training_pairs())
    assert list(images) == [good.id]  # the good pair is still trained on
    assert images[good.id][0].shape == images[good.id][1].shape == (1, 64, 64)
    assert problems == [
        f"{cropped}: starless is mono 64x60 px, its original {crop.original_path} is mono "
        f"64x64 px (training pair {crop.id})",
        f"{rgb}: starless is RGB 64x64 px, its original {mono.original_path} is mono 64x64 px "
        f"(training pair {mono.id})",
    ]


def test_a_tiff_starless_of_a_fits_original_is_read_as_tiff(tmp_path: Path) -> None:
    import tifffile
    from astropy.io import fits

    rng = np.random.default_rng(5)
    original = tmp_path / "m42.fits"  # linear, scaled to [0, 1] (as PixInsight saves it)
    fits.PrimaryHDU(rng.uniform(0.1, 0.9, (64, 64)).astype(np.float32)).writeto(original)
    starless = tmp_path / "m42_starless.tif"
    tifffile.imwrite(starless, rng.uniform(0.1, 0.5, (64, 64)).astype(np.float32))
    x, y = read_pair(original, starless)
    assert x.shape == y.shape == (1, 64, 64) and x.dtype == y.dtype == np.float32
    assert float(y.mean()) < float(x.mean())  # the starless's own pixels, stretched alike
    export = tmp_path / "m42_export.tif"  # a 16-bit export of a stretched starless
    tifffile.imwrite(export, rng.integers(20000, 30000, (64, 64)).astype(np.uint16))
    with pytest.raises(ValueError, match=f"{export}: starless is tiff uint16, stretched, its "):
        read_pair(original, export)
    in_adu = _write_fits(tmp_path / "m42_adu.fits", (64, 64))  # ~100 ADU
    with pytest.raises(ValueError, match=f"{starless}: starless median 0.3.* outside its original"):
        read_pair(in_adu, starless)


def test_cli_refuses_a_bad_pair_before_it_is_registered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = _write_fits(tmp_path / "o.fits", (64, 64))
    starless = _write_fits(tmp_path / "s.fits", (3, 64, 64))
    config = tmp_path / "c.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    argv = ["--config", str(config), "retrain", "--original", str(original)]
    assert main([*argv, "--starless", str(starless)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        f"starnet retrain: training pair refused: {starless}: starless is RGB 64x64 px, its "
        f"original {original} is mono 64x64 px\n"
    )
    assert not (tmp_path / "data").exists()  # nothing registered, no flow run
    assert main([*argv, "--starless", str(original), "--steps", "0"]) == 2
    assert capsys.readouterr().err == "starnet retrain: --steps must be at least 1, got 0\n"


@pytest.mark.usefixtures("prefect_harness")
def test_a_registered_bad_pair_never_blocks_a_retrain(pipeline_env: PipelineEnv) -> None:
    from flows.retraining import retrain

    env = pipeline_env
    config = _config(env, promote="never")
    db = ProvenanceDB.from_settings(env.settings)
    write_fits(env.training / "original" / "bad.fits", seed=3)
    _write_fits(env.training / "starless" / "bad.fits", (60, 64))  # cropped by hand
    write_fits(env.training / "original" / "good.fits", seed=1)
    write_fits(env.training / "starless" / "good.fits", seed=2)
    result = retrain(config=config, steps=1)
    assert result["status"] == "candidate" and result["pairs"] == 1
    ids = {Path(p.original_path).name: p.id for p in db.list_training_pairs()}
    model = db.get_model(result["version"])
    assert model is not None and list(model.training_pair_ids) == [ids["good.fits"]]
    assert retrain(config=config, steps=1)["status"] == "up-to-date"  # not retrained forever
    write_fits(env.training / "original" / "new.fits", seed=4)
    write_fits(env.training / "starless" / "new.fits", seed=5)
    assert retrain(config=config, steps=1)["pairs"] == 2  # a new good pair is trained on


# ---- registration and promotion ----------------------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_promotion_leaves_no_candidate_behind(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retraining import retrain

    env = pipeline_env
    write_fits(env.training / "original" / "p.fits", seed=1)
    write_fits(env.training / "starless" / "p.fits", seed=2)
    real = ProvenanceDB._promote

    def locked(self: ProvenanceDB, s: Any, row: Any) -> None:
        if "+ft." in row.version:
            raise RuntimeError("database is locked")
        real(self, s, row)

    monkeypatch.setattr(ProvenanceDB, "_promote", locked)
    with pytest.raises(RuntimeError, match="database is locked"):
        retrain(config=env.config, steps=1)  # promote: always
    db = ProvenanceDB.from_settings(env.settings)
    assert [m.version for m in db.list_models() if "+ft." in m.version] == []
    assert _candidate_files(env) == []  # nor its weights file
    monkeypatch.setattr(ProvenanceDB, "_promote", real)
    result = retrain(config=env.config, steps=1)  # not "up-to-date": the pair is trained on
    assert result["status"] == "promoted"
    assert db.promoted_model().version == result["version"]  # type: ignore[union-attr]
    assert _candidate_files(env) == [Path(result["weights"]).name]


# ---- evaluation sets before the fine-tune ------------------------------------------------


def test_held_out_names_a_wrong_validation_folder(tmp_path: Path) -> None:
    def settings(validation_dir: str) -> Settings:
        r = RetrainSettings(validation_dir=validation_dir, eval_scenes=1, eval_size_px=32)
        return Settings(data_dir=str(tmp_path), retrain=r)

    with pytest.raises(ValueError, match=f"retrain.validation_dir: {tmp_path}/nope/original: no"):
        held_out(settings("nope"))
    (tmp_path / "val" / "starless").mkdir(parents=True)
    (tmp_path / "val" / "original").mkdir()
    with pytest.raises(ValueError, match=f"retrain.validation_dir: {tmp_path}/val/original: no "):
        held_out(settings("val"))
    write_fits(tmp_path / "val" / "original" / "a.fits", seed=1)
    _write_fits(tmp_path / "val" / "starless" / "a.fits", (60, 64))
    with pytest.raises(ValueError, match=r"retrain.validation_dir: .*a.fits: starless is"):
        held_out(settings("val"))
    (tmp_path / "val" / "starless" / "a.fits").unlink()
    write_fits(tmp_path / "val" / "starless" / "a.fits", seed=2)
    sets = held_out(settings("val"))
    assert [len(sets["synthetic"]), len(sets["validation"])] == [1, 1]


@pytest.mark.usefixtures("prefect_harness")
def test_a_wrong_validation_folder_costs_no_fine_tune(
    pipeline_env: PipelineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = pipeline_env
    config = _config(env, validation_dir="validation")  # under data_dir: not there
    write_fits(env.training / "original" / "p.fits", seed=1)
    write_fits(env.training / "starless" / "p.fits", seed=2)
    capsys.readouterr()
    assert main(["--config", config, "retrain", "--steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    folder = Path(env.settings.data_dir) / "validation" / "original"
    assert err[-1] == f"starnet retrain: retrain.validation_dir: {folder}: no such folder " + (
        "(validation pairs)"
    )
    assert "Traceback" not in "".join(err)
    assert _candidate_files(env) == []  # no fine-tune ran, no weights left behind
    db = ProvenanceDB.from_settings(env.settings)
    assert [m.version for m in db.list_models() if "+ft." in m.version] == []


# ---- the retrain numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("real_ratio: 75", r"c.yaml.retrain.real_ratio: expected a share in \[0, 1\], got 75.0"),
        ("real_ratio: -0.1", r"c.yaml.retrain.real_ratio: expected a share in \[0, 1\], got -0.1"),
        ("steps: 0", r"c.yaml.retrain.steps: expected an integer >= 1, got 0"),
        ("min_gain_db: -1", r"c.yaml.retrain.min_gain_db: expected a number >= 0, got -1.0"),
        ("lr: .nan", r"c.yaml.retrain.lr: expected a number > 0, got nan"),
        ("batch_size: 0", r"c.yaml.retrain.batch_size: expected an integer >= 1, got 0"),
        ("eval_scenes: 0", r"c.yaml.retrain.eval_scenes: expected an integer >= 1, got 0"),
        ("max_star_flux_rise: -0.1", r"c.yaml.retrain.max_star_flux_rise: expected a number"),
    ],
)
def test_bad_retrain_numbers_name_the_config_file_and_key(
    tmp_path: Path, text: str, match: str
) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(f"retrain:\n  {text}\n")
    with pytest.raises(SettingsError, match=match):
        load_settings(p)


def test_a_crop_the_model_cannot_take_names_the_setting() -> None:
    architecture = {"widths": [8, 16, 32], "blocks": [1, 1, 1]}  # sizes: multiples of 8
    assert train_config(RetrainSettings(crop_px=96), architecture).crop_px == 96
    with pytest.raises(ValueError, match="retrain.crop_px: expected a multiple of 8 px"):
        train_config(RetrainSettings(crop_px=100), architecture)


# ---- device and the GPU slot -------------------------------------------------------------


def _recording_gpu_slot(
    monkeypatch: pytest.MonkeyPatch, env: PipelineEnv, seen: list[tuple[str, Any]]
) -> None:
    """``flows.retraining.gpu_slot`` still takes the real slot (local lock files) and
    records who holds it and which candidate files exist when it is taken and given back."""
    import contextlib

    import flows.pipeline as pipeline
    import flows.retraining as retraining

    monkeypatch.setattr(pipeline, "api_server_configured", lambda: False)  # lock files

    @contextlib.contextmanager
    def recording(settings: Settings, what: str = "a frame") -> Any:
        with pipeline.gpu_slot(settings, what):
            files = pipeline.FileSlots(
                settings.resolve("locks").resolve(), pipeline.gpu_limit(settings), 1
            )
            seen.append(("taken", (files.holders(), _candidate_files(env))))
            yield
            seen.append(("given back", _candidate_files(env)))

    monkeypatch.setattr(retraining, "gpu_slot", recording)


@pytest.mark.usefixtures("prefect_harness")
def test_a_fine_tune_on_a_gpu_holds_the_frames_gpu_slot(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import flows.retraining as retraining
    from flows.retraining import retrain

    env = pipeline_env
    write_fits(env.training / "original" / "p.fits", seed=1)
    write_fits(env.training / "starless" / "p.fits", seed=2)
    seen: list[tuple[str, Any]] = []
    _recording_gpu_slot(monkeypatch, env, seen)
    devices: list[str] = []

    def a_gpu(name: str) -> torch.device:  # this machine as one with a GPU; trains on its CPU
        devices.append(name)
        return torch.device("cuda")

    monkeypatch.setattr(retraining, "select_device", a_gpu)
    result = retrain(config=env.config, steps=1)
    assert devices == [env.settings.inference.device]  # retrain.device unset: the frames'
    assert [what for what, _ in seen] == ["taken", "given back"]
    holders, files_then = seen[0][1]
    assert len(holders) == 1 and "retrain" in holders[0]
    assert files_then == []  # taken before the fine-tune ...
    assert seen[1][1] == [Path(result["weights"]).name]  # ... given back after it


@pytest.mark.usefixtures("prefect_harness")
def test_a_fine_tune_on_the_cpu_leaves_the_gpu_slot_to_the_frames(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.retraining import retrain

    env = pipeline_env
    write_fits(env.training / "original" / "p.fits", seed=1)
    write_fits(env.training / "starless" / "p.fits", seed=2)
    seen: list[tuple[str, Any]] = []
    _recording_gpu_slot(monkeypatch, env, seen)
    result = retrain(config=_config(env, device="cpu"), steps=1)
    assert result["status"] in ("promoted", "candidate") and seen == []


@pytest.mark.usefixtures("prefect_harness")
def test_an_absent_retrain_device_is_refused_before_any_work(pipeline_env: PipelineEnv) -> None:
    from flows.retraining import retrain

    env = pipeline_env
    write_fits(env.training / "original" / "p.fits", seed=1)
    write_fits(env.training / "starless" / "p.fits", seed=2)
    with pytest.raises(ValueError, match=r"retrain.device: device='cuda:99'"):
        retrain(config=_config(env, device="cuda:99"), steps=1)
    assert _candidate_files(env) == []
    assert ProvenanceDB.from_settings(env.settings).list_training_pairs() == []


def test_the_fine_tune_trains_on_the_device_it_is_given() -> None:
    architecture = {"widths": [8, 16, 32], "blocks": [1, 1, 1]}
    assert train_config(RetrainSettings(), architecture).device == "cpu"
    assert train_config(RetrainSettings(), architecture, "cuda:1").device == "cuda:1"
