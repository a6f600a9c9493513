"""Star removal on a whole frame: a trained network applied through :mod:`starnet_core.tiling`.

Arrays are ``(C, H, W) float32`` in ``[0, 1]`` (stretched), ``C`` in ``{1, 3}``.
The network contract: a ``torch.nn.Module`` mapping ``(B, 3, h, w)`` to
``(B, 3, h, w)`` starless, with ``h`` and ``w`` multiples of its int attribute
``multiple`` and ``in_channels == 3``. A width-conditioned model
(``model.config.width_cond``) is called as ``model(x, hwhm_px)`` with the frame's
typical star half-width (``classical.typical_star_hwhm``) for every tile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from starnet_core.model import WIDTH_REF_PX
from starnet_core.options import TileOptions
from starnet_core.tiling import effective_tile, place_model, run_tiled, select_device

__all__ = [
    "TileOptions",
    "check_stretched_image",
    "frame_star_hwhm",
    "grid_pattern",
    "network_fn",
    "remove_fixed_pattern",
    "remove_stars",
    "star_hwhm",
    "width_conditioned",
]

log = logging.getLogger(__name__)


DEFAULT_TILE_OPTIONS = TileOptions()


def check_stretched_image(image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is a finite ``(C, H, W) float32`` frame in [0, 1],
    C in {1, 3}: what the network and the classical baseline take."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array (C, H, W), got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] not in (1, 3) or min(image.shape) < 1:
        raise ValueError(f"image must have shape (C, H, W) with C in {{1, 3}}, got {image.shape}")
    if image.dtype != np.float32:
        raise ValueError(f"image must be float32, got {image.dtype}")
    if not np.isfinite(image).all():
        raise ValueError(f"image has {np.count_nonzero(~np.isfinite(image))} non-finite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image must be stretched to [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


def _model_multiple(model: torch.nn.Module) -> int:
    multiple = getattr(model, "multiple", None)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"model.multiple must be an int >= 1, got {multiple!r}")
    in_channels = getattr(model, "in_channels", 3)
    if in_channels != 3:
        raise ValueError(f"model.in_channels must be 3, got {in_channels!r}")
    return multiple


def _dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The k-th of the 8 flips/transposes of square (B, C, t, t) tiles (0 = identity).

    Bits: 1 flips x, 2 flips y, 4 transposes (first; the inverse transposes last, the
    flips commute).
    """
    if k & 4 and not inverse:
        x = x.transpose(2, 3)
    if k & 1:
        x = x.flip(3)
    if k & 2:
        x = x.flip(2)
    if k & 4 and inverse:
        x = x.transpose(2, 3)
    return x


def width_conditioned(model: torch.nn.Module) -> bool:
    """Whether ``model`` reads the frame's typical star width (``ModelConfig.width_cond``)."""
    return bool(getattr(getattr(model, "config", None), "width_cond", False))


