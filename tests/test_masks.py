"""Star layers, star masks and enhancement on a seeded synthetic field."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage

from starnet_core.masks import (
    MaskOptions,
    enhance,
    image_noise,
    mask_threshold,
    screen,
    star_layer,
    star_mask,
    unscreen_star_layer,
)

H, W = 96, 128
STARS_YX = [(20, 30), (50, 90), (75, 40), (30, 110)]


def _field(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(original, starless): a smooth nebula plus noise, and Gaussian stars screened on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    nebula = 0.1 + 0.3 * np.exp(-((yy - 48) ** 2 + (xx - 64) ** 2) / (2 * 25.0**2))
    starless = np.stack([nebula, 0.8 * nebula, 0.6 * nebula]).astype(np.float32)
    starless += rng.normal(0, 0.005, starless.shape).astype(np.float32)
    starless = np.clip(starless, 0, 1)
    stars = np.zeros((H, W), np.float32)
    for (y, x), peak in zip(STARS_YX, [0.9, 0.6, 0.4, 0.7], strict=True):
        stars += peak * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    original = screen(starless, np.clip(stars, 0, 1)[None])
    return original, starless


def _far_from_stars(distance_px: float) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    d = np.min([np.hypot(yy - y, xx - x) for y, x in STARS_YX], axis=0)
    return d > distance_px


def test_star_layer_adds_back_to_original() -> None:
    original, starless = _field()
    stars = star_layer(original, starless)
    assert stars.shape == original.shape and stars.dtype == np.float32
    assert stars.min() >= 0
    np.testing.assert_allclose(stars + starless, original, atol=1e-6, rtol=0)


def test_star_layer_clips_where_starless_is_brighter() -> None:
    a = np.full((1, 2, 2), 0.5, np.float32)
    assert (star_layer(a, a + 0.1) == 0).all()


def test_unscreen_is_the_inverse_of_screen() -> None:
    original, starless = _field()
    stars = unscreen_star_layer(original, starless)
    assert stars.dtype == np.float32 and stars.min() >= 0 and stars.max() <= 1
    np.testing.assert_allclose(screen(starless, stars), original, atol=1e-5, rtol=0)


def test_unscreen_is_safe_where_starless_saturates() -> None:
    original = np.array([[[1.0, 0.99, 0.5]]], np.float32)
    starless = np.array([[[1.0, 0.99, 0.5]]], np.float32)
    stars = unscreen_star_layer(original, starless)
    assert np.isfinite(stars).all()
    np.testing.assert_allclose(stars, 0.0, atol=1e-6)
    np.testing.assert_allclose(screen(starless, stars), original, atol=1e-6)


def test_screen() -> None:
    a = np.array([0.0, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(screen(a, 0.5), np.array([0.5, 0.75, 1.0]))
    np.testing.assert_allclose(screen(a, a), screen(a, a)[::-1][::-1])


def test_star_mask_covers_stars_and_is_zero_far_away() -> None:
    original, starless = _field()
    mask = star_mask(star_layer(original, starless))
    assert mask.shape == (1, H, W) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    # the Gaussian feather of a small dilated disc leaves the core a little under 1
    for y, x in STARS_YX:
        assert mask[0, y, x] > 0.9
    assert (
        star_mask(star_layer(original, starless), MaskOptions(feather_px=0))[0][
            tuple(np.array(STARS_YX).T)
        ]
        == 1
    ).all()
    assert mask[0][_far_from_stars(15)].max() < 1e-3


def test_star_mask_dilation_grows_and_feather_smooths() -> None:
    original, starless = _field()
    stars = star_layer(original, starless)
    hard = star_mask(stars, MaskOptions(dilate_px=0, feather_px=0))
    dilated = star_mask(stars, MaskOptions(dilate_px=3, feather_px=0))
    feathered = star_mask(stars, MaskOptions(dilate_px=3, feather_px=2.0))
    assert set(np.unique(hard)) <= {0.0, 1.0} and set(np.unique(dilated)) <= {0.0, 1.0}
    assert (dilated >= hard).all() and dilated.sum() > hard.sum() * 1.5
    # feathering: intermediate values appear and steps between neighbours shrink
    assert ((feathered > 0.05) & (feathered < 0.95)).any()
    assert np.abs(np.diff(feathered, axis=2)).max() < 0.5 * np.abs(np.diff(dilated, axis=2)).max()
    assert feathered.min() >= 0 and feathered.max() <= 1


def test_star_mask_of_empty_layer_is_zero() -> None:
    assert (star_mask(np.zeros((3, 8, 8), np.float32)) == 0).all()


def test_enhance() -> None:
    original, starless = _field()
    mask = star_mask(star_layer(original, starless), MaskOptions(feather_px=0))
    np.testing.assert_array_equal(enhance(original, starless, mask, strength=0.0), original)

    out = enhance(original, starless, mask, strength=1.0)
    assert out.shape == original.shape and out.dtype == np.float32
    assert out.max() <= 1.0 and (out >= original).all()
    under = np.broadcast_to(mask == 1.0, original.shape)
    assert under.any()
    np.testing.assert_array_equal(out[under], original[under])
    # background brightens most where the nebula is
    far = _far_from_stars(15)
    gain = (out - original)[0]
    assert gain[48, 64] > 0.1 and gain[48, 64] > 2 * gain[far].min()
    assert enhance(original, starless, mask, strength=5.0).max() <= 1.0
    soft = star_mask(star_layer(original, starless))
    assert (enhance(original, starless, soft) >= original).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda a: star_layer(a[0], a), "original must have shape"),
        (lambda a: star_layer(a, a[:, :-1]), "same shape"),
        (lambda a: unscreen_star_layer(a, a.astype(int)), "starless must be a float"),
        (lambda a: star_mask(a[0]), "stars must have shape"),
        (lambda a: enhance(a, a, a[:1, :-1]), "mask must have shape"),
        (lambda a: enhance(a, a, a[:1], strength=-1.0), "strength"),
        (lambda a: MaskOptions(dilate_px=1.5), "dilate_px"),  # type: ignore[arg-type]
        (lambda a: MaskOptions(threshold=-0.1), "threshold"),
        (lambda a: MaskOptions(feather_px=float("inf")), "feather_px"),
    ],
)
def test_bad_inputs_raise(call: Callable[[np.ndarray], object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(np.zeros((3, 8, 8), np.float32))


def test_protect_background_keeps_input_away_from_stars() -> None:
    from starnet_core.masks import protect_background
    from starnet_core.options import ProtectOptions

    rng = np.random.default_rng(0)
    original = rng.uniform(0.2, 0.3, (3, 40, 40)).astype(np.float32)
    original[:, 20, 20] = 0.95  # one star
    net = original - 0.005  # a net that also darkens the background slightly
    net[:, 19:22, 19:22] = 0.25  # and removes the star
    out = protect_background(original, net, ProtectOptions(threshold=0.02, dilate_px=1))
    assert np.allclose(out[:, :10, :10], original[:, :10, :10])  # background untouched
    assert abs(float(out[0, 20, 20]) - 0.25) < 0.05  # the star is still removed
    off = protect_background(original, net, ProtectOptions(enabled=False))
    assert np.array_equal(off, net)
    with pytest.raises(ValueError, match="threshold"):
        ProtectOptions(threshold=2.0)


def test_protect_background_gives_back_the_grain_a_network_took() -> None:
    # on a noisy frame a network also takes specks of grain far from any star; protection
    # with the significance test (protect.signal_sigmas) puts the input back there, and
    # leaves the network's output on the stars, however faint
    from starnet_core.masks import protect_background
    from starnet_core.options import ProtectOptions

    rng = np.random.default_rng(7)
    sigma = 0.05
    yy, xx = np.mgrid[0:128, 0:128]
    stars = np.zeros((1, 128, 128), np.float32)
    centres = [(30, 30), (90, 40), (60, 100)]
    for i, (cy, cx) in enumerate(centres):  # 5, 10 and 20 noise sigmas
        peak = sigma * 5 * 2**i
        stars[0] += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.3**2))
    original = (0.25 + rng.normal(0, sigma, stars.shape) + stars).astype(np.float32)
    peaks = original - ndimage.uniform_filter(original, (1, 3, 3)) > 1.5 * sigma
    net = original - stars - peaks * 0.5 * sigma  # takes every star and grain peaks too
    plain = protect_background(original, net, ProtectOptions(signal_sigmas=0.0))
    tested = protect_background(original, net, ProtectOptions(signal_sigmas=4.0))
    far = np.ones((128, 128), bool)
    for cy, cx in centres:
        far &= (yy - cy) ** 2 + (xx - cx) ** 2 > 10**2
        assert tested[0, cy, cx] == pytest.approx(net[0, cy, cx], abs=1e-6)
    grain = peaks[0] & far
    assert grain.sum() > 500
    assert np.abs(plain[0][grain] - original[0][grain]).mean() > 0.02  # taken
    assert np.abs(tested[0][grain] - original[0][grain]).mean() < 0.002  # given back
    with pytest.raises(ValueError, match="signal_sigmas"):
        ProtectOptions(signal_sigmas=-1.0)


def test_mask_leaves_out_grain_the_network_smoothed_all_over() -> None:
    # a network that smoothed a grainy plate leaves the grain's positive half all over the
    # star layer: the mask must still show the stars, not the grain. The image's noise
    # (signal_sigmas, the default) sees it; the layer's own spread (noise_sigmas) only
    # when the grain lifts the layer's median (all of it positive)
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.03, (1, 128, 128)).astype(np.float32)
    yy, xx = np.mgrid[0:128, 0:128]
    centres = [(20, 30), (64, 64), (100, 90)]
    stars = np.zeros_like(noise)
    for cy, cx in centres:
        stars[0] += 0.6 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0).astype(np.float32)
    half, whole = stars + np.maximum(noise, 0), stars + np.abs(noise)
    fixed = star_mask(half, MaskOptions(signal_sigmas=0.0))[0] > 0.5
    assert fixed.mean() > 0.4  # 0.04 is inside the grain: most of the frame
    for relative in (
        star_mask(half, noise=image_noise(0.3 + noise))[0] > 0.5,
        star_mask(whole, MaskOptions(noise_sigmas=3.0))[0] > 0.5,
    ):
        assert relative.mean() < 0.05
        assert all(relative[cy, cx] for cy, cx in centres)
    assert (star_mask(half, MaskOptions(noise_sigmas=3.0))[0] > 0.5).mean() > 0.4
    # on a clean layer the fixed threshold rules, as before
    assert mask_threshold(stars.max(axis=0), MaskOptions(noise_sigmas=3.0)) == 0.04
    with pytest.raises(ValueError, match="noise_sigmas"):
        MaskOptions(noise_sigmas=-1)


def test_star_mask_leaves_out_the_grain_a_network_took_from_a_noisy_frame() -> None:
    # a network that takes some of a noisy frame's grain away leaves specks on a minority of
    # the layer's pixels: the layer's own median and MAD stay at zero, so only the image's
    # noise can tell them from stars (a survey plate's mask covered a third of the frame)
    rng = np.random.default_rng(5)
    sigma = 0.06
    original = (0.25 + rng.normal(0, sigma, (1, 160, 160))).astype(np.float32)
    yy, xx = np.mgrid[0:160, 0:160]
    centres = [(30, 40), (80, 80), (120, 130), (40, 130)]
    stars = np.zeros((1, 160, 160), np.float32)
    for i, (cy, cx) in enumerate(centres):  # faint to bright: 3 to 12 noise sigmas
        peak = sigma * (3 + 3 * i)
        stars[0] += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.3**2))
    specks = (rng.random((1, 160, 160)) < 0.15) * np.abs(rng.normal(0, sigma, (1, 160, 160)))
    layer = (stars + specks).astype(np.float32)
    noise = image_noise(original + stars)
    assert noise == pytest.approx(sigma, rel=0.1)
    plain = star_mask(layer)[0] > 0.5
    tested = star_mask(layer, noise=noise)[0] > 0.5
    # the layer's own median and spread see nothing
    assert mask_threshold(layer[0], MaskOptions(noise_sigmas=3.0)) == MaskOptions().threshold
    assert plain.mean() > 0.3  # the specks, dilated, cover much of the frame
    assert all(tested[cy, cx] for cy, cx in centres)  # every star, even at 3 sigma
    far = np.ones((160, 160), bool)
    for cy, cx in centres:
        far &= (yy - cy) ** 2 + (xx - cx) ** 2 > 8**2
    assert tested[far].mean() < 0.01
    # off, or on a clean frame, the mask is as before
    off = star_mask(layer, MaskOptions(signal_sigmas=0.0), noise=noise)
    assert np.array_equal(off, star_mask(layer))
    clean = image_noise(np.full((1, 64, 64), 0.25, np.float32) + 1e-4 * rng.random((1, 64, 64)))
    assert np.array_equal(star_mask(stars, noise=clean), star_mask(stars))
    with pytest.raises(ValueError, match="signal_sigmas"):
        MaskOptions(signal_sigmas=-1)


def _clipped_star_on_magenta(
    size: int = 64, radius: int = 6, level: float = 1.0, amp: float = 3.0
) -> tuple[np.ndarray, ...]:
    """(original, truth, grey_fill): a magenta sky (scaled by ``level``) with a white
    star of peak ``amp`` (clipped at 1), and a network output that fills the star with
    the sky's brightness in grey."""
    rng = np.random.default_rng(1)
    sky = level * np.array([0.45, 0.15, 0.40], np.float32)[:, None, None]
    truth = np.broadcast_to(sky, (3, size, size)) + rng.normal(0, 0.003, (3, size, size))
    truth = truth.astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    r2 = (yy - size // 2) ** 2 + (xx - size // 2) ** 2
    halo = np.exp(-r2 / (2 * (radius * 1.2) ** 2)).astype(np.float32)
    original = np.clip(truth + amp * halo, 0, 1).astype(np.float32)
    grey = truth.copy()
    star = (original - truth).max(0) > 0.02
    grey[:, star] = truth[:, star].mean(0)  # right brightness, no colour
    return original, truth, grey


def test_fill_sky_colour_colours_a_clipped_core() -> None:
    from starnet_core.masks import fill_sky_colour
    from starnet_core.options import SkyColourOptions

    original, truth, grey = _clipped_star_on_magenta()
    core = (original >= 0.95).all(0)
    assert core.sum() > 50  # the test star is clipped
    cores_only = SkyColourOptions(star_share_low=1.0)
    out = fill_sky_colour(original, grey, cores_only)
    assert out.dtype == np.float32 and out.shape == grey.shape
    # the cores now carry the sky's colour: error down from ~0.14 to the noise
    before = np.abs(grey[:, core] - truth[:, core]).mean()
    after = np.abs(out[:, core] - truth[:, core]).mean()
    assert before > 0.1 and after < 0.01
    # the brightness (channel mean) is the network's
    assert np.allclose(out.mean(0)[core], grey.mean(0)[core], atol=1e-5)
    # beyond the clipped core's dilation and feather nothing changes, bit for bit
    near = ndimage.binary_dilation(core, iterations=2 + 4)
    assert np.array_equal(out[:, ~near], grey[:, ~near])


def test_fill_sky_colour_colours_star_dominated_pixels() -> None:
    from starnet_core.masks import fill_sky_colour
    from starnet_core.options import SkyColourOptions

    # an unclipped star on a darker sky: the star is most of its pixels' light
    original, truth, grey = _clipped_star_on_magenta(level=0.3, amp=0.75)
    assert not (original >= 0.95).any()
    share = 1 - grey.mean(0) / original.mean(0)
    dominated = share >= 0.8  # the ramp's top: the fill takes the sky's colour fully
    assert dominated.sum() > 20
    out = fill_sky_colour(original, grey, SkyColourOptions())
    before = np.abs(grey[:, dominated] - truth[:, dominated]).mean()
    after = np.abs(out[:, dominated] - truth[:, dominated]).mean()
    assert before > 0.03 and after < before / 5  # the grey pull is gone to the noise
    assert np.allclose(out.mean(0), grey.mean(0), atol=1e-5)  # luminance kept everywhere
    # with the ramp off (clipped cores only) this star is left as the network filled it
    assert fill_sky_colour(original, grey, SkyColourOptions(star_share_low=1.0)) is grey


def test_fill_sky_colour_leaves_what_it_cannot_or_should_not_touch() -> None:
    from starnet_core.masks import fill_sky_colour, finish_starless
    from starnet_core.options import CoreFillOptions, ProtectOptions, SkyColourOptions

    original, _, grey = _clipped_star_on_magenta()
    # switched off, mono, nothing removed: the input comes back as it is
    assert fill_sky_colour(original, grey, SkyColourOptions(enabled=False)) is grey
    mono = grey[:1]
    assert fill_sky_colour(original[:1], mono, SkyColourOptions()) is mono
    assert fill_sky_colour(grey, grey, SkyColourOptions()) is grey
    # finish_starless = protection, then the sky colour (the grey fill is at the sky's
    # brightness, so the core fill has nothing to take away here)
    no_fill = CoreFillOptions(enabled=False)
    protected = finish_starless(
        original, grey, ProtectOptions(), SkyColourOptions(enabled=False), no_fill
    )
    done = finish_starless(original, grey, ProtectOptions(), SkyColourOptions(), no_fill)
    core = (original >= 0.95).all(0)
    assert not np.allclose(done[:, core], protected[:, core])


def test_fill_sky_colour_leaves_a_bright_core_the_network_kept() -> None:
    # a galaxy nucleus as bright as a burnt-out star (every channel >= clip_level after
    # the stretch) but coloured, which the network keeps, beside a clipped white star it
    # took out: only the star takes the sky's colour, the nucleus keeps its own (the
    # step used to give every clipped core the nearest sky's chroma)
    from starnet_core.masks import fill_sky_colour
    from starnet_core.options import SkyColourOptions

    original, truth, grey = _clipped_star_on_magenta(size=96)
    yy, xx = np.mgrid[0:96, 0:96]
    at_nucleus = np.hypot(yy - 80, xx - 12)  # 48 px from the star
    nucleus = np.exp(-(at_nucleus**2) / (2 * 5.0**2)).astype(np.float32)
    orange = np.array([1.3, 1.05, 0.98], np.float32)[:, None, None]  # white-hot, orange
    galaxy = np.clip(truth + orange * nucleus, 0, 1).astype(np.float32)
    original = np.maximum(original, galaxy)
    # the network keeps the nucleus (near identity: 99 %) and fills the star in grey
    kept = np.where(at_nucleus < 16, 0.99 * galaxy, grey).astype(np.float32)
    core = (original >= 0.95).all(0)
    on_nucleus = core & (at_nucleus < 10)
    on_star = core & (np.hypot(yy - 48, xx - 48) < 12)
    assert on_nucleus.sum() > 20 and on_star.sum() > 50
    # the nucleus is coloured, not white: its chroma is far from the magenta sky's
    chroma = kept[:, on_nucleus] - kept[:, on_nucleus].mean(0)
    assert np.abs(chroma).max() > 0.02
    for options in (SkyColourOptions(), SkyColourOptions(star_share_low=1.0)):
        out = fill_sky_colour(original, kept, options)
        # the nucleus and everything around it is the network's output, bit for bit
        around = at_nucleus < 16
        assert np.array_equal(out[:, around], kept[:, around])
        # the star the network took still gets the sky's colour
        before = np.abs(kept[:, on_star] - truth[:, on_star]).mean()
        after = np.abs(out[:, on_star] - truth[:, on_star]).mean()
        assert before > 0.1 and after < 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_level": 0.3}, "clip_level must be a number in"),
        ({"clip_level": True}, "clip_level must be a number in"),
        ({"sky_threshold": 0.0}, "sky_threshold must be > 0"),
        ({"star_share_low": 0.8, "star_share_high": 0.5}, "star_share_high must be > star"),
        ({"star_share_high": 1.5}, "star_share_high must be a number in"),
        ({"dilate_px": -1}, "dilate_px must be >= 0"),
        ({"feather_px": float("nan")}, "feather_px must be a finite number"),
        ({"enabled": "yes"}, "enabled must be a bool"),
    ],
)
def test_sky_colour_options_refuse_bad_values(kwargs: dict, match: str) -> None:
    from starnet_core.options import SkyColourOptions

    with pytest.raises(ValueError, match=match):
        SkyColourOptions(**kwargs)


