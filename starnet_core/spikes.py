"""Diffraction spikes the network leaves, found and taken out along each star's arms.

A telescope's spider (the vanes holding its secondary mirror) gives every star of a
frame the same cross of diffraction spikes: two thin lines through the star at one
angle and at that angle plus 90 degrees, the same on both sides of the star. Model
0.5.0 takes the stars' cores and halos but leaves much of their spikes (on real_1, a
nebula crossed by the spikes of many stars, it was 2.6 dB behind the classical
baseline). This step uses the geometry the network does not know:

1. **The frame's spike angle** (:func:`find_spike_angle`). Around the brightest stars
   of the star layer (``original - starless``), the input's luminance is sampled on
   rays every degree, from just outside each star's core out to ``ray_px`` further.
   Per radius the median over angles is taken off (the sky and the halo). Per star
   the angular profile is high-passed (a 15 degree circular median off: a neighbour
   or a gradient is broad, a spike a degree or two wide) and divided by its robust
   spread, or by more where that would make its peak exceed 20 (one bright star does
   not outweigh the rest; a clip would flatten its peak and bias the angle). The
   profiles are summed over the stars and folded onto 0-90 degrees (both arms of a
   cross). The angle is the fold's peak (refined to a fraction of a degree); its
   ``score`` is the peak's height in robust sigmas of the fold. Below ``min_score``
   the frame has no spikes and nothing is changed.
2. **Line excess** of the starless image along each of the two directions, per
   channel: the channel minus the median of six samples 2, 3 and 4 px away across
   the line, averaged over 9 px along the line. A pixel is a spike candidate where,
   in some channel (a chromatic arm breaks into coloured segments), that excess is
   above ``detect_sigma`` times its robust spread over the frame and at least
   ``line_ratio`` times the excess along the other direction (a blob, a galaxy's
   core, answers both directions alike; a line only its own).
3. **Arms**: from each star of the star layer (component above ``star_threshold``)
   the candidates are followed along the direction on both sides (gaps of
   ``gap_px`` bridged; beyond the frame's edge a side counts as going on). An arm is
   taken as long as the shorter side, since a spike is symmetric and a filament or a
   galaxy that happens to lie on one side of a star is not; a star whose arms reach
   less than ``min_arm_px`` beyond its core radius has no spike here.
4. On the arms' candidate pixels (grown by one pixel), each channel of the starless
   image is lowered to its own across-line median: ``min(starless, median)``, so only
   light standing above the sky beside the line is taken.

Arrays: ``(C, H, W) float32`` stretched to ``[0, 1]``; results the same shape.
Pixels outside the arms are returned unchanged; a frame without spikes comes back as
it was.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from starnet_core.options import SpikeOptions

__all__ = ["SpikeAngle", "SpikeOptions", "find_spike_angle", "remove_spikes", "spike_arms"]

_HIGH_PASS_DEG = 15  # circular median taken off each star's angular profile
_ACROSS_PX = (2, 3, 4)  # the sky beside a line: this far on both sides
_ALONG_PX = 4  # the line excess is averaged over +-this along the line
_MAX_SIGMA = 20.0  # one star's profile peaks at most this many of its sigmas
_MIN_INSIDE = 0.75  # a star whose rays leave the frame more than this is skipped


@dataclass(frozen=True)
class SpikeAngle:
    """The frame's spike directions: ``angle_deg`` and ``angle_deg + 90`` (``angle_deg``
    in [0, 90), counter-clockwise from the +x axis with y pointing down the rows);
    ``score`` in robust sigmas (0 when no star could be measured); ``stars`` measured."""

    angle_deg: float
    score: float
    stars: int


def _check(original: np.ndarray, starless: np.ndarray) -> None:
    if original.ndim != 3 or original.shape != starless.shape:
        raise ValueError(
            f"original and starless must be (C, H, W) of one shape, "
            f"got {original.shape} and {starless.shape}"
        )


def _star_components(
    original: np.ndarray, starless: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stars of the star layer (luminance above ``threshold``): the labelled mask and,
    per star, centroid y, x (weighted by the layer), radius of a disc of its area
    and peak."""
    layer = (original - starless).mean(axis=0, dtype=np.float32)
    mask = layer > threshold
    labels, n = ndimage.label(mask)
    if n == 0:
        empty = np.zeros(0)
        return mask, empty, empty, empty, empty
    index = np.arange(1, n + 1)
    cy, cx = np.asarray(ndimage.center_of_mass(layer, labels, index), float).reshape(n, 2).T
    radius = np.sqrt(np.bincount(labels.ravel(), minlength=n + 1)[1:] / np.pi)
    peak = np.asarray(ndimage.maximum(layer, labels, index), float)
    return mask, cy, cx, radius, peak


