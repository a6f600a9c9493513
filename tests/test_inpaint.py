"""Push-pull inpainting (:func:`starnet_core.inpaint.push_pull`) on frames of every shape."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from starnet_core.inpaint import _down, _up, push_pull


def push_pull_before(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """push_pull as it was before the pyramid went on down to 2 x 2 (its loop stopped
    when the *short* side reached 2 px): the reference the normal sizes must match."""
    num = [values * known]
    den = [known.astype(np.float32)]
    while min(den[-1].shape) > 2:
        num.append(_down(num[-1]))
        den.append(_down(den[-1]))
    est = num[-1] / np.maximum(den[-1], 1e-12)
    for k in range(len(num) - 2, -1, -1):
        up = _up(est, den[k].shape)
        alpha = np.clip(den[k] * 4, 0, 1)
        est = alpha * num[k] / np.maximum(den[k], 1e-12) + (1 - alpha) * up
    return np.where(known, values, est).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 100), (2, 100), (3, 100), (5, 100), (100, 2), (4, 9)])
def test_holes_of_a_frame_a_few_px_high_are_filled(shape: tuple[int, int]) -> None:
    """The pyramid stopped at once when the short side was <= 2 px, and a level or two
    later when it was a few px: the holes came back 0 (black)."""
    values = np.full((2, *shape), 0.3, np.float32)
    known = np.ones(shape, bool)
    long_axis = 0 if shape[0] >= shape[1] else 1
    hole = slice(shape[long_axis] * 2 // 5, shape[long_axis] * 3 // 5)
    known[(hole, slice(None)) if long_axis == 0 else (slice(None), hole)] = False
    values[:, ~known] = 7.0  # what the hole held: must not leak into the fill
    filled = push_pull(values, known)
    assert (~known).any()
    np.testing.assert_allclose(filled[:, ~known], 0.3, rtol=1e-6)
    np.testing.assert_array_equal(filled[:, known], values[:, known])


@pytest.mark.parametrize("shape", [(64, 64), (37, 250), (100, 333), (257, 129), (480, 640)])
def test_normal_frames_fill_exactly_as_before(shape: tuple[int, int]) -> None:
    """Going on down to 2 x 2 changes nothing where the old coarsest level had a quarter
    coverage everywhere (its blend weight of the coarser estimate is then exactly 0):
    star holes in frames whose short side is tens of px or more, bit for bit."""
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    values = rng.random((3, h, w), dtype=np.float32)
    known = np.ones(shape, bool)
    for radius_px, per_px in ((2.5, 1 / 300), (7.5, 1 / 3000)):  # small and big stars
        no_star = rng.random(shape) > per_px
        known &= ndimage.distance_transform_edt(no_star) > radius_px
    assert 0.05 < 1 - known.mean() < 0.6
    np.testing.assert_array_equal(push_pull(values, known), push_pull_before(values, known))
