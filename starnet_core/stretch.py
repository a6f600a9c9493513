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
mapped to [0, 1] with ``normalize_linear``, which uses the exact minimum and
maximum of the whole frame (all channels together, so colour balance is kept)
and is therefore exactly invertible with ``denormalize_linear``.
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
    """Per-channel stretch parameters (linked: all channels equal). JSON-safe via ``to_dict``."""

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


def fit_auto_stretch(
    x: np.ndarray,
    *,
    shadows_clip_mad: float = -2.8,
    target_background: float = 0.25,
    linked: bool = True,
) -> StretchParams:
    """Fit the STF auto-stretch to ``x`` (``(C, H, W)`` float in [0, 1]).

    Per channel: median and normalised MAD (1.4826 MAD) of a deterministic
    subsample; ``shadows = clip(median + shadows_clip_mad * MADn, 0, 1)``,
    ``highlights = 1``, and ``m = mtf(target_background, (median - shadows) / (1 - shadows))``
    so the stretched median lands exactly on ``target_background``. (PixInsight
    omits the ``/ (1 - shadows)`` rescale; with small shadows the two agree to <1%.)
    ``linked``: shadows and median are averaged over channels, as PixInsight does,
    and all channels get the same parameters.
    """
    arr = _check_chw(x, "x")
    if not shadows_clip_mad <= 0.0:
        raise ValueError(f"shadows_clip_mad must be <= 0, got {shadows_clip_mad!r}")
    if not 0.0 < target_background < 1.0:
        raise ValueError(f"target_background must be in (0, 1), got {target_background!r}")
    medians, shadows = [], []
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
        med = float(np.median(sample))
        dev = np.abs(sample - med)
        sigma = MAD_TO_SIGMA * float(np.median(dev))
        if sigma == 0.0:
            sigma = MEAN_DEV_TO_SIGMA * float(dev.mean())
            logger.debug("channel %d: MAD is 0, sigma from mean deviation: %g", c, sigma)
        medians.append(med)
        shadows.append(min(max(med + shadows_clip_mad * sigma, 0.0), 0.999))
    if linked:
        medians = [float(np.mean(medians))] * len(medians)
        shadows = [float(np.mean(shadows))] * len(shadows)
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


def normalize_linear(x: np.ndarray) -> tuple[np.ndarray, Normalization]:
    """Map linear data in any units to [0, 1] with the exact min and max of the frame.

    ``x``: ``(C, H, W)`` float, finite, not constant. One offset and scale for all
    channels (keeps colour ratios). Returns ``(C, H, W)`` float32 and the map.
    """
    arr = _check_chw(x, "x")
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("x: has non-finite values; repair them before normalising")
    if hi == lo:
        raise ValueError(f"x: constant image (every value {lo:g}), cannot normalise")
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
