"""MTF auto-stretch: identities, exact inversion, fitted background, linear round trip."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy.special import erf

from starnet_core import stretch
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
    assert 0.0 <= p.shadows[0] < float(np.median(x01)) and p.highlights == (1.0,)
    # the cold pixels are single-pixel outliers that normalize_linear clips, so the noise
    # floor is 0 and -2.8 sigma falls on it; a milder clip lands above it
    mild = fit_auto_stretch(x01, shadows_clip_mad=-1.5)
    assert 0.0 < mild.shadows[0] < float(np.median(x01))
    p2 = fit_auto_stretch(x01, target_background=0.15)
    assert abs(float(np.median(apply_stretch(x01, p2))) - 0.15) < 0.01
    assert fit_auto_stretch(x01) == p  # deterministic


@pytest.mark.parametrize("hot", [1e8, 1e10, 1e12])
@pytest.mark.parametrize("pixels", [1, 2])
def test_hot_pixels_do_not_leave_the_frame_black(hot: float, pixels: int) -> None:
    """A flat divided by a dead pixel's ~0 gives enormous values. One alone is left out
    of the range; two side by side set it, the normalised background falls to 1e-8 or
    below, and the stretch must still put it on target (it used to floor at 1e-6 and
    hand the network a black frame)."""
    frame = _linear_frame()
    frame[0, 7, 9 : 9 + pixels] = hot
    x01, n = normalize_linear(frame)
    assert (n.offset + n.scale == float(np.float32(hot))) == (pixels == 2)
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


def _undersampled_field(seed: int = 6, shape: tuple[int, int] = (80, 96)) -> np.ndarray:
    """Sky + noise + bright stars of FWHM 1 px centred on pixels (a neighbour holds only
    15 % of the peak): what a single-pixel outlier rule must not mistake for hot pixels."""
    rng = np.random.default_rng(seed)
    h, w = shape
    frame = 500.0 + rng.normal(0, 10.0, (1, h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    scale = np.sqrt(2.0) / 2.3548  # erf's argument for a FWHM of 1 px

    def in_pixel(d: np.ndarray) -> np.ndarray:  # a 1-D Gaussian integrated over each pixel
        return 0.5 * (erf((d + 0.5) / scale) - erf((d - 0.5) / scale))

    for _ in range(12):
        y0, x0, flux = rng.integers(2, h - 2), rng.integers(2, w - 2), rng.uniform(2e3, 6e4)
        frame[0] += flux * in_pixel(yy - y0) * in_pixel(xx - x0)
    return frame.astype(np.float32)


def _reference_range(x: np.ndarray) -> tuple[float, float]:
    """normalize_linear's outlier rule, written out over every pixel (no shortcuts)."""
    lo, hi = np.inf, -np.inf
    for ch in x:
        a = ch.astype(np.float64)
        h, w = a.shape
        up = np.pad(a, 1, constant_values=-np.inf)
        down = np.pad(a, 1, constant_values=np.inf)
        nb_max = np.full(a.shape, -np.inf)
        nb_min = np.full(a.shape, np.inf)
        for dy in range(3):
            for dx in range(3):
                if dy != 1 or dx != 1:
                    nb_max = np.maximum(nb_max, up[dy : dy + h, dx : dx + w])
                    nb_min = np.minimum(nb_min, down[dy : dy + h, dx : dx + w])
        noise = stretch.OUTLIER_NOISE_SIGMAS * stretch._noise_sigma(ch)
        slack = stretch.OUTLIER_SLOPE * np.maximum(nb_max - nb_min - noise, 0) + noise
        hi = max(hi, float(np.where(a > nb_max + slack, nb_max, a).max()))
        lo = min(lo, float(np.where(a < nb_min - slack, nb_min, a).min()))
    return lo, hi


def test_one_hot_pixel_does_not_compress_the_stars() -> None:
    """A hot pixel / cosmic-ray hit at 1.5x the brightest star used to set the range: the
    stars reached only 2/3 of it. Now it is clipped, and the map is the clean frame's."""
    clean = _linear_frame(seed=7, shape=(3, 64, 80))
    _, n_clean = normalize_linear(clean)
    for c, y, x in ((0, 20, 30), (2, 0, 0), (1, 63, 41)):  # mid-frame, a corner, an edge
        frame = clean.copy()
        frame[c, y, x] = 1.5 * float(clean.max())
        x01, n = normalize_linear(frame)
        assert n == n_clean
        assert (
            x01[c, y, x] == 1.0
            and float(np.delete(x01.ravel(), np.ravel_multi_index((c, y, x), x01.shape)).max())
            == 1.0
        )  # the brightest star still reaches 1


