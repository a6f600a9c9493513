"""Star layers, star masks and the screen-mask-invert nebula enhancement.

All images are ``(C, H, W)`` float arrays in ``[0, 1]`` (stretched); results are
``(C, H, W) float32`` (masks ``(1, H, W) float32``). ``original`` and
``starless`` must have the same shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from starnet_core.inpaint import add_grain, pixel_noise, push_pull
from starnet_core.options import (
    CoreFillOptions,
    MaskOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
)
from starnet_core.spikes import remove_spikes

__all__ = [
    "CoreFillOptions",
    "MaskOptions",
    "SkyColourOptions",
    "burnt_star_footprint",
    "enhance",
    "fill_burnt_stars",
    "fill_sky_colour",
    "finish_starless",
    "image_noise",
    "mask_threshold",
    "protect_background",
    "screen",
    "smooth_remnants",
    "star_layer",
    "star_mask",
    "unscreen_star_layer",
]

DEFAULT_SPIKE_OPTIONS = SpikeOptions()
DEFAULT_REMNANT_OPTIONS = RemnantOptions()

# Smallest 1 - starless used as a divisor in unscreen_star_layer.
UNSCREEN_EPS = 1e-6


def _check_chw(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array (C, H, W), got {type(array).__name__}")
    if array.ndim != 3 or min(array.shape) < 1:
        raise ValueError(f"{name} must have shape (C, H, W), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a float array, got {array.dtype}")


def _check_pair(original: np.ndarray, starless: np.ndarray) -> None:
    _check_chw("original", original)
    _check_chw("starless", starless)
    if original.shape != starless.shape:
        raise ValueError(
            f"original and starless must have the same shape, got {original.shape} and "
            f"{starless.shape}"
        )


def screen(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Screen blend ``1 - (1 - a)(1 - b)`` of two arrays in ``[0, 1]``, float32.

    Broadcasts like numpy; the result never darkens either input.
    """
    return (1.0 - (1.0 - np.asarray(a, np.float32)) * (1.0 - np.asarray(b, np.float32))).astype(
        np.float32, copy=False
    )


def star_layer(original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """Stars by subtraction: ``max(original - starless, 0)``, ``(C, H, W) float32``.

    Adding it back gives the original wherever the starless image is not brighter.
    """
    _check_pair(original, starless)
    return np.maximum(original.astype(np.float32) - starless.astype(np.float32), 0.0)


def unscreen_star_layer(original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """Stars for screen blending: ``(original - starless) / (1 - starless)``, in ``[0, 1]``.

    The inverse of screen blending: ``screen(starless, stars) == original`` wherever
    ``starless <= original``, so stars can be screened back onto an edited starless
    image, as astrophotographers do. The divisor is at least ``UNSCREEN_EPS`` where
    the starless image is saturated. ``(C, H, W) float32``; computed in float64.
    """
    _check_pair(original, starless)
    o = original.astype(np.float64)
    s = starless.astype(np.float64)
    stars = (o - s) / np.maximum(1.0 - s, UNSCREEN_EPS)
    return np.clip(stars, 0.0, 1.0).astype(np.float32)


DEFAULT_MASK_OPTIONS = MaskOptions()


def _disc(radius_px: int) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius_px**2


def mask_threshold(level: np.ndarray, options: MaskOptions = DEFAULT_MASK_OPTIONS) -> float:
    """The star-layer level above which a pixel is a star, for an ``(H, W)`` layer level.

    ``max(threshold, median + noise_sigmas * 1.4826 * MAD)``; the statistics use at
    most ~1 M pixels (a regular subsample) so huge frames stay cheap.
    """
    if options.noise_sigmas <= 0:
        return float(options.threshold)
    step = max(1, int(np.sqrt(level.size / 1_000_000)))
    sample = level[::step, ::step]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med)))
    return max(float(options.threshold), med + options.noise_sigmas * 1.4826 * mad)


