"""Read, validate and write astro images: FITS, TIFF, PNG and JPEG.

Arrays leave and enter this module as ``(C, H, W) float32`` with ``C`` in
``{1, 3}``; channels-last layouts exist only inside the readers and writers.

Sample values:

- FITS: physical values (after ``BSCALE``/``BZERO``) as float32, *not*
  rescaled. Linear FITS are normalised later by ``stretch.normalize_linear``.
- TIFF/PNG/JPEG integers: scaled to ``[0, 1]`` by the dtype's range
  (uint8 / 255, uint16 / 65535). Floats kept as they are. 32-bit integer TIFFs
  (DeepSkyStacker's and PixInsight's "32-bit integer" exports) are refused, naming
  float TIFF, FITS or 16-bit TIFF instead: nothing in the file says whether they hold
  linear or stretched data, and outputs could not keep their depth.

Layout decisions:

- A FITS cube is colour when it is ``(3, H, W)`` in numpy order (``NAXIS3 = 3``).
  A channels-last cube ``(H, W, 3)`` (``NAXIS1 = 3``) is accepted only when the
  first axis is neither 1 nor 3, so the reading is unambiguous; it is noted, and
  ``write_image`` writes it back channels-last so the header's axes stay true.
- Leading length-1 axes of 4-D+ FITS data (e.g. ``(1, 1, H, W)``) are dropped
  with a note; any other 4-D data is an error.
- The image is the primary HDU if it has data, otherwise the first image HDU
  (``ImageHDU`` or tile-compressed ``CompImageHDU``) with data.
- An image in an extension inherits the primary header's non-structural cards
  (OBJECT, DATE-OBS, ...; the extension's own cards win), as the FITS ``INHERIT``
  convention says; an extension with ``INHERIT = F`` does not.
- JPEG/PNG EXIF and TIFF Orientation tags (2-8) are applied on read, so the pixels
  (and the outputs, written without the tag) look as viewers show the input.
- A truncated FITS file is an error, never zero-padded data: a watcher may see
  a file that is still being copied. Likewise any failure to decode a file's pixel
  data (a cut-off or damaged ZIP/zstd/LZW/PackBits TIFF strip, a broken PNG/JPEG
  stream, a damaged tile-compressed FITS) is an ``ImageError`` naming the file.
- A raw one-shot-colour frame (2-D data whose header has a colour-filter-array
  pattern, ``BAYERPAT`` or a Bayer ``COLORTYP``) is refused: the network removes
  stars from images, not from a Bayer mosaic, and would do it poorly and silently.
  A ``(3, H, W)`` cube that still carries the card is already debayered: read, noted.
- 16-bit colour PNGs are read and written at 16 bits (imagecodecs; Pillow would
  give 8), and carry the same provenance text chunk as any PNG output.

Writes are atomic: a hidden ``.starnet-<random>.tmp`` file in the target
directory, fsynced, then ``os.replace``. Its name has a fixed short length, so any
output name the file system allows can be written. The input is never overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import struct
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import tifffile
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from PIL import Image, PngImagePlugin

logger = logging.getLogger(__name__)

FITS_EXTENSIONS = (".fits", ".fit", ".fts", ".fz")
_COMPRESSION_WRAPPERS = (".gz", ".bz2")
_EXTENSION_FORMATS = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}
NAN_POLICIES = ("error", "zero", "median")


def readable_suffixes() -> tuple[str, ...]:
    """Every file-name ending :func:`read_image` reads by its extension, lower case: each
    FITS extension, plain and in each compression wrapper it opens (``.fits.bz2``,
    ``.fit.gz``, ...), then TIFF, PNG and JPEG. What the watcher's default patterns and
    the training pair folders take, so they never drift from what can be read."""
    fits = [*FITS_EXTENSIONS]
    wrapped = [f"{ext}{w}" for ext in FITS_EXTENSIONS for w in _COMPRESSION_WRAPPERS]
    return (*fits, *wrapped, *_EXTENSION_FORMATS)


_PILLOW_CONVERT = {
    "P": "RGB",
    "PA": "RGB",
    "1": "L",
    "LA": "L",
    "RGBA": "RGB",
    "RGBX": "RGB",
    "CMYK": "RGB",
    "YCbCr": "RGB",
}
_EXIF_ORIENTATION = 0x0112  # the EXIF and TIFF Orientation tag (274)
_INT_SCALE = {"uint8": 255.0, "uint16": 65535.0}
_BITPIX_DTYPE = {8: "uint8", 16: "int16", 32: "int32", 64: "int64", -32: "float32", -64: "float64"}
_UNSIGNED_BZERO = {16: ("uint16", 2**15), 32: ("uint32", 2**31), 64: ("uint64", 2**63)}
# Header keys that describe the stored array, not the image: rebuilt on write. The Z
# keys are exactly those of the FITS tiled image (and table) compression convention
# (FITS standard 4.0, section 10; astropy's COMPRESSION_KEYWORDS): other Z keys such
# as ZD, ZEROPT or ZMAG are image metadata and are kept.
_STRUCTURAL_KEYS = re.compile(
    r"^(SIMPLE|XTENSION|BITPIX|NAXIS\d*|EXTEND|PCOUNT|GCOUNT|BZERO|BSCALE|BLANK|"
    r"CHECKSUM|DATASUM|EXTNAME|EXTVER|INHERIT|DATAMIN|DATAMAX|"
    r"ZIMAGE|ZSIMPLE|ZTENSION|ZBITPIX|ZNAXIS\d*|ZEXTEND|ZBLOCKED|ZPCOUNT|ZGCOUNT|"
    r"ZHECKSUM|ZDATASUM|ZCMPTYPE|ZTILE\d+|ZNAME\d+|ZVAL\d+|ZMASKCMP|ZQUANTIZ|ZDITHER0|"
    r"ZBLANK|ZSCALE|ZZERO|ZTABLE|ZTILELEN|ZFORM\d+|ZCTYP\d+|ZTHEAP)$"
)
_CARD_KEY = re.compile(r"^[A-Z0-9_\-]+$")
_STARNET_PREFIX = "STARNET "
# Library errors that mean "this file cannot be read as an image".
_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error)
# Colour-filter-array (Bayer) cards of raw one-shot-colour frames. BAYERPAT (the pattern,
# e.g. 'RGGB') is what NINA, SharpCap, ASIAIR, INDI/KStars and Siril write and read;
# MaxIm DL writes COLORTYP, which may also hold 'RGB' or 0 for other sensors, so only a
# 2x2 pattern there counts. Offsets (XBAYROFF/YBAYROFF, BAYOFFX/BAYOFFY) come with the
# pattern and say nothing alone.
_CFA_PATTERN = re.compile(r"^[RGBCMYW]{4}$")
_NOT_CFA = ("", "NONE", "MONO")


class ImageError(ValueError):
    """An image file is missing, unreadable or fails validation.

    The message is always ``"<path>: <reason>"``; ``.path`` and ``.reason`` hold the parts.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[ImageError], tuple[Path, str]]:
        # Flow runners pickle task exceptions; the default would call ImageError(message).
        return (type(self), (self.path, self.reason))


