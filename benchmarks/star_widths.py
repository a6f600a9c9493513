"""How much wider bright stars are than the faint stars of the same frame.

    python -m benchmarks.star_widths [--real DIR] [--threshold 0.03]

A network trained on the generator learns what a bright star looks like
against the faint stars beside it; a small galaxy is "wider than a star". If
real bright stars are wider against their field than the generator's, a net
taught to keep galaxies keeps them too (run G in BENCHMARKS.md).

On each pair's star layer (original - starless, luminance, clipped at 0), the
connected regions above ``--threshold`` with a single peak are the stars (blends
are left out). Per star: its peak in the original and its half-maximum radius,
``sqrt(area at >= half its peak / pi)`` on the star layer. Per frame, the
median radius of bright stars (original peak >= 0.9: saturated or nearly)
over the median radius of faint ones (< 0.6). Prints a markdown table for the
real pairs (``DIR/original``, ``DIR/starless``, PNG) and for the quality
benchmark's held-out scenes (default mix).
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
    half-maximum radius on the star layer, for stretched ``(C, H, W)`` images."""
    if original.shape != starless.shape or original.ndim != 3:
        raise ValueError(
            f"original and starless must be (C, H, W) of one shape, got "
            f"{original.shape} and {starless.shape}"
        )
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold!r}")
    layer = np.clip(original - starless, 0, None).mean(0)
    lum = original.mean(0)
    labels, _ = ndimage.label(layer > threshold)
    peaks, radii = [], []
    for i, box in enumerate(ndimage.find_objects(labels)):
        inside = labels[box] == i + 1
        star = np.where(inside, layer[box], 0.0)
        top = float(star.max())
        maxima = (star == ndimage.maximum_filter(star, 3)) & (star > 0.3 * top)
        if np.count_nonzero(maxima) != 1:
            continue  # a blend of stars, or a star on a star's halo
        peaks.append(float(np.where(inside, lum[box], 0.0).max()))
        radii.append(float(np.sqrt(np.count_nonzero(star >= 0.5 * top) / np.pi)))
    return np.asarray(peaks, np.float64), np.asarray(radii, np.float64)


def width_ratio(peaks: np.ndarray, radii: np.ndarray) -> tuple[int, int, float]:
    """``(bright stars, faint stars, median bright radius / median faint radius)``;
    ``nan`` where either group is empty."""
    bright = radii[peaks >= BRIGHT]
    faint = radii[peaks < FAINT]
    if bright.size == 0 or faint.size == 0:
        return int(bright.size), int(faint.size), float("nan")
    return int(bright.size), int(faint.size), float(np.median(bright) / np.median(faint))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.star_widths", description=__doc__)
    p.add_argument("--real", type=Path, default=DEFAULT_REAL_PAIRS, help="real pairs folder")
    p.add_argument("--threshold", type=float, default=0.03, help="star layer threshold")
    args = p.parse_args(argv)
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
            rows.append((case.name, *width_ratio(peaks, radii)))
    except (ValueError, OSError) as e:
        print(f"star_widths: {e}", file=sys.stderr)
        return 2
    print("| frame | bright stars | faint stars | bright / faint half-maximum radius |")
    print("|---|---|---|---|")
    for name, n_bright, n_faint, ratio in rows:
        cell = "–" if not np.isfinite(ratio) else f"{ratio:.2f}"
        print(f"| {name} | {n_bright} | {n_faint} | {cell} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