def star_mask(
    stars: np.ndarray,
    options: MaskOptions = DEFAULT_MASK_OPTIONS,
    noise: float | None = None,
) -> np.ndarray:
    """Where the stars are: ``(1, H, W) float32`` in ``[0, 1]``, 1 = star.

    ``stars`` is a ``(C, H, W)`` star layer (:func:`star_layer` or
    :func:`unscreen_star_layer`). Pixels whose maximum over channels exceeds
    ``threshold`` (raised to the layer's median + ``noise_sigmas`` robust sigmas
    when that option is on) are stars; the binary mask is dilated by a
    disc of radius ``dilate_px`` and blurred by a Gaussian of sigma ``feather_px``.

    ``noise``: the pixel noise sigma of the image the layer was taken from
    (:func:`image_noise`). With it and ``signal_sigmas > 0``, a star pixel must also
    lie where the layer smoothed by a Gaussian of 1 px sigma exceeds ``signal_sigmas``
    times that noise as the smoothing leaves it (x 0.282): a star is several pixels of
    light that stand out of the noise, a speck of grain the network took is one.
    """
    _check_chw("stars", stars)
    return _soften(_star_pixels(stars.max(axis=0), options, noise), options)


def _star_pixels(level: np.ndarray, options: MaskOptions, noise: float | None) -> np.ndarray:
    """``(H, W)`` bool: :func:`star_mask`'s star pixels of a layer's channel maximum."""
    binary = level > mask_threshold(level, options)
    if noise is not None and options.signal_sigmas > 0 and binary.any():
        floor = options.signal_sigmas * _SMOOTHED_NOISE * float(noise)
        binary &= ndimage.gaussian_filter(level, _SIGNAL_SIGMA_PX, mode="nearest") > floor
    return binary


def _soften(binary: np.ndarray, options: MaskOptions) -> np.ndarray:
    """``(1, H, W) float32``: star pixels dilated and feathered as ``options`` say."""
    if options.dilate_px > 0 and binary.any():
        binary = ndimage.binary_dilation(binary, structure=_disc(options.dilate_px))
    mask = binary.astype(np.float32)
    if options.feather_px > 0:
        mask = ndimage.gaussian_filter(mask, sigma=options.feather_px, mode="nearest")
    return np.clip(mask, 0.0, 1.0)[None]


# star_mask's significance test: the layer smoothed by a Gaussian of this sigma, whose
# white-noise gain is 1 / (2 sqrt(pi) sigma)
_SIGNAL_SIGMA_PX = 1.0
_SMOOTHED_NOISE = 1.0 / (2.0 * np.sqrt(np.pi) * _SIGNAL_SIGMA_PX)


def image_noise(image: np.ndarray) -> float:
    """The largest per-channel pixel noise sigma of a ``(C, H, W)`` image
    (:func:`starnet_core.inpaint.pixel_noise`): what :func:`star_mask` measures
    the star layer against."""
    _check_chw("image", image)
    return max(pixel_noise(channel) for channel in image)


def enhance(
    original: np.ndarray, starless: np.ndarray, mask: np.ndarray, strength: float = 1.0
) -> np.ndarray:
    """Screen-mask-invert nebula enhancement, ``(C, H, W) float32`` in ``[0, 1]``.

    The starless image is screen-blended onto the original through the inverted
    star mask, so nebulosity brightens and stars (and their surroundings under
    the mask) do not::

        boost = clip(strength * starless, 0, 1)
        out   = original + (1 - mask) * (screen(original, boost) - original)
              = original + (1 - mask) * boost * (1 - original)

    ``strength = 0`` returns the original; where ``mask == 1`` the original is
    unchanged; the result never exceeds 1.

    Args:
        original, starless: ``(C, H, W)`` in ``[0, 1]``, same shape.
        mask: ``(1, H, W)`` or ``(C, H, W)`` in ``[0, 1]``, 1 = star (:func:`star_mask`).
        strength: scale of the screened starless layer, finite and ``>= 0``.
    """
    _check_pair(original, starless)
    _check_chw("mask", mask)
    if mask.shape[0] not in (1, original.shape[0]) or mask.shape[1:] != original.shape[1:]:
        raise ValueError(
            f"mask must have shape (1, H, W) or (C, H, W) matching original {original.shape}, "
            f"got {mask.shape}"
        )
    if (
        isinstance(strength, bool)
        or not isinstance(strength, int | float)
        or not (0.0 <= strength < np.inf)
    ):
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    o = original.astype(np.float32)
    boost = np.clip(np.float32(strength) * starless.astype(np.float32), 0.0, 1.0)
    # the expanded form, so strength 0 and mask 1 give the original bit for bit
    out = o + (1.0 - mask.astype(np.float32)) * boost * (1.0 - o)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def protect_background(
    original: np.ndarray, starless: np.ndarray, options: ProtectOptions
) -> np.ndarray:
    """``original - mask * (original - starless)``, ``(C, H, W) float32``: the network's
    output where its own star layer finds stars, the untouched input elsewhere.

    Both in stretched [0, 1]; ``options.enabled`` False returns ``starless``.
    """
    _check_pair(original, starless)
    if not options.enabled:
        return starless
    layer = star_layer(original, starless)
    noise = image_noise(original) if options.signal_sigmas > 0 else None
    core = _star_pixels(layer.max(axis=0), options.mask, noise)
    # feather outward only: a star's own pixels always take the network's output
    mask = np.maximum(_soften(core, options.mask), core[None])
    return (original - mask * (original - starless)).astype(np.float32)


