"""One frame, end to end, on arrays: stretch, remove stars, unstretch, star layer, mask, enhance.

This is the single implementation of the science data flow in DESIGN.md; the
CLI and the Prefect flow both call :func:`process_array` (through
``flows.frame``) and only add files and provenance around it.

Units: ``image`` is ``(C, H, W) float32`` as read (:mod:`starnet_core.imageio`):
linear physical units for linear data, [0, 1] for stretched data. ``starless``
and ``stars`` come back in the same units as ``image`` (a linear FITS in gives
a linear starless out). ``mask`` and ``enhanced`` are display products in
stretched [0, 1] space (the mask threshold and the screen blend only make sense
there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from starnet_core.inference import remove_stars
from starnet_core.large_stars import remove_large_stars
from starnet_core.masks import (
    enhance,
    finish_starless,
    image_noise,
    star_layer,
    star_mask,
    unscreen_star_layer,
)
from starnet_core.options import (
    STRETCH_MODES,
    CoreFillOptions,
    LargeStarOptions,
    MaskOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
    StretchOptions,
    TileOptions,
)
from starnet_core.stretch import (
    Normalization,
    StretchParams,
    apply_stretch,
    denormalize_linear,
    fit_auto_stretch,
    invert_stretch,
    normalize_linear,
    restore_clipped,
)

log = logging.getLogger(__name__)


DEFAULT_STRETCH_OPTIONS = StretchOptions()
DEFAULT_TILE_OPTIONS = TileOptions()
DEFAULT_MASK_OPTIONS = MaskOptions()
DEFAULT_PROTECT_OPTIONS = ProtectOptions()
DEFAULT_SKY_COLOUR_OPTIONS = SkyColourOptions()
DEFAULT_CORE_FILL_OPTIONS = CoreFillOptions()
DEFAULT_SPIKE_OPTIONS = SpikeOptions()
DEFAULT_REMNANT_OPTIONS = RemnantOptions()
DEFAULT_LARGE_STAR_OPTIONS = LargeStarOptions()
# how far outside [0, 1] data that skips the stretch may lie (float rounding, a little
# resampling overshoot): a quarter of an 8-bit step
UNIT_RANGE_TOLERANCE = 1e-3


@dataclass
class FrameProducts:
    """Everything computed for one frame (arrays ``(C, H, W)`` / ``(1, H, W)`` float32)."""

    starless: np.ndarray  # input units
    stars: np.ndarray  # input units: original - starless (linear) or unscreen form (stretched)
    mask: np.ndarray  # (1, H, W) stretched space, 1 = star
    enhanced: np.ndarray  # stretched space
    stretched: np.ndarray  # the network's input, for previews
    starless_stretched: np.ndarray  # the network's output, for previews
    stretch: StretchParams | None
    normalization: Normalization | None
    timings_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)

    def provenance_params(self) -> dict[str, Any]:
        """The data-dependent parameters (stretch, normalisation) for the provenance record."""
        return {
            "stretch_params": self.stretch.to_dict() if self.stretch else None,
            "normalization": self.normalization.to_dict() if self.normalization else None,
        }


def needs_stretch(is_linear: bool, mode: str) -> bool:
    """Whether the frame goes through the auto-stretch before the network."""
    if mode not in STRETCH_MODES:
        raise ValueError(f"stretch mode must be one of {STRETCH_MODES}, got {mode!r}")
    return mode == "always" or (mode == "auto" and is_linear)


def stretch_for_network(
    image: np.ndarray, is_linear: bool, stretch: StretchOptions = DEFAULT_STRETCH_OPTIONS
) -> tuple[np.ndarray, np.ndarray, StretchParams | None, Normalization | None]:
    """What the network sees: ``(stretched, x01, params, normalization)``.

    Linear data (per ``stretch.mode``) is normalised to [0, 1] (``x01``) and
    auto-stretched; anything else is only clipped to [0, 1] and ``params`` /
    ``normalization`` are None. Data that skips the stretch must already be in
    [0, 1] (within ``UNIT_RANGE_TOLERANCE``): a linear frame in ADU would clip to a
    white frame, so it is a ValueError naming the fix.
    """
    if not needs_stretch(is_linear, stretch.mode):
        lo, hi = float(image.min()), float(image.max())
        if lo < -UNIT_RANGE_TOLERANCE or hi > 1.0 + UNIT_RANGE_TOLERANCE:
            skips = "skips" if stretch.mode == "never" else "skips for stretched data"
            use = "auto or always" if stretch.mode == "never" else "always"
            raise ValueError(
                f"data in [{lo:.6g}, {hi:.6g}], outside [0, 1], needs the stretch, which "
                f"stretch.mode {stretch.mode} {skips}: use stretch.mode {use}"
            )
        x01 = np.clip(image, 0.0, 1.0).astype(np.float32)
        return x01, x01, None, None
    x01, norm = normalize_linear(image)
    params = fit_auto_stretch(
        x01,
        shadows_clip_mad=stretch.shadows_clip_mad,
        target_background=stretch.target_background,
        linked=stretch.linked,
    )
    return apply_stretch(x01, params), x01, params, norm


def remove_and_finish(
    model: torch.nn.Module,
    stretched: np.ndarray,
    *,
    tiles: TileOptions = DEFAULT_TILE_OPTIONS,
    protect: ProtectOptions = DEFAULT_PROTECT_OPTIONS,
    sky_colour: SkyColourOptions = DEFAULT_SKY_COLOUR_OPTIONS,
    core_fill: CoreFillOptions = DEFAULT_CORE_FILL_OPTIONS,
    spikes: SpikeOptions = DEFAULT_SPIKE_OPTIONS,
    remnants: RemnantOptions = DEFAULT_REMNANT_OPTIONS,
    large_stars: LargeStarOptions = DEFAULT_LARGE_STAR_OPTIONS,
    figures: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The starless image users get for a stretched ``(C, H, W)`` frame in [0, 1]: the
    network (:func:`remove_stars`), the large stars at half resolution when
    ``large_stars.enabled``, then the steps after the network
    (:func:`starnet_core.masks.finish_starless`); what those steps measure goes to
    ``figures`` when given. :func:`process_array` and the quality benchmark call this."""
    if not large_stars.enabled:
        net = remove_stars(model, stretched, tiles, progress=progress)
    else:
        # one progress count for both passes: the half-resolution one as a quarter more
        # tiles (a quarter of the pixels), so the bar does not sit at its end meanwhile
        seen = [0, 0, 0]  # the full pass's total, the quarter added, the half pass ended

        def full(done: int, total: int) -> None:
            seen[:2] = [total, -(-total // 4)]
            if progress is not None:
                progress(done, total + seen[1])

        def half(done: int, total: int) -> None:
            seen[2] = int(done >= total)
            if progress is not None:
                progress(seen[0] + seen[1] * done // max(total, 1), seen[0] + seen[1])

        net = remove_stars(model, stretched, tiles, progress=full)
        net, taken = remove_large_stars(model, stretched, net, tiles, large_stars, progress=half)
        if progress is not None and seen[0] and not seen[2]:  # skipped: a small frame
            progress(seen[0] + seen[1], seen[0] + seen[1])
        if figures is not None:
            figures["large_stars_taken"] = float(taken)
    return finish_starless(
        stretched, net, protect, sky_colour, core_fill, spikes, figures, remnants
    )


def process_array(
    model: torch.nn.Module,
    image: np.ndarray,
    *,
    is_linear: bool,
    stretch: StretchOptions = DEFAULT_STRETCH_OPTIONS,
    tiles: TileOptions = DEFAULT_TILE_OPTIONS,
    mask: MaskOptions = DEFAULT_MASK_OPTIONS,
    protect: ProtectOptions = DEFAULT_PROTECT_OPTIONS,
    sky_colour: SkyColourOptions = DEFAULT_SKY_COLOUR_OPTIONS,
    core_fill: CoreFillOptions = DEFAULT_CORE_FILL_OPTIONS,
    spikes: SpikeOptions = DEFAULT_SPIKE_OPTIONS,
    remnants: RemnantOptions = DEFAULT_REMNANT_OPTIONS,
    large_stars: LargeStarOptions = DEFAULT_LARGE_STAR_OPTIONS,
    enhance_strength: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> FrameProducts:
    """Remove the stars from ``image`` and derive the star layer, mask and enhancement."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C in {{1, 3}}, got shape {image.shape}")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    stretched, x01, params, norm = stretch_for_network(image, is_linear, stretch)
    timings["stretch"] = time.perf_counter() - t

    t = time.perf_counter()
    steps: dict[str, float] = {}  # what the steps after the network measured
    starless_s = remove_and_finish(
        model,
        stretched,
        tiles=tiles,
        protect=protect,
        sky_colour=sky_colour,
        core_fill=core_fill,
        spikes=spikes,
        remnants=remnants,
        large_stars=large_stars,
        figures=steps,
        progress=progress,
    )
    timings["remove_stars"] = time.perf_counter() - t

    t = time.perf_counter()
    if params is not None and norm is not None:
        lin01 = restore_clipped(x01, invert_stretch(starless_s, params), params)
        starless = denormalize_linear(lin01, norm)
        for c in range(image.shape[0]):  # below the range (a dead pixel, a sentinel): as it was
            low = image[c] < norm.offset
            if low.any():
                starless[c][low] = image[c][low]
        # linear light adds: the star layer is the plain difference, in the input's units
        stars = star_layer(image, starless)
    else:
        starless = starless_s
        stars = unscreen_star_layer(stretched, starless_s)
    display_stars = star_layer(stretched, starless_s)
    star_m = star_mask(display_stars, mask, image_noise(stretched))
    enhanced = enhance(stretched, starless_s, star_m, enhance_strength)
    timings["products"] = time.perf_counter() - t
    figures = {
        "height_px": float(image.shape[1]),
        "width_px": float(image.shape[2]),
        "channels": float(image.shape[0]),
        "star_layer_mean": float(display_stars.mean()),
        "star_area_fraction": float((star_m > 0.5).mean()),
        **steps,
    }
    return FrameProducts(
        starless=starless.astype(np.float32),
        stars=stars,
        mask=star_m,
        enhanced=enhanced,
        stretched=stretched,
        starless_stretched=starless_s,
        stretch=params,
        normalization=norm,
        timings_s=timings,
        figures=figures,
    )


def preview_strip(
    products: FrameProducts, max_px: int = 256, *, bottom_up: bool = False
) -> np.ndarray:
    """(3, h, 3w) float32 thumbnail: original | starless | mask, stretched, for a quick look.

    Its row 0 is the top row, as in every picture format. ``bottom_up``: the frame's row
    0 is its bottom row (a FITS frame, as FITS viewers show it), so the strip is flipped
    top to bottom to look as the frame does there. The products are not changed.
    """
    s = products.stretched
    step = max(1, int(np.ceil(max(s.shape[1:]) / max_px)))

    def rgb(a: np.ndarray) -> np.ndarray:
        a = a[:, ::step, ::step]
        if bottom_up:
            a = a[:, ::-1]
        return np.repeat(a, 3, 0) if a.shape[0] == 1 else a

    return np.concatenate(
        [rgb(s), rgb(products.starless_stretched), rgb(products.mask)], axis=2
    ).astype(np.float32)
