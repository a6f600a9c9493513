"""Does the frame's star width carry a signal the network can use? The FiLM-only test.

    python -m benchmarks.film_signal [--weights FILE] [--lr 2e-4] [--steps 600]
                                     [--train 200] [--eval 40] [--threads 1]

A width-conditioned generator (``ModelConfig.width_cond``) reads each frame's typical
star half-width through FiLM layers. In fine-tunes at the usual rate those weights only
random-walked (BENCHMARKS.md, eighteenth and nineteenth sessions), which leaves two
explanations: the width tells the network nothing it can use on this data, or the
weights learn too slowly to find it. This benchmark separates them. It freezes every
weight but the FiLM layers' and trains those alone, at ``--lr``, on a fixed pool of
galaxy-heavy 256 px crops (compact nucleated galaxies and large galaxies: where a
network that knows the stars' size could tell a galaxy from a star; ``--pool recipe``:
the fine-tunes' own training mix instead), twice:

* **true**: each crop with its own measured width (``train.star_widths``, as in training);
* **shuffled**: the same widths permuted among the crops, so the FiLM input varies as
  much but tells nothing about the crop.

Both runs see the same batches and use the training loss (``train.pixel_losses`` with
``--w-over 10 --w-galaxy 10``, the recipe of models 0.7.0-0.9.0, without the anchor). It
prints the loss on ``--eval`` held-back crops (each with its run's widths) every 150
steps, the galaxy term (``l_g_keep``) beside it, and the largest FiLM weight. If the
true run's held-back loss falls and the shuffled run's does not, the width carries a
usable signal and a fine-tune should give the FiLM weights a higher rate
(``starnet train --film-lr-mult``).

``--compare W...`` trains nothing: per conditioned generator, its loss over all the crops
with their own widths, with the shuffled widths and with the reference width (where the
FiLM input is zero): whether a trained model uses the width, and whether for the better.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from starnet_core.model import WIDTH_REF_PX, StarNetUNet, film_weights
from starnet_core.synthetic import Mix, make_pool
from starnet_core.train import TrainConfig, pixel_losses, star_widths

CROP_PX = 256
POOL_SEED = [4242, 7]  # not a training stream (1234 + step) nor a held-out range
MIX = Mix(nucleus_share=0.6, dense_share=0.1, large_galaxy_share=0.3)
# --pool recipe: the crops the fine-tunes of models 0.7.0-0.9.0 trained on (their options
# --glow-cap 0.5 --group-share 0.5 --cast-share 0.5 --large-galaxy-share 0.3
# --dense-share 0.4 --bright-rate 5)
RECIPE_MIX = Mix(
    group_share=0.5, cast_share=0.5, large_galaxy_share=0.3, dense_share=0.4, bright_rate=5.0
)
RECIPE_GLOW_CAP = 0.5
LOSS = TrainConfig(w_over=10.0, w_galaxy=10.0)
BATCH = 4
EVAL_EVERY = 150


def held_back_loss(
    model: StarNetUNet, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, w: torch.Tensor
) -> tuple[float, float]:
    """Mean training loss and galaxy term over the crops, in batches of BATCH."""
    model.eval()
    total = galaxy = 0.0
    n = 0
    with torch.no_grad():
        for i in range(0, len(x), BATCH):
            s = slice(i, i + BATCH)
            loss, terms = pixel_losses(model(x[s], w[s]), x[s], y[s], keep[s], LOSS)
            total += loss.item()
            galaxy += terms["l_g_keep"].item()
            n += 1
    model.train()
    return total / n, galaxy / n


def film_only_run(
    base: StarNetUNet,
    data: tuple[torch.Tensor, ...],
    widths: torch.Tensor,
    n_train: int,
    *,
    lr: float,
    steps: int,
    label: str,
) -> list[tuple[int, float, float, float]]:
    """(step, held-back loss, galaxy term, largest FiLM weight) every EVAL_EVERY steps."""
    x, y, keep = data
    model = copy.deepcopy(base).requires_grad_(False)
    film = film_weights(model)
    for p in film:
        p.requires_grad_(True)
    opt = torch.optim.Adam(film, lr=lr)
    rng = np.random.default_rng(0)
    held = slice(n_train, len(x))

    def record(step: int) -> tuple[int, float, float, float]:
        loss, galaxy = held_back_loss(model, x[held], y[held], keep[held], widths[held])
        largest = max(float(p.detach().abs().max()) for p in film)
        print(
            f"{label:>8} step {step:4d}: held-back loss {loss:.5f}, galaxy term "
            f"{galaxy:.6f}, largest FiLM weight {largest:.4f}",
            flush=True,
        )
        return step, loss, galaxy, largest

    history = [record(0)]
    for step in range(1, steps + 1):
        idx = torch.from_numpy(rng.integers(0, n_train, BATCH))
        loss, _ = pixel_losses(model(x[idx], widths[idx]), x[idx], y[idx], keep[idx], LOSS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % EVAL_EVERY == 0 or step == steps:
            history.append(record(step))
    return history


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="a width-conditioned generator (default: the packaged one)")
    p.add_argument("--lr", type=float, default=2e-4, help="the FiLM weights' Adam rate")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--train", type=int, default=200, help="crops to train on")
    p.add_argument("--eval", type=int, default=40, help="held-back crops")
    p.add_argument(
        "--pool",
        choices=("galaxies", "recipe"),
        default="galaxies",
        help="the crops: galaxy-heavy (default), or the fine-tunes' own training mix",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="WEIGHTS",
        help="no training: each conditioned generator's loss over all the crops with their "
        "own widths, shuffled widths and the reference width (FiLM input zero)",
    )
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.steps < 1 or args.train < BATCH or args.eval < 1 or not args.lr > 0:
        p.error(f"--steps >= 1, --train >= {BATCH}, --eval >= 1 and --lr > 0 needed")
    torch.set_num_threads(args.threads)
    from starnet_core.checkpoint import load_any
    from starnet_core.model import load_model

    models = {}
    for path in args.compare or [args.weights]:
        model = load_any(path)[0] if path else load_model(None)[0]
        if not model.config.width_cond:
            print(
                f"{path or 'the packaged model'}: not width-conditioned (no FiLM layers)",
                file=sys.stderr,
            )
            return 2
        models[path or "packaged model"] = model
    t0 = time.perf_counter()
    n = args.train + args.eval
    if args.pool == "recipe":
        o, c, k = make_pool(POOL_SEED, n, CROP_PX, RECIPE_GLOW_CAP, RECIPE_MIX)
    else:
        o, c, k = make_pool(POOL_SEED, n, CROP_PX, mix=MIX)
    w = star_widths(o)
    print(
        f"{n} {args.pool} crops of {CROP_PX} px in {time.perf_counter() - t0:.0f} s; "
        f"star half-widths: median {np.nanmedian(w):.2f} px, 10-90% {np.nanpercentile(w, 10):.2f}-"
        f"{np.nanpercentile(w, 90):.2f}, unmeasured {int(np.isnan(w).sum())}",
        flush=True,
    )
    w = np.where(np.isnan(w), WIDTH_REF_PX, w).astype(np.float32)  # starless crops: the reference
    data = (torch.from_numpy(o), torch.from_numpy(c), torch.from_numpy(k[:, :1].astype(np.float32)))
    true_w = torch.from_numpy(w)
    shuffled_w = true_w[torch.from_numpy(np.random.default_rng(1).permutation(n))]
    if args.compare:
        print("\n| generator | own widths | shuffled | reference width | galaxy term, own / ref |")
        print("|---|---|---|---|---|")
        ref_w = torch.full_like(true_w, WIDTH_REF_PX)
        for path, model in models.items():
            (lt, gt), (ls, _), (lref, gr) = (
                held_back_loss(model, *data, w_) for w_ in (true_w, shuffled_w, ref_w)
            )
            print(f"| {path} | {lt:.5f} | {ls:.5f} | {lref:.5f} | {gt:.6f} / {gr:.6f} |")
        print(f"\n{time.perf_counter() - t0:.0f} s, {args.threads} thread(s)")
        return 0
    (base,) = models.values()
    runs = {}
    for name, widths in (("true", true_w), ("shuffled", shuffled_w)):
        runs[name] = film_only_run(
            base, data, widths, args.train, lr=args.lr, steps=args.steps, label=name
        )
    print(
        f"\n| widths | held-back loss, step 0 | step {args.steps} | change | galaxy term, "
        f"step 0 | step {args.steps} | largest FiLM weight |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, h in runs.items():
        (_, l0, g0, _), (_, l1, g1, m1) = h[0], h[-1]
        print(
            f"| {name} | {l0:.5f} | {l1:.5f} | {100 * (l1 / l0 - 1):+.1f}% | {g0:.6f} | "
            f"{g1:.6f} | {m1:.4f} |"
        )
    print(f"\n{time.perf_counter() - t0:.0f} s, {args.threads} thread(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
