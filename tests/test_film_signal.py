"""benchmarks.film_signal: FiLM-only training of a width-conditioned generator."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.film_signal import EVAL_EVERY, film_only_run, main
from starnet_core.model import ModelConfig, StarNetUNet, save_weights
from starnet_core.synthetic import make_pool

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1), width_cond=True)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_only_the_film_weights_learn_and_the_base_stays() -> None:
    torch.manual_seed(0)
    base = StarNetUNet(TINY)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    o, c, k = make_pool(5, 10, 32)
    data = (torch.from_numpy(o), torch.from_numpy(c), torch.from_numpy(k[:, :1].astype(np.float32)))
    widths = torch.linspace(1.0, 4.0, 10)
    steps = EVAL_EVERY + 2
    history = film_only_run(base, data, widths, 8, lr=1e-3, steps=steps, label="t")
    assert [h[0] for h in history] == [0, EVAL_EVERY, steps]
    assert history[0][3] == 0.0  # FiLM starts at zero ...
    assert history[-1][3] > 0.0  # ... and learns
    assert all(np.isfinite(h[1]) and h[1] > 0 for h in history)
    for name, value in base.state_dict().items():  # the caller's model is not touched
        torch.testing.assert_close(value, before[name], msg=name)


def test_an_unconditioned_model_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.safetensors"
    save_weights(StarNetUNet(ModelConfig(widths=(8, 16), blocks=(1, 1))), path, version="0.0.1")
    assert main(["--weights", str(path)]) == 2
    assert f"{path}: not width-conditioned" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
def test_compare_reads_whether_a_model_uses_the_width(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    blind = StarNetUNet(TINY)  # FiLM weights zero: the width changes nothing
    using = copy.deepcopy(blind)
    with torch.no_grad():
        for name, p in using.named_parameters():
            if name.endswith(".film.weight"):
                p.normal_(0, 0.05)
            elif name.endswith(".scale"):  # blocks start near the identity: open them
                p.fill_(1.0)
    paths = [tmp_path / "blind.safetensors", tmp_path / "using.safetensors"]
    for model, path in zip((blind, using), paths, strict=True):
        save_weights(model, path, version="0.0.1")
    assert main(["--compare", *map(str, paths), "--train", "4", "--eval", "4"]) == 0
    rows = {
        line.split(" | ")[0].strip("| "): [float(v) for v in line.split(" | ")[1:4]]
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("| /")
    }
    own, shuffled, ref = rows[str(paths[0])]
    assert own == shuffled == ref
    own, shuffled, ref = rows[str(paths[1])]
    assert own != ref and shuffled != ref
