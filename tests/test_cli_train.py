"""``starnet train`` / ``starnet plot`` from the command line: the run's log over resumes
and fresh starts, Ctrl-C, and one-line errors instead of tracebacks."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flows.cli_train as cli_train
import starnet_core.train as train_module
from flows.cli import main
from starnet_core.model import ModelConfig, StarNetUNet, save_weights

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1))
BASE = ["--synthetic", "--crop", "32", "--batch", "1", "--pool", "4", "--workers", "0"]


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make ``starnet train`` train a tiny model; ``tiny(log_every=.., checkpoint_every=..)``
    sets the intervals the CLI has no options for (defaults: log every step, checkpoint
    every 4)."""
    settings: dict[str, Any] = {"log_every": 1, "checkpoint_every": 4}
    real = cli_train._config

    def config(args: Any, base: Any = None) -> Any:
        cfg = real(args, base)
        cfg.model, cfg.threads, cfg.gan_start_step = TINY, 1, 10**6
        for k, v in settings.items():
            setattr(cfg, k, v)
        return cfg

    monkeypatch.setattr(cli_train, "_config", config)
    return lambda **kw: settings.update(kw)


def on_step(monkeypatch: pytest.MonkeyPatch, step: int, action: Callable[[], None]) -> None:
    """Run ``action`` inside training step ``step`` (1-based; counted in this process)."""
    real = train_module.star_metrics
    calls = {"n": 0}

    def metrics(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == step:
            action()
        return real(*a, **kw)

    monkeypatch.setattr(train_module, "star_metrics", metrics)


def logged_steps(logs: Path) -> list[int]:
    lines = (logs / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


class CrashError(Exception):
    """A run that dies (killed, power cut) between two checkpoints."""


def test_resume_drops_the_log_records_after_the_checkpoint(
    tmp_path: Path, tiny: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    args = ["train", *BASE, "--logs", str(logs), "--steps", "8"]

    def crash() -> None:
        raise CrashError

    with monkeypatch.context() as m:
        on_step(m, 7, crash)  # steps 1-6 logged, the checkpoint is step 4's
        with pytest.raises(CrashError):
            main([*args, "--new", "--yes"])
    assert logged_steps(logs) == [1, 2, 3, 4, 5, 6]
    assert main(args) == 0
    assert logged_steps(logs) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert not list(logs.glob(".*tmp")), "the rewrite leaves no temporary file"


def test_new_run_sets_the_previous_runs_files_aside(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "4", "--new"]) == 0
    assert logged_steps(logs) == [1, 2, 3, 4]
    old_log = (logs / "train_log.jsonl").read_bytes()
    old_show = (logs / "showcase_0000004.png").read_bytes()
    (logs / "weights-000000500.safetensors").write_bytes(b"kept weights")  # keep_every's
    (logs / "training.png").write_bytes(b"plot")
    (logs / "notes.txt").write_text("the user's own file")
    capsys.readouterr()
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "2", "--new", "--yes"]) == 0
    assert logged_steps(logs) == [1, 2], "the new run's log holds its own records only"
    aside = [p for p in logs.iterdir() if p.is_dir()]
    assert len(aside) == 1 and aside[0].name.startswith("previous-")
    assert str(aside[0]) in capsys.readouterr().out
    assert (aside[0] / "train_log.jsonl").read_bytes() == old_log
    assert (aside[0] / "showcase_0000004.png").read_bytes() == old_show
    assert (aside[0] / "weights-000000500.safetensors").read_bytes() == b"kept weights"
    assert (aside[0] / "training.png").read_bytes() == b"plot"
    assert (logs / "notes.txt").exists() and not (aside[0] / "notes.txt").exists()
    assert not (logs / "weights-000000500.safetensors").exists()
    # a run that starts over without --new (its checkpoint gone: it fine-tunes
    # inference.weights from step 0) sets the old log aside too
    (logs / "checkpoint.safetensors").unlink()
    (logs / "train_log.jsonl").write_text('{"step": 7}\n')
    weights = tmp_path / "tiny.safetensors"
    save_weights(StarNetUNet(TINY), weights, version="0.0.1")
    config = tmp_path / "c.yaml"
    config.write_text(f"inference:\n  weights: {weights}\n")
    assert main(["--config", str(config), "train", *BASE, "--logs", str(logs), "--steps", "2"]) == 0
    assert logged_steps(logs) == [1, 2]
    assert len([p for p in logs.iterdir() if p.is_dir()]) == 2


def test_a_short_run_logs_its_last_step_and_plots(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    tiny(log_every=100)
    logs = tmp_path / "logs"
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "3", "--new"]) == 0
    assert logged_steps(logs) == [3]
    assert main(["plot", "--logs", str(logs)]) == 0
    assert (logs / "training.png").stat().st_size > 0