def _burnt_star_with_glow(glow: float = 0.15) -> tuple[np.ndarray, ...]:
    """(original, truth, net): the magenta sky with a clipped white star, and a network
    output that removed the star but left a soft glow of ``glow`` over where it was."""
    original, truth, _ = _clipped_star_on_magenta(size=96, radius=6)
    yy, xx = np.mgrid[0:96, 0:96]
    haze = glow * np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 6.0**2))
    net = np.clip(truth + haze.astype(np.float32), 0, 1).astype(np.float32)
    return original, truth, net


def test_fill_burnt_stars_takes_away_the_glow_of_a_clipped_star() -> None:
    from starnet_core.masks import burnt_star_footprint, fill_burnt_stars
    from starnet_core.options import CoreFillOptions

    original, truth, net = _burnt_star_with_glow()
    options = CoreFillOptions(grain=False)
    footprint = burnt_star_footprint(original, net, options)
    core = (original >= 0.95).all(0)
    assert core.sum() > 50 and footprint[core].all()
    assert footprint.sum() > core.sum()  # the halo the star layer follows is in it
    out = fill_burnt_stars(original, net, options)
    assert out.dtype == np.float32 and out.shape == net.shape
    # the glow was ~0.15 at the centre; the rim fill brings it to the sky's level
    before = np.abs(net[:, footprint] - truth[:, footprint]).mean()
    after = np.abs(out[:, footprint] - truth[:, footprint]).mean()
    assert before > 0.03 and after < before / 4
    # outside the footprint nothing changes, bit for bit
    assert np.array_equal(out[:, ~footprint], net[:, ~footprint])


