"""Where outputs go, and that they are never lost: ``starnet transform`` with the tiny model and
the real SQLite provenance DB of :class:`PipelineEnv` (the flows' side is in test_flows.py)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from prefect_fixtures import PipelineEnv, write_fits

from flows.cli import main
from flows.frame import claim_frame, load_engine, output_folder
from flows.provenance import ProvenanceDB, sha256_file


def transform(env: PipelineEnv, *args: str) -> int:
    return main(["--config", env.config, "transform", *args, "--quiet"])


def digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def test_output_folder_keeps_the_sub_path_under_incoming(tmp_path: Path) -> None:
    incoming, out = tmp_path / "incoming", tmp_path / "outputs"
    assert output_folder(incoming / "n1" / "M42.fits", out, incoming) == out / "n1"
    assert output_folder(incoming / "a" / "b" / "M42.fits", out, incoming) == out / "a" / "b"
    assert output_folder(incoming / "M42.fits", out, incoming) == out
    assert output_folder(tmp_path / "elsewhere" / "x.fits", out, incoming) == out
    assert output_folder(incoming / "n1" / "M42.fits", out) == out  # no incoming: flat
    assert output_folder(tmp_path / "d" / "x.fits", None, incoming) == tmp_path / "d"


def test_output_folder_of_a_symlinked_frame_is_where_the_link_lies(tmp_path: Path) -> None:
    incoming, out = tmp_path / "incoming", tmp_path / "out"
    store = tmp_path / "store"
    store.mkdir()
    (store / "M42.fits").write_bytes(b"x")
    (incoming / "n1").mkdir(parents=True)
    link = incoming / "n1" / "M42.fits"
    link.symlink_to(store / "M42.fits")  # the watcher takes a link dropped in as a frame
    assert output_folder(link, out, incoming) == out / "n1"
    assert output_folder(link, None, incoming) == incoming / "n1"  # beside the link
    (incoming / "n2").symlink_to(store, target_is_directory=True)  # a linked night folder
    assert output_folder(incoming / "n2" / "M42.fits", out, incoming) == out / "n2"
    linked_root = tmp_path / "in-link"
    linked_root.symlink_to(incoming, target_is_directory=True)  # incoming named by a link
    assert output_folder(incoming / "n1" / "M42.fits", out, linked_root) == out / "n1"
    (incoming / "n3").mkdir()
    (incoming / "n3" / "own.fits").write_bytes(b"y")
    assert output_folder(incoming / "n3" / "own.fits", out, linked_root) == out / "n3"


def test_inputs_of_one_command_never_overwrite_each_others_outputs(
    pipeline_env: PipelineEnv, capsys
) -> None:
    env = pipeline_env
    src = env.root / "src"
    plain = write_fits(src / "e.fits", seed=1)
    packed = src / "e.fits.gz"  # another frame whose outputs have the same names
    packed.write_bytes(gzip.compress(write_fits(env.root / "tmp" / "e.fits", seed=2).read_bytes()))
    m42 = write_fits(src / "M42.fits", seed=3)
    tif = src / "M42.tif"  # its own starless is M42_starless.tif, but both make M42_preview.jpg
    tifffile.imwrite(tif, (np.random.default_rng(4).random((32, 32)) * 255).astype(np.uint8))
    out = env.root / "out"
    assert (
        transform(env, str(plain), str(packed), str(m42), str(tif), "--out", str(out), "--preview")
        == 1
    )
    err = capsys.readouterr().err
    assert f"FAILED {packed}: its outputs would overwrite those of {plain}" in err
    assert f"FAILED {tif}: its outputs would overwrite those of {m42}" in err
    assert "M42_preview.jpg" in err and "2 of 4 input(s) failed" in err
    # the first frame's outputs hold its own data, and nothing of the refused ones was written
    assert not (out / "M42_starless.tif").exists() and not (out / "M42_mask.tif").exists()
    db = ProvenanceDB.from_settings(env.settings)
    for name, frame in (("e_starless.fits", plain), ("M42_preview.jpg", m42)):
        h = db.history(out / name)
        assert h.role == "output" and h.frame is not None and h.frame.path == str(frame)
    failed = {Path(r.frame_path).name for r in db.list_runs(status="failed")}
    assert failed == {"e.fits.gz", "M42.tif"}


def test_outputs_recorded_for_another_input_are_not_overwritten(
    pipeline_env: PipelineEnv, capsys
) -> None:
    env = pipeline_env
    night1 = write_fits(env.root / "n1" / "M42.fits", seed=1)
    night2 = write_fits(env.root / "n2" / "M42.fits", seed=2)
    out = env.root / "out"
    assert transform(env, str(night1), "--out", str(out)) == 0
    before = digests(out)
    assert transform(env, str(night2), "--out", str(out)) == 1  # another command, same folder
    assert f"its outputs would overwrite those of {night1}" in capsys.readouterr().err
    assert digests(out) == before
    # the same input again (e.g. other settings or a new model) may overwrite its own outputs
    assert transform(env, str(night1), "--out", str(out)) == 0
    # the old outputs moved away: nothing is lost any more, the other frame may write there
    shutil.move(out, env.root / "kept")
    assert transform(env, str(night2), "--out", str(out)) == 0


def test_a_frame_another_run_holds_is_reported_not_processed(
    pipeline_env: PipelineEnv, capsys
) -> None:
    env = pipeline_env
    frame = write_fits(env.root / "in" / "b.fits")
    settings = env.settings  # transform's default outputs: no stars, enhanced or preview
    settings.outputs.stars = settings.outputs.enhanced = settings.outputs.preview = False
    db = ProvenanceDB.from_settings(settings)
    crashed = claim_frame(frame, settings, db, load_engine(settings))  # killed after its claim
    assert crashed.decision == "process"
    out = env.root / "out"
    assert transform(env, str(frame), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert f"FAILED {frame}: another run of this frame is in progress" in err
    assert crashed.run_key[:12] in err and "stale_run_s" in err
    assert not out.exists()


def test_an_output_that_cannot_be_written_fails_that_frame_and_the_next_goes_on(
    pipeline_env: PipelineEnv, capsys
) -> None:
    env = pipeline_env
    c = write_fits(env.root / "in" / "c.fits", seed=1)
    d = write_fits(env.root / "in" / "d.fits", seed=2)
    not_a_folder = env.root / "notadir"
    not_a_folder.touch()
    assert transform(env, str(c), str(d), "--out", str(not_a_folder)) == 1
    err = capsys.readouterr().err
    for frame in (c, d):
        assert f"FAILED {frame}: {not_a_folder}: cannot write outputs here: not a folder" in err
    assert "Traceback" not in err
    db = ProvenanceDB.from_settings(env.settings)
    runs = db.list_runs()
    assert [r.status for r in runs] == ["failed", "failed"]
    assert all("not a folder" in (r.error or "") for r in runs)
    # the preview, written last, goes the same way: failed with the output named, then d
    out = env.root / "out"
    (out / "c_preview.jpg").mkdir(parents=True)  # something that is not a file in its place
    assert transform(env, str(c), str(d), "--out", str(out), "--preview") == 1
    err = capsys.readouterr().err
    assert f"FAILED {c}: {out / 'c_preview.jpg'}: cannot write" in err
    assert (out / "d_preview.jpg").is_file() and "1 of 2 input(s) failed" in err


def test_a_recompute_records_its_outputs(pipeline_env: PipelineEnv) -> None:
    env = pipeline_env
    frame = write_fits(env.root / "in" / "a.fits")
    assert transform(env, str(frame), "--out", str(env.root / "out1")) == 0
    assert transform(env, str(frame), "--out", str(env.root / "out3")) == 0
    db = ProvenanceDB.from_settings(env.settings)
    h = db.history(env.root / "out3" / "a_starless.fits")
    assert h.role == "output" and h.note is None and h.frame is not None
    assert h.frame.path == str(frame)
    assert h.produced_by is not None and h.produced_by.status == "succeeded"
    assert h.produced_by.attempts == 1  # the one run of this identity, tried anew
    assert len(db.list_runs()) == 1
    with fits.open(env.root / "out3" / "a_starless.fits") as hdul:
        assert hdul[0].header["HIERARCH STARNET RUNKEY"] == h.produced_by.run_key


def test_an_input_of_the_command_is_never_overwritten_by_another_inputs_outputs(
    pipeline_env: PipelineEnv, capsys
) -> None:
    """`starnet transform M42.tif M42_mask.tif`: the user's own M42_mask.tif is an input,
    not M42's mask to overwrite. A file the DB records as M42's own output (the same
    command run again over `*.tif`) is M42's to rewrite."""
    env = pipeline_env
    src = env.root / "ov"
    src.mkdir()
    rng = np.random.default_rng(5)
    m42, users = src / "M42.tif", src / "M42_mask.tif"
    for p in (m42, users):
        tifffile.imwrite(p, (rng.random((32, 32)) * 200 + 20).astype(np.uint8))
    before = sha256_file(users)
    assert transform(env, str(m42), str(users)) == 1
    err = capsys.readouterr().err
    assert f"FAILED {m42}: its output {users.resolve()} would overwrite an input" in err
    assert sha256_file(users) == before and not (src / "M42_starless.tif").exists()
    assert (src / "M42_mask_starless.tif").is_file()  # the other input went on
    # once M42 made its own outputs, they may be inputs of a rerun and are rewritten
    users.rename(src.parent / "kept.tif")
    assert transform(env, str(m42)) == 0
    assert transform(env, str(m42), str(src / "M42_starless.tif")) == 0
    assert (src / "M42_starless_starless.tif").is_file()