def test_sentinel_pixel_does_not_zero_the_frame() -> None:
    """One -1e30 (a blank sentinel) used to map every real pixel to 1.0 in float32: a
    starless frame of zeros. Now it is clipped to 0 and the frame stretches as before."""
    clean = _linear_frame(seed=8)
    frame = clean.copy()
    frame[0, 5, 5] = -1e30
    x01, n = normalize_linear(frame)
    x01_clean, n_clean = normalize_linear(clean)
    assert n == n_clean and x01[0, 5, 5] == 0.0
    y = apply_stretch(x01, fit_auto_stretch(x01))
    assert abs(float(np.median(y)) - 0.25) < 0.01
    assert float(np.percentile(y, 99.9)) > 0.5


@pytest.mark.parametrize(("value", "where"), [(-1e30, "below"), (1e30, "above")])
def test_far_out_block_is_a_clear_error(value: float, where: str) -> None:
    """A fill value over more than single pixels is part of the range; when float32 [0, 1]
    cannot hold the image beside it, the error names the value and where it is."""
    frame = _linear_frame(seed=9)
    frame[0, 10:12, 20:22] = value
    named = re.escape(f"value {value:g} (channel 0, row 10, column 20)")
    with pytest.raises(ValueError, match=f"{named}.* {where} the median"):
        normalize_linear(frame)


def test_frames_without_outliers_keep_the_exact_range() -> None:
    """No isolated outlier: the map is the exact min and max, as it always was."""
    frames = [
        _linear_frame(seed=10, shape=(3, 50, 70)),
        _undersampled_field(),
        np.random.default_rng(11).normal(100.0, 3.0, (1, 300, 300)).astype(np.float32),
        np.random.default_rng(12).uniform(0, 1, (3, 40, 40)).astype(np.float32) ** 6,
    ]
    frames[0][frames[0] == 100.0] = 900.0  # _linear_frame's cold pixels are outliers
    for frame in frames:
        _, n = normalize_linear(frame)
        lo, hi = float(frame.min()), float(frame.max())
        assert (n.offset, n.scale) == (lo, hi - lo)


def test_undersampled_stars_keep_their_peaks() -> None:
    """A FWHM 1 px star's peak stands 6.6 times its neighbours' spread above them: it is
    structure, not a hot pixel. Their peaks are the range's top, a hot pixel beside is not."""
    frame = _undersampled_field()
    frame[0, 3, 90] = 3.0 * float(frame.max())
    _, n = normalize_linear(frame)
    assert n.offset + n.scale == float(np.sort(frame.ravel())[-2])


