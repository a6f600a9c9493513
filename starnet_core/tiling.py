"""Overlapped, feathered, batched tiling: the one way a network meets a whole frame.

Arrays are ``(C, H, W) float32`` numpy arrays on the CPU; tiles travel to the
device in batches of ``(B, C, tile_px, tile_px)`` tensors and come back as
float32.

How a frame is tiled (per axis, rows and columns alike):

* The frame is padded by ``overlap_px`` on both sides (more on the far side if
  the frame is smaller than a tile), so border pixels get context. Padding
  reflects the frame (``numpy`` ``reflect``); when the frame is not longer than
  the pad, it falls back to ``symmetric`` (mirrored, repeated), which is also
  what a 1-pixel frame needs. Padding is never materialised: each tile is
  gathered from the frame through an index map.
* Tiles of ``tile_px`` (rounded up to ``multiple``; see :func:`effective_tile`)
  start every ``tile_px - overlap_px`` pixels; the last one is flush with the padded
  end. A frame that fits in one tile with its pad gets one tile of just that size
  (its longer side plus ``2 * overlap_px``, rounded up to ``multiple``), not a whole
  ``tile_px`` one: time and memory follow the frame, and the result does not depend
  on ``tile_px`` once the frame fits. Frames that need more than one tile are tiled
  as before, bit for bit.
* Each tile's output is weighted by :func:`blend_window` and accumulated into
  an output buffer as batches complete; the result is ``sum(w * out) / sum(w)``,
  which normalises any overlap pattern exactly. The window is an outer product
  and the tiles form a grid, so ``sum(w)`` is the outer product of two 1-D
  sums and needs no ``(H, W)`` buffer. Memory is the frame, the output buffer
  and one batch of tiles, whatever the frame size; no stack of all tiles is
  ever built.

The window is 0 on the outer ``overlap_px // 4`` pixels of each tile edge (the
*dead margin*, where a network sees its own zero padding), raised-cosine over
the rest of the overlap band, and 1 inside. Consequence, tested: a network
whose receptive-field radius is at most ``overlap_px // 4`` gives, tiled,
exactly (to float rounding) what it gives run once on the whole reflect-padded
frame; with a wider receptive field the difference is what
:func:`seam_score` measures.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from starnet_core.options import MAX_TILE_PX, check_int, validate_tile_params

__all__ = [
    "MAX_TILE_PX",
    "SeamStats",
    "blend_window",
    "effective_tile",
    "memory_format_for",
    "place_model",
    "run_tiled",
    "seam_score",
    "seam_stats",
    "select_device",
    "tile_starts",
    "validate_tile_params",
]

log = logging.getLogger(__name__)

TileFn = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[int, int], None]

# seam_stats(reference="auto") runs the network untiled up to this many pixels.
UNTILED_MAX_PX = 1024 * 1024


def select_device(name: str = "auto") -> torch.device:
    """The torch device named by ``name``: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    ``auto`` picks CUDA if available, else MPS, else the CPU. A device that is
    named but absent (``cuda:1`` on a one-GPU machine, ``cuda`` on a CPU build)
    raises ``ValueError`` rather than silently falling back.
    """
    if not isinstance(name, str):
        raise ValueError(f"device must be a str such as 'auto', 'cpu', 'cuda:0', got {name!r}")
    key = name.strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(key)
    except RuntimeError as exc:
        raise ValueError(
            f"device={name!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}: CUDA is not available in this torch build/machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device={name!r}: only {count} CUDA device(s) present")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r}: MPS is not available on this machine")
        return device
    raise ValueError(f"device={name!r}: unsupported device type {device.type!r}")


def memory_format_for(device: torch.device) -> torch.memory_format:
    """The layout a network's 4-D tensors take on ``device``: channels-last (NHWC) on the
    CPU, whose oneDNN convolutions run fastest in it (model 0.5.0 on 2 cores: a tiled
    2048 px frame 2.39 -> 1.46 s, a training step of 4 x 256 px crops 0.27 -> 0.22 s;
    BENCHMARKS.md, "Speed and memory"); PyTorch's default, contiguous NCHW, elsewhere
    (channels-last is not measured here on a GPU). The results are the same to float
    rounding either way."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` moved to ``device`` in place, its weights in :func:`memory_format_for`
    that device; returns it. The one way a network is put on a device."""
    # Module.to takes memory_format (documented), though torch's type overloads omit it
    return model.to(device=device, memory_format=memory_format_for(device))  # type: ignore[call-overload]


def tile_starts(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start offsets of tiles covering ``[0, length_px)``.

    Tiles are ``tile_px`` long and start every ``tile_px - overlap_px`` pixels;
    the last tile ends exactly at ``length_px`` (so it may overlap its
    neighbour by more than ``overlap_px``). If ``length_px <= tile_px`` the
    answer is ``[0]`` and the caller pads up to a tile.
    """
    check_int("length_px", length_px, 1)
    check_int("tile_px", tile_px, 1)
    check_int("overlap_px", overlap_px, 0)
    if overlap_px >= tile_px:
        raise ValueError(f"overlap_px must be < tile_px, got {overlap_px} with tile_px={tile_px}")
    if length_px <= tile_px:
        return [0]
    starts = list(range(0, length_px - tile_px, tile_px - overlap_px))
    starts.append(length_px - tile_px)
    return starts


