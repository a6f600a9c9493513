"""One frame through :func:`process_array`, for the review of single-image star removal:
a flat channel keeps the other channels' sky on the stretch target, and a frame smaller
than the tile costs one tile of its own size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from starnet_core.options import (
    CoreFillOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
    TileOptions,
)
from starnet_core.pipeline import FrameProducts, process_array


class Halve(torch.nn.Module):
    """A stand-in 'model' with a known answer: starless = x / 2; records its input shapes."""

    multiple = 4
    in_channels = 3

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return x / 2


def _process(model: Halve, image: np.ndarray, tiles: TileOptions) -> FrameProducts:
    """Every step after the network off, so the starless image is the network's answer."""
    return process_array(
        model,
        image,
        is_linear=True,
        tiles=tiles,
        protect=ProtectOptions(enabled=False),
        sky_colour=SkyColourOptions(enabled=False),
        core_fill=CoreFillOptions(enabled=False),
        spikes=SpikeOptions(enabled=False),
        remnants=RemnantOptions(enabled=False),
    )


def _field(seed: int = 0) -> np.ndarray:
    """A linear RGB frame: sky 1000 ADU + noise + a few stars, in every channel."""
    rng = np.random.default_rng(seed)
    img = 1000 + rng.normal(0, 10, (3, 60, 72))
    yy, xx = np.mgrid[0:60, 0:72]
    for _ in range(10):
        x0, y0, amp = rng.uniform(0, 72), rng.uniform(0, 60), rng.uniform(500, 20000)
        img += amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    return img.astype(np.float32)


@pytest.mark.parametrize("flat_adu", [500.0, 0.0])
def test_a_flat_channel_leaves_the_others_sky_on_target_and_stays_flat(flat_adu: float) -> None:
    """Blue 500 ADU everywhere used to stretch red and green's sky to 0 (the network saw
    them black) and changed the blue channel by ~30 ADU; an all-zero channel pulled their
    sky up to 0.42. The stretch is linked over the real channels only now."""
    image = _field()
    image[2] = flat_adu
    p = _process(Halve(), image, TileOptions(device="cpu"))
    for c in range(2):
        assert abs(float(np.median(p.stretched[c])) - 0.25) < 0.03
    assert np.all(p.stretched[2] == 0.0)
    np.testing.assert_allclose(p.starless[2], flat_adu, rtol=0, atol=1e-3)


def test_a_frame_smaller_than_the_tile_runs_one_tile_of_its_own_size() -> None:
    """A 60 x 72 frame at tile_px 2048 ran the network on a 2048 x 2048 tile."""
    model = Halve()
    small = _process(model, _field(1), TileOptions(tile_px=2048, overlap_px=64, device="cpu"))
    assert model.seen == [(1, 3, 200, 200)]  # 72 + 2 * 64 = 200, a multiple of 4
    again = _process(Halve(), _field(1), TileOptions(tile_px=200, overlap_px=64, device="cpu"))
    np.testing.assert_array_equal(small.starless, again.starless)
