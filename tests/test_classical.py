"""Classical star removal: stars go, galaxies and background stay, inputs are checked."""

from __future__ import annotations

import time

import numpy as np
import pytest

from starnet_core import metrics
from starnet_core.classical import classical_remove_stars, detect_stars, push_pull

SIZE = 128
STAR_FWHM_PX = 2.5


def _gauss(size: int, x: float, y: float, fwhm_px: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    s = fwhm_px / 2.3548
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s)).astype(np.float32)


def _scene(seed: int = 0, *, spikes: bool = False) -> dict[str, np.ndarray]:
    """A stretched-looking field: gradient + soft nebula + noise, stars, one galaxy."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    base = 0.15 + 0.05 * xx + 0.1 * _gauss(SIZE, 30, 90, 60)
    truth = np.repeat(base[None], 3, 0) * np.array([1.0, 0.9, 0.8], np.float32)[:, None, None]
    # a small elliptical exponential galaxy, wider than the stars: must stay
    gx, gy = 96.0, 96.0
    r = np.sqrt(((xx * SIZE - gx) / 1.0) ** 2 + ((yy * SIZE - gy) / 0.6) ** 2)
    truth = truth + 0.12 * np.exp(-r / 4.0)[None].astype(np.float32)
    truth = truth + rng.normal(0, 0.004, truth.shape).astype(np.float32)
    star_xy = np.array(
        [[20, 20], [60, 25], [100, 40], [30, 60], [70, 70], [45, 105], [110, 110], [15, 90]],
        np.float32,
    )
    amps = np.array([0.08, 0.15, 0.3, 0.5, 3.0, 0.2, 0.1, 0.4], np.float32)  # [4] burns out
    stars = np.zeros_like(base)
    for (x, y), a in zip(star_xy, amps, strict=True):
        stars += a * _gauss(SIZE, x, y, STAR_FWHM_PX)
    if spikes:  # thin cross through the burnt-out star
        x0, y0 = star_xy[4].astype(int)
        stars[y0, x0 - 15 : x0 + 16] += 0.3
        stars[y0 - 15 : y0 + 16, x0] += 0.3
    original = np.clip(truth + stars[None] * np.array([1.0, 1.0, 0.95])[:, None, None], 0, 1)
    return {
        "original": original.astype(np.float32),
        "truth": np.clip(truth, 0, 1).astype(np.float32),
        "star_xy": star_xy,
        "galaxy_xy": np.array([[gx, gy]], np.float32),
    }


def test_removes_stars_keeps_galaxy_and_far_background() -> None:
    s = _scene()
    out = classical_remove_stars(s["original"])
    frac = metrics.residual_star_flux(s["original"], out, s["truth"], s["star_xy"], 4.0)
    assert np.all(np.isfinite(frac))
    assert np.max(frac) < 0.15, frac
    kept = metrics.structure_kept(s["original"], out, s["truth"], s["galaxy_xy"], 6.0)
    assert kept[0] > 0.85
    assert metrics.psnr(out, s["truth"]) > metrics.psnr(s["original"], s["truth"]) + 10
    # far from every star the input comes back bit for bit, but for the few 3-sigma noise
    # peaks (about one per 3000 px, each a small disc)
    far = metrics.background_mask(s["original"], s["truth"], None, far_px=30.0)
    assert far.sum() > 500
    changed = (out != s["original"]).any(axis=0)
    assert changed[far].mean() < 0.15
    assert not changed.all()


def test_burnt_out_star_with_spikes_is_removed() -> None:
    s = _scene(1, spikes=True)
    det = detect_stars(s["original"])
    assert det.saturated.any()
    out = classical_remove_stars(s["original"])
    x0, y0 = s["star_xy"][4].astype(int)
    arm = (slice(None), y0, slice(x0 + 8, x0 + 16))  # the outer part of one spike
    left = float(np.mean(out[arm] - s["truth"][arm]))
    assert left < 0.05 * float(np.mean(s["original"][arm] - s["truth"][arm]) + 1e-6) + 0.02


def test_output_contract_and_determinism() -> None:
    s = _scene(2)
    a = classical_remove_stars(s["original"])
    b = classical_remove_stars(s["original"])
    assert a.shape == s["original"].shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    c = classical_remove_stars(s["original"], seed=1)
    mask = detect_stars(s["original"]).mask
    np.testing.assert_array_equal(a[:, ~mask], c[:, ~mask])
    assert not np.array_equal(a[:, mask], c[:, mask])
    quiet = classical_remove_stars(s["original"], add_noise=False)
    assert np.std(quiet[:, mask] - a[:, mask]) > 0.001


def test_mono_and_tiny_images() -> None:
    s = _scene(3)
    mono = s["original"][:1].copy()
    out = classical_remove_stars(mono)
    assert out.shape == mono.shape
    tiny = np.full((3, 5, 7), 0.2, np.float32)
    np.testing.assert_array_equal(classical_remove_stars(tiny), tiny)


def test_noise_only_is_left_alone() -> None:
    rng = np.random.default_rng(4)
    img = (0.2 + rng.normal(0, 0.01, (3, SIZE, SIZE))).astype(np.float32)
    det = detect_stars(img)
    assert det.mask.mean() < 0.02


def test_push_pull_follows_a_ramp() -> None:
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = (0.002 * xx + 0.001 * yy)[None]
    known = np.ones((64, 64), bool)
    known[20:40, 25:45] = False
    filled = push_pull(np.where(known, ramp, 5.0).astype(np.float32), known)
    np.testing.assert_array_equal(filled[:, known], ramp[:, known])
    assert np.abs(filled - ramp).max() < 0.01


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"detect_sigma": 0.0}, "detect_sigma"),
        ({"dilate_px": -1}, "dilate_px"),
        ({"dilate_px": 1.5}, "dilate_px"),
        ({"max_star_px": 1}, "max_star_px"),
        ({"psf_factor": 0.5}, "psf_factor"),
        ({"background_px": 2}, "background_px"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, float], name: str) -> None:
    img = np.zeros((3, 16, 16), np.float32)
    with pytest.raises(ValueError, match=name):
        classical_remove_stars(img, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("image", "text"),
    [
        (np.zeros((16, 16), np.float32), "shape"),
        (np.zeros((2, 16, 16), np.float32), "shape"),
        (np.zeros((3, 16, 16), np.float64), "float32"),
        (np.full((3, 16, 16), np.nan, np.float32), "non-finite"),
    ],
)
def test_bad_images_are_rejected(image: np.ndarray, text: str) -> None:
    with pytest.raises(ValueError, match=text):
        classical_remove_stars(image)


@pytest.mark.slow
def test_speed_half_a_megapixel_per_second() -> None:
    from starnet_core.synthetic import make_pair

    original, _, _ = make_pair(np.random.default_rng(9_000_004), 512)
    t = time.process_time()
    classical_remove_stars(original)
    assert 0.262144 / (time.process_time() - t) >= 0.5


def test_typical_star_hwhm_follows_the_frames_stars() -> None:
    from starnet_core.classical import typical_star_hwhm

    rng = np.random.default_rng(5)
    xy = rng.uniform(10, 246, (60, 2))

    def field(fwhm_px: float, size: int = 256) -> np.ndarray:
        img = 0.15 + rng.normal(0, 0.003, (size, size)).astype(np.float32)
        for x, y in xy:
            img += 0.4 * _gauss(size, x, y, fwhm_px)
        return np.repeat(np.clip(img, 0, 1)[None], 3, 0).astype(np.float32)

    widths = [typical_star_hwhm(field(f)) for f in (2.0, 3.5, 6.0)]
    assert all(w is not None for w in widths)
    assert widths[0] < widths[1] < widths[2]  # type: ignore[operator]
    # about half the FWHM, widened a little by the detector's unit smoothing
    assert 0.45 * 3.5 < widths[1] < 0.75 * 3.5  # type: ignore[operator]
    # mono frames measure the same; a large frame on its centred window
    frame = field(3.5)
    assert typical_star_hwhm(frame[:1]) == pytest.approx(widths[1], rel=0.05)
    big = np.pad(frame, ((0, 0), (300, 300), (300, 300)), mode="reflect")
    assert typical_star_hwhm(big, window_px=256) == typical_star_hwhm(frame)
    # no star: None, or the default asked for
    flat = (0.2 + rng.normal(0, 0.01, (3, 128, 128))).astype(np.float32)
    assert typical_star_hwhm(flat) is None
    assert typical_star_hwhm(flat, default=1.8) == 1.8
    with pytest.raises(ValueError, match="window_px"):
        typical_star_hwhm(frame, window_px=8)
    with pytest.raises(ValueError, match="finite"):
        typical_star_hwhm(np.full((3, 64, 64), np.nan, np.float32))