@dataclass
class ImageData:
    """An image read from disk.

    ``data`` is ``(C, H, W) float32``, ``C`` in ``{1, 3}``, finite. ``dtype`` is the
    file's sample type (``"uint8"``, ``"uint16"``, ``"int16"``, ``"float32"``, ...).
    ``is_linear`` guesses whether the data is unstretched: FITS and float TIFF yes,
    8/16-bit TIFF/PNG/JPEG no. ``channels_last`` is true only for a FITS cube
    stored ``(H, W, 3)``. ``nonfinite``: ``(C, H, W) bool``, the pixels that were NaN or
    Inf in the file (no data: a stack's or mosaic's border) and that ``data`` holds
    replaced by ``nan_policy``; None when there were none. :func:`write_image` puts NaN
    back there in float outputs.
    """

    data: np.ndarray
    source: Path
    format: str
    dtype: str
    header: fits.Header | None
    is_linear: bool
    notes: list[str] = field(default_factory=list)
    channels_last: bool = False
    nonfinite: np.ndarray | None = None


# --------------------------------------------------------------------------- reading


def read_image(
    path: str | os.PathLike[str],
    *,
    page: int = 0,
    nan_policy: str = "error",
    max_nonfinite_fraction: float = 0.01,
) -> ImageData:
    """Read and validate one image file; every problem is an ``ImageError`` naming it.

    ``page`` selects the page of a multi-page TIFF. ``nan_policy`` (``"error"``,
    ``"zero"``, ``"median"``) decides what happens to NaN/Inf values; more than
    ``max_nonfinite_fraction`` of them is always an error.
    """
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}")
    if not 0.0 <= max_nonfinite_fraction <= 1.0:
        raise ValueError(
            f"max_nonfinite_fraction must be in [0, 1], got {max_nonfinite_fraction!r}"
        )
    if isinstance(page, bool) or not isinstance(page, int) or page < 0:
        raise ValueError(f"page must be an integer >= 0, got {page!r}")
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "no such file")
    if not p.is_file():
        raise ImageError(p, "not a regular file")
    fmt = _detect_format(p)
    notes: list[str] = []
    header: fits.Header | None = None
    channels_last = False
    try:
        if fmt == "fits":
            data, dtype, header, channels_last = _read_fits(p, notes)
        elif fmt == "tiff":
            data, dtype = _read_tiff(p, page, notes)
        else:
            data, dtype = _read_pillow(p, notes)
    except ImageError:
        raise
    except (*_READ_ERRORS, Image.DecompressionBombError) as e:
        raise ImageError(p, f"cannot read as {fmt.upper()}: {type(e).__name__}: {e}") from e
    data, nonfinite = _validate(p, data, fmt, dtype, nan_policy, max_nonfinite_fraction, notes)
    for note in notes:
        logger.info("%s: %s", p, note)
    is_linear = fmt == "fits" or dtype.startswith("float")
    return ImageData(data, p, fmt, dtype, header, is_linear, notes, channels_last, nonfinite)


_FITS_BLOCK = 2880  # bytes: FITS headers and data come in blocks of this size
_FITS_CARD = 80


