"""The finishing steps leave alone what the network kept: a galaxy's nucleus in a linear
RGB frame is as white as a burnt-out star after the auto-stretch (every channel >= the
sky-colour step's clip level), but it is no star, and its colour must come back as it
went in (the sky-colour step used to give it the nearest sky's chroma: R, G, B flux over
the nucleus x1.08, 0.97, 0.92 and that difference in the star layer)."""

from __future__ import annotations

import numpy as np
import torch

from starnet_core.options import SkyColourOptions, TileOptions
from starnet_core.pipeline import process_array


class Identity(torch.nn.Module):
    """A 'network' that keeps everything."""

    multiple = 32
    in_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _galaxy_frame(size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """(linear frame in ADU, nucleus mask): an orange galaxy core on a bluish sky."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    c = size // 2
    blob = np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * 15.0**2))
    colour = np.array([1.0, 0.55, 0.35])[:, None, None]
    sky = np.array([1000, 1100, 1300])[:, None, None]
    noise = 30 * rng.standard_normal((3, size, size))
    return (sky + 20000 * colour * blob + noise).astype(np.float32), blob > 0.5


def test_a_kept_galaxy_core_keeps_its_colour_through_the_finishing_steps() -> None:
    image, nucleus = _galaxy_frame()
    tiles = TileOptions(tile_px=128, overlap_px=16, device="cpu")
    p = process_array(Identity(), image, is_linear=True, tiles=tiles)
    # the nucleus is clipped white after the stretch: the case the sky colour step is for
    clipped = (p.stretched >= SkyColourOptions().clip_level).all(0)
    assert (clipped & nucleus).sum() > 100
    for c in range(3):
        flux = p.starless[c][nucleus].sum() / image[c][nucleus].sum()
        assert abs(flux - 1.0) < 1e-3, (c, flux)
    assert np.abs(p.starless - image).max() < 1.0  # ADU, of a 20000 ADU nucleus
    assert p.stars.max() < 1.0
