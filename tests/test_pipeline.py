"""The one-frame data flow on arrays and on files, and the transform / test CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from astropy.io import fits

from flows.cli import main
from starnet_core.imageio import read_image
from starnet_core.model import ModelConfig, StarNetUNet, save_weights
from starnet_core.options import (
    CoreFillOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
)
from starnet_core.pipeline import FrameProducts, StretchOptions, needs_stretch, process_array
from starnet_core.stretch import apply_stretch, normalize_linear

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1))


class Halve(torch.nn.Module):
    """A stand-in 'model' with a known answer: starless = x / 2."""

    multiple = 4
    in_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / 2


def halved(image: np.ndarray, *, is_linear: bool) -> FrameProducts:
    """:func:`process_array` with :class:`Halve` and every step after the network off
    (protection, sky colour, rim fill, spikes, remnants), so the starless image is the
    input halved: each of those steps would change some of it."""
    return process_array(
        Halve(),
        image,
        is_linear=is_linear,
        protect=ProtectOptions(enabled=False),
        sky_colour=SkyColourOptions(enabled=False),
        core_fill=CoreFillOptions(enabled=False),
        spikes=SpikeOptions(enabled=False),
        remnants=RemnantOptions(enabled=False),
    )


def star_field(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Linear frame in ADU-like units: sky + noise + a few Gaussian stars."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    img = 1000 + rng.normal(0, 10, shape)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(12):
        x0, y0, amp = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(500, 20000)
        img += amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.5**2))
    return img.astype(np.float32)


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_weights(StarNetUNet(TINY), path, version="0.0.1-test")
    return path


def test_needs_stretch_policy() -> None:
    assert needs_stretch(True, "auto") and not needs_stretch(False, "auto")
    assert needs_stretch(False, "always") and not needs_stretch(True, "never")
    with pytest.raises(ValueError, match="stretch mode"):
        needs_stretch(True, "sometimes")


def test_linear_frame_comes_back_linear() -> None:
    image = star_field((1, 40, 48))
    p = halved(image, is_linear=True)  # the network's halving everywhere
    assert p.stretch is not None and p.normalization is not None
    assert p.starless.shape == image.shape and p.starless.dtype == np.float32
    # the starless frame is in the input's units and can be stretched like the original:
    x01, norm = normalize_linear(image)
    s01 = (p.starless - norm.offset) / norm.scale
    expected = np.clip(apply_stretch(x01, p.stretch) / 2, 0, 1)
    assert np.allclose(apply_stretch(np.clip(s01, 0, 1), p.stretch), expected, atol=2e-4)
    # linear light adds: stars + starless == original wherever stars >= 0
    assert np.allclose(p.starless + p.stars, np.maximum(image, p.starless), rtol=1e-5)
    assert p.mask.shape == (1, 40, 48) and p.mask.min() >= 0 and p.mask.max() <= 1
    assert p.enhanced.shape == image.shape


def test_stretched_frame_uses_unscreen_star_layer() -> None:
    image = np.random.default_rng(1).uniform(0.1, 0.9, (3, 20, 24)).astype(np.float32)
    p = halved(image, is_linear=False)
    assert p.stretch is None
    assert np.allclose(p.starless, image / 2, atol=1e-6)
    screened = 1 - (1 - p.starless) * (1 - p.stars)
    assert np.allclose(screened, image, atol=1e-5)


def test_forced_stretch_on_8bit_data() -> None:
    image = np.random.default_rng(2).uniform(0.0, 0.2, (1, 16, 16)).astype(np.float32)
    p = process_array(Halve(), image, is_linear=False, stretch=StretchOptions(mode="always"))
    assert p.stretch is not None


def test_a_skipped_stretch_refuses_data_outside_0_1() -> None:
    """stretch.mode never on a frame in ADU used to clip it to an all-white frame."""
    adu = star_field((1, 24, 24))
    for mode, use in (("never", "use stretch.mode auto or always"), ("auto", "always")):
        with pytest.raises(ValueError, match=f"outside \\[0, 1\\], needs the stretch.*{use}"):
            process_array(Halve(), adu, is_linear=mode == "never", stretch=StretchOptions(mode))
    # [0, 1] data, give or take float rounding, is taken as it is (clipped)
    unit = np.random.default_rng(3).uniform(0.0, 1.0, (1, 16, 16)).astype(np.float32)
    unit[0, 0, :2] = (1.0005, -0.0005)
    p = halved(unit, is_linear=False)
    assert p.stretched.min() == 0.0 and p.stretched.max() == 1.0
    with pytest.raises(ValueError, match="data in \\[0, 1.01\\]"):
        halved(np.where(unit > 0.5, 1.01, 0.0).astype(np.float32), is_linear=False)


def run_cli(*args: str) -> int:
    return main(list(args))


def test_transform_8bit_tiff(tmp_path: Path, weights: Path) -> None:
    rgb = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    src = tmp_path / "m42.tif"
    tifffile.imwrite(src, rgb)
    rc = run_cli(
        "transform",
        str(src),
        "--weights",
        str(weights),
        "--no-db",
        "--stars",
        "--enhance",
        "--quiet",
    )
    assert rc == 0
    for kind in ("starless", "mask", "stars", "enhanced"):
        out = tifffile.imread(tmp_path / f"m42_{kind}.tif")
        assert out.dtype == np.uint8, kind
    assert tifffile.imread(tmp_path / "m42_starless.tif").shape == (40, 50, 3)
    assert np.array_equal(tifffile.imread(src), rgb)


def test_transform_16bit_tiff_keeps_depth(tmp_path: Path, weights: Path) -> None:
    mono = (np.random.default_rng(0).random((33, 35)) * 65535).astype(np.uint16)
    src = tmp_path / "ngc.tiff"
    tifffile.imwrite(src, mono)
    assert run_cli("transform", str(src), "--weights", str(weights), "--no-db", "--quiet") == 0
    out = tifffile.imread(tmp_path / "ngc_starless.tiff")
    assert out.dtype == np.uint16 and out.shape == (33, 35)


def test_transform_linear_fits_cube_with_db(tmp_path: Path, weights: Path, monkeypatch) -> None:
    monkeypatch.setenv("STARNET_DATA_DIR", str(tmp_path / "data"))
    cube = star_field((3, 36, 40))
    hdr = fits.Header()
    hdr["OBJECT"] = "M42"
    hdr["CTYPE1"] = "RA---TAN"
    src = tmp_path / "m42.fits"
    fits.PrimaryHDU(cube, hdr).writeto(src)
    out_dir = tmp_path / "out"
    rc = run_cli("transform", str(src), "--weights", str(weights), "--out", str(out_dir), "--quiet")
    assert rc == 0
    with fits.open(out_dir / "m42_starless.fits") as hdul:
        h = hdul[0].header
        assert hdul[0].data.shape == (3, 36, 40) and hdul[0].data.dtype.kind == "f"
        assert h["OBJECT"] == "M42" and h["CTYPE1"] == "RA---TAN"
        assert h["HIERARCH STARNET MODEL"] == "0.0.1-test"
        # linear out: same units as the input (sky ~1000 ADU), not [0, 1]
        assert 500 < float(np.median(hdul[0].data)) < 1500
    # the provenance DB knows what made the output
    assert run_cli("history", str(out_dir / "m42_starless.fits"), "--json") == 0


def test_transform_bad_inputs_fail_clearly_and_others_go_on(
    tmp_path: Path, weights: Path, capsys
) -> None:
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)).save(
        good
    )
    bad = tmp_path / "bad.fits"
    bad.write_text("this is not a FITS file")
    nan = tmp_path / "nan.fits"
    data = star_field((1, 20, 20))
    data[0, :5, :5] = np.nan
    fits.PrimaryHDU(data[0]).writeto(nan)
    folder = tmp_path / "folder.fits"  # a directory named like a frame
    folder.mkdir()
    rc = run_cli(
        "transform",
        str(bad),
        str(good),
        str(nan),
        str(tmp_path / "missing.tif"),
        str(folder),
        "--weights",
        str(weights),
        "--no-db",
        "--quiet",
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert f"FAILED {bad}:" in err
    assert "25 NaN" in err or "25 non-finite" in err
    assert "missing.tif: no such file" in err
    assert "folder.fits: not a regular file" in err
    assert "4 of 5 input(s) failed" in err
    assert (tmp_path / "good_starless.png").exists()
    assert not (tmp_path / "bad_starless.fits").exists()


def test_transform_without_weights_says_what_to_do(tmp_path: Path, capsys) -> None:
    src = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8) + 30).save(src)
    rc = run_cli("transform", str(src), "--weights", str(tmp_path / "nope.safetensors"), "--no-db")
    assert rc == 2
    assert "nope.safetensors: weights file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "match"),
    [
        (("--passes", "0"), "passes must be an int >= 1, got 0"),
        (("--lattice", "1"), "lattice_px must be 0 (off) or an int >= 2, got 1"),
    ],
)
def test_transform_refuses_a_bad_engine_option_before_any_frame(
    tmp_path: Path, weights: Path, capsys, option: tuple[str, str], match: str
) -> None:
    src = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8) + 30).save(src)
    for mode in ("transform", "test"):
        args = (mode, str(src), "--weights", str(weights), *option)
        rc = run_cli(*args, *(("--no-db",) if mode == "transform" else ()))
        err = capsys.readouterr().err
        assert rc == 2
        assert f"starnet: bad engine option: {match}" in err
        assert "FAILED" not in err
    assert not (tmp_path / "x_starless.png").exists()


def test_test_mode_writes_panels(tmp_path: Path, weights: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "field.fits"
    fits.PrimaryHDU(star_field((1, 80, 90))[0]).writeto(src)
    assert (
        run_cli("test", str(src), "--weights", str(weights), "--patches", "2", "--patch", "64") == 0
    )
    panels = sorted((tmp_path / "test").glob("field_patch*.png"))
    assert len(panels) == 2
    img = read_image(panels[0])
    assert img.data.shape == (3, 64, 3 * 64)


def test_stretch_mode_never_on_a_linear_fits_fails_that_frame_naming_the_fix(
    tmp_path: Path, weights: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    adu = tmp_path / "adu.fits"
    fits.PrimaryHDU(star_field((1, 40, 40))[0]).writeto(adu)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, (np.random.default_rng(5).random((20, 20)) * 255).astype(np.uint8))
    (tmp_path / "never.yaml").write_text("stretch:\n  mode: never\n")
    config = ("--config", str(tmp_path / "never.yaml"))
    args = ("transform", str(adu), str(good), "--weights", str(weights), "--no-db", "--quiet")
    assert run_cli(*config, *args) == 1
    err = capsys.readouterr().err
    assert f"FAILED {adu}: data in [" in err and "use stretch.mode auto or always" in err
    assert "1 of 2 input(s) failed" in err
    assert not (tmp_path / "adu_starless.fits").exists()
    assert (tmp_path / "good_starless.tif").exists()
    assert run_cli(*config, "test", str(adu), "--weights", str(weights), "--patches", "1") == 1
    assert "use stretch.mode auto or always" in capsys.readouterr().err
    assert not (tmp_path / "test").exists()


def test_test_mode_picks_the_brightest_then_the_busiest_patch() -> None:
    from flows.cli_transform import _pick_patches

    lum = np.full((1, 200, 300), 0.1, np.float32)
    lum[0, 20, 280] = 1.0  # the brightest pixel, alone
    rng = np.random.default_rng(1)
    lum[0, 100:164, 32:96] += 0.5 * rng.random((64, 64), dtype=np.float32)  # the busy block
    corners = _pick_patches(lum, 3, 64)
    assert corners[0] == (0, 236)  # centred on the bright pixel, clamped to the frame
    assert corners[1] == (96, 32)  # the grid (steps of 32 px) window that holds the block
    assert len(corners) == 3 and len(_pick_patches(lum, 1, 64)) == 1


def test_test_mode_refuses_bad_counts_and_reads_with_the_nan_policy(
    tmp_path: Path, weights: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "nan.fits"
    data = star_field((1, 70, 70))[0]
    data[5, 5] = np.nan
    fits.PrimaryHDU(data).writeto(src)
    for option in (("--patches", "0"), ("--patch", "0")):
        assert run_cli("test", str(src), "--weights", str(weights), *option) == 2
        assert f"starnet test: {option[0]} must be at least" in capsys.readouterr().err
    assert not (tmp_path / "test").exists()
    assert run_cli("test", str(src), "--weights", str(weights), "--patches", "1") == 1
    assert "validation.nan_policy" in capsys.readouterr().err  # the default: error
    (tmp_path / "zero.yaml").write_text("validation:\n  nan_policy: zero\n")
    args = ("--config", str(tmp_path / "zero.yaml"), "test", str(src), "--weights", str(weights))
    assert run_cli(*args, "--patches", "1", "--patch", "64") == 0
    assert len(list((tmp_path / "test").glob("nan_patch*.png"))) == 1


def test_transform_switches_off_the_steps_after_the_network(
    tmp_path: Path, weights: Path, monkeypatch, capsys
) -> None:
    """--no-protect / --no-sky-colour / --no-core-fill / --no-spikes / --no-remnants (and
    --lattice 4) reach the pipeline, and provenance records them."""
    monkeypatch.setenv("STARNET_DATA_DIR", str(tmp_path / "data"))
    src = tmp_path / "m42.fits"
    fits.PrimaryHDU(star_field((3, 36, 40))).writeto(src)
    out_dir = tmp_path / "out"
    args = ("transform", str(src), "--weights", str(weights), "--quiet")
    assert run_cli(*args, "--out", str(out_dir / "default")) == 0
    switches = ("--lattice", "4", "--no-protect", "--no-sky-colour", "--no-core-fill")
    switches += ("--no-spikes", "--no-remnants")
    assert run_cli(*args, "--out", str(out_dir / "raw"), *switches) == 0
    capsys.readouterr()

    params = []
    for kind in ("default", "raw"):
        assert run_cli("history", str(out_dir / kind / "m42_starless.fits"), "--json") == 0
        params.append(json.loads(capsys.readouterr().out)["produced_by"]["params"])
    sections = ("protect", "sky_colour", "core_fill", "spikes", "remnants")
    assert all(params[0][key]["enabled"] for key in sections)
    assert not any(params[1][key]["enabled"] for key in sections)
    # the rest of each section is the config's, untouched
    for key in sections:
        assert {**params[1][key], "enabled": True} == params[0][key]
    assert params[0]["inference"]["lattice_px"] == 0
    assert params[1]["inference"] == {**params[0]["inference"], "lattice_px": 4}


def test_test_mode_out_that_is_a_file_is_one_line_naming_it(
    tmp_path: Path, weights: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "field.fits"
    fits.PrimaryHDU(star_field((1, 80, 90))[0]).writeto(src)
    (tmp_path / "notes.txt").write_text("mine\n")
    for out in ("notes.txt", "notes.txt/sub"):
        args = ("test", str(src), "--weights", str(weights), "--patches", "1", "--out", out)
        assert run_cli(*args) == 1
        err = capsys.readouterr().err
        assert f"FAILED {out}: cannot write the patches here:" in err and "Traceback" not in err
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_no_data_pixels_are_nan_again_in_the_float_outputs(
    tmp_path: Path, weights: Path, monkeypatch
) -> None:
    """A stack's NaN border, repaired for the network (validation.nan_policy), is no data
    in the outputs too, not invented values a later stacking or mosaic would use."""
    monkeypatch.chdir(tmp_path)
    data = star_field((3, 64, 72))
    data[:, :6, :] = np.nan  # a registration border, on every channel
    data[1, 30, 40] = np.inf  # one channel's bad pixel
    fits.PrimaryHDU(data.astype(np.float32)).writeto(tmp_path / "stack.fits")
    (tmp_path / "c.yaml").write_text(
        "validation:\n  nan_policy: median\n  max_nonfinite_fraction: 0.2\n"
    )
    args = ("--config", "c.yaml", "transform", "stack.fits", "--weights", str(weights))
    assert run_cli(*args, "--no-db", "--quiet", "--stars", "--preview") == 0
    bad = ~np.isfinite(data)
    for kind in ("starless", "stars"):
        out = fits.getdata(tmp_path / f"stack_{kind}.fits")
        assert out.shape == data.shape
        np.testing.assert_array_equal(np.isnan(out), bad)  # NaN exactly where no data was
    mask = fits.getdata(tmp_path / "stack_mask.fits")
    np.testing.assert_array_equal(np.isnan(mask).reshape(mask.shape[-2:]), bad.any(axis=0))
    assert (tmp_path / "stack_preview.jpg").is_file()  # 8-bit: the repaired values
    tiff = tmp_path / "f.tif"  # a float TIFF keeps its no data too; an integer one cannot
    tifffile.imwrite(tiff, np.where(bad[0], np.nan, 0.2 + data[0] / 1e5).astype(np.float32))
    assert run_cli("--config", "c.yaml", "transform", str(tiff), "--weights", str(weights),
                   "--no-db", "--quiet") == 0  # fmt: skip
    out = tifffile.imread(tmp_path / "f_starless.tif")
    np.testing.assert_array_equal(np.isnan(out), bad[0])


def test_a_lone_dead_pixel_below_the_range_keeps_its_value_in_the_starless() -> None:
    """The linear range leaves a lone outlier out (starnet_core.stretch.normalize_linear):
    a dead pixel far below it comes back as it was, not as the range's bottom."""
    image = star_field((1, 64, 64)).astype(np.float32)
    image[0, 20, 30] = -5000.0  # a dead pixel, far below the sky of ~1000 ADU
    products = halved(image, is_linear=True)
    assert products.starless[0, 20, 30] == -5000.0
    assert products.stars[0, 20, 30] == 0.0
    assert float(np.median(products.starless)) > 0.0  # the rest as before: not crushed