def fits_shortfall(path: str | os.PathLike[str]) -> int | None:
    """How many bytes an uncompressed FITS file lacks of what its headers declare (0: all
    there), or None when that cannot be told from the file (not a plain FITS file by its
    name and first card: ``.gz``, ``.bz2``, another format; a header that does not parse).

    Walks the HDUs' headers (2880-byte blocks up to the END card) and skips each one's
    declared data (``|BITPIX| / 8 * GCOUNT * (PCOUNT + NAXIS1 * ... * NAXISn)``, padded to
    whole blocks; ``.fz`` files are FITS too). A file cut in a header or in its data is
    short: a copy into ``incoming/`` still under way, or stalled. Reads the headers only.
    """
    p = Path(path)
    name = p.name.lower()
    if p.suffix.lower() not in FITS_EXTENSIONS or name.endswith(_COMPRESSION_WRAPPERS):
        return None
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            if fh.read(9) != b"SIMPLE  =":
                return None
            offset = 0
            while offset < size:
                cards: dict[str, str] = {}
                end = False
                while not end:
                    fh.seek(offset)
                    block = fh.read(_FITS_BLOCK)
                    if len(block) < _FITS_BLOCK:
                        return _FITS_BLOCK - len(block)  # cut inside a header
                    offset += _FITS_BLOCK
                    for i in range(0, _FITS_BLOCK, _FITS_CARD):
                        card = block[i : i + _FITS_CARD].decode("ascii", "replace")
                        key = card[:8].strip()
                        if key == "END":
                            end = True
                            break
                        if card[8:10] == "= ":
                            cards[key] = card[10:].split("/", 1)[0].strip()
                bits = abs(int(cards["BITPIX"]))
                naxis = int(cards["NAXIS"])
                count = 0
                if naxis > 0:
                    count = 1
                    for k in range(1, naxis + 1):
                        count *= int(cards[f"NAXIS{k}"])
                count = int(cards.get("GCOUNT", "1")) * (int(cards.get("PCOUNT", "0")) + count)
                data = bits // 8 * count
                if offset + data > size:
                    return offset + data - size  # cut inside the data
                # the next HDU after the padded data (some writers leave the last one's
                # padding out: the data is all there, so that file is complete)
                offset += -(-data // _FITS_BLOCK) * _FITS_BLOCK
    except (OSError, KeyError, ValueError):
        return None
    return 0


def _detect_format(p: Path) -> str:
    name = p.name.lower()
    for wrapper in _COMPRESSION_WRAPPERS:
        if name.endswith(wrapper):
            inner = Path(name[: -len(wrapper)]).suffix
            if inner in FITS_EXTENSIONS:
                return "fits"
            raise ImageError(p, f"{wrapper} compression is supported for FITS only")
    ext = p.suffix.lower()
    if ext in FITS_EXTENSIONS:
        return "fits"
    if ext in _EXTENSION_FORMATS:
        return _EXTENSION_FORMATS[ext]
    try:
        with p.open("rb") as fh:
            magic = fh.read(16)
    except OSError as e:
        raise ImageError(p, f"cannot open: {e.strerror or e}") from e
    if magic.startswith(b"SIMPLE  ="):
        return "fits"
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if magic.startswith(b"\x89PNG"):
        return "png"
    if magic.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    raise ImageError(
        p, f"unknown image format (extension {p.suffix!r}); supported: FITS, TIFF, PNG, JPEG"
    )


@contextlib.contextmanager
def _decoding(p: Path, fmt: str) -> Iterator[None]:
    """Any failure of a library while it decodes ``p``'s pixel data is the file's fault:
    an ``ImageError``. Codecs raise their own types (imagecodecs' ``DeflateError``,
    ``ZstdError``, ``ImcdError``, ``PngError``... are ``RuntimeError``; astropy's
    tile decompression raises ``CfitsioException``), so none is listed: only an
    ``ImageError`` (already the file's) and ``MemoryError`` (the machine's) pass."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except NotImplementedError as e:
        raise ImageError(p, f"unsupported {fmt} data: {type(e).__name__}: {e}") from e
    except Exception as e:
        raise ImageError(p, f"corrupt or incomplete {fmt} data: {type(e).__name__}: {e}") from e


def _read_fits(p: Path, notes: list[str]) -> tuple[np.ndarray, str, fits.Header, bool]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(p, memmap=False) as hdul:
                hdu = _find_image_hdu(p, hdul)
                header = _image_header(hdul, hdu, notes)
                with _decoding(p, "FITS"):
                    raw = hdu.data
        except _READ_ERRORS as e:  # an ImageError from _decoding too
            truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
            if truncated:
                raise ImageError(p, f"truncated FITS file: {truncated[0]}") from e
            raise
    for w in caught:
        message = str(w.message)
        if "truncated" in message:
            raise ImageError(p, f"truncated FITS file: {message}")
        if issubclass(w.category, AstropyWarning):
            notes.append(f"FITS warning: {message}")
        else:
            logger.debug("%s: %s: %s", p, w.category.__name__, message)
    dtype = _fits_dtype(header)
    if header.get("BSCALE", 1) != 1 or (header.get("BZERO", 0) != 0 and dtype.startswith("int")):
        notes.append(f"{dtype} samples scaled by BSCALE/BZERO to physical values")
    data = np.asarray(raw).astype(np.float32)
    data, channels_last = _fits_to_chw(p, data, notes)
    cfa = _cfa_card(header)
    if cfa is not None:
        key, value = cfa
        if data.shape[0] == 1:
            raise ImageError(
                p,
                f"a raw colour-filter-array (Bayer {value}) frame ({key} = '{value}'): "
                "debayer it first (e.g. Siril, PixInsight) and remove the stars from the "
                "colour image; a mosaic read as mono gives poor results. If the frame is "
                f"not a mosaic, delete its {key} card",
            )
        notes.append(f"{key} = '{value}' on 3 colour planes: already debayered, read as RGB")
    return data, dtype, header, channels_last


def _cfa_card(header: fits.Header) -> tuple[str, str] | None:
    """The card (keyword, pattern) saying the data is a colour-filter-array mosaic."""
    bayerpat = header.get("BAYERPAT")
    if isinstance(bayerpat, str) and bayerpat.strip().upper() not in _NOT_CFA:
        return "BAYERPAT", bayerpat.strip()
    colortyp = header.get("COLORTYP")
    if isinstance(colortyp, str) and _CFA_PATTERN.match(colortyp.strip().upper()):
        return "COLORTYP", colortyp.strip()
    return None


def read_fits_header(path: str | os.PathLike[str]) -> fits.Header | None:
    """The image HDU's header of a FITS file (with the primary header's cards merged in
    when the image is an extension, as ``read_image`` does), without decoding its pixels.

    None for non-FITS files and for files that do not read (``read_image`` then
    gives the reason). For the provenance DB's header facts at claim time.
    """
    p = Path(path)
    try:
        if _detect_format(p) != "fits":
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(p, memmap=False) as hdul:
                return _image_header(hdul, _find_image_hdu(p, hdul), [])
    except MemoryError:
        raise
    except Exception:  # ImageError, OSError, astropy's VerifyError on a damaged header...
        return None


def _find_image_hdu(
    p: Path, hdul: fits.HDUList
) -> fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU:
    for hdu in hdul:
        if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) > 0:
            naxes = hdu.header["NAXIS"]
            shape = tuple(int(hdu.header.get(f"NAXIS{i}", 0)) for i in range(naxes, 0, -1))
            if 0 in shape:
                raise ImageError(p, f"empty image (shape {shape})")
            return hdu
    kinds = ", ".join(type(h).__name__ for h in hdul)
    raise ImageError(p, f"no image HDU with data (HDUs: {kinds})")


def _image_header(
    hdul: fits.HDUList,
    hdu: fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU,
    notes: list[str],
) -> fits.Header:
    """A copy of ``hdu``'s header; for an extension, with the primary header's cards added.

    The primary header's non-structural keyword cards (OBJECT, DATE-OBS, TELESCOP, ...)
    are appended after the extension's own cards, which win where both have a keyword;
    structural cards (``_STRUCTURAL_KEYS``: SIMPLE, BITPIX, NAXISn, EXTEND, BZERO,
    CHECKSUM, INHERIT, ...) and commentary (COMMENT, HISTORY, blank) are not copied.
    The registered FITS ``INHERIT`` convention merges only under ``INHERIT = T``; here
    an extension without the keyword inherits too (most multi-extension files from
    cameras and archives omit it, and the output is a single HDU that would otherwise
    lose the object and the date), and one with ``INHERIT = F`` does not.
    """
    header = fits.Header(copy.copy(card) for card in hdu.header.cards)  # plain, detached
    primary = hdul[0]
    if hdu is primary or header.get("INHERIT", True) is False:
        return header
    merged = 0
    for card in primary.header.copy().cards:
        key = card.keyword
        if _STRUCTURAL_KEYS.match(key) or key.startswith(_STARNET_PREFIX):
            continue
        if key in ("", "COMMENT", "HISTORY") or key in header:
            continue
        header.append(card, end=True)
        merged += 1
    if merged:
        notes.append(f"{merged} primary header card(s) merged into the extension's (INHERIT)")
    return header


def _fits_dtype(header: fits.Header) -> str:
    bitpix = int(header["BITPIX"])
    dtype = _BITPIX_DTYPE.get(bitpix, f"bitpix{bitpix}")
    if header.get("BSCALE", 1) == 1:
        bzero = header.get("BZERO", 0)
        if bitpix in _UNSIGNED_BZERO and bzero == _UNSIGNED_BZERO[bitpix][1]:
            dtype = _UNSIGNED_BZERO[bitpix][0]
        elif bitpix == 8 and bzero == -128:
            dtype = "int8"
    return dtype


def _fits_to_chw(p: Path, data: np.ndarray, notes: list[str]) -> tuple[np.ndarray, bool]:
    shape = data.shape
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.shape != shape:
        notes.append(f"length-1 axes dropped from FITS shape {shape}")
    if data.ndim == 2:
        return data[np.newaxis], False
    if data.ndim == 3:
        if data.shape[0] in (1, 3):
            return data, False
        if data.shape[2] == 3:
            notes.append(f"channels-last FITS cube {data.shape} read as (3, H, W)")
            return np.ascontiguousarray(np.moveaxis(data, 2, 0)), True
        raise ImageError(
            p, f"3-D data with {data.shape[0]} planes (shape {shape}); expected 1 or 3 (colour)"
        )
    raise ImageError(
        p, f"{data.ndim}-D data (shape {shape}); expected a 2-D image or a (3, H, W) cube"
    )


def _read_tiff(p: Path, page: int, notes: list[str]) -> tuple[np.ndarray, str]:
    with tifffile.TiffFile(p) as tif:
        n_pages = len(tif.pages)
        if page >= n_pages:
            raise ImageError(p, f"page {page} requested but the file has {n_pages} page(s)")
        tpage = tif.pages[page]
        if not isinstance(tpage, tifffile.TiffPage):
            raise ImageError(p, f"page {page} is not a readable image page")
        if n_pages > 1:
            notes.append(f"page {page} of {n_pages} used")
        with _decoding(p, "TIFF"):
            arr = tpage.asarray()
        axes = tpage.axes
        orientation_tag = tpage.tags.get(_EXIF_ORIENTATION)
        orientation = orientation_tag.value if orientation_tag is not None else 1
        photometric = tpage.photometric
        compression = tpage.compression
        n_extra = len(tpage.extrasamples)
        colormap = tpage.colormap
    if "S" in axes:
        arr = np.moveaxis(arr, axes.index("S"), 0)
        axes = "S" + axes.replace("S", "")
    else:
        arr = arr[np.newaxis]
        axes = "S" + axes
    if axes != "SYX":
        raise ImageError(p, f"unsupported TIFF page layout {tpage.axes} (shape {tpage.shape})")
    pm = tifffile.PHOTOMETRIC
    if photometric == pm.YCBCR and compression == tifffile.COMPRESSION.JPEG:
        photometric = pm.RGB  # the JPEG decoder gives RGB (a JPEG-compressed TIFF export)
        notes.append("JPEG-compressed YCbCr decoded to RGB")
    if photometric == pm.PALETTE and colormap is not None:
        arr = colormap[:, arr[0]]
        notes.append("palette colours expanded to RGB")
    elif photometric == pm.MINISWHITE:
        if arr.dtype == np.bool_:
            arr = ~arr
        elif arr.dtype.kind in "ui":
            arr = (np.iinfo(arr.dtype).max - arr).astype(arr.dtype)
        else:
            arr = 1.0 - arr
        notes.append("MINISWHITE samples inverted")
    elif photometric not in (pm.MINISBLACK, pm.RGB):
        name = getattr(photometric, "name", photometric)
        raise ImageError(p, f"unsupported TIFF photometric interpretation {name}")
    n_samples = arr.shape[0]
    keep = 3 if photometric == pm.RGB else n_samples - n_extra
    if keep not in (1, 3) or keep > n_samples:
        raise ImageError(
            p,
            f"{n_samples} samples per pixel (shape {tpage.shape}); expected 1 or 3 colour samples",
        )
    if keep < n_samples:
        notes.append(f"{n_samples - keep} extra sample(s) (alpha) dropped")
        arr = arr[:keep]
    return _scale_integers(p, _apply_orientation(arr, orientation, "TIFF", notes))


def _read_pillow(p: Path, notes: list[str]) -> tuple[np.ndarray, str]:
    png16 = _png_16bit_colour(p)
    with Image.open(p) as im:
        mode, fmt = im.mode, im.format
        with _decoding(p, fmt or "image"):
            im.load()
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        n_frames = int(getattr(im, "n_frames", 1))
        if n_frames > 1:
            notes.append(f"frame 0 of {n_frames} used")
        if mode in ("LA", "RGBA", "PA"):
            notes.append("alpha channel dropped")
        if mode in ("P", "PA"):
            notes.append("palette colours expanded to RGB")
        if mode in ("CMYK", "YCbCr"):
            notes.append(f"{mode} converted to RGB")
        if png16 and fmt == "PNG":  # Pillow reads 16-bit colour at 8 bits
            with _decoding(p, "PNG"):
                arr = imagecodecs.png_decode(p.read_bytes())
            arr = arr[..., 0] if arr.ndim == 3 and arr.shape[2] < 3 else arr[..., :3]
        elif mode == "I" and fmt == "PNG":  # 16-bit grey from older Pillow versions
            arr = np.asarray(im).astype(np.uint16)
        elif mode in _PILLOW_CONVERT:
            arr = np.asarray(im.convert(_PILLOW_CONVERT[mode]))
        elif mode in ("L", "RGB", "I;16", "I;16B", "I;16L"):
            arr = np.asarray(im)
        else:
            raise ImageError(p, f"unsupported {fmt} pixel mode {mode!r}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr[np.newaxis] if arr.ndim == 2 else np.moveaxis(arr, 2, 0)
    return _scale_integers(p, _apply_orientation(arr, orientation, "EXIF", notes))


def _png_16bit_colour(p: Path) -> bool:
    """Whether ``p`` is a PNG of 16-bit colour (or grey + alpha) samples, which Pillow
    reads at 8 bits: its IHDR (always the first chunk) has bit depth 16 and colour
    type 2 (RGB), 4 (grey + alpha) or 6 (RGBA). 16-bit grey (type 0) Pillow reads whole."""
    with p.open("rb") as fh:
        head = fh.read(26)
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _apply_orientation(
    arr: np.ndarray, orientation: object, tag: str, notes: list[str]
) -> np.ndarray:
    """``(C, H, W)`` samples turned the way viewers show them, per the EXIF/TIFF Orientation
    tag (1-8; the same transforms as ``PIL.ImageOps.exif_transpose``). Outputs carry no
    Orientation tag, so they then look like the input. Other values are ignored (noted)."""
    if isinstance(orientation, int) and not isinstance(orientation, bool):
        orientation = int(orientation)  # tifffile may give an IntEnum
    if orientation == 1:
        return arr
    transforms: dict[object, Callable[[np.ndarray], np.ndarray]] = {
        2: lambda a: a[:, :, ::-1],  # mirrored left-right
        3: lambda a: a[:, ::-1, ::-1],  # rotated 180
        4: lambda a: a[:, ::-1, :],  # mirrored top-bottom
        5: lambda a: a.transpose(0, 2, 1),  # transposed
        6: lambda a: np.rot90(a, k=-1, axes=(1, 2)),  # shown rotated 90 clockwise
        7: lambda a: a.transpose(0, 2, 1)[:, ::-1, ::-1],  # transversed
        8: lambda a: np.rot90(a, k=1, axes=(1, 2)),  # shown rotated 90 anticlockwise
    }
    if orientation not in transforms:
        notes.append(f"{tag} orientation {orientation!r} is not 1-8: ignored")
        return arr
    notes.append(f"{tag} orientation {orientation} applied")
    return np.ascontiguousarray(transforms[orientation](arr))


def _scale_integers(p: Path, arr: np.ndarray) -> tuple[np.ndarray, str]:
    dtype = arr.dtype.name
    if dtype == "bool":
        return arr.astype(np.float32), dtype
    if dtype in _INT_SCALE:
        return (arr.astype(np.float32) / np.float32(_INT_SCALE[dtype])), dtype
    if arr.dtype.kind == "f":
        return arr.astype(np.float32), dtype
    if arr.dtype.kind in "ui" and arr.dtype.itemsize >= 4:
        raise ImageError(
            p,
            f"{8 * arr.dtype.itemsize}-bit integer samples ({dtype}) are not supported: "
            "nothing says whether they hold linear or stretched data, and the outputs could "
            "not keep that depth; save the image as 32-bit float TIFF or FITS (linear "
            "data) or as 16-bit TIFF (stretched)",
        )
    raise ImageError(p, f"unsupported sample type {dtype}; use uint8, uint16 or float32")


def _validate(
    p: Path,
    data: np.ndarray,
    fmt: str,
    dtype: str,
    nan_policy: str,
    max_fraction: float,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray | None]:
    """``data`` checked, its non-finite pixels replaced by ``nan_policy``; and where they
    were (``(C, H, W) bool``, None when there were none)."""
    if data.size == 0:
        raise ImageError(p, f"empty image (shape {data.shape})")
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    nonfinite = None
    if n_bad:
        n_nan = int(np.count_nonzero(np.isnan(data)))
        fraction = n_bad / data.size
        what = f"{n_bad} non-finite value(s) ({n_nan} NaN, {n_bad - n_nan} Inf, {fraction:.3%})"
        if fraction > max_fraction or n_bad == data.size:
            raise ImageError(
                p,
                f"{what}: more than max_nonfinite_fraction={max_fraction:g} of the image, "
                "too many to repair (validation.max_nonfinite_fraction)",
            )
        if nan_policy == "error":
            raise ImageError(
                p, f"{what}; set validation.nan_policy to 'zero' or 'median' to replace them"
            )
        data = data.copy()
        for c in range(data.shape[0]):
            good = finite[c]
            fill = float(np.median(data[c][good])) if nan_policy == "median" and good.any() else 0.0
            data[c][~good] = fill
        notes.append(
            f"{n_bad} NaN/Inf value(s) replaced by {nan_policy} (NaN again in float outputs)"
        )
        nonfinite = ~finite
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise ImageError(p, f"constant image: every pixel value is {lo:g}")
    if fmt in ("tiff", "png") and dtype.startswith("float") and (hi > 1.5 or lo < -0.5):
        raise ImageError(
            p,
            f"float samples range {lo:g}..{hi:g}: looks like raw ADU, not normalised to [0, 1] "
            "(save linear data as FITS, or scale the TIFF to [0, 1])",
        )
    return data, nonfinite


# --------------------------------------------------------------------------- writing


def output_path(
    input_path: str | os.PathLike[str], suffix: str, out_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The output file for ``input_path``: ``image.tif`` + ``"starless"`` -> ``image_starless.tif``.

    Compressed FITS map to plain FITS (``M42.fits.gz``, ``M42.fz`` -> ``M42_starless.fits``)
    because outputs are written uncompressed. ``out_dir`` None: next to the input.
    """
    if not suffix or re.search(r"[\\/\s]", suffix):
        raise ValueError(f"suffix must be a non-empty name without separators, got {suffix!r}")
    p = Path(input_path)
    name = p.name
    lower = name.lower()
    for wrapper in _COMPRESSION_WRAPPERS:
        if lower.endswith(wrapper) and Path(lower[: -len(wrapper)]).suffix in FITS_EXTENSIONS:
            name, lower = name[: -len(wrapper)], lower[: -len(wrapper)]
    if lower.endswith(".fz"):
        name = name[:-3]
        if Path(name).suffix.lower() not in FITS_EXTENSIONS:
            name += ".fits"
    stem, ext = Path(name).stem, Path(name).suffix
    return (Path(out_dir) if out_dir is not None else p.parent) / f"{stem}_{suffix}{ext}"