def test_ctrl_c_stops_saves_and_exports(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs = tmp_path / "logs"
    out = tmp_path / "w.safetensors"
    tiny(checkpoint_every=1000)
    on_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    before = signal.getsignal(signal.SIGINT)
    args = ["train", *BASE, "--logs", str(logs), "--steps", "100", "--new"]
    try:
        rc = main([*args, "--export", str(out)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended `starnet train` with KeyboardInterrupt")
    assert rc == 0
    printed = capsys.readouterr()
    assert f"stopped at step 2; checkpoint {logs / 'checkpoint.safetensors'}" in printed.out
    assert "stopping" in printed.err
    assert out.exists()
    from starnet_core.checkpoint import checkpoint_step

    assert checkpoint_step(logs / "checkpoint.safetensors") == 2
    assert logged_steps(logs) == [1, 2]
    assert signal.getsignal(signal.SIGINT) is before, "the handler is put back"


def test_ship_with_ema_ships_the_moving_average_as_export_does(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--ship with --ema makes the generator's moving average the packaged model, marked
    as such, as --export writes it (it shipped the raw generator)."""
    import torch

    import starnet_core.model as model_module
    from starnet_core.checkpoint import load_generator_from_checkpoint
    from starnet_core.model import load_weights

    pkg = tmp_path / "pkg"  # --ship writes here, not into the installed package
    monkeypatch.setattr(model_module, "WEIGHTS_DIR", pkg)
    monkeypatch.setattr(model_module, "MANIFEST", pkg / "manifest.json")
    logs, out = tmp_path / "logs", tmp_path / "w.safetensors"
    args = ["train", *BASE, "--logs", str(logs), "--steps", "3", "--new", "--ema", "0.9"]
    assert main([*args, "--ship", "--version", "9.9.9", "--export", str(out)]) == 0
    printed = capsys.readouterr().out
    shipped, info = load_weights(pkg / "starnet-9.9.9.safetensors")
    exported, exported_info = load_weights(out)
    ckpt = logs / "checkpoint.safetensors"
    ema, _ = load_generator_from_checkpoint(ckpt, ema=True)
    raw, _ = load_generator_from_checkpoint(ckpt, ema=False)

    def flat(m: torch.nn.Module) -> torch.Tensor:
        return torch.cat([p.flatten() for p in m.parameters()])

    assert torch.equal(flat(shipped), flat(ema)) and torch.equal(flat(exported), flat(ema))
    assert not torch.equal(flat(shipped), flat(raw))
    assert info.metadata["weights"] == exported_info.metadata["weights"]
    assert "moving average" in info.metadata["weights"]
    assert info.metadata["train_steps"] == "3"
    assert "as the default model 9.9.9 (the generator's moving average)" in printed
    # without --ema the generator itself ships, unmarked
    plain = ["train", *BASE, "--logs", str(tmp_path / "plain"), "--steps", "1", "--new"]
    assert main([*plain, "--ship", "--version", "9.9.8"]) == 0
    shipped, info = load_weights(pkg / "starnet-9.9.8.safetensors")
    raw, _ = load_generator_from_checkpoint(tmp_path / "plain" / "checkpoint.safetensors")
    assert torch.equal(flat(shipped), flat(raw)) and "weights" not in info.metadata


def test_second_ctrl_c_aborts_at_once(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs = tmp_path / "logs"

    def twice() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    on_step(monkeypatch, 2, twice)
    before = signal.getsignal(signal.SIGINT)
    try:
        rc = main(["train", *BASE, "--logs", str(logs), "--steps", "100", "--new"])
    except KeyboardInterrupt:
        pytest.fail("a second Ctrl-C ended `starnet train` with a traceback")
    assert rc == 130
    err = capsys.readouterr().err
    assert "aborted" in err and str(logs / "checkpoint.safetensors") in err
    assert signal.getsignal(signal.SIGINT) is before


def test_logs_that_is_a_file_is_a_one_line_error(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    logs.write_text("not a folder")
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "1", "--new"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--logs {logs}" in err
    assert logs.read_text() == "not a folder"


def test_new_with_no_answer_is_a_no(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs = tmp_path / "logs"
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "1", "--new"]) == 0
    ckpt = (logs / "checkpoint.safetensors").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # </dev/null: input() meets EOF
    capsys.readouterr()
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "2", "--new"]) == 1
    err = capsys.readouterr().err
    assert "--yes" in err and len(err.strip().splitlines()) == 1
    assert (logs / "checkpoint.safetensors").read_bytes() == ckpt


def test_corrupt_checkpoint_is_a_one_line_error(
    tmp_path: Path, tiny: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "2", "--new"]) == 0
    ckpt = logs / "checkpoint.safetensors"
    data = ckpt.read_bytes()[:1000]  # truncated: a copy cut short, a full disk
    ckpt.write_bytes(data)
    log_before = (logs / "train_log.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(ckpt) in err and "--new" in err
    assert ckpt.read_bytes() == data, "nothing deleted"
    assert (logs / "train_log.jsonl").read_bytes() == log_before
    ckpt.write_bytes(b"")
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "4"]) == 2
    assert str(ckpt) in capsys.readouterr().err
    # not a training checkpoint at all: an exported weights file copied over it
    save_weights(StarNetUNet(TINY), ckpt, version="0.0.1")
    assert main(["train", *BASE, "--logs", str(logs), "--steps", "4"]) == 2
    assert "not a training checkpoint" in capsys.readouterr().err


def test_plot_creates_the_out_folder_and_skips_a_torn_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    records = [{"step": s, "l_g_pix": 1.0 / s, "bg_l1": 0.1} for s in (1, 2)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 3, "l_g'  # killed mid-write
    (logs / "train_log.jsonl").write_text(text)
    out = tmp_path / "no" / "dir" / "p.png"
    assert main(["plot", "--logs", str(logs), "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    err = capsys.readouterr().err
    assert "line 3" in err and "skipped" in err
    assert main(["plot", "--logs", str(logs), "--out", str(tmp_path / "p.xyz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "p.xyz" in err[1] and "not supported" in err[1]


def test_unwritable_outputs_are_refused_before_training(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--export and --logs that cannot be written are one-line errors before any
    training (it was a SafetensorError traceback after the whole run)."""
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    args = ["train", *BASE, "--logs", str(logs), "--steps", "1", "--new"]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access  # root writes anywhere: the folder says it is read-only

    def access(path: Any, mode: int, **kw: Any) -> bool:
        return Path(path) != read_only and real_access(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    taken = tmp_path / "taken"
    taken.mkdir()
    for option, path, reason in (
        ("--export", a_file / "dir" / "w.safetensors", "not a folder"),
        ("--export", read_only / "w.safetensors", "not writable"),
        ("--export", taken, "is a folder"),
        ("--logs", read_only, "not writable"),
        ("--logs", read_only / "logs", "not writable"),
    ):
        assert main([*args, option, str(path)]) == 2, option
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{option} {path}: " in err and reason in err
        assert not logs.exists(), "refused before the run starts"
    assert list(read_only.iterdir()) == [] and list(taken.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "ro", "taken"]
    # a missing folder is made, as --logs's is
    out = tmp_path / "new" / "dir" / "w.safetensors"
    assert main([*args, "--export", str(out)]) == 0
    assert out.is_file()


def test_save_weights_failure_is_an_oserror_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import starnet_core.model as model_module

    model = StarNetUNet(TINY)
    missing = tmp_path / "missing" / "w.safetensors"
    with pytest.raises(OSError, match="No such file") as caught:
        save_weights(model, missing, version="0.0.1")
    assert caught.value.filename == str(missing)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(OSError) as caught:
        save_weights(model, folder, version="0.0.1")
    assert caught.value.filename == str(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"], "no temporary file"

    def torn(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(model_module, "save_file", torn)
        with pytest.raises(KeyboardInterrupt):
            save_weights(model, tmp_path / "w.safetensors", version="0.0.1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    # `starnet soup --out` refuses such a path before averaging, in one line
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_weights(model, a, version="0.0.1")
    save_weights(model, b, version="0.0.1")
    blocked = tmp_path / "a.safetensors" / "x.safetensors"
    assert main(["soup", str(a), str(b), "--out", str(blocked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {blocked}: " in err
    assert main(["soup", str(a), str(b), "--out", str(folder)]) == 2
    assert "is a folder" in capsys.readouterr().err
    out = tmp_path / "new" / "soup.safetensors"
    assert main(["soup", str(a), str(b), "--out", str(out)]) == 0
    assert out.is_file()


def test_a_given_data_folder_must_hold_pairs(
    tmp_path: Path,
    tiny: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--data that is missing (a typo) or lacks original/ and starless/ is an error, even
    with --synthetic (it trained on generated crops alone); the default ./train may be
    missing."""
    monkeypatch.chdir(tmp_path)
    logs = tmp_path / "logs"
    args = ["train", *BASE, "--logs", str(logs), "--steps", "1", "--new"]
    half = tmp_path / "half"
    (half / "original").mkdir(parents=True)
    for data, reason in (("typo/", "no such folder"), (str(half), "no starless/ folder")):
        assert main([*args, "--data", data]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--data {Path(data)}: {reason}" in err
        assert not logs.exists()
    assert main([a for a in args if a != "--synthetic"] + ["--data", "typo"]) == 2
    assert "--data typo: no such folder" in capsys.readouterr().err
    assert main(args) == 0, "no ./train: --synthetic alone"