def test_fill_burnt_stars_grain_matches_the_sky_around() -> None:
    from starnet_core.masks import burnt_star_footprint, fill_burnt_stars
    from starnet_core.options import CoreFillOptions

    original, truth, net = _burnt_star_with_glow()
    rng = np.random.default_rng(5)
    grainy = np.clip(net + rng.normal(0, 0.02, net.shape), 0, 1).astype(np.float32)
    footprint = burnt_star_footprint(original, grainy, CoreFillOptions())
    smooth = fill_burnt_stars(original, grainy, CoreFillOptions(grain=False))
    out = fill_burnt_stars(original, grainy, CoreFillOptions())
    # the same frame gives the same result (seeded), and only the footprint differs
    assert np.array_equal(out, fill_burnt_stars(original, grainy, CoreFillOptions()))
    assert np.array_equal(out[:, ~footprint], smooth[:, ~footprint])
    # the fill's grain is the sky's (0.02), where the plain fill is smooth
    inner = ndimage.binary_erosion(footprint, iterations=3)
    for c in range(3):
        grain = out[c][inner] - smooth[c][inner]
        assert 0.015 < grain.std() < 0.025
        assert np.abs(grain.mean()) < 0.003
    assert smooth[:, inner].std(axis=1).max() < 0.01


def test_fill_burnt_stars_leaves_kept_cores_and_stops_at_its_reach() -> None:
    from starnet_core.masks import burnt_star_footprint, fill_burnt_stars
    from starnet_core.options import CoreFillOptions

    original, truth, net = _burnt_star_with_glow()
    options = CoreFillOptions()
    # a clipped core the network kept (a galaxy or nebula core): left as it is
    assert fill_burnt_stars(original, original, options) is original
    # switched off, or no clipped core at all: unchanged
    assert fill_burnt_stars(original, net, CoreFillOptions(enabled=False)) is net
    assert fill_burnt_stars(truth, truth, options) is truth
    # a star layer that goes on far beyond the star (a bright band the network took
    # away, touching the core): the footprint ends within its reach of the core
    wide = net.copy()
    wide[:, 44:52, :] = truth[:, 44:52, :] - 0.0  # the band: network output = sky
    banded = original.copy()  # bright, but below the core level: not a core itself
    banded[:, 44:52, :] = np.maximum(banded[:, 44:52, :], options.clip_level - 0.05)
    footprint = burnt_star_footprint(banded, wide, options)
    core = (banded >= options.clip_level).all(0)
    radius = np.sqrt(core.sum() / np.pi)
    reach = options.reach * radius + options.reach_px + options.grow_px
    cols = np.nonzero(footprint.any(0))[0]
    assert cols.min() >= 48 - radius - reach - 1 and cols.max() <= 48 + radius + reach + 1
    assert not footprint[:, :2].any() and not footprint[:, -2:].any()
    # mono frames are filled the same way
    mono = fill_burnt_stars(original[:1], net[:1], options)
    assert mono.shape == (1, 96, 96) and not np.array_equal(mono, net[:1])