def _edge_profile(tile_px: int, overlap_px: int) -> np.ndarray:
    """1-D window: 0 on the dead margin, raised-cosine ramp, 1 inside; float64."""
    margin = overlap_px // 4
    ramp_len = overlap_px - 2 * margin
    q = np.arange(tile_px, dtype=np.float64)
    dist = np.minimum(q, tile_px - 1 - q)  # distance to the nearer tile edge, in px
    if ramp_len == 0:
        return np.ones(tile_px)
    phase = np.clip((dist - margin + 0.5) / ramp_len, 0.0, 1.0)
    profile = 0.5 - 0.5 * np.cos(np.pi * phase)
    profile[dist < margin] = 0.0
    return profile


def blend_window(tile_px: int, overlap_px: int) -> np.ndarray:
    """``(tile_px, tile_px) float32`` blending weights for one tile, in ``[0, 1]``.

    Along each axis: 0 on the outer ``m = overlap_px // 4`` pixels, a
    raised-cosine ramp ``0.5 - 0.5 cos(pi (d - m + 0.5) / (overlap_px - 2m))``
    over the next ``overlap_px - 2m`` pixels (``d`` = distance to the edge), 1
    inside; the 2-D window is the outer product. Two tiles overlapping by
    exactly ``overlap_px`` have ramps that sum to 1, and each pixel of any
    overlap of at least ``overlap_px`` has a positive total weight, so
    ``sum(w * out) / sum(w)`` is always defined.
    """
    validate_tile_params(tile_px, overlap_px, 1)
    profile = _edge_profile(tile_px, overlap_px)
    return np.outer(profile, profile).astype(np.float32)


@dataclass(frozen=True)
class _AxisPlan:
    index: np.ndarray  # padded position -> frame position (reflect/symmetric), int64
    before: int  # pad before the frame, px
    starts: list[int]  # tile starts in padded coordinates


def _axis_plan(length_px: int, tile_px: int, overlap_px: int, extra_before: int = 0) -> _AxisPlan:
    before = overlap_px + extra_before
    after = max(overlap_px, tile_px - length_px - before)
    mode = "reflect" if max(before, after) < length_px else "symmetric"
    index = np.pad(np.arange(length_px), (before, after), mode=mode)  # type: ignore[call-overload]
    return _AxisPlan(index, before, tile_starts(index.size, tile_px, overlap_px))


def _axis_weight(plan: _AxisPlan, tile: int, overlap_px: int, length_px: int) -> np.ndarray:
    """Sum of the 1-D window profiles of all tiles along one axis, over the frame; > 0."""
    profile = _edge_profile(tile, overlap_px)
    total = np.zeros(length_px, dtype=np.float64)
    for start in plan.starts:
        f0, f1 = max(start - plan.before, 0), min(start - plan.before + tile, length_px)
        total[f0:f1] += profile[f0 - start + plan.before : f1 - start + plan.before]
    return total.astype(np.float32)


def _span(plan: _AxisPlan, start: int, tile: int) -> slice | np.ndarray:
    """Frame positions of one tile along an axis: a slice when no padding is involved."""
    seg = plan.index[start : start + tile]
    # index steps are +1, -1 or 0, so an end-to-end rise of tile - 1 means no reflection
    if int(seg[-1]) - int(seg[0]) == tile - 1:
        return slice(int(seg[0]), int(seg[0]) + tile)
    return seg