def test_transform_records_a_new_model_with_its_weights_file(pipeline_env: PipelineEnv) -> None:
    """`starnet transform --weights X` registers X's version with its file, so that
    `starnet model promote` of it gives the pipeline a model it can load."""
    from prefect_fixtures import save_tiny_model

    env = pipeline_env
    other = env.root / "models" / "tiny-c.safetensors"
    save_tiny_model(other, "tiny-c", seed=3)
    frame = write_fits(env.root / "in" / "c.fits", seed=6)
    assert transform(env, str(frame), "--weights", str(other)) == 0
    model = ProvenanceDB.from_settings(env.settings).get_model("tiny-c")
    assert model is not None and model.status == "candidate"
    assert model.config["weights_path"] == str(other.resolve())
    assert main(["--config", env.config, "model", "promote", "tiny-c"]) == 0


def test_a_moved_frame_the_rerun_would_redo_is_recorded_failed(pipeline_env: PipelineEnv) -> None:
    """The nightly claims with redo (a rollback): when the frame's file is gone, its done run
    is recorded failed with the reason, so after max_attempts it is not picked again."""
    from flows.frame import claim_frame
    from starnet_core.imageio import ImageError

    env = pipeline_env
    from flows.frame import process_file

    frame = write_fits(env.root / "in" / "m.fits", seed=7)
    db = ProvenanceDB.from_settings(env.settings)
    engine = load_engine(env.settings)
    assert process_file(frame, env.settings, engine, db=db).status == "succeeded"
    digest = sha256_file(frame)
    frame.rename(env.root / "elsewhere.fits")
    for attempt in (1, 2):
        with pytest.raises(ImageError, match="input moved, deleted or replaced"):
            claim_frame(
                frame, env.settings, db, engine, max_attempts=2, expect_sha256=digest, redo=True
            )
        (run,) = db.list_runs()
        assert run.status == "succeeded"  # a failed redo leaves the success as it was
        last = run.attempt_log[-1]
        assert (last.status, last.attempt) == ("failed", attempt)
        assert "input moved, deleted or replaced" in (last.error or "")
    assert db.frames_needing_rerun("tiny-a", max_attempts=2) == []