def write_image(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    like: ImageData,
    header_cards: Mapping[str, str | int | float | bool] | None = None,
    history: Sequence[str] = (),
    compress: bool = True,
) -> None:
    """Write ``data`` (``(C, H, W)``, C in {1, 3}, float) atomically to ``path``.

    The format comes from ``path``'s extension; ``like`` (the input) gives the bit
    depth and the FITS header; where ``like`` had no data (NaN or Inf in its file:
    ``like.nonfinite``), a float output (FITS, float TIFF) holds NaN. FITS: float32 with
    ``like``'s header, ``header_cards`` as ``HIERARCH STARNET <KEY>`` cards and
    ``history`` as HISTORY. TIFF: ``like``'s uint8/uint16 depth (clipped to [0, 1],
    rounded) or float32, zlib-compressed (level 1) when ``compress``, provenance as JSON
    in ImageDescription. PNG/JPEG: 8-bit (16-bit
    PNG, mono or RGB, for 16-bit input), provenance in a text chunk / comment.
    """
    out = Path(path)
    fmt = _detect_write_format(out)
    arr = _check_output_array(data)
    if like.nonfinite is not None and (
        fmt == "fits" or (fmt == "tiff" and _sample_dtype(like) == "float32")
    ):  # float samples: NaN can be written
        arr = _no_data_back(arr, like.nonfinite)
    if same_file(out, like.source):
        raise ImageError(out, "refusing to overwrite the input image")
    cards = _check_cards(header_cards or {})
    history = _check_history(history)
    provenance = json.dumps({"starnet": {"cards": cards, "history": history}}, ensure_ascii=True)
    writer: Callable[[BinaryIO], None]
    if fmt == "fits":
        hdu = _fits_hdu(arr, like, cards, history)

        def writer(fh: BinaryIO) -> None:
            hdu.writeto(fh, output_verify="silentfix")

    elif fmt == "tiff":
        samples = _to_samples(arr, _sample_dtype(like))

        def writer(fh: BinaryIO) -> None:
            tifffile.imwrite(
                fh,
                samples,
                photometric="rgb" if samples.ndim == 3 else "minisblack",
                compression="zlib" if compress else None,
                # Level 1: noisy astro data compresses ~as well as at 6, 1.5-3x faster.
                compressionargs={"level": 1} if compress else None,
                metadata=None,
                description=provenance,
            )

    elif fmt == "png" and _sample_dtype(like) == "uint16" and arr.shape[0] == 3:
        # Pillow writes no 16-bit colour PNG: imagecodecs does, without text chunks
        encoded = _png_add_text(
            imagecodecs.png_encode(_to_samples(arr, "uint16")), "starnet", provenance
        )

        def writer(fh: BinaryIO) -> None:
            fh.write(encoded)

    else:
        bits16 = fmt == "png" and _sample_dtype(like) == "uint16"
        pil = Image.fromarray(_to_samples(arr, "uint16" if bits16 else "uint8"))

        def writer(fh: BinaryIO) -> None:
            if fmt == "png":
                info = PngImagePlugin.PngInfo()
                info.add_text("starnet", provenance)
                pil.save(fh, format="PNG", pnginfo=info)
            else:
                pil.save(fh, format="JPEG", quality=95, comment=provenance)

    try:
        _atomic_write(out, writer)
    except (OSError, fits.VerifyError) as e:
        raise ImageError(out, f"cannot write: {getattr(e, 'strerror', None) or e}") from e


