"""Training loop: runs, logs the star metrics, checkpoints and resumes (exactly on file
pairs alone; a run with synthetic crops rebuilds its pool on a resume, which the
checkpoint does not hold)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from starnet_core.model import WIDTH_REF_PX, ModelConfig, StarNetUNet
from starnet_core.synthetic import MIXES, Mix, make_pool
from starnet_core.train import (
    PairPool,
    TrainConfig,
    augment,
    load_checkpoint,
    lr_at,
    read_pair_folder,
    relative_star_error,
    sample_crops,
    star_widths,
    train,
)

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1))


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    """All of a model's parameters as one vector, to compare models."""
    return torch.cat([p.flatten() for p in model.parameters()])


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


def test_logged_records_are_float_means_of_each_steps_terms(tmp_path: Path) -> None:
    """The loop keeps each step's terms on the device and reads them once per log: the
    record is still the plain-float mean of the steps since the last one."""
    from starnet_core import train as train_mod

    seen: list[dict[str, float]] = []
    real_metrics = train_mod.star_metrics

    def spy(*args: object, **kw: object) -> dict[str, torch.Tensor]:
        out = real_metrics(*args, **kw)  # type: ignore[arg-type]
        assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in out.values())
        seen.append({k: float(v) for k, v in out.items()})
        return out

    records: list[dict[str, float]] = []
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "star_metrics", spy)
    try:
        train(tiny_config(steps=4, log_every=2, gan_start_step=0), tmp_path, on_log=records.append)
    finally:
        mp.undo()
    assert len(seen) == 4 and len(records) == 2
    for r, steps in zip(records, (seen[:2], seen[2:]), strict=True):
        assert all(type(v) is float for k, v in r.items() if k not in ("step", "fresh_crops")), r
        for key in ("residual_star_flux", "bg_l1"):
            assert r[key] == pytest.approx(np.mean([s[key] for s in steps]), rel=1e-6), key
        assert {"l_d_real", "l_d_fake", "l_g_gan", "l_g_percep"} <= set(r)


def test_each_checkpoint_is_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import starnet_core.train as train_module

    steps: list[int] = []
    real_save = train_module.save_checkpoint

    def counting_save(state: train_module.TrainState, cfg: TrainConfig, path: Path) -> None:
        steps.append(state.step)
        real_save(state, cfg, path)

    monkeypatch.setattr(train_module, "save_checkpoint", counting_save)
    train(tiny_config(steps=6, checkpoint_every=3), tmp_path)
    assert steps == [3, 6], "the last step's checkpoint is written once"
    calls = {"n": 0}

    def stop_after_one() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    # stopped between checkpoints (step 7): the loop wrote none, so train() writes it
    train(tiny_config(steps=100, checkpoint_every=3), tmp_path, should_stop=stop_after_one)
    assert steps == [3, 6, 7]


def test_resume_continues_from_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train(tiny_config(steps=3), tmp_path)
    before = load_checkpoint(tmp_path / "checkpoint.safetensors", tiny_config())
    assert before.step == 3
    assert before.opt_g.state_dict()["state"], "optimizer state must be saved"
    state = train(tiny_config(steps=5), tmp_path)
    assert state.step == 5
    # a time budget restarts the cosine on a resume: the log says so
    with caplog.at_level(logging.INFO, logger="starnet_core.train"):
        train(tiny_config(steps=6, time_limit_s=600.0), tmp_path)
    assert "decays anew" in caplog.text and "10-minute budget" in caplog.text


def test_unreadable_checkpoint_is_a_value_error_naming_it(tmp_path: Path) -> None:
    train(tiny_config(steps=1), tmp_path)
    ckpt = tmp_path / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-10])  # truncated
    with pytest.raises(ValueError, match=f"{ckpt}: not a safetensors file"):
        load_checkpoint(ckpt, tiny_config())
    with pytest.raises(ValueError, match=f"{ckpt}: not a safetensors file"):
        train(tiny_config(steps=2), tmp_path)
    assert ckpt.exists(), "left for the user to restore"


def test_stop_request_saves_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    state = train(tiny_config(steps=100), tmp_path, should_stop=stop)
    assert state.step == 2
    assert load_checkpoint(tmp_path / "checkpoint.safetensors", tiny_config()).step == 2


def test_the_last_step_of_a_run_is_logged(tmp_path: Path) -> None:
    """A run that ends (or stops) between two log steps logs its last steps too: a
    short run has a log to plot, a stopped one shows where it stopped."""
    records: list[dict[str, float]] = []
    train(tiny_config(steps=5, log_every=2), tmp_path / "a", on_log=records.append)
    assert [r["step"] for r in records] == [2, 4, 5]
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    records.clear()
    state = train(
        tiny_config(steps=100, log_every=2), tmp_path / "b", on_log=records.append, should_stop=stop
    )
    assert state.step == 3
    assert [r["step"] for r in records] == [2, 3]
    assert np.isfinite(records[-1]["l_g_pix"]) and records[-1]["s_per_step"] > 0
    records.clear()
    train(tiny_config(steps=4, log_every=2), tmp_path / "c", on_log=records.append)
    assert [r["step"] for r in records] == [2, 4], "a logged last step is not logged twice"


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
    # a mask tied to the image, grey blocks of 0.1 and 0.6: it must move with the image
    blocks = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5
    keep = blocks.float().repeat_interleave(8, 2).repeat_interleave(8, 3)
    grey = (0.1 + 0.5 * keep).repeat(1, 3, 1, 1)
    for _ in range(10):
        a, b, k, zoom = augment(torch.cat([x, grey]), torch.cat([y, grey * 0.5]), gen, 0.5, keep)
        assert a.shape == (4, 3, 32, 32) and k is not None and k.shape == keep.shape
        assert 1.0 <= zoom <= 2.0
        assert torch.allclose(b[:2], a[:2] * 0.5, atol=1e-5)
        assert set(k.unique().tolist()) <= {0.0, 1.0}
        # flips, rotations and zoom move the mask with the image (bilinear zoom blurs the
        # image's block edges only); channel shuffle and colour gains leave it alone
        agree = ((a[2:].mean(dim=1, keepdim=True) > 0.3).float() == k).float().mean()
        assert agree > 0.93
    assert augment(x, y, gen, scale_p=0.5)[2] is None


