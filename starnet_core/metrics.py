"""Quality figures for star removal, against a known starless truth.

Arrays are ``(C, H, W)`` float (stretched, data range 1) unless stated;
positions are ``(N, 2)`` float pixel coordinates ``(x, y)`` with pixel
``(row i, column j)`` centred at ``(x=j, y=i)`` (as in
:mod:`starnet_core.synthetic`). Flux is measured on luminance (the channel
mean) in stretched units, summed over pixels.

Figures:

- :func:`psnr`: whole image or masked, dB, capped at :data:`PSNR_MAX_DB`.
- :func:`background_mask`: pixels far from every star, where the truth equals
  the original; PSNR there measures damage done to the background.
- :func:`residual_star_flux`: per star, the fraction of its own flux left in
  the output (0 = gone, 1 = untouched), grouped by :func:`brightness_bins`.
- :func:`structure_kept`: per galaxy/knot, the fraction of its flux above the
  local background that survives (1 = perfect).
- :func:`detectable_fraction`: of the stars detectable in the original, the
  fraction still detectable in the output.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from starnet_core.inpaint import pixel_noise

__all__ = [
    "BRIGHTNESS_BINS",
    "PSNR_MAX_DB",
    "annulus_medians",
    "aperture_sums",
    "background_mask",
    "brightness_bins",
    "detectable_counts",
    "detectable_fraction",
    "psnr",
    "residual_star_flux",
    "star_fluxes",
    "structure_kept",
    "summarize",
]

PSNR_MAX_DB = 100.0  # identical images would be +inf; JSON and means need a number
BRIGHTNESS_BINS = ("faint", "medium", "bright")
DEFAULT_SNR_EDGES = (30.0, 300.0)  # peak SNR: faint < 30 <= medium < 300 <= bright
_MAD_TO_SIGMA = 1.4826


def _check_pair(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    for name, x in ((name_a, a), (name_b, b)):
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"{name} must be a (C, H, W) array, got {getattr(x, 'shape', x)!r}")
    if a.shape != b.shape:
        raise ValueError(f"{name_b} shape {b.shape} differs from {name_a} shape {a.shape}")


def _check_xy(name: str, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"{name} must be an (N, 2) array of (x, y), got shape {xy.shape}")
    return xy


def _check_radius(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _lum(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).mean(axis=0)


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB for data range 1.

    ``pred``, ``truth``: ``(C, H, W)``; ``mask``: optional ``(H, W)`` bool, the
    pixels compared (all channels). Returns :data:`PSNR_MAX_DB` for identical
    pixels and ``nan`` when the mask selects nothing.
    """
    _check_pair("pred", pred, "truth", truth)
    diff = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != pred.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} differs from the image's {pred.shape[1:]}")
        if not mask.any():
            return float("nan")
        diff = diff[:, mask]
    mse = float(np.mean(diff * diff))
    if mse <= 10.0 ** (-PSNR_MAX_DB / 10):
        return PSNR_MAX_DB
    return -10.0 * math.log10(mse)


def background_mask(
    original: np.ndarray,
    truth: np.ndarray,
    scene: object | None = None,
    *,
    far_px: float = 8.0,
    tol: float = 2e-3,
    min_snr: float = 1.0,
) -> np.ndarray:
    """``(H, W)`` bool: background pixels, farther than ``far_px`` from anything a star touched.

    A pixel is star-affected where ``|original - truth| > tol`` in any channel
    (stretched units) and, when ``scene`` (a :class:`~starnet_core.synthetic.Scene`)
    is given, at the position of every star with peak SNR >= ``min_snr`` (stars
    too faint to change a pixel by ``tol``). The mask is the set of pixels at a
    Euclidean distance > ``far_px`` from every star-affected pixel. In a very
    dense field it can be empty.
    """
    _check_pair("original", original, "truth", truth)
    if not far_px >= 0:
        raise ValueError(f"far_px must be >= 0, got {far_px!r}")
    affected = (np.abs(np.asarray(original) - np.asarray(truth)) > tol).any(axis=0)
    if scene is not None:
        xy = _check_xy("scene.star_xy", scene.star_xy)  # type: ignore[attr-defined]
        peak = np.asarray(scene.star_peak)  # type: ignore[attr-defined]
        noise = float(scene.noise_sigma)  # type: ignore[attr-defined]
        sel = peak >= min_snr * noise
        H, W = affected.shape
        ix = np.rint(xy[sel, 0]).astype(int)
        iy = np.rint(xy[sel, 1]).astype(int)
        inside = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H)
        affected[iy[inside], ix[inside]] = True
    if not affected.any():
        return np.ones(affected.shape, bool)
    return ndimage.distance_transform_edt(~affected) > far_px


