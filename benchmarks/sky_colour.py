"""How the sky-colour step's settings were chosen: BENCHMARKS.md, seventh session.

    python -m benchmarks.sky_colour [--weights FILE] [--threads N] [--scenes 24]

The model runs once per scene (network, then background protection); then
``starnet_core.masks.fill_sky_colour`` runs with each setting below and the PSNR
gain over the protected output is printed, as the mean and the worst scene, on
two sets of generator scenes that are neither held out nor training streams:

* **cast**: ``--scenes`` scenes drawn with ``Mix(cast_share=1, dense_share=0)`` from
  seed 97 (a coloured sky), keeping those with at least 20 clipped pixels;
* **default**: ``--scenes`` scenes of the default mix from seed 96, same filter.

The settings were picked on these two sets (largest mean gain whose worst scene
loses little). The real pairs' gain is printed beside them (``--real DIR``); it
was not used to choose.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.diagnose import clipped_scenes, load_weights_arg
from benchmarks.quality import DEFAULT_REAL_PAIRS, real_cases
from starnet_core import metrics
from starnet_core.inference import TileOptions, remove_stars
from starnet_core.masks import fill_sky_colour, protect_background
from starnet_core.options import ProtectOptions, SkyColourOptions
from starnet_core.synthetic import Mix

SETTINGS: list[tuple[str, SkyColourOptions]] = [
    ("cores only, no dilation", SkyColourOptions(dilate_px=0, star_share_low=1.0)),
    ("cores only, clip 0.98", SkyColourOptions(clip_level=0.98, star_share_low=1.0)),
    ("cores only (clip 0.95, dilate 2)", SkyColourOptions(star_share_low=1.0)),
    ("cores only, dilate 4", SkyColourOptions(dilate_px=4, star_share_low=1.0)),
    ("cores only, clip 0.90", SkyColourOptions(clip_level=0.9, star_share_low=1.0)),
    ("+ star share 0.5 -> 0.8", SkyColourOptions(star_share_low=0.5, star_share_high=0.8)),
    ("+ star share 0.4 -> 0.7", SkyColourOptions(star_share_low=0.4, star_share_high=0.7)),
    ("+ star share 0.3 -> 0.8 (default)", SkyColourOptions()),
    ("+ star share 0.2 -> 0.5", SkyColourOptions(star_share_low=0.2, star_share_high=0.5)),
    ("+ star share 0.1 -> 0.4", SkyColourOptions(star_share_low=0.1, star_share_high=0.4)),
]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sky_colour", description=__doc__)
    p.add_argument("--weights", type=Path, help="weights or checkpoint (default: packaged)")
    p.add_argument("--real", type=Path, default=DEFAULT_REAL_PAIRS, help="real pairs folder")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--scenes", type=int, default=24, help="scenes per synthetic set (24)")
    args = p.parse_args(argv)
    if args.scenes < 1:
        print(f"sky_colour: --scenes must be >= 1, got {args.scenes}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_weights_arg(args.weights, "sky_colour")
    if model is None:
        return 2
    sets = {
        "cast": clipped_scenes(Mix(cast_share=1.0, dense_share=0.0), 97, args.scenes, 256),
        "default": clipped_scenes(Mix(), 96, args.scenes, 256),
    }
    if args.real.is_dir():
        sets["real pairs"] = [(c.original, c.truth) for c in real_cases(args.real)]
    options, protect = TileOptions(), ProtectOptions()
    runs = {
        name: [
            (o, t, protect_background(o, remove_stars(model, o, options), protect)) for o, t in s
        ]
        for name, s in sets.items()
    }
    print("| setting | " + " | ".join(f"{n}: mean / worst dB" for n in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for label, opts in SETTINGS:
        cells = []
        for items in runs.values():
            gain = [
                metrics.psnr(fill_sky_colour(o, s, opts), t) - metrics.psnr(s, t)
                for o, t, s in items
            ]
            cells.append(f"{np.mean(gain):+.3f} / {np.min(gain):+.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
