"""Stars left on real frames that have no hand-made starless.

    python -m benchmarks.real_frames ORIGINAL STARLESS [STARLESS ...] [--snr 5]

The classical detector (:func:`starnet_core.classical.detect_stars`) finds the
stars of the original; at those positions, aperture photometry with a local
annulus (:func:`starnet_core.metrics.star_fluxes`, aperture 1.5 FWHM, at least
2 px) measures each star's flux in the original and in each starless result.
A star is detectable where its flux is at least ``--snr`` times the noise of
that measurement, taken on star-free spots of the original
(:func:`aperture_noise`): the same limit for every image, so a smoother
starless does not lower it. Both images
get the same treatment: a linear original (FITS, float TIFF) is normalised and
auto-stretched as ``starnet transform`` does, and each starless image gets the
original's normalisation and stretch. Prints a markdown table: stars
detectable, the fraction of the original's left, and the median fraction of
their flux left.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from starnet_core.classical import detect_stars
from starnet_core.imageio import ImageError, read_image
from starnet_core.metrics import star_fluxes
from starnet_core.pipeline import stretch_for_network
from starnet_core.stretch import apply_normalization, apply_stretch


def aperture_noise(
    image: np.ndarray, star_mask: np.ndarray, aperture_px: float, samples: int = 4000
) -> float:
    """Robust spread of the aperture flux (:func:`star_fluxes`) on star-free spots of a
    ``(C, H, W)`` image: the noise a star's flux is measured against. Measured, not
    derived from the pixel noise: grain, debayering and drizzle make neighbouring
    pixels' noise alike, and then an aperture holds far more noise than sqrt(pixels)
    times the pixel noise."""
    lum = image.mean(0)
    free = ~ndimage.binary_dilation(star_mask, iterations=int(np.ceil(aperture_px)) + 1)
    ys, xs = np.nonzero(free)
    if ys.size == 0:
        ys, xs = np.nonzero(np.ones_like(star_mask))
    pick = np.random.default_rng(0).choice(ys.size, size=min(samples, ys.size), replace=False)
    xy = np.stack([xs[pick], ys[pick]], 1).astype(np.float32)
    flux, _ = star_fluxes(lum, xy, aperture_px)
    return max(1.4826 * float(np.median(np.abs(flux - np.median(flux)))), 1e-6)


def stars_left(
    original: np.ndarray, starless: list[np.ndarray], snr: float = 5.0
) -> tuple[int, list[tuple[int, float]]]:
    """``(stars detectable in original, [(still detectable, median flux fraction left)])``
    for stretched ``(C, H, W)`` images in [0, 1] (see the module docstring)."""
    det = detect_stars(original)
    if len(det.xy) == 0:
        return 0, [(0, float("nan")) for _ in starless]
    aperture = max(2.0, 3.0 * float(np.median(det.hwhm_px)))
    own, n = star_fluxes(original.mean(0), det.xy, aperture)
    limit = snr * aperture_noise(original, det.mask, aperture)
    seen = (own >= limit) & (n > 0)
    out = []
    for image in starless:
        left, _ = star_fluxes(image.mean(0), det.xy, aperture)
        frac = np.maximum(left[seen], 0) / own[seen]
        out.append((int((left[seen] >= limit).sum()), float(np.median(frac))))
    return int(seen.sum()), out


def as_seen(original: np.ndarray, is_linear: bool, *others: np.ndarray) -> list[np.ndarray]:
    """The original as the network sees it, and ``others`` through the same normalisation
    and stretch (or the same clip to [0, 1] for stretched data)."""
    stretched, _, params, norm = stretch_for_network(original, is_linear)
    out = [stretched]
    for other in others:
        if norm is None or params is None:
            out.append(np.clip(other, 0.0, 1.0).astype(np.float32))
        else:
            out.append(apply_stretch(apply_normalization(other, norm), params))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("original", type=Path)
    ap.add_argument("starless", type=Path, nargs="+")
    ap.add_argument("--snr", type=float, default=5.0, help="detection limit (default 5)")
    args = ap.parse_args(argv)
    if not args.snr > 0:
        ap.error(f"--snr must be positive, got {args.snr}")
    try:
        orig = read_image(args.original)
        others = []
        for path in args.starless:
            image = read_image(path).data
            if image.shape != orig.data.shape:
                raise ValueError(f"{path}: shape {image.shape}, the original is {orig.data.shape}")
            others.append(image)
        seen = as_seen(orig.data, orig.is_linear, *others)
    except (ImageError, ValueError) as e:
        print(f"real_frames: {e}", file=sys.stderr)
        return 2
    base, results = stars_left(seen[0], seen[1:], args.snr)
    print("| image | stars detectable | left | median flux left |")
    print("|---|---|---|---|")
    print(f"| {args.original.name} | {base} | 1.00 | 1.00 |")
    for path, (n, flux) in zip(args.starless, results, strict=True):
        print(f"| {path} | {n} | {n / max(base, 1):.2f} | {flux:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