def test_fill_burnt_stars_takes_near_white_cores_by_default() -> None:
    from starnet_core.masks import burnt_star_footprint, fill_burnt_stars
    from starnet_core.options import CoreFillOptions

    # a bright star whose core is near white but not clipped (every channel 0.8-0.9,
    # as in a stretched dense field), removed by the network with a glow left behind
    original, truth, _ = _clipped_star_on_magenta(size=96, radius=6, amp=0.7)
    top = original.min(0).max()
    assert 0.75 < top < 0.95
    yy, xx = np.mgrid[0:96, 0:96]
    haze = 0.15 * np.exp(-((yy - 48) ** 2 + (xx - 48) ** 2) / (2 * 6.0**2))
    net = np.clip(truth + haze.astype(np.float32), 0, 1).astype(np.float32)
    # the default (0.75) takes it; the old level, clipped cores only (0.95), does not
    assert fill_burnt_stars(original, net, CoreFillOptions(clip_level=0.95)) is net
    options = CoreFillOptions(grain=False)
    footprint = burnt_star_footprint(original, net, options)
    assert footprint[48, 48] and footprint.sum() > 50
    out = fill_burnt_stars(original, net, options)
    before = np.abs(net[:, footprint] - truth[:, footprint]).mean()
    after = np.abs(out[:, footprint] - truth[:, footprint]).mean()
    assert before > 0.05 and after < before / 2.5  # the rim still holds some glow


