"""What ``starnet transform`` may replace, and that a frame's outputs land all or none: the
user's own files at the output names, starnet's stamps in its outputs, ``--overwrite``,
and a write that fails half-way (the tiny model and the real SQLite DB of PipelineEnv)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image
from prefect_fixtures import PipelineEnv, write_fits

from flows.cli import main
from flows.frame import OutputGuard, load_engine, process_file, stamped_input
from flows.provenance import ProvenanceDB, sha256_file


def transform(env: PipelineEnv, *args: str) -> int:
    return main(["--config", env.config, "transform", *args, "--quiet"])


def digests(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (hidden ones too: no temporary may be left) by content."""
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def write_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((32, 32, 3)) * 200 + 20).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("db", [True, False], ids=["db", "no-db"])
def test_a_hand_made_file_at_an_output_name_is_kept_unless_overwrite(
    pipeline_env: PipelineEnv, capsys, db: bool
) -> None:
    """The reviewer's case: `starnet transform M42.png` next to the user's own
    M42_starless.png destroyed it, with the DB and without."""
    env = pipeline_env
    src = env.root / "png"
    m42 = write_png(src / "M42.png", seed=1)
    mine = write_png(src / "M42_starless.png", seed=2)  # hand-made, no starnet stamp
    before = digests(src)
    no_db = () if db else ("--no-db",)
    assert transform(env, str(m42), *no_db) == 1
    err = capsys.readouterr().err
    assert f"FAILED {m42}: its output {mine.resolve()} exists and is not this input's" in err
    assert "use --overwrite to replace it, --out to write elsewhere, or move it away" in err
    assert digests(src) == before  # nothing of the frame was written: no mask either
    # the user says so
    assert transform(env, str(m42), *no_db, "--overwrite") == 0
    assert sha256_file(mine) != before["M42_starless.png"]
    assert stamped_input(mine) == (str(m42.resolve()), sha256_file(m42))
    assert (src / "M42_mask.png").is_file()


def test_an_unrelated_fits_at_the_mask_name_fails_the_frame_before_any_write(
    pipeline_env: PipelineEnv, capsys
) -> None:
    env = pipeline_env
    hh = write_fits(env.root / "f" / "hh.fits", seed=3)
    other = write_fits(env.root / "f" / "hh_mask.fits", seed=4)  # some other frame, unrecorded
    before = digests(hh.parent)
    assert transform(env, str(hh)) == 1
    assert f"its output {other.resolve()} exists and is not this input's" in (
        capsys.readouterr().err
    )
    assert digests(hh.parent) == before
    (run,) = ProvenanceDB.from_settings(env.settings).list_runs()
    assert run.status == "failed" and "--overwrite" in (run.error or "")


def test_an_own_output_edited_since_is_kept_unless_overwrite(
    pipeline_env: PipelineEnv, capsys
) -> None:
    """The DB records hh_starless.fits as hh's output, but the user has since saved their
    own work over it (without starnet's stamp): its path alone no longer makes it hh's."""
    env = pipeline_env
    hh = write_fits(env.root / "f" / "hh.fits", seed=3)
    assert transform(env, str(hh)) == 0
    starless = hh.parent / "hh_starless.fits"
    starless.unlink()
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(starless)  # the user's edit
    before = digests(hh.parent)
    assert transform(env, str(hh)) == 1
    assert f"its output {starless} exists and is not this input's" in capsys.readouterr().err
    assert digests(hh.parent) == before
    assert transform(env, str(hh), "--overwrite") == 0
    assert stamped_input(starless) == (str(hh), sha256_file(hh))


