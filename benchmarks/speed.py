"""Inference speed and memory of the star-removal engine.

    python -m benchmarks.speed [--weights W] [--size 2048] [--threads 2] [--device cpu]

Measures, on a synthetic RGB frame of ``--size`` px (speed does not depend on
the weights' values, so any weights of the shipped architecture will do):
megapixels per second for several tile sizes, the model's MAC per pixel, and
the peak resident memory of the process. Prints a markdown table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from starnet_core.inference import TileOptions, remove_stars
from starnet_core.model import StarNetUNet, load_model, macs_per_pixel

STARNET_V1_MAC_PER_PX = 92_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", help="weights file (default: packaged model, else random)")
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiles", default="256,512", help="comma-separated tile sizes")
    ap.add_argument("--overlap", type=int, default=TileOptions().overlap_px, help="overlap px")
    ap.add_argument(
        "--ensemble", type=int, default=1, choices=(1, 2, 4, 8), help="self-ensemble size"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        model, info = load_model(args.weights)
        label = f"{info.version} ({info.sha256[:12]})"
    except FileNotFoundError:
        model, label = StarNetUNet(), "random weights, shipped architecture"
    rng = np.random.default_rng(0)
    image = rng.uniform(0.05, 0.3, (3, args.size, args.size)).astype(np.float32)
    mac = macs_per_pixel(model)
    print(f"model {label}: {mac:.0f} MAC/px ({STARNET_V1_MAC_PER_PX / mac:.1f}x below StarNet v1)")
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, device {args.device}"
    )
    print()
    print(f"self-ensemble {args.ensemble}")
    print("| tile px | overlap px | batch | frame | seconds | MP/s |")
    print("|---|---|---|---|---|---|")
    for tile in (int(t) for t in args.tiles.split(",")):
        opts = TileOptions(
            tile_px=tile,
            overlap_px=args.overlap,
            batch_size=4,
            device=args.device,
            ensemble=args.ensemble,
        )
        remove_stars(model, image[:, :tile, :tile], opts)  # warm-up
        t0 = time.perf_counter()
        remove_stars(model, image, opts)
        dt = time.perf_counter() - t0
        mp = args.size * args.size / 1e6
        frame = f"{args.size}x{args.size} RGB"
        print(f"| {tile} | {args.overlap} | 4 | {frame} | {dt:.2f} | {mp / dt:.2f} |")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
