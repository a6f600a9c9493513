"""MTF auto-stretch: identities, exact inversion, fitted background, linear round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from starnet_core.stretch import (
    Normalization,
    StretchParams,
    apply_stretch,
    denormalize_linear,
    fit_auto_stretch,
    invert_stretch,
    mtf,
    mtf_inverse,
    normalize_linear,
    restore_clipped,
)


def _linear_frame(
    seed: int = 0, shape: tuple[int, int, int] = (1, 96, 128), sky: float = 1000.0
) -> np.ndarray:
    """A linear frame in ADU: sky + noise + a faint nebula + Gaussian stars + cold pixels."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    frame = np.empty(shape, np.float64)
    for ch in range(c):
        nebula = 40.0 * np.exp(-((xx - w * 0.4) ** 2 + (yy - h * 0.6) ** 2) / (2 * (w / 5) ** 2))
        stars = np.zeros((h, w))
        for _ in range(40):
            y0, x0, flux = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(200, 30000)
            stars += flux * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.3**2))
        frame[ch] = sky * (1 + 0.3 * ch) + nebula + stars + rng.normal(0, 12.0, (h, w))
        frame[ch].flat[rng.integers(0, h * w, 5)] = 100.0  # cold pixels: well below the sky
    return np.clip(np.round(frame), 0, 32767).astype(np.float32)


def test_mtf_identities() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    for m in (0.001, 0.05, 0.25, 0.5, 0.8, 0.999):
        y = mtf(m, x)
        assert y.dtype == np.float32
        assert y[0] == 0.0 and y[-1] == pytest.approx(1.0, abs=1e-7)
        assert float(mtf(m, np.array(m))) == pytest.approx(0.5, abs=1e-7)
        assert np.all(np.diff(y) >= 0)
        np.testing.assert_allclose(mtf_inverse(m, y), mtf(1 - m, y), atol=0)
        np.testing.assert_allclose(mtf_inverse(m, mtf(m, x)), x, atol=2e-6 / m)
    np.testing.assert_allclose(mtf(0.5, x), x, atol=1e-7)
    with pytest.raises(ValueError, match="midtones balance must be in"):
        mtf(0.0, x)
    per_channel = mtf(np.array([0.1, 0.5, 0.9]).reshape(3, 1, 1), np.full((3, 2, 2), 0.1))
    assert per_channel[1, 0, 0] == pytest.approx(0.1) and per_channel[0, 0, 0] == 0.5


def test_stretch_then_invert_is_identity_above_clip() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (3, 40, 50)).astype(np.float32) ** 4  # mostly dark, like linear data
    p = StretchParams(
        shadows=(0.01, 0.02, 0.0), midtones=(0.02, 0.2, 0.6), highlights=(1.0, 0.9, 1.0)
    )
    y = apply_stretch(x, p)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    back = invert_stretch(y, p)
    s = np.array(p.shadows).reshape(3, 1, 1)
    h = np.array(p.highlights).reshape(3, 1, 1)
    inside = (x > s) & (x < h)
    m = np.array(p.midtones).reshape(3, 1, 1)
    tol = np.broadcast_to(1e-6 + 2e-7 / m, x.shape)  # float32 y, magnified by the curve's slope
    assert np.all(np.abs(back - x)[inside] <= tol[inside])
    assert np.all(back[x <= s] == np.broadcast_to(s, x.shape)[x <= s].astype(np.float32))
    np.testing.assert_allclose(back[x >= h], np.broadcast_to(h, x.shape)[x >= h], rtol=1e-6)


def test_fit_puts_background_at_target() -> None:
    x01, _ = normalize_linear(_linear_frame())
    p = fit_auto_stretch(x01)
    y = apply_stretch(x01, p)
    assert abs(float(np.median(y)) - 0.25) < 0.01
    assert 0.0 < p.shadows[0] < float(np.median(x01)) and p.highlights == (1.0,)
    p2 = fit_auto_stretch(x01, target_background=0.15)
    assert abs(float(np.median(apply_stretch(x01, p2))) - 0.15) < 0.01
    assert fit_auto_stretch(x01) == p  # deterministic


@pytest.mark.parametrize("hot", [1e8, 1e10, 1e12])
def test_one_hot_pixel_does_not_leave_the_frame_black(hot: float) -> None:
    """A flat divided by a dead pixel's ~0 gives one enormous value: the normalised
    background falls to 1e-8 or below, and the stretch must still put it on target
    (it used to floor at 1e-6 and hand the network a black frame)."""
    frame = _linear_frame()
    frame[0, 7, 9] = hot
    x01, _ = normalize_linear(frame)
    y = apply_stretch(x01, fit_auto_stretch(x01))
    assert abs(float(np.median(y)) - 0.25) < 0.01
    assert float(np.percentile(y, 99.9)) > 0.5  # the stars still stand out


