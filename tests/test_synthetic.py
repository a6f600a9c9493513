"""The synthetic pair generator: seeded, valid, and the pair differs only by the stars."""

from __future__ import annotations

import numpy as np
import pytest

from starnet_core import synthetic
from starnet_core.synthetic import (
    MASK_CHANNELS,
    MIXES,
    Mix,
    Scene,
    _bayer,
    _colour_cast,
    _psf,
    _star_glow,
    crop_masks,
    fractal_noise,
    make_pair,
    make_pool,
)


def test_seeded_and_reproducible() -> None:
    a = make_pair(np.random.default_rng(7), 64)
    b = make_pair(np.random.default_rng(7), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_pairs_are_valid_images() -> None:
    rng = np.random.default_rng(3)
    for _ in range(8):
        orig, clean, scene = make_pair(rng, 64)
        for img in (orig, clean):
            assert img.shape == (3, 64, 64) and img.dtype == np.float32
            assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
        assert scene.star_xy.shape[1] == 2 and len(scene.star_xy) == len(scene.star_peak)
        assert 0.01 < float(np.median(clean)) < 0.75


def test_only_the_stars_differ() -> None:
    # original and starless share background and noise: away from stars they are equal,
    # and stars only add light (up to quantisation)
    medians, above = [], []
    for seed in range(8):
        orig, clean, _ = make_pair(np.random.default_rng(seed), 96, dense=False, jpeg=False)
        diff = orig - clean
        # stars only add light; their own shot noise can dip a faint wing below the truth
        # (a bright star's halo can spread that shot noise over much of a small crop)
        assert (diff > -2e-3).mean() > 0.85 and diff.mean() > 0
        above.append(float((diff > -2e-3).mean()))
        medians.append(float(np.median(np.abs(diff))))
    assert float(np.median(above)) > 0.99
    assert float(np.median(medians)) < 0.005


def test_the_truth_keeps_the_glow_a_retoucher_keeps() -> None:
    # a bright star on the smooth glow of an unresolved crowd: the star goes, the glow
    # stays (up to the cap), and nothing kept is ever more than the star light itself
    n, fwhm = 96, 3.0
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    crowd = 0.02 * np.exp(-((xx - 30) ** 2 + (yy - 60) ** 2) / (2 * 25.0**2))
    star = 5.0 * np.exp(-((xx - 70) ** 2 + (yy - 30) ** 2) / (2 * (fwhm / 2.3548) ** 2))
    stars = np.repeat((crowd + star)[None], 3, 0).astype(np.float32)
    glow = _star_glow(stars, fwhm, cap=0.05)
    assert glow.shape == stars.shape and glow.dtype == np.float32
    assert (glow >= 0).all() and (glow <= stars + 1e-7).all() and glow.max() <= 0.05
    assert np.allclose(glow[:, 60, 30], crowd[60, 30], rtol=0.1)  # the crowd's glow stays
    assert glow[:, 30, 70].max() < 0.01 * star[30, 70]  # the star does not
    # the cap limits what stays of a halo too bright to be a retoucher's leftover
    assert _star_glow(stars * 100, fwhm, cap=0.05).max() <= 0.05


def test_the_glow_cap_changes_only_the_truth() -> None:
    # same seed, other caps: the same scene (stars, noise draws, stretch), and the truth
    # keeps more of the crowd's glow the higher the cap; no cap keeps none of it
    seed = 5
    low, none, high = (
        make_pair(np.random.default_rng(seed), 96, dense=True, jpeg=False, glow_cap=cap)
        for cap in (1.5, 0.0, 3.0)
    )
    np.testing.assert_array_equal(low[2].star_xy, high[2].star_xy)
    # the original changes only through the shot noise of what moved between the layers
    assert float(np.abs(low[0] - high[0]).mean()) < 0.01
    assert float(none[1].mean()) < float(low[1].mean()) < float(high[1].mean())
    with pytest.raises(ValueError, match="glow_cap"):
        make_pair(np.random.default_rng(seed), 32, glow_cap=-1.0)


def test_the_stars_shot_noise_in_the_truth_changes_only_the_truth() -> None:
    # the reference of benchmarks.diagnose draws nothing: same original, same scene;
    # its truth differs from the plain truth only where stars shine
    for seed in range(5):
        o, t, sc = make_pair(np.random.default_rng(seed), 64)
        o2, ref, sc2 = make_pair(np.random.default_rng(seed), 64, star_noise_in_truth=True)
        assert np.array_equal(o, o2) and np.array_equal(sc.star_xy, sc2.star_xy)
        assert not np.array_equal(t, ref)
        assert float(np.abs(ref - t).mean()) < float(np.abs(o - t).mean())


def test_the_mix_shifts_how_often_cases_come_and_its_default_draws_the_same_scenes() -> None:
    # the default mix is the generator's own: passing it changes nothing
    for seed in range(4):
        a = make_pair(np.random.default_rng(seed), 48)
        b = make_pair(np.random.default_rng(seed), 48, mix=Mix())
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # a share moves its threshold: every scene has spikes at 1, none at 0
    spiked = [make_pair(np.random.default_rng(s), 48, mix=Mix(spike_share=1.0)) for s in range(6)]
    plain = [make_pair(np.random.default_rng(s), 48, mix=Mix(spike_share=0.0)) for s in range(6)]
    assert all(p[2].spikes for p in spiked) and not any(p[2].spikes for p in plain)
    dense = [make_pair(np.random.default_rng(s), 64, mix=Mix(dense_share=1.0)) for s in range(3)]
    sparse = [make_pair(np.random.default_rng(s), 64, mix=Mix(dense_share=0.0)) for s in range(3)]
    assert min(len(d[2].star_xy) for d in dense) > max(len(s[2].star_xy) for s in sparse)


def test_the_galaxy_knobs_set_how_many_small_galaxies_a_crop_holds() -> None:
    def galaxies(mix: Mix) -> list[int]:
        # knots come along with the galaxies in galaxy_xy; count both, over several seeds
        return [
            len(make_pair(np.random.default_rng(s), 64, mix=mix)[2].galaxy_xy) for s in range(8)
        ]

    none = galaxies(Mix(galaxy_share=0.0))
    some = galaxies(Mix(galaxy_share=1.0))
    many = galaxies(Mix(galaxy_share=1.0, galaxy_rate=8.0))
    assert sum(many) > 3 * sum(some) > 0
    assert sum(none) < sum(some)


def test_the_bright_rate_sets_how_many_very_bright_stars_a_crop_holds() -> None:
    # very bright stars burn out and glow wide: the area where the star layer is strong
    # (above 0.3 stretched) grows with their number (8 seeds: 6,079 px at the default
    # rate, 11,776 at 8x)
    def strong_px(mix: Mix) -> int:
        total = 0
        for s in range(8):
            o, c, _ = make_pair(np.random.default_rng(s), 128, mix=mix)
            total += int((np.maximum(o - c, 0).mean(0) > 0.3).sum())
        return total

    assert strong_px(Mix(bright_rate=8.0)) > 1.5 * strong_px(Mix()) > 0
    with pytest.raises(ValueError, match=r"bright_rate must be a rate in \(0, 20\]"):
        Mix(bright_rate=0)


def test_the_large_galaxy_knob_adds_one_large_kept_galaxy() -> None:
    """With the share at 1 every crop holds a large galaxy: what must stay (the
    scene's keep mask, light of kept structures above the noise) covers thousands of
    pixels, where small galaxies and knots alone cover a few hundred at most."""

    def kept_px(mix: Mix) -> list[int]:
        areas = []
        for seed in range(4):
            scene = make_pair(np.random.default_rng(seed), 160, mix=mix)[2]
            assert scene.keep_mask is not None
            areas.append(int(scene.keep_mask.sum()))
        return areas

    small = kept_px(Mix(galaxy_share=0.0))
    large = kept_px(Mix(galaxy_share=0.0, large_galaxy_share=1.0))
    assert min(large) > 2000
    assert max(small) < 1000


def test_the_scene_records_its_large_galaxy_where_its_light_is() -> None:
    """``Scene.large_galaxy`` (x, y, effective radius) names the galaxy the keep mask
    holds: the mask is set at its centre and covers about its effective radius; scenes
    without one record None."""
    for seed in range(3):
        scene = make_pair(np.random.default_rng(seed), 160, mix=MIXES["large-galaxies"])[2]
        assert scene.large_galaxy is not None and scene.keep_mask is not None
        x, y, re = (float(v) for v in scene.large_galaxy)
        assert 10.0 <= re <= 40.0
        assert 0 <= x < 160 and 0 <= y < 160
        assert scene.keep_mask[int(round(y)), int(round(x))]
        assert np.any(np.all(np.isclose(scene.galaxy_xy, [x, y]), axis=1))
        yy, xx = np.mgrid[0:160, 0:160]
        near = np.hypot(xx - x, yy - y) <= 0.5 * re
        assert scene.keep_mask[near].mean() > 0.9
    assert make_pair(np.random.default_rng(0), 160)[2].large_galaxy is None


def test_the_group_knob_adds_bright_close_doubles_and_groups() -> None:
    def stars(mix: Mix) -> list[Scene]:
        return [make_pair(np.random.default_rng(s), 96, mix=mix)[2] for s in range(4)]

    plain, grouped = stars(Mix(dense_share=0.0)), stars(Mix(dense_share=0.0, group_share=1.0))
    for a, b in zip(plain, grouped, strict=True):
        assert len(b.star_xy) > len(a.star_xy)

    def close_bright_pairs(scene: Scene) -> int:
        bright = scene.star_xy[scene.star_peak > 50 * scene.noise_sigma]
        d = np.hypot(*(bright[:, None, :] - bright[None, :, :]).transpose(2, 0, 1))
        limit = max(2.0, 6.0 * scene.fwhm_px) + 1e-3
        return int(((d > 0) & (d <= limit)).sum()) // 2

    assert sum(map(close_bright_pairs, grouped)) > sum(map(close_bright_pairs, plain)) + 4


def test_the_cast_knob_tints_both_images_alike_and_keeps_white_cores_white() -> None:
    def spread(mix: Mix) -> float:
        out = []
        for s in range(6):
            _, c, _ = make_pair(np.random.default_rng(s), 64, mix=mix, jpeg=False)
            med = np.median(c.reshape(3, -1), axis=1)
            out.append(float(med.max() / max(med.min(), 1e-3)))
        return float(np.mean(out))

    assert spread(Mix(cast_share=1.0)) > spread(Mix()) + 0.2
    sky = np.full((3, 16, 16), 0.25, np.float32)
    orig = sky.copy()
    orig[:, 4:6, 4:6] = 1.0  # a clipped star core
    for seed in range(5):
        o, c = _colour_cast(np.random.default_rng(seed), orig, sky)
        assert np.allclose(o[:, 4:6, 4:6], 1.0)  # stays white
        assert np.array_equal(o[:, 10:, 10:], c[:, 10:, 10:])  # star-free: alike in both
        assert np.ptp(c[:, 0, 0]) > 0.01  # the grey sky took a colour


# (mix, seed) -> sums of the 64 px original and starless, stars, galaxies + knots: what the
# generator drew before the galaxy knobs (commit 10196ce). New knobs must not move them.
_PINNED = {
    ("default", 3): (2841.0800345614552, 2824.5586791560054, 38, 1),
    ("default", 9200003): (2016.157001042273, 1795.9818885850254, 66, 1),
    ("hard", 3): (6744.041414609412, 6696.628429827746, 38, 1),
    ("hard", 9200003): (3692.0094459950924, 3665.8982692062855, 36, 3),
}


@pytest.mark.parametrize("mix,seed", list(_PINNED))
def test_the_named_mixes_draw_the_scenes_they_always_drew(mix: str, seed: int) -> None:
    o, c, scene = make_pair(np.random.default_rng(seed), 64, mix=MIXES[mix])
    got = (float(o.astype(np.float64).sum()), float(c.astype(np.float64).sum()))
    want = _PINNED[mix, seed]
    assert got == pytest.approx(want[:2], rel=1e-5)  # another draw moves these by far more
    assert (len(scene.star_xy), len(scene.galaxy_xy)) == want[2:]


def test_chromatic_spikes_break_into_colours() -> None:
    n = 64
    mix = Mix(spike_amp=(0.2, 0.2), spike_decay=(0.6, 0.6), chromatic_spike_share=1.0)
    psf = _psf(np.random.default_rng(2), n, 2.0, True, mix)
    assert psf.shape == (3, n, n) and psf.dtype == np.float32
    assert psf[1].max() == pytest.approx(1.0)  # the core stays white
    core = np.fft.fftshift(psf, axes=(1, 2))[:, n // 2 - 1 : n // 2 + 2, n // 2 - 1 : n // 2 + 2]
    assert np.allclose(core[0], core[1], rtol=0.1) and np.allclose(core[2], core[1], rtol=0.1)
    # along the arms the colours part: somewhere red leads, somewhere blue does
    arm = psf[:, psf[1] > 0.01]
    ratio = arm[0] / arm[2]
    assert ratio.max() > 1.5 and ratio.min() < 1 / 1.5
    plain = _psf(np.random.default_rng(2), n, 2.0, True, Mix())
    assert plain.shape == (n, n)  # grey spikes: one PSF for all colours


def test_chromatic_cores_give_wings_another_colour_than_the_core() -> None:
    n = 64
    for seed in range(4):
        psf = _psf(np.random.default_rng(seed), n, 3.0, False, Mix(chromatic_psf_share=1.0))
        assert psf.shape == (3, n, n) and psf[1].max() == pytest.approx(1.0)
        r = np.hypot(*np.meshgrid(np.fft.fftfreq(n, 1 / n), np.fft.fftfreq(n, 1 / n)))
        core, wing = psf[:, r < 1], psf[:, (r > 4) & (r < 8)]
        core_colour = core.mean(1) / core.mean(1)[1]
        wing_colour = wing.mean(1) / wing.mean(1)[1]
        assert np.abs(wing_colour - core_colour).max() > 0.1


def test_bayer_demosaicing_keeps_flat_colour_and_puts_a_zipper_on_sharp_stars() -> None:
    flat = np.ones((3, 16, 16), np.float32) * np.array([0.2, 0.5, 0.3], np.float32)[:, None, None]
    np.testing.assert_allclose(_bayer(flat, (0, 0))[:, 2:-2, 2:-2], flat[:, 2:-2, 2:-2], 1e-6)
    star = np.zeros((3, 16, 16), np.float32)
    star[:, 8, 8] = 1.0  # a white one-pixel star
    out = _bayer(star, (0, 0))
    assert out.dtype == np.float32 and out.min() >= 0
    assert np.ptp(out[:, 7:10, 7:10], axis=0).max() > 0.2  # no longer white
    assert not np.array_equal(out, _bayer(star, (1, 0)))  # the pattern's phase matters
    # a Bayer mix changes colour scenes only: mono cameras have no colour filter
    mono = changed = 0
    for seed in range(40):
        plain = make_pair(np.random.default_rng(seed), 32, jpeg=False)
        bayer = make_pair(np.random.default_rng(seed), 32, jpeg=False, mix=Mix(bayer_share=1.0))
        if np.array_equal(plain[0][0], plain[0][1]) and np.array_equal(plain[0][1], plain[0][2]):
            mono += 1
            assert np.array_equal(bayer[0], plain[0]) and np.array_equal(bayer[1], plain[1])
        changed += not np.array_equal(bayer[0], plain[0])
    assert mono and changed, "the seeds must cover both kinds"


def test_clip_headroom_gives_small_burnt_out_cores_in_wide_halos() -> None:
    """More headroom over the generator's clip level: fewer, smaller clipped cores whose
    halos reach further, in core radii (real frames' stars: 3-5)."""
    from benchmarks.diagnose import burnt_halos

    def halos(mix: Mix) -> np.ndarray:
        rows = []
        for s in range(40):
            o, c, _ = make_pair(np.random.default_rng(s), 128, mix=mix, jpeg=False)
            rows.append(burnt_halos(o, c, c))
        return np.concatenate(rows)

    plain, roomy = halos(Mix(dense_share=0.0)), halos(Mix(dense_share=0.0, clip_headroom=(10, 10)))
    assert len(plain) > len(roomy) > 5
    assert np.median(roomy[:, 0]) < np.median(plain[:, 0])  # smaller cores
    assert np.median(roomy[:, 1]) > np.median(plain[:, 1])  # halos wider in core radii
    with pytest.raises(ValueError, match="clip_headroom must be 0 < low <= high"):
        Mix(clip_headroom=(2.0, 1.0))


def test_a_bad_mix_is_refused_with_its_field_named() -> None:
    with pytest.raises(ValueError, match="spike_share must be a share"):
        Mix(spike_share=1.5)
    with pytest.raises(ValueError, match="spike_amp must be 0 < low <= high"):
        Mix(spike_amp=(0.3, 0.1))
    with pytest.raises(ValueError, match="spike_decay must be two numbers"):
        Mix(spike_decay=(1.0,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chromatic_psf_share must be a share"):
        Mix(chromatic_psf_share=-0.1)
    with pytest.raises(ValueError, match="bayer_share must be a share"):
        Mix(bayer_share=True)
    assert Mix(bayer_share=np.float32(0.5)).bayer_share == 0.5
    with pytest.raises(ValueError, match="nucleus_share"):
        Mix(nucleus_share=float("nan"))
    with pytest.raises(ValueError, match=r"galaxy_rate must be a rate in \(0, 20\]"):
        Mix(galaxy_rate=0)
    with pytest.raises(ValueError, match="galaxy_rate"):
        Mix(galaxy_rate=float("inf"))
    assert Mix(galaxy_rate=np.int64(2)).galaxy_rate == 2.0
    assert type(Mix(galaxy_share=np.float32(0.5)).galaxy_share) is float  # JSON-safe


def test_dense_fields_have_many_stars() -> None:
    _, _, scene = make_pair(np.random.default_rng(5), 128, dense=True)
    assert len(scene.star_xy) >= 600


def test_fractal_noise_is_normalised() -> None:
    f = fractal_noise(np.random.default_rng(0), 64, 3.0)
    assert abs(float(f.mean())) < 1e-5 and abs(float(f.std()) - 1) < 1e-3


def test_pool_shapes() -> None:
    orig, clean, masks = make_pool(seed=1, count=3, size_px=32)
    assert orig.shape == clean.shape == (3, 3, 32, 32)
    assert masks.shape == (3, len(MASK_CHANNELS), 32, 32) and masks.dtype == np.uint8


def test_crop_masks_flag_dense_fields_whole() -> None:
    """Channel 1 is the whole crop where the scene is a dense field, nothing elsewhere;
    channel 0 is the scene's keep mask."""
    rng = np.random.default_rng(3)
    for dense in (True, False):
        _, _, scene = make_pair(rng, 32, dense=dense)
        assert scene.dense is dense
        masks = crop_masks(scene)
        assert masks.shape == (2, 32, 32)
        assert MASK_CHANNELS == ("keep", "dense")
        np.testing.assert_array_equal(masks[0], scene.keep_mask)
        assert (masks[1] == int(dense)).all()


def test_keep_mask_covers_the_galaxies_and_nothing_far_from_them() -> None:
    found = 0
    for seed in range(30):
        o, _, scene = make_pair(np.random.default_rng(seed), 96)
        assert scene.keep_mask is not None and scene.keep_mask.shape == o.shape[1:]
        g = scene.galaxy_xy
        inside = g[(g >= 0).all(axis=1) & (g < 95).all(axis=1)]
        if not len(inside):
            continue
        yy, xx = np.mgrid[:96, :96]
        far = np.min(np.hypot(xx[..., None] - g[:, 0], yy[..., None] - g[:, 1]), axis=-1) > 60
        assert not scene.keep_mask[far].any(), seed
        # the centre of a galaxy or knot is far above a noise sigma (amplitudes from 0.3 sky)
        ix, iy = np.rint(inside).astype(int).T
        centres = scene.keep_mask[iy, ix]
        found += int(centres.sum())
        assert centres.mean() > 0.5, seed
    assert found >= 10
    a = make_pair(np.random.default_rng(3), 64)
    b = make_pair(np.random.default_rng(3), 64)
    np.testing.assert_array_equal(a[2].keep_mask, b[2].keep_mask)


def test_some_8bit_pairs_are_jpeg_compressed_each_on_its_own() -> None:
    # the same seed with and without the JPEG stage: the scene is identical, and where
    # JPEG ran both images moved off the exact quantised values, independently
    compressed = 0
    for seed in range(40):
        a, b, _ = make_pair(np.random.default_rng(seed), 64, jpeg=True)
        c, d, _ = make_pair(np.random.default_rng(seed), 64, jpeg=False)
        if not np.array_equal(a, c):
            compressed += 1
            assert np.allclose(a * 255, np.round(a * 255), atol=1e-4)  # still 8-bit
            assert not np.array_equal(b, d)
            # artefacts (blocks, chroma smearing of noise), not another image
            assert abs(float(a.mean() - c.mean())) < 0.01
            assert float(np.corrcoef(a.ravel(), c.ravel())[0, 1]) > 0.9
    assert 1 <= compressed <= 20


def test_a_scene_constant_in_every_channel_is_drawn_again_not_raised(monkeypatch) -> None:
    flat = np.ones((3, 16, 16), np.float32)  # clipped white all over: no stretch fits it
    with pytest.raises(synthetic._DegenerateSceneError):
        synthetic._stretch_pair(np.random.default_rng(0), flat, flat)
    calls = []
    real = synthetic._stretch_pair

    def first_degenerate(rng, orig, clean):
        calls.append(1)
        return real(rng, flat, flat) if len(calls) == 1 else real(rng, orig, clean)

    monkeypatch.setattr(synthetic, "_stretch_pair", first_degenerate)
    o, c, _ = synthetic.make_pair(np.random.default_rng(3), 32)
    assert len(calls) == 2 and o.shape == c.shape == (3, 32, 32)
