"""Inpainting by push-pull interpolation (Gortler et al. 1996) and the grain of the
fill, on arrays, no torch.

Shared by the classical baseline (:mod:`starnet_core.classical`: the fill of its star
mask) and the pipeline's rim fill of burnt-out stars
(:func:`starnet_core.masks.fill_burnt_stars`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["add_grain", "pixel_noise", "push_pull", "robust_sigma"]

_MAD_TO_SIGMA = 1.4826


def robust_sigma(values: np.ndarray) -> float:
    """Noise sigma from the lower half of ``values`` (positive outliers such as stars ignored)."""
    v = values.ravel()
    if v.size > 1 << 18:  # a strided sample is plenty for a median
        v = v[:: v.size // (1 << 18)]
    med = float(np.median(v))
    low = med - v[v <= med]
    if low.size == 0:
        return 0.0
    return _MAD_TO_SIGMA * float(np.median(low))


def pixel_noise(channel: np.ndarray, sample: np.ndarray | None = None) -> float:
    """Robust per-pixel noise sigma of an ``(H, W)`` image, from a 3x3 high-pass (over
    the ``sample`` pixels only, an ``(H, W)`` bool, when given)."""
    hp = channel - ndimage.uniform_filter(channel, 3)
    # removing the 3x3 mean (which holds 1/9 of the pixel) scales white noise by sqrt(8/9)
    return robust_sigma(hp if sample is None else hp[sample]) * float(np.sqrt(9 / 8))


def add_grain(
    fill: np.ndarray, image: np.ndarray, hole: np.ndarray, sample: np.ndarray, seed: int
) -> None:
    """Add Gaussian noise at ``image``'s own pixel noise to ``fill`` (both ``(C, H, W)``,
    ``fill`` float32, changed in place) on the ``hole`` pixels (``(H, W)`` bool), so that
    an inpainted area does not show as a smooth patch. Per channel, the sigma is the
    pixel noise of ``image`` (:func:`pixel_noise`) over the ``sample`` pixels; the noise
    comes from ``seed``, so the result is deterministic.
    """
    rng = np.random.default_rng(seed)
    n = int(hole.sum())
    for c in range(image.shape[0]):
        sigma = pixel_noise(image[c], sample)
        fill[c][hole] += rng.standard_normal(n).astype(np.float32) * sigma


def _down(a: np.ndarray) -> np.ndarray:
    """[1 2 1]-blurred 2x decimation of the last two axes (sizes rounded up)."""
    pad = [(0, 0)] * (a.ndim - 2) + [(1, 1 + a.shape[-2] % 2), (1, 1 + a.shape[-1] % 2)]
    p = np.pad(a, pad, mode="edge")
    v = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    h = v[..., :, :-2] + 2 * v[..., :, 1:-1] + v[..., :, 2:]
    return h[..., ::2, ::2] / 16


def _up_axis(a: np.ndarray, n: int, axis: int) -> np.ndarray:
    """Bilinear 2x upsampling along ``axis`` to length ``n``: output ``i`` sits at
    sample ``i / 2``, so even outputs are the samples and odd ones the mean of two
    neighbours, the last sample repeated past the end. Slices, no gathers."""
    a = np.moveaxis(a, axis, -1)
    n_even, n_odd = (n + 1) // 2, n // 2
    short = n_even + 1 - a.shape[-1]
    if short > 0:
        a = np.concatenate([a, np.repeat(a[..., -1:], short, axis=-1)], axis=-1)
    out = np.empty((*a.shape[:-1], n), a.dtype)
    out[..., 0::2] = a[..., :n_even]
    out[..., 1::2] = (a[..., :n_odd] + a[..., 1 : n_odd + 1]) * a.dtype.type(0.5)
    return np.moveaxis(out, -1, axis)


def _up(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear 2x upsampling of the last two axes to ``shape`` (inverse grid of ``_down``)."""
    return _up_axis(_up_axis(a, shape[0], -2), shape[1], -1)


def push_pull(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill unknown pixels of ``values`` (C, H, W) from ``known`` (H, W) bool ones.

    Push: a weight-normalised pyramid of the known pixels; pull: from the
    coarsest level down, each level keeps its own estimate where it has
    support and takes the upsampled coarser one where not. Known pixels keep
    their values. Cost O(H W).
    """
    num = [values * known]
    den = [known.astype(np.float32)]
    # down to at most 2 x 2, so that some level spans every hole: on a frame a few px
    # high, stopping when the short side is 2 left its holes black (``_down`` keeps a
    # side of 1 px). A level whose coarser estimate gets no weight (every pixel with a
    # quarter coverage) is exactly what it was when the pyramid stopped there.
    while max(den[-1].shape) > 2:
        num.append(_down(num[-1]))
        den.append(_down(den[-1]))
    est = num[-1] / np.maximum(den[-1], 1e-12)
    for k in range(len(num) - 2, -1, -1):
        up = _up(est, den[k].shape)
        alpha = np.clip(den[k] * 4, 0, 1)  # a quarter coverage is enough support
        est = alpha * num[k] / np.maximum(den[k], 1e-12) + (1 - alpha) * up
    return np.where(known, values, est).astype(np.float32)
