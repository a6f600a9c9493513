"""A frame's output folder is checked before its computing; any output name the file system
allows is written (the temporaries' names are short); the previews of a FITS frame show it
as FITS viewers do (row 0 at the bottom, unless ROWORDER = 'TOP-DOWN'), the FITS outputs
keep its row order. The tiny model and the config of PipelineEnv."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image
from prefect_fixtures import PipelineEnv, write_fits

from flows.cli import main
from flows.frame import (
    OutputGuard,
    claim_frame,
    compute_outputs,
    load_engine,
    process_file,
    stamped_input,
)
from flows.provenance import sha256_file

REPO = Path(__file__).resolve().parents[1]


def tiles_counter() -> tuple[list[int], Callable[[int, int], None]]:
    """A progress callback that counts the network's batches (none: nothing computed)."""
    calls: list[int] = []
    return calls, lambda done, total: calls.append(done)


# ------------------------------------------------------------ the output folder, first


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_folder_that_cannot_be_made_fails_before_the_computing(
    pipeline_env: PipelineEnv, where: str
) -> None:
    """`--out` naming a file (or a folder under one): the frame fails at once, naming the
    folder and the reason, not after the whole inference."""
    env = pipeline_env
    engine = load_engine(env.settings)
    x = write_fits(env.root / "in" / "x.fits", seed=1)
    blocker = env.root / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker if where == "a file" else blocker / "starless"
    calls, progress = tiles_counter()
    result = process_file(x, env.settings, engine, out_dir=out, progress=progress)
    assert result.status == "failed"
    reason = "not a folder" if where == "a file" else "Not a directory"
    assert result.error == f"{x}: {out}: cannot write outputs here: {reason}"
    assert calls == []  # the network never ran
    # the counter counts: a folder that can be written computes, then writes
    result = process_file(x, env.settings, engine, out_dir=env.root / "ok", progress=progress)
    assert result.status == "succeeded", result.error
    assert calls