def _gather(
    image: np.ndarray, rows: _AxisPlan, cols: _AxisPlan, y: int, x: int, tile: int
) -> np.ndarray:
    """The ``(C, tile, tile)`` tile at padded position ``(y, x)``, read through the index maps."""
    r, c = _span(rows, y, tile), _span(cols, x, tile)
    if isinstance(r, np.ndarray) and isinstance(c, np.ndarray):
        return image[:, r[:, None], c[None, :]]
    return image[:, r, c]


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (C, H, W), got {type(image).__name__}")
    if image.ndim != 3 or min(image.shape) < 1:
        raise ValueError(f"image must have shape (C, H, W), got {image.shape}")
    if image.dtype != np.float32:
        raise ValueError(f"image must be float32, got {image.dtype}")


def _autocast(device: torch.device, mixed_precision: bool) -> contextlib.AbstractContextManager:
    if device.type == "cuda" and mixed_precision:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def _as_device(device: torch.device | str) -> torch.device:
    return device if isinstance(device, torch.device) else select_device(device)


def _batches(rows: _AxisPlan, cols: _AxisPlan, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    positions = [(y, x) for y in rows.starts for x in cols.starts]
    for i in range(0, len(positions), batch_size):
        yield positions[i : i + batch_size]


def _run_fn(fn: TileFn, batch: np.ndarray, device: torch.device) -> np.ndarray:
    """One call of ``fn`` on a ``(B, C, h, w)`` batch; the result as float32 numpy."""
    out = fn(torch.from_numpy(batch).to(device, memory_format=memory_format_for(device)))
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"fn must return a torch.Tensor, got {type(out).__name__}")
    b, _, h, w = batch.shape
    if out.ndim != 4 or out.shape[0] != b or tuple(out.shape[2:]) != (h, w):
        raise ValueError(
            f"fn must map (B, C, h, w) to (B, C_out, h, w); got {tuple(batch.shape)} -> "
            f"{tuple(out.shape)}"
        )
    return out.float().cpu().numpy()


def _tiled(
    fn: TileFn,
    image: np.ndarray,
    tile: int,
    overlap_px: int,
    batch_size: int,
    device: torch.device,
    mixed_precision: bool,
    progress: Progress | None,
    shift_px: int = 0,
) -> np.ndarray:
    """The tiling loop; ``shift_px`` moves the grid up/left (for :func:`seam_stats`)."""
    _, H, W = image.shape
    rows = _axis_plan(H, tile, overlap_px, shift_px)
    cols = _axis_plan(W, tile, overlap_px, shift_px)
    window = blend_window(tile, overlap_px)
    total = len(rows.starts) * len(cols.starts)
    log.debug("tiling %dx%d: %d tiles of %d px, overlap %d px", H, W, total, tile, overlap_px)
    out: np.ndarray | None = None
    # sum(w) over the grid = outer(row_weight, col_weight): two 1-D sums, computed up front
    row_weight = _axis_weight(rows, tile, overlap_px, H)
    col_weight = _axis_weight(cols, tile, overlap_px, W)
    done = 0
    with torch.inference_mode(), _autocast(device, mixed_precision):
        for chunk in _batches(rows, cols, batch_size):
            batch = np.stack([_gather(image, rows, cols, y, x, tile) for y, x in chunk])
            result = _run_fn(fn, batch, device)
            if out is None:
                out = np.zeros((result.shape[1], H, W), dtype=np.float32)
            elif result.shape[1] != out.shape[0]:
                raise ValueError(
                    f"fn changed its output channels between batches: {out.shape[0]} then "
                    f"{result.shape[1]}"
                )
            for (y, x), tile_out in zip(chunk, result, strict=True):
                y0, x0 = y - rows.before, x - cols.before  # tile origin in frame coordinates
                fy0, fy1 = max(y0, 0), min(y0 + tile, H)
                fx0, fx1 = max(x0, 0), min(x0 + tile, W)
                ty, tx = slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)
                out[:, fy0:fy1, fx0:fx1] += window[ty, tx] * tile_out[:, ty, tx]
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    assert out is not None  # at least one tile always exists
    out /= row_weight[:, None]
    out /= col_weight[None, :]
    return out


