"""Review 27 (training): a resumed run keeps its checkpoint's settings and moving average,
shipping never replaces other weights of a version and unversioned weights get versions
of their own, crop workers outlive a SIGTERM to the process group and a lost one stops
the run with its checkpoint saved, pairs follow ``validation.nan_policy``, and the run's
own files are never export targets."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from astropy.io import fits

import flows.cli_train as cli_train
import starnet_core.model as model_module
import starnet_core.train as train_module
from flows.cli import build_parser, main
from starnet_core.checkpoint import EMA_PREFIX, checkpoint_metadata
from starnet_core.model import ModelConfig, StarNetUNet, load_weights, save_weights
from starnet_core.synthetic import MIXES
from starnet_core.train import TrainConfig, lr_at

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1))
QUICK = ["--synthetic", "--batch", "1", "--pool", "4", "--workers", "0"]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``starnet train`` on a tiny model, logging every step, a checkpoint every 4."""
    settings: dict[str, Any] = {"log_every": 1, "checkpoint_every": 4}
    real = cli_train._config

    def config(args: Any, base: Any = None) -> Any:
        cfg = real(args, base)
        cfg.model, cfg.threads = TINY, 1
        for k, v in settings.items():
            setattr(cfg, k, v)
        return cfg

    monkeypatch.setattr(cli_train, "_config", config)
    return lambda **kw: settings.update(kw)


@pytest.fixture
def pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package's weights folder, in tmp_path (never the installed one)."""
    folder = tmp_path / "pkg"
    monkeypatch.setattr(model_module, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(model_module, "MANIFEST", folder / "manifest.json")
    return folder


def records(logs: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (logs / "train_log.jsonl").read_text().splitlines()]


def saved_config(ckpt: Path) -> dict[str, Any]:
    return json.loads(checkpoint_metadata(ckpt)["train_config"])


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.flatten() for p in model.parameters()])


# ---- 1, 2: a resumed run keeps its settings and its moving average -----------------------


