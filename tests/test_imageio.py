"""Image I/O: round trips for every format, header provenance, atomic writes, validation."""

from __future__ import annotations

import bz2
import io
import json
import os
import pickle
import re
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from astropy.wcs import WCS
from PIL import Image, ImageOps

from starnet_core import imageio
from starnet_core.imageio import ImageData, ImageError, output_path, read_image, write_image

H, W = 24, 32


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ints(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


def _float01(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return _rng(seed).uniform(0.0, 1.0, size=shape).astype(np.float32)


def _wcs_header() -> fits.Header:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [83.82, -5.39]
    w.wcs.crpix = [16.0, 12.0]
    w.wcs.cdelt = [-0.0003, 0.0003]
    header = w.to_header()
    header["OBJECT"] = "Horsehead"
    header["EXPTIME"] = (300.0, "[s]")
    return header


def _roundtrip(src: Path, tmp_path: Path) -> tuple[ImageData, ImageData]:
    first = read_image(src)
    out = output_path(src, "copy", tmp_path / "out")
    write_image(out, first.data, like=first)
    return first, read_image(out)


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("rgb", [False, True])
def test_tiff_integer_roundtrip(tmp_path: Path, dtype: str, rgb: bool) -> None:
    samples = _ints(dtype, (H, W, 3) if rgb else (H, W))
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, samples, photometric="rgb" if rgb else "minisblack")
    first, again = _roundtrip(src, tmp_path)
    expected = samples.astype(np.float32) / np.iinfo(dtype).max
    expected = np.moveaxis(expected, 2, 0) if rgb else expected[None]
    assert first.data.dtype == np.float32 and first.data.shape == expected.shape
    np.testing.assert_array_equal(first.data, expected)
    assert (first.format, first.dtype, first.is_linear) == ("tiff", dtype, False)
    np.testing.assert_array_equal(again.data, first.data)
    assert again.dtype == dtype


def test_tiff_planar_rgb_and_float(tmp_path: Path) -> None:
    planar = _ints("uint16", (3, H, W))
    src = tmp_path / "planar.tiff"
    tifffile.imwrite(src, planar, photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(src).data, planar / np.float32(65535))

    values = _float01((3, H, W)) * 1.2 - 0.1  # floats are kept as they are, even off [0, 1]
    src = tmp_path / "float.tif"
    tifffile.imwrite(src, np.moveaxis(values, 0, 2), photometric="rgb")
    first, again = _roundtrip(src, tmp_path)
    assert (first.dtype, first.is_linear) == ("float32", True)
    np.testing.assert_array_equal(first.data, values)
    np.testing.assert_array_equal(again.data, values)


@pytest.mark.parametrize("dtype", ["uint32", "int32"])
@pytest.mark.parametrize("rgb", [False, True])
def test_tiff_32bit_integers_are_refused_naming_what_to_save(
    tmp_path: Path, dtype: str, rgb: bool
) -> None:
    """32-bit integer TIFFs (DeepSkyStacker's and PixInsight's integer exports) were read
    as stretched data scaled by 2**32 - 1 (a linear stack reached the network nearly
    black) and written back as float32: refused, naming the file and the formats to save
    instead, like int16 TIFF."""
    samples = _ints(dtype, (H, W, 3) if rgb else (H, W))
    src = tmp_path / f"stack_{dtype}.tif"
    tifffile.imwrite(src, samples, photometric="rgb" if rgb else "minisblack")
    with pytest.raises(ImageError, match=rf"32-bit integer samples \({dtype}\)") as info:
        read_image(src)
    assert info.value.path == src
    assert str(src) in str(info.value)
    assert "32-bit float TIFF or FITS" in str(info.value) and "16-bit TIFF" in str(info.value)


def test_tiff_multipage_and_alpha_notes(tmp_path: Path) -> None:
    pages = _ints("uint16", (3, H, W))
    src = tmp_path / "pages.tif"
    tifffile.imwrite(src, pages, photometric="minisblack")
    img = read_image(src, page=1)
    np.testing.assert_array_equal(img.data[0], pages[1] / np.float32(65535))
    assert "page 1 of 3 used" in img.notes
    with pytest.raises(ImageError, match=r"page 5 requested but the file has 3 page"):
        read_image(src, page=5)

    rgba = _ints("uint8", (H, W, 4))
    src = tmp_path / "alpha.tif"
    tifffile.imwrite(src, rgba, photometric="rgb", extrasamples=["unassalpha"])
    img = read_image(src)
    assert img.data.shape == (3, H, W)
    np.testing.assert_array_equal(img.data, np.moveaxis(rgba[..., :3], 2, 0) / np.float32(255))
    assert any("alpha" in n for n in img.notes)


def test_tiff_output_clips_rounds_and_carries_provenance(tmp_path: Path) -> None:
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _ints("uint8", (H, W)), photometric="minisblack")
    like = read_image(src)
    data = np.full((1, H, W), 0.5, np.float32)
    data[0, 0, :3] = [-0.2, 1.3, 0.502]
    out = tmp_path / "out.tif"
    write_image(out, data, like=like, header_cards={"model": "v1"}, history=["stretched"])
    with tifffile.TiffFile(out) as tif:
        samples = tif.pages[0].asarray()
        meta = json.loads(tif.pages.first.description)
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    assert samples.dtype == np.uint8
    assert samples[0, :4].tolist() == [0, 255, 128, 128]
    assert meta == {"starnet": {"cards": {"MODEL": "v1"}, "history": ["stretched"]}}