def _tile_fn(
    model: torch.nn.Module,
    mono: bool,
    upsample: bool,
    ensemble: int = 1,
    hwhm_px: float | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-tile function: (B, C, t, t) -> (B, C, t, t), C = 1 for mono frames.

    ``ensemble`` > 1 averages the network over that many flips/transposes of the tile
    (geometric self-ensemble; tiles are square, so transposes keep their shape).
    ``hwhm_px``: the frame's typical star half-width as the network sees it (upsampled
    frames: twice the measured one), for a width-conditioned model; None for others.
    """

    def run(x: torch.Tensor) -> torch.Tensor:
        if hwhm_px is None:
            return model(x)
        return model(x, torch.full((x.shape[0],), hwhm_px, device=x.device))

    def net(x: torch.Tensor) -> torch.Tensor:
        acc = run(x)
        for k in range(1, ensemble):
            acc = acc + _dihedral(run(_dihedral(x, k)), k, inverse=True)
        return acc if ensemble == 1 else acc / ensemble

    def fn(x: torch.Tensor) -> torch.Tensor:
        if mono:
            x = x.expand(-1, 3, -1, -1)
        if upsample:
            # bicubic overshoots around stars; the network expects [0, 1]
            x = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
        y = net(x)
        if upsample:
            y = F.avg_pool2d(y, 2)  # area average: exactly back to t x t
        if mono:
            y = y.mean(dim=1, keepdim=True)
        return y

    return fn


def star_hwhm(image: np.ndarray) -> float:
    """The typical star half-width (px) a width-conditioned model reads for ``image``
    (``classical.typical_star_hwhm``), or the model's reference width where too few stars
    are measurable. Training measures its crops with it, inference whole frames."""
    from starnet_core.classical import typical_star_hwhm  # it imports this module

    return typical_star_hwhm(image, default=WIDTH_REF_PX)


def frame_star_hwhm(
    model: torch.nn.Module, image: np.ndarray, upsample: bool = False
) -> float | None:
    """The star half-width a width-conditioned ``model`` reads for the whole of ``image``
    (twice the measured one when the network sees it upsampled; the reference width
    where too few stars are measurable); None for a model that reads none. One width
    per frame, for every tile and pass: no seams between tiles."""
    if not width_conditioned(model):
        return None
    return star_hwhm(image) * (2 if upsample else 1)


def network_fn(model: torch.nn.Module, image: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-tile function :func:`remove_stars` runs on ``image`` (one pass, no
    upsampling or ensemble), for tools that tile it themselves (``tiling.seam_score``)."""
    return _tile_fn(
        model, mono=image.shape[0] == 1, upsample=False, hwhm_px=frame_star_hwhm(model, image)
    )


def _tile_note(tile_px: int, overlap_px: int, multiple: int, frame_hw: tuple[int, ...]) -> str:
    """The tile size :func:`run_tiled` uses on a frame, as the log says it: the effective
    side, and why it differs from ``tile_px`` where it does."""
    tile = effective_tile(tile_px, overlap_px, multiple, frame_hw)
    if tile < tile_px:
        return f"tile {tile} px (one tile holds the frame; tile_px {tile_px})"
    if tile > tile_px:
        return f"tile {tile} px (tile_px {tile_px} rounded up to a multiple of {multiple} px)"
    return f"tile {tile} px"


