"""Training loop: runs, logs the star metrics, checkpoints and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from starnet_core.model import ModelConfig
from starnet_core.train import (
    TrainConfig,
    augment,
    load_checkpoint,
    read_pair_folder,
    sample_crops,
    train,
)

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1))


def tiny_config(**kw: object) -> TrainConfig:
    base = dict(
        steps=6,
        batch_size=2,
        crop_px=32,
        pool_size=4,
        refresh_every=2,
        refresh_count=1,
        log_every=2,
        checkpoint_every=3,
        gan_start_step=2,
        warmup_steps=1,
        model=TINY,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_tiny_run_logs_and_checkpoints(tmp_path: Path) -> None:
    records: list[dict[str, float]] = []
    strips: list[np.ndarray] = []
    state = train(
        tiny_config(),
        tmp_path,
        on_log=records.append,
        on_showcase=lambda step, strip: strips.append(strip),
    )
    assert state.step == 6
    assert [r["step"] for r in records] == [2, 4, 6]
    for key in ("l_g_pix", "residual_star_flux", "bg_l1", "l_g_gan", "l_g_percep", "l_d_real"):
        assert key in records[-1], key
    assert all(np.isfinite(v) for r in records for v in r.values())
    assert (tmp_path / "checkpoint.safetensors").exists()
    assert strips and strips[0].shape == (3, 2 * 32, 3 * 32)


def test_resume_continues_from_checkpoint(tmp_path: Path) -> None:
    train(tiny_config(steps=3), tmp_path)
    before = load_checkpoint(tmp_path / "checkpoint.safetensors", tiny_config())
    assert before.step == 3
    assert before.opt_g.state_dict()["state"], "optimizer state must be saved"
    state = train(tiny_config(steps=5), tmp_path)
    assert state.step == 5


def test_stop_request_saves_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    state = train(tiny_config(steps=100), tmp_path, should_stop=stop)
    assert state.step == 2
    assert load_checkpoint(tmp_path / "checkpoint.safetensors", tiny_config()).step == 2


def test_file_pairs_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.1, 0.3, (3, 40, 40)).astype(np.float32)
    orig = clean.copy()
    orig[:, 20, 20] = 1.0
    state = train(tiny_config(steps=2), tmp_path, file_pairs=[(orig, clean)], synthetic=False)
    assert state.step == 2
    with pytest.raises(ValueError, match="nothing to train on"):
        train(tiny_config(steps=2), tmp_path / "x", synthetic=False)


def test_augment_keeps_pairs_aligned() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 0.8  # colour gains stay below 1.15: no clipping
    y = x * 0.5
    for _ in range(10):
        a, b = augment(x, y, gen, scale_p=0.5)
        assert a.shape == x.shape
        assert torch.allclose(b, a * 0.5, atol=1e-5)


def test_sample_crops_pads_small_and_mono() -> None:
    o = np.random.default_rng(0).random((1, 20, 30), dtype=np.float32)
    xs, ys = sample_crops([(o, o)], 3, 32, np.random.default_rng(1))
    assert xs.shape == ys.shape == (3, 3, 32, 32)


def test_read_pair_folder(tmp_path: Path) -> None:
    from PIL import Image

    for sub in ("original", "starless"):
        (tmp_path / sub).mkdir()
    img = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "original" / "a.png")
    Image.fromarray(img // 2).save(tmp_path / "starless" / "a.png")
    pairs = read_pair_folder(tmp_path)
    assert len(pairs) == 1 and pairs[0][0].shape == (3, 24, 24)
    Image.fromarray(img).save(tmp_path / "original" / "b.png")
    with pytest.raises(ValueError, match="b.png: no starless partner"):
        read_pair_folder(tmp_path)
    Image.fromarray(img[:10]).save(tmp_path / "starless" / "b.png")
    with pytest.raises(ValueError, match="differs from its original"):
        read_pair_folder(tmp_path)
