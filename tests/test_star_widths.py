"""benchmarks.star_widths: bright stars' equivalent radius against faint ones'."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.star_widths import median_radii, star_widths


def _star(img: np.ndarray, x: float, y: float, peak: float, sigma: float) -> None:
    yy, xx = np.mgrid[0 : img.shape[1], 0 : img.shape[2]]
    img += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))[None]


def test_a_wide_bright_star_against_sharp_faint_ones() -> None:
    rng = np.random.default_rng(0)
    clean = (0.1 + rng.normal(0, 0.002, (3, 128, 128))).astype(np.float32)
    orig = clean.copy()
    _star(orig, 20, 20, 0.3, 1.0)
    _star(orig, 70, 20, 0.3, 1.0)
    _star(orig, 50, 65, 0.88, 3.0)  # bright: the original peaks at 0.98
    _star(orig, 100, 100, 3.0, 3.0)  # saturated: a flat clipped core is one peak
    # a blend (two peaks in one region) is no single star and is left out
    _star(orig, 15, 80, 0.3, 1.0)
    _star(orig, 19, 80, 0.3, 1.0)
    orig = np.clip(orig, 0, 1)
    peaks, radii = star_widths(orig, clean)
    assert len(peaks) == 4
    n_bright, n_faint, r_bright, r_faint = median_radii(peaks, radii)
    assert (n_bright, n_faint) == (2, 2)
    assert r_faint == pytest.approx(np.sqrt(2), rel=0.1)  # sqrt(2) sigma for a Gaussian
    saturated = radii[np.argmax(peaks)]
    assert saturated > 3 * np.sqrt(2)  # the clipped core widens it
    assert r_bright / r_faint > 3


def test_no_bright_star_gives_nan_and_bad_input_is_refused() -> None:
    clean = np.full((3, 48, 48), 0.1, np.float32)
    orig = clean.copy()
    _star(orig, 24, 24, 0.3, 1.0)
    assert np.isnan(median_radii(*star_widths(orig, clean))[2])
    assert star_widths(orig[:, :0, :0], clean[:, :0, :0])[0].size == 0
    with pytest.raises(ValueError, match="one shape"):
        star_widths(orig, clean[:, :40])
    with pytest.raises(ValueError, match="threshold"):
        star_widths(orig, clean, threshold=0)
