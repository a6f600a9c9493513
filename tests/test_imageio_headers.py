"""Image metadata: provenance text in every format, FITS header cards kept and inherited."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import tifffile
from astropy.io import fits
from PIL import Image

from flows.provenance_records import HEADER_VALUE_MAX, HISTORY_LINE_MAX, ProvenanceRecord
from starnet_core.imageio import ImageError, read_fits_header, read_image, write_image

H, W = 16, 20
NEBULA = "/data/Nébuleuse/M42.fits"
NEBULA_ASCII = "/data/N\\xe9buleuse/M42.fits"


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (H, W)).astype(np.float32)


def _record(input_path: str, host: str = "obs-pc") -> ProvenanceRecord:
    return ProvenanceRecord(
        run_key="a" * 64,
        input_path=input_path,
        input_sha256="b" * 64,
        model_version="v1",
        weights_sha256="c" * 64,
        params={"object": "Nébuleuse d'Orion", "tile_px": 256},
        param_hash="d" * 64,
        code_version="0.1.0",
        host=host,
        device="cpu",
        flow_run_id=None,
        started_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        finished_at=datetime(2025, 1, 2, 3, 4, 9, tzinfo=UTC),
        timings={"read": 0.5},
    )


def _unescape(text: str) -> str:
    return text.encode("ascii").decode("unicode_escape")


def _is_fits_text(text: str) -> bool:
    return text.isascii() and text.isprintable()


# --------------------------------------------------------------------------- non-ASCII provenance


def test_non_ascii_path_is_escaped_the_same_in_cards_and_history() -> None:
    record = _record(NEBULA, host="Sternwarte-Köln")
    cards = record.to_header_cards()
    assert cards["INPUT"] == NEBULA_ASCII and _unescape(NEBULA_ASCII) == NEBULA
    assert cards["HOST"] == "Sternwarte-K\\xf6ln"
    assert all(_is_fits_text(v) for v in cards.values() if isinstance(v, str))
    history = record.to_history()
    assert f"input {NEBULA_ASCII}" in history
    assert all(_is_fits_text(line) and len(line) <= HISTORY_LINE_MAX for line in history)
    first = next(i for i, line in enumerate(history) if line.startswith("params "))
    params = json.loads("".join(history[first:])[len("params ") :])
    assert params["object"] == "Nébuleuse d'Orion"  # JSON escapes, read back exactly
    assert record.input_path == NEBULA  # the record (and the database) keep the real path


def test_long_non_ascii_path_keeps_its_end_and_whole_escapes() -> None:
    long_path = "/" + "/".join(["Région-été-✨"] * 8) + "/Ω-Nébuleuse.fits"
    record = _record(long_path)
    card = str(record.to_header_cards()["INPUT"])
    assert len(card) <= HEADER_VALUE_MAX and card.startswith("...") and _is_fits_text(card)
    assert card.endswith("/\\u03a9-N\\xe9buleuse.fits")
    assert long_path.endswith(_unescape(card[3:]))  # no escape was cut in half
    history = record.to_history()
    i = next(i for i, line in enumerate(history) if line.startswith("input "))
    j = next(i for i, line in enumerate(history) if line.startswith("insha "))
    assert j - i > 1  # wrapped over several lines ...
    assert all(_is_fits_text(line) and len(line) <= HISTORY_LINE_MAX for line in history)
    assert _unescape("".join(history[i:j])) == f"input {long_path}"  # ... and whole
    for line in history[i:j]:
        _unescape(line)  # each line decodes alone: no escape spans two lines


@pytest.mark.parametrize("ext", [".fits", ".tif", ".png", ".jpg"])
def test_non_ascii_input_path_written_to_every_format(tmp_path: Path, ext: str) -> None:
    src = tmp_path / "Nébuleuse" / ("M42.fits" if ext == ".fits" else "M42.tif")
    src.parent.mkdir()
    if ext == ".fits":
        fits.PrimaryHDU(_image()).writeto(src)
    else:
        tifffile.imwrite(src, (_image() * 255).astype(np.uint8))
    img = read_image(src)
    record = _record(str(src))
    cards, history = record.to_header_cards(), record.to_history()
    escaped = str(cards["INPUT"])  # the end of the path when it is long
    assert "\\xe9" in escaped and str(src).endswith(_unescape(escaped.removeprefix("...")))
    i = next(i for i, line in enumerate(history) if line.startswith("input "))
    j = next(i for i, line in enumerate(history) if line.startswith("insha "))
    assert _unescape("".join(history[i:j])) == f"input {src}"
    out = tmp_path / f"out{ext}"
    write_image(out, img.data, like=img, header_cards=cards, history=history)
    if ext == ".fits":
        h = fits.getheader(out)
        assert h["HIERARCH STARNET INPUT"] == escaped
        assert list(h["HISTORY"]) == history
        return
    if ext == ".tif":
        with tifffile.TiffFile(out) as tif:
            text = tif.pages.first.description
    else:
        with Image.open(out) as im:
            raw = im.info["starnet"] if ext == ".png" else im.info["comment"]
            text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    meta = json.loads(text)["starnet"]
    assert meta["cards"]["INPUT"] == escaped  # the same text as the FITS card
    assert meta["history"] == history


def test_write_image_rejects_non_ascii_history_clearly(tmp_path: Path) -> None:
    src = tmp_path / "in.fits"
    fits.PrimaryHDU(_image()).writeto(src)
    img = read_image(src)
    with pytest.raises(ValueError, match=r"history\[1\]: FITS strings must be printable ASCII"):
        write_image(tmp_path / "o.tif", img.data, like=img, history=["ok", "Nébuleuse"])
    assert not (tmp_path / "o.tif").exists()


# --------------------------------------------------------------------------- Z keywords


def test_z_metadata_cards_kept_compression_cards_dropped(tmp_path: Path) -> None:
    hdu = fits.PrimaryHDU(_image())
    meta = {"ZD": 35.2, "ZEROPT": 21.5, "ZMAG": 12.25, "ZPOINT": 1.5, "ZENITH": "yes"}
    for key, value in meta.items():
        hdu.header[key] = value
    # leftovers of a decompressed (funpacked) file: these describe the old compression
    leftovers = {"ZQUANTIZ": "SUBTRACTIVE_DITHER_1", "ZDITHER0": 42, "ZCMPTYPE": "RICE_1"}
    for key, value in leftovers.items():
        hdu.header[key] = value
    hdu.header["ZTILE1"], hdu.header["ZNAME1"], hdu.header["ZVAL1"] = W, "BLOCKSIZE", 32
    src = tmp_path / "in.fits"
    hdu.writeto(src)
    img = read_image(src)
    out = tmp_path / "out.fits"
    write_image(out, img.data, like=img)
    h = fits.getheader(out)
    assert {key: h.get(key) for key in meta} == meta
    for key in (*leftovers, "ZTILE1", "ZNAME1", "ZVAL1"):
        assert key not in h, key

    fz = tmp_path / "in.fz"  # a real tile-compressed image: no Z key reaches the output
    comp = fits.CompImageHDU(_image(1), compression_type="RICE_1", quantize_level=16.0)
    comp.header["ZD"] = 12.5
    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(fz)
    img = read_image(fz)
    write_image(tmp_path / "fz_out.fits", img.data, like=img)
    h = fits.getheader(tmp_path / "fz_out.fits")
    assert h["ZD"] == 12.5
    assert not [k for k in h if k.startswith("Z") and k != "ZD"]


# --------------------------------------------------------------------------- MEF primary header


def _mef(path: Path, *, inherit: bool | None = None) -> None:
    primary = fits.PrimaryHDU()
    primary.header["OBJECT"] = "M42"
    primary.header["DATE-OBS"] = "2025-01-02T03:04:05"
    primary.header["TELESCOP"] = "RC8"
    primary.header["EXPTIME"] = 60.0
    primary.header.add_history("stacked 20 frames")
    sci = fits.ImageHDU((_image() * 1000).astype(np.int16), name="SCI")
    sci.header["EXPTIME"] = 300.0  # the extension's value wins
    sci.header["GAIN"] = 1.5
    if inherit is not None:
        sci.header["INHERIT"] = inherit
    fits.HDUList([primary, sci]).writeto(path)


def test_mef_image_inherits_the_primary_header(tmp_path: Path) -> None:
    src = tmp_path / "mef.fits"
    _mef(src)
    img = read_image(src)
    assert img.dtype == "int16"  # the extension's structure, not the primary's
    h = img.header
    assert h is not None
    assert (h["OBJECT"], h["DATE-OBS"], h["TELESCOP"]) == ("M42", "2025-01-02T03:04:05", "RC8")
    assert h["EXPTIME"] == 300.0 and h["GAIN"] == 1.5
    assert any("primary header" in note for note in img.notes)
    header = read_fits_header(src)  # what the database's facts are taken from
    assert header is not None and header["OBJECT"] == "M42" and header["EXPTIME"] == 300.0

    out = tmp_path / "out.fits"
    write_image(out, img.data, like=img, history=["starnet: stars removed"])
    with fits.open(out) as hdul:
        assert len(hdul) == 1
        h = hdul[0].header
        assert (h["OBJECT"], h["TELESCOP"], h["EXPTIME"], h["GAIN"]) == ("M42", "RC8", 300.0, 1.5)
        # commentary stays with its own HDU (the registered INHERIT convention)
        assert list(h["HISTORY"]) == ["starnet: stars removed"]
        for key in ("XTENSION", "EXTNAME", "INHERIT", "PCOUNT", "GCOUNT"):
            assert key not in h, key
        assert h["BITPIX"] == -32 and h["NAXIS"] == 2


def test_mef_inherit_false_is_respected(tmp_path: Path) -> None:
    src = tmp_path / "mef.fits"
    _mef(src, inherit=False)
    img = read_image(src)
    assert img.header is not None and "OBJECT" not in img.header
    assert not any("primary header" in note for note in img.notes)


# --------------------------------------------------------------------------- raw colour (CFA)


def _mosaic() -> np.ndarray:
    return (_image(3) * 60000).astype(np.uint16)


def _cfa_fits(path: Path, data: np.ndarray, **cards: object) -> Path:
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    fits.PrimaryHDU(data, header=header).writeto(path)
    return path


@pytest.mark.parametrize(
    ("cards", "pattern"),
    [
        # NINA / SharpCap / ASIAIR / INDI: the pattern and its offsets
        ({"BAYERPAT": "RGGB", "XBAYROFF": 0, "YBAYROFF": 0, "ROWORDER": "TOP-DOWN"}, "RGGB"),
        ({"BAYERPAT": "gbrg ", "BAYOFFX": 1, "BAYOFFY": 0}, "gbrg"),
        ({"COLORTYP": "BGGR"}, "BGGR"),  # MaxIm DL
    ],
)
def test_raw_cfa_frame_is_refused_naming_file_and_pattern(
    tmp_path: Path, cards: dict[str, object], pattern: str
) -> None:
    """A one-shot-colour sub (a Bayer mosaic) read as mono gives a poor starless image
    without a word (26.8 dB against 35.2 dB for the same frame as RGB, real_1); and the
    output kept BAYERPAT, so it would be debayered afterwards."""
    for name, data in (("osc.fits", _mosaic()), ("osc_1hw.fits", _mosaic()[np.newaxis])):
        path = _cfa_fits(tmp_path / name, data, **cards)
        with pytest.raises(ImageError, match="raw colour-filter-array") as err:
            read_image(path)
        assert err.value.path == path and str(err.value).startswith(f"{path}: ")
        assert f"(Bayer {pattern})" in err.value.reason
        assert "debayer it first (e.g. Siril, PixInsight)" in err.value.reason


def test_raw_cfa_card_in_the_primary_of_an_extension_image_is_refused(tmp_path: Path) -> None:
    primary = fits.PrimaryHDU()
    primary.header["BAYERPAT"] = "RGGB"
    path = tmp_path / "mef_osc.fits"
    fits.HDUList([primary, fits.ImageHDU(_mosaic(), name="SCI")]).writeto(path)
    with pytest.raises(ImageError, match=r"\(Bayer RGGB\)"):
        read_image(path)


def test_debayered_cube_and_non_cfa_cards_are_read(tmp_path: Path) -> None:
    rgb = np.stack([_mosaic(), _mosaic() // 2, _mosaic() // 3])
    cube = read_image(_cfa_fits(tmp_path / "rgb.fits", rgb, BAYERPAT="RGGB"))
    assert cube.data.shape == (3, H, W)
    assert any("already debayered" in note for note in cube.notes)
    hwc = read_image(_cfa_fits(tmp_path / "hwc.fits", np.moveaxis(rgb, 0, 2), BAYERPAT="RGGB"))
    assert hwc.data.shape == (3, H, W) and hwc.channels_last
    # MaxIm DL: COLORTYP 0 (monochrome) or 'RGB'; empty or NONE patterns
    for i, cards in enumerate(
        [{"COLORTYP": 0}, {"COLORTYP": "RGB"}, {"BAYERPAT": ""}, {"BAYERPAT": "NONE"}, {}]
    ):
        mono = read_image(_cfa_fits(tmp_path / f"mono{i}.fits", _mosaic(), **cards))
        assert mono.data.shape == (1, H, W), cards
