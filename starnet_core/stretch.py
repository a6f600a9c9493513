"""Invertible auto-stretch with the midtones transfer function (PixInsight STF / Siril).

Arrays are ``(C, H, W)``; inputs may be any float dtype, results are float32.
Arithmetic runs in float64, block by block, so a large frame never needs more
than a few MB of float64 scratch.

The stretch of one channel, with shadows ``s``, midtones ``m`` and highlights
``h`` (``0 <= s < h <= 1``, ``0 < m < 1``)::

    y = mtf(m, clip((x - s) / (h - s), 0, 1))
    x = s + (h - s) * mtf(1 - m, y)            # invert_stretch, exact for s <= x <= h

Values at or below ``s`` all stretch to 0 and come back as ``s``; values at or
above ``h`` come back as ``h``. The pipeline therefore calls ``restore_clipped``
after unstretching a starless result: wherever the original was at or below
the shadows point the original value is put back (removing stars only ever
darkens, so nothing is lost there). Highlights are *not* restored: a clipped
star core is exactly what the starless image must not bring back.

Precision: a float32 stretched value near 1 carries ~6e-8 absolute; the
inverse magnifies that by ``(1 - m) / m`` at the top of the curve, so a
round trip through a float32 stretched image is exact to about ``6e-8 / m``
of the normalised range (1e-5 for a typical m = 0.005).

Linear data in arbitrary units (int16 plates, ADU, 2MASS floats) is first
mapped to [0, 1] with ``normalize_linear``: one offset and scale for the whole
frame (all channels together, so colour balance is kept), from the frame's
range with isolated single-pixel outliers (hot pixels, cosmic-ray hits,
sentinels) left out, so that one such pixel cannot squeeze the image into a
sliver of [0, 1]. The few pixels outside that range are clipped to 0 or 1;
``denormalize_linear`` inverts the map exactly for all the others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian -> its standard deviation
MEAN_DEV_TO_SIGMA = 1.2533  # mean absolute deviation of a Gaussian -> sigma (MAD = 0 fallback)
MAX_SAMPLES_PER_CHANNEL = 1 << 20  # statistics come from at most ~1 M pixels per channel
_BLOCK_PX = 1 << 18  # float64 scratch per block: 2 MB
_EPS = 1e-6
_MIN_RESCALED = 1e-15  # smallest (median - shadows) / (1 - shadows) the auto-stretch fits
# More than this share of a channel's samples exactly at its minimum is a plateau (a mosaic
# canvas, a rotated registration's fill, sky-subtracted data clipped at 0) and is left out
# of the background statistics. As the share nears one half the median sinks onto the
# plateau and the MAD collapses: the frame goes white. Below a quarter the statistics stay
# those of the data (exact for noise clipped at 0; a fill canvas moves the median at most
# 0.43 sigma down), and stretched frames with clipped blacks (make_pair's: up to ~20 %)
# are left as they were.
PLATEAU_FRACTION = 0.25
# normalize_linear's range leaves out a pixel more than OUTLIER_NOISE_SIGMAS noise sigmas
# above what its 8 neighbours support: their maximum plus OUTLIER_SLOPE times their spread
# (max - min) beyond OUTLIER_NOISE_SIGMAS sigmas (likewise below). A lone hot pixel's
# neighbours differ by noise only (8 Gaussian values span 6 sigma about once in 400), so
# it may exceed its brightest neighbour by 6 sigma at most; a Gaussian noise pixel does
# that about once in 1e10. An undersampled star's (FWHM 1 px, centred) brightest neighbour
# holds 15 % of the peak and its faintest 2 %, so its peak, 6.6 times that spread above the
# brightest neighbour, counts once its flux exceeds ~120 sigma.
OUTLIER_SLOPE = 16.0
OUTLIER_NOISE_SIGMAS = 6.0
# normalize_linear refuses a range float32 cannot hold the data in: the median more than
# 2**24 noise sigmas above the minimum (float32 [0, 1] keeps less than a step per sigma at
# the background: the image is gone), or the range more than 1e12 sigmas (the fitted
# background would near _MIN_RESCALED and the frame go black; one hot pixel 1e12 times
# the sky is fine: it is left out).
_MAX_PEDESTAL_SIGMAS = 2.0**24
_MAX_RANGE_SIGMAS = 1e12
_NOISE_SAMPLES = 1 << 17  # pixel differences per channel for the noise estimate


def _mtf64(m: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mtf`` in float64 without checks; ``x`` is modified when it is float64."""
    m64 = np.asarray(m, dtype=np.float64)
    u = np.asarray(x, dtype=np.float64)
    den = u * (2.0 * m64 - 1.0)
    den -= m64
    u *= m64 - 1.0
    u /= den
    return u