# --------------------------------------------------------------------------- PNG / JPEG


@pytest.mark.parametrize(
    ("mode", "samples"),
    [
        ("L", _ints("uint8", (H, W))),
        ("RGB", _ints("uint8", (H, W, 3))),
        ("I;16", _ints("uint16", (H, W))),
    ],
)
def test_png_roundtrip(tmp_path: Path, mode: str, samples: np.ndarray) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(samples).save(src)
    first, again = _roundtrip(src, tmp_path)
    expected = samples / np.float32(np.iinfo(samples.dtype).max)
    expected = np.moveaxis(expected, 2, 0) if samples.ndim == 3 else expected[None]
    np.testing.assert_array_equal(first.data, expected)
    assert first.dtype == samples.dtype.name
    np.testing.assert_array_equal(again.data, first.data)


def test_png_alpha_dropped_and_provenance_chunk(tmp_path: Path) -> None:
    src = tmp_path / "rgba.png"
    Image.fromarray(_ints("uint8", (H, W, 4))).save(src)
    img = read_image(src)
    assert img.data.shape == (3, H, W) and "alpha channel dropped" in img.notes
    out = tmp_path / "out.png"
    write_image(out, img.data, like=img, header_cards={"K": 1})
    with Image.open(out) as im:
        assert json.loads(im.info["starnet"])["starnet"]["cards"] == {"K": 1}