def test_resume_without_ema_keeps_the_average_and_a_finished_run_is_not_rewritten(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    ckpt = logs / "checkpoint.safetensors"
    run = ["train", *QUICK, "--crop", "32", "--logs", str(logs)]
    assert main([*run, "--new", "--steps", "3", "--ema", "0.9"]) == 0
    before = ckpt.read_bytes()
    capsys.readouterr()
    out = tmp_path / "final.safetensors"
    assert main([*run, "--export", str(out)]) == 0  # nothing left to train: export only
    assert ckpt.read_bytes() == before, "a resumed run that trained nothing rewrote it"
    from starnet_core.checkpoint import load_generator_from_checkpoint

    exported, info = load_weights(out)
    ema, meta = load_generator_from_checkpoint(ckpt)
    assert meta["weights"] == "ema"
    assert "moving average" in info.metadata["weights"]
    assert torch.equal(flat(exported), flat(ema))
    # training on without --ema keeps averaging at the run's decay
    assert main([*run, "--steps", "5"]) == 0
    assert saved_config(ckpt)["ema_decay"] == 0.9
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        assert any(k.startswith(EMA_PREFIX) for k in f.keys())  # noqa: SIM118
    # --ema 0, given: the average goes, and the log says so
    assert main([*run, "--steps", "6", "--ema", "0"]) == 0
    assert "ema_decay 0.9 -> 0.0" in capsys.readouterr().out
    with safe_open(str(ckpt), framework="pt") as f:
        assert not any(k.startswith(EMA_PREFIX) for k in f.keys())  # noqa: SIM118


def test_resume_keeps_the_checkpoints_settings_and_says_what_changed(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    ckpt = logs / "checkpoint.safetensors"
    first = ["--crop", "32", "--lr", "1e-5", "--lr-min", "1e-6", "--w-over", "2"]
    first += ["--scene-mix", "hard", "--dense-share", "0.5", "--star-weight", "7"]
    assert main(["train", *QUICK, "--logs", str(logs), "--new", "--steps", "3", *first]) == 0
    capsys.readouterr()
    assert main(["train", *QUICK, "--logs", str(logs), "--steps", "5"]) == 0
    printed = capsys.readouterr().out
    lines = [x for x in printed.splitlines() if x.startswith("resuming")]
    assert lines == [f"resuming {ckpt} at step 3 with its run's settings; changed: steps 3 -> 5"]
    cfg = saved_config(ckpt)
    assert (cfg["lr"], cfg["lr_min"], cfg["crop_px"], cfg["w_over"]) == (1e-5, 1e-6, 32, 2.0)
    assert cfg["star_weight"] == 7.0 and cfg["steps"] == 5
    assert cfg["mix"]["dense_share"] == 0.5
    assert cfg["mix"]["spike_amp"] == list(MIXES["hard"].spike_amp)
    assert all(r["lr"] <= 1e-5 for r in records(logs)), "the resumed run went back to 5e-4"
    # an option given on the resume changes only that setting, and is said
    assert main(["train", *QUICK, "--logs", str(logs), "--steps", "6", "--lr", "2e-5"]) == 0
    printed = capsys.readouterr().out
    assert "changed: steps 5 -> 6, lr 1e-05 -> 2e-05" in printed
    cfg = saved_config(ckpt)
    assert (cfg["lr"], cfg["lr_min"], cfg["crop_px"]) == (2e-5, 1e-6, 32)
    # --new starts from the defaults and the options given
    assert main(["train", *QUICK, "--logs", str(logs), "--new", "--yes", "--steps", "1"]) == 0
    cfg = saved_config(ckpt)
    assert (cfg["lr"], cfg["crop_px"], cfg["w_over"]) == (5e-4, 128, 5.0)
    assert cfg["mix"]["dense_share"] == MIXES["default"].dense_share


def test_a_real_ratio_of_0_given_at_the_start_is_kept_on_resume(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 2: `--real-ratio 0` at the start (synthetic only, pairs present) became 0.5
    on resume; a resumed run keeps it and says how to mix the pairs in."""
    data = tmp_path / "train"
    rng = np.random.default_rng(0)
    sky = rng.normal(100.0, 2.0, (64, 64)).astype(np.float32)
    stars = sky.copy()
    stars[10, 10] += 500
    for side, image in (("original", stars), ("starless", sky)):
        (data / side).mkdir(parents=True)
        fits.PrimaryHDU(image).writeto(data / side / "m.fits")
    logs = tmp_path / "logs"
    run = ["train", *QUICK, "--data", str(data), "--crop", "32", "--logs", str(logs)]
    assert main([*run, "--new", "--yes", "--steps", "2", "--real-ratio", "0"]) == 0
    capsys.readouterr()
    assert main([*run, "--steps", "3"]) == 0
    assert "keeps it: give --real-ratio" in capsys.readouterr().out
    assert saved_config(logs / "checkpoint.safetensors")["real_ratio"] == 0.0


def test_a_resumed_config_takes_this_starts_machine_and_budget_from_the_command_line() -> None:
    base = TrainConfig(
        steps=2**62, time_limit_s=600.0, device="cuda", workers=8, threads=3, d_warmup_steps=50,
        film_only=True, mix=MIXES["hard"], model=TINY, lr=1e-5,
    )  # fmt: skip
    parse = build_parser().parse_args
    cfg = cli_train._config(parse(["train", "--synthetic"]), base)
    assert (cfg.steps, cfg.time_limit_s, cfg.device, cfg.workers, cfg.threads) == (
        TrainConfig().steps, 0.0, "cpu", 0, 0,
    )  # fmt: skip
    assert cfg.d_warmup_steps == 0 and cfg.film_only and cfg.lr == 1e-5
    assert cfg.mix == MIXES["hard"] and cfg.model == TINY
    cfg = cli_train._config(parse(["train", "--minutes", "2", "--no-film-only"]), base)
    assert (cfg.steps, cfg.time_limit_s, cfg.film_only) == (2**62, 120.0, False)
    # a run with a step target, resumed with --minutes: the target stays (review 2)
    stepped = dataclasses.replace(base, steps=5000)
    cfg = cli_train._config(parse(["train", "--minutes", "30"]), stepped)
    assert (cfg.steps, cfg.time_limit_s) == (5000, 1800.0)
    # the checkpoint's JSON gives the same config back (tuples, mix and model included)
    again = TrainConfig.from_json(base.to_json())
    assert again == base and isinstance(again.mix.spike_amp, tuple)


# ---- 3, 7: shipping and versions ---------------------------------------------------------


def test_ship_never_replaces_other_weights_of_a_version(pkg: Path) -> None:
    from starnet_core.model import dev_version, ship_weights

    torch.manual_seed(0)
    a, b = StarNetUNet(TINY), StarNetUNet(TINY)
    path = ship_weights(a, "1.0.0")
    first = path.read_bytes()
    with pytest.raises(ValueError, match=r"starnet-1\.0\.0\.safetensors: model version 1\.0\.0 "):
        ship_weights(b, "1.0.0")
    assert path.read_bytes() == first and sorted(p.name for p in pkg.iterdir()) == [
        "manifest.json", "starnet-1.0.0.safetensors",
    ]  # fmt: skip
    assert ship_weights(a, "1.0.0") == path  # the same weights again: fine
    with pytest.raises(ValueError, match="version '../x'"):
        ship_weights(a, "../x")
    # unversioned weights: a version of their own, the same for the same weights
    assert dev_version(a) == dev_version(a) != dev_version(b)
    assert dev_version(a).startswith("0.0.0-dev+") and len(dev_version(a)) == 18


def test_two_unversioned_exports_register_side_by_side(tmp_path: Path) -> None:
    """Two dev weights files used to share version 0.0.0-dev: the registry refused the
    second ("registered with weights sha256 ...")."""
    from flows.provenance import ProvenanceDB
    from starnet_core.model import dev_version

    db = ProvenanceDB(f"sqlite:///{tmp_path / 'p.db'}")
    db.ensure_schema()
    torch.manual_seed(1)
    for i in range(2):
        m = StarNetUNet(TINY)
        digest = save_weights(m, tmp_path / f"{i}.safetensors", version=dev_version(m))
        _, info = load_weights(tmp_path / f"{i}.safetensors")
        db.register_model(info.version, digest, {"config": {}})
    assert len({m.version for m in db.list_models()}) == 2


def test_ship_is_checked_before_training_and_export_comes_first(
    tmp_path: Path, tiny: Callable[..., None], pkg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    run = ["train", *QUICK, "--crop", "32", "--logs", str(logs), "--steps", "2"]
    blocked = tmp_path / "afile"
    blocked.write_text("x")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(model_module, "WEIGHTS_DIR", blocked / "weights")
        assert main([*run, "--new", "--ship"]) == 2
    assert "--ship: " in capsys.readouterr().err and not logs.exists()
    assert main([*run, "--new", "--ship", "--version", "a/b"]) == 2
    assert "--version: version 'a/b'" in capsys.readouterr().err and not logs.exists()
    # a version packaged already: refused before a run that trains new weights
    torch.manual_seed(2)
    model_module.ship_weights(StarNetUNet(TINY), "2.0.0")
    assert main([*run, "--new", "--ship", "--version", "2.0.0"]) == 2
    assert "model version 2.0.0 is packaged already" in capsys.readouterr().err
    assert not logs.exists()
    # ... and after a run that trains nothing: --export is written first all the same
    assert main([*run, "--new"]) == 0
    out = tmp_path / "w.safetensors"
    assert main([*run, "--export", str(out), "--ship", "--version", "2.0.0"]) == 1
    err = capsys.readouterr().err
    assert "--ship: " in err and "is packaged with other weights already" in err
    assert out.exists()
    # the default version is the weights' own: shipped and exported alike
    assert main([*run, "--export", str(out), "--ship"]) == 0
    version = load_weights(out)[1].version
    assert version.startswith("0.0.0-dev+")
    assert json.loads((pkg / "manifest.json").read_text())["version"] == version


# ---- 6: the run's own files are no export target ----------------------------------------


def test_export_refuses_the_runs_checkpoint_and_kept_weights(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    ckpt = logs / "checkpoint.safetensors"
    run = ["train", *QUICK, "--crop", "32", "--logs", str(logs), "--steps", "2"]
    assert main([*run, "--new"]) == 0
    before = ckpt.read_bytes()
    for target in (ckpt, logs / "." / "weights-000000500.safetensors"):
        assert main([*run, "--export", str(target)]) == 2
        assert "export to another file" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


# ---- 4: crop workers and SIGTERM ----------------------------------------------------------


def test_workers_outlive_sigterm_and_a_lost_worker_is_a_clear_error() -> None:
    pool = train_module.PairPool(4, 32, seed=5, workers=1)
    try:
        assert pool._executor is not None
        (proc,) = pool._executor._processes.values()  # type: ignore[attr-defined]
        os.kill(proc.pid, signal.SIGTERM)  # what a stop of the whole process group sends
        time.sleep(0.5)
        assert proc.is_alive()
        deadline = time.monotonic() + 60
        while not pool.refresh(0) and time.monotonic() < deadline:
            time.sleep(0.1)  # its tasks go on arriving
        assert proc.is_alive()
        os.kill(proc.pid, signal.SIGKILL)  # the OOM killer
        with pytest.raises(train_module.WorkersLostError, match="worker process died"):
            while time.monotonic() < deadline:
                pool.refresh(0)
                time.sleep(0.1)
    finally:
        pool.close()


def test_a_lost_worker_stops_the_run_with_its_checkpoint_saved(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tiny(refresh_every=1, checkpoint_every=100)
    calls = {"n": 0}
    real = train_module.PairPool.refresh

    def refresh(self: Any, count: int) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise train_module.WorkersLostError(train_module._WORKERS_LOST)
        return real(self, count)

    monkeypatch.setattr(train_module.PairPool, "refresh", refresh)
    logs = tmp_path / "logs"
    out = tmp_path / "w.safetensors"
    args = ["train", *QUICK, "--crop", "32", "--logs", str(logs), "--steps", "50", "--new"]
    assert main([*args, "--export", str(out)]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("starnet train")]
    assert len(err) == 1 and "worker process died" in err[0] and "stopped at step 3" in err[0]
    assert int(checkpoint_metadata(logs / "checkpoint.safetensors")["step"]) == 3
    assert [r["step"] for r in records(logs)] == [1, 2, 3]
    assert not out.exists()


# ---- 5, 10: pairs follow validation.nan_policy; a starless file alone is named ----------


def _nan_pair(root: Path, name: str = "m.fits") -> None:
    from astropy.io import fits

    rng = np.random.default_rng(0)
    sky = rng.normal(100.0, 2.0, (64, 64)).astype(np.float32)
    stars = sky.copy()
    stars[10, 10] += 500
    stars[:20, 0] = np.nan  # a registered stack's border: 0.5% of the pixels
    sky[:20, 0] = np.nan
    for side, data in (("original", stars), ("starless", sky)):
        (root / side).mkdir(parents=True, exist_ok=True)
        fits.PrimaryHDU(data).writeto(root / side / name)


def test_training_pairs_follow_the_nan_policy(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.retraining import validation_pairs
    from flows.settings import ValidationSettings
    from starnet_core.train import read_pair_folder

    data = tmp_path / "train"
    _nan_pair(data)
    with pytest.raises(ValueError, match="non-finite"):
        read_pair_folder(data)
    ((x, y),) = read_pair_folder(data, nan_policy="median")
    assert np.isfinite(x).all() and np.isfinite(y).all()
    ((x, _),) = validation_pairs(data, ValidationSettings(nan_policy="zero"))
    assert np.isfinite(x).all()
    run = ["train", "--data", str(data), "--crop", "32", "--batch", "1", "--steps", "1"]
    run += ["--logs", str(tmp_path / "logs"), "--new"]
    assert main(run) == 2
    assert "set validation.nan_policy" in capsys.readouterr().err
    config = tmp_path / "c.yaml"
    config.write_text("validation:\n  nan_policy: median\n")
    assert main(["--config", str(config), *run]) == 0
    assert "1 training pairs" in capsys.readouterr().out


def test_a_starless_file_without_its_original_is_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    from starnet_core.train import read_pair_folder

    def noise(path: Path) -> None:
        pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)

    for side in ("original", "starless"):
        (tmp_path / side).mkdir()
        noise(tmp_path / side / "a.png")
    noise(tmp_path / "starless" / "typo.png")
    with caplog.at_level("WARNING", logger="starnet_core.train"):
        assert len(read_pair_folder(tmp_path)) == 1
    assert str(tmp_path / "starless" / "typo.png") in caplog.text
    assert "no original of that name" in caplog.text


# ---- 8: the warm-up of a short run --------------------------------------------------------


def test_a_short_run_warms_up_a_tenth_of_it_and_decays() -> None:
    from flows.retraining import train_config
    from flows.settings import RetrainSettings
    from starnet_core.train import warmup_length

    cfg = TrainConfig(steps=100, lr=1e-4, lr_min=1e-5)  # the default warm-up: 200 steps
    assert warmup_length(cfg.steps, cfg.warmup_steps) == 10
    assert lr_at(9, cfg) == pytest.approx(1e-4)
    assert lr_at(99, cfg) == pytest.approx(1e-5, rel=0.01)
    long = TrainConfig(steps=25000)
    assert warmup_length(long.steps, long.warmup_steps) == 200
    # the retrain flow's fine-tunes: the same rule (at most 50 steps, a tenth of the run)
    for steps in (1, 30, 300, 5000):
        r = train_config(RetrainSettings(steps=steps), {"widths": [8, 16], "blocks": [1, 1]})
        assert warmup_length(r.steps, r.warmup_steps) == max(1, min(50, steps // 10))
    # a time budget's run that makes few steps: the warm-up ends at a tenth of the budget
    timed = TrainConfig(steps=2**62, time_limit_s=100.0, lr=1e-4, lr_min=1e-5)
    assert lr_at(3, timed, elapsed_s=5.0) == pytest.approx(0.5e-4)
    assert lr_at(5, timed, elapsed_s=99.0) < 1.1e-5


# ---- 9: a checkpoint whose tensors do not fit its model_config --------------------------


def test_a_checkpoint_that_does_not_fit_its_model_config_is_one_line(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    logs = tmp_path / "logs"
    ckpt = logs / "checkpoint.safetensors"
    run = ["train", *QUICK, "--crop", "32", "--logs", str(logs), "--steps", "2"]
    assert main([*run, "--new"]) == 0
    meta = checkpoint_metadata(ckpt)
    meta["model_config"] = ModelConfig(widths=(8, 24), blocks=(1, 1)).to_json()
    save_file(load_file(str(ckpt)), str(ckpt), metadata=meta)
    capsys.readouterr()
    with pytest.raises(ValueError, match="generator tensors do not match its model_config"):
        train_module.load_checkpoint(ckpt, TrainConfig(model=TINY))
    assert main([*run, "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"starnet train: {ckpt}: its generator tensors")


# ---- 10: plot ------------------------------------------------------------------------------


def test_plot_of_a_log_without_loss_values_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "train_log.jsonl").write_text('{"step": 1, "other": 2}\n')
    assert main(["plot", "--logs", str(tmp_path)]) == 2
    assert "no loss or metric values in the log" in capsys.readouterr().err
