"""Can the network learn to fill clipped cores with the sky's colour? BENCHMARKS.md,
seventh session.

    python -m benchmarks.cast_fit [--weights FILE] [--lr 1e-4] [--steps 300] [--threads N]

Fits the model to the 8 colour-cast scenes of ``benchmarks.diagnose`` (seed 99) with
the training loss (L1 + ``star_weight`` x L1 on star pixels, ``TrainConfig``
defaults), all 8 scenes in every Adam step, and prints every 50 steps the mean
absolute error on their clipped cores and the grey pull (``diagnose.grey_pull``:
the core error along the sky's colour, negative = greyer than the sky) on those 8
scenes and on 8 others (seed 98). A model that can represent a coloured fill drives
the fitted scenes' pull to 0 quickly; the held-out pull says whether it generalises.
Nothing is saved.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.diagnose import cast_scenes, grey_pull, load_weights_arg
from starnet_core.inference import width_conditioned
from starnet_core.train import TrainConfig, star_widths


def widths(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The star widths a width-conditioned model reads for the batch ``x`` (else None)."""
    return torch.from_numpy(star_widths(x.numpy())) if width_conditioned(model) else None


def mean_pull(model: torch.nn.Module, pairs: list[tuple[np.ndarray, ...]]) -> float:
    model.eval()
    with torch.no_grad():
        xs = [torch.from_numpy(o[None]) for o, _ in pairs]
        outs = [model(x, widths(model, x))[0].clamp(0, 1).numpy() for x in xs]
    model.train()
    return float(np.mean([grey_pull(o, out, t) for (o, t), out in zip(pairs, outs, strict=True)]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cast_fit", description=__doc__)
    p.add_argument("--weights", type=Path, help="weights or checkpoint (default: packaged)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (1e-4)")
    p.add_argument("--steps", type=int, default=300, help="Adam steps (300)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = p.parse_args(argv)
    if not (args.lr > 0 and np.isfinite(args.lr)) or args.steps < 1:
        print(
            f"cast_fit: need --lr > 0 and --steps >= 1, got {args.lr}, {args.steps}",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_weights_arg(args.weights, "cast_fit")
    if model is None:
        return 2
    torch.manual_seed(0)
    fit, other = cast_scenes(8, seed=99), cast_scenes(8, seed=98)
    x = torch.from_numpy(np.stack([o for o, _ in fit]))
    y = torch.from_numpy(np.stack([t for _, t in fit]))
    core = (x >= 0.98).all(1, keepdim=True).expand_as(x)
    hwhm = widths(model, x)
    cfg = TrainConfig()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    model.train()
    print("| step | core abs error | pull, fitted scenes | pull, other scenes |")
    print("|---|---|---|---|")
    print(f"| 0 | – | {mean_pull(model, fit):+.3f} | {mean_pull(model, other):+.3f} |")
    for step in range(1, args.steps + 1):
        out = model(x, hwhm)
        err = (out - y).abs()
        star = (x - y).abs() > cfg.star_threshold
        loss = err.mean() + cfg.star_weight * (err * star).sum() / x.numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps:
            core_err = float(err.detach()[core].mean())
            print(
                f"| {step} | {core_err:.3f} | {mean_pull(model, fit):+.3f} | "
                f"{mean_pull(model, other):+.3f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