def test_jpeg_roundtrip_within_tolerance(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    smooth = np.stack([xx * 3, yy * 3, (xx + yy) * 2]).astype(np.uint8)
    src = tmp_path / "in.jpg"
    Image.fromarray(np.moveaxis(smooth, 0, 2)).save(src, quality=98)
    first, again = _roundtrip(src, tmp_path)
    assert (first.format, first.dtype, first.data.shape) == ("jpeg", "uint8", (3, 64, 64))
    assert np.abs(first.data - smooth / 255.0).mean() < 0.01
    assert np.abs(again.data - first.data).mean() < 0.01


# --------------------------------------------------------------------------- FITS


def test_fits_int16_big_endian_keeps_physical_values(tmp_path: Path) -> None:
    stored = _rng().integers(-2000, 20000, size=(H, W)).astype(">i2")
    src = tmp_path / "plate.fits"
    fits.PrimaryHDU(stored, header=_wcs_header()).writeto(src)
    first, again = _roundtrip(src, tmp_path)
    assert (first.format, first.dtype, first.is_linear) == ("fits", "int16", True)
    np.testing.assert_array_equal(first.data[0], stored.astype(np.float32))
    np.testing.assert_array_equal(again.data, first.data)
    assert again.dtype == "float32"


def test_fits_uint16_via_bzero_and_bscale(tmp_path: Path) -> None:
    values = _ints("uint16", (H, W))
    src = tmp_path / "ccd.fits"
    fits.PrimaryHDU(values).writeto(src)
    assert fits.getheader(src)["BZERO"] == 32768
    img = read_image(src)
    assert img.dtype == "uint16"
    np.testing.assert_array_equal(img.data[0], values.astype(np.float32))

    hdu = fits.PrimaryHDU(_rng().integers(-100, 100, (H, W)).astype(np.int16))
    hdu.header["BSCALE"], hdu.header["BZERO"] = 0.5, 1500.0
    hdu.writeto(tmp_path / "scaled.fits")
    raw = fits.getdata(tmp_path / "scaled.fits", do_not_scale_image_data=True)
    img = read_image(tmp_path / "scaled.fits")
    np.testing.assert_allclose(img.data[0], raw * 0.5 + 1500.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fits_float_roundtrip(tmp_path: Path, dtype: type) -> None:
    values: np.ndarray = _rng().normal(100.0, 5.0, (H, W)).astype(dtype)
    src = tmp_path / "f.fits"
    fits.PrimaryHDU(values).writeto(src)
    first, again = _roundtrip(src, tmp_path)
    assert first.dtype == np.dtype(dtype).name
    np.testing.assert_array_equal(first.data[0], values.astype(np.float32))
    np.testing.assert_array_equal(again.data, first.data)


def test_fits_colour_cube_and_channels_last(tmp_path: Path) -> None:
    cube = _float01((3, H, W))
    src = tmp_path / "cube.fits"
    fits.PrimaryHDU(cube).writeto(src)
    first, again = _roundtrip(src, tmp_path)
    np.testing.assert_array_equal(first.data, cube)
    assert fits.getdata(output_path(src, "copy", tmp_path / "out")).shape == (3, H, W)
    np.testing.assert_array_equal(again.data, cube)

    src = tmp_path / "last.fits"
    fits.PrimaryHDU(np.moveaxis(cube, 0, 2)).writeto(src)
    img = read_image(src)
    assert img.channels_last and any("channels-last" in n for n in img.notes)
    np.testing.assert_array_equal(img.data, cube)
    out = tmp_path / "last_out.fits"
    write_image(out, img.data, like=img)
    assert fits.getdata(out).shape == (H, W, 3)


def test_fits_compressed_and_extension(tmp_path: Path) -> None:
    values = _rng().integers(0, 30000, (H, W)).astype(np.int16)
    gz = tmp_path / "a.fits.gz"
    fits.PrimaryHDU(values).writeto(gz)
    bz = tmp_path / "a.fits.bz2"
    buf = io.BytesIO()
    fits.PrimaryHDU(values).writeto(buf)
    bz.write_bytes(bz2.compress(buf.getvalue()))
    fz = tmp_path / "a.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(values, header=_wcs_header())]).writeto(fz)
    ext = tmp_path / "ext.fits"
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.zeros(3))])
    fits.HDUList([fits.PrimaryHDU(), table, fits.ImageHDU(values, name="SCI")]).writeto(ext)
    for src in (gz, bz, fz, ext):
        first, again = _roundtrip(src, tmp_path)
        np.testing.assert_array_equal(first.data[0], values.astype(np.float32), err_msg=src.name)
        np.testing.assert_array_equal(again.data, first.data)
    fz_out = tmp_path / "out" / "a_copy.fits"
    with fits.open(fz_out) as hdul:
        assert len(hdul) == 1 and hdul[0].header["CTYPE1"] == "RA---TAN"
        assert "ZIMAGE" not in hdul[0].header and "XTENSION" not in hdul[0].header


