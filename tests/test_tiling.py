"""Tiling: exactness against untiled runs, window normalisation, batching, progress, errors;
the optional grid-pattern step after the network."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn

from starnet_core import tiling
from starnet_core.inference import TileOptions, remove_fixed_pattern, remove_stars
from starnet_core.model import Block, ModelConfig, StarNetUNet
from starnet_core.tiling import (
    _axis_plan,
    _axis_weight,
    blend_window,
    memory_format_for,
    run_tiled,
    seam_score,
    seam_stats,
    select_device,
    tile_starts,
)


class SmallNet(nn.Module):
    """Three 3x3 convs (receptive-field radius 3 px), zero padding, residual output."""

    in_channels = 3

    def __init__(self, multiple: int = 8, channels: int = 3) -> None:
        super().__init__()
        self.multiple = multiple
        self.body = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(8, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        assert h % self.multiple == 0 and w % self.multiple == 0, (h, w)
        return x - 0.1 * self.body(x)


def _net(multiple: int = 8, channels: int = 3) -> SmallNet:
    torch.manual_seed(0)
    return SmallNet(multiple, channels).eval()


def _image(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


def _untiled(net: nn.Module, image: np.ndarray, pad_px: int) -> np.ndarray:
    """The net once on the whole frame, optionally reflect-padded by pad_px."""
    padded = np.pad(image, ((0, 0), (pad_px, pad_px), (pad_px, pad_px)), mode="reflect")
    with torch.inference_mode():
        out = net(torch.from_numpy(padded)[None])[0].numpy()
    h, w = image.shape[1:]
    return out[:, pad_px : pad_px + h, pad_px : pad_px + w]


class AnySize(nn.Module):
    """SmallNet without the size assertion, for untiled references of any size."""

    def __init__(self, net: SmallNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.1 * self.net.body(x)


# Tile 32, overlap 12: dead margin 12 // 4 = 3 px = the net's receptive-field radius.
TILE = dict(tile_px=32, overlap_px=12, batch_size=3, multiple=8)


@pytest.mark.parametrize("shape", [(37, 53), (61, 100), (129, 130), (33, 31)])
def test_tiled_equals_untiled_reflect_padded_everywhere(shape: tuple[int, int]) -> None:
    net = _net()
    image = _image(3, *shape)
    tiled = run_tiled(net, image, **TILE)  # type: ignore[arg-type]
    ref = _untiled(AnySize(net), image, pad_px=12)
    assert tiled.shape == image.shape and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(37, 53), (129, 130)])
def test_tiled_equals_plain_untiled_away_from_borders(shape: tuple[int, int]) -> None:
    # The plain untiled run zero-pads at the frame border; beyond the receptive field
    # radius (3 px) both agree.
    net = _net()
    image = _image(3, *shape, seed=1)
    tiled = run_tiled(net, image, **TILE)  # type: ignore[arg-type]
    ref = _untiled(AnySize(net), image, pad_px=0)
    r = 3
    np.testing.assert_allclose(tiled[:, r:-r, r:-r], ref[:, r:-r, r:-r], atol=1e-5, rtol=0)
    assert np.abs(tiled - ref).max() > 1e-4  # and the border does differ: padding matters


def test_wide_receptive_field_is_not_exact_but_seams_stay_small() -> None:
    # Receptive-field radius 3 > dead margin 1 (overlap 6): the blend hides the seams.
    net = _net()
    image = _image(3, 70, 70, seed=2)
    tiled = run_tiled(net, image, tile_px=32, overlap_px=6, batch_size=4, multiple=8)
    err = np.abs(tiled - _untiled(AnySize(net), image, pad_px=6)).max()
    assert 1e-6 < err < 0.05


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 1, 50), (1, 40, 1), (3, 5, 7), (3, 97, 203)])
def test_identity_returns_input(shape: tuple[int, int, int]) -> None:
    image = _image(*shape, seed=3)
    out = run_tiled(lambda x: x, image, tile_px=32, overlap_px=12, batch_size=2)
    assert out.shape == image.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, atol=1e-6, rtol=0)


def test_image_smaller_than_tile() -> None:
    net = _net()
    image = _image(3, 5, 9, seed=4)
    out = run_tiled(net, image, tile_px=64, overlap_px=8, multiple=8)
    assert out.shape == (3, 5, 9)
    assert np.isfinite(out).all()


def test_batches_never_exceed_batch_size_and_tiles_are_rounded_to_multiple() -> None:
    seen: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x

    image = _image(2, 150, 90)
    out = run_tiled(fn, image, tile_px=30, overlap_px=6, batch_size=3, multiple=8)
    rows = tile_starts(150 + 2 * 6, 32, 6)
    cols = tile_starts(90 + 2 * 6, 32, 6)
    assert all(b <= 3 for b, *_ in seen)
    assert sum(b for b, *_ in seen) == len(rows) * len(cols)
    assert {s[1:] for s in seen} == {(2, 32, 32)}
    np.testing.assert_allclose(out, image, atol=1e-6, rtol=0)


def test_numpy_memory_stays_near_one_frame() -> None:
    # ~1000 tiles whose stack would be 4x the frame; allowed: output buffer + a batch.
    image = _image(1, 512, 512)
    tracemalloc.start()
    try:
        run_tiled(lambda x: x, image, tile_px=32, overlap_px=15, batch_size=4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * image.nbytes, peak


def test_progress_reports_every_batch_with_the_total() -> None:
    calls: list[tuple[int, int]] = []
    run_tiled(
        lambda x: x,
        _image(1, 100, 70),
        tile_px=32,
        overlap_px=8,
        batch_size=4,
        progress=lambda d, t: calls.append((d, t)),
    )
    total = len(tile_starts(116, 32, 8)) * len(tile_starts(86, 32, 8))
    assert {t for _, t in calls} == {total}
    assert [d for d, _ in calls] == sorted(min(total, 4 * (i + 1)) for i in range(len(calls)))
    assert calls[-1] == (total, total)


def test_output_channels_may_differ() -> None:
    out = run_tiled(
        lambda x: x.mean(dim=1, keepdim=True), _image(3, 40, 40), tile_px=32, overlap_px=4
    )
    assert out.shape == (1, 40, 40)


def test_tile_starts_cover_with_flush_end() -> None:
    assert tile_starts(10, 32, 8) == [0]
    assert tile_starts(32, 32, 8) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 24 for a, b in zip(starts[:-1], starts[1:], strict=True))
    assert starts == [0, 24, 48, 68]


def test_blend_window_shape_range_and_partition_of_unity() -> None:
    w = blend_window(64, 16)
    assert w.shape == (64, 64) and w.dtype == np.float32
    assert w.min() == 0.0 and w.max() == 1.0
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_array_equal(w, w[::-1, ::-1])
    assert (w[16:48, 16:48] == 1).all()
    assert (w[:4] == 0).all()  # dead margin 16 // 4
    profile = w[32].astype(np.float64)
    step = 64 - 16
    np.testing.assert_allclose(profile[step:] + profile[: 64 - step], 1.0, atol=1e-6)
    assert (blend_window(16, 0) == 1).all()


def test_select_device() -> None:
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="cuda:7"):
        if torch.cuda.device_count() > 7:
            pytest.skip("machine has 8 GPUs")
        select_device("cuda:7")
    with pytest.raises(ValueError, match="gpu0"):
        select_device("gpu0")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile_px": 0}, "tile_px"),
        ({"tile_px": 32.0}, "tile_px"),
        ({"tile_px": True}, "tile_px"),
        ({"overlap_px": -1}, "overlap_px"),
        ({"overlap_px": 16}, "overlap_px=16"),
        ({"batch_size": 0}, "batch_size"),
        ({"multiple": 0}, "multiple"),
    ],
)
def test_bad_parameters_raise(kwargs: dict[str, object], match: str) -> None:
    params: dict[str, object] = {"tile_px": 32, "overlap_px": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        run_tiled(lambda x: x, _image(1, 10, 10), **params)  # type: ignore[arg-type]


def test_bad_images_and_fn_results_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        run_tiled(lambda x: x, np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="float32"):
        run_tiled(lambda x: x, np.zeros((1, 10, 10), np.float64))
    with pytest.raises(ValueError, match="fn must map"):
        run_tiled(lambda x: x[..., :-1], _image(1, 10, 10), tile_px=16, overlap_px=2)


def test_seam_score() -> None:
    image = _image(3, 90, 90, seed=5)
    assert seam_score(lambda x: x, image, tile_px=32, overlap_px=12) < 1e-6
    net = _net()
    exact = seam_stats(AnySize(net), image, tile_px=32, overlap_px=12, multiple=8)
    assert exact.reference == "untiled" and exact.band_max < 1e-5

    def tile_aware(x: torch.Tensor) -> torch.Tensor:  # a fake net that sees its tile edges
        ramp = torch.linspace(0, 0.2, x.shape[-1])
        return x + ramp

    stats = seam_stats(tile_aware, image, tile_px=32, overlap_px=8, reference="shifted")
    assert stats.reference == "shifted"
    assert stats.band_max > 0.05
    assert seam_score(tile_aware, image, tile_px=32, overlap_px=8) > 0.05


def test_remove_stars_mono_and_rgb() -> None:
    net = _net()
    options = TileOptions(tile_px=32, overlap_px=12, batch_size=4, device="cpu")
    rgb = _image(3, 45, 50, seed=6)
    out = remove_stars(net, rgb, options)
    ref = np.clip(_untiled(AnySize(net), rgb, pad_px=12), 0, 1)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)

    mono = _image(1, 45, 50, seed=7)
    out_mono = remove_stars(net, mono, options)
    ref_mono = _untiled(AnySize(net), np.repeat(mono, 3, axis=0), pad_px=12).mean(axis=0)
    assert out_mono.shape == (1, 45, 50) and out_mono.dtype == np.float32
    np.testing.assert_allclose(out_mono[0], np.clip(ref_mono, 0, 1), atol=1e-5, rtol=0)


def test_the_cpu_runs_the_network_channels_last_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    net = StarNetUNet(ModelConfig(widths=(8, 16), blocks=(1, 1)))
    for m in net.modules():  # blocks at full strength, not the near-identity start
        if isinstance(m, Block):
            m.scale.data.fill_(1.0)
    net.head.weight.data.normal_(0.0, 0.1)
    image = _image(3, 45, 50, seed=9)
    options = TileOptions(tile_px=32, overlap_px=12, batch_size=4, device="cpu")
    out = remove_stars(net, image, options)
    assert net.stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not net.stem.weight.is_contiguous()

    monkeypatch.setattr(tiling, "memory_format_for", lambda device: torch.contiguous_format)
    ref = remove_stars(net, image, options)
    assert net.stem.weight.is_contiguous()
    assert np.abs(ref - image).max() > 0.05  # the network does change the frame
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    # elsewhere PyTorch's default layout (channels-last is not measured on GPUs)
    assert memory_format_for(torch.device("cuda")) == torch.contiguous_format
    assert memory_format_for(torch.device("cpu")) == torch.channels_last


def test_remove_stars_passes_upsample_and_progress() -> None:
    net = _net(multiple=16)
    image = _image(3, 40, 37, seed=8)
    calls: list[tuple[int, int]] = []
    options = TileOptions(tile_px=32, overlap_px=8, passes=3, device="cpu")
    out = remove_stars(net, image, options, progress=lambda d, t: calls.append((d, t)))
    once = remove_stars(net, image, TileOptions(tile_px=32, overlap_px=8, device="cpu"))
    twice = remove_stars(net, once, TileOptions(tile_px=32, overlap_px=8, device="cpu"))
    thrice = remove_stars(net, twice, TileOptions(tile_px=32, overlap_px=8, device="cpu"))
    np.testing.assert_allclose(out, thrice, atol=1e-6, rtol=0)
    per_pass = len(tile_starts(56, 32, 8)) * len(tile_starts(53, 32, 8))
    assert calls[-1] == (3 * per_pass, 3 * per_pass)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    up = remove_stars(
        net, image, TileOptions(tile_px=24, overlap_px=8, upsample=True, device="cpu")
    )
    assert up.shape == image.shape and up.dtype == np.float32
    assert up.min() >= 0.0 and up.max() <= 1.0
    # identity-like net (tiny residual): upsample + area-average returns close to the input
    assert np.abs(up - image).mean() < 0.1


def test_remove_stars_validates() -> None:
    net = _net()
    with pytest.raises(ValueError, match=r"C in \{1, 3\}"):
        remove_stars(net, _image(2, 10, 10))
    with pytest.raises(ValueError, match="float32"):
        remove_stars(net, np.zeros((3, 10, 10)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        remove_stars(net, _image(3, 10, 10) * 2)
    nan = _image(3, 10, 10)
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        remove_stars(net, nan)
    with pytest.raises(ValueError, match="passes"):
        TileOptions(passes=0)
    with pytest.raises(ValueError, match="overlap_px"):
        TileOptions(tile_px=64, overlap_px=32)
    bad = _net()
    bad.multiple = 0
    with pytest.raises(ValueError, match="model.multiple"):
        remove_stars(bad, _image(3, 10, 10), TileOptions(device="cpu"))


def test_every_frame_pixel_gets_positive_weight() -> None:
    # The blend divides by the summed window; it must be > 0 for every frame length.
    for tile in (8, 16, 33):
        for overlap in range(0, (tile + 1) // 2):
            for length in range(1, 3 * tile):
                for shift in (0, (tile - overlap) // 2):
                    plan = _axis_plan(length, tile, overlap, shift)
                    assert _axis_weight(plan, tile, overlap, length).min() > 0, (
                        tile,
                        overlap,
                        length,
                        shift,
                    )


@pytest.mark.parametrize("ensemble", [2, 4, 8])
def test_self_ensemble_averages_the_net_over_flips(ensemble: int) -> None:
    # each tile's flips/transposes through the net, undone and averaged, equal the same
    # done to the whole frame untiled (tiling is exact for this net: see TILE)
    net = _net()
    image = _image(3, 37, 45, seed=11)

    def flip(a: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
        if k & 4 and not inverse:
            a = a.transpose(0, 2, 1)
        a = a[:, :, ::-1] if k & 1 else a
        a = a[:, ::-1, :] if k & 2 else a
        if k & 4 and inverse:
            a = a.transpose(0, 2, 1)
        return np.ascontiguousarray(a)

    ref = np.mean(
        [
            flip(_untiled(AnySize(net), flip(image, k), pad_px=TILE["overlap_px"]), k, True)
            for k in range(ensemble)
        ],
        axis=0,
    )
    opts = {k: v for k, v in TILE.items() if k != "multiple"}
    out = remove_stars(net, image, TileOptions(**opts, ensemble=ensemble, device="cpu"))
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-5, rtol=0)
    single = remove_stars(net, image, TileOptions(**opts, device="cpu"))
    assert np.abs(out - single).max() > 1e-4  # the net is not flip-invariant: it did average
    with pytest.raises(ValueError, match="ensemble"):
        TileOptions(ensemble=3)


def _lattice(h: int, w: int, period: int, amp: float, seed: int = 5) -> np.ndarray:
    cell = np.random.default_rng(seed).uniform(-1, 1, (period, period)).astype(np.float32)
    cell = amp * (cell - cell.mean()) / np.ptp(cell)
    return np.tile(cell, (h // period + 1, w // period + 1))[:h, :w]


def _field(h: int = 128, w: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(original, starless truth): a smooth sky with grain, and 80 stars on it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    sky = 0.2 + 0.1 * np.sin(xx / 40) * np.cos(yy / 30) + 0.005 * rng.standard_normal((h, w))
    stars = np.zeros((h, w), np.float32)
    xs, ys, amps = rng.uniform(0, w, 80), rng.uniform(0, h, 80), rng.uniform(0.1, 0.7, 80)
    for x, y, a in zip(xs, ys, amps, strict=True):
        stars += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    truth = np.repeat(sky[None], 3, 0).astype(np.float32)
    return np.clip(truth + stars, 0, 1).astype(np.float32), truth


def test_fixed_pattern_is_taken_out_and_a_clean_output_kept() -> None:
    original, truth = _field()
    h, w = truth.shape[1:]
    # a network's output: the stars gone (3% of each left), a 4 px lattice of 0.004 p-p
    # in every channel
    layer = original - truth
    net_out = (truth + 0.03 * layer - _lattice(h, w, 4, 0.004)[None]).astype(np.float32)
    fixed = remove_fixed_pattern(original, net_out, 4)
    before = np.sqrt(((net_out - truth - 0.03 * layer) ** 2).mean())
    after = np.sqrt(((fixed - truth - 0.03 * layer) ** 2).mean())
    assert after < 0.2 * before, (before, after)
    # no lattice: nothing but a noise-level pattern changes (the grain is 0.005)
    clean = (truth + 0.03 * layer).astype(np.float32)
    assert np.abs(remove_fixed_pattern(original, clean, 4) - clean).max() < 5e-4
    # a frame with no output change at all (everything protected) is left as it is
    np.testing.assert_array_equal(remove_fixed_pattern(original, original, 4), original)
    with pytest.raises(ValueError, match="period_px must be an int >= 2"):
        remove_fixed_pattern(original, net_out, 1)


class LatticeNet(nn.Module):
    """Takes 10% of every pixel and adds a 4 px pattern fixed to its own input grid."""

    in_channels = 3
    multiple = 8

    def __init__(self, pattern: np.ndarray) -> None:
        super().__init__()
        self.pattern = torch.from_numpy(pattern)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return 0.9 * x - self.pattern[:h, :w]


def test_remove_stars_takes_the_networks_grid_pattern_out() -> None:
    """Every tile starts on the same 4 px phase, so the pattern the network adds per
    tile is one pattern over the frame, and lattice_px=4 takes it out (0: left)."""
    original, _ = _field(96, 136)
    pattern = _lattice(256, 256, 4, 0.006)
    net = LatticeNet(pattern).eval()
    opts = dict(tile_px=32, overlap_px=8, device="cpu")
    plain = np.clip(0.9 * original, 0, 1)
    kept = remove_stars(net, original, TileOptions(**opts))
    taken = remove_stars(net, original, TileOptions(lattice_px=4, **opts))
    assert TileOptions().lattice_px == 0  # off by default (BENCHMARKS.md, fifteenth session)
    # tiles start at -8 and step by 16: the per-tile pattern lands on one frame phase
    np.testing.assert_allclose(kept, np.clip(plain - pattern[:96, :136][None], 0, 1), atol=1e-5)
    err_kept = np.abs(kept - plain).mean()
    assert np.abs(taken - plain).mean() < 0.2 * err_kept
    with pytest.raises(ValueError, match="lattice_px must be 0"):
        TileOptions(lattice_px=1)


@pytest.mark.parametrize("upsample", [False, True])
def test_a_width_conditioned_net_gets_the_frames_star_width_on_every_tile(
    upsample: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starnet_core.classical import typical_star_hwhm
    from starnet_core.model import with_width_conditioning

    torch.manual_seed(0)
    net = with_width_conditioning(StarNetUNet(ModelConfig(widths=(8, 16), blocks=(1, 1))))
    yy, xx = np.mgrid[:96, :96]
    image = np.full((3, 96, 96), 0.1, np.float32)
    for cx, cy in np.random.default_rng(1).uniform(6, 90, (25, 2)):
        image += 0.5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 4.5).astype(np.float32)
    image = np.clip(image, 0, 1)
    seen: list[torch.Tensor] = []
    forward = StarNetUNet.forward

    def spy(
        self: StarNetUNet, x: torch.Tensor, hwhm_px: torch.Tensor | None = None
    ) -> torch.Tensor:
        assert hwhm_px is not None
        seen.append(hwhm_px)
        return forward(self, x, hwhm_px)

    monkeypatch.setattr(StarNetUNet, "forward", spy)
    options = TileOptions(tile_px=32, overlap_px=8, batch_size=3, upsample=upsample, device="cpu")
    out = remove_stars(net, image, options)
    assert out.shape == image.shape and len(seen) > 1
    measured = typical_star_hwhm(image)
    assert measured is not None
    want = measured * (2 if upsample else 1)  # the network sees the upsampled stars
    for h in seen:
        assert h.shape[0] <= 3 and torch.allclose(h, torch.full_like(h, want))


def test_network_fn_is_the_per_tile_function_remove_stars_runs() -> None:
    from starnet_core.inference import frame_star_hwhm, network_fn
    from starnet_core.model import with_width_conditioning

    torch.manual_seed(3)
    plain = StarNetUNet(ModelConfig(widths=(8, 16), blocks=(1, 1))).eval()
    image = _image(3, 64, 64, seed=4)
    x = torch.from_numpy(image[None, :, :32, :32].copy())
    assert frame_star_hwhm(plain, image) is None
    with torch.no_grad():
        assert torch.equal(network_fn(plain, image)(x), plain(x))
    cond = with_width_conditioning(plain).eval()
    with torch.no_grad():
        for name, p in cond.named_parameters():
            if name.endswith(".film.weight"):
                p.normal_(std=0.05)
        hwhm = frame_star_hwhm(cond, image)
        assert hwhm is not None
        torch.testing.assert_close(network_fn(cond, image)(x), cond(x, torch.tensor([hwhm])))
    assert frame_star_hwhm(cond, image, upsample=True) == 2 * hwhm
    # tools that tile it themselves can run it
    assert seam_score(network_fn(cond, image), image, tile_px=32, overlap_px=8) >= 0


# --------------------------------------------------------------------------- tile size


def _recording(net: nn.Module) -> tuple[list[tuple[int, ...]], tiling.TileFn]:
    seen: list[tuple[int, ...]] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return net(x)

    return seen, fn


@pytest.mark.parametrize("tile_px", [256, 1000, tiling.MAX_TILE_PX])
def test_a_frame_smaller_than_the_tile_gets_one_tile_that_just_holds_it(tile_px: int) -> None:
    """A 20 x 30 frame used to be padded up to a whole tile_px tile (at 2048 px the
    network ran on 4 M pixels for 600): time and memory followed the tile, not the frame.
    It gets one tile of its longer side plus the overlap on both sides, rounded up to the
    multiple; the result is what that tile size gave, whatever tile_px."""
    net = _net()
    image = _image(3, 20, 30, seed=6)
    seen, fn = _recording(net)
    out = run_tiled(fn, image, tile_px=tile_px, overlap_px=8, multiple=8)
    assert seen == [(1, 3, 48, 48)]  # ceil((30 + 2 * 8) / 8) * 8
    assert tiling.effective_tile(tile_px, 8, 8, (20, 30)) == 48
    np.testing.assert_array_equal(out, run_tiled(net, image, tile_px=48, overlap_px=8, multiple=8))
    # a strip's longer side decides: it still needs more than one tile along it
    assert tiling.effective_tile(tile_px, 8, 8, (10, 1500)) == min(tile_px, 1520)


@pytest.mark.parametrize(
    ("shape", "tile_px", "overlap_px", "multiple"),
    [((3, 37, 53), 32, 12, 8), ((3, 40, 100), 60, 10, 8), ((1, 200, 7), 64, 8, 1)],
)
def test_frames_needing_more_than_one_tile_are_tiled_as_before(
    shape: tuple[int, int, int], tile_px: int, overlap_px: int, multiple: int
) -> None:
    """Where the frame needs more than one tile the clamp changes nothing, bit for bit:
    the tiles are tile_px rounded up to the multiple, as they always were."""
    net = _net(multiple=multiple, channels=shape[0])
    image = _image(*shape, seed=7)
    tile = -(-tile_px // multiple) * multiple
    assert tiling.effective_tile(tile_px, overlap_px, multiple, shape[1:]) == tile
    before = tiling._tiled(
        net, image, tile, overlap_px, 2, torch.device("cpu"), mixed_precision=False, progress=None
    )
    after = run_tiled(
        net, image, tile_px=tile_px, overlap_px=overlap_px, batch_size=2, multiple=multiple
    )
    np.testing.assert_array_equal(after, before)


def test_seam_stats_tiles_a_small_frame_as_run_tiled_does() -> None:
    net = _net()
    image = _image(3, 20, 30, seed=8)
    seen, fn = _recording(AnySize(net))
    stats = seam_stats(fn, image, tile_px=2048, overlap_px=8, multiple=8, reference="untiled")
    assert seen[0] == (1, 3, 48, 48)  # the tiled run (then the untiled reference)
    assert stats.band_max == 0.0  # one tile: no tile borders to compare


@pytest.mark.parametrize("call", ["run_tiled", "seam_stats"])
def test_absurd_tile_sizes_are_refused_before_anything_runs(call: str) -> None:
    """--tile 51200 would have stacked a (4, 3, 51200, 51200) batch (126 GB)."""
    seen, fn = _recording(_net())
    run = run_tiled if call == "run_tiled" else seam_stats
    with pytest.raises(ValueError, match=rf"tile_px must be <= {tiling.MAX_TILE_PX} px, got"):
        run(fn, _image(3, 20, 30), tile_px=tiling.MAX_TILE_PX + 1, overlap_px=8)  # type: ignore[operator]
    assert seen == []


def test_the_log_names_the_tile_size_used(caplog: pytest.LogCaptureFixture) -> None:
    """--tile 5 runs 8 px tiles on a net whose multiple is 8 (32 for the packaged model);
    the log used to say 'tile 5 px'. A frame that fits in one tile says that too."""
    net = _net()
    image = _image(3, 40, 40, seed=9)
    with caplog.at_level("INFO", logger="starnet_core.inference"):
        remove_stars(net, image, TileOptions(tile_px=5, overlap_px=2, device="cpu"))
        remove_stars(net, image, TileOptions(tile_px=1024, overlap_px=8, device="cpu"))
        remove_stars(net, image, TileOptions(tile_px=32, overlap_px=8, device="cpu"))
    lines = [r.getMessage() for r in caplog.records if "removing stars" in r.getMessage()]
    assert len(lines) == 3
    assert "tile 8 px (tile_px 5 rounded up to a multiple of 8 px)" in lines[0]
    assert "tile 56 px (one tile holds the frame; tile_px 1024)" in lines[1]
    assert ", tile 32 px, overlap 8 px" in lines[2]
