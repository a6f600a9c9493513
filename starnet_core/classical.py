"""Classical star removal: detect, mask, inpaint. The baseline the network must beat.

What an astrophotographer does by hand without AI (a star mask from a
multiscale/top-hat detection, then clone/inpaint: PixInsight StarMask, Siril
"remove stars by inpainting"), as one function:

1. **Background**: per channel, a median of block medians over about
   ``background_px`` (stars and their halos barely move a median), upsampled
   bilinearly.
2. **Detection** on luminance: residual = luminance - background, smoothed by
   a 1 px Gaussian (a matched filter for small stars), then a white top-hat
   (11 px opening) so that nebulosity wider than stars drops out. Local maxima
   above ``detect_sigma`` times a local noise map: the robust spread of the
   lower half of the distribution (stars do not raise it) per 32 px block,
   never below the white-noise level from a 3x3 high-pass. Textured nebula
   raises the map (70 % weight), so its grain is not taken for stars.
3. **Star or structure**: per peak, a monotone radial profile of ring medians
   (a neighbour in part of a ring does not move a median), the amplitude above
   the profile's floor at 12 px and the half-width at half-maximum. The typical
   star width is the median over confident unsaturated peaks. A star is as
   wide as the typical star within ``psf_factor`` (wider: galaxy, knot or
   nebula; narrower: a galaxy core sharper than the seeing), falls off all
   around (not a ridge or filament) and rises ``detect_sigma`` above its own
   surroundings. A burnt-out core (white, clipped, at least 0.25 above its
   surroundings) is a star at any width up to ``max_star_px``.
4. **Mask**: a disc per star out to where a Moffat (beta 2.5) wing of its
   width and amplitude meets the local noise (brighter stars get larger
   discs); burnt-out stars follow their own profile out to the noise, and
   bright pixels connected to them within ``2 * max_star_px`` (diffraction
   spikes, blooming) join the mask. Everything grows by ``dilate_px``.
5. **Inpaint**: per channel, background + push-pull interpolation (a
   weight-normalised [1 2 1] pyramid, Gortler et al. 1996) of the residual
   from the unmasked pixels: the fill follows gradients through the background
   model and takes its local level from the hole's rim. With ``add_noise``
   (default), Gaussian noise at the channel's own robust pixel noise is added
   in the mask so that filled discs do not show as smooth blobs; against a
   noisy truth this costs under 0.1 dB of PSNR on the benchmark scenes.
   Pixels outside the mask are returned unchanged.

Arrays: ``(C, H, W) float32`` stretched to ``[0, 1]``, ``C`` in ``{1, 3}``.
Speed: about 0.8 CPU s per megapixel on one core (512 x 512 synthetic scenes),
i.e. > 1 MP/s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import overload

import numpy as np
from scipy import ndimage

from starnet_core.inference import check_stretched_image
from starnet_core.inpaint import add_grain, pixel_noise, push_pull

__all__ = [
    "StarDetections",
    "background",
    "classical_remove_stars",
    "detect_stars",
    "local_level",
    "pixel_noise",
    "push_pull",
    "typical_star_hwhm",
]

log = logging.getLogger(__name__)

_RING_SAMPLES = 16  # angular samples per profile ring
_SHORT_PROFILE_PX = 12  # profile radius for every peak; bright peaks get the long one
_EDGE_SIGMA = 1.0  # a star's disc ends where its profile falls to this many noise sigmas
_BETA = 2.5  # Moffat beta assumed for the wings
_TOPHAT_PX = 11  # structures narrower than this are star candidates
_TEXTURE = 0.7  # weight of the local texture spread in the detection threshold
_SATURATED = 0.95  # a peak whose brightest channel reaches this ...
_SATURATED_LUM = 0.85  # ... and whose luminance reaches this ...
_SATURATED_CONTRAST = 0.25  # ... and which rises this much above its surroundings is burnt out
_TYPICAL_PCT = 20.0  # low percentile of confident peaks' widths: stars are the sharpest things
_RIDGE_SAMPLES = 2  # more ring samples than this above half the peak: a ridge, not a star


@dataclass(frozen=True)
class StarDetections:
    """What :func:`detect_stars` found.

    ``xy``: (N, 2) float pixel positions (x, y) of the stars; ``amplitude``:
    (N,) peak above the local floor in luminance units; ``hwhm_px``: (N,)
    half-width at half-maximum; ``radius_px``: (N,) disc radius masked (before
    ``dilate_px``); ``saturated``: (N,) bool. ``rejected_xy``: (M, 2) peaks
    judged extended (kept as structure). ``mask``: (H, W) bool, True where
    pixels are replaced. ``noise_sigma``: robust per-pixel noise of the
    luminance residual.
    """

    xy: np.ndarray
    amplitude: np.ndarray
    hwhm_px: np.ndarray
    radius_px: np.ndarray
    saturated: np.ndarray
    rejected_xy: np.ndarray
    mask: np.ndarray
    noise_sigma: float


def _check_params(
    detect_sigma: float, dilate_px: int, max_star_px: int, psf_factor: float, background_px: int
) -> None:
    if not detect_sigma > 0:
        raise ValueError(f"detect_sigma must be > 0, got {detect_sigma!r}")
    if isinstance(dilate_px, bool) or not isinstance(dilate_px, int) or dilate_px < 0:
        raise ValueError(f"dilate_px must be an int >= 0, got {dilate_px!r}")
    if isinstance(max_star_px, bool) or not isinstance(max_star_px, int) or max_star_px < 2:
        raise ValueError(f"max_star_px must be an int >= 2, got {max_star_px!r}")
    if not psf_factor >= 1.0:
        raise ValueError(f"psf_factor must be >= 1, got {psf_factor!r}")
    if isinstance(background_px, bool) or not isinstance(background_px, int) or background_px < 6:
        raise ValueError(f"background_px must be an int >= 6, got {background_px!r}")


def _upsample(coarse: np.ndarray, block: int, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear, pixel-area aligned upsampling: coarse cell k covers [k*block, (k+1)*block)."""
    H, W = shape
    hb, wb = coarse.shape
    ys = (np.arange(H, dtype=np.float32) + 0.5) / block - 0.5
    xs = (np.arange(W, dtype=np.float32) + 0.5) / block - 0.5
    y0 = np.clip(np.floor(ys).astype(int), 0, hb - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, wb - 1)
    y1, x1 = np.minimum(y0 + 1, hb - 1), np.minimum(x0 + 1, wb - 1)
    fy = np.clip(ys - y0, 0, 1)[:, None]
    fx = np.clip(xs - x0, 0, 1)[None, :]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _blocks(channel: np.ndarray, block: int) -> np.ndarray:
    """(hb, wb, block*block) array of an (H, W) image cut into blocks (mirror-padded)."""
    H, W = channel.shape
    hb, wb = -(-H // block), -(-W // block)
    padded = np.pad(channel, ((0, hb * block - H), (0, wb * block - W)), mode="symmetric")
    return padded.reshape(hb, block, wb, block).transpose(0, 2, 1, 3).reshape(hb, wb, -1)


def background(channel: np.ndarray, background_px: int) -> np.ndarray:
    """Smooth background of one ``(H, W)`` channel: median of block medians, upsampled.

    The effective window is about ``background_px`` pixels square.
    """
    block = max(1, background_px // 6)
    coarse = np.median(_blocks(channel, block), axis=2)
    coarse = ndimage.median_filter(coarse, size=5, mode="nearest")
    return _upsample(coarse, block, channel.shape)


def local_level(channel: np.ndarray, block_px: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` local median and robust spread (median minus 16th percentile) per block.

    Only the lower half of each block's distribution sets the spread, so stars
    do not raise it; noise and textured nebula do (as SExtractor's RMS map).
    Both maps are median-filtered over 3x3 blocks and upsampled bilinearly.
    """
    lo, med = np.percentile(_blocks(channel, block_px), [15.87, 50.0], axis=2)
    spread = ndimage.median_filter(med - lo, size=3, mode="nearest")
    med = ndimage.median_filter(med, size=3, mode="nearest")
    return _upsample(med, block_px, channel.shape), _upsample(spread, block_px, channel.shape)


def _ring_offsets(radius_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(R+1, S) integer offsets (dy, dx) of ``S`` samples on rings of radius 0..R."""
    r = np.arange(radius_px + 1, dtype=np.float32)[:, None]
    a = np.arange(_RING_SAMPLES, dtype=np.float32)[None, :] * (2 * np.pi / _RING_SAMPLES)
    # stagger alternate rings so the samples do not line up along 16 spokes
    a = a + (np.arange(radius_px + 1)[:, None] % 2) * (np.pi / _RING_SAMPLES)
    return np.rint(r * np.sin(a)).astype(int), np.rint(r * np.cos(a)).astype(int)


def _profiles(resid: np.ndarray, py: np.ndarray, px: np.ndarray, radius_px: int) -> np.ndarray:
    """(N, R+1) monotone (non-increasing) ring-median profiles of ``resid`` at the peaks."""
    H, W = resid.shape
    dy, dx = _ring_offsets(radius_px)
    out = np.empty((py.size, radius_px + 1), np.float32)
    chunk = max(1, (1 << 21) // dy.size)
    for i in range(0, py.size, chunk):
        yy = np.clip(py[i : i + chunk, None, None] + dy[None], 0, H - 1)
        xx = np.clip(px[i : i + chunk, None, None] + dx[None], 0, W - 1)
        out[i : i + chunk] = np.median(resid[yy, xx], axis=2)
    out[:, 0] = resid[py, px]
    return np.minimum.accumulate(out, axis=1)


def _crossing(profile: np.ndarray, level: np.ndarray) -> np.ndarray:
    """First radius (interpolated) where each monotone profile drops below ``level``; R if never."""
    R = profile.shape[1] - 1
    below = profile < level[:, None]
    first = np.where(below.any(1), below.argmax(1), R)
    rows = np.arange(profile.shape[0])
    prev = np.maximum(first - 1, 0)
    hi, lo = profile[rows, prev], profile[rows, first]
    frac = np.where(hi > lo, (hi - level) / np.maximum(hi - lo, 1e-12), 0.0)
    return np.where(first > 0, prev + np.clip(frac, 0, 1), 0.0).astype(np.float32)


def _peaks(smooth: np.ndarray, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``smooth`` above ``threshold``; a flat plateau yields its one centre."""
    peak = (smooth == ndimage.maximum_filter(smooth, size=3)) & (smooth > threshold)
    labels, n = ndimage.label(peak, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(0, int), np.zeros(0, int)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    count = np.bincount(lab, minlength=n)
    cy = np.rint(np.bincount(lab, ys, n) / count).astype(int)
    cx = np.rint(np.bincount(lab, xs, n) / count).astype(int)
    return cy, cx


def _paint_discs(
    shape: tuple[int, int], cy: np.ndarray, cx: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """(H, W) bool: union of discs of ``radius`` (float px) at integer centres."""
    H, W = shape
    mask = np.zeros(shape, bool)
    if cy.size == 0:
        return mask
    rmax = int(np.ceil(radius.max()))
    oy, ox = np.mgrid[-rmax : rmax + 1, -rmax : rmax + 1]
    dist = np.hypot(oy, ox).ravel()
    order = np.argsort(dist)
    dist, oy, ox = dist[order], oy.ravel()[order], ox.ravel()[order]
    # group stars by how many offsets (sorted by distance) their disc needs
    n_off = np.searchsorted(dist, radius, side="right")
    for n in np.unique(n_off):
        sel = n_off == n
        yy = (cy[sel, None] + oy[None, :n]).ravel()
        xx = (cx[sel, None] + ox[None, :n]).ravel()
        ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        mask[yy[ok], xx[ok]] = True
    return mask


@dataclass
class _Peaks:
    """Per-peak measurements (arrays of length N) on the smoothed luminance residual."""

    cy: np.ndarray
    cx: np.ndarray
    amp: np.ndarray  # peak above the floor of its own profile
    floor: np.ndarray  # profile level at _SHORT_PROFILE_PX
    hwhm: np.ndarray  # half-width at half-maximum, px
    sigma: np.ndarray  # detection sigma at the peak (noise, or part of the texture)
    saturated: np.ndarray


def _measure(
    image: np.ndarray,
    lum: np.ndarray,
    smooth: np.ndarray,
    sigma_map: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
) -> _Peaks:
    # profiles on the lightly smoothed residual: steadier than raw pixels at low SNR
    prof = _profiles(smooth, cy, cx, _SHORT_PROFILE_PX)
    floor = prof[:, -1]
    amp = np.maximum(prof[:, 0] - floor, 0)
    hwhm = _crossing(prof - floor[:, None], amp / 2)
    # a burnt-out star core is near white and far above its surroundings; a bright
    # nebula may clip one channel, or all of them but with bright surroundings
    saturated = (image.max(axis=0)[cy, cx] >= _SATURATED) & (lum[cy, cx] >= _SATURATED_LUM)
    saturated &= amp >= _SATURATED_CONTRAST
    return _Peaks(cy, cx, amp, floor, hwhm, sigma_map[cy, cx], saturated)


def _confident(p: _Peaks) -> np.ndarray:
    """(N,) bool: peaks detected well above their noise and not burnt out."""
    return (p.amp > 10 * p.sigma) & ~p.saturated


def _typical_hwhm(p: _Peaks) -> float:
    """The typical star half-width (px): a low percentile of the confident peaks' widths
    (of all peaks when fewer than five are confident)."""
    good = _confident(p)
    return float(np.percentile(p.hwhm[good] if good.sum() >= 5 else p.hwhm, _TYPICAL_PCT))


def _classify(
    p: _Peaks, smooth: np.ndarray, detect_sigma: float, max_star_px: int, psf_factor: float
) -> tuple[np.ndarray, float]:
    """(N,) bool: which peaks are stars; and the typical star half-width (px)."""
    H, W = smooth.shape
    typical = _typical_hwhm(p)
    limit = max(psf_factor * typical, typical + 1.0)
    # nothing in the sky is sharper than the seeing either: much narrower peaks are
    # compact galaxy cores or knots; much wider ones are galaxies or nebula detail
    psf_like = (p.hwhm <= limit) & (p.hwhm >= typical / psf_factor) & (p.hwhm <= max_star_px / 2)
    # a star falls off all around; a nebula peak on a ridge or filament does not:
    # count samples on a ring at ~2.5 typical half-widths above half the amplitude
    dy, dx = _ring_offsets(int(np.ceil(2.5 * typical + 1)))
    ring = smooth[
        np.clip(p.cy[:, None] + dy[-1], 0, H - 1), np.clip(p.cx[:, None] + dx[-1], 0, W - 1)
    ]
    ridge = ((ring - p.floor[:, None]) > p.amp[:, None] / 2).sum(1) > _RIDGE_SAMPLES
    # a star stands out from its own surroundings, not only from the wide background
    contrast = p.amp >= detect_sigma * p.sigma
    # a burnt-out core may be wide (merged or bloated stars), but not wider than max_star_px
    burnt = p.saturated & (p.hwhm <= max_star_px)
    return contrast & (burnt | (psf_like & ~ridge)), typical


def _disc_radii(p: _Peaks, smooth: np.ndarray, max_star_px: int) -> np.ndarray:
    """(N,) disc radius (px, before dilation) that covers each star down to the noise.

    Where a Moffat (beta 2.5) profile of the star's width and amplitude falls to
    the local noise, so brighter stars get larger discs. Burnt-out stars have no
    measurable amplitude: their profile is followed out to the noise instead.
    """
    level = _EDGE_SIGMA * p.sigma * 2 * np.sqrt(np.pi)  # smoothed -> per-pixel sigma
    ratio = np.maximum(p.amp / level, 1.0)
    radius = p.hwhm * np.sqrt((ratio ** (1 / _BETA) - 1) / (2 ** (1 / _BETA) - 1))
    if p.saturated.any():
        sat = p.saturated
        lp = _profiles(smooth, p.cy[sat], p.cx[sat], 2 * max_star_px)
        radius[sat] = _crossing(lp - lp[:, -1:], level[sat])
    return np.clip(radius, 1.0, 2 * max_star_px)


def _spike_mask(p: _Peaks, det: np.ndarray, threshold: np.ndarray, max_star_px: int) -> np.ndarray:
    """(H, W) bool: diffraction spikes and blooming of the burnt-out stars in ``p``.

    Pixels of the detection image above ``threshold`` (and above a fifth of the
    least burnt core's contrast, so a textured nebula does not leak in),
    connected to a burnt-out star and within ``2 * max_star_px`` of it.
    """
    labels, _ = ndimage.label(det > np.maximum(threshold, 0.2 * _SATURATED_CONTRAST))
    keep = np.unique(labels[p.cy, p.cx])
    reach = _paint_discs(det.shape, p.cy, p.cx, np.full(p.cy.size, 2.0 * max_star_px))
    return np.isin(labels, keep[keep > 0]) & reach


def _subset(p: _Peaks, sel: np.ndarray) -> _Peaks:
    return _Peaks(*(getattr(p, f)[sel] for f in p.__dataclass_fields__))


def _find_peaks(
    image: np.ndarray, detect_sigma: float, background_px: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float, _Peaks]:
    """Compact peaks of a stretched ``(C, H, W)`` image: (luminance, its smoothed
    residual, the detection image, the detection sigma map, the pixel noise, the peaks)."""
    lum = image.mean(axis=0, dtype=np.float32)
    smooth = ndimage.gaussian_filter(lum - background(lum, background_px), 1.0, truncate=3.0)
    # detection image: white top-hat of the smoothed residual; nebulosity wider than
    # _TOPHAT_PX leaves it, compact things stay
    opened = ndimage.grey_opening(smooth, size=(_TOPHAT_PX, _TOPHAT_PX))
    det = smooth - ndimage.uniform_filter(opened, _TOPHAT_PX)
    sigma_pix = max(pixel_noise(lum), 1e-6)
    # the top-hat of noise sits above zero (an opening is a local minimum): measure from
    # the local median. The threshold's sigma is the larger of the local pixel noise
    # (stretched images are noisier in bright areas) smoothed like det -- a unit
    # Gaussian keeps 1 / (2 sqrt(pi)) of white noise's sigma -- and a part of det's
    # local spread, which textured nebula raises
    level, spread = local_level(det)
    _, noise = local_level(lum - ndimage.uniform_filter(lum, 3))
    noise = np.maximum(noise * np.sqrt(9 / 8), sigma_pix)
    sigma_map = np.maximum(_TEXTURE * spread, noise / (2 * np.sqrt(np.pi)))
    det -= level
    cy, cx = _peaks(det, detect_sigma * sigma_map)
    peaks = _measure(image, lum, smooth, sigma_map, cy, cx)
    return lum, smooth, det, sigma_map, sigma_pix, peaks


@overload
def typical_star_hwhm(
    image: np.ndarray, *, window_px: int = ..., background_px: int = ..., default: float
) -> float: ...


@overload
def typical_star_hwhm(
    image: np.ndarray, *, window_px: int = ..., background_px: int = ..., default: None = ...
) -> float | None: ...


def typical_star_hwhm(
    image: np.ndarray,
    *,
    window_px: int = 1024,
    background_px: int = 48,
    default: float | None = None,
) -> float | None:
    """The typical star half-width at half-maximum (px) of a stretched ``(C, H, W)``
    frame, as :func:`detect_stars` measures it (on the luminance smoothed by a unit
    Gaussian, so a one-pixel star reads about 1.2 px); ``default`` when fewer than five
    peaks stand well clear of the noise (an empty or starless frame).

    Measured on the centred ``window_px`` square at most, so a large frame costs no
    more than a small one.
    """
    check_stretched_image(image)
    if isinstance(window_px, bool) or not isinstance(window_px, int) or window_px < 32:
        raise ValueError(f"window_px must be an int >= 32, got {window_px!r}")
    _, H, W = image.shape
    y0, x0 = max(0, (H - window_px) // 2), max(0, (W - window_px) // 2)
    window = np.ascontiguousarray(image[:, y0 : y0 + window_px, x0 : x0 + window_px])
    _, _, _, _, _, peaks = _find_peaks(window, 3.0, background_px)
    if _confident(peaks).sum() < 5:
        return default
    return _typical_hwhm(peaks)


def detect_stars(
    image: np.ndarray,
    *,
    detect_sigma: float = 3.0,
    dilate_px: int = 2,
    max_star_px: int = 25,
    psf_factor: float = 1.6,
    background_px: int = 48,
) -> StarDetections:
    """Find stars in a stretched ``(C, H, W) float32`` image and build the mask to inpaint.

    Parameters as in :func:`classical_remove_stars`.
    """
    check_stretched_image(image)
    _check_params(detect_sigma, dilate_px, max_star_px, psf_factor, background_px)
    lum, smooth, det, sigma_map, sigma_pix, peaks = _find_peaks(image, detect_sigma, background_px)
    H, W = lum.shape
    cy, cx = peaks.cy, peaks.cx
    if cy.size == 0:
        is_star, typical = np.zeros(0, bool), 0.0
    else:
        is_star, typical = _classify(peaks, smooth, detect_sigma, max_star_px, psf_factor)
    stars = _subset(peaks, is_star)
    radius = _disc_radii(stars, smooth, max_star_px)
    mask = _paint_discs((H, W), stars.cy, stars.cx, radius + dilate_px)
    burnt = _subset(stars, stars.saturated)
    if burnt.cy.size:
        spikes = _spike_mask(burnt, det, detect_sigma * sigma_map, max_star_px)
        if dilate_px:
            spikes = ndimage.binary_dilation(spikes, iterations=dilate_px)
        mask |= spikes
    log.debug(
        "classical: %d peaks, %d stars (%d saturated), typical hwhm %.2f px, %.1f%% masked",
        cy.size,
        stars.cy.size,
        burnt.cy.size,
        typical,
        100 * mask.mean(),
    )
    xy = np.stack([cx, cy], 1).astype(np.float32)
    return StarDetections(
        xy[is_star], stars.amp, stars.hwhm, radius, stars.saturated, xy[~is_star], mask, sigma_pix
    )


def classical_remove_stars(
    image: np.ndarray,
    *,
    detect_sigma: float = 3.0,
    dilate_px: int = 2,
    max_star_px: int = 25,
    psf_factor: float = 1.6,
    background_px: int = 48,
    add_noise: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Remove stars by detection, masking and inpainting (method in the module docstring).

    Args:
        image: ``(C, H, W) float32`` stretched to ``[0, 1]``, ``C`` in ``{1, 3}``.
        detect_sigma: a peak of the 1-px-smoothed luminance residual must exceed
            this many of its robust noise sigmas to be considered.
        dilate_px: pixels added to every star's disc (and to spike masks).
        max_star_px: peaks whose half-maximum diameter exceeds this are structure,
            never stars; star discs are at most ``2 * max_star_px`` in radius.
        psf_factor: an unsaturated peak wider than this times the typical star's
            half-width is a galaxy or knot and is kept.
        background_px: window of the median background (larger than stars with
            their halos, smaller than nebula gradients).
        add_noise: add noise matched to the image's pixel noise inside the mask.
        seed: seed of that noise (the result is deterministic).

    Returns:
        ``(C, H, W) float32`` in ``[0, 1]``; pixels outside the star mask unchanged.
    """
    det = detect_stars(
        image,
        detect_sigma=detect_sigma,
        dilate_px=dilate_px,
        max_star_px=max_star_px,
        psf_factor=psf_factor,
        background_px=background_px,
    )
    if not det.mask.any():
        return image.copy()
    known = ~det.mask
    bg = np.stack([background(ch, background_px) for ch in image])
    fill = bg + push_pull(image - bg, known)
    if add_noise:
        add_grain(fill, image, det.mask, known, seed)
    out = np.where(det.mask[None], fill, image)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