def test_fits_header_wcs_cards_and_history(tmp_path: Path) -> None:
    src = tmp_path / "in.fits"
    header = _wcs_header()
    header.add_history("calibrated")
    hdu = fits.PrimaryHDU(_rng().integers(0, 1000, (H, W)).astype(np.int16), header=header)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 1.0, 100.0
    hdu.header["HIERARCH STARNET OLD"] = "stale"
    hdu.writeto(src)
    like = read_image(src)
    out = tmp_path / "out.fits"
    sha = "0123456789abcdef" * 4
    cards: dict[str, str | int | float | bool] = {
        "MODEL_VERSION": "0.3.1",
        "WEIGHTS_SHA256": sha,
        "TILE_PX": 256,
        "LINKED": True,
    }
    write_image(out, like.data, like=like, header_cards=cards, history=["starnet: stars removed"])
    with fits.open(out) as hdul:
        h = hdul[0].header
        assert h["BITPIX"] == -32 and "BZERO" not in h and "BSCALE" not in h
        assert hdul[0].data.dtype.name == "float32"
        assert WCS(h).wcs.compare(WCS(header).wcs)
        assert h["OBJECT"] == "Horsehead" and h["EXPTIME"] == 300.0
        assert h["HIERARCH STARNET WEIGHTS_SHA256"] == sha
        assert h["HIERARCH STARNET TILE_PX"] == 256 and h["HIERARCH STARNET LINKED"] is True
        assert "HIERARCH STARNET OLD" not in h
        assert list(h["HISTORY"]) == ["calibrated", "starnet: stars removed"]
        np.testing.assert_array_equal(hdul[0].data, like.data[0])


def test_fits_blank_becomes_nan_policy(tmp_path: Path) -> None:
    values = _rng().integers(10, 1000, (H, W)).astype(np.int16)
    values[3, 4] = -1
    hdu = fits.PrimaryHDU(values)
    hdu.header["BLANK"], hdu.header["BZERO"], hdu.header["BSCALE"] = -1, 0.0, 2.0
    src = tmp_path / "blank.fits"
    hdu.writeto(src)
    with pytest.raises(ImageError, match="1 non-finite"):
        read_image(src)
    img = read_image(src, nan_policy="zero")
    assert img.data[0, 3, 4] == 0.0


# --------------------------------------------------------------------------- writing rules


def test_output_path_names() -> None:
    assert output_path("d/image.tif", "starless") == Path("d/image_starless.tif")
    assert output_path("d/M42.fits.gz", "starless") == Path("d/M42_starless.fits")
    assert output_path("M42.fits.bz2", "mask", "out") == Path("out/M42_mask.fits")
    assert output_path("M42.fz", "starless") == Path("M42_starless.fits")
    assert output_path("M42.fits.fz", "starless") == Path("M42_starless.fits")
    with pytest.raises(ValueError, match="suffix"):
        output_path("a.tif", "a/b")


def _tiff_like(tmp_path: Path) -> ImageData:
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _ints("uint16", (H, W)), photometric="minisblack")
    return read_image(src)


def test_atomic_write_leaves_no_temp_and_refuses_input(tmp_path: Path) -> None:
    like = _tiff_like(tmp_path)
    out = tmp_path / "result.tif"
    write_image(out, like.data, like=like)
    write_image(out, like.data * 0.5, like=like)  # replacing an existing output is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "result.tif"]
    before = like.source.read_bytes()
    with pytest.raises(ImageError, match="refusing to overwrite the input") as err:
        write_image(tmp_path / "." / "in.tif", like.data, like=like)
    assert err.value.path.name == "in.tif"
    assert like.source.read_bytes() == before


def test_failed_write_leaves_neither_half_file_nor_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    like = _tiff_like(tmp_path)
    out = tmp_path / "result.tif"
    write_image(out, like.data, like=like)
    good = out.read_bytes()

    def crash(fh: io.BufferedWriter, *args: object, **kwargs: object) -> None:
        fh.write(b"II*\x00 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imageio.tifffile, "imwrite", crash)
    with pytest.raises(ImageError, match="No space left"):
        write_image(out, like.data * 0.5, like=like)
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "result.tif"]


def test_write_rejects_bad_arguments(tmp_path: Path) -> None:
    like = _tiff_like(tmp_path)
    with pytest.raises(ValueError, match=r"shape \(2, 24, 32\)"):
        write_image(tmp_path / "o.tif", np.zeros((2, H, W), np.float32), like=like)
    with pytest.raises(ImageError, match="compressed output"):
        write_image(tmp_path / "o.fits.gz", like.data, like=like)
    with pytest.raises(ValueError, match="header_cards"):
        write_image(tmp_path / "o.fits", like.data, like=like, header_cards={"bad key!": 1})
    nan = like.data.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite"):
        write_image(tmp_path / "o.tif", nan, like=like)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


# --------------------------------------------------------------------------- validation


def _fits_file(tmp_path: Path, data: np.ndarray, name: str = "bad.fits") -> Path:
    path = tmp_path / name
    fits.PrimaryHDU(data).writeto(path)
    return path


