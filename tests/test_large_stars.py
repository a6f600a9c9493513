"""Large stars taken at half resolution (``--large-stars``, ``large_stars`` in config)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits

from flows.cli import main
from flows.frame import frame_params
from flows.settings import Settings
from starnet_core.large_stars import (
    half_size,
    remove_large_stars,
    take_large_stars,
    to_full_size,
)
from starnet_core.model import ModelConfig, StarNetUNet, save_weights
from starnet_core.options import LargeStarOptions, TileOptions
from starnet_core.pipeline import process_array

ON = LargeStarOptions(enabled=True)
SKY, NOISE = 0.2, 0.01


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 160 px frame: sky and noise, a big star at (60, 60) (a white core of radius 7 and
    a wide halo) and a bright galaxy at (110, 120) (no halo). What a network does to it
    at full resolution: the star's halo taken, its core left as a soft blob, the galaxy
    kept; at half resolution: both taken. Returns (image, starless, half_starless)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:160, :160].astype(np.float32)
    sky = SKY + rng.normal(0, NOISE, (160, 160)).astype(np.float32)
    r_star = np.hypot(yy - 60, xx - 60)
    core = np.clip(8.0 - r_star, 0, 1)  # a disc of radius 7, soft edge
    halo = 0.5 * np.exp(-(r_star**2) / (2 * 9.0**2))
    galaxy = 0.75 * np.exp(-(np.hypot(yy - 110, (xx - 120) * 0.7) ** 2) / (2 * 4.0**2))
    image = np.clip(sky + np.maximum(core * 0.8, halo) + galaxy, 0, 1)
    blob = 0.7 * np.exp(-(r_star**2) / (2 * 4.0**2))  # what the full-res net left
    starless = np.clip(sky + blob + galaxy, 0, 1)
    half = np.full_like(sky, SKY)
    return tuple(np.repeat(a[None], 3, 0).astype(np.float32) for a in (image, starless, half))


def test_a_big_star_left_as_a_blob_is_taken_and_a_galaxy_kept_whole() -> None:
    image, starless, half = _scene()
    out, taken = take_large_stars(image, starless, half, ON)
    assert taken == 1
    star = np.hypot(*np.mgrid[-60:100, -60:100]) <= 6
    assert starless[0][star].mean() > SKY + 0.3  # the blob was there
    assert abs(float(out[0][star].mean()) - SKY) < 3 * NOISE  # and is gone, to the sky
    galaxy = (slice(100, 121), slice(105, 136))
    np.testing.assert_array_equal(out[:, galaxy[0], galaxy[1]], starless[:, galaxy[0], galaxy[1]])
    far = (slice(0, 20), slice(120, 160))
    np.testing.assert_array_equal(out[:, far[0], far[1]], starless[:, far[0], far[1]])


def test_a_half_resolution_fill_darker_than_the_sky_digs_no_hole() -> None:
    image, starless, half = _scene()
    dark = np.hypot(*np.mgrid[-60:100, -60:100]) <= 11
    half[:, dark] = 0.05  # the half-res net over-subtracted the halo
    out, taken = take_large_stars(image, starless, half, ON)
    assert taken == 1
    star = np.hypot(*np.mgrid[-60:100, -60:100]) <= 10
    assert float(out[0][star].mean()) > SKY - 3 * NOISE


def test_nothing_qualifies_without_a_halo_taken_or_a_bright_core() -> None:
    image, starless, half = _scene()
    kept_all = image.copy()  # the full-res net took nothing around the blob: a galaxy
    out, taken = take_large_stars(image, kept_all, half, ON)
    assert taken == 0 and out is kept_all
    dim = LargeStarOptions(enabled=True, core_level=1.0)  # no input pixel that bright
    out, taken = take_large_stars(np.minimum(image, 0.99), starless, half, dim)
    assert taken == 0 and out is starless


def test_shapes_must_match() -> None:
    image, starless, half = _scene()
    with pytest.raises(ValueError, match="one shape"):
        take_large_stars(image, starless, half[:, :-1], ON)


def test_half_size_and_back() -> None:
    a = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    h = half_size(a)
    assert h.shape == (2, 3, 4)
    assert h[0, 0, 0] == pytest.approx((0 + 1 + 7 + 8) / 4)
    assert h[0, 2, 3] == a[0, 4, 6]  # the odd last row and column repeated
    flat = np.full((1, 9, 11), 0.3, np.float32)
    back = to_full_size(half_size(flat), (9, 11))
    assert back.shape == (1, 9, 11) and np.allclose(back, 0.3)


class Half(torch.nn.Module):
    """A stand-in network: at full resolution it keeps everything (starless = input), at
    half resolution (frames under 100 px here) it returns flat sky."""

    multiple = 4
    in_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.shape[-1] > 120 else torch.full_like(x, SKY)


def test_remove_large_stars_runs_the_network_at_half_resolution_only_when_enabled() -> None:
    image, starless, _ = _scene()
    tiles = TileOptions(tile_px=256, overlap_px=16)
    out, taken = remove_large_stars(Half(), image, starless, tiles, LargeStarOptions())
    assert taken == 0 and out is starless  # off by default
    out, taken = remove_large_stars(Half(), image, starless, tiles, ON)
    assert taken == 1 and not np.array_equal(out, starless)
    small = image[:, :60, :60]
    out, taken = remove_large_stars(Half(), small, small, tiles, ON)
    assert taken == 0 and out is small  # too small for a half-resolution pass


def test_process_array_reports_how_many_it_took() -> None:
    image, _, _ = _scene()
    products = process_array(
        Half(),
        image,
        is_linear=False,
        tiles=TileOptions(tile_px=256, overlap_px=16),
        large_stars=ON,
    )
    assert "large_stars_taken" in products.figures
    off = process_array(
        Half(), image, is_linear=False, tiles=TileOptions(tile_px=256, overlap_px=16)
    )
    assert "large_stars_taken" not in off.figures


def test_options_refuse_bad_values() -> None:
    for kwargs, match in (
        ({"enabled": 1}, "enabled"),
        ({"min_area_px": 0}, "min_area_px"),
        ({"core_level": 1.5}, "core_level"),
        ({"grow_px": -1}, "grow_px"),
        ({"ring_sigmas": -1.0}, "ring_sigmas"),
    ):
        with pytest.raises(ValueError, match=match):
            LargeStarOptions(**kwargs)


def test_the_run_identity_holds_the_section_only_when_enabled() -> None:
    settings = Settings()
    assert "large_stars" not in frame_params(settings)  # runs recorded before keep theirs
    settings.large_stars.enabled = True
    assert frame_params(settings)["large_stars"]["enabled"] is True


def test_transform_large_stars_switch_reaches_the_pipeline_and_provenance(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("STARNET_DATA_DIR", str(tmp_path / "data"))
    weights = tmp_path / "tiny.safetensors"
    torch.manual_seed(0)
    save_weights(StarNetUNet(ModelConfig(widths=(8, 16), blocks=(1, 1))), weights, version="0.0.1")
    image, _, _ = _scene()
    src = tmp_path / "m67.fits"
    fits.PrimaryHDU(image[0] * 5000 + 100).writeto(src)
    args = ("transform", str(src), "--weights", str(weights), "--quiet")
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--out", str(tmp_path / "large"), "--large-stars"]) == 0
    capsys.readouterr()
    params = []
    for kind in ("plain", "large"):
        assert main(["history", str(tmp_path / kind / "m67_starless.fits"), "--json"]) == 0
        params.append(json.loads(capsys.readouterr().out)["produced_by"]["params"])
    assert "large_stars" not in params[0]
    assert params[1]["large_stars"] == {**vars(Settings().large_stars), "enabled": True}


def test_one_progress_count_covers_both_passes() -> None:
    """The bar does not sit at its end during the half-resolution pass: that pass counts
    as a quarter more tiles, and the count ends once, at its total."""
    image, _, _ = _scene()
    tiles = TileOptions(tile_px=64, overlap_px=8)
    for frame in (image, image[:, :60, :60]):  # with the half pass, and too small for it
        calls: list[tuple[int, int]] = []
        process_array(
            Half(), frame, is_linear=False, tiles=tiles, large_stars=ON,
            progress=lambda d, t, calls=calls: calls.append((d, t)),
        )  # fmt: skip
        done = [d for d, _ in calls]
        totals = {t for _, t in calls}
        assert len(totals) == 1 and done == sorted(done) and calls[-1][0] == calls[-1][1]
        assert [d for d, t in calls].count(calls[-1][1]) == 1  # ended once
        plain: list[tuple[int, int]] = []
        process_array(
            Half(), frame, is_linear=False, tiles=tiles,
            progress=lambda d, t, plain=plain: plain.append((d, t)),
        )  # fmt: skip
        n = plain[-1][1]  # the full pass's tiles
        assert calls[-1][1] == n + -(-n // 4)
        after = [d for d, _ in calls[calls.index((n, n + -(-n // 4))) + 1 :]]
        assert after and all(d > n for d in after)  # then the half pass (or its end)
