"""The `starnet` command line: every sub-command registered, and a box without the
pipeline's packages (a bare GPU machine for training) still trains."""

from __future__ import annotations

import argparse
import importlib
import sys

import pytest

import flows.cli as cli


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_command_map_matches_what_each_module_registers() -> None:
    for name, commands in cli.COMMAND_MODULES.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(name).register(parser.add_subparsers())
        assert _commands(parser) == set(commands), name
    assert _commands(cli.build_parser()) == {c for cs in cli.COMMAND_MODULES.values() for c in cs}


def test_missing_packages_leave_training_working(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # as on a GPU box with torch but no SQLAlchemy, Prefect or watchdog
    for mod in list(sys.modules):
        if mod.split(".")[0] in ("sqlalchemy", "prefect", "watchdog") or mod in (
            "flows.cli_db",
            "flows.cli_pipeline",
            "flows.provenance",
            "flows.db_models",
            "flows.watcher",
        ):
            monkeypatch.delitem(sys.modules, mod)
    for pkg in ("sqlalchemy", "prefect", "watchdog"):
        monkeypatch.setitem(sys.modules, pkg, None)  # import raises ModuleNotFoundError
    parser = cli.build_parser()
    assert {"train", "soup", "db", "watch"} <= _commands(parser)
    assert cli.main(["db", "upgrade"]) == 2
    err = capsys.readouterr().err
    assert "starnet db: needs the Python package" in err and "not installed" in err
    assert cli.main(["watch", "--once"]) == 2
    assert "starnet watch: needs" in capsys.readouterr().err
    # training's own option checks run: the command is really there
    assert cli.main(["train", "--synthetic", "--workers", "-1"]) == 2
    assert "--workers must be 0 or more" in capsys.readouterr().err


def test_a_broken_module_of_ours_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "COMMAND_MODULES", {"flows.cli_nonexistent": ("nothing",)})
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()


def test_output_piped_into_a_closed_reader_ends_quietly(tmp_path) -> None:
    """`starnet runs --json | head -1`: no traceback when the reader has gone."""
    import os
    import subprocess

    env = {**os.environ, "STARNET_DATA_DIR": str(tmp_path / "data")}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "model", "list", "--json"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=120,
    )
    os.close(write)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    assert proc.returncode == 1


def test_demo_frame_is_a_readable_field_that_is_not_dense(tmp_path) -> None:
    """`starnet demo`'s frame: a colour FITS the pipeline reads, written atomically, and
    never a dense field (whose star mask would be white all over)."""
    import re

    from astropy.io import fits

    from flows.cli_pipeline import write_demo_frame
    from starnet_core.imageio import read_image

    path = write_demo_frame(tmp_path / "incoming", 512)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .part left
    image = read_image(path)
    assert image.data.shape == (3, 512, 512)
    history = " ".join(str(h) for h in fits.getheader(path)["HISTORY"])
    stars = int(re.search(r"(\d+) stars", history).group(1))  # type: ignore[union-attr]
    assert 0 < stars < 512 * 512 / 50, history


def test_a_database_that_cannot_be_used_is_one_line_naming_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database file that is not one, or a data folder that cannot be made: one line
    naming it and exit code 1, not a traceback (--verbose gives the traceback)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "provenance.db").write_text("garbage\n")
    monkeypatch.setenv("STARNET_DATA_DIR", str(data))
    assert cli.main(["runs"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (
        f"starnet runs: provenance database sqlite:///{data / 'provenance.db'}: "
        "file is not a database"
    )
    with pytest.raises(Exception, match="file is not a database"):
        cli.main(["--verbose", "runs"])
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("STARNET_DATA_DIR", str(blocker / "data"))
    assert cli.main(["runs"]) == 1
    assert str(blocker) in capsys.readouterr().err


def test_runs_table_shows_the_reason_a_run_failed_not_its_input_path() -> None:
    """`starnet runs --status failed`: the ERROR column's 50 characters are the reason; the
    input's path in front of it (the FRAME column's) is left out, however it was written."""
    from datetime import UTC, datetime

    from flows.cli_db import _runs_table
    from flows.provenance_records import Run

    frame = "/srv/observatory/archive/2024/incoming/night-0412/M42_Ha_300s_0001.fits"
    reason = "FITS file has no image data (checked every HDU)"
    now = datetime(2024, 4, 12, tzinfo=UTC)

    def run(error: str) -> Run:
        return Run(
            "ab" * 32, "failed", "cd" * 32, frame, "0.1.0", "ef" * 32, {}, "01" * 32, "dev",
            "host", "cpu", None, 1, error, {}, now, now, now, 1.0,
        )  # fmt: skip

    for error in (
        f"{frame}: {reason}\nTraceback ...",  # as recorded (frame_error)
        f"incoming/night-0412/M42_Ha_300s_0001.fits: {reason}",  # as given on the command line
    ):
        rows = _runs_table([run(error)]).splitlines()
        assert rows[1].endswith(reason), rows[1]
        assert "/srv/" not in rows[1]
    # a reason that does not start with the input's path is shown as it is
    other = "no end recorded: attempt 3 of 3, started 2024-04-12 00:00:00 UTC, was given up"
    assert _runs_table([run(other)]).splitlines()[1].endswith(other[:50].rstrip())


def test_test_mode_on_an_image_no_larger_than_the_patch_writes_one_panel(
    tmp_path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`starnet test` picks distinct patches only: a 40 px image and 256 px patches has one
    (it wrote four identical panels), a 41 x 40 px one with 40 px patches has two."""
    import numpy as np
    from astropy.io import fits
    from prefect_fixtures import save_tiny_model

    from flows.cli_transform import _pick_patches

    lum = np.random.default_rng(0).random((1, 40, 40), dtype=np.float32)
    assert _pick_patches(lum, 4, 40) == [(0, 0)]
    taller = np.random.default_rng(1).random((3, 41, 40), dtype=np.float32)
    assert sorted(_pick_patches(taller, 4, 40)) == [(0, 0), (1, 0)]
    corners = _pick_patches(np.random.default_rng(2).random((1, 48, 48), np.float32), 9, 40)
    assert len(corners) == len(set(corners)) == 9  # random ones are distinct too
    weights = tmp_path / "tiny.safetensors"
    save_tiny_model(weights, "tiny-a")
    src = tmp_path / "small.fits"
    fits.PrimaryHDU(lum[0] * 1000 + 100).writeto(src)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STARNET_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["test", str(src), "--weights", str(weights), "--device", "cpu"]) == 0
    assert [p.name for p in (tmp_path / "test").iterdir()] == ["small_patch0_0_0.png"]
    assert "only 1 distinct 40 px patch(es) fit in the image" in capsys.readouterr().out