def test_augment_reports_the_zoom_that_widened_the_crops() -> None:
    # one bright pixel column: its width after augmenting is the zoom (rotations and
    # flips keep widths)
    x = torch.zeros(1, 3, 64, 64)
    x[..., 30:34] = 1.0
    zooms = set()
    for seed in range(40):
        a, _, _, zoom = augment(x, x, torch.Generator().manual_seed(seed), scale_p=0.5)
        zooms.add(zoom)
        lit = (a[0, 0] > 0.5).float()
        width = float(torch.minimum(lit.sum(0).max(), lit.sum(1).max()))
        assert width == pytest.approx(4 * zoom, abs=1.5)
    assert 1.0 in zooms and len(zooms) > 2


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
    with pytest.raises(
        ValueError, match=r"b.png: starless is RGB 24x10 px, its original .*b.png is RGB 24x24 px"
    ):
        read_pair_folder(tmp_path)


def test_read_pair_folder_refuses_a_linear_side_with_a_stretched_one(tmp_path: Path) -> None:
    """A float32 (linear) TIFF original whose starless partner is a 16-bit export of the
    stretched frame: stretching that partner again as if linear gave a starless side
    four times as bright as its original's sky. Refused, naming both files and types."""
    import tifffile

    for sub in ("original", "starless"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(0)
    sky = (0.01 + rng.normal(0, 0.0005, (32, 32))).astype(np.float32)
    stretched = rng.integers(15000, 17000, (32, 32)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "original" / "a.tif", sky)
    tifffile.imwrite(tmp_path / "starless" / "a.tif", stretched)
    with pytest.raises(ValueError) as info:
        read_pair_folder(tmp_path)
    message = str(info.value)
    for part in (
        f"{tmp_path / 'original' / 'a.tif'} is tiff float32, linear",
        f"{tmp_path / 'starless' / 'a.tif'}: starless is tiff uint16, stretched",
    ):
        assert part in message
    # the other way round too
    tifffile.imwrite(tmp_path / "original" / "a.tif", stretched)
    tifffile.imwrite(tmp_path / "starless" / "a.tif", sky)
    with pytest.raises(
        ValueError, match=r"original .*a.tif is tiff uint16, stretched: one is linear"
    ):
        read_pair_folder(tmp_path)
    # both linear (or both stretched) in different sample types: one stretch for both
    tifffile.imwrite(tmp_path / "starless" / "a.tif", sky.astype(np.float64))
    tifffile.imwrite(tmp_path / "original" / "a.tif", sky)
    ((x, y),) = read_pair_folder(tmp_path)
    np.testing.assert_allclose(x, y, atol=1e-6)


def test_worker_pool_fills_and_refreshes_from_other_processes() -> None:
    pool = PairPool(size=20, crop_px=32, seed=7, workers=2)
    try:
        assert np.isfinite(pool.orig).all() and np.isfinite(pool.clean).all()
        # filled from make_pool(task_seed(seed, k)): exactly the generator's crops
        first, _, masks = make_pool(PairPool.task_seed(7, 0), PairPool.CHUNK, 32)
        np.testing.assert_array_equal(pool.orig[: PairPool.CHUNK], first)
        np.testing.assert_array_equal(pool.masks[: PairPool.CHUNK], masks)
        assert np.isnan(pool.hwhm).all()  # not measured: widths=False
        # every crop is a pair: starless never brighter than the original by more than noise
        assert (pool.orig - pool.clean).mean() > 0
        before = pool.orig.copy()
        replaced = 0
        deadline = time.monotonic() + 60
        while replaced == 0 and time.monotonic() < deadline:
            replaced = pool.refresh(count=3)
            time.sleep(0.05)
        assert replaced >= PairPool.CHUNK, "finished worker tasks must be swapped in"
        assert not np.array_equal(before, pool.orig)
    finally:
        pool.close()


def test_pool_workers_ignore_ctrl_c() -> None:
    """Ctrl-C reaches the workers too (one process group): they ignore it, and the
    training process stops cleanly (its checkpoint saved) instead of a broken pool."""
    import signal

    pool = PairPool(size=1, crop_px=32, seed=7, workers=1)
    try:
        assert pool._executor is not None
        handler = pool._executor.submit(signal.getsignal, signal.SIGINT).result()
        assert handler == signal.SIG_IGN
    finally:
        pool.close()


def test_worker_seeds_never_draw_a_single_int_seeds_scenes() -> None:
    # held-out benchmark scenes come from single-int seeds (9,000,001 up); a worker task
    # must not draw the same stream whatever the run's start step
    held_out = make_pool(9_100_004, 1, 32)[0]
    for seed in (9_100_004, 1234 + 98_743):
        for task in range(12):
            assert not np.array_equal(make_pool(PairPool.task_seed(seed, task), 1, 32)[0], held_out)
    assert PairPool.task_seed(5, 0) != PairPool.task_seed(5, 1) != PairPool.task_seed(6, 0)


@pytest.mark.parametrize("workers", [0, 1])
def test_pool_measures_star_widths_when_asked(workers: int) -> None:
    pool = PairPool(size=PairPool.CHUNK, crop_px=64, seed=3, workers=workers, widths=True)
    try:
        np.testing.assert_array_equal(pool.hwhm, star_widths(pool.orig))
        assert np.isfinite(pool.hwhm).all() and (pool.hwhm > 0).all()
        _, _, _, w = pool.sample(5)
        assert w.shape == (5,) and np.isin(w, pool.hwhm).all()
    finally:
        pool.close()


def test_star_widths_follow_the_stars_and_fall_back_on_empty_crops() -> None:
    yy, xx = np.mgrid[:96, :96]
    rng = np.random.default_rng(0)
    centres = rng.uniform(8, 88, (30, 2))

    def field(sigma: float) -> np.ndarray:
        img = 0.1 + rng.normal(0, 0.002, (96, 96))
        for cx, cy in centres:
            img += 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        return np.repeat(np.clip(img, 0, 1)[None], 3, 0).astype(np.float32)

    narrow, wide = star_widths(np.stack([field(1.0), field(2.5)]))
    assert 1.0 < narrow < wide and wide / narrow > 1.6
    empty = np.full((1, 3, 64, 64), 0.2, np.float32)
    assert star_widths(empty)[0] == pytest.approx(WIDTH_REF_PX)


def test_pool_workers_use_the_runs_glow_cap() -> None:
    pool = PairPool(size=PairPool.CHUNK, crop_px=32, seed=7, workers=1, glow_cap=0.0)
    try:
        _, clean, _ = make_pool(PairPool.task_seed(7, 0), PairPool.CHUNK, 32, glow_cap=0.0)
        np.testing.assert_array_equal(pool.clean, clean)
    finally:
        pool.close()


def test_pool_workers_use_the_runs_mix() -> None:
    mix = Mix(spike_share=1.0, chromatic_spike_share=1.0, dense_share=0.0)
    pool = PairPool(size=PairPool.CHUNK, crop_px=32, seed=7, workers=1, mix=mix)
    try:
        orig, _, _ = make_pool(PairPool.task_seed(7, 0), PairPool.CHUNK, 32, mix=mix)
        np.testing.assert_array_equal(pool.orig, orig)
        assert not np.array_equal(pool.orig, make_pool(PairPool.task_seed(7, 0), 16, 32)[0])
    finally:
        pool.close()


def test_time_budget_stops_and_decays_the_learning_rate(tmp_path: Path) -> None:
    from starnet_core.train import build_state

    # the budget counts the whole call: file pairs, no synthetic pool to build (a loaded
    # machine took more than 1.5 s over four crops), and torch warmed up first (a
    # process's first nets took 11 s there)
    rng = np.random.default_rng(0)
    pair = (rng.uniform(0, 1, (3, 40, 40)).astype(np.float32),) * 2
    records: list[dict[str, float]] = []
    cfg = tiny_config(steps=10**9, time_limit_s=1.5, log_every=1, warmup_steps=0)
    build_state(cfg)
    state = train(cfg, tmp_path, on_log=records.append, file_pairs=[pair], synthetic=False)
    assert 1 <= state.step < 10**9
    assert load_checkpoint(tmp_path / "checkpoint.safetensors", cfg).step == state.step
    lrs = [r["lr"] for r in records]
    assert lrs[0] > lrs[-1], "the cosine decay follows the elapsed share of the budget"
    assert lr_at(10, cfg, elapsed_s=0.0) == pytest.approx(cfg.lr)
    assert lr_at(10, cfg, elapsed_s=1.5) == pytest.approx(cfg.lr_min)


def test_time_budget_covers_building_the_pool_and_the_warm_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``time_limit_s`` (--minutes) is the budget of the whole train() call: a pool that
    took 100 s of a 110 s budget leaves the loop 10 s, and the learning rate's cosine
    spans those 10 s. On a fake clock: 100 s for the pool, 1 s for each step."""
    import types

    import starnet_core.train as train_module

    clock = {"now": 0.0}
    fake_time = types.SimpleNamespace(perf_counter=lambda: clock["now"], time=time.time)
    monkeypatch.setattr(train_module, "time", fake_time)
    real_init = PairPool.__init__

    def slow_init(self: PairPool, *args: object, **kw: object) -> None:
        real_init(self, *args, **kw)  # type: ignore[arg-type]
        clock["now"] += 100.0

    real_metrics = train_module.star_metrics

    def one_second_steps(*args: object, **kw: object) -> dict[str, torch.Tensor]:
        clock["now"] += 1.0
        return real_metrics(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(PairPool, "__init__", slow_init)
    monkeypatch.setattr(train_module, "star_metrics", one_second_steps)
    records: list[dict[str, float]] = []
    cfg = tiny_config(
        steps=10**9, time_limit_s=110.0, log_every=1, warmup_steps=0, gan_start_step=10**6
    )
    state = train(cfg, tmp_path / "a", on_log=records.append)
    assert state.step == 10, "the loop gets the 10 s the pool left of the budget"
    lrs = [r["lr"] for r in records]
    assert lrs[0] == pytest.approx(cfg.lr)
    assert lrs[5] == pytest.approx((cfg.lr + cfg.lr_min) / 2), "half way through the 10 s"
    assert lr_at(5, cfg, elapsed_s=5.0, budget_s=10.0) == pytest.approx(lrs[5])
    assert lr_at(5, cfg, elapsed_s=0.0, budget_s=-1.0) == pytest.approx(cfg.lr_min)

    # the discriminator warm-up spends the budget too, and stops when it is spent
    real_d_step = train_module._discriminator_step
    d_steps = {"n": 0}

    def one_second_d_steps(*args: object) -> dict[str, torch.Tensor]:
        clock["now"] += 1.0
        d_steps["n"] += 1
        return real_d_step(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "_discriminator_step", one_second_d_steps)
    warm = dataclasses.replace(cfg, d_warmup_steps=20)
    state = train(warm, tmp_path / "b")
    assert (d_steps["n"], state.step) == (10, 0)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.safetensors", warm).step == 0


def test_resumed_file_pair_run_trains_exactly_as_the_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file-pair run stopped half way (Ctrl-C) and resumed draws the crops the
    uninterrupted run drew at each step (the sampler used to start over at step 0's on
    every start), and, the checkpoint holding everything else, ends with the same
    weights, bit for bit."""
    import starnet_core.train as train_module

    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        clean = rng.uniform(0.1, 0.3, (3, 64, 64)).astype(np.float32)
        orig = clean.copy()
        orig[:, rng.integers(0, 64, 30), rng.integers(0, 64, 30)] = 1.0
        pairs.append((orig, clean))
    seen: list[bytes] = []
    real_sample = train_module.sample_crops

    def spy(*args: object) -> tuple[np.ndarray, np.ndarray]:
        crops = real_sample(*args)  # type: ignore[arg-type]
        seen.append(crops[0].tobytes())
        return crops

    monkeypatch.setattr(train_module, "sample_crops", spy)
    cfg = tiny_config(steps=6, checkpoint_every=1000, gan_start_step=1, ema_decay=0.9)
    straight = train(cfg, tmp_path / "straight", file_pairs=pairs, synthetic=False)
    straight_crops = list(seen)
    seen.clear()
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    first = train(
        cfg, tmp_path / "resumed", file_pairs=pairs, synthetic=False, should_stop=stop_after_three
    )
    assert first.step == 3
    resumed = train(cfg, tmp_path / "resumed", file_pairs=pairs, synthetic=False)
    assert resumed.step == 6
    assert len(straight_crops) == 6 and len(set(straight_crops)) == 6
    assert seen == straight_crops
    for name in ("generator", "discriminator", "ema"):
        assert torch.equal(
            flat_params(getattr(straight, name)), flat_params(getattr(resumed, name))
        ), name


def test_unknown_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a device name"):
        train(tiny_config(device="gpu0"), tmp_path)


def _config_with_weights(tmp_path: Path, weights: str) -> Path:
    """A config file whose inference.weights is ``weights``."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"inference:\n  weights: {weights}\n")
    return cfg


def test_cli_train_checks_its_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    logs = str(tmp_path / "logs")
    assert main(["train", "--synthetic", "--logs", logs, "--workers", "-1"]) == 2
    assert "--workers must be 0 or more" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--glow-cap", "-1"]) == 2
    assert "--glow-cap must be 0 or more" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--spike-amp", "0.3", "0.1"]) == 2
    assert "--spike-amp: spike_amp must be 0 < low <= high" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--galaxy-rate", "0"]) == 2
    assert "--galaxy-rate: galaxy_rate must be a rate in (0, 20]" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--chromatic-spikes", "2"]) == 2
    assert "--chromatic-spikes: chromatic_spike_share must be a share" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--star-threshold", "-0.01"]) == 2
    assert "--star-threshold must be a number >= 0, got -0.01" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--w-over", "nan"]) == 2
    assert "--w-over must be a number >= 0, got nan" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--w-galaxy", "-1"]) == 2
    assert "--w-galaxy must be a number >= 0, got -1" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--w-rel", "nan"]) == 2
    assert "--w-rel must be a number >= 0, got nan" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--film-lr-mult", "0"]) == 2
    assert "--film-lr-mult must be a number > 0, got 0" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--w-anchor", "-1"]) == 2
    assert "--w-anchor must be a number >= 0, got -1" in capsys.readouterr().err
    for option, value, message in (
        ("--lr", "-1", "--lr must be a number > 0, got -1"),
        ("--lr", "nan", "--lr must be a number > 0, got nan"),
        ("--lr-min", "1", "--lr-min must be a number from 0 to --lr (0.0005), got 1"),
        ("--batch", "0", "--batch must be at least 1, got 0"),
        ("--crop", "16", "--crop must be at least 32, got 16"),
        ("--crop", "100", "--crop must be a multiple of 32 px"),
        ("--pool", "0", "--pool must be at least 1, got 0"),
        ("--steps", "0", "--steps must be at least 1, got 0"),
        ("--threads", "-2", "--threads must be at least 0, got -2"),
        ("--real-ratio", "1.5", "--real-ratio must be a share in [0, 1], got 1.5"),
    ):
        assert main(["train", "--synthetic", "--logs", logs, option, value]) == 2, option
        assert message in capsys.readouterr().err, option
    assert not (tmp_path / "logs").exists(), "a refused run writes nothing"
    # --lr alone below the default floor: the decay ends at a tenth of it
    from flows.cli import build_parser
    from flows.cli_train import _config

    cfg = _config(build_parser().parse_args(["train", "--synthetic", "--lr", "1e-5"]))
    assert cfg.lr == 1e-5 and cfg.lr_min == pytest.approx(1e-6)
    assert main(["train", "--synthetic", "--logs", logs, "--anchor", "a.safetensors"]) == 2
    assert "--anchor needs --w-anchor > 0" in capsys.readouterr().err
    missing = str(tmp_path / "missing.safetensors")
    assert (
        main(
            [
                "--config",
                str(_config_with_weights(tmp_path, missing)),
                "train",
                "--synthetic",
                "--logs",
                logs,
            ]
        )
        == 2
    )
    assert f"inference.weights: {missing}: weights file not found" in capsys.readouterr().err
    assert (
        main(["train", "--synthetic", "--logs", logs, "--w-anchor", "1", "--anchor", missing]) == 2
    )
    assert f"--anchor: {missing}: weights file not found" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--ema", "1"]) == 2
    assert "--ema must be a decay in [0, 1), got 1" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--d-warmup", "-5"]) == 2
    assert "--d-warmup must be 0 or more steps, got -5" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--keep-every", "300"]) == 2
    assert "--keep-every must be 0 or a multiple of 500 steps" in capsys.readouterr().err
    from flows.cli import build_parser
    from flows.cli_train import _config

    args = build_parser().parse_args(["train", "--synthetic", "--keep-every", "1000"])
    assert _config(args).keep_every == 1000
    no_gan = ["--w-gan", "0", "--w-percep", "0", "--d-warmup", "10"]
    assert main(["train", "--synthetic", "--logs", logs, *no_gan]) == 2
    assert "--d-warmup needs the adversarial terms" in capsys.readouterr().err
    assert main(["train", "--synthetic", "--logs", logs, "--scene-mix", "easy"]) == 2
    assert "--scene-mix must be one of default, hard" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "--synthetic", "--logs", logs, "--device", "cuda"]) == 2
        assert "cuda" in capsys.readouterr().err
    assert not (tmp_path / "logs").exists(), "a refused run writes nothing"


def test_cli_mix_options_reach_the_training_config() -> None:
    from flows.cli import build_parser
    from flows.cli_train import _config

    args = build_parser().parse_args(
        ["train", "--synthetic", "--spike-share", "0.5", "--spike-amp", "0.003", "0.3"]
        + ["--chromatic-spikes", "0.5", "--nucleus-share", "0.6", "--dense-share", "0.3"]
        + ["--chromatic-psf", "0.4", "--bayer-share", "0.2"]
        + ["--galaxy-share", "1", "--galaxy-rate", "4", "--group-share", "0.5"]
        + ["--star-weight", "30", "--star-threshold", "0.004", "--cast-share", "0.3"]
    )
    cfg = _config(args)
    assert (cfg.star_weight, cfg.star_threshold) == (30.0, 0.004)
    assert cfg.mix == Mix(
        dense_share=0.3,
        spike_share=0.5,
        spike_amp=(0.003, 0.3),
        chromatic_spike_share=0.5,
        nucleus_share=0.6,
        chromatic_psf_share=0.4,
        bayer_share=0.2,
        galaxy_share=1.0,
        galaxy_rate=4.0,
        group_share=0.5,
        cast_share=0.3,
    )
    assert '"chromatic_spike_share": 0.5' in cfg.to_json()  # recorded in the checkpoint
    assert _config(build_parser().parse_args(["train", "--synthetic"])).mix == Mix()
    hard = _config(build_parser().parse_args(["train", "--scene-mix", "hard"])).mix
    assert hard == MIXES["hard"]
    tweaked = ["train", "--scene-mix", "hard", "--spike-share", "0.2"]
    assert _config(build_parser().parse_args(tweaked)).mix == dataclasses.replace(
        MIXES["hard"], spike_share=0.2
    )


def test_galaxy_term_guards_the_keep_mask(tmp_path: Path) -> None:
    """--w-galaxy: the synthetic crops' galaxies and knots carry an over-removal term."""
    mix = dataclasses.replace(MIXES["default"], galaxy_share=1.0, galaxy_rate=5.0)
    records: list[dict[str, float]] = []
    weights = []
    for w in (0.0, 50.0):
        cfg = tiny_config(steps=2, log_every=2, mix=mix, w_galaxy=w, gan_start_step=100)
        state = train(cfg, tmp_path / f"w{w:g}", on_log=records.append)
        weights.append(flat_params(state.generator).detach())
    assert all("l_g_keep" in r and np.isfinite(r["l_g_keep"]) for r in records)
    assert records[0]["l_g_keep"] > 0, "an untrained net darkens some galaxy pixel"
    # same seed, same crops: only the galaxy term differs between the two runs
    assert not torch.equal(weights[0], weights[1])


def test_relative_star_error_is_the_share_of_each_star_left() -> None:
    """l_g_rel: a faint and a bright star, each half left, cost about the same; plain L1
    weighs the bright one by its flux."""
    y = torch.full((1, 1, 8, 16), 0.2)
    x = y.clone()
    x[..., 2:5, 2:5] += 0.02  # a faint star
    x[..., 2:5, 10:13] += 0.5  # a bright one
    half = y + (x - y) / 2
    faint_left, bright_left = half.clone(), half.clone()
    faint_left[..., :, 8:] = y[..., :, 8:]  # only the faint star half left
    bright_left[..., :, :8] = y[..., :, :8]  # only the bright one
    t = 0.01
    faint_rel = relative_star_error(faint_left, x, y, t).item()
    bright_rel = relative_star_error(bright_left, x, y, t).item()
    assert faint_rel == pytest.approx(9 * 0.01 / 0.03 / y.numel())
    assert bright_rel == pytest.approx(9 * 0.25 / 0.51 / y.numel())
    assert 0.6 < faint_rel / bright_rel < 0.7  # L1: 0.04
    assert (faint_left - y).abs().sum() / (bright_left - y).abs().sum() == pytest.approx(0.04)
    whole = relative_star_error(x, x, y, t).item()  # both stars left whole
    assert whole == pytest.approx(9 * (0.02 / 0.03 + 0.5 / 0.51) / y.numel())
    assert relative_star_error(y, x, y, t).item() == 0  # both gone
    # pixels below the threshold are no star: a 0.005 bump left costs nothing here
    assert relative_star_error(y + 0.005, y + 0.005, y, t).item() == 0


def test_relative_star_term_is_logged_and_trains(tmp_path: Path) -> None:
    records: list[dict[str, float]] = []
    weights = []
    for w in (0.0, 5.0):
        cfg = tiny_config(steps=2, log_every=2, w_rel=w, gan_start_step=100)
        state = train(cfg, tmp_path / f"w{w:g}", on_log=records.append)
        weights.append(flat_params(state.generator).detach())
    assert all(np.isfinite(r["l_g_rel"]) and r["l_g_rel"] > 0 for r in records)
    # same seed, same crops: only the relative term differs between the two runs
    assert not torch.equal(weights[0], weights[1])


def test_moving_average_is_kept_checkpointed_and_exported(tmp_path: Path) -> None:
    from starnet_core.checkpoint import load_any, load_generator_from_checkpoint
    from starnet_core.model import load_weights
    from starnet_core.train import export_generator, update_ema

    # the update itself: a fresh average follows fast, a long-running one slowly
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    update_ema(a, b, 0.999, step=0)  # d = min(0.999, 1/10)
    torch.testing.assert_close(a.weight, 0.1 * before + 0.9 * b.weight.detach())
    update_ema(a, b, 0.5, step=10_000)
    assert not torch.equal(a.weight, b.weight)

    state = train(tiny_config(steps=4, ema_decay=0.9, gan_start_step=100), tmp_path)
    assert state.ema is not None and state.release is state.ema
    g = flat_params(state.generator)
    e = flat_params(state.ema)
    assert not torch.equal(g, e), "the average lags the generator"
    ckpt = tmp_path / "checkpoint.safetensors"
    # checkpoints load as the average by default, the raw generator on request
    loaded, meta = load_generator_from_checkpoint(ckpt)
    assert meta["weights"] == "ema"
    torch.testing.assert_close(flat_params(loaded), e)
    raw, meta = load_generator_from_checkpoint(ckpt, ema=False)
    assert meta["weights"] == "generator"
    torch.testing.assert_close(flat_params(raw), g)
    assert "moving average" in load_any(ckpt)[1]
    # resumed with the average: it is restored, not restarted from the generator
    resumed = load_checkpoint(ckpt, tiny_config(ema_decay=0.9))
    assert resumed.ema is not None
    torch.testing.assert_close(flat_params(resumed.ema), e)
    # resumed without it: dropped; exported weights are the average when kept
    assert load_checkpoint(ckpt, tiny_config()).ema is None
    export_generator(state, tmp_path / "w.safetensors", "0.0.1", {})
    exported, _ = load_weights(tmp_path / "w.safetensors")
    torch.testing.assert_close(flat_params(exported), e)
    # a run without the average writes no ema tensors and loads its generator
    state = train(tiny_config(steps=2), tmp_path / "plain")
    assert state.ema is None
    assert (
        load_generator_from_checkpoint(tmp_path / "plain" / "checkpoint.safetensors")[1]["weights"]
        == "generator"
    )


def test_keep_every_keeps_the_generator_for_a_checkpoint_average(tmp_path: Path) -> None:
    from flows.cli import main
    from starnet_core.model import load_weights
    from starnet_core.train import kept_weights_path

    state = train(tiny_config(steps=4, checkpoint_every=2, keep_every=2), tmp_path)
    assert state.generator.training  # still in training mode after each keep
    kept = sorted(tmp_path.glob("weights-*.safetensors"))
    assert kept == [kept_weights_path(tmp_path, 2), kept_weights_path(tmp_path, 4)]
    last, info = load_weights(kept[-1])
    first_info = load_weights(kept[0])[1]
    # a version unique to each kept generator: two never clash in the model registry
    assert info.version.startswith("0.0.0-dev+") and info.version != first_info.version
    flat = [flat_params(last), flat_params(state.release)]
    torch.testing.assert_close(flat[0], flat[1])  # the last one is the run's generator
    first, _ = load_weights(kept[0])
    assert not torch.equal(flat_params(first), flat[1])
    # none without the option
    train(tiny_config(steps=4, checkpoint_every=2), tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("weights-*"))
    # and they average like any weights files
    out = tmp_path / "soup.safetensors"
    assert main(["soup", *map(str, kept), "--out", str(out)]) == 0
    soup, _ = load_weights(out)
    mean = flat_params(soup)
    torch.testing.assert_close(mean, (flat_params(first) + flat[0]) / 2)


def test_plot_draws_the_logged_terms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from PIL import Image

    from flows.cli import main

    logs = tmp_path / "logs"
    assert main(["plot", "--logs", str(logs)]) == 2
    assert "no training log found" in capsys.readouterr().err
    logs.mkdir()
    (logs / "train_log.jsonl").write_text("\n")
    assert main(["plot", "--logs", str(logs)]) == 2
    assert "the log is empty" in capsys.readouterr().err
    # a log with the over-removal and galaxy terms among the curves
    records = [
        {"step": s, "l_g_pix": 0.5 - 0.01 * s, "l_g_over": 0.002, "l_g_keep": 0.001, "bg_l1": 0.01}
        for s in range(1, 5)
    ]
    (logs / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["plot", "--logs", str(logs), "--out", str(tmp_path / "p.png")]) == 0
    with Image.open(tmp_path / "p.png") as im:
        # one panel per logged term: four terms, so the figure is four panels tall
        assert im.size[0] == 720 and im.size[1] == round(90 * 2.2 * 4)


def test_cli_fine_tune_says_when_the_adversarial_terms_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fine-tune of the packaged model starts at step 0: it says whether and when the
    GAN terms come in (the default --gan-start 16000 is past most fine-tunes)."""
    from flows.cli import main

    base = ["train", "--synthetic", "--steps", "1", "--crop", "64", "--batch", "1"]
    base += ["--pool", "2", "--threads", "1"]
    assert main([*base, "--logs", str(tmp_path / "a")]) == 0
    assert "from step 0; adversarial terms from step 16000" in capsys.readouterr().out
    off = ["--logs", str(tmp_path / "b"), "--w-gan", "0", "--w-percep", "0"]
    assert main([*base, *off]) == 0
    assert "no adversarial or perceptual terms" in capsys.readouterr().out


def test_discriminator_warm_up_trains_only_the_discriminator(tmp_path: Path) -> None:
    """--d-warmup: D learns against the frozen generator first; the generator, its
    moving average and the step count are left as they were, then training goes on."""
    from starnet_core.train import build_state

    cfg = tiny_config(steps=0, d_warmup_steps=3, ema_decay=0.9, gan_start_step=0)
    init = build_state(cfg, None).generator
    g0 = {k: v.clone() for k, v in init.state_dict().items()}
    # steps=0: nothing to do, so no warm-up either (an export-only call)
    state = train(cfg, tmp_path / "none", init=init)
    assert state.step == 0
    d_fresh = {k: v.clone() for k, v in state.discriminator.state_dict().items()}

    stops = iter([False, False, False, True])  # warm-up runs its 3 steps, then stop
    state = train(
        dataclasses.replace(cfg, steps=5),
        tmp_path / "warm",
        init=init,
        should_stop=lambda: next(stops),
    )
    assert state.step == 0, "warm-up steps are not generator steps"
    for k, v in state.generator.state_dict().items():
        assert torch.equal(v, g0[k]), f"generator changed in the warm-up: {k}"
    assert state.ema is not None
    for k, v in state.ema.state_dict().items():
        assert torch.equal(v, g0[k]), f"moving average changed in the warm-up: {k}"
    d_now = state.discriminator.state_dict()
    learnt = [k for k, v in d_now.items() if not torch.equal(v, d_fresh[k])]
    assert learnt, "the discriminator did not learn in the warm-up"
    assert state.opt_g.state == {}, "no generator update in the warm-up"

    state = train(dataclasses.replace(cfg, steps=2, d_warmup_steps=2), tmp_path / "on", init=init)
    assert state.step == 2


def test_cli_fine_tune_says_the_discriminator_warms_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    args = ["train", "--synthetic", "--steps", "1", "--crop", "64", "--batch", "1", "--pool", "2"]
    args += ["--threads", "1", "--gan-start", "0", "--d-warmup", "2", "--logs", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "adversarial terms from step 0 (--gan-start), after 2 discriminator-only steps" in out


def test_anchor_term_holds_the_reference_on_dense_crops_only(tmp_path: Path) -> None:
    """--w-anchor: on dense-field crops the fine-tune stays near the reference model's
    output; on other crops the term is zero and changes nothing."""
    torch.manual_seed(0)
    ref = StarNetUNet(TINY)
    with pytest.raises(ValueError, match="needs the reference model"):
        train(tiny_config(w_anchor=1.0), tmp_path / "none", init=copy.deepcopy(ref))

    def run(mix: Mix, w: float, name: str) -> tuple[StarNetUNet, list[dict[str, float]]]:
        records: list[dict[str, float]] = []
        cfg = tiny_config(
            steps=40,
            lr=3e-3,
            warmup_steps=1,
            mix=mix,
            w_anchor=w,
            gan_start_step=1000,
            log_every=10,
            checkpoint_every=1000,
        )
        state = train(
            cfg, tmp_path / name, init=copy.deepcopy(ref), anchor=ref, on_log=records.append
        )
        return state.generator.eval(), records

    dense = dataclasses.replace(MIXES["default"], dense_share=1.0)
    free, _ = run(dense, 0.0, "free")
    held, records = run(dense, 200.0, "held")
    assert records[0]["l_g_anchor"] > 0 and all(np.isfinite(r["l_g_anchor"]) for r in records)
    x = torch.from_numpy(make_pool(seed=99, count=4, size_px=32, mix=dense)[0])
    with torch.no_grad():
        target = ref.eval()(x)
        drift_free = (free(x) - target).abs().mean().item()
        drift_held = (held(x) - target).abs().mean().item()
    assert drift_held < 0.5 * drift_free, (drift_held, drift_free)
    # no dense crop, no anchor term: the same run as without it, step for step
    sparse = dataclasses.replace(MIXES["default"], dense_share=0.0)
    a, recs = run(sparse, 200.0, "sparse_held")
    b, _ = run(sparse, 0.0, "sparse_free")
    assert all(r["l_g_anchor"] == 0 for r in recs)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_width_conditioned_run_feeds_each_crop_its_star_width(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(model=dataclasses.replace(TINY, width_cond=True), gan_start_step=1000)
    seen: list[torch.Tensor | None] = []
    forward = StarNetUNet.forward

    def spy(
        self: StarNetUNet, x: torch.Tensor, hwhm_px: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.training:
            seen.append(hwhm_px)
        return forward(self, x, hwhm_px)

    monkeypatch.setattr(StarNetUNet, "forward", spy)
    state = train(cfg, tmp_path)
    assert len(seen) == cfg.steps
    for h in seen:
        assert h is not None and h.shape == (cfg.batch_size,) and bool((h > 0).all())
    film = [p for n, p in state.generator.named_parameters() if n.endswith(".film.weight")]
    assert film and any(bool(p.abs().sum() > 0) for p in film)  # they learn from zero
    resumed = load_checkpoint(tmp_path / "checkpoint.safetensors", cfg)
    assert resumed.generator.config.width_cond
    torch.testing.assert_close(flat_params(resumed.generator), flat_params(state.generator))


def test_film_weights_learn_at_their_own_rate_and_resume_across_layouts(tmp_path: Path) -> None:
    cond = dataclasses.replace(TINY, width_cond=True)
    cfg = tiny_config(model=cond, gan_start_step=1000, steps=3, film_lr_mult=10.0)
    state = train(cfg, tmp_path)
    groups = state.opt_g.param_groups
    film = {id(p) for n, p in state.generator.named_parameters() if n.endswith(".film.weight")}
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert {id(p) for p in groups[1]["params"]} == film
    assert not film & {id(p) for p in groups[0]["params"]}
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    # the Adam state follows each parameter, whatever groups the resuming run builds
    path = tmp_path / "checkpoint.safetensors"
    names = [n for n, _ in state.generator.named_parameters()]
    for mult in (10.0, 1.0):
        resumed = load_checkpoint(path, tiny_config(model=cond, film_lr_mult=mult))
        assert len(resumed.opt_g.param_groups) == 2
        for name, p, q in zip(
            names, state.generator.parameters(), resumed.generator.parameters(), strict=True
        ):
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(
                    resumed.opt_g.state[q][key], state.opt_g.state[p][key], msg=name
                )
    # an unconditioned generator keeps one group
    plain = train(tiny_config(steps=1), tmp_path / "plain")
    assert len(plain.opt_g.param_groups) == 1


def test_film_only_trains_the_film_weights_alone(tmp_path: Path) -> None:
    cond = dataclasses.replace(TINY, width_cond=True)
    first = train(tiny_config(model=cond, gan_start_step=1000, steps=3), tmp_path)
    before = {n: p.detach().clone() for n, p in first.generator.named_parameters()}
    # resumed with the FiLM weights alone: the Adam state of the frozen ones is skipped
    cfg = tiny_config(model=cond, gan_start_step=1000, steps=6, film_only=True)
    state = train(cfg, tmp_path)
    assert state.step == 6 and len(state.opt_g.param_groups) == 1
    for name, p in state.generator.named_parameters():
        if name.endswith(".film.weight"):
            assert not torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p, before[name], msg=name)
    with pytest.raises(ValueError, match="--film-only needs a width-conditioned generator"):
        train(tiny_config(film_only=True), tmp_path / "plain")


def test_cli_film_only_refuses_an_unconditioned_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    logs = str(tmp_path / "logs")
    args = ["train", "--synthetic", "--new", "--yes", "--logs", logs, "--film-only"]
    assert main(args) == 2
    assert "--film-only: a fresh model is not width-conditioned (add --width-cond)" in (
        capsys.readouterr().err
    )


def test_cli_film_only_resumes_a_conditioned_checkpoint_and_names_an_unconditioned_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main

    base = ["train", "--synthetic", "--threads", "1", "--pool", "4", "--crop", "64"]
    base += ["--batch", "2"]
    plain, cond = tmp_path / "plain", tmp_path / "cond"
    assert main([*base, "--new", "--yes", "--logs", str(plain), "--steps", "1"]) == 0
    assert main([*base, "--logs", str(plain), "--steps", "2", "--film-only"]) == 2
    err = capsys.readouterr().err
    assert f"{plain / 'checkpoint.safetensors'}: --film-only needs a width-conditioned" in err
    assert main([*base, "--new", "--yes", "--width-cond", "--logs", str(cond), "--steps", "1"]) == 0
    assert main([*base, "--logs", str(cond), "--steps", "2", "--film-only"]) == 0
    assert "stopped at step 2" in capsys.readouterr().out


def test_cli_width_cond_makes_the_fine_tuned_model_conditioned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.cli import main
    from starnet_core.model import StarNetUNet, load_weights, save_weights

    plain = tmp_path / "plain.safetensors"  # an unconditioned model to fine-tune
    save_weights(StarNetUNet(), plain, version="0.0.1")
    config = ["--config", str(_config_with_weights(tmp_path, str(plain)))]
    out = tmp_path / "w.safetensors"
    args = ["train", "--synthetic", "--steps", "1", "--crop", "64", "--batch", "1", "--pool", "2"]
    args += ["--threads", "1", "--width-cond", "--logs", str(tmp_path / "a"), "--export", str(out)]
    assert main([*config, *args]) == 0
    assert "conditioned on the frames' typical star width" in capsys.readouterr().out
    model, _ = load_weights(out)
    assert model.config.width_cond
    # the packaged model (0.9.0 and later) is conditioned already, and the run says so
    assert main([*args[:-4], "--logs", str(tmp_path / "b"), "--export", str(out)]) == 0
    assert "is conditioned on the star width already" in capsys.readouterr().out
    # a resumed run keeps its checkpoint's architecture, and says so
    assert main([*args[:-4], "--logs", str(tmp_path / "a"), "--steps", "2"]) == 0
    assert "whose architecture is kept" in capsys.readouterr().out


def test_worker_pool_is_collected_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With crop workers the loop collects their finished tasks at every step: collected
    only every ``refresh_every`` steps, a worker whose two queued tasks were done idled
    until then (one CPU worker filled 32 crops per 50 steps, a twentieth of its rate).
    In-process crops, which cost the loop their making, keep the interval."""
    calls: list[int] = []
    real_refresh = PairPool.refresh

    def counting(self: PairPool, count: int) -> int:
        calls.append(count)
        return real_refresh(self, count)

    monkeypatch.setattr(PairPool, "refresh", counting)
    train(tiny_config(workers=1, refresh_every=1000), tmp_path / "w")
    assert len(calls) == 6
    calls.clear()
    train(tiny_config(refresh_every=3), tmp_path / "p")
    assert len(calls) == 2
    with_workers = PairPool(size=2, crop_px=32, seed=1, workers=1)
    try:
        assert all(with_workers.refresh_due(s, 50) for s in (1, 2, 49))
    finally:
        with_workers.close()
    in_process = PairPool(size=2, crop_px=32, seed=1)
    assert [s for s in range(1, 101) if in_process.refresh_due(s, 50)] == [50, 100]


def test_a_checkpoint_that_cannot_be_written_is_an_oserror_naming_it(tmp_path: Path) -> None:
    """safetensors' own error type (a traceback from ``starnet train``, which turns OSErrors
    into one line) becomes an OSError naming the checkpoint; no temporary file stays."""
    from starnet_core.train import save_checkpoint

    cfg = tiny_config(steps=1)
    state = train(cfg, tmp_path / "run")
    (tmp_path / "afile").write_text("not a folder")
    target = tmp_path / "afile" / "checkpoint.safetensors"
    with pytest.raises(OSError) as info:
        save_checkpoint(state, cfg, target)
    assert info.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "run"]