def _check_m(m: float | np.ndarray, name: str = "m") -> np.ndarray:
    m64 = np.asarray(m, dtype=np.float64)
    if not np.all((m64 > 0.0) & (m64 < 1.0)):
        raise ValueError(f"{name}: midtones balance must be in (0, 1), got {m!r}")
    return m64


def mtf(m: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """Midtones transfer function ``((m - 1) x) / ((2m - 1) x - m)`` as float32.

    ``m`` in (0, 1), broadcast against ``x``; ``x`` in [0, 1] (outside it the curve
    is still defined up to its pole at ``m / (2m - 1)``). ``mtf(m, 0) = 0``,
    ``mtf(m, m) = 0.5``, ``mtf(m, 1) = 1``; ``m = 0.5`` is the identity.
    """
    m64 = _check_m(m)
    return _mtf64(m64, np.array(x, dtype=np.float64)).astype(np.float32)


def mtf_inverse(m: float | np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact inverse of ``mtf``: ``mtf_inverse(m, mtf(m, x)) == x``; equals ``mtf(1 - m, y)``."""
    m64 = _check_m(m)
    return _mtf64(1.0 - m64, np.array(y, dtype=np.float64)).astype(np.float32)


def _tuple(values: Any, name: str) -> tuple[float, ...]:
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name}: expected a sequence of floats, got {values!r}")
    out = tuple(float(v) for v in values)
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name}: expected one or more finite floats, got {values!r}")
    return out


@dataclass(frozen=True)
class StretchParams:
    """Per-channel stretch parameters (linked: all channels equal but constant ones). JSON-safe
    via ``to_dict``."""

    shadows: tuple[float, ...]
    midtones: tuple[float, ...]
    highlights: tuple[float, ...]

    def __post_init__(self) -> None:
        s = _tuple(self.shadows, "shadows")
        m = _tuple(self.midtones, "midtones")
        h = _tuple(self.highlights, "highlights")
        if not len(s) == len(m) == len(h):
            raise ValueError(
                f"shadows, midtones, highlights need one entry per channel, got lengths "
                f"{len(s)}, {len(m)}, {len(h)}"
            )
        for c, (sc, mc, hc) in enumerate(zip(s, m, h, strict=True)):
            if not 0.0 <= sc < hc <= 1.0:
                raise ValueError(
                    f"channel {c}: need 0 <= shadows < highlights <= 1, got {sc}, {hc}"
                )
            if not 0.0 < mc < 1.0:
                raise ValueError(f"channel {c}: midtones must be in (0, 1), got {mc}")
        object.__setattr__(self, "shadows", s)
        object.__setattr__(self, "midtones", m)
        object.__setattr__(self, "highlights", h)

    @property
    def channels(self) -> int:
        return len(self.shadows)

    def to_dict(self) -> dict[str, list[float]]:
        return {
            "shadows": list(self.shadows),
            "midtones": list(self.midtones),
            "highlights": list(self.highlights),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StretchParams:
        keys = {"shadows", "midtones", "highlights"}
        if set(d) != keys:
            raise ValueError(
                f"StretchParams.from_dict: expected keys {sorted(keys)}, got {sorted(d)}"
            )
        return cls(
            shadows=_tuple(d["shadows"], "shadows"),
            midtones=_tuple(d["midtones"], "midtones"),
            highlights=_tuple(d["highlights"], "highlights"),
        )


def _check_chw(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{name}: expected a (C, H, W) array, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {arr.dtype}")
    return arr


def _check_channels(arr: np.ndarray, p: StretchParams, name: str) -> None:
    if arr.shape[0] != p.channels:
        raise ValueError(
            f"{name}: {arr.shape[0]} channel(s) but the stretch parameters have {p.channels}"
        )


def _row_blocks(height: int, width: int) -> Iterator[slice]:
    rows = max(1, _BLOCK_PX // max(1, width))
    for r in range(0, height, rows):
        yield slice(r, min(r + rows, height))


def _sample(channel: np.ndarray) -> np.ndarray:
    """A deterministic subsample of one ``(H, W)`` channel as float64.

    A plain stride, nudged to be coprime with the width so that every column is
    visited (a stride sharing a factor with W would sample only some columns).
    """
    flat = channel.reshape(-1)
    if flat.size <= MAX_SAMPLES_PER_CHANNEL:
        return flat.astype(np.float64)
    stride = -(-flat.size // MAX_SAMPLES_PER_CHANNEL)
    while math.gcd(stride, channel.shape[1]) != 1:
        stride += 1
    return flat[::stride].astype(np.float64)


def _background(
    sample: np.ndarray, channel: np.ndarray | None = None
) -> tuple[float, float] | None:
    """Median and noise sigma (1.4826 MAD; mean deviation where the MAD is 0) of
    ``sample``, float64 values (a ``_sample`` of ``channel``, ``(H, W)``, if given).

    A plateau (more than ``PLATEAU_FRACTION`` of the sample exactly at its minimum) is
    left out. When nothing is left, ``channel`` is searched for pixels above the plateau
    (a few stars on a black canvas the sample missed); None when there are none.
    """
    floor = sample.min()
    if np.count_nonzero(sample == floor) > PLATEAU_FRACTION * sample.size:
        sample = sample[sample > floor]
        if sample.size == 0 and channel is not None:
            sample = channel[channel > floor].astype(np.float64)
            if sample.size == 0:
                return None
        logger.debug("plateau at %g left out of the background statistics", floor)
    med = float(np.median(sample))
    dev = np.abs(sample - med)
    sigma = MAD_TO_SIGMA * float(np.median(dev))
    if sigma == 0.0:
        sigma = MEAN_DEV_TO_SIGMA * float(dev.mean())
        logger.debug("MAD is 0, sigma from mean deviation: %g", sigma)
    return med, sigma


def _shadows(med: float, sigma: float, shadows_clip_mad: float) -> float:
    return min(max(med + shadows_clip_mad * sigma, 0.0), 0.999)


def fit_auto_stretch(
    x: np.ndarray,
    *,
    shadows_clip_mad: float = -2.8,
    target_background: float = 0.25,
    linked: bool = True,
) -> StretchParams:
    """Fit the STF auto-stretch to ``x`` (``(C, H, W)`` float in [0, 1]).

    Per channel: median and normalised MAD (1.4826 MAD) of a deterministic
    subsample, without the pixels exactly at the channel's minimum when they are more
    than ``PLATEAU_FRACTION`` of it (a 0-filled canvas, data clipped at 0: with half the
    frame there, median and MAD are 0 and the frame white);
    ``shadows = clip(median + shadows_clip_mad * MADn, 0, 1)``, ``highlights = 1``,
    and ``m = mtf(target_background, (median - shadows) / (1 - shadows))``
    so the stretched median lands exactly on ``target_background``. (PixInsight
    omits the ``/ (1 - shadows)`` rescale; with small shadows the two agree to <1%.)
    ``linked``: shadows and median are averaged over the channels, as PixInsight does,
    and those channels get the same parameters. ValueError when every channel is
    constant (nothing to fit); a constant channel among others (a flat fill, an empty
    channel of a bicolour composite) is left out of that mean and keeps its own
    parameters (median its value, sigma 0: shadows at its value), which keep it
    constant, linked or not. Averaged in, its value moved the others' black point and
    median: a flat channel above their sky stretched that sky to black.
    """
    arr = _check_chw(x, "x")
    if not shadows_clip_mad <= 0.0:
        raise ValueError(f"shadows_clip_mad must be <= 0, got {shadows_clip_mad!r}")
    if not 0.0 < target_background < 1.0:
        raise ValueError(f"target_background must be in (0, 1), got {target_background!r}")
    fits: list[tuple[float, float]] = []
    constant: list[bool] = []
    for c in range(arr.shape[0]):
        sample = _sample(arr[c])
        lo, hi = float(sample.min()), float(sample.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"x: channel {c} has non-finite values")
        if lo < -_EPS or hi > 1.0 + _EPS:
            raise ValueError(
                f"x: channel {c} ranges {lo:g}..{hi:g}, expected [0, 1] "
                "(map linear data with normalize_linear first)"
            )
        fit = _background(sample, arr[c])
        constant.append(fit is None)
        fits.append((lo, 0.0) if fit is None else fit)  # constant: shadows at it, stays so
    if all(constant):
        raise ValueError(
            f"x: every channel is constant ({', '.join(f'{m:g}' for m, _ in fits)}): "
            "no background to fit the stretch to"
        )
    medians = [med for med, _ in fits]
    shadows = [_shadows(med, sigma, shadows_clip_mad) for med, sigma in fits]
    if linked:
        fitted = [c for c, flat in enumerate(constant) if not flat]
        median = float(np.mean([medians[c] for c in fitted]))
        shadow = float(np.mean([shadows[c] for c in fitted]))
        for c in fitted:
            medians[c], shadows[c] = median, shadow
    midtones = []
    for med, s in zip(medians, shadows, strict=True):
        # the floor is far below _EPS: one hot pixel (a flat divided by a dead pixel's ~0)
        # can put the normalised background at 1e-8 or less, and it must still land on
        # target_background (m ~ 3 * rescaled stays a positive float64)
        rescaled = min(max((med - s) / (1.0 - s), _MIN_RESCALED), 1.0 - _EPS)
        midtones.append(float(_mtf64(target_background, np.array(rescaled))))
    params = StretchParams(tuple(shadows), tuple(midtones), (1.0,) * len(shadows))
    logger.debug("auto-stretch fitted: %s", params.to_dict())
    return params


def apply_stretch(x: np.ndarray, p: StretchParams) -> np.ndarray:
    """Stretch ``x`` (``(C, H, W)`` float, [0, 1]) -> ``(C, H, W)`` float32 in [0, 1]."""
    arr = _check_chw(x, "x")
    _check_channels(arr, p, "x")
    out = np.empty(arr.shape, dtype=np.float32)
    for c in range(arr.shape[0]):
        s, m, h = p.shadows[c], p.midtones[c], p.highlights[c]
        for rows in _row_blocks(arr.shape[1], arr.shape[2]):
            u = arr[c, rows].astype(np.float64)
            u -= s
            u *= 1.0 / (h - s)
            np.clip(u, 0.0, 1.0, out=u)
            out[c, rows] = _mtf64(m, u)
    return out


def invert_stretch(y: np.ndarray, p: StretchParams) -> np.ndarray:
    """Undo ``apply_stretch``: ``(C, H, W)`` float32 in ``[shadows, highlights]``.

    ``y`` is clipped to [0, 1] first (a network's output may overshoot a little).
    Exact for pixels that were between shadows and highlights; clipped pixels come
    back as the shadows / highlights point (see ``restore_clipped``).
    """
    arr = _check_chw(y, "y")
    _check_channels(arr, p, "y")
    out = np.empty(arr.shape, dtype=np.float32)
    for c in range(arr.shape[0]):
        s, m, h = p.shadows[c], p.midtones[c], p.highlights[c]
        for rows in _row_blocks(arr.shape[1], arr.shape[2]):
            u = arr[c, rows].astype(np.float64)
            np.clip(u, 0.0, 1.0, out=u)
            u = _mtf64(1.0 - m, u)
            u *= h - s
            u += s
            out[c, rows] = u
    return out


def restore_clipped(
    original_linear: np.ndarray, unstretched: np.ndarray, p: StretchParams
) -> np.ndarray:
    """Put the original value back where the stretch clipped it to black.

    ``original_linear`` and ``unstretched`` are ``(C, H, W)`` in the units ``p``
    was fitted in (normalised [0, 1]). Where ``original <= shadows`` the stretch
    kept no information and ``invert_stretch`` returned the shadows point; the
    original value is the right starless value there. Returns float32.
    """
    orig = _check_chw(original_linear, "original_linear")
    unst = _check_chw(unstretched, "unstretched")
    if orig.shape != unst.shape:
        raise ValueError(
            f"original_linear shape {orig.shape} differs from unstretched shape {unst.shape}"
        )
    _check_channels(orig, p, "original_linear")
    shadows = np.asarray(p.shadows, dtype=np.float64).reshape(-1, 1, 1)
    return np.where(orig <= shadows, orig, unst).astype(np.float32)


@dataclass(frozen=True)
class Normalization:
    """Affine map of linear data to [0, 1]: ``x01 = (x - offset) / scale``."""

    offset: float
    scale: float

    def __post_init__(self) -> None:
        offset, scale = float(self.offset), float(self.scale)
        if not math.isfinite(offset):
            raise ValueError(f"offset must be finite, got {self.offset!r}")
        if not (math.isfinite(scale) and scale > 0.0):
            raise ValueError(f"scale must be finite and > 0, got {self.scale!r}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    def to_dict(self) -> dict[str, float]:
        return {"offset": self.offset, "scale": self.scale}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalization:
        if set(d) != {"offset", "scale"}:
            raise ValueError(
                f"Normalization.from_dict: expected keys offset, scale, got {sorted(d)}"
            )
        return cls(offset=float(d["offset"]), scale=float(d["scale"]))


def _affine(arr: np.ndarray, shift: float, factor: float, post_shift: float) -> np.ndarray:
    """``(arr + shift) * factor + post_shift`` in float64 blocks -> float32."""
    out = np.empty(arr.shape, dtype=np.float32)
    for c in range(arr.shape[0]):
        for rows in _row_blocks(arr.shape[1], arr.shape[2]):
            u = arr[c, rows].astype(np.float64)
            u += shift
            u *= factor
            u += post_shift
            out[c, rows] = u
    return out


def _noise_sigma(channel: np.ndarray) -> float:
    """Pixel noise of one ``(H, W)`` channel: 1.4826 MAD / sqrt(2) of the differences
    between horizontal neighbours (blind to gradients and nebulae) in about 2**17 of them
    from rows spread over the frame; exact zeros (flat fill, saturated cores) are left
    out. 0 when there are none."""
    height, width = channel.shape
    step = max(1, -(-height * width // _NOISE_SAMPLES))
    diff = np.diff(channel[::step].astype(np.float64), axis=1).reshape(-1)
    diff = diff[diff != 0.0]
    if diff.size == 0:
        return 0.0
    return MAD_TO_SIGMA / math.sqrt(2.0) * float(np.median(np.abs(diff - np.median(diff))))


def _pair_bounds(ext: np.ndarray) -> tuple[float, float]:
    """Over horizontally and vertically adjacent pixel pairs of ``ext`` (``(h, w)``): the
    largest pair minimum and the smallest pair maximum. Every pair holds a pixel that the
    robust range keeps at least as far out, so these bound it from inside. ``(-inf, inf)``
    for a single pixel."""
    top, bottom = -math.inf, math.inf
    for a, b in ((ext[:, :-1], ext[:, 1:]), (ext[:-1], ext[1:])):
        if a.size:
            top = max(top, float(np.minimum(a, b).max()))
            bottom = min(bottom, float(np.maximum(a, b).min()))
    return top, bottom


def _counted(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, noise: float, high: bool) -> float:
    """The most extreme value the pixels ``image[ys, xs]`` (``image``: ``(h, w)``)
    contribute to the robust range: the pixel's own, or for an outlier its brightest
    (``high``) / faintest neighbour; ``noise``: ``OUTLIER_NOISE_SIGMAS`` noise sigmas."""
    height, width = image.shape
    px = image[ys, xs].astype(np.float64)
    nb_max = np.full(px.shape, -np.inf)
    nb_min = np.full(px.shape, np.inf)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            y, x = ys + dy, xs + dx
            inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
            y, x = np.minimum(np.maximum(y, 0), height - 1), np.minimum(np.maximum(x, 0), width - 1)
            nb = image[y, x].astype(np.float64)
            np.maximum(nb_max, np.where(inside, nb, -np.inf), out=nb_max)
            np.minimum(nb_min, np.where(inside, nb, np.inf), out=nb_min)
    slack = OUTLIER_SLOPE * np.maximum(nb_max - nb_min - noise, 0.0) + noise
    if high:
        return float(np.where(px > nb_max + slack, nb_max, px).max())
    return float(np.where(px < nb_min - slack, nb_min, px).min())


def _scan(image: np.ndarray, noise: float, high: bool) -> float:
    """``_counted`` over every pixel of ``image`` (``(H, W)``) that can matter: those beyond
    the ``_pair_bounds`` of their row block (with a row of overlap; views only), local
    extrema, a handful a block."""
    height, width = image.shape
    best = -math.inf if high else math.inf
    for rows in _row_blocks(height, width):
        first = max(rows.start - 1, 0)
        ext = image[first : min(rows.stop + 1, height)]
        block = ext[rows.start - first : rows.stop - first]
        bound = _pair_bounds(ext)[0 if high else 1]
        ys, xs = np.nonzero(block > bound if high else block < bound)
        value = _counted(ext, ys + (rows.start - first), xs, noise, high) if ys.size else bound
        best = max(best, bound, value) if high else min(best, bound, value)
    return best


def _robust_range(arr: np.ndarray, noise_px: list[float]) -> tuple[float, float]:
    """``(lo, hi)`` of a ``(C, H, W)`` frame without isolated single-pixel outliers;
    ``noise_px``: each channel's noise sigma (``_noise_sigma``).

    A pixel more than a slack above its brightest neighbour counts as that neighbour,
    one more than the slack below its faintest as that one; the slack is
    ``OUTLIER_NOISE_SIGMAS`` noise sigmas of the channel plus ``OUTLIER_SLOPE`` times the
    neighbours' spread beyond that. A hot pixel among sky, whose neighbours differ by
    noise only, stands out; a star's peak, even an undersampled one, sits on a steep
    neighbourhood and counts. Without such pixels this is the exact minimum and maximum.

    Cost: one pass for each channel's maximum and one for its minimum; only where that
    pixel stands out, a scan of the channel (``_scan``).
    """
    lo, hi = math.inf, -math.inf
    for c in range(arr.shape[0]):
        image, noise = arr[c], OUTLIER_NOISE_SIGMAS * noise_px[c]
        for high, extreme in ((True, np.argmax), (False, np.argmin)):
            y, x = np.unravel_index(int(extreme(image)), image.shape)
            value = float(image[y, x])
            if _counted(image, np.array([y]), np.array([x]), noise, high) != value:
                value = _scan(image, noise, high)  # it stands out: find what counts
            hi, lo = (max(hi, value), lo) if high else (hi, min(lo, value))
    return lo, hi


def _first(arr: np.ndarray, where: np.ndarray) -> str:
    """``value (channel c, row y, column x)`` of the first pixel where ``where`` holds."""
    c, y, x = (int(i) for i in np.argwhere(where)[0])
    return f"{float(arr[c, y, x]):g} (channel {c}, row {y}, column {x})"


def _check_precision(arr: np.ndarray, lo: float, hi: float, noise_px: list[float]) -> None:
    """ValueError naming the value when ``lo`` or ``hi`` lies so far from the data that
    float32 [0, 1] (or the stretch's floor) cannot hold the image between them; the
    yardstick is the smallest channel noise (the finest detail the data has)."""
    spread = min((n for n in noise_px if n > 0.0), default=0.0)
    if not hi - lo > _MAX_PEDESTAL_SIGMAS * spread > 0.0:
        return  # the usual case, decided without a median
    stats = _background(np.concatenate([_sample(arr[c]) for c in range(arr.shape[0])]))
    med = lo if stats is None else stats[0]
    if med - lo > _MAX_PEDESTAL_SIGMAS * spread:
        raise ValueError(
            f"x: value {_first(arr, arr <= lo)} lies {(med - lo) / spread:.3g} times the "
            f"noise ({spread:g}) below the median ({med:g}): float32 [0, 1] cannot hold "
            "the image beside it; a fill value or sentinel? replace it first"
        )
    if hi - lo > _MAX_RANGE_SIGMAS * spread:
        raise ValueError(
            f"x: value {_first(arr, arr >= hi)} lies {(hi - med) / spread:.3g} times the "
            f"noise ({spread:g}) above the median ({med:g}): the stretch cannot show the "
            "image beside it; a fill value or sentinel? replace it first"
        )


def normalize_linear(x: np.ndarray) -> tuple[np.ndarray, Normalization]:
    """Map linear data in any units to [0, 1] with the frame's range, outliers left out.

    ``x``: ``(C, H, W)`` float, finite, not constant. One offset and scale for all
    channels (keeps colour ratios). Returns ``(C, H, W)`` float32 and the map.

    The range is the frame's minimum and maximum with isolated single-pixel outliers
    (a hot pixel, a cosmic-ray hit, a -1e30 sentinel) left out (``_robust_range``); those
    few pixels are clipped to 0 or 1. Where no pixel stands out so, the range is the
    exact minimum and maximum. ValueError, naming the value, when the range is so wide
    against the data's noise that float32 cannot hold the image (a fill value covering
    more than single pixels): its median more than 2**24 noise sigmas above the
    minimum, or the range more than 1e12 noise sigmas.
    """
    arr = _check_chw(x, "x")
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("x: has non-finite values; repair them before normalising")
    if hi == lo:
        raise ValueError(f"x: constant image (every value {lo:g}), cannot normalise")
    noise_px = [_noise_sigma(arr[c]) for c in range(arr.shape[0])]
    robust_lo, robust_hi = _robust_range(arr, noise_px)
    if robust_lo < robust_hi:  # else nothing but outliers stands out: keep them
        if (robust_lo, robust_hi) != (lo, hi):
            logger.debug(
                "range %g..%g without single-pixel outliers (exact %g..%g)",
                robust_lo,
                robust_hi,
                lo,
                hi,
            )
        lo, hi = robust_lo, robust_hi
    _check_precision(arr, lo, hi, noise_px)
    n = Normalization(offset=lo, scale=hi - lo)
    return apply_normalization(arr, n), n


def apply_normalization(x: np.ndarray, n: Normalization) -> np.ndarray:
    """``x`` through the map of :func:`normalize_linear` (fitted on another frame, e.g. the
    original of a starless image), clipped to [0, 1]: ``(C, H, W)`` float32."""
    out = _affine(_check_chw(x, "x"), -n.offset, 1.0 / n.scale, 0.0)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def denormalize_linear(x01: np.ndarray, n: Normalization) -> np.ndarray:
    """Inverse of ``normalize_linear``: ``x01 * scale + offset`` as ``(C, H, W)`` float32."""
    arr = _check_chw(x01, "x01")
    return _affine(arr, 0.0, n.scale, n.offset)