def effective_tile(tile_px: int, overlap_px: int, multiple: int, frame_hw: tuple[int, ...]) -> int:
    """The tile side :func:`run_tiled` uses for a frame of ``frame_hw = (H, W)`` px.

    ``tile_px`` rounded up to a multiple of ``multiple``, but no larger than one tile
    that holds the whole frame with its ``overlap_px`` pad on both sides (the longer
    side plus ``2 * overlap_px``, rounded up to ``multiple``): a frame that fits in one
    tile costs what it needs, not a whole ``tile_px`` tile. A frame that needs more
    than one tile of ``tile_px`` gets ``tile_px`` (rounded up) unchanged. ``ValueError``
    for parameters :func:`run_tiled` refuses, ``tile_px`` above ``MAX_TILE_PX``
    included.
    """
    validate_tile_params(tile_px, overlap_px, 1)  # tile_px above MAX_TILE_PX refused
    multiple = check_int("multiple", multiple, 1)
    if len(frame_hw) != 2 or min(frame_hw) < 1:
        raise ValueError(f"frame_hw must be (H, W) with H, W >= 1, got {frame_hw}")
    tile = math.ceil(tile_px / multiple) * multiple
    whole = math.ceil((max(frame_hw) + 2 * overlap_px) / multiple) * multiple
    return min(tile, whole)


def run_tiled(
    fn: TileFn,
    image: np.ndarray,
    *,
    tile_px: int = 256,
    overlap_px: int = 32,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    multiple: int = 1,
    mixed_precision: bool = True,
    progress: Progress | None = None,
) -> np.ndarray:
    """Apply ``fn`` to ``image`` tile by tile and blend the tiles back together.

    Args:
        fn: maps a ``(B, C, t, t)`` float32 tensor on ``device`` to ``(B, C_out, t, t)``
            (any float dtype; returned as float32). Called under ``torch.inference_mode``
            and, on CUDA with ``mixed_precision``, under ``torch.autocast`` (bfloat16
            where supported, else float16).
        image: ``(C, H, W) float32``; any ``H, W >= 1`` (smaller than a tile is fine).
        tile_px: tile side in pixels, rounded up to a multiple of ``multiple``; at most
            ``MAX_TILE_PX``. A frame that fits in one tile gets a smaller one that just
            holds it (:func:`effective_tile`).
        overlap_px: overlap between neighbouring tiles and pad around the frame;
            ``0 <= overlap_px < tile_px / 2``.
        batch_size: tiles per call of ``fn``; with the frame, bounds the memory used.
        device: where batches go (``torch.device`` or a name for :func:`select_device`).
        multiple: the network's size granularity (e.g. ``2**depth``).
        mixed_precision: autocast on CUDA; ignored on other devices.
        progress: called as ``progress(done_tiles, total_tiles)`` after each batch.

    Returns:
        ``(C_out, H, W) float32`` on the CPU.
    """
    _check_image(image)
    validate_tile_params(tile_px, overlap_px, batch_size)
    multiple = check_int("multiple", multiple, 1)
    tile = effective_tile(tile_px, overlap_px, multiple, image.shape[1:])
    return _tiled(
        fn,
        image,
        tile,
        overlap_px,
        batch_size,
        _as_device(device),
        mixed_precision,
        progress,
    )


@dataclass(frozen=True)
class SeamStats:
    """How much a tiled result depends on where the tiles fall (see :func:`seam_stats`)."""

    band_max: float  # max |tiled - reference| on pixels in tile overlap bands
    elsewhere_max: float  # the same on all other compared pixels
    reference: str  # "untiled" or "shifted"


def _band_1d(plan: _AxisPlan, tile: int, length_px: int) -> np.ndarray:
    """Frame pixels lying where consecutive tiles of ``plan`` overlap."""
    band = np.zeros(length_px, dtype=bool)
    for a, b in zip(plan.starts[:-1], plan.starts[1:], strict=True):
        lo, hi = max(b - plan.before, 0), min(a + tile - plan.before, length_px)
        band[lo:hi] = True
    return band