def test_finish_starless_runs_the_core_fill_then_smooths_the_remnants() -> None:
    from starnet_core.masks import fill_burnt_stars, finish_starless, smooth_remnants
    from starnet_core.options import (
        CoreFillOptions,
        ProtectOptions,
        RemnantOptions,
        SkyColourOptions,
    )

    original, _, net = _burnt_star_with_glow()
    protect, colour, plain = ProtectOptions(), SkyColourOptions(), RemnantOptions(enabled=False)
    without = finish_starless(
        original, net, protect, colour, CoreFillOptions(enabled=False), remnants=plain
    )
    filled = finish_starless(original, net, protect, colour, CoreFillOptions(), remnants=plain)
    assert np.array_equal(filled, fill_burnt_stars(original, without, CoreFillOptions()))
    assert not np.array_equal(filled, without)
    done = finish_starless(original, net, protect, colour, CoreFillOptions())  # all defaults
    assert np.array_equal(done, smooth_remnants(original, filled, RemnantOptions()))
    assert not np.array_equal(done, filled)


def _remnants_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(original, net, truth, inside, outside): a grainy sky with one bright star the
    network took out but for a faint one-pixel checker pattern and a bump (remnants) in
    its footprint; the same bump on the sky far away is real structure (a knot)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    truth = np.full((3, H, W), 0.2, np.float32) + rng.normal(0, 0.002, (3, H, W)).astype(np.float32)
    star = 0.8 * np.exp(-((yy - 48) ** 2 + (xx - 40) ** 2) / (2 * 4.0**2))
    original = np.clip(truth + star[None], 0, 1).astype(np.float32)
    net = truth.copy()
    inside = np.hypot(yy - 48, xx - 40) < 6
    checker = 0.03 * ((yy.astype(int) + xx.astype(int)) % 2 * 2 - 1)
    net[:, inside] += checker[inside]
    knot = 0.05 * np.exp(-((yy - 48) ** 2 + (xx - 100) ** 2) / (2 * 1.0**2))
    net += knot[None]
    original += knot[None]
    outside = np.hypot(yy - 48, xx - 100) < 12
    return original, net.astype(np.float32), truth, inside, outside