def _assert_bad(path: Path, pattern: str, **kwargs: object) -> ImageError:
    with pytest.raises(ImageError, match=pattern) as err:
        read_image(path, **kwargs)  # type: ignore[arg-type]
    assert str(err.value).startswith(f"{path}: ")
    assert err.value.path == path
    return err.value


def test_unreadable_files(tmp_path: Path) -> None:
    _assert_bad(tmp_path / "missing.fits", "no such file")
    text = tmp_path / "notes.fits"
    text.write_text("this is not an image\n")
    _assert_bad(text, "cannot read as FITS")
    whole = io.BytesIO()
    fits.PrimaryHDU(np.ones((100, 120), np.int16)).writeto(whole)
    cut = tmp_path / "cut.fits"
    cut.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    _assert_bad(cut, "truncated FITS")
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _assert_bad(fake_png, "cannot read as PNG")
    weird = tmp_path / "data.xyz"
    weird.write_bytes(b"hello")
    _assert_bad(weird, "unknown image format")


def test_image_error_pickles(tmp_path: Path) -> None:
    err = _assert_bad(tmp_path / "gone.tif", "no such file")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.path, again.reason) == (str(err), err.path, err.reason)


def test_no_image_hdu(tmp_path: Path) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(3))])
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    _assert_bad(path, "no image HDU with data")


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((50,), r"1-D data \(shape \(50,\)\)"),
        ((2, 3, H, W), r"4-D data \(shape \(2, 3, 24, 32\)\)"),
        ((2, H, W), r"2 planes \(shape \(2, 24, 32\)\)"),
        ((5, H, W), r"5 planes \(shape \(5, 24, 32\)\)"),
    ],
)
def test_wrong_dimensionality(tmp_path: Path, shape: tuple[int, ...], pattern: str) -> None:
    data = _rng().uniform(0, 1, shape).astype(np.float32)
    _assert_bad(_fits_file(tmp_path, data), pattern)


def test_degenerate_leading_axes_are_dropped(tmp_path: Path) -> None:
    data = _float01((1, 1, H, W))
    img = read_image(_fits_file(tmp_path, data))
    assert img.data.shape == (1, H, W) and any("length-1" in n for n in img.notes)


def test_nonfinite_policies(tmp_path: Path) -> None:
    data = _float01((H, W)) + 1.0
    data[0, :3] = np.nan
    data[1, 0] = np.inf
    path = _fits_file(tmp_path, data)
    err = _assert_bad(path, r"4 non-finite value\(s\) \(3 NaN, 1 Inf")
    assert "validation.nan_policy" in err.reason
    zero = read_image(path, nan_policy="zero")
    assert zero.data[0, 0, 0] == 0.0 and zero.data[0, 1, 0] == 0.0
    assert "4 NaN/Inf value(s) replaced by zero (NaN again in float outputs)" in zero.notes
    assert zero.nonfinite is not None and int(zero.nonfinite.sum()) == 4
    median = read_image(path, nan_policy="median")
    assert median.data[0, 0, 0] == pytest.approx(np.nanmedian(data[np.isfinite(data)]))
    _assert_bad(path, "max_nonfinite_fraction", nan_policy="zero", max_nonfinite_fraction=0.001)
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        read_image(path, nan_policy="ignore")


def test_empty_constant_and_raw_adu(tmp_path: Path) -> None:
    _assert_bad(_fits_file(tmp_path, np.zeros((0, W), np.float32), "empty.fits"), "empty image")
    _assert_bad(
        _fits_file(tmp_path, np.full((H, W), 7.5, np.float32), "c.fits"), "every pixel value is 7.5"
    )
    raw = tmp_path / "raw.tif"
    tifffile.imwrite(
        raw, _rng().uniform(0, 4000, (H, W)).astype(np.float32), photometric="minisblack"
    )
    _assert_bad(raw, "looks like raw ADU, not normalised")
    small = tmp_path / "tiny.tif"
    tifffile.imwrite(small, _ints("uint8", (3, 5)), photometric="minisblack")
    assert read_image(small).data.shape == (1, 3, 5)