def _png_add_text(png: bytes | bytearray, key: str, text: str) -> bytes:
    """``png`` with a ``tEXt`` chunk ``key``: ``text`` (Latin-1) right after its IHDR,
    before the image data, where ``Image.open`` (and so :func:`read_stamp`) reads it,
    as Pillow's ``PngInfo.add_text`` writes it."""
    if png[12:16] != b"IHDR":
        raise ValueError("not a PNG stream starting with IHDR")
    end = 8 + 12 + struct.unpack(">I", png[8:12])[0]  # signature, IHDR chunk
    body = b"tEXt" + key.encode("latin-1") + b"\0" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return bytes(png[:end]) + chunk + bytes(png[end:])


def read_stamp(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[str]] | None:
    """The provenance :func:`write_image` stamped into ``path``: its ``header_cards`` (by
    their own names) and ``history`` lines, from FITS ``HIERARCH STARNET`` cards and
    HISTORY, a TIFF's ImageDescription, a PNG text chunk or a JPEG comment. Headers only,
    no pixels. None when the file carries no stamp or cannot be read as one."""
    p = Path(path)
    try:
        fmt = _detect_format(p)
        if fmt == "fits":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a user's odd FITS is no stamp, not a warning
                header = fits.getheader(p, 0)
            cards = {
                c.keyword[len(_STARNET_PREFIX) :]: c.value
                for c in header.cards
                if c.keyword.startswith(_STARNET_PREFIX)
            }
            return cards, [str(line) for line in header.get("HISTORY", [])]
        if fmt == "tiff":
            with tifffile.TiffFile(p) as tif:
                text: Any = tif.pages.first.description
        else:  # PNG text chunk or JPEG comment, both read by Image.open (no pixels)
            with Image.open(p) as im:
                text = im.info.get("starnet") or im.info.get("comment")
        if isinstance(text, bytes):
            text = text.decode("ascii")
        stamp = json.loads(text)["starnet"]
        return dict(stamp["cards"]), [str(line) for line in stamp.get("history", [])]
    except Exception:  # whatever a file holds that cannot be read as a stamp, it has none
        return None