def _without_write_permission(folder: Path) -> list[str]:
    """The command prefix under which ``folder`` (mode 555) cannot be written: none for an
    ordinary user; for root, which ignores mode bits, ``setpriv`` dropping the
    capabilities that let it (root stays the owner of the test's files, so it still reads
    them). Skips where root cannot drop them."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: mode bits cannot be enforced")
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    check = f"open({str(folder / 'check')!r}, 'x')"
    probe = subprocess.run([*prefix, sys.executable, "-c", check], capture_output=True)
    if probe.returncode == 0 or b"PermissionError" not in probe.stderr:
        (folder / "check").unlink(missing_ok=True)
        pytest.skip("root cannot drop CAP_DAC_OVERRIDE here: mode bits cannot be enforced")
    return prefix


def test_a_read_only_output_folder_fails_before_the_computing(pipeline_env: PipelineEnv) -> None:
    """The reviewer's read-only NAS: the frame computed for minutes, then failed on its
    first write. Now it fails first, naming the folder and the reason (the real command,
    in a process that cannot write there)."""
    env = pipeline_env
    x = write_fits(env.root / "in" / "x.fits", seed=1)
    ro = env.root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        prefix = _without_write_permission(ro)
        command = "import sys; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
        args = ["--config", env.config, "transform", str(x), "--out", str(ro), "--no-db"]
        done = subprocess.run(
            [*prefix, sys.executable, "-c", command, *args, "--quiet"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=os.environ | {"OMP_NUM_THREADS": "1"},
            timeout=300,
        )
    finally:
        ro.chmod(0o755)
    assert done.returncode == 1, done.stderr
    assert f"FAILED {x}: {ro}: cannot write outputs here: Permission denied" in done.stderr
    assert "removing stars" not in done.stderr  # the inference's first log line
    assert list(ro.iterdir()) == []


def test_the_output_folder_is_probed_once_per_guard_and_left_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.frame as frame

    probes: list[bool] = []
    real = frame._make_folder

    def spy(target: Path, probe: bool = True) -> None:
        probes.append(probe)
        real(target, probe)

    monkeypatch.setattr(frame, "_make_folder", spy)
    guard = OutputGuard()
    for folder in ("a", "a", "b/c", "a"):
        guard.writable(tmp_path / folder)
    assert probes == [True, False, True, False]
    OutputGuard().writable(tmp_path / "a")  # the next command / flow run checks again
    assert probes[-1] is True
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a", "b", "b/c"]


# ------------------------------------------------------------ long output names


def test_any_output_name_the_file_system_allows_is_written(
    pipeline_env: PipelineEnv, capsys
) -> None:
    """A 245-byte input name (80 CJK characters): its outputs' names, up to 254 bytes, are
    legal, and so must be their temporaries' (and, on a rerun, the old outputs' kept-aside)
    names. They were 26 bytes longer: "File name too long" after the inference."""
    env = pipeline_env
    stem = "オリオン大星雲" * 11 + "_Ha_M42"  # 231 + 7 = 238 bytes
    src = write_fits(env.root / "long" / f"{stem}.fits", seed=2)
    names = [f"{stem}_{kind}.fits" for kind in ("starless", "mask", "stars", "enhanced")]
    names.append(f"{stem}_preview.jpg")
    assert max(len(n.encode()) for n in names) == 252 <= 255
    for _ in range(2):  # the second run replaces the first's outputs (kept aside meanwhile)
        args = ["--config", env.config, "transform", str(src), "--no-db", "--quiet"]
        code = main([*args, "--stars", "--enhance", "--preview"])
        assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in src.parent.iterdir()) == sorted([src.name, *names])
    digest = sha256_file(src)
    assert all(stamped_input(src.parent / n) == (str(src), digest) for n in names)


# ------------------------------------------------------------ previews of FITS frames


def gradient(path: Path, roworder: str | None = None) -> Path:
    """A 64 x 64 frame whose rows brighten with the row index (row 0 darkest), as FITS
    (with ``ROWORDER`` when given) or, for ``.png``, 8-bit grey."""
    rng = np.random.default_rng(0)
    rows = np.linspace(0.0, 1.0, 64, dtype=np.float32)[:, None]
    data = rows * np.ones((64, 64), np.float32) + rng.normal(0, 0.01, (64, 64)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        Image.fromarray((np.clip(data, 0, 1) * 200 + 20).astype(np.uint8)).save(path)
    else:
        header = fits.Header()
        if roworder is not None:
            header["ROWORDER"] = roworder
        fits.PrimaryHDU(100 + 1000 * data, header=header).writeto(path)
    return path


def top_is_bright(picture: Image.Image | Path | bytes) -> bool:
    """Whether the first panel (the original) of a strip shows its top rows brighter than
    its bottom rows; asserts that the two differ clearly either way."""
    if isinstance(picture, bytes):
        picture = io.BytesIO(picture)  # type: ignore[assignment]
    with Image.open(picture) as im:  # type: ignore[arg-type]
        grey = np.asarray(im.convert("L"), np.float64)
    first = grey[:, : grey.shape[1] // 3]
    top, bottom = first[:8].mean(), first[-8:].mean()
    assert abs(top - bottom) > 40, (top, bottom)
    return bool(top > bottom)


# (input, ROWORDER, whether the picture's top is the frame's last row)
ORIENTATIONS = [
    ("x.fits", None, True),  # the FITS convention: row 0 at the bottom
    ("x.fits", "BOTTOM-UP", True),
    ("x.fits", " top-down ", False),  # the capture program stored the top row first
    ("x.png", None, False),  # pictures store the top row first: unchanged
]


@pytest.mark.parametrize(("name", "roworder", "flipped"), ORIENTATIONS)
def test_previews_show_a_frame_as_its_viewers_do(
    pipeline_env: PipelineEnv, name: str, roworder: str | None, flipped: bool
) -> None:
    """The preview JPEG and the DB / Prefect thumbnail of a FITS frame showed FITS row 0 at
    the top: mirrored against ds9, Siril and astropy's origin="lower". The outputs keep
    the input's row order."""
    env = pipeline_env
    settings = env.settings
    settings.outputs.preview = True
    engine = load_engine(settings)
    src = gradient(env.root / "in" / name, roworder)
    claim = claim_frame(src, settings, None, engine)
    out = env.root / "out"
    result = compute_outputs(src, settings, engine, claim, out_dir=out)
    assert top_is_bright(Path(result.outputs["preview"])) is flipped
    assert result.thumbnail_jpeg is not None
    assert top_is_bright(result.thumbnail_jpeg) is flipped
    if src.suffix == ".fits":  # the data keeps its rows: row 0 darkest, as in the input
        starless = fits.getdata(result.outputs["starless"])
        assert starless[:8].mean() < starless[-8:].mean()
        kept = fits.getheader(result.outputs["starless"]).get("ROWORDER")
        assert (kept or "").strip() == (roworder or "").strip()


@pytest.mark.parametrize(("name", "roworder", "flipped"), ORIENTATIONS)
def test_starnet_test_panels_show_a_frame_as_its_viewers_do(
    pipeline_env: PipelineEnv, capsys, name: str, roworder: str | None, flipped: bool
) -> None:
    env = pipeline_env
    src = gradient(env.root / "in" / name, roworder)
    out = env.root / "panels"
    args = ["--config", env.config, "test", str(src), "--out", str(out), "--patches", "1"]
    assert main(args) == 0, capsys.readouterr().err
    (panel,) = out.iterdir()
    assert panel.name == "x_patch0_0_0.png"
    assert top_is_bright(panel) is flipped