def test_smooth_remnants_smooths_inside_footprints_only() -> None:
    from starnet_core.masks import smooth_remnants
    from starnet_core.options import RemnantOptions

    original, net, truth, inside, outside = _remnants_scene()
    out = smooth_remnants(original, net, RemnantOptions())
    assert out.dtype == np.float32 and out.shape == net.shape
    before = np.sqrt(((net - truth)[:, inside] ** 2).mean())
    after = np.sqrt(((out - truth)[:, inside] ** 2).mean())
    assert after < before / 3  # the checker is pixel-scale: a 1 px blur takes most of it
    # the knot on the sky has no star layer under it: untouched, bit for bit
    assert np.array_equal(out[:, outside], net[:, outside])
    # far from the footprint (grown 1 px, feathered 1 px) nothing moves
    yy, xx = np.mgrid[0:H, 0:W]
    far = np.hypot(yy - 48, xx - 40) > 20
    assert np.array_equal(out[:, far], net[:, far])


def test_smooth_remnants_disabled_or_without_stars_returns_its_input() -> None:
    from starnet_core.masks import smooth_remnants
    from starnet_core.options import RemnantOptions

    original, net, _, _, _ = _remnants_scene()
    assert smooth_remnants(original, net, RemnantOptions(enabled=False)) is net
    assert smooth_remnants(net, net, RemnantOptions()) is net  # no star layer at all
    with pytest.raises(ValueError, match="same shape"):
        smooth_remnants(original, net[:, :-1], RemnantOptions())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"enabled": "yes"}, "enabled must be a bool"),
        ({"threshold": 0.0}, "threshold must be > 0"),
        ({"threshold": 1.5}, "threshold must be a number in"),
        ({"sigma_px": 0.0}, "sigma_px must be > 0"),
        ({"sigma_px": float("nan")}, "sigma_px must be a number in"),
        ({"dilate_px": -1}, "dilate_px must be >= 0"),
        ({"dilate_px": 1.5}, "dilate_px must be an int"),
        ({"feather_px": -0.5}, "feather_px must be a number in"),
    ],
)
def test_remnant_options_refuse_bad_values(kwargs: dict, match: str) -> None:
    from starnet_core.options import RemnantOptions

    with pytest.raises(ValueError, match=match):
        RemnantOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_level": 0.3}, "clip_level must be a number in"),
        ({"core_drop": -0.1}, "core_drop must be a number in"),
        ({"layer_threshold": 0.0}, "layer_threshold must be > 0"),
        ({"reach": float("inf")}, "reach must be a number in"),
        ({"reach_px": 2.5}, "reach_px must be an int"),
        ({"grow_px": -1}, "grow_px must be >= 0"),
        ({"enabled": 1}, "enabled must be a bool"),
        ({"grain": "no"}, "grain must be a bool"),
    ],
)
def test_core_fill_options_refuse_bad_values(kwargs: dict, match: str) -> None:
    from starnet_core.options import CoreFillOptions

    with pytest.raises(ValueError, match=match):
        CoreFillOptions(**kwargs)