@pytest.mark.parametrize("make", ["fits", "tif", "png"])
def test_a_no_db_rerun_replaces_its_own_stamped_outputs(
    pipeline_env: PipelineEnv, capsys, make: str
) -> None:
    """`starnet transform --no-db x` twice: the second run finds starnet's stamp of the same
    input in every output (FITS cards, TIFF ImageDescription, PNG text, the preview's JPEG
    comment) and needs no --overwrite."""
    env = pipeline_env
    folder = env.root / make
    if make == "fits":
        x = write_fits(folder / "x.fits", seed=5)
    elif make == "tif":
        x = folder / "x.tif"
        folder.mkdir()
        tifffile.imwrite(x, (np.random.default_rng(5).random((32, 32)) * 60000).astype(np.uint16))
    else:
        x = write_png(folder / "x.png", seed=5)
    for _ in range(2):
        assert transform(env, str(x), "--no-db", "--preview", "--stars") == 0, (
            capsys.readouterr().err
        )
    outputs = [p for p in folder.iterdir() if p != x]
    assert {p.name.split(".")[0] for p in outputs} == {
        "x_starless", "x_mask", "x_stars", "x_preview",
    }  # fmt: skip
    digest = sha256_file(x)
    assert all(stamped_input(p) == (str(x.resolve()), digest) for p in outputs)


def test_stamps_of_another_input_are_refused_and_overwrite_replaces_them(
    pipeline_env: PipelineEnv, capsys
) -> None:
    """Two nights' M42.fits into one --out without a DB: the second night's outputs would
    replace the first's; the stamp says whose they are."""
    env = pipeline_env
    night1 = write_fits(env.root / "n1" / "M42.fits", seed=1)
    night2 = write_fits(env.root / "n2" / "M42.fits", seed=2)
    out = env.root / "out"
    assert transform(env, str(night1), "--out", str(out), "--no-db") == 0
    before = digests(out)
    assert transform(env, str(night2), "--out", str(out), "--no-db") == 1
    err = capsys.readouterr().err
    assert f"FAILED {night2}: its outputs would overwrite those of {night1}" in err
    assert "(stamped); use --overwrite" in err
    assert digests(out) == before
    assert transform(env, str(night2), "--out", str(out), "--no-db", "--overwrite") == 0
    assert stamped_input(out / "M42_starless.fits") == (str(night2), sha256_file(night2))


def test_overwrite_never_lets_inputs_of_one_command_overwrite_each_other(
    pipeline_env: PipelineEnv, capsys
) -> None:
    import gzip

    env = pipeline_env
    src = env.root / "src"
    plain = write_fits(src / "e.fits", seed=1)
    packed = src / "e.fits.gz"
    packed.write_bytes(gzip.compress(write_fits(env.root / "tmp" / "e.fits", seed=2).read_bytes()))
    users = write_fits(src / "e_starless_mask.fits", seed=3)  # an input, and e_starless's mask
    args = (str(plain), str(packed), str(src / "e_starless.fits"), str(users))
    assert transform(env, *args[:2], "--overwrite") == 1
    err = capsys.readouterr().err
    assert f"FAILED {packed}: its outputs would overwrite those of {plain}" in err
    assert "(written in this run); rename it" in err
    before = sha256_file(users)
    assert transform(env, args[2], args[3], "--overwrite") == 1
    assert f"its output {users.resolve()} would overwrite an input" in capsys.readouterr().err
    assert sha256_file(users) == before


def test_a_recorded_input_at_an_output_name_is_called_that_input_itself(
    pipeline_env: PipelineEnv, capsys
) -> None:
    """hh_mask.fits was processed as a frame of its own: the DB knows it as an input, and
    the message says so, not that it is that input's output."""
    env = pipeline_env
    hh = write_fits(env.root / "f" / "hh.fits", seed=3)
    mask = write_fits(env.root / "f" / "hh_mask.fits", seed=4)
    assert transform(env, str(mask)) == 0  # registers it as an input
    assert transform(env, str(hh)) == 1
    err = capsys.readouterr().err
    assert f"FAILED {hh}: its outputs would overwrite {mask} (sha256 " in err
    assert f"recorded as an input): {mask} is that input itself; use --overwrite" in err
    assert "that input's output" not in err
    assert not (env.root / "f" / "hh_starless.fits").exists()