def test_read_fits_header_without_pixels(tmp_path: Path) -> None:
    from starnet_core.imageio import read_fits_header

    p = tmp_path / "h.fits"
    hdr = fits.Header()
    hdr["OBJECT"] = "M42"
    fits.PrimaryHDU(np.zeros((4, 5), np.float32), hdr).writeto(p)
    h = read_fits_header(p)
    assert h is not None and h["OBJECT"] == "M42" and h["NAXIS1"] == 5
    assert read_fits_header(tmp_path / "missing.fits") is None
    junk = tmp_path / "junk.fits"
    junk.write_text("not fits")
    assert read_fits_header(junk) is None
    png = tmp_path / "x.png"
    png.write_bytes(b"")
    assert read_fits_header(png) is None


# --------------------------------------------------------------------------- orientation


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_png_exif_orientation_applied_like_viewers(
    tmp_path: Path, orientation: int, mode: str
) -> None:
    samples = _ints("uint8", (H, W, 3) if mode == "RGB" else (H, W))
    src = tmp_path / "rotated.png"
    Image.fromarray(samples).save(src, exif=_exif(orientation))
    with Image.open(src) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))  # what a viewer shows
    img = read_image(src)
    expected = shown[None] if shown.ndim == 2 else np.moveaxis(shown, 2, 0)
    np.testing.assert_array_equal(img.data, expected / np.float32(255))
    assert (f"EXIF orientation {orientation} applied" in img.notes) == (orientation != 1)
    out = tmp_path / "out.png"
    write_image(out, img.data, like=img)
    with Image.open(out) as im:
        assert im.getexif().get(0x0112) is None
        np.testing.assert_array_equal(np.asarray(im), shown)


def test_jpeg_exif_orientation_6_comes_out_upright(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    stored = np.stack([xx * 3, yy * 4, (xx + yy) * 2], axis=2).astype(np.uint8)
    src = tmp_path / "camera.jpg"
    Image.fromarray(stored).save(src, quality=98, exif=_exif(6))
    img = read_image(src)
    assert img.data.shape == (3, 64, 48)  # shown rotated 90 degrees clockwise
    assert "EXIF orientation 6 applied" in img.notes
    upright = np.rot90(stored, k=-1)
    assert np.abs(np.moveaxis(img.data, 0, 2) - upright / 255.0).mean() < 0.01
    out = tmp_path / "out.jpg"
    write_image(out, img.data, like=img)
    with Image.open(out) as im:
        assert im.size == (48, 64) and im.getexif().get(0x0112) is None


def test_tiff_orientation_tag_applied(tmp_path: Path) -> None:
    samples = _ints("uint16", (H, W))
    src = tmp_path / "rotated.tif"
    tifffile.imwrite(src, samples, photometric="minisblack", extratags=[(274, "H", 1, 8, False)])
    img = read_image(src)
    np.testing.assert_array_equal(img.data[0], np.rot90(samples, k=1) / np.float32(65535))
    assert "TIFF orientation 8 applied" in img.notes


@pytest.mark.parametrize("compression", ["lzw", "zlib", "zstd"])
def test_compressed_tiffs_are_read(tmp_path: Path, compression: str) -> None:
    """Most 16-bit exports (PixInsight, Siril, Photoshop) are LZW- or deflate-compressed:
    without imagecodecs tifffile refused them ("requires the 'imagecodecs' package")."""
    samples = _ints("uint16", (H, W, 3))
    src = tmp_path / f"{compression}.tif"
    tifffile.imwrite(src, samples, photometric="rgb", compression=compression)
    image = read_image(src)
    np.testing.assert_array_equal(image.data, np.moveaxis(samples.astype(np.float32) / 65535, 2, 0))
    assert (image.format, image.dtype) == ("tiff", "uint16")


# --------------------------------------------------------------------------- damaged files


def _damaged_tiff(tmp_path: Path, compression: str, how: str) -> Path:
    """A TIFF of one ``compression``-ed strip, cut off in the middle of it (a copy that
    stopped) or with its middle overwritten (a damaged disk or transfer)."""
    buf = io.BytesIO()
    tifffile.imwrite(buf, _ints("uint16", (H, W, 3)), photometric="rgb", compression=compression)
    full = buf.getvalue()
    with tifffile.TiffFile(io.BytesIO(full)) as tif:
        offset, count = tif.pages.first.dataoffsets[0], tif.pages.first.databytecounts[0]
    if how == "cut":
        damaged = full[: offset + count // 2]
    else:
        damaged = full[: offset + 4] + b"\xff" * (count - 8) + full[offset + count - 4 :]
    path = tmp_path / f"{compression}_{how}.tif"
    path.write_bytes(damaged)
    return path


@pytest.mark.parametrize(
    ("compression", "how"),
    [
        ("zlib", "cut"),
        ("zlib", "garbage"),
        ("zstd", "cut"),
        ("zstd", "garbage"),
        ("packbits", "garbage"),
        ("lzw", "garbage"),
        ("lzma", "garbage"),
    ],
)
def test_damaged_compressed_tiff_is_an_image_error(
    tmp_path: Path, compression: str, how: str
) -> None:
    """imagecodecs raises its own RuntimeErrors (DeflateError, ZstdError, ImcdError, ...):
    they escaped read_image, so one bad file stopped a batch or a training pair scan."""
    path = _damaged_tiff(tmp_path, compression, how)
    err = _assert_bad(path, "corrupt or incomplete TIFF data")
    assert isinstance(err.__cause__, Exception)


def test_damaged_tile_compressed_fits_is_an_image_error(tmp_path: Path) -> None:
    """astropy's tile decompression raises a CfitsioException (a plain Exception)."""
    buf = io.BytesIO()
    values = _rng().integers(0, 3000, (H, W)).astype(np.int16)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(values, compression_type="RICE_1")]).writeto(
        buf
    )
    damaged = bytearray(buf.getvalue())
    with fits.open(io.BytesIO(bytes(damaged)), disable_image_compression=True) as hdul:
        table = hdul[1].fileinfo()["datLoc"]
    damaged[table : table + 4] = (1).to_bytes(4, "big")  # the first tile's size: 1 byte
    path = tmp_path / "damaged.fz"
    path.write_bytes(bytes(damaged))
    _assert_bad(path, "corrupt or incomplete FITS data")


