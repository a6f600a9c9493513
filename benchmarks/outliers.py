"""What one bad pixel or a zero-filled canvas does to star removal on a real linear frame.

A real FITS frame (default: the DSS Horsehead plate of ``../shared/realdata/fits``) is run
through the whole pipeline (:func:`starnet_core.pipeline.process_array`, the packaged
model) as it is and with one defect at a time: a hot pixel (cosmic ray, plate defect) at
1.5x and 3x the frame's maximum, a -1e30 sentinel pixel, and the frame on a zero-filled
canvas that is 60% of the result (a mosaic panel, a rotated registration). For each:
the star flux the pipeline removes (the positive star layer summed over the frame, the
defect's own pixel left out) as a share of the clean frame's, the stretched frame's
99.9th percentile (what the network sees of the bright stars), its median (the
background level), and the star mask's area; or the error, when the frame is refused.

    python -m benchmarks.outliers [FITS] [--threads N]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from starnet_core.imageio import read_image
from starnet_core.model import load_model
from starnet_core.pipeline import process_array

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "fits" / "HorseHead.fits"
HOT_YX = (10, 10)


def _hot(factor: float) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def make(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = d.copy()
        out[:, HOT_YX[0], HOT_YX[1]] = factor * float(d.max()) if factor > 0 else -1e30
        keep = np.ones(d.shape[1:], bool)
        keep[HOT_YX[0] - 2 : HOT_YX[0] + 3, HOT_YX[1] - 2 : HOT_YX[1] + 3] = False
        return out, keep

    return make


def _canvas(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, h, w = d.shape
    side = int(np.ceil(np.sqrt(h * w / 0.4)))  # the frame is 40% of the canvas
    out = np.zeros((c, side, max(side, w)), np.float32)
    out[:, :h, :w] = d
    keep = np.zeros(out.shape[1:], bool)
    keep[:h, :w] = True
    return out, keep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.outliers", description=__doc__)
    parser.add_argument("fits", nargs="?", default=str(DEFAULT))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, info = load_model()
    data = read_image(args.fits).data
    cases: list[tuple[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]] = [
        ("clean", lambda d: (d, np.ones(d.shape[1:], bool))),
        ("hot pixel 1.5x max", _hot(1.5)),
        ("hot pixel 3x max", _hot(3.0)),
        ("-1e30 sentinel pixel", _hot(0.0)),
        ("60% zero canvas", _canvas),
    ]
    print(f"{Path(args.fits).name} {data.shape}, model {info.version}")
    print("| case | star flux removed | stretched p99.9 | stretched median | mask area |")
    print("|---|---|---|---|---|")
    ref = None
    for name, make in cases:
        image, keep = make(data)
        try:
            p = process_array(model, image, is_linear=True)
        except ValueError as e:
            print(f"| {name} | refused: {e} | | | |")
            continue
        removed = float(np.clip(p.stars, 0, None)[:, keep].sum())
        ref = ref if ref is not None else removed
        seen = p.stretched[:, keep]
        print(
            f"| {name} | {removed / ref:.1%} | {np.percentile(seen, 99.9):.3f} | "
            f"{np.median(seen):.3f} | {float((p.mask[:, keep] > 0.5).mean()):.2%} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