def test_linked_and_unlinked() -> None:
    frame = _linear_frame(seed=2, shape=(3, 64, 80))
    frame[2] *= 3.0  # a strong colour cast in the blue channel
    x01, _ = normalize_linear(frame)
    linked = fit_auto_stretch(x01, linked=True)
    assert len(set(linked.shadows)) == 1 and len(set(linked.midtones)) == 1
    unlinked = fit_auto_stretch(x01, linked=False)
    assert len(set(unlinked.midtones)) == 3
    y = apply_stretch(x01, unlinked)
    for c in range(3):  # unlinked: every channel's background on target, cast removed
        assert abs(float(np.median(y[c])) - 0.25) < 0.01
    y_linked = apply_stretch(x01, linked)
    assert np.median(y_linked[2]) > np.median(y_linked[0]) + 0.1  # linked keeps the cast


def test_fit_subsamples_huge_frames_deterministically() -> None:
    rng = np.random.default_rng(3)
    big = (rng.gamma(4.0, 0.01, (1, 1100, 1024))).astype(np.float32)  # > 1 M pixels
    p = fit_auto_stretch(big)
    assert abs(float(np.median(apply_stretch(big, p))) - 0.25) < 0.01
    assert fit_auto_stretch(big) == p


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="expected \\[0, 1\\]"):
        fit_auto_stretch(_linear_frame())
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        fit_auto_stretch(np.zeros((10, 10), np.float32))
    with pytest.raises(ValueError, match="target_background"):
        fit_auto_stretch(np.zeros((1, 4, 4), np.float32), target_background=1.5)
    p = StretchParams((0.0,), (0.5,), (1.0,))
    with pytest.raises(ValueError, match="3 channel"):
        apply_stretch(np.zeros((3, 4, 4), np.float32), p)


def test_params_serialise_and_validate() -> None:
    p = StretchParams(shadows=(0.01, 0.02, 0.03), midtones=(0.1, 0.2, 0.3), highlights=(1, 1, 1))
    again = StretchParams.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and isinstance(again.highlights[0], float)
    with pytest.raises(ValueError, match="midtones must be in"):
        StretchParams((0.0,), (1.0,), (1.0,))
    with pytest.raises(ValueError, match="shadows < highlights"):
        StretchParams((0.5,), (0.5,), (0.4,))
    with pytest.raises(ValueError, match="lengths"):
        StretchParams((0.0, 0.0), (0.5,), (1.0,))
    with pytest.raises(ValueError, match="expected keys"):
        StretchParams.from_dict({"shadows": [0.0]})


def test_normalization_roundtrip() -> None:
    frame = _linear_frame(seed=4, shape=(3, 32, 40)) - 500.0  # negative values too
    x01, n = normalize_linear(frame)
    assert x01.dtype == np.float32 and x01.min() == 0.0 and x01.max() == 1.0
    assert n.offset == float(frame.min()) and n.scale == float(frame.max() - frame.min())
    assert Normalization.from_dict(json.loads(json.dumps(n.to_dict()))) == n
    np.testing.assert_allclose(denormalize_linear(x01, n), frame, rtol=0, atol=n.scale * 1e-7)
    with pytest.raises(ValueError, match="constant image"):
        normalize_linear(np.full((1, 4, 4), 3.0, np.float32))
    with pytest.raises(ValueError, match="scale must be"):
        Normalization(offset=0.0, scale=0.0)


def test_linear_roundtrip_through_stretch() -> None:
    """linear -> normalise -> stretch -> invert -> restore -> denormalise == input."""
    frame = _linear_frame(seed=5, shape=(3, 64, 80))
    x01, n = normalize_linear(frame)
    p = fit_auto_stretch(x01)
    assert np.count_nonzero(x01 <= p.shadows[0]) > 0  # some pixels are really clipped
    y = apply_stretch(x01, p)
    back01 = restore_clipped(x01, invert_stretch(y, p), p)
    back = denormalize_linear(back01, n)
    tol = n.scale * (1e-6 + 1e-7 / p.midtones[0])
    np.testing.assert_allclose(back, frame, rtol=0, atol=tol)
    assert np.abs(back - frame).max() < 0.5  # ADU: under one count even on star cores
    # the round-tripped frame stretches again exactly like the original
    again = fit_auto_stretch(normalize_linear(back)[0])
    np.testing.assert_allclose(again.midtones, p.midtones, rtol=1e-4)


def test_restore_clipped_only_below_shadows() -> None:
    p = StretchParams((0.1,), (0.3,), (1.0,))
    original = np.array([[[0.05, 0.1, 0.5, 1.0]]], np.float32)
    starless = np.array([[[0.1, 0.1, 0.2, 0.4]]], np.float32)
    expected = np.array([[[0.05, 0.1, 0.2, 0.4]]], np.float32)
    np.testing.assert_array_equal(restore_clipped(original, starless, p), expected)