def test_robust_range_matches_its_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    """normalize_linear looks only at the extremes and at local extrema beyond each row
    block's pair bounds; it must agree with the rule applied to every pixel."""
    rng = np.random.default_rng(13)
    for trial in range(60):
        c, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(2, 30))
        x = rng.normal(100.0, 5.0, (c, h, w))
        if trial % 3 == 0:  # a star, sometimes undersampled
            yy, xx = np.mgrid[0:h, 0:w]
            r2 = (yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2
            x += rng.uniform(0, 5000) * np.exp(-r2 / (2 * rng.uniform(0.4, 2.0) ** 2))
        for _ in range(int(rng.integers(0, 6))):
            value = rng.choice([1e4, -1e4, 300.0, -100.0, 1e9, -1e9])
            x[rng.integers(c), rng.integers(h), rng.integers(w)] = value
        x = x.astype(np.float32)
        monkeypatch.setattr(stretch, "_BLOCK_PX", int(rng.integers(1, 300)))  # many blocks
        _, n = normalize_linear(x)
        lo, hi = _reference_range(x)
        if lo < hi:
            assert (n.offset, n.offset + n.scale) == (lo, hi)


def test_plateau_at_the_minimum_is_left_out() -> None:
    """60 % of the frame exactly 0 (a mosaic canvas): median and MAD used to be 0, the
    midtones ~1e-15 and the network's input white. Now the image part gets the stretch
    it gets alone."""
    image = normalize_linear(_linear_frame(seed=14))[0]
    assert np.count_nonzero(image == 0.0) < 0.01 * image.size
    canvas = np.zeros((1, 96, 320), np.float32)
    canvas[:, :, :128] = image
    alone, on_canvas = fit_auto_stretch(image), fit_auto_stretch(canvas)
    assert on_canvas == alone
    y = apply_stretch(canvas, on_canvas)[:, :, :128]
    assert abs(float(np.median(y)) - 0.25) < 0.01 and float(np.mean(y > 0.98)) < 0.1  # stars


def test_background_clipped_at_zero_stays_grey() -> None:
    """Sky-subtracted data clipped at 0 (half the pixels 0): the sky is shown grey, not
    white (the clipped half black, the rest around the target)."""
    image = normalize_linear(_linear_frame(seed=15))[0]
    sub = np.clip(image - np.median(image), 0.0, None).astype(np.float32)
    assert np.mean(sub == 0.0) >= 0.5
    y = apply_stretch(sub, fit_auto_stretch(sub))
    assert abs(float(np.median(y[sub > 0])) - 0.25) < 0.01
    assert float(np.mean(y > 0.98)) < 0.1  # the stars


def test_small_plateau_leaves_the_fit_unchanged() -> None:
    """Up to PLATEAU_FRACTION of the samples at the minimum (clipped blacks of a stretched
    frame) the statistics are those of all pixels, bit for bit."""
    x = normalize_linear(_linear_frame(seed=16))[0]
    x.reshape(-1)[: int(0.2 * x.size)] = 0.0
    sample = x.reshape(-1).astype(np.float64)
    med = float(np.median(sample))
    sigma = stretch.MAD_TO_SIGMA * float(np.median(np.abs(sample - med)))
    p = fit_auto_stretch(x)
    assert p.shadows[0] == min(max(med - 2.8 * sigma, 0.0), 0.999)


def test_fit_needs_something_above_the_plateau(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="every channel is constant"):
        fit_auto_stretch(np.full((3, 8, 8), 0.5, np.float32))
    # one constant channel among others: fitted as before (shadows at its value)
    x = np.random.default_rng(17).uniform(0.1, 0.3, (3, 8, 8)).astype(np.float32)
    x[0] = 1.0
    p = fit_auto_stretch(x, linked=False)
    assert p.shadows[0] == 0.999 and np.all(apply_stretch(x, p)[0] == 1.0)
    # a few stars on a black canvas that the subsample misses are still found
    monkeypatch.setattr(stretch, "MAX_SAMPLES_PER_CHANNEL", 100)
    stars = np.zeros((1, 40, 41), np.float32)
    sampled = stretch._sample(np.arange(stars.size, dtype=np.float32).reshape(40, 41))
    unsampled = np.setdiff1d(np.arange(stars.size), sampled.astype(int))[::50]
    stars.reshape(-1)[unsampled] = np.linspace(0.2, 0.9, unsampled.size)
    assert np.all(stretch._sample(stars[0]) == 0.0) and unsampled.size > 20
    p = fit_auto_stretch(stars)
    assert float(np.median(apply_stretch(stars, p)[stars > 0])) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("flat_adu", [0.0, 500.0, 5000.0])
def test_linked_fit_leaves_a_constant_channel_out_of_the_mean(flat_adu: float) -> None:
    """A constant channel (a flat fill, an empty channel of a bicolour composite) used
    to be averaged into the linked median and shadows: at 500 ADU among a sky at 1000
    ADU its shadows sat above the others' background and stretched it to black; at 0 its
    median pulled theirs up to 0.4. It keeps its own parameters now."""
    frame = np.concatenate([_linear_frame(seed=s) for s in (18, 19, 20)])  # sky 1000 ADU
    frame[2] = flat_adu
    x01, _ = normalize_linear(frame)
    reference = np.ascontiguousarray(x01[:2])  # the two real channels alone
    linked = fit_auto_stretch(x01, linked=True)
    assert linked.shadows[:2] == fit_auto_stretch(reference, linked=True).shadows
    assert linked.midtones[:2] == fit_auto_stretch(reference, linked=True).midtones
    y = apply_stretch(x01, linked)
    for c in range(2):  # the real channels' sky lands near the target, not at 0
        assert abs(float(np.median(y[c])) - 0.25) < 0.05
    # the constant channel keeps the parameters it gets unlinked, which keep it constant
    unlinked = fit_auto_stretch(x01, linked=False)
    assert (linked.shadows[2], linked.midtones[2]) == (unlinked.shadows[2], unlinked.midtones[2])
    assert linked.shadows[2] == float(x01[2, 0, 0])
    assert np.all(y[2] == y[2, 0, 0])
    back = restore_clipped(x01, invert_stretch(y, linked), linked)
    np.testing.assert_array_equal(back[2], x01[2])
