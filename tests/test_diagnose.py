"""benchmarks.diagnose: the edge band, the star-pixel bias and the aperture SNR."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.diagnose import (
    aperture_snr,
    burnt_halos,
    edge_band,
    grey_pull,
    keep_error,
    keep_error_taken,
    main,
    star_pixel_bias,
)


def test_edge_band_marks_the_border_only() -> None:
    band = edge_band((10, 12), 2)
    assert band[:2].all() and band[-2:].all() and band[:, :2].all() and band[:, -2:].all()
    assert not band[2:-2, 2:-2].any()
    assert not edge_band((5, 5), 0).any()
    with pytest.raises(ValueError, match="edge band must be >= 0 px"):
        edge_band((5, 5), -1)


def test_star_pixel_bias_reads_a_grey_fill_on_a_red_sky() -> None:
    truth = np.zeros((3, 8, 8), np.float32) + np.array([0.4, 0.15, 0.2], np.float32)[:, None, None]
    original = truth.copy()
    original[:, 3:5, 3:5] = 1.0  # a clipped white core
    output = truth.copy()
    output[:, 3:5, 3:5] = 0.25  # filled grey
    bias, share = star_pixel_bias(original, output, truth)
    assert bias == pytest.approx([-0.15, 0.10, 0.05], abs=1e-6)
    assert share == pytest.approx(1.0)  # a uniform fill error is all bias
    # the same grey fill, projected on the red sky's colour direction: pulled to grey
    assert grey_pull(original, output, truth) < -0.1
    assert grey_pull(original, truth, truth) == pytest.approx(0.0)  # filled with the sky
    assert np.isnan(grey_pull(truth, output, truth))  # no clipped core
    none, nan_share = star_pixel_bias(truth, truth, truth)
    assert np.isnan(none).all() and np.isnan(nan_share)


def test_aperture_snr_scales_with_the_star_and_the_noise() -> None:
    rng = np.random.default_rng(0)
    truth = (0.2 + 0.01 * rng.standard_normal((3, 64, 64))).astype(np.float32)
    yy, xx = np.mgrid[0:64, 0:64]
    star = np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * 1.5**2))
    xy = np.array([[32.0, 32.0]])
    faint = aperture_snr(truth + 0.02 * star, truth, xy, 3.0)
    bright = aperture_snr(truth + 0.2 * star, truth, xy, 3.0)
    assert bright[0] == pytest.approx(10 * faint[0], rel=1e-3)
    assert 5 < faint[0] < 50


def test_keep_error_splits_the_error_by_the_mask() -> None:
    truth = np.full((3, 20, 20), 0.2, np.float32)
    out = truth.copy()
    out[:, 5, 5] -= 0.1  # a darkened galaxy pixel
    out[:, 15, 15] += 0.1  # a star left, far from it
    keep = np.zeros((20, 20), bool)
    keep[5, 5] = True
    share, without = keep_error(out, truth, keep, grow_px=1)
    assert share == pytest.approx(0.5)
    # the star alone: MSE 0.01 on 1 of 400 pixels
    assert without == pytest.approx(10 * np.log10(400 / 0.01), abs=1e-3)
    assert keep_error(truth, truth, keep) == (0.0, float("inf"))
    assert keep_error(out, truth, np.zeros((20, 20), bool))[0] == 0.0
    # restricted to some pixels: the star's half of the frame holds no galaxy error
    right = np.zeros((20, 20), bool)
    right[:, 10:] = True
    assert keep_error(out, truth, keep, 1, right) == (0.0, pytest.approx(10 * np.log10(200 / 0.01)))
    assert keep_error(out, truth, keep, 1, ~right)[0] == 1.0


def test_keep_error_taken_counts_galaxy_light_taken_as_a_star() -> None:
    truth = np.full((3, 20, 20), 0.2, np.float32)
    keep = np.zeros((20, 20), bool)
    keep[2:6, 2:6] = True  # a galaxy
    keep[12:16, 12:16] = True  # another, with a star on it
    original = truth.copy()
    original[:, 14, 14] += 0.5
    out = truth.copy()
    out[:, 3, 3] -= 0.2  # its core taken out as a star (layer 0.2)
    out[:, 4, 4] -= 0.05  # dimmed a little (layer 0.05)
    out[:, 13, 13] -= 0.2  # under the star's light: not counted
    total, taken, px, px_taken = keep_error_taken(original, out, truth, keep)
    # 11 of the second galaxy's pixels lie within 2 px (4-connected steps) of the star
    assert px == 16 + 16 - 11
    assert px_taken == 1
    assert total == pytest.approx(3 * (0.2**2 + 0.05**2))
    assert taken == pytest.approx(3 * 0.2**2)
    assert keep_error_taken(original, truth, truth, keep)[:2] == (0.0, 0.0)


def test_bad_edge_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--edge", "0"]) == 2
    assert "--edge must be >= 1 px" in capsys.readouterr().err
    assert main(["--cast-scenes", "-1"]) == 2
    assert "--cast-scenes must be >= 0" in capsys.readouterr().err
    assert main(["--keep-grow", "-1"]) == 2
    assert "--keep-grow must be >= 0 px" in capsys.readouterr().err


def test_sky_colour_sweep_runs_and_refuses_bad_options(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import sky_colour

    assert sky_colour.main(["--scenes", "0"]) == 2
    assert "--scenes must be >= 1" in capsys.readouterr().err
    missing = tmp_path / "none.safetensors"
    assert sky_colour.main(["--weights", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    no_real = str(tmp_path / "no-pairs")
    assert sky_colour.main(["--scenes", "1", "--real", no_real, "--threads", "1"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| setting | cast: mean / worst dB | default: mean / worst dB |")
    assert len(table) == 2 + len(sky_colour.SETTINGS)


def test_cast_fit_runs_and_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import cast_fit

    assert cast_fit.main(["--steps", "0"]) == 2
    assert "--steps >= 1" in capsys.readouterr().err
    assert cast_fit.main(["--lr", "nan"]) == 2
    assert cast_fit.main(["--steps", "1", "--threads", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].startswith("| step | core abs error |") and rows[-1].startswith("| 1 |")


def test_burnt_halos_measure_core_extent_and_glow() -> None:
    """A clipped star of known profile: the core's radius, the halo's extent in core
    radii, and the glow an output leaves on the halo."""
    size = 120
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(yy - 60.0, xx - 60.0)
    sky = 0.2
    truth = np.full((3, size, size), sky, np.float32)
    light = 2.0 / (1 + (r / 3.0) ** 2)  # a Moffat-like star, stretched units
    original = np.clip(truth + light, 0, 1).astype(np.float32)
    output = truth + np.float32(0.05) * (light > 0.1)  # a flat glow over the halo
    halos = burnt_halos(original, truth, output)
    assert halos.shape == (1, 3)
    core_r, extent, glow = halos[0]
    # clipped where sky + light >= 0.95: light >= 0.75, r <= 3 sqrt(2 / 0.75 - 1) = 3.87
    assert core_r == pytest.approx(3.87, abs=0.3)
    # the light falls below 0.1 at r = 3 sqrt(19) = 13.1: the first ring below is 13
    assert extent * core_r == pytest.approx(13, abs=1)
    assert glow == pytest.approx(0.05, abs=1e-6)
    # a perfect output leaves no glow; no clipped core, no rows
    assert burnt_halos(original, truth, truth)[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert burnt_halos(truth, truth, truth).shape == (0, 3)


def test_perfect_subtraction_leaves_only_the_stars_shot_noise() -> None:
    from benchmarks.diagnose import perfect_subtraction
    from benchmarks.quality import Case
    from starnet_core import metrics
    from starnet_core.synthetic import make_pair

    seed = 4242
    o, t, scene = make_pair(np.random.default_rng(seed), 128)
    ref = perfect_subtraction(Case("c", o, t, scene, seed))
    stars = o.mean(0) - t.mean(0)
    assert not np.array_equal(ref, t)  # the stars' shot noise is there ...
    # ... and only under the stars: the reference is far closer to the truth than the input
    assert np.abs(ref - t).mean() < 0.2 * np.abs(o - t).mean()
    assert np.abs(ref - t).mean(0)[stars < 1e-4].max() < 0.02
    # so the residual figure reads next to nothing for it, all for the input
    aperture = max(2.0, 1.5 * scene.fwhm_px)
    frac = metrics.residual_star_flux(o, ref, t, scene.star_xy, aperture)
    ok = np.isfinite(frac)
    assert ok.sum() > 10 and np.median(frac[ok]) < 0.05
    assert np.median(metrics.residual_star_flux(o, o, t, scene.star_xy, aperture)[ok]) == 1.0
    # a case whose seed draws another scene is refused, not measured
    with pytest.raises(RuntimeError, match="seed 4243"):
        perfect_subtraction(Case("c", o, t, scene, seed + 1))