def test_cut_off_png_and_jpeg_are_image_errors(tmp_path: Path) -> None:
    samples = _ints("uint16", (H, W, 3))
    sources = {
        "rgb16.png": imagecodecs.png_encode(samples),
        "rgb8.png": imagecodecs.png_encode((samples >> 8).astype(np.uint8)),
    }
    jpeg = io.BytesIO()
    Image.fromarray((samples >> 8).astype(np.uint8)).save(jpeg, format="JPEG")
    sources["rgb8.jpg"] = jpeg.getvalue()
    for name, full in sources.items():
        path = tmp_path / name
        path.write_bytes(full[: len(full) * 9 // 10])  # cut in the image data
        _assert_bad(path, "corrupt or incomplete (PNG|JPEG) data")


# --------------------------------------------------------------------------- 16-bit colour PNG


def _png_ihdr(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR."""
    head = path.read_bytes()[:26]
    assert head[12:16] == b"IHDR"
    return head[24], head[25]


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png_16bit_colour_is_read_and_written_at_16_bits(tmp_path: Path, channels: int) -> None:
    """Siril / PixInsight 16-bit RGB exports: Pillow read them at 8 bits, and the output
    was 8-bit too. Alpha (grey + alpha, RGBA) is dropped as for 8-bit PNGs."""
    samples = _ints("uint16", (H, W, channels))
    src = tmp_path / "export16.png"
    src.write_bytes(imagecodecs.png_encode(samples))
    img = read_image(src)
    colour = samples[..., :1] if channels == 2 else samples[..., :3]
    expected = np.moveaxis(colour, 2, 0) / np.float32(65535)
    np.testing.assert_array_equal(img.data, expected)
    assert (img.format, img.dtype, img.is_linear) == ("png", "uint16", False)
    assert "alpha channel dropped" in img.notes or channels == 3

    out = tmp_path / "export16_starless.png"
    write_image(out, img.data, like=img, header_cards={"MODEL": "v1"}, history=["starnet: x"])
    assert _png_ihdr(out) == (16, 0 if channels == 2 else 2)
    written = imagecodecs.png_decode(out.read_bytes())
    np.testing.assert_array_equal(written, colour[..., 0] if channels == 2 else colour)
    np.testing.assert_array_equal(read_image(out).data, img.data)
    # the provenance stamp is in the 16-bit colour PNG as in any other PNG
    assert imageio.read_stamp(out) == ({"MODEL": "v1"}, ["starnet: x"])
    with Image.open(out) as im:
        assert json.loads(im.info["starnet"])["starnet"]["cards"] == {"MODEL": "v1"}


def test_png_8bit_colour_output_stays_8_bit(tmp_path: Path) -> None:
    src = tmp_path / "rgb8.png"
    Image.fromarray(_ints("uint8", (H, W, 3))).save(src)
    img = read_image(src)
    out = tmp_path / "rgb8_out.png"
    write_image(out, img.data, like=img, header_cards={"K": 1})
    assert _png_ihdr(out) == (8, 2)
    np.testing.assert_array_equal(read_image(out).data, img.data)
    assert imageio.read_stamp(out) == ({"K": 1}, [])


# --------------------------------------------------------------------------- long names


@pytest.mark.parametrize("ext", [".fits", ".tif", ".png", ".jpg"])
def test_longest_legal_output_name_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ext: str
) -> None:
    """A 255-byte name (85 CJK characters, 3 bytes each in UTF-8) is legal; the temporary
    written first (``.<name>.<hex>.tmp``) was not: "File name too long" after the work."""
    if os.pathconf(tmp_path, "PC_NAME_MAX") < 255:
        pytest.skip("file system allows names shorter than 255 bytes")
    stem = "オリオン大星雲_" * 11  # 242 bytes
    name = stem + "x" * (255 - len((stem + ext).encode())) + ext
    assert len(name.encode()) == 255
    like = _tiff_like(tmp_path)
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(imageio.os, "replace", spy)
    out = tmp_path / name
    write_image(out, like.data, like=like)
    assert read_image(out).data.shape == like.data.shape
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.tif", name])
    ((tmp, dst),) = replaced
    assert dst == out and tmp.parent == out.parent
    assert re.fullmatch(r"\.starnet-[0-9a-f]{32}\.tmp", tmp.name)


def test_jpeg_compressed_tiff_is_read_as_rgb(tmp_path: Path) -> None:
    """A JPEG-compressed TIFF export stores YCbCr; the decoder gives RGB, which is read."""
    y, x = np.mgrid[:64, :64]
    rgb = np.stack([x * 4, y * 4, 255 - x * 2], -1).astype(np.uint8)
    path = tmp_path / "export.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression="jpeg")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR  # as stored
    img = read_image(path)
    assert img.data.shape == (3, 64, 64) and img.dtype == "uint8"
    assert np.abs(img.data - np.moveaxis(rgb, 2, 0) / 255.0).mean() < 0.01  # lossy, close
    assert "JPEG-compressed YCbCr decoded to RGB" in img.notes


def test_fits_shortfall_tells_a_cut_fits_file_from_a_whole_one(tmp_path: Path) -> None:
    from starnet_core.imageio import fits_shortfall

    whole = tmp_path / "a.fits"
    fits.PrimaryHDU(np.zeros((100, 120), np.float32)).writeto(whole)
    data = whole.read_bytes()
    assert fits_shortfall(whole) == 0
    cut = tmp_path / "cut.fits"
    for n, missing in ((100, 2780), (2880, 48000), (5000, 45880)):
        cut.write_bytes(data[:n])
        assert fits_shortfall(cut) == missing
    cut.write_bytes(data[: 2880 + 100 * 120 * 4])  # only the last block's padding left out
    assert fits_shortfall(cut) == 0
    mef = tmp_path / "m.fits"
    table = fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.arange(10.0))])
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((3, 50, 60), np.int16)), table]).writeto(
        mef
    )
    cut.write_bytes(mef.read_bytes()[: 2880 * 2 + 10])  # inside the extension's data
    assert fits_shortfall(cut) == 17990
    gz = tmp_path / "a.fits.gz"
    gz.write_bytes(b"\x1f\x8b" + b"x" * 10)
    other = tmp_path / "b.fits"
    other.write_bytes(b"not a FITS file at all")
    assert fits_shortfall(gz) is None and fits_shortfall(other) is None