def _untiled(
    fn: TileFn, image: np.ndarray, multiple: int, overlap_px: int, device: torch.device, amp: bool
) -> np.ndarray:
    """``fn`` once on the frame reflect-padded by ``overlap_px`` (and up to ``multiple``)."""
    _, H, W = image.shape
    idx = []
    for n in (H, W):
        padded = math.ceil((n + 2 * overlap_px) / multiple) * multiple
        idx.append(_axis_plan(n, padded, overlap_px).index)
    with torch.inference_mode(), _autocast(device, amp):
        out = _run_fn(fn, image[None][:, :, idx[0][:, None], idx[1][None, :]], device)[0]
    return out[:, overlap_px : overlap_px + H, overlap_px : overlap_px + W]


def seam_stats(
    fn: TileFn,
    image: np.ndarray,
    *,
    tile_px: int = 256,
    overlap_px: int = 32,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    multiple: int = 1,
    mixed_precision: bool = True,
    reference: str = "auto",
) -> SeamStats:
    """Compare :func:`run_tiled` output with a reference that has no seams in the same places.

    References (``reference=``):

    * ``"untiled"``: ``fn`` run once on the whole frame, reflect-padded by
      ``overlap_px`` like the tiled run. Needs the whole frame on the device.
    * ``"shifted"``: the same tiling with the grid moved by half a step
      (``(tile - overlap_px) // 2`` px) along both axes. Every seam of one grid
      falls inside tiles of the other. Pixels within ``overlap_px`` of the frame
      border are left out (the two runs give them different padded context).
    * ``"auto"``: untiled for frames up to ``UNTILED_MAX_PX`` pixels, else shifted.

    The absolute difference (max over channels) is summarised separately on
    *band* pixels (rows or columns where tiles of either grid overlap) and on
    all other pixels. A seam shows as ``band_max`` well above ``elsewhere_max``.
    """
    _check_image(image)
    validate_tile_params(tile_px, overlap_px, batch_size)
    multiple = check_int("multiple", multiple, 1)
    if reference not in ("auto", "untiled", "shifted"):
        raise ValueError(f"reference must be auto, untiled or shifted, got {reference!r}")
    dev = _as_device(device)
    _, H, W = image.shape
    tile = effective_tile(tile_px, overlap_px, multiple, (H, W))
    if reference == "auto":
        reference = "untiled" if H * W <= UNTILED_MAX_PX else "shifted"
    tiled = _tiled(fn, image, tile, overlap_px, batch_size, dev, mixed_precision, None)
    band = (
        _band_1d(_axis_plan(H, tile, overlap_px), tile, H)[:, None]
        | _band_1d(_axis_plan(W, tile, overlap_px), tile, W)[None, :]
    )
    compared = np.ones((H, W), dtype=bool)
    if reference == "untiled":
        ref = _untiled(fn, image, multiple, overlap_px, dev, mixed_precision)
    else:
        shift = (tile - overlap_px) // 2
        ref = _tiled(fn, image, tile, overlap_px, batch_size, dev, mixed_precision, None, shift)
        band |= (
            _band_1d(_axis_plan(H, tile, overlap_px, shift), tile, H)[:, None]
            | _band_1d(_axis_plan(W, tile, overlap_px, shift), tile, W)[None, :]
        )
        m = overlap_px
        compared[:m] = compared[H - m :] = False
        compared[:, :m] = compared[:, W - m :] = False
    diff = np.abs(tiled - ref).max(axis=0)
    on_band, off_band = diff[band & compared], diff[~band & compared]
    return SeamStats(
        band_max=float(on_band.max()) if on_band.size else 0.0,
        elsewhere_max=float(off_band.max()) if off_band.size else 0.0,
        reference=reference,
    )


def seam_score(
    fn: TileFn,
    image: np.ndarray,
    *,
    tile_px: int = 256,
    overlap_px: int = 32,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    multiple: int = 1,
    mixed_precision: bool = True,
    reference: str = "auto",
) -> float:
    """Seam visibility: ``seam_stats(...).band_max``, the largest change that moving the
    tiles makes on pixels along tile borders, in image units (0 = seamless)."""
    return seam_stats(
        fn,
        image,
        tile_px=tile_px,
        overlap_px=overlap_px,
        batch_size=batch_size,
        device=device,
        multiple=multiple,
        mixed_precision=mixed_precision,
        reference=reference,
    ).band_max