def aperture_sums(
    image: np.ndarray, xy: np.ndarray, radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of an ``(H, W)`` image over discs of ``radius_px`` around each ``(x, y)``.

    A pixel belongs to a disc when its centre lies within ``radius_px``; pixels
    outside the image are left out. Returns ``(sums (N,), pixel counts (N,))``.
    """
    xy = _check_xy("xy", xy)
    radius_px = _check_radius("radius_px", radius_px)
    H, W = image.shape
    r = int(math.ceil(radius_px)) + 1
    oy, ox = (a.ravel() for a in np.mgrid[-r : r + 1, -r : r + 1])
    sums = np.zeros(len(xy), np.float64)
    counts = np.zeros(len(xy), np.int64)
    chunk = max(1, (1 << 21) // oy.size)
    for i in range(0, len(xy), chunk):
        x, y = xy[i : i + chunk, 0:1], xy[i : i + chunk, 1:2]
        px = np.rint(x).astype(int) + ox[None]
        py = np.rint(y).astype(int) + oy[None]
        ok = ((px - x) ** 2 + (py - y) ** 2 <= radius_px**2) & (px >= 0) & (px < W)
        ok &= (py >= 0) & (py < H)
        vals = image[np.clip(py, 0, H - 1), np.clip(px, 0, W - 1)]
        sums[i : i + chunk] = np.where(ok, vals, 0).sum(1)
        counts[i : i + chunk] = ok.sum(1)
    return sums, counts


def annulus_medians(
    image: np.ndarray, xy: np.ndarray, inner_px: float, outer_px: float
) -> np.ndarray:
    """``(N,)`` median of an ``(H, W)`` image on rings from ``inner_px`` to ``outer_px``.

    Three rings of 32 samples each (nearest pixel, clipped to the image): a
    cheap, robust local level around each position.
    """
    xy = _check_xy("xy", xy)
    H, W = image.shape
    radii = np.linspace(inner_px, outer_px, 3)[:, None]
    ang = np.linspace(0, 2 * np.pi, 32, endpoint=False)[None, :]
    ox = (radii * np.cos(ang)).ravel()
    oy = (radii * np.sin(ang)).ravel()
    out = np.empty(len(xy))
    chunk = max(1, (1 << 21) // ox.size)
    for i in range(0, len(xy), chunk):
        px = np.clip(np.rint(xy[i : i + chunk, 0:1] + ox[None]), 0, W - 1).astype(int)
        py = np.clip(np.rint(xy[i : i + chunk, 1:2] + oy[None]), 0, H - 1).astype(int)
        out[i : i + chunk] = np.median(image[py, px], axis=1)
    return out


def star_fluxes(
    layer: np.ndarray, xy: np.ndarray, aperture_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Aperture photometry on an ``(H, W)`` star layer: ``(flux (N,), aperture pixels (N,))``.

    The sum over a disc of ``aperture_px`` minus the disc's pixel count times
    the layer's median on an annulus from ``aperture_px + 1`` to
    ``2 * aperture_px + 2``: a smooth glow (other stars' halos, unresolved
    stars) is not counted as the star's flux.
    """
    radius = _check_radius("aperture_px", aperture_px)
    total, n = aperture_sums(layer, xy, radius)
    return total - n * annulus_medians(layer, xy, radius + 1, 2 * radius + 2), n


def residual_star_flux(
    original: np.ndarray,
    starless_pred: np.ndarray,
    truth: np.ndarray,
    star_xy: np.ndarray,
    aperture_px: float,
    *,
    min_flux: float = 0.02,
) -> np.ndarray:
    """``(N,)`` fraction of each star's own flux left in the output; ``nan`` where not measurable.

    Aperture photometry (:func:`star_fluxes`) on the star layers
    ``original - truth`` and ``pred - truth`` (luminance, stretched units); the
    glow of neighbours' halos and unresolved stars is not this star's flux (it
    shows in the background figures)::

        fraction = max(0, flux(pred - truth) / flux(original - truth))

    0 means the star is gone, 1 that it is untouched; an output darker than the
    truth counts as 0 (background damage is measured elsewhere). A star is
    measurable when its flux in the original is at least ``min_flux`` (default
    0.02: about five 8-bit levels in one pixel). In crowded fields an aperture
    also holds close neighbours' light.
    """
    _check_pair("original", original, "truth", truth)
    _check_pair("original", original, "starless_pred", starless_pred)
    radius = _check_radius("aperture_px", aperture_px)
    lt = _lum(truth)
    own, n = star_fluxes(_lum(original) - lt, star_xy, radius)
    left, _ = star_fluxes(_lum(starless_pred) - lt, star_xy, radius)
    ok = (own >= min_flux) & (n > 0)
    out = np.full(len(own), np.nan)
    out[ok] = np.maximum(left[ok] / own[ok], 0.0)
    return out


def brightness_bins(
    star_peak: np.ndarray, noise_sigma: float, edges: tuple[float, float] = DEFAULT_SNR_EDGES
) -> np.ndarray:
    """``(N,)`` int bin per star by peak SNR = ``star_peak / noise_sigma`` (linear units).

    0 = faint (SNR < ``edges[0]``), 1 = medium, 2 = bright (SNR >= ``edges[1]``);
    names in :data:`BRIGHTNESS_BINS`. With the defaults: faint < 30 <= medium
    < 300 <= bright. Saturated stars are bright.
    """
    if not noise_sigma > 0:
        raise ValueError(f"noise_sigma must be > 0, got {noise_sigma!r}")
    if not 0 < edges[0] < edges[1]:
        raise ValueError(f"edges must be increasing and positive, got {edges!r}")
    snr = np.asarray(star_peak, dtype=np.float64) / noise_sigma
    return np.digitize(snr, edges).astype(np.int64)


def summarize(values: np.ndarray, bins: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Median, 95th percentile and count of the finite ``values`` (N,), overall and per bin.

    Keys: ``"all"`` and, with ``bins`` (N,) from :func:`brightness_bins`, each
    name of :data:`BRIGHTNESS_BINS`. Empty groups get ``nan`` and ``n = 0``.
    """
    values = np.asarray(values, dtype=np.float64)

    def stats(v: np.ndarray) -> dict[str, float]:
        v = v[np.isfinite(v)]
        if v.size == 0:
            return {"median": float("nan"), "p95": float("nan"), "n": 0}
        return {"median": float(np.median(v)), "p95": float(np.percentile(v, 95)), "n": int(v.size)}

    out = {"all": stats(values)}
    if bins is not None:
        bins = np.asarray(bins)
        if bins.shape != values.shape:
            raise ValueError(f"bins shape {bins.shape} differs from values shape {values.shape}")
        for k, name in enumerate(BRIGHTNESS_BINS):
            out[name] = stats(values[bins == k])
    return out


# structure_kept's local background: annulus pixels where original and truth differ by
# at most this (no starlight), and how many it needs
STARLIGHT_EPS = 2e-3
MIN_RING_PX = 8


def structure_kept(
    original: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    galaxy_xy: np.ndarray,
    radius_px: float,
    *,
    min_flux: float = 0.05,
    shared_background: bool = False,
) -> np.ndarray:
    """``(M,)`` fraction of each galaxy's (or knot's) flux that the output keeps; 1 = perfect.

    Per object, on luminance: ``g = image - median(image on the pixels of an annulus
    from radius_px + 2 to 2 * radius_px + 2 that hold no starlight)`` for truth and
    pred (the local background, so a uniform glow left or removed does not count).
    Pixels with starlight are those where the original and the truth differ by more
    than ``STARLIGHT_EPS``: a star an output leaves in the annulus must not raise its
    level and make the object seem lost (with the plain annulus median the input
    itself scored 0.88 on the held-out scenes). With fewer than ``MIN_RING_PX`` such
    pixels the truth's annulus median is the level of all three. Over the disc of
    ``radius_px``, the flux lost is what pred lacks against the truth, pixel by
    pixel, at most the truth's own positive signal::

        kept = 1 - sum(min(g_truth+, (g_truth - g_pred)+)) / sum(g_truth+)

    Stars left on top of the object (pred brighter than truth) neither add nor
    subtract. ``nan`` for an object whose centre lies outside the image or whose
    flux in the truth or in ``original`` is below ``min_flux``.

    ``shared_background=True`` subtracts the truth's annulus median from all three
    images, so the loss is pixel by pixel ``min(g_truth+, (truth - pred)+)``: for
    large objects (tens of px) in crowded fields, where the stars in a wide annulus
    lift the original's (and a starry output's) median and an output that keeps
    every star would otherwise seem to lose the object's light.
    """
    _check_pair("original", original, "truth", truth)
    _check_pair("original", original, "pred", pred)
    xy = _check_xy("galaxy_xy", galaxy_xy)
    radius_px = _check_radius("radius_px", radius_px)
    lo, lt, lp = _lum(original), _lum(truth), _lum(pred)
    H, W = lt.shape
    out = np.full(len(xy), np.nan)
    for k, (x, y) in enumerate(xy):
        if not (0 <= x <= W - 1 and 0 <= y <= H - 1):
            continue
        r0, r1 = int(max(0, y - 2 * radius_px - 3)), int(min(H, y + 2 * radius_px + 4))
        c0, c1 = int(max(0, x - 2 * radius_px - 3)), int(min(W, x + 2 * radius_px + 4))
        yy, xx = np.mgrid[r0:r1, c0:c1]
        d = np.hypot(xx - x, yy - y)
        disc = d <= radius_px
        ring = (d >= radius_px + 2) & (d <= 2 * radius_px + 2)
        if not ring.any():
            continue
        clean = ring & (np.abs(lo[r0:r1, c0:c1] - lt[r0:r1, c0:c1]) <= STARLIGHT_EPS)
        shared = shared_background or int(clean.sum()) < MIN_RING_PX
        level = np.median(lt[r0:r1, c0:c1][ring]) if shared else None
        g = {}
        for name, img in (("o", lo), ("t", lt), ("p", lp)):
            patch = img[r0:r1, c0:c1]
            g[name] = patch[disc] - (np.median(patch[clean]) if level is None else level)
        signal = np.maximum(g["t"], 0.0)
        total = float(signal.sum())
        if total < min_flux or float(g["o"].sum()) < min_flux:
            continue
        lost = np.minimum(signal, np.maximum(g["t"] - g["p"], 0.0))
        out[k] = 1.0 - float(lost.sum()) / total
    return out


def detectable_counts(
    original: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    star_xy: np.ndarray,
    aperture_px: float,
    *,
    noise_sigma: float | None = None,
    snr: float = 5.0,
) -> tuple[int, int]:
    """``(stars detectable in original, of those still detectable in pred)``.

    A star is detectable in an image when its flux over the truth
    (:func:`star_fluxes` on luminance, so a uniform glow does not count) is at
    least ``snr * noise_sigma * sqrt(aperture pixels)``; ``noise_sigma`` is the
    per-pixel noise in stretched units, estimated from the truth when None.
    """
    _check_pair("original", original, "truth", truth)
    _check_pair("original", original, "pred", pred)
    lt = _lum(truth)
    sigma = pixel_noise(lt) if noise_sigma is None else float(noise_sigma)
    sigma = max(sigma, 1e-6)
    own, n = star_fluxes(_lum(original) - lt, star_xy, aperture_px)
    left, _ = star_fluxes(_lum(pred) - lt, star_xy, aperture_px)
    limit = snr * sigma * np.sqrt(np.maximum(n, 1))
    seen = (own >= limit) & (n > 0)
    return int(seen.sum()), int((left[seen] >= limit[seen]).sum())


def detectable_fraction(
    original: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    star_xy: np.ndarray,
    aperture_px: float,
    *,
    noise_sigma: float | None = None,
    snr: float = 5.0,
) -> float:
    """Of the stars detectable in ``original``, the fraction still detectable in ``pred``.

    Detection as in :func:`detectable_counts`; ``nan`` when no star is
    detectable in the original.
    """
    seen, still = detectable_counts(
        original, pred, truth, star_xy, aperture_px, noise_sigma=noise_sigma, snr=snr
    )
    return still / seen if seen else float("nan")
