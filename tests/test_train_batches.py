"""benchmarks.train_batches and the batches it times: the loop gets every crop it
sampled, unchanged, and a single-part batch is not copied twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.train_batches import main
from starnet_core.train import PairPool, TrainConfig, batches


def test_batches_hand_on_the_sampled_crops_as_they_are() -> None:
    pool = PairPool(6, 32, seed=3)
    cfg = TrainConfig(batch_size=4, crop_px=32)
    x, y, k, w = next(batches(cfg, [], pool))
    assert x.shape == (4, 3, 32, 32) and k.dtype == torch.float32
    # each batch crop is one of the pool's crops, with its own truth beside it
    for xi, yi in zip(x.numpy(), y.numpy(), strict=True):
        hits = [i for i in range(6) if np.array_equal(pool.orig[i], xi)]
        assert hits and np.array_equal(pool.clean[hits[0]], yi)
    x[:] = -1.0  # the loop may write into its batch: the pool must not change
    assert (pool.orig >= 0).all()


def test_the_benchmark_prints_its_row_and_refuses_bad_sizes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--batch", "2", "--crop", "32", "--pool", "3", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 2 x 32 px | cpu |" in out
    with pytest.raises(SystemExit):
        main(["--batch", "0"])
    assert "--batch must be at least 1, got 0" in capsys.readouterr().err
