"""The network's periodic pattern: a faint lattice in what it takes away.

    python -m benchmarks.lattice ORIGINAL STARLESS [STARLESS ...]
    python -m benchmarks.lattice --scenes [--scene-mix large-galaxies] [--weights FILE]

The model downsamples by 2 five times (strided convolutions) and upsamples by pixel
shuffle, so where it takes away wide, smooth light (a large galaxy it takes for a star,
a bright star's halo) its star layer ``original - starless`` can carry a pattern fixed
to the pixel grid, with periods 2 to 32 px. This measures it per period ``P``:

* **pattern** (P = 4): the peak-to-peak of the layer's mean over its P x P blocks,
  smooth light and stars taken out (:func:`phase_pattern`, the estimate ``starnet
  transform --lattice`` takes out): what a P-periodic lattice adds (in a 512 px
  frame, too few larger blocks hold no star for this under grain);
* **ratio**: the power on the spectral bins of a ``P``-periodic pattern over the
  power beside them, in the mean spectrum of the layer's 128 px tiles
  (:func:`line_ratio`): about 1 without a lattice;
* **noise**: the starless image's own pixel-to-pixel spread (median absolute first
  difference of its luminance): a pattern well below it is hidden in the grain.

Files go through ``starnet transform``'s normalisation and stretch (the starless ones
through the original's, as ``benchmarks.real_frames`` does). ``--scenes`` runs the
network (no steps after it) on the quality benchmark's held-out scenes of a mix.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.real_frames import as_seen
from starnet_core.imageio import ImageError, read_image
from starnet_core.inference import grid_pattern

PATTERN_PERIODS = (4,)  # enough blocks per position for a mean under grain
RATIO_PERIODS = (4, 8, 16, 32)
TILE_PX = 128  # line_ratio's tiles
# offsets of the bins a pattern's bin is compared with (2 bins away: not a bin of the
# pattern while tile_px / period >= 4)
_BESIDE = ((0, 2), (0, -2), (2, 0), (-2, 0), (2, 2), (2, -2), (-2, 2), (-2, -2))


def phase_pattern(layer: np.ndarray, period: int) -> np.ndarray:
    """``(period, period)`` pattern of an ``(H, W)`` layer fixed to the ``period``-px
    grid: :func:`starnet_core.inference.grid_pattern`, what ``--lattice`` takes out."""
    if min(layer.shape) < period:
        raise ValueError(f"the layer ({layer.shape}) is smaller than one {period} px block")
    return grid_pattern(layer, period)


def line_ratio(layer: np.ndarray, period: int, tile_px: int = TILE_PX) -> float:
    """Power of an ``(H, W)`` layer on the spectral bins a ``period``-px periodic pattern
    puts all its power on, over the power 2 bins beside them: about 1 without such a
    pattern. The spectrum is the mean over the layer's ``tile_px`` tiles (Welch: one
    frame's bins scatter by their own size; a lattice fixed to the pixel grid is
    periodic in every tile, so its bins stay exact). The mean, over the pattern's bins
    (every multiple of ``tile_px / period`` on both axes but the mean), of each bin's
    power over the median of its own 8 neighbours 2 bins away (a star field's power
    falls with frequency: a sum would weigh the low bins' star light)."""
    if period < 2 or tile_px % period or tile_px // period < 4:
        raise ValueError(f"period {period} px: tiles of {tile_px} px hold no such lattice")
    h, w = (s - s % tile_px for s in layer.shape)
    if h == 0 or w == 0:
        raise ValueError(f"the layer ({layer.shape}) is smaller than one {tile_px} px tile")
    grid = layer[:h, :w].reshape(h // tile_px, tile_px, w // tile_px, tile_px)
    tiles = grid.transpose(0, 2, 1, 3).reshape(-1, tile_px, tile_px)
    tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(tiles)) ** 2).mean(axis=0)
    step = tile_px // period
    ky, kx = np.meshgrid(np.arange(0, tile_px, step), np.arange(0, tile_px, step), indexing="ij")
    ky, kx = ky.ravel()[1:], kx.ravel()[1:]  # not the mean
    beside = np.median(
        [power[(ky + dy) % tile_px, (kx + dx) % tile_px] for dy, dx in _BESIDE], axis=0
    )
    return float(np.mean(power[ky, kx] / np.maximum(beside, 1e-30)))


