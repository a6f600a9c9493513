"""How much wider bright stars are than the faint stars of the same frame.

    python -m benchmarks.star_widths [--real DIR] [--threshold 0.03]

A network trained on the generator learns what a bright star looks like
against the faint stars beside it; a small galaxy is "wider than a star". If
real frames' bright stars are wider against their faint stars than the
generator's, a net taught to keep galaxies keeps them too (run G in
BENCHMARKS.md).

On each pair's star layer (original - starless, per channel clipped at 0,
then averaged over the channels), the connected regions above
``--threshold`` with a single peak are the stars: blends are left out, and a
clipped (flat-topped) core counts as one peak. A star also needs a top of at
least twice the threshold, so its half maximum lies inside its region. Per
star: its peak in the original and its equivalent radius ``sqrt(flux / (pi *
top))`` on the star layer (flux and top over its region; sqrt(2) sigma for a
Gaussian, continuous below one pixel, and wider for a clipped core). Per
frame: the median radius of bright stars (original peak >= 0.9: saturated or
nearly) and of faint ones (< 0.6), and their ratio. Prints a markdown table
for the real pairs (``DIR/original``, ``DIR/starless``, PNG) and for the
quality benchmark's held-out scenes (default mix).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmarks.quality import (
    DEFAULT_REAL_PAIRS,
    FULL_PLAN,
    FULL_SIZE_PX,
    real_cases,
    synthetic_cases,
)

BRIGHT = 0.9  # original peak at or above: a bright (saturated or nearly) star
FAINT = 0.6  # below: a faint one


def star_widths(
    original: np.ndarray, starless: np.ndarray, threshold: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """``(peaks, radii)``: each single-peaked star's peak in the original and its
    equivalent radius on the star layer, for stretched ``(C, H, W)`` images."""
    if original.shape != starless.shape or original.ndim != 3:
        raise ValueError(
            f"original and starless must be (C, H, W) of one shape, got "
            f"{original.shape} and {starless.shape}"
        )
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    peaks: list[float] = []
    radii: list[float] = []
    if original.size == 0:
        return np.asarray(peaks), np.asarray(radii)
    layer = np.clip(original - starless, 0, None).mean(0)
    lum = original.mean(0)
    labels, _ = ndimage.label(layer > threshold)
    for i, box in enumerate(ndimage.find_objects(labels)):
        inside = labels[box] == i + 1
        star = np.where(inside, layer[box], 0.0)
        top = float(star.max())
        if top < 2 * threshold:
            continue  # its half maximum would lie below the region's edge
        # peaks on the original, where a clipped core is one flat plateau
        bright = np.where(inside, lum[box], 0.0)
        maxima = (bright == ndimage.maximum_filter(bright, 3)) & (star > 0.3 * top)
        if ndimage.label(maxima, structure=np.ones((3, 3)))[1] != 1:
            continue  # a blend of stars, or a star on a star's halo
        peaks.append(float(bright.max()))
        radii.append(float(np.sqrt(star.sum() / (np.pi * top))))
    return np.asarray(peaks, np.float64), np.asarray(radii, np.float64)


def median_radii(peaks: np.ndarray, radii: np.ndarray) -> tuple[int, int, float, float]:
    """``(bright stars, faint stars, median bright radius, median faint radius)``;
    a median is ``nan`` where its group is empty."""
    bright = radii[peaks >= BRIGHT]
    faint = radii[peaks < FAINT]
    nan = float("nan")
    return (
        int(bright.size),
        int(faint.size),
        float(np.median(bright)) if bright.size else nan,
        float(np.median(faint)) if faint.size else nan,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.star_widths", description=__doc__)
    p.add_argument("--real", type=Path, default=DEFAULT_REAL_PAIRS, help="real pairs folder")
    p.add_argument("--threshold", type=float, default=0.03, help="star layer threshold")
    args = p.parse_args(argv)
    if not args.threshold > 0:  # before the scenes are drawn
        print(f"star_widths: --threshold must be > 0, got {args.threshold!r}", file=sys.stderr)
        return 2
    rows = []
    try:
        if args.real.is_dir():
            cases = real_cases(args.real)
        else:
            print(
                f"star_widths: no real pairs at {args.real}; held-out scenes only", file=sys.stderr
            )
            cases = []
        cases += synthetic_cases(FULL_PLAN, FULL_SIZE_PX)
        for case in cases:
            peaks, radii = star_widths(case.original, case.truth, args.threshold)
            rows.append((case.name, *median_radii(peaks, radii)))
    except (ValueError, OSError) as e:
        print(f"star_widths: {e}", file=sys.stderr)
        return 2
    print("| frame | bright stars | faint stars | bright radius px | faint radius px | ratio |")
    print("|---|---|---|---|---|---|")
    for name, n_bright, n_faint, r_bright, r_faint in rows:
        cells = [f"{v:.2f}" if np.isfinite(v) else "–" for v in (r_bright, r_faint)]
        ratio = r_bright / r_faint
        cells.append(f"{ratio:.2f}" if np.isfinite(ratio) else "–")
        print(f"| {name} | {n_bright} | {n_faint} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
