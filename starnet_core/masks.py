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
from starnet_core.spikes import mean_difference, remove_spikes

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
    # the casts and the clamp without a copy of either input: the result is the one frame
    layer = np.subtract(original, starless, dtype=np.float32)
    return np.maximum(layer, 0.0, out=layer)


def _layer_max(original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """``star_layer(original, starless).max(axis=0)``, ``(H, W) float32``, a channel at
    a time: a plane of memory, not the frame a whole star layer would take."""
    top = np.subtract(original[0], starless[0], dtype=np.float32)
    np.maximum(top, 0.0, out=top)
    layer = np.empty_like(top)
    for o, s in zip(original[1:], starless[1:], strict=True):
        np.subtract(o, s, out=layer, dtype=np.float32)
        np.maximum(layer, 0.0, out=layer)
        np.maximum(top, layer, out=top)
    return top


def unscreen_star_layer(original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """Stars for screen blending: ``(original - starless) / (1 - starless)``, in ``[0, 1]``.

    The inverse of screen blending: ``screen(starless, stars) == original`` wherever
    ``starless <= original``, so stars can be screened back onto an edited starless
    image, as astrophotographers do. The divisor is at least ``UNSCREEN_EPS`` where
    the starless image is saturated. ``(C, H, W) float32``; computed in float64.
    """
    _check_pair(original, starless)
    out = np.empty(original.shape, np.float32)
    for c in range(original.shape[0]):  # a channel at a time: float64 planes, not frames
        s = starless[c].astype(np.float64)
        stars = original[c].astype(np.float64)
        stars -= s
        np.subtract(1.0, s, out=s)
        stars /= np.maximum(s, UNSCREEN_EPS, out=s)
        out[c] = np.clip(stars, 0.0, 1.0, out=stars)
        del s, stars  # before the next channel's are made
    return out


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
    # the expanded form, so strength 0 and mask 1 give the original bit for bit:
    #     out = o + (1 - mask) * boost * (1 - o)
    # a channel at a time, so that only a few planes are held besides the result
    gain = np.float32(strength)
    keep = np.subtract(1.0, mask, dtype=np.float32)
    out = np.empty(original.shape, np.float32)
    for c in range(original.shape[0]):
        o = original[c].astype(np.float32, copy=False)
        boost = starless[c].astype(np.float32)
        boost *= gain
        np.clip(boost, 0.0, 1.0, out=boost)
        boost *= keep[c if keep.shape[0] > 1 else 0]
        np.subtract(1.0, o, out=out[c])
        out[c] *= boost
        out[c] += o
        del boost  # before the next channel's is made
    return np.clip(out, 0.0, 1.0, out=out)


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
    noise = image_noise(original) if options.signal_sigmas > 0 else None
    core = _star_pixels(_layer_max(original, starless), options.mask, noise)
    # feather outward only: a star's own pixels always take the network's output
    mask = np.maximum(_soften(core, options.mask), core[None])[0]
    out = np.empty(original.shape, np.float32)
    for c in range(original.shape[0]):  # a channel at a time; the same arithmetic
        taken = original[c] - starless[c]
        in_place = np.result_type(mask, taken) == taken.dtype
        taken = np.multiply(mask, taken, out=taken if in_place else None)
        np.subtract(original[c], taken, out=out[c])
        del taken  # before the next channel's is made
    return out


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


def _up_axis(field: np.ndarray, axis: int) -> np.ndarray:
    """``field`` at twice the resolution along ``axis``: bilinear with pixel edges
    aligned as the 2x2 block means are (weights 3/4 and 1/4), edges extended. Written
    into one new array (no stacked or concatenated copies)."""

    def part(index: slice) -> tuple[slice, ...]:
        return (slice(None),) * axis + (index,)

    shape = list(field.shape)
    shape[axis] *= 2
    out = np.empty(shape, field.dtype)
    head, tail = part(slice(None, 1)), part(slice(-1, None))
    even, odd = out[part(slice(0, None, 2))], out[part(slice(1, None, 2))]
    np.multiply(field, 0.75, out=even)  # even samples lean on the one before ...
    even[part(slice(1, None))] += 0.25 * field[part(slice(None, -1))]
    even[head] += 0.25 * field[head]
    np.multiply(field, 0.75, out=odd)  # ... odd ones on the one after
    odd[part(slice(None, -1))] += 0.25 * field[part(slice(1, None))]
    odd[tail] += 0.25 * field[tail]
    return out


def _up2(field: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ``(K, h, w)`` field at twice the resolution, cropped to ``shape``: bilinear with
    pixel edges aligned as the 2x2 block means are (weights 3/4 and 1/4), edges extended."""
    return _up_axis(_up_axis(field, 1), 2)[:, : shape[0], : shape[1]]


def _up2_rows(field: np.ndarray, rows: slice, width: int) -> np.ndarray:
    """``_up2(field, (H, width))[:, rows]`` for an even ``rows.start``, computed from the
    rows of ``field`` it needs (and one more on each side): a strip, not the frame."""
    start, stop = rows.start, rows.stop
    lo = max(start // 2 - 1, 0)
    hi = min((stop + 1) // 2 + 1, field.shape[1])
    strip = _up2(field[:, lo:hi], (2 * (hi - lo), width))
    return strip[:, start - 2 * lo : stop - 2 * lo]


def _sequential_mean(plane: np.ndarray, where: np.ndarray) -> np.floating:
    """``plane[where]``'s mean as numpy computes ``chroma[:, where].mean(axis=1)`` for a
    ``(C, H, W)`` stack: the gather puts the channels innermost, so each channel's
    float32 sum runs in order (not pairwise). Summed here a block of rows at a time, so
    that neither the gather nor the whole stack is held."""
    total: np.ndarray | None = None
    step = _strip_rows(plane.shape[0])
    for y in range(0, plane.shape[0], step):
        values = plane[y : y + step][where[y : y + step]]
        if values.size == 0:
            continue
        if total is not None:
            values = np.concatenate([total[-1:], values])
        total = np.add.accumulate(values)
    assert total is not None  # where has pixels: the caller checks
    return plane.dtype.type(np.float64(total[-1]) / np.intp(where.sum()))


# The sky chroma is brought to the frame's resolution and applied in strips of rows:
# a sixteenth of the frame's height, at least this many rows.
_MIN_STRIP_PX = 32


def _strip_rows(height: int) -> int:
    """Rows per strip for a frame ``height`` px high: even (a strip starts on a row of
    the half-resolution field)."""
    return max(_MIN_STRIP_PX, 2 * -(-height // 32))


def _sky_chroma(starless: np.ndarray, lum: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """``(C, ceil(H / 2), ceil(W / 2)) float32``: the chroma (``starless - lum``) of the
    nearest sky at half the frame's resolution (:func:`_up2` brings it to the frame's):
    normalised convolution of the chroma over the ``sky`` pixels on a 2x pyramid (block
    means, then a Gaussian of sigma 1.5 level pixels: about 3, 6, 12, ... px of the
    frame). Each pixel takes the finest level whose Gaussian holds at least
    ``_SKY_MIN_SHARE`` sky; the levels are combined coarse to fine at their own
    resolution.

    The full-resolution planes (each channel's chroma, the sky weight) are made and
    halved one at a time: only the pyramid, a quarter of the frame and less, is held."""
    channels = starless.shape[0]
    skyf = sky.astype(np.float32)
    # per channel the sky-weighted chroma, then the sky weight and the in-frame weight
    # (the frame's outside is no data), each halved as soon as it is made
    level = np.empty((channels + 2, (sky.shape[0] + 1) // 2, (sky.shape[1] + 1) // 2), np.float32)
    fallback = np.empty((channels, 1, 1), np.float32)
    for c in range(channels):
        chroma = np.subtract(starless[c], lum, dtype=np.float32)
        fallback[c] = _sequential_mean(chroma, sky)
        chroma *= skyf
        level[c] = _half(chroma[None])[0]
        del chroma
    level[channels] = _half(skyf[None])[0]
    skyf.fill(1.0)
    level[channels + 1] = _half(skyf[None])[0]
    del skyf
    levels = []
    while True:
        weight = ndimage.gaussian_filter(level[channels], 1.5, mode="constant")
        inside = ndimage.gaussian_filter(level[channels + 1], 1.5, mode="constant")
        ok = weight > _SKY_MIN_SHARE * inside
        np.maximum(weight, 1e-12, out=weight)
        est = np.empty((channels, *weight.shape), np.float32)
        for c in range(channels):
            ndimage.gaussian_filter(level[c], 1.5, mode="constant", output=est[c])
            est[c] /= weight
        levels.append((est, ok))
        if max(level.shape[1:]) <= 1:
            break
        level = _half(level)
    del level
    est, ok = levels.pop()
    field = np.where(ok, est, fallback)
    while levels:
        est, ok = levels.pop()
        field = np.where(ok, est, _up2(field, est.shape[1:]))
    return field


def _components(core: np.ndarray, layer: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The connected components of ``core`` (``(H, W)`` bool): their labels (``(H, W)``,
    0 off the cores), and per component its pixel count and the mean of ``layer`` over
    it: ``ndimage.mean`` (float64 sums in pixel order) over the cores' pixels only, as
    ``ndimage.mean`` would make int64 and float64 copies of the whole frame."""
    labels, n = ndimage.label(core)
    ids = labels[core]
    area = np.bincount(ids, minlength=n + 1)[1:]
    sums = np.bincount(ids, weights=layer[core], minlength=n + 1)[1:]
    return labels, area, sums / area.astype(np.float64)


def _taken_cores(core: np.ndarray, original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """``(H, W) bool``: the connected components of ``core`` from which the network took
    at least ``_SKY_CORE_DROP`` (mean luminance star layer over the component); ``core``
    itself when that is all of them."""
    if not core.any():
        return core
    labels, _, drop = _components(core, mean_difference(original, starless))
    if drop.min() >= _SKY_CORE_DROP:
        return core  # the caller sees it is the same array and weighs it once
    return np.concatenate([[False], drop >= _SKY_CORE_DROP])[labels]


def _core_weight(core: np.ndarray, options: SkyColourOptions) -> np.ndarray:
    """``(H, W) float32``: :func:`fill_sky_colour`'s weight of the ``core`` pixels, grown
    by ``options.dilate_px`` and feathered outward by ``options.feather_px``."""
    if not core.any():
        return np.zeros(core.shape, np.float32)
    if options.dilate_px > 0:
        core = ndimage.binary_dilation(core, structure=_disc(options.dilate_px))
    weight = core.astype(np.float32)
    if options.feather_px > 0:
        weight = np.maximum(ndimage.gaussian_filter(weight, options.feather_px), weight)
    return weight


# A clipped core is a star the network took when it took at least this much of it (mean
# luminance star layer over the core, stretched units); a core it kept (a galaxy's
# nucleus, a nebula's bright knot) keeps its colour. Model 0.10.0, protected output, on 7
# coloured-sky and default-mix scenes: 0.23 to 0.99 over the stars' clipped cores; 0.000
# over a linear frame's galaxy core (20000 ADU on a 1000 ADU sky), 0.05 over a nucleus it
# kept. On benchmarks.sky_colour's sets (12 scenes each) the step's gain, mean / worst
# scene: cast +0.60 / -0.50 dB -> +0.70 / -0.16 dB, default +0.481 / -0.217 -> +0.481 /
# -0.216, real pairs unchanged (+0.69 / +0.17).
_SKY_CORE_DROP = 0.1


def _all_at_least(image: np.ndarray, level: float) -> np.ndarray:
    """``(H, W) bool``: every channel of ``image`` is ``>= level`` (a channel at a time)."""
    out = image[0] >= level
    for plane in image[1:]:
        out &= plane >= level
    return out


def _max_difference(original: np.ndarray, starless: np.ndarray) -> np.ndarray:
    """``(original - starless).max(axis=0)`` (the inputs' own float type), a channel at a
    time."""
    top = np.subtract(original[0], starless[0])
    for o, s in zip(original[1:], starless[1:], strict=True):
        np.maximum(top, o - s, out=top)
    return top


def fill_sky_colour(
    original: np.ndarray, starless: np.ndarray, options: SkyColourOptions
) -> np.ndarray:
    """Give the network's fill where stars were the colour of the sky around them.

    Where a star dominates a pixel the input shows little of the sky's colour (none
    where every channel of ``original`` is ``>= options.clip_level``), and the
    network's fill there is its guess, pulled toward grey. The result keeps
    ``starless``'s luminance (the channel mean) and moves its chroma
    (``starless - luminance``) to the sky's: the Gaussian-weighted mean of the chroma
    over the nearest sky pixels (star layer below ``sky_threshold``; not a clipped core
    or its ring, which hold no colour), the Gaussian's sigma growing (3, 6, 12, ... px)
    until a fifth of it is sky. The move is complete on the clipped cores the network
    took (each connected core whose mean luminance star layer is at least
    ``_SKY_CORE_DROP``; grown by ``dilate_px``, feathered outward by ``feather_px``) and
    ramps from 0 to 1 as the star's share of a pixel's light,
    ``1 - lum(starless) / lum(original)``, goes from ``star_share_low`` to
    ``star_share_high``. A clipped core the network kept is no star: after the stretch
    the nucleus of a galaxy or the bright core of a nebula of a linear frame is as
    white as a burnt-out star, but its colour is the input's, and the sky's would
    change it (and put the difference into the star layer).

    ``(C, H, W)`` in stretched [0, 1]; returns ``(C, H, W) float32``. A mono image,
    a frame without star pixels or without sky, or ``options.enabled`` False comes
    back unchanged.

    Memory: besides the result, a few planes and the half-resolution pyramid of
    :func:`_sky_chroma`; the move is applied in strips of rows.
    """
    _check_pair(original, starless)
    if not options.enabled or original.shape[0] < 2:
        return starless
    clipped = _all_at_least(original, options.clip_level)
    core = _taken_cores(clipped, original, starless)
    weight = _core_weight(core, options)
    # every clipped core and its ring, taken or kept, holds no colour: never sky
    colourless = weight > 1e-3 if core is clipped else _core_weight(clipped, options) > 1e-3
    del clipped, core
    lum = starless.mean(axis=0, dtype=np.float32)
    if options.star_share_low < 1.0:
        lum_in = original.mean(axis=0, dtype=np.float32)
        ramp = lum_in - lum  # the star's share of the light ...
        ramp /= np.maximum(lum_in, 1e-3, out=lum_in)
        del lum_in
        ramp -= options.star_share_low  # ... from star_share_low to star_share_high
        ramp /= options.star_share_high - options.star_share_low
        np.maximum(weight, np.clip(ramp, 0.0, 1.0, out=ramp), out=weight)
        del ramp
    region: np.ndarray = weight > 1e-3
    if not region.any():
        return starless
    sky: np.ndarray = _max_difference(original, starless) < options.sky_threshold
    sky &= ~region
    sky &= ~colourless
    del colourless
    if not sky.any():
        return starless  # no sky anywhere to take a colour from
    field = _sky_chroma(starless, lum, sky)
    del sky
    s = starless.astype(np.float32, copy=True)
    height, width = region.shape
    step = _strip_rows(height)
    for y in range(0, height, step):
        rows = slice(y, min(y + step, height))
        here = region[rows]
        if not here.any():
            continue
        fill = lum[rows][here] + _up2_rows(field, rows, width)[:, here]
        block = s[:, rows]
        fill -= block[:, here]
        fill *= weight[rows][here]
        block[:, here] += fill
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
    core = _all_at_least(original, options.clip_level)
    if not core.any():
        return np.zeros(shape, bool)
    layer = mean_difference(original, starless)
    labels, area, drop = _components(core, layer)
    del core
    taken = drop >= options.core_drop
    if not taken.any():
        return np.zeros(shape, bool)
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
    # membership by lookup tables indexed with the labels (np.isin sorts or builds
    # int64 planes)
    kept_cores = np.concatenate([[False], taken])[labels]
    del labels
    near &= layer > options.layer_threshold
    near |= kept_cores
    del layer
    grown, m = ndimage.label(near)
    del near
    grown_ids = np.zeros(m + 1, bool)
    grown_ids[grown[kept_cores]] = True
    grown_ids[0] = False
    footprint = grown_ids[grown]
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
    known = ~footprint
    filled = np.empty(starless.shape, np.float32)
    for c in range(starless.shape[0]):  # push-pull is per channel: a third of its memory
        filled[c] = push_pull(starless[c : c + 1].astype(np.float32, copy=False), known)[0]
    del known
    if options.grain:
        ring = ndimage.binary_dilation(footprint, iterations=_GRAIN_RING_PX) & ~footprint
        add_grain(filled, starless, footprint, ring, seed=0)
    return np.clip(filled, 0.0, 1.0, out=filled)


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
    footprint = _layer_max(original, starless) > options.threshold
    if not footprint.any():
        return starless
    if options.dilate_px > 0:
        footprint = ndimage.binary_dilation(footprint, iterations=options.dilate_px)
    weight = footprint.astype(np.float32)
    if options.feather_px > 0:
        weight = ndimage.gaussian_filter(weight, options.feather_px)
    np.clip(weight, 0.0, 1.0, out=weight)
    # s + weight * (blurred - s), a channel at a time into the result
    out = starless.astype(np.float32, copy=True)
    for s in out:
        move = ndimage.gaussian_filter(s, options.sigma_px)
        move -= s
        move *= weight
        s += move
        del move  # before the next channel's is made
    return np.clip(out, 0.0, 1.0, out=out)


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
