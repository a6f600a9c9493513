"""Does 2x upsampling help a frame, and can its star width tell in advance?

    python -m benchmarks.upsample_gain [--first 5500000] [--count 60] [--size 384]

For generator scenes that are not the held-out ones (seeds from ``--first``, all
kinds: 8-bit, JPEG, mono, sparse to dense), the model (the packaged one, or
``--weights``) runs with and without ``inference.upsample``, background
protection after it as users get it, and each output's PSNR against the truth
is measured. Each scene's star width is the median half-width at half-maximum
of the unsaturated stars the classical detector finds
(:func:`starnet_core.classical.detect_stars`), measured on the stretched frame
the network sees. Prints per-scene rows and what rules "upsample when the star
width is below T" would gain over never and always upsampling.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from starnet_core import metrics
from starnet_core.classical import detect_stars
from starnet_core.inference import TileOptions, remove_stars
from starnet_core.masks import finish_starless
from starnet_core.options import CoreFillOptions, ProtectOptions, SkyColourOptions
from starnet_core.synthetic import make_pair

THRESHOLDS_PX = (1.6, 1.8, 2.0, 2.2, 2.4, 2.6, 2.8, 3.0)


@dataclass(frozen=True)
class SceneGain:
    seed: int
    fwhm_px: float  # the generator's PSF FWHM (linear)
    star_hwhm_px: float  # measured on the stretched frame; nan without unsaturated stars
    psnr_db: float
    psnr_upsampled_db: float


def star_width(image: np.ndarray) -> float:
    """Median HWHM (px) of the unsaturated stars the classical detector finds; nan if none."""
    found = detect_stars(image)
    widths = found.hwhm_px[~found.saturated]
    return float(np.median(widths)) if widths.size else math.nan


def scene_gains(
    model: torch.nn.Module, seeds: Sequence[int], size_px: int, device: str = "cpu"
) -> list[SceneGain]:
    protect, sky_colour, core_fill = ProtectOptions(), SkyColourOptions(), CoreFillOptions()
    rows = []
    for seed in seeds:
        original, truth, scene = make_pair(np.random.default_rng(seed), size_px)
        psnr = {}
        for up in (False, True):
            out = remove_stars(model, original, TileOptions(upsample=up, device=device))
            starless = finish_starless(original, out, protect, sky_colour, core_fill)
            psnr[up] = metrics.psnr(starless, truth)
        rows.append(SceneGain(seed, scene.fwhm_px, star_width(original), psnr[False], psnr[True]))
    return rows


def rule_means(rows: Sequence[SceneGain]) -> dict[str, float]:
    """Mean PSNR (dB) of never, always, the best of the two per scene, and each threshold."""
    if not rows:
        raise ValueError("no scenes")
    out = {
        "never": float(np.mean([r.psnr_db for r in rows])),
        "always": float(np.mean([r.psnr_upsampled_db for r in rows])),
        "best per scene": float(np.mean([max(r.psnr_db, r.psnr_upsampled_db) for r in rows])),
    }
    for t in THRESHOLDS_PX:
        out[f"width < {t:g} px"] = float(
            np.mean([r.psnr_upsampled_db if r.star_hwhm_px < t else r.psnr_db for r in rows])
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.upsample_gain", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--first", type=int, default=5_500_000, help="first seed")
    parser.add_argument("--count", type=int, default=60, help="how many scenes")
    parser.add_argument("--size", type=int, default=384, help="scene side in px")
    parser.add_argument("--weights", type=Path, help="weights file or training checkpoint")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 64:
        parser.error("--count must be >= 1 and --size >= 64")
    if args.threads:
        torch.set_num_threads(args.threads)
    from starnet_core.checkpoint import load_any
    from starnet_core.model import load_model

    try:
        model, label = (
            load_any(args.weights) if args.weights else (load_model(None)[0], "packaged model")
        )
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    rows = scene_gains(model, range(args.first, args.first + args.count), args.size)
    print(f"# 2x upsampling, {label}, {len(rows)} scenes of {args.size} px\n")
    print("| seed | fwhm px | star hwhm px | PSNR dB | upsampled | gain |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (math.isnan(r.star_hwhm_px), r.star_hwhm_px)):
        print(
            f"| {r.seed} | {r.fwhm_px:.2f} | {r.star_hwhm_px:.2f} | {r.psnr_db:.1f} | "
            f"{r.psnr_upsampled_db:.1f} | {r.psnr_upsampled_db - r.psnr_db:+.1f} |"
        )
    print("\n| rule | mean PSNR dB |\n|---|---|")
    for name, value in rule_means(rows).items():
        print(f"| {name} | {value:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