def remove_stars(
    model: torch.nn.Module,
    image: np.ndarray,
    options: TileOptions = DEFAULT_TILE_OPTIONS,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The starless version of a stretched frame.

    Args:
        model: the star-removal network (contract in the module docstring). It is put in
            eval mode and moved to the selected device, in place, once per call.
        image: ``(C, H, W) float32`` in ``[0, 1]``, ``C`` in ``{1, 3}``, finite.
            Mono frames are replicated to 3 channels for the network and its 3 output
            channels averaged back to 1 (per tile, which is the same as after blending
            because blending is linear).
        options: tiling, passes, upsampling, precision and device.
        progress: ``progress(done_tiles, total_tiles)`` after each batch, counted over
            all passes.

    Returns:
        ``(C, H, W) float32`` starless, clipped to ``[0, 1]`` (after every pass, since
        each pass is the next one's input). Not forced below the input.
    """
    check_stretched_image(image)
    multiple = _model_multiple(model)
    device = select_device(options.device)
    model.eval()
    place_model(model, device)
    # With upsampling the network sees 2t x 2t tiles: t needs only multiple / gcd(multiple, 2).
    tile_multiple = multiple // math.gcd(multiple, 2) if options.upsample else multiple
    hwhm = frame_star_hwhm(model, image, options.upsample)
    fn = _tile_fn(
        model,
        mono=image.shape[0] == 1,
        upsample=options.upsample,
        ensemble=options.ensemble,
        hwhm_px=hwhm,
    )
    log.info(
        "removing stars: %s frame on %s, %s, overlap %d px, %d pass(es)%s%s%s",
        "x".join(map(str, image.shape)),
        device,
        _tile_note(options.tile_px, options.overlap_px, tile_multiple, image.shape[1:]),
        options.overlap_px,
        options.passes,
        ", 2x upsampled" if options.upsample else "",
        f", {options.ensemble}x self-ensemble" if options.ensemble > 1 else "",
        "" if hwhm is None else f", typical star half-width {hwhm:.2f} px",
    )
    result = image
    for k in range(options.passes):

        def pass_progress(done: int, total: int, k: int = k) -> None:
            if progress is not None:
                progress(k * total + done, options.passes * total)

        result = run_tiled(
            fn,
            result,
            tile_px=options.tile_px,
            overlap_px=options.overlap_px,
            batch_size=options.batch_size,
            device=device,
            multiple=tile_multiple,
            mixed_precision=options.mixed_precision,
            progress=pass_progress,
        )
        np.clip(result, 0.0, 1.0, out=result)
    if options.lattice_px:
        result = remove_fixed_pattern(image, result, options.lattice_px)
    return result


def remove_fixed_pattern(
    image: np.ndarray, starless: np.ndarray, period_px: int, clip_sigmas: float = 3.0
) -> np.ndarray:
    """``starless`` without the network's pattern fixed to the pixel grid.

    The network downsamples by strided convolutions and upsamples by pixel shuffle, so
    its star layer ``image - starless`` carries a faint lattice of offsets that repeat
    every ``period_px`` pixels (4 px for model 0.5.0: ``python -m benchmarks.lattice``),
    where it takes away wide light most. Like a camera's fixed-pattern noise, it is
    measured on the frame itself: per channel, the layer's mean at each of the
    ``period_px x period_px`` grid positions (after a ``period_px`` running mean is taken
    away, so smooth light and star halos do not count; pixels beyond ``clip_sigmas``
    robust sigmas, i.e. stars, left out), less its mean over the positions. That pattern
    is taken out of ``starless`` (added back: the layer holds it with the other sign).
    One pattern is taken for the whole frame: the tiles start every 448 px (512 px
    tiles, 64 px overlap), on one 4 px phase, except the last tile of each row and
    column, which ends where the frame's 64 px padding ends and so starts on the phase
    of the frame's width (height). Frames whose sides are multiples of 4 px, and
    frames of one tile, have one phase throughout; in others the last tiles' strips keep
    their own lattice, and the one measured over the rest is taken out of them too.
    Returns a new ``(C, H, W) float32`` array clipped to [0, 1].
    """
    if isinstance(period_px, bool) or not isinstance(period_px, int) or period_px < 2:
        raise ValueError(f"period_px must be an int >= 2, got {period_px!r}")
    _, h, w = starless.shape
    out = starless.copy()
    if h < 4 * period_px or w < 4 * period_px:
        return out  # too few grid cells to measure a pattern on
    reps = (h // period_px + 1, w // period_px + 1)
    for c in range(starless.shape[0]):
        pattern = grid_pattern(image[c] - starless[c], period_px, clip_sigmas)
        out[c] += np.tile(pattern, reps)[:h, :w]
    np.clip(out, 0.0, 1.0, out=out)
    return out


def grid_pattern(layer: np.ndarray, period_px: int, clip_sigmas: float = 3.0) -> np.ndarray:
    """``(period_px, period_px)`` float32: an ``(H, W)`` star layer's mean at each
    position of the ``period_px`` grid, after a ``period_px`` running mean is taken away
    (smooth light and halos do not count), pixels beyond ``clip_sigmas`` robust sigmas
    (stars) left out, less its mean over the positions; zeros for a layer without
    structure. What :func:`remove_fixed_pattern` takes out and ``benchmarks.lattice``
    reports."""
    hp, wp = (s - s % period_px for s in layer.shape)
    layer = layer.astype(np.float32)
    rest = layer - ndimage.uniform_filter(layer, period_px, mode="reflect")
    sigma = 1.4826 * float(np.median(np.abs(rest[::3, ::3])))  # a ninth is plenty
    if sigma == 0.0:  # no network output to speak of (e.g. a protected or blank frame)
        return np.zeros((period_px, period_px), np.float32)
    cells = rest[:hp, :wp].reshape(hp // period_px, period_px, wp // period_px, period_px)
    quiet = np.abs(cells) <= clip_sigmas * sigma
    pattern = (cells * quiet).sum(axis=(0, 2)) / np.maximum(quiet.sum(axis=(0, 2)), 1)
    return (pattern - pattern.mean()).astype(np.float32)