def test_an_unreadable_old_output_fails_that_frame_only(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import flows.provenance as provenance

    env = pipeline_env
    a = write_fits(env.root / "in" / "a.fits", seed=8)
    b = write_fits(env.root / "in" / "b.fits", seed=9)
    (env.root / "in" / "a_starless.fits").write_bytes(b"someone else's")
    real = provenance.sha256_file

    def locked(path: object) -> str:
        if str(path).endswith("a_starless.fits"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(provenance, "sha256_file", locked)
    assert transform(env, str(a), str(b)) == 1
    err = capsys.readouterr().err
    assert "a_starless.fits: an output of" in err and "cannot be read" in err
    assert (env.root / "in" / "b_starless.fits").is_file()


def test_a_frame_that_runs_out_of_memory_fails_alone(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    """Out of memory on the device (torch.OutOfMemoryError, a RuntimeError) or the host
    (MemoryError), or any other crash in one frame's computation, fails that frame only:
    recorded with the reason, the next inputs processed, the exit code 1."""
    import torch

    import flows.frame as frame

    env = pipeline_env
    frames = [write_fits(env.root / "in" / f"{n}.fits", seed=i) for i, n in enumerate("abcd", 20)]
    errors = iter(
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"),
            MemoryError("Unable to allocate 3.00 GiB for an array"),
            IndexError("index 7 is out of bounds"),
            None,
        )
    )
    real = frame.process_array

    def failing(*args: object, **kwargs: object) -> object:
        error = next(errors)
        if error is not None:
            raise error
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame, "process_array", failing)
    assert transform(env, *map(str, frames)) == 1
    err = capsys.readouterr().err
    advice = "out of memory (try a smaller inference.tile_px or batch_size, --tile / --batch"
    assert f"FAILED {frames[0]}: {advice}" in err and "OutOfMemoryError: CUDA out of" in err
    assert f"FAILED {frames[1]}: {advice}" in err and "MemoryError: Unable to allocate" in err
    assert f"FAILED {frames[2]}: IndexError: index 7 is out of bounds" in err
    assert "3 of 4 input(s) failed" in err
    assert (env.root / "in" / "d_starless.fits").is_file()
    # only the unexpected error's traceback is logged, for whoever has to fix it
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [IndexError]
    db = ProvenanceDB.from_settings(env.settings)
    runs = {Path(r.frame_path).name: r for r in db.list_runs()}
    assert {name: r.status for name, r in runs.items()} == {
        "a.fits": "failed", "b.fits": "failed", "c.fits": "failed", "d.fits": "succeeded",
    }  # fmt: skip
    assert advice in (runs["a.fits"].error or "") and advice in (runs["b.fits"].error or "")
    assert "IndexError" in (runs["c.fits"].error or "")


@pytest.mark.parametrize("signal", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_frame_is_recorded_and_stops_the_command(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, signal: type[BaseException]
) -> None:
    import flows.frame as frame

    env = pipeline_env
    first = write_fits(env.root / "in" / "a.fits", seed=30)
    second = write_fits(env.root / "in" / "b.fits", seed=31)

    def interrupted(*args: object, **kwargs: object) -> object:
        raise signal()

    monkeypatch.setattr(frame, "process_array", interrupted)
    with pytest.raises(signal):
        transform(env, str(first), str(second))
    (run,) = ProvenanceDB.from_settings(env.settings).list_runs()
    assert run.status == "interrupted" and f"interrupted: {signal.__name__}" in (run.error or "")
    assert Path(run.frame_path).name == "a.fits"
