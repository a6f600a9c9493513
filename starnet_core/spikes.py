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
   channel: the channel minus the sky beside the line (on each side the median of
   the samples 2, 3 and 4 px away across it, the two sides averaged), averaged over
   9 px along the line. A pixel is a spike candidate where,
   in some channel (a chromatic arm breaks into coloured segments), that excess is
   above ``detect_sigma`` times its robust spread over the frame and at least
   ``line_ratio`` times the excess along the other direction (a blob, a galaxy's
   core, answers both directions alike; a line only its own).
3. **Arms**: from each star of the star layer (component above ``star_threshold``),
   and from each peak of a component that holds two or more (a merged double's arms
   run through its stars, not through the pair's centroid; a peak counts at half
   its component's maximum or more, the highest over 5 x 5 px), the candidates are
   followed along the direction on both sides (gaps of
   ``gap_px`` bridged; beyond the frame's edge a side counts as going on). An arm is
   taken as long as the shorter side, since a spike is symmetric and a filament or a
   galaxy that happens to lie on one side of a star is not; a star whose arms reach
   less than ``min_arm_px`` beyond its core radius has no spike here.
4. On the arms' candidate pixels (grown by one pixel) outside the stars' cores (star
   layer above ``core_threshold``: the network's and the rim fill's), each channel of
   the starless image is lowered to its own sky beside the line:
   ``min(starless, beside)``, so only light standing above that sky is taken.

Arrays: ``(C, H, W) float32`` stretched to ``[0, 1]``; results the same shape.
Pixels outside the arms are returned unchanged; a frame without spikes comes back as
it was.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from starnet_core.options import SpikeOptions

__all__ = [
    "SpikeAngle",
    "SpikeOptions",
    "find_spike_angle",
    "mean_difference",
    "remove_spikes",
    "spike_arms",
]

_HIGH_PASS_DEG = 15  # circular median taken off each star's angular profile
_ACROSS_PX = (2, 3, 4)  # the sky beside a line: this far on both sides
_ALONG_PX = 4  # the line excess is averaged over +-this along the line
_MAX_SIGMA = 20.0  # one star's profile peaks at most this many of its sigmas
_FIRST_BLOCK_PX = 32  # arms are followed in blocks of 32, 64, 128, ... px
_SPREAD_STRIDE = 3  # the line excess's spread is measured on every 3rd row and column
_MIN_INSIDE = 0.75  # a star whose rays leave the frame more than this is skipped
_PEAK_PX = 5  # a merged component's peaks: local maxima of the layer over 5 x 5 px ...
_PEAK_SHARE = 0.5  # ... at least this share of the component's maximum


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


@dataclass(frozen=True)
class _Stars:
    """The components of the star layer (luminance) above a threshold: their mask and,
    per star, the layer-weighted centroid, the radius of a disc of its area and its
    flux in the layer; the layer and the components' labels (for their peaks)."""

    mask: np.ndarray
    cy: np.ndarray
    cx: np.ndarray
    radius: np.ndarray
    flux: np.ndarray
    layer: np.ndarray
    labels: np.ndarray


def mean_difference(original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """``(original - starless).mean(axis=0, dtype=float32)``, ``(H, W) float32``, bit for
    bit, one channel at a time: the whole ``(C, H, W)`` difference is never held (on a
    large frame it would be a frame of memory more for a plane of result)."""
    acc = np.subtract(original[0], starless[0]).astype(np.float32, copy=False)
    for c in range(1, original.shape[0]):
        acc += np.subtract(original[c], starless[c]).astype(np.float32, copy=False)
    # as np.mean divides its float32 sum
    return np.true_divide(acc, np.intp(original.shape[0]), out=acc, casting="unsafe")


def _stars(original: np.ndarray, starless: np.ndarray, threshold: float) -> _Stars:
    layer = mean_difference(original, starless)
    mask = layer > threshold
    labels, n = ndimage.label(mask)
    ys, xs = np.nonzero(mask)
    ids, weight = labels[ys, xs], layer[ys, xs].astype(np.float64)

    def per_star(values: np.ndarray | None) -> np.ndarray:
        return np.bincount(ids, weights=values, minlength=n + 1)[1:]

    flux = per_star(weight)
    safe = np.maximum(flux, 1e-12)
    return _Stars(
        mask,
        per_star(weight * ys) / safe,
        per_star(weight * xs) / safe,
        np.sqrt(per_star(None) / np.pi),
        flux,
        layer,
        labels,
    )


def _origins(stars: _Stars) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where arms are followed from: every star's centroid, and the peaks of each
    component with two or more (local maxima over ``_PEAK_PX`` of at least
    ``_PEAK_SHARE`` of the component's maximum), each with its component's radius."""
    n = stars.cy.size
    layer, labels, mask = stars.layer, stars.labels, stars.mask
    top = np.zeros(n + 1, np.float32)  # each component's maximum (ndimage.maximum is slower)
    np.maximum.at(top, labels[mask], layer[mask])
    peak = mask & (layer == ndimage.maximum_filter(layer, _PEAK_PX, mode="nearest"))
    ys, xs = np.nonzero(peak)
    ids = labels[ys, xs]
    strong = layer[ys, xs] >= _PEAK_SHARE * top[ids]
    ys, xs, ids = ys[strong], xs[strong], ids[strong]
    merged = np.bincount(ids, minlength=n + 1)[ids] >= 2
    ys, xs, ids = ys[merged], xs[merged], ids[merged]
    return (
        np.concatenate([stars.cy, ys.astype(float)]),
        np.concatenate([stars.cx, xs.astype(float)]),
        np.concatenate([stars.radius, stars.radius[ids - 1]]),
    )


def find_spike_angle(
    original: np.ndarray, starless: np.ndarray, options: SpikeOptions
) -> SpikeAngle:
    """The frame's spike angle and how clearly the brightest stars show it (step 1 of
    the module docstring). ``starless`` is the network's (finished) output; only its
    star layer is used, to find the stars."""
    _check(original, starless)
    return _find_angle(original, _stars(original, starless, options.star_threshold), options)


def _find_angle(original: np.ndarray, stars: _Stars, options: SpikeOptions) -> SpikeAngle:
    cy, cx, radius = stars.cy, stars.cx, stars.radius
    if cy.size == 0:
        return SpikeAngle(0.0, 0.0, 0)
    lum = original.mean(axis=0, dtype=np.float32)
    H, W = lum.shape
    theta = np.deg2rad(np.arange(360.0))
    acc = np.zeros(180)
    used = 0
    for j in np.argsort(-stars.flux)[: options.max_stars]:
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


def _run_lengths(
    line: np.ndarray, cy: np.ndarray, cx: np.ndarray, dy: float, dx: float, gap: int
) -> np.ndarray:
    """Per star, how many samples ``t = 1, 2, ...`` of ``line`` at ``(cy + t dy,
    cx + t dx)`` are set in a row (gaps of up to ``gap`` bridged; beyond the frame a
    sample counts as set), at most the frame's diagonal. Read in blocks that double
    in length, each with ``gap + 1`` samples of context on both sides, so a star
    whose arm ends early costs a short block."""
    H, W = line.shape
    reach = int(np.ceil(np.hypot(H, W)))
    length = np.full(cy.size, reach, dtype=np.int64)
    active = np.arange(cy.size)
    lo, block = 1, _FIRST_BLOCK_PX
    while active.size and lo <= reach:
        hi = min(lo + block, reach + 1)  # samples lo .. hi - 1 are judged
        first = max(lo - gap - 1, 1)
        t = np.arange(first, min(hi + gap + 1, reach + 1), dtype=np.float32)
        yy = np.rint(cy[active, None] + t[None] * dy).astype(np.intp)
        xx = np.rint(cx[active, None] + t[None] * dx).astype(np.intp)
        inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        v = np.ones(yy.shape, bool)
        v[inside] = line[yy[inside], xx[inside]]
        judged = _closed(v, gap)[:, lo - first : hi - first]
        broken = ~judged.all(axis=1)
        length[active[broken]] = lo - 1 + np.argmin(judged[broken], axis=1)
        active = active[~broken]
        lo, block = hi, 2 * block
    return length


def _arm_lengths(
    line: np.ndarray, cy: np.ndarray, cx: np.ndarray, ux: float, uy: float, gap: int
) -> np.ndarray:
    """Per star, how far (px) ``line`` runs from its centroid along +u and -u, the
    shorter of the two; beyond the frame a side counts as going on."""
    plus = _run_lengths(line, cy, cx, uy, ux, gap)
    minus = _run_lengths(line, cy, cx, -uy, -ux, gap)
    return np.minimum(plus, minus).astype(float)


def _paint_arms(
    shape: tuple[int, int],
    cy: np.ndarray,
    cx: np.ndarray,
    length: np.ndarray,
    ux: float,
    uy: float,
) -> np.ndarray:
    """(H, W) bool: a 3 px wide segment through each star along u, ``length`` (whole
    pixels) each way, sampled every half pixel."""
    H, W = shape
    out = np.zeros(shape, bool)
    half = np.ceil(length).astype(np.intp)
    counts = 4 * half + 1  # -half .. half in steps of 0.5
    star = np.repeat(np.arange(cy.size), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = 0.5 * k - half[star]
    y0, x0 = cy[star] + t * uy, cx[star] + t * ux
    for w in (-1.0, -0.5, 0.0, 0.5, 1.0):
        yy = np.rint(y0 + w * ux).astype(np.intp)
        xx = np.rint(x0 - w * uy).astype(np.intp)
        ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        out[yy[ok], xx[ok]] = True
    return out


def _median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The elementwise median of three arrays, in a new array (two temporaries, the
    second reused in place)."""
    low = np.minimum(a, b)
    high = np.maximum(a, b)
    np.minimum(high, c, out=high)
    return np.maximum(low, high, out=low)


def _beside(get: Callable[[int, int], np.ndarray], ux: float, uy: float) -> np.ndarray:
    """The sky beside a line along u: on each side the median of the samples 2, 3 and
    4 px away across it (one neighbour or noise spike per side does not move it), the
    two sides averaged (a gradient across the line cancels). ``get(dy, dx)`` gives the
    float32 samples at that offset: a whole shifted plane, or the pixels of an arm."""
    near = _median3(*(get(*o) for o in _offsets(-uy, ux, _ACROSS_PX)))
    far = _median3(*(get(*o) for o in _offsets(-uy, ux, tuple(-d for d in _ACROSS_PX))))
    near += far
    near *= 0.5
    return near


def _line_excess(channel: _Shifts, ux: float, uy: float) -> np.ndarray:
    """``(H, W) float32``: a channel minus its sky beside the line along u
    (:func:`_beside`), averaged over +-``_ALONG_PX`` along the line (step 2 of the
    module docstring)."""
    beside = _beside(channel.get, ux, uy)
    np.subtract(channel.get(0, 0), beside, out=beside)
    excess = _Shifts(beside, channel.pad)
    del beside  # only the padded copy is read from here on
    steps = _offsets(ux, uy, range(-_ALONG_PX, _ALONG_PX + 1))
    total = np.zeros(channel.shape, np.float32)
    for o in steps:
        total += excess.get(*o)
    total /= len(steps)
    return total


def _candidates(
    starless: np.ndarray, units: list[tuple[float, float]], options: SpikeOptions
) -> list[np.ndarray]:
    """Per direction ``(ux, uy)`` of ``units`` (two, at right angles), the ``(H, W)
    bool`` spike candidates of step 2 of the module docstring.

    A channel at a time (a chromatic arm breaks into coloured segments, so a pixel is
    a candidate if any channel says so): only that channel's two line excesses are
    held, never all channels of both directions (on a large frame that was several
    frames of memory)."""
    H, W = starless.shape[1:]
    pad = max(_ACROSS_PX[-1], _ALONG_PX) + 1
    cands = [np.zeros((H, W), bool) for _ in units]
    for plane in starless:
        channel = _Shifts(plane.astype(np.float32, copy=False), pad)
        along = [_line_excess(channel, ux, uy) for ux, uy in units]
        del channel
        for i, cand in enumerate(cands):
            sample = along[i][::_SPREAD_STRIDE, ::_SPREAD_STRIDE]
            med = np.median(sample, keepdims=True)
            spread = 1.4826 * np.median(np.abs(sample - med), keepdims=True)
            hit = along[i] > options.detect_sigma * spread
            other = np.maximum(along[1 - i], 0.0)
            other *= options.line_ratio
            hit &= along[i] > other
            del other
            cand |= hit
        del along, hit  # before the next channel's are made
    return cands


def _lowered(starless: np.ndarray, taken: list[tuple[float, float, np.ndarray]]) -> np.ndarray:
    """``starless`` as float32 with each channel lowered to its sky beside the line
    (:func:`_beside`) on each direction's arms (``(ux, uy, arms)`` of :func:`_arms`;
    where both directions take a pixel, the lower). The sky is read on the arms'
    pixels only (clamped to the frame, as the padded planes are), not on whole
    planes."""
    floor = starless.astype(np.float32, copy=True)
    for ux, uy, arms in taken:
        ys, xs = np.nonzero(arms)
        for c, plane in enumerate(starless):
            sky = _beside(_samples(plane, ys, xs), ux, uy)
            floor[c, ys, xs] = np.minimum(floor[c, ys, xs], sky)
    return floor


def _samples(plane: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``get(dy, dx)``: ``plane`` (as float32) at ``(ys + dy, xs + dx)``, clamped to the
    frame: what :class:`_Shifts` gives on those pixels."""
    H, W = plane.shape

    def get(dy: int, dx: int) -> np.ndarray:
        yy, xx = np.clip(ys + dy, 0, H - 1), np.clip(xs + dx, 0, W - 1)
        return plane[yy, xx].astype(np.float32, copy=False)

    return get


def spike_arms(
    original: np.ndarray, starless: np.ndarray, angle_deg: float, options: SpikeOptions
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels the step lowers and the per-pixel value they are lowered to (steps 2
    and 3 of the module docstring) for spikes at ``angle_deg`` and ``angle_deg + 90``.

    Returns ``(mask, floor)``: ``(H, W) bool`` and ``(C, H, W) float32``: ``starless``
    with each channel lowered to its sky beside the line (:func:`_beside`) under
    ``mask`` (where both directions take a pixel, the lower), unchanged elsewhere."""
    _check(original, starless)
    stars = _stars(original, starless, options.star_threshold)
    mask, taken = _arms(starless, stars, angle_deg, options)
    return mask, _lowered(starless, taken)


def _arms(
    starless: np.ndarray, stars: _Stars, angle_deg: float, options: SpikeOptions
) -> tuple[np.ndarray, list[tuple[float, float, np.ndarray]]]:
    """``(mask, taken)``: the ``(H, W) bool`` union of the arms, and per direction that
    has any, ``(ux, uy, arms)`` for :func:`_lowered`."""
    H, W = starless.shape[1:]
    mask = np.zeros((H, W), bool)
    taken: list[tuple[float, float, np.ndarray]] = []
    if stars.cy.size == 0:
        return mask, taken
    cy, cx, radius = _origins(stars)
    core = stars.layer > options.core_threshold  # the stars' own pixels, left alone
    units = [
        (float(np.cos(np.deg2rad(a))), float(np.sin(np.deg2rad(a))))
        for a in (angle_deg, angle_deg + 90.0)
    ]
    for (ux, uy), cand in zip(units, _candidates(starless, units, options), strict=True):
        line = ndimage.binary_dilation(cand | stars.mask, np.ones((3, 3), bool))
        length = _arm_lengths(line, cy, cx, ux, uy, options.gap_px)
        del line
        keep = length > radius + options.min_arm_px
        if not keep.any():
            continue
        arms = _paint_arms((H, W), cy[keep], cx[keep], length[keep] + 2, ux, uy)
        arms &= ndimage.binary_dilation(cand) & ~core
        if not arms.any():
            continue
        taken.append((ux, uy, arms))
        mask |= arms
    return mask, taken


def remove_spikes(
    original: np.ndarray,
    starless: np.ndarray,
    options: SpikeOptions,
    figures: dict[str, float] | None = None,
) -> np.ndarray:
    """The starless image with the spikes the network left taken out (method in the
    module docstring). ``(C, H, W)`` in stretched [0, 1]; returns ``(C, H, W)
    float32``. ``options.enabled`` False, or a frame whose spike score is below
    ``options.min_score``, returns ``starless`` unchanged.

    ``figures``, if given, receives what the step measured (for a frame's provenance):
    ``spike_score``, ``spike_angle_deg`` and ``spike_lowered_fraction`` (the share of
    the frame's pixels lowered; 0 where the score is below ``min_score``)."""
    _check(original, starless)
    if not options.enabled:
        return starless
    stars = _stars(original, starless, options.star_threshold)
    found = _find_angle(original, stars, options)
    if figures is not None:
        figures.update(
            spike_score=found.score, spike_angle_deg=found.angle_deg, spike_lowered_fraction=0.0
        )
    if found.score < options.min_score:
        return starless
    mask, taken = _arms(starless, stars, found.angle_deg, options)
    if figures is not None:
        figures["spike_lowered_fraction"] = float(mask.mean())
    return _lowered(starless, taken) if mask.any() else starless