def test_an_output_that_fails_to_write_leaves_no_other_output(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The mask cannot be written (a full disk): the starless, written first, must not be
    left behind (the DB records the frame failed, without outputs), nor any temporary."""
    import flows.frame as frame
    from starnet_core.imageio import ImageError

    env = pipeline_env
    hh = write_fits(env.root / "f" / "hh.fits", seed=3)
    real = frame.write_image

    def full_disk(path: Path, *args: object, **kwargs: object) -> None:
        # by its kind: the temporary written is .starnet-<random>.fits, not hh_mask's name
        if kwargs["header_cards"]["KIND"] == "mask":  # type: ignore[index]
            raise ImageError(path, "cannot write: No space left on device")
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(frame, "write_image", full_disk)
    assert transform(env, str(hh)) == 1
    err = capsys.readouterr().err
    mask = env.root / "f" / "hh_mask.fits"
    assert f"FAILED {hh}: {mask}: cannot write: No space left on device" in err
    assert [p.name for p in hh.parent.iterdir()] == ["hh.fits"]


def test_a_rename_that_fails_puts_back_the_outputs_it_replaced(
    pipeline_env: PipelineEnv, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The reviewer's case: hh_mask.fits immutable (its rename refused). The new
    hh_starless.fits, renamed into place first, is undone: the folder and the DB keep the
    last run's outputs."""
    env = pipeline_env
    hh = write_fits(env.root / "f" / "hh.fits", seed=3)
    assert transform(env, str(hh)) == 0
    before = digests(hh.parent)
    real = os.replace

    def immutable(src: object, dst: object) -> None:
        if Path(str(dst)).name == "hh_mask.fits":
            raise PermissionError(1, "Operation not permitted", str(dst))
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", immutable)
    assert transform(env, str(hh), "--passes", "2") == 1  # other settings: other outputs
    err = capsys.readouterr().err
    assert f"{hh.parent / 'hh_mask.fits'}: cannot write: Operation not permitted" in err
    assert digests(hh.parent) == before  # no temporary nor kept copy left either
    db = ProvenanceDB.from_settings(env.settings)
    h = db.history(hh.parent / "hh_starless.fits")
    assert h.role == "output" and h.note is None and h.produced_by is not None
    with fits.open(hh.parent / "hh_starless.fits") as hdul:
        assert hdul[0].header["HIERARCH STARNET RUNKEY"] == h.produced_by.run_key


def test_the_flows_guard_replaces_an_unrecorded_file_but_not_a_stamped_other_one(
    pipeline_env: PipelineEnv,
) -> None:
    """Decision: the flows write under output_dir, starnet's own folder, and keep replacing
    a file that nobody is recorded or stamped as owning; a file stamped as a different
    input's output is refused there too."""
    env = pipeline_env
    settings = env.settings
    engine = load_engine(settings)
    db = ProvenanceDB.from_settings(settings)
    a = write_fits(env.root / "in" / "a.fits", seed=1)
    out = env.root / "outputs"
    out.mkdir()
    (out / "a_starless.fits").write_bytes(b"left over")
    result = process_file(a, settings, engine, out_dir=out, db=db, guard=OutputGuard())
    assert result.status == "succeeded", result.error
    assert stamped_input(out / "a_starless.fits") == (str(a), sha256_file(a))
    b = write_fits(env.root / "other" / "a.fits", seed=2)
    result = process_file(b, settings, engine, out_dir=out, db=None, guard=OutputGuard())
    assert result.status == "failed"
    assert f"its outputs would overwrite those of {a}" in (result.error or "")


def test_a_stamp_is_read_from_the_header_only_and_nothing_else_is_one(tmp_path: Path) -> None:
    assert stamped_input(tmp_path / "missing.fits") is None
    (tmp_path / "text.tif").write_text("not a tiff")
    assert stamped_input(tmp_path / "text.tif") is None
    plain = write_png(tmp_path / "plain.png", seed=1)
    assert stamped_input(plain) is None
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(tmp_path / "plain.fits")
    assert stamped_input(tmp_path / "plain.fits") is None
    header = fits.Header()
    header["HIERARCH STARNET INSHA"] = "not a sha256"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32), header).writeto(tmp_path / "bad.fits")
    assert stamped_input(tmp_path / "bad.fits") is None