# The sky chroma at a star pixel averages the nearest sky: the smallest Gaussian
# (sigma about 3, 6, 12, ... px) holding at least this share of sky pixels.
_SKY_MIN_SHARE = 0.2


def _half(level: np.ndarray) -> np.ndarray:
    """2x2 block means of a ``(K, H, W)`` stack, zero-padded to even sizes."""
    _, h, w = level.shape
    if h % 2 or w % 2:
        level = np.pad(level, ((0, 0), (0, h % 2), (0, w % 2)))
    k, h, w = level.shape
    return level.reshape(k, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _up2(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ``(K, h, w)`` field at twice the resolution, cropped to ``shape``: bilinear with
    pixel edges aligned as the 2x2 block means are (weights 3/4 and 1/4), edges extended."""
    for axis in (1, 2):
        a = np.moveaxis(field, axis, 0)
        before = np.concatenate([a[:1], a[:-1]])
        after = np.concatenate([a[1:], a[-1:]])
        pair = np.stack([0.75 * a + 0.25 * before, 0.75 * a + 0.25 * after], axis=1)
        field = np.moveaxis(pair.reshape(2 * a.shape[0], *a.shape[1:]), 0, axis)
    return field[:, : shape[0], : shape[1]]


def _sky_chroma(chroma: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` chroma of the nearest sky: normalised convolution of ``chroma`` over
    the ``sky`` pixels on a 2x pyramid (block means, then a Gaussian of sigma 1.5 level
    pixels: about 3, 6, 12, ... px of the frame). Each pixel takes the finest level whose
    Gaussian holds at least ``_SKY_MIN_SHARE`` sky; the levels are combined coarse
    to fine at their own resolution and the result brought to the frame's."""
    channels = chroma.shape[0]
    skyf = sky.astype(np.float32)
    # sky-weighted chroma, sky weight, and in-frame weight (the frame's outside is no data)
    level = _half(np.concatenate([chroma * skyf, skyf[None], np.ones_like(skyf)[None]]))
    levels = []
    while True:
        blurred = ndimage.gaussian_filter(level, (0, 1.5, 1.5), mode="constant")
        weight, inside = blurred[channels], blurred[channels + 1]
        est = blurred[:channels] / np.maximum(weight, 1e-12)
        levels.append((est, weight > _SKY_MIN_SHARE * inside))
        if max(level.shape[1:]) <= 1:
            break
        level = _half(level)
    est, ok = levels[-1]
    field = np.where(ok, est, chroma[:, sky].mean(axis=1)[:, None, None])
    for est, ok in reversed(levels[:-1]):
        field = np.where(ok, est, _up2(field, est.shape[1:]))
    return _up2(field, chroma.shape[1:])


def fill_sky_colour(
    original: np.ndarray, starless: np.ndarray, options: SkyColourOptions
) -> np.ndarray:
    """Give the network's fill where stars were the colour of the sky around them.

    Where a star dominates a pixel the input shows little of the sky's colour (none
    where every channel of ``original`` is ``>= options.clip_level``), and the
    network's fill there is its guess, pulled toward grey. The result keeps
    ``starless``'s luminance (the channel mean) and moves its chroma
    (``starless - luminance``) to the sky's: the Gaussian-weighted mean of the chroma
    over the nearest sky pixels (star layer below ``sky_threshold``), the Gaussian's
    sigma growing (3, 6, 12, ... px) until a fifth of it is sky. The move is complete
    on clipped cores (grown by ``dilate_px``, feathered outward by ``feather_px``) and
    ramps from 0 to 1 as the star's share of a pixel's light,
    ``1 - lum(starless) / lum(original)``, goes from ``star_share_low`` to
    ``star_share_high``.

    ``(C, H, W)`` in stretched [0, 1]; returns ``(C, H, W) float32``. A mono image,
    a frame without star pixels or without sky, or ``options.enabled`` False comes
    back unchanged.
    """
    _check_pair(original, starless)
    if not options.enabled or original.shape[0] < 2:
        return starless
    core: np.ndarray = np.all(original >= options.clip_level, axis=0)
    if options.dilate_px > 0 and core.any():
        core = ndimage.binary_dilation(core, structure=_disc(options.dilate_px))
    weight = core.astype(np.float32)
    if options.feather_px > 0 and core.any():
        weight = np.maximum(ndimage.gaussian_filter(weight, options.feather_px), weight)
    s = starless.astype(np.float32, copy=True)
    lum: np.ndarray = s.mean(axis=0)
    if options.star_share_low < 1.0:
        lum_in = original.mean(axis=0, dtype=np.float32)
        share = (lum_in - lum) / np.maximum(lum_in, 1e-3)
        ramp = (share - options.star_share_low) / (options.star_share_high - options.star_share_low)
        weight = np.maximum(weight, np.clip(ramp, 0.0, 1.0))
    region: np.ndarray = weight > 1e-3
    if not region.any():
        return starless
    sky: np.ndarray = ((original - starless).max(axis=0) < options.sky_threshold) & ~region
    if not sky.any():
        return starless  # no sky anywhere to take a colour from
    fill = lum[region] + _sky_chroma(s - lum, sky)[:, region]
    s[:, region] += weight[region] * (fill - s[:, region])
    return np.clip(s, 0.0, 1.0, out=s)


_GRAIN_RING_PX = 4  # the grain of the fill is measured this far around the footprints


def burnt_star_footprint(
    original: np.ndarray, starless: np.ndarray, options: CoreFillOptions
) -> np.ndarray:
    """``(H, W)`` bool: the pixels :func:`fill_burnt_stars` replaces.

    Each white or near-white core (every channel of ``original``
    ``>= options.clip_level``; one connected component) from which the network took
    at least ``options.core_drop`` (mean luminance star layer over the core), grown
    through the pixels whose star layer is above ``options.layer_threshold`` but no
    further than ``options.reach`` times the core's radius (of a disc of its area)
    plus ``options.reach_px`` from it, then by ``options.grow_px``.
    """
    _check_pair(original, starless)
    shape = original.shape[1:]
    core = np.all(original >= options.clip_level, axis=0)
    if not core.any():
        return np.zeros(shape, bool)
    layer = (original - starless).mean(axis=0, dtype=np.float32)
    labels, n = ndimage.label(core)
    index = np.arange(1, n + 1)
    taken = np.asarray(ndimage.mean(layer, labels, index)) >= options.core_drop
    if not taken.any():
        return np.zeros(shape, bool)
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    near = np.zeros(shape, bool)
    for k, box in enumerate(ndimage.find_objects(labels)):
        if box is None or not taken[k]:
            continue
        reach = options.reach * np.sqrt(area[k] / np.pi) + options.reach_px
        pad = int(np.ceil(reach))
        ys = slice(max(box[0].start - pad, 0), min(box[0].stop + pad, shape[0]))
        xs = slice(max(box[1].start - pad, 0), min(box[1].stop + pad, shape[1]))
        dist = ndimage.distance_transform_edt(labels[ys, xs] != k + 1)
        near[ys, xs] |= dist <= reach
    kept_cores = np.isin(labels, index[taken])
    grown, _ = ndimage.label(((layer > options.layer_threshold) & near) | kept_cores)
    ids = np.unique(grown[kept_cores])
    footprint = np.isin(grown, ids[ids > 0])
    if options.grow_px > 0:
        footprint = ndimage.binary_dilation(footprint, iterations=options.grow_px)
    return footprint


def fill_burnt_stars(
    original: np.ndarray, starless: np.ndarray, options: CoreFillOptions
) -> np.ndarray:
    """Fill burnt-out stars from their rim: inside :func:`burnt_star_footprint`, the
    push-pull interpolation of ``starless`` around it (the starless sky the network
    made around the star); ``starless`` unchanged elsewhere.

    Over a clipped core the input holds no sky, and the network's fill of the core and
    its halo is a guess that comes out too bright (a soft glow where the star was).
    With ``options.grain``, Gaussian noise at the starless image's pixel noise (per
    channel, measured on a 4 px ring around the footprints:
    :func:`starnet_core.inpaint.add_grain`, as the classical baseline's fill) is added
    to the fill, from a fixed seed.
    ``(C, H, W)`` in stretched [0, 1]; returns ``(C, H, W) float32``. ``options.enabled``
    False, no such star, or a footprint that leaves no rim returns ``starless``.
    """
    _check_pair(original, starless)
    if not options.enabled:
        return starless
    footprint = burnt_star_footprint(original, starless, options)
    if not footprint.any() or footprint.all():
        return starless
    filled = push_pull(starless.astype(np.float32), ~footprint)
    if options.grain:
        ring = ndimage.binary_dilation(footprint, iterations=_GRAIN_RING_PX) & ~footprint
        add_grain(filled, starless, footprint, ring, seed=0)
    return np.clip(filled, 0.0, 1.0).astype(np.float32, copy=False)


def smooth_remnants(
    original: np.ndarray, starless: np.ndarray, options: RemnantOptions
) -> np.ndarray:
    """``starless`` blurred by a Gaussian of ``options.sigma_px`` inside the stars'
    footprints (star layer, brightest channel, above ``options.threshold``; grown by
    ``dilate_px``, edge feathered by ``feather_px``), unchanged outside them.

    What the network leaves of a star inside its footprint (faint bumps, spike lines,
    its 4 px grid) is pixel-scale; the sky under a star holds no grain the input could
    give back. See :class:`starnet_core.options.RemnantOptions`.
    ``(C, H, W)`` in stretched [0, 1]; returns ``(C, H, W) float32``. ``options.enabled``
    False, or no footprint, returns ``starless``.
    """
    _check_pair(original, starless)
    if not options.enabled:
        return starless
    footprint = star_layer(original, starless).max(axis=0) > options.threshold
    if not footprint.any():
        return starless
    if options.dilate_px > 0:
        footprint = ndimage.binary_dilation(footprint, iterations=options.dilate_px)
    weight = footprint.astype(np.float32)
    if options.feather_px > 0:
        weight = ndimage.gaussian_filter(weight, options.feather_px)
    s = starless.astype(np.float32)
    blurred = ndimage.gaussian_filter(s, (0, options.sigma_px, options.sigma_px))
    out = s + np.clip(weight, 0.0, 1.0)[None] * (blurred - s)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def finish_starless(
    original: np.ndarray,
    net_output: np.ndarray,
    protect: ProtectOptions,
    sky_colour: SkyColourOptions,
    core_fill: CoreFillOptions,
    spikes: SpikeOptions = DEFAULT_SPIKE_OPTIONS,
    figures: dict[str, float] | None = None,
    remnants: RemnantOptions = DEFAULT_REMNANT_OPTIONS,
) -> np.ndarray:
    """The starless image users get from the network's output: background protection
    (:func:`protect_background`), the sky's colour where stars were
    (:func:`fill_sky_colour`), burnt-out stars filled from their rim
    (:func:`fill_burnt_stars`), the diffraction spikes the network left taken out
    (:func:`starnet_core.spikes.remove_spikes`; its measurements go to ``figures`` if
    given), then the stars' remnants smoothed away (:func:`smooth_remnants`).
    ``(C, H, W) float32`` in stretched [0, 1]."""
    starless = fill_sky_colour(
        original, protect_background(original, net_output, protect), sky_colour
    )
    starless = fill_burnt_stars(original, starless, core_fill)
    starless = remove_spikes(original, starless, spikes, figures)
    return smooth_remnants(original, starless, remnants)
