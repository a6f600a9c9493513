"""How well the star mask marks the stars, with each of its noise tests.

    python -m benchmarks.star_mask [FRAME ...] [--signal-sigmas K ...] [--no-scenes]

The star mask (``image_mask.tif``, and what the nebula enhancement leaves alone) is
the star layer (original - starless, stretched) above a threshold, dilated and
feathered (:func:`starnet_core.masks.star_mask`). On a noisy frame a network takes
some of the grain too. Three settings, and ``signal_sigmas`` K for each K given:
the threshold alone; the threshold raised to the layer's median + 3 robust sigmas
of it (``mask.noise_sigmas 3``, the default until model 0.8.0's pipeline); and
the default, a pixel kept only where the layer, smoothed by 1 px, stands 3 of the
image's pixel-noise sigmas out (``mask.signal_sigmas 3``). Per setting:

- on the held-out synthetic scenes (``benchmarks.quality``'s default set, the model
  as users get it), the pixels of the mask (> 0.5) against those of the same mask
  made from the truth's star layer (original - truth, fixed threshold only): pooled
  precision, recall and intersection over union; the same on the five real pairs,
  their hand-made starless as the truth;
- on each FRAME (any image ``starnet transform`` reads; a linear one is stretched as
  it does), the pixel noise of the stretched frame, the share of the frame the mask
  covers, and the share of the clear stars there (the classical detector's, peak at
  least 10 times its noise) whose centre the mask covers.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.quality import (
    DEFAULT_REAL_PAIRS,
    FULL_PLAN,
    FULL_SIZE_PX,
    Case,
    real_cases,
    synthetic_cases,
)
from starnet_core.classical import detect_stars
from starnet_core.imageio import ImageError, read_image
from starnet_core.inference import remove_stars
from starnet_core.masks import finish_starless, image_noise, star_layer, star_mask
from starnet_core.model import load_model
from starnet_core.options import (
    CoreFillOptions,
    MaskOptions,
    ProtectOptions,
    SkyColourOptions,
    TileOptions,
)
from starnet_core.pipeline import process_array
from starnet_core.synthetic import MIXES


def _binary(mask: np.ndarray) -> np.ndarray:
    return mask[0] > 0.5


CLEAR_STAR_SIGMAS = 10.0  # a detection this many noise sigmas high is a star


def settings_for(signal_sigmas: Sequence[float]) -> dict[str, MaskOptions]:
    """The mask settings compared, by name (see the module docstring)."""
    named = {
        "threshold only": MaskOptions(noise_sigmas=0.0, signal_sigmas=0.0),
        "noise_sigmas 3": MaskOptions(noise_sigmas=3.0, signal_sigmas=0.0),
        "signal_sigmas 3 (default)": MaskOptions(),
    }
    for k in signal_sigmas:
        named.setdefault(f"signal_sigmas {k:g}", MaskOptions(signal_sigmas=k))
    return named


def scene_scores(
    model: torch.nn.Module, cases: Sequence[Case], settings: Sequence[MaskOptions]
) -> list[tuple[float, ...]]:
    """``[(precision, recall, iou)]`` per setting, pooled over ``cases`` (see the module
    docstring)."""
    counts = np.zeros((len(settings), 3))  # true positives, false positives, misses
    for case in cases:
        starless = finish_starless(
            case.original,
            remove_stars(model, case.original, TileOptions()),
            ProtectOptions(),
            SkyColourOptions(),
            CoreFillOptions(),
        )
        truth = _binary(
            star_mask(
                np.clip(case.original - case.truth, 0, None),
                MaskOptions(noise_sigmas=0.0, signal_sigmas=0.0),
            )
        )
        layer, noise = star_layer(case.original, starless), image_noise(case.original)
        for i, options in enumerate(settings):
            got = _binary(star_mask(layer, options, noise))
            counts[i] += [(got & truth).sum(), (got & ~truth).sum(), (~got & truth).sum()]
    tp, fp, fn = counts.T
    return list(zip(tp / (tp + fp), tp / (tp + fn), tp / (tp + fp + fn), strict=True))


def frame_scores(
    model: torch.nn.Module, path: Path, settings: Sequence[MaskOptions]
) -> tuple[float, int, list[tuple[float, float]]]:
    """``(pixel noise, clear stars, [(area covered, clear stars covered)])`` for one frame."""
    image = read_image(path)
    products = process_array(model, image.data, is_linear=image.is_linear)
    stretched = products.stretched
    layer = star_layer(stretched, products.starless_stretched)
    noise = image_noise(stretched)
    found = detect_stars(stretched)
    clear = found.amplitude >= CLEAR_STAR_SIGMAS * found.noise_sigma
    xy = np.round(found.xy[clear]).astype(int)
    rows = []
    for options in settings:
        got = _binary(star_mask(layer, options, noise))
        covered = float(got[xy[:, 1], xy[:, 0]].mean()) if len(xy) else float("nan")
        rows.append((float(got.mean()), covered))
    return noise, len(xy), rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.star_mask", description=__doc__.split("\n")[0]
    )
    parser.add_argument("frames", nargs="*", type=Path, help="images to make masks of")
    parser.add_argument(
        "--signal-sigmas",
        type=float,
        nargs="+",
        default=[],
        metavar="K",
        help="also compare mask.signal_sigmas K (the layer's spread test off)",
    )
    parser.add_argument(
        "--no-scenes", action="store_true", help="skip the synthetic scenes and the real pairs"
    )
    parser.add_argument(
        "--real-pairs",
        type=Path,
        default=DEFAULT_REAL_PAIRS,
        help="folder with original/ and starless/ (default: %(default)s)",
    )
    parser.add_argument("--weights", type=Path, help="weights file (default: packaged)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(s < 0 for s in args.signal_sigmas):
        parser.error("--signal-sigmas must be >= 0")
    model, info = load_model(args.weights)
    named = settings_for(args.signal_sigmas)
    settings = list(named.values())
    print(f"model {info.version} ({info.sha256[:12]})\n")
    if not args.no_scenes:
        groups = {
            "held-out scenes": synthetic_cases(FULL_PLAN, FULL_SIZE_PX, mix=MIXES["default"]),
            "real pairs": real_cases(args.real_pairs),
        }
        print("| cases | mask setting | precision | recall | IoU |\n|---|---|---|---|---|")
        for group, cases in groups.items():
            scores = scene_scores(model, cases, settings)
            for name, (p, r, iou) in zip(named, scores, strict=True):
                print(f"| {group} | {name} | {p:.4f} | {r:.4f} | {iou:.4f} |")
        print()
    if args.frames:
        head = " | ".join(f"{name}: area / stars covered" for name in named)
        print(f"| frame | pixel noise | clear stars | {head} |")
        print("|---" * (3 + len(settings)) + "|")
    for path in args.frames:
        try:
            noise, found, rows = frame_scores(model, path, settings)
        except (ImageError, OSError, ValueError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 1
        cells = " | ".join(f"{a:.3f} / {c:.3f}" for a, c in rows)
        print(f"| {path.name} | {noise:.4f} | {found} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
