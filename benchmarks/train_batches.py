"""Host-side cost of the training loop's batches: what a GPU run waits on.

    python -m benchmarks.train_batches [--batch 16] [--crop 256] [--pool 64] [--threads 1]
                                       [--device cpu] [--repeats 30]

On a GPU the fine-tunes of this small network are not limited by the GPU: the
twenty-first session ran 0.073 s per step of 16 x 256 px crops alone and 0.082
with three runs sharing one H200 (BENCHMARKS.md). Part of a step is the host
assembling the batch. This measures, over a real synthetic pool (``PairPool``,
made in the process), the time per batch of ``train.batches`` (sampling the pool,
the tensors handed to the loop) and of the loop's ``_next_batch`` (the same, then
copied to ``--device`` and augmented there: flips, rotations, channel shuffle,
colour gains, zoom). Prints a markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from starnet_core.tiling import select_device
from starnet_core.train import PairPool, TrainConfig, _next_batch, batches


def per_call_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * times[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16, help="crops per batch (default 16)")
    ap.add_argument("--crop", type=int, default=256, help="crop size in px (default 256)")
    ap.add_argument("--pool", type=int, default=64, help="synthetic crops in the pool (64)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--device", default="cpu", help="where the batch is augmented (cpu)")
    ap.add_argument("--repeats", type=int, default=30, help="timed batches (default 30)")
    args = ap.parse_args(argv)
    for name in ("batch", "crop", "pool", "threads", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    device = select_device(args.device)
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(batch_size=args.batch, crop_px=args.crop)
    pool = PairPool(args.pool, args.crop, seed=4242, widths=True)
    data = batches(cfg, [], pool, widths=True)
    gen = torch.Generator().manual_seed(0)
    assembled = per_call_ms(lambda: next(data), args.repeats)

    def to_device() -> None:
        _next_batch(data, device, gen, cfg.augment_scale, True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the copies and kernels done, not queued

    on_device = per_call_ms(to_device, args.repeats)
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)")
    print("| batch x crop | device | `batches` ms/batch | `_next_batch` ms/batch |")
    print("|---|---|---|---|")
    print(f"| {args.batch} x {args.crop} px | {device} | {assembled:.1f} | {on_device:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