def measure(original: np.ndarray, starless: np.ndarray) -> dict[str, float]:
    """Pattern (peak-to-peak) and line ratio per period of ``original - starless``
    (``(C, H, W)`` stretched), and the starless image's noise (see the docstring)."""
    layer = (original - starless).mean(0)
    lum = starless.mean(0)
    out: dict[str, float] = {"noise": float(np.median(np.abs(np.diff(lum, axis=1))))}
    for p in PATTERN_PERIODS:
        out[f"pattern_{p}"] = float(np.ptp(phase_pattern(layer, p)))
    for p in RATIO_PERIODS:
        out[f"ratio_{p}"] = line_ratio(layer, p)
    return out


def _row(name: str, m: dict[str, float]) -> str:
    cells = [f"{1000 * m[f'pattern_{p}']:.2f}" for p in PATTERN_PERIODS]
    cells += [f"{m[f'ratio_{p}']:.1f}" for p in RATIO_PERIODS]
    return f"| {name} | {' | '.join(cells)} | {1000 * m['noise']:.2f} |"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", type=Path, nargs="*", help="ORIGINAL STARLESS [STARLESS ...]")
    ap.add_argument("--scenes", action="store_true", help="the held-out scenes instead")
    ap.add_argument("--scene-mix", default="large-galaxies", help="with --scenes")
    ap.add_argument("--weights", help="with --scenes: weights file (default: packaged)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args(argv)
    rows: list[tuple[str, dict[str, float]]] = []
    try:
        if args.scenes:
            if args.files:
                raise ValueError("give files or --scenes, not both")
            rows = _scenes(args.scene_mix, args.weights, args.threads)
        else:
            if len(args.files) < 2:
                raise ValueError("give an original and at least one starless image")
            orig = read_image(args.files[0])
            others = []
            for path in args.files[1:]:
                image = read_image(path).data
                if image.shape != orig.data.shape:
                    raise ValueError(
                        f"{path}: shape {image.shape}, the original is {orig.data.shape}"
                    )
                others.append(image)
            seen = as_seen(orig.data, orig.is_linear, *others)
            rows = [
                (str(p), measure(seen[0], s)) for p, s in zip(args.files[1:], seen[1:], strict=True)
            ]
    except (ImageError, ValueError) as e:
        print(f"lattice: {e}", file=sys.stderr)
        return 2
    heads = [f"pattern {p} px x1000" for p in PATTERN_PERIODS]
    heads += [f"ratio {p} px" for p in RATIO_PERIODS]
    print(f"| image | {' | '.join(heads)} | noise x1000 |")
    print("|---|" + "---|" * (len(heads) + 1))
    for name, m in rows:
        print(_row(name, m))
    return 0


def _scenes(mix: str, weights: str | None, threads: int) -> list[tuple[str, dict[str, float]]]:
    import torch

    from benchmarks.quality import FULL_PLAN, FULL_SIZE_PX, synthetic_cases
    from starnet_core.inference import remove_stars
    from starnet_core.model import load_model
    from starnet_core.options import TileOptions
    from starnet_core.synthetic import MIXES

    if mix not in MIXES:
        raise ValueError(f"--scene-mix must be one of {', '.join(MIXES)}, got {mix!r}")
    if threads:
        torch.set_num_threads(threads)
    model = load_model(weights)[0].eval()
    rows = []
    for case in synthetic_cases(FULL_PLAN, FULL_SIZE_PX, mix=MIXES[mix]):
        starless = remove_stars(model, case.original, TileOptions())
        rows.append((case.name, measure(case.original, starless)))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
