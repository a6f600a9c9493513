"""Stars too large for the network, taken at half resolution (``--large-stars``).

The network sees stars of the sizes it was trained on. A bright star much larger than
those (a saturated plate star with a halo tens of pixels wide, M67's brightest on the
POSS plate) it takes only in part: it removes the halo and the spikes and leaves the
core as a soft white blob. The same frame at half resolution shows that star at half
the size, and there the network takes it whole: the trick users of StarNet do by hand
(shrink the frame, remove the stars, take the big ones from that result).

:func:`remove_large_stars` runs the network once more on the frame at half
resolution (a quarter of the pixels), brought back to full size, and
:func:`take_large_stars` uses it only where the full-resolution result kept a large
bright blob the half-resolution one took (:class:`~starnet_core.options.LargeStarOptions`):

1. ``d``: the full-resolution starless less the half-resolution one, smoothed
   (Gaussian, 1 px), mean over channels; the candidates are its connected regions above
   ``signal_sigmas`` times the frame's pixel noise,
2. of at least ``min_area_px`` pixels, holding a near-white pixel of the input (any
   channel ``>= core_level``: a bright star's core),
3. around which the full-resolution network did take a star: the median of its star
   layer on a ring 3-6 px outside the region is at least ``ring_sigmas`` times the pixel
   noise (the halo and spikes it took). A galaxy it kept alone has nothing taken around
   it, so it stays.

Inside the chosen regions (grown by 2 px, feathered) ``d`` is taken away; so that a
half-resolution fill that comes out darker than the sky does not dig a hole, the result
is not let below the sky interpolated from around the region grown by ``grow_px``
(push-pull, as the burnt-star fill). Measured in BENCHMARKS.md ("Twenty-fifth
session"): better on the real pairs and on big plate stars, but the half-resolution
network takes some galaxies in dense star fields that the full-resolution one keeps
(their surroundings are all stars, so the ring test passes), so it is off by default.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from scipy import ndimage

from starnet_core.inference import remove_stars
from starnet_core.inpaint import pixel_noise, push_pull
from starnet_core.options import LargeStarOptions, TileOptions

__all__ = ["half_size", "remove_large_stars", "take_large_stars", "to_full_size"]

_SMOOTH_PX = 1.0  # d is smoothed by this Gaussian sigma (the remnant is smooth; grain is not)
_DILATE_PX = 2  # chosen regions grown by this before feathering
_FEATHER_PX = 1.5  # the weight's edge: Gaussian sigma, then scaled by 1.5 and clipped
_RING_PX = (3, 6)  # the ring the star layer is read on, px outside the region
_MIN_SIDE_PX = 64  # frames with a shorter side are too small for a half-resolution pass


def half_size(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` -> ``(C, ceil(H/2), ceil(W/2)) float32``: 2 x 2 area means (an odd
    last row or column repeated)."""
    c, h, w = image.shape
    a = np.pad(image, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge").astype(np.float32)
    return (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2]) / 4


def to_full_size(half: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """:func:`half_size`'s output back to ``shape`` (bilinear, pixel centres aligned as
    the 2 x 2 means put them): ``(C, H, W) float32``."""
    t = torch.from_numpy(np.ascontiguousarray(half, dtype=np.float32))[None]
    up = torch.nn.functional.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
    return up[0, :, : shape[0], : shape[1]].numpy().copy()


def take_large_stars(
    image: np.ndarray,
    starless: np.ndarray,
    half_starless: np.ndarray,
    options: LargeStarOptions,
) -> tuple[np.ndarray, int]:
    """``starless`` without the large stars the network left as blobs, and how many.

    ``image``: the stretched frame, ``starless``: the network's output for it,
    ``half_starless``: its output for :func:`half_size` of the frame brought back by
    :func:`to_full_size`; all ``(C, H, W)`` float32 in [0, 1]. The method is in the
    module docstring. Returns ``starless`` itself when no region qualifies.
    """
    if not (image.shape == starless.shape == half_starless.shape):
        raise ValueError(
            f"image, starless and half_starless must have one shape, got {image.shape}, "
            f"{starless.shape} and {half_starless.shape}"
        )
    d = np.stack(
        [
            ndimage.gaussian_filter((s - h).astype(np.float32), _SMOOTH_PX)
            for s, h in zip(starless, half_starless, strict=True)
        ]
    )
    noise = max(pixel_noise(channel) for channel in image)
    if noise <= 0.0:
        return starless, 0
    labels, n = ndimage.label(d.mean(axis=0) > options.signal_sigmas * noise)
    if n == 0:
        return starless, 0
    ids = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones(labels.shape, np.float32), labels, ids)
    core = ndimage.maximum(image.max(axis=0), labels, ids)
    taken = (image - starless).mean(axis=0)
    chosen = np.zeros(labels.shape, bool)
    count = 0
    boxes = ndimage.find_objects(labels)
    for k in np.nonzero((area >= options.min_area_px) & (core >= options.core_level))[0]:
        box = boxes[k]
        pad = _RING_PX[1] + 1
        ys = slice(max(box[0].start - pad, 0), box[0].stop + pad)
        xs = slice(max(box[1].start - pad, 0), box[1].stop + pad)
        region = labels[ys, xs] == k + 1
        outer = ndimage.binary_dilation(region, iterations=_RING_PX[1])
        ring = outer & ~ndimage.binary_dilation(region, iterations=_RING_PX[0] - 1)
        if ring.any() and np.median(taken[ys, xs][ring]) >= options.ring_sigmas * noise:
            chosen[ys, xs] |= region
            count += 1
    if not count:
        return starless, 0
    weight = ndimage.binary_dilation(chosen, iterations=_DILATE_PX).astype(np.float32)
    weight = np.clip(ndimage.gaussian_filter(weight, _FEATHER_PX) * 1.5, 0.0, 1.0)
    out = starless - weight[None] * np.maximum(d, 0.0)
    hole = ndimage.binary_dilation(chosen, iterations=options.grow_px)
    if not hole.all():
        sky = push_pull(starless.astype(np.float32), ~hole)
        floor = np.minimum(sky, starless)
        out = np.where(hole[None], np.maximum(out, floor), out)
    return np.clip(out, 0.0, 1.0).astype(np.float32), count


def remove_large_stars(
    model: torch.nn.Module,
    image: np.ndarray,
    starless: np.ndarray,
    tiles: TileOptions,
    options: LargeStarOptions,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """:func:`take_large_stars` with the network's half-resolution output for ``image``
    (one pass, same tiles, ensemble and device as ``tiles``; no upsampling, no grid
    pattern step; ``progress`` as :func:`remove_stars` takes it). ``starless`` unchanged,
    and 0, when ``options.enabled`` is False or the frame is too small (a side under
    64 px)."""
    if not options.enabled or min(image.shape[1:]) < _MIN_SIDE_PX:
        return starless, 0
    half_tiles = dataclasses.replace(tiles, passes=1, upsample=False, lattice_px=0)
    half = remove_stars(model, half_size(image), half_tiles, progress=progress)
    return take_large_stars(image, starless, to_full_size(half, image.shape[1:]), options)