def find_spike_angle(
    original: np.ndarray, starless: np.ndarray, options: SpikeOptions
) -> SpikeAngle:
    """The frame's spike angle and how clearly the brightest stars show it (step 1 of
    the module docstring). ``starless`` is the network's (finished) output; only its
    star layer is used, to find the stars."""
    _check(original, starless)
    _, cy, cx, radius, peak = _star_components(original, starless, options.star_threshold)
    if cy.size == 0:
        return SpikeAngle(0.0, 0.0, 0)
    lum = original.mean(axis=0, dtype=np.float32)
    H, W = lum.shape
    theta = np.deg2rad(np.arange(360.0))
    acc = np.zeros(180)
    used = 0
    for j in np.argsort(-(peak * radius**2))[: options.max_stars]:
        r = np.arange(options.ray_px, dtype=float) + radius[j] + 3.0
        yy = cy[j] + np.outer(np.sin(theta), r)
        xx = cx[j] + np.outer(np.cos(theta), r)
        inside = (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
        if inside.mean() < _MIN_INSIDE:
            continue
        v = ndimage.map_coordinates(lum, [yy, xx], order=1, mode="nearest")
        v = np.where(inside, v, np.nan)
        with warnings.catch_warnings():  # columns or rows wholly outside the frame
            warnings.simplefilter("ignore", RuntimeWarning)
            v = v - np.nanmedian(v, axis=0, keepdims=True)
            ray = np.nan_to_num(np.nanmean(v, axis=1))
        profile = ray[:180] + ray[180:]
        profile = profile - ndimage.median_filter(profile, _HIGH_PASS_DEG, mode="wrap")
        # in units of its robust spread, scaled down (not clipped: that would flatten
        # the peak and bias the angle) so that one bright star counts at most _MAX_SIGMA
        scale = max(1.4826 * float(np.median(np.abs(profile))), profile.max() / _MAX_SIGMA)
        if scale <= 0:
            continue
        acc += profile / scale
        used += 1
    if used == 0:
        return SpikeAngle(0.0, 0.0, 0)
    fold = ndimage.uniform_filter1d(acc[:90] + acc[90:], 3, mode="wrap")
    k = int(np.argmax(fold))
    mad = 1.4826 * np.median(np.abs(fold - np.median(fold)))
    score = float((fold[k] - np.median(fold)) / mad) if mad > 0 else 0.0
    # sub-degree angle: the parabola through the peak and its neighbours
    lo, hi = fold[(k - 1) % 90], fold[(k + 1) % 90]
    denom = lo - 2 * fold[k] + hi
    offset = 0.5 * (lo - hi) / denom if denom < 0 else 0.0
    return SpikeAngle(float((k + offset) % 90), score, used)


class _Shifts:
    """Integer shifts of a 2-D image with its edges extended: ``get(dy, dx)[y, x]`` is
    the image at ``(y + dy, x + dx)``, clamped to the frame."""

    def __init__(self, image: np.ndarray, pad: int) -> None:
        self.pad = pad
        self.shape = image.shape
        self.padded = np.pad(image, pad, mode="edge")

    def get(self, dy: int, dx: int) -> np.ndarray:
        p, (h, w) = self.pad, self.shape
        return self.padded[p + dy : p + dy + h, p + dx : p + dx + w]


def _offsets(ux: float, uy: float, steps: range | tuple[int, ...]) -> list[tuple[int, int]]:
    return [(round(t * uy), round(t * ux)) for t in steps]


def _closed(v: np.ndarray, gap: int) -> np.ndarray:
    """Gaps of up to ``gap`` samples along axis 1 bridged (a 1-D closing)."""
    if gap <= 0:
        return v
    size = gap + 1
    grown = ndimage.maximum_filter1d(v.astype(np.uint8), size, axis=1, mode="nearest")
    return ndimage.minimum_filter1d(grown, size, axis=1, mode="nearest").astype(bool) | v


def _arm_lengths(
    line: np.ndarray, cy: np.ndarray, cx: np.ndarray, ux: float, uy: float, gap: int
) -> np.ndarray:
    """Per star, how far (px) ``line`` runs from its centroid along +u and -u, the
    shorter of the two; beyond the frame a side counts as going on."""
    H, W = line.shape
    reach = int(np.ceil(np.hypot(H, W)))
    t = np.arange(1, reach + 1, dtype=np.float32)
    sides = []
    for sign in (1.0, -1.0):
        yy = np.rint(cy[:, None] + sign * t[None] * uy).astype(np.int64)
        xx = np.rint(cx[:, None] + sign * t[None] * ux).astype(np.int64)
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        v = np.ones(yy.shape, bool)
        v[inside] = line[yy[inside], xx[inside]]
        v = _closed(v, gap)
        sides.append(np.where(v.all(axis=1), reach, np.argmin(v, axis=1)))
    return np.minimum(*sides).astype(float)


def _paint_arms(
    shape: tuple[int, int],
    cy: np.ndarray,
    cx: np.ndarray,
    length: np.ndarray,
    ux: float,
    uy: float,
) -> np.ndarray:
    """(H, W) bool: a 3 px wide segment through each star along u, ``length`` each way."""
    H, W = shape
    out = np.zeros(shape, bool)
    for y, x, n in zip(cy, cx, length, strict=True):
        t = np.arange(-n, n + 0.25, 0.5)
        for w in (-1.0, -0.5, 0.0, 0.5, 1.0):
            yy = np.rint(y + t * uy + w * ux).astype(np.int64)
            xx = np.rint(x + t * ux - w * uy).astype(np.int64)
            ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            out[yy[ok], xx[ok]] = True
    return out


def spike_arms(
    original: np.ndarray, starless: np.ndarray, angle_deg: float, options: SpikeOptions
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels the step lowers and the per-pixel value they are lowered to (steps 2
    and 3 of the module docstring) for spikes at ``angle_deg`` and ``angle_deg + 90``.

    Returns ``(mask, floor)``: ``(H, W) bool`` and ``(C, H, W) float32`` (the
    across-line median of each channel; only meaningful under ``mask``; where both
    directions take a pixel, the lower)."""
    _check(original, starless)
    stars, cy, cx, radius, _ = _star_components(original, starless, options.star_threshold)
    C, H, W = starless.shape
    mask = np.zeros((H, W), bool)
    floor = starless.astype(np.float32, copy=True)
    if cy.size == 0:
        return mask, floor
    pad = max(_ACROSS_PX[-1], _ALONG_PX) + 1
    channels = [_Shifts(c.astype(np.float32), pad) for c in starless]
    directions = []
    for a in (angle_deg, angle_deg + 90.0):
        ux, uy = float(np.cos(np.deg2rad(a))), float(np.sin(np.deg2rad(a)))
        across = _offsets(-uy, ux, tuple(s * d for d in _ACROSS_PX for s in (1, -1)))
        steps = _offsets(ux, uy, range(-_ALONG_PX, _ALONG_PX + 1))
        per_channel = []
        for ch in channels:  # per channel: a chromatic arm breaks into coloured segments
            ex = _Shifts(ch.get(0, 0) - np.median([ch.get(*o) for o in across], axis=0), pad)
            per_channel.append(np.mean([ex.get(*o) for o in steps], axis=0))
        directions.append((ux, uy, across, np.stack(per_channel)))
    for i, (ux, uy, across, along) in enumerate(directions):
        other = directions[1 - i][3]
        med = np.median(along, axis=(1, 2), keepdims=True)
        spread = 1.4826 * np.median(np.abs(along - med), axis=(1, 2), keepdims=True)
        cand = np.any(
            (along > options.detect_sigma * spread)
            & (along > options.line_ratio * np.maximum(other, 0.0)),
            axis=0,
        )
        line = ndimage.binary_dilation(cand | stars, np.ones((3, 3), bool))
        length = _arm_lengths(line, cy, cx, ux, uy, options.gap_px)
        keep = length > radius + options.min_arm_px
        if not keep.any():
            continue
        arms = _paint_arms((H, W), cy[keep], cx[keep], length[keep] + 2, ux, uy)
        arms &= ndimage.binary_dilation(cand) & ~stars
        if not arms.any():
            continue
        ys, xs = np.nonzero(arms)
        for c, ch in enumerate(channels):
            med = np.median([ch.get(*o)[ys, xs] for o in across], axis=0)
            floor[c, ys, xs] = np.minimum(floor[c, ys, xs], med)
        mask |= arms
    return mask, floor


def remove_spikes(original: np.ndarray, starless: np.ndarray, options: SpikeOptions) -> np.ndarray:
    """The starless image with the spikes the network left taken out (method in the
    module docstring). ``(C, H, W)`` in stretched [0, 1]; returns ``(C, H, W)
    float32``. ``options.enabled`` False, or a frame whose spike score is below
    ``options.min_score``, returns ``starless`` unchanged."""
    _check(original, starless)
    if not options.enabled:
        return starless
    found = find_spike_angle(original, starless, options)
    if found.score < options.min_score:
        return starless
    mask, floor = spike_arms(original, starless, found.angle_deg, options)
    if not mask.any():
        return starless
    out = starless.astype(np.float32, copy=True)
    out[:, mask] = np.minimum(out[:, mask], floor[:, mask])
    return out