def _detect_write_format(out: Path) -> str:
    lower = out.name.lower()
    if lower.endswith((".gz", ".bz2", ".fz")):
        raise ImageError(out, "compressed output is not supported: write plain .fits")
    ext = out.suffix.lower()
    if ext in FITS_EXTENSIONS:
        return "fits"
    if ext in _EXTENSION_FORMATS:
        return _EXTENSION_FORMATS[ext]
    raise ImageError(out, f"unknown output format {ext!r}; use .fits, .tif, .png or .jpg")


def _no_data_back(arr: np.ndarray, nonfinite: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` with NaN where the input had no data (``nonfinite``, ``(C, H, W)``;
    an output with another channel count, e.g. a mono mask of a colour frame, gets NaN
    where any channel had none). Another image size (not an output of the input): as is."""
    if arr.shape[1:] != nonfinite.shape[1:]:
        return arr
    where = nonfinite if nonfinite.shape[0] == arr.shape[0] else nonfinite.any(axis=0)
    out = arr.copy()
    out[np.broadcast_to(where, arr.shape)] = np.nan
    return out


def _check_output_array(data: np.ndarray) -> np.ndarray:
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or 0 in arr.shape:
        raise ValueError(f"data must be (C, H, W) with C in {{1, 3}}, got shape {arr.shape}")
    if arr.dtype.kind != "f":
        raise ValueError(f"data must be a float array, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def same_file(out: Path, source: Path) -> bool:
    """Whether the output ``out`` is the input ``source`` (by path, or a link to it)."""
    if out.resolve() == source.resolve():
        return True
    try:
        return out.exists() and os.path.samefile(out, source)
    except OSError:
        return False


def _check_cards(
    cards: Mapping[str, str | int | float | bool],
) -> dict[str, str | int | float | bool]:
    checked: dict[str, str | int | float | bool] = {}
    probe = fits.Header()
    for key, value in cards.items():
        k = str(key).upper()
        if not _CARD_KEY.match(k):
            raise ValueError(f"header_cards: key {key!r} must be letters, digits, '_' or '-'")
        if not isinstance(value, str | int | float | bool):
            raise ValueError(f"header_cards[{key!r}]: expected str/int/float/bool, got {value!r}")
        if isinstance(value, float) and not np.isfinite(value):
            raise ValueError(f"header_cards[{key!r}]: value must be finite, got {value!r}")
        if isinstance(value, str) and not (value.isascii() and value.isprintable()):
            raise ValueError(f"header_cards[{key!r}]: FITS strings must be printable ASCII")
        try:
            probe[f"HIERARCH {_STARNET_PREFIX}{k}"] = value
        except ValueError as e:
            raise ValueError(f"header_cards[{key!r}]: {e}") from e
        checked[k] = value
    return checked


def _check_history(history: Sequence[str]) -> list[str]:
    lines = [str(line) for line in history]
    for i, line in enumerate(lines):
        if not (line.isascii() and line.isprintable()):
            raise ValueError(
                f"history[{i}]: FITS strings must be printable ASCII, got {line[:80]!r}"
            )
    return lines


def _fits_hdu(
    arr: np.ndarray,
    like: ImageData,
    cards: Mapping[str, str | int | float | bool],
    history: Sequence[str],
) -> fits.PrimaryHDU:
    header = fits.Header()
    if like.format == "fits" and like.header is not None:
        for card in like.header.cards:
            key = card.keyword
            if _STRUCTURAL_KEYS.match(key) or key.startswith(_STARNET_PREFIX):
                continue
            header.append(card, end=True)
    out = arr[0] if arr.shape[0] == 1 else arr
    if out.ndim == 3 and like.channels_last:
        out = np.moveaxis(out, 0, 2)
    hdu = fits.PrimaryHDU(data=np.ascontiguousarray(out, dtype=np.float32), header=header)
    for key, value in cards.items():
        hdu.header[f"HIERARCH {_STARNET_PREFIX}{key}"] = value
    for line in history:
        hdu.header.add_history(line)
    return hdu


def _sample_dtype(like: ImageData) -> str:
    if like.format != "fits" and like.dtype in ("uint8", "bool"):
        return "uint8"
    if like.format != "fits" and like.dtype == "uint16":
        return "uint16"
    return "float32"


def _to_samples(arr: np.ndarray, dtype: str) -> np.ndarray:
    """``(C, H, W)`` float -> ``(H, W)`` or ``(H, W, 3)`` samples of ``dtype``."""
    if dtype in _INT_SCALE:
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            raise ValueError(f"data: {n_bad} non-finite value(s) cannot be written as {dtype}")
        scaled = np.rint(np.clip(arr, 0.0, 1.0) * np.float32(_INT_SCALE[dtype]))
        arr = scaled.astype(dtype)
    return arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(arr, 0, 2))


def _atomic_write(out: Path, write: Callable[[BinaryIO], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A short fixed-length name: one built from out.name could pass the file system's
    # 255-byte limit for a long (e.g. CJK, 3 bytes a character) but legal output name.
    # The writers get a file object: nothing detects the format from this name.
    tmp = out.with_name(f".starnet-{uuid.uuid4().hex}.tmp")
    # Exclusive create (mode 0o666 minus umask, like any new file), then reopen by name
    # because astropy and tifffile want a plain "wb" file object with a name.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        with tmp.open("wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if os.name == "posix":
        dir_fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
