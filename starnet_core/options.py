"""Option classes of the science core: plain validated dataclasses, no torch.

They are the defaults of the config sections ``inference``, ``mask``, ``stretch``,
``protect``, ``sky_colour``, ``core_fill``, ``spikes``, ``remnants`` and ``large_stars``
(``flows.settings`` takes its defaults from here), so importing the settings does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "STRETCH_MODES",
    "CoreFillOptions",
    "LargeStarOptions",
    "MAX_TILE_PX",
    "MaskOptions",
    "ProtectOptions",
    "RemnantOptions",
    "SkyColourOptions",
    "SpikeOptions",
    "StretchOptions",
    "TileOptions",
    "check_int",
    "validate_tile_params",
]


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# The largest tile_px: one 8192 px tile of 3 channels is 0.8 GB of float32 input alone,
# and a network's activations are many times that. Larger values are taken for typos
# (51200 for 512) and refused before anything runs, not left to run out of memory on the
# first frame large enough to use them.
MAX_TILE_PX = 8192


def validate_tile_params(tile_px: int, overlap_px: int, batch_size: int) -> None:
    """Raise ``ValueError`` naming the parameter unless the tiling parameters are usable.

    ``1 <= tile_px <= MAX_TILE_PX``, ``batch_size >= 1``, ``overlap_px >= 0`` ints and
    ``overlap_px < tile_px / 2`` (so the two ramps of a tile never meet).
    """
    check_int("tile_px", tile_px, 1)
    if tile_px > MAX_TILE_PX:
        raise ValueError(
            f"tile_px must be <= {MAX_TILE_PX} px, got {tile_px}: a tile that size "
            "would not fit in memory"
        )
    check_int("overlap_px", overlap_px, 0)
    check_int("batch_size", batch_size, 1)
    if 2 * overlap_px >= tile_px:
        raise ValueError(
            f"overlap_px must be < tile_px / 2, got overlap_px={overlap_px} with tile_px={tile_px}"
        )


ENSEMBLE_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class TileOptions:
    """How :func:`remove_stars` runs the network; the config section ``inference`` uses
    the same names.

    Attributes:
        tile_px: tile side in pixels of the input frame (rounded up to what the model needs).
        overlap_px: overlap between tiles and pad around the frame, ``< tile_px / 2``.
        batch_size: tiles per forward pass.
        passes: how many times the network runs, each pass on the previous pass's
            output (StarNet's advice for busy fields: 2 or 3). Measured on model 0.5.0:
            2 passes help dense fields (+1.4-1.5 dB) but cost the real pairs' background
            5.6 dB (BENCHMARKS.md).
        upsample: upsample each tile 2x (bicubic) before the network and area-average
            back, so tiny undersampled stars look like the stars it was trained on.
            Costs 4x compute and 4x device memory per tile.
        ensemble: geometric self-ensemble: average the network over this many of the
            8 flips/transposes of each tile (1, 2, 4 or 8; 1 = off). Costs that many
            times the compute; measured on model 0.5.0 in BENCHMARKS.md.
        mixed_precision: autocast (bfloat16/float16) on CUDA.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        lattice_px: period in px of the faint pattern fixed to the pixel grid that the
            network leaves in its output, measured on each frame and taken out
            (:func:`starnet_core.inference.remove_fixed_pattern`; 0 = off, the
            default). 4 px for the models so far (``python -m benchmarks.lattice``);
            off by default because it cost the held-out residual p95 0.003 for +0.002
            dB (BENCHMARKS.md, fifteenth session). One pattern per frame: exact for
            frames whose sides are multiples of 4 px (see remove_fixed_pattern).
    """

    # The net sees ~200 px of context. Tiled against untiled, model 0.10.0, on a 1024 px
    # 4 x 4 mosaic of make_pair(rng, 256, jpeg=False)[0], rng = default_rng(11), max
    # |difference| in tile bands / elsewhere, seam_stats(network_fn(model, img), img,
    # tile_px=T, overlap_px=O, reference="untiled") (raw network, CPU, one thread):
    # 512/64 0.106 / 0.079; 512/128 0.129 / 0.038; 512/32 0.28 / 0.22; 256/32 0.40 /
    # 0.20. After the whole pipeline (process_array, 512/64 against one 1152 px tile):
    # background (star layer < 0.02) max 0.053, star pixels max 0.16 (p99 0.023).
    tile_px: int = 512
    overlap_px: int = 64
    batch_size: int = 4
    passes: int = 1
    upsample: bool = False
    ensemble: int = 1
    mixed_precision: bool = True
    device: str = "auto"
    lattice_px: int = 0

    def __post_init__(self) -> None:
        validate_tile_params(self.tile_px, self.overlap_px, self.batch_size)
        lat = self.lattice_px
        if isinstance(lat, bool) or not isinstance(lat, int) or lat < 0 or lat == 1:
            raise ValueError(f"lattice_px must be 0 (off) or an int >= 2, got {lat!r}")
        if isinstance(self.passes, bool) or not isinstance(self.passes, int) or self.passes < 1:
            raise ValueError(f"passes must be an int >= 1, got {self.passes!r}")
        if isinstance(self.ensemble, bool) or self.ensemble not in ENSEMBLE_SIZES:
            raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES}, got {self.ensemble!r}")
        for name in ("upsample", "mixed_precision"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a str, got {self.device!r}")


@dataclass(frozen=True)
class MaskOptions:
    """Star mask from a star layer (the config section ``mask`` uses the same names).

    Attributes:
        threshold: star-layer level (max over channels) above which a pixel is a star.
        dilate_px: radius of the disc the binary mask is dilated by (0: none).
        feather_px: Gaussian sigma of the final feathering, px (0: hard edges).
        noise_sigmas: the threshold is at least the layer's median plus this many robust
            standard deviations (MAD) of it (0, the default: off). Made for a network
            that smoothed a grainy plate's grain all over; on a dense field, where stars
            are most of the layer, it raised the threshold over half the stars (recall of
            the truth's mask 0.46 on the held-out scenes, 0.89 without), and
            ``signal_sigmas`` does its work without that cost.
        signal_sigmas: where the image's pixel noise is known (the pipeline passes it), a
            star pixel's neighbourhood must also rise this many noise sigmas above the
            starless image: the star layer smoothed by a Gaussian of 1 px sigma, against
            the noise as that smoothing leaves it. The specks of grain a network takes
            from a noisy frame are not stars, nor is grain it smoothed all over (0: off).
    """

    threshold: float = 0.04
    dilate_px: int = 2
    feather_px: float = 2.0
    noise_sigmas: float = 0.0
    signal_sigmas: float = 3.0

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, int | float) and 0.0 <= self.threshold < 1.0):
            raise ValueError(f"threshold must be a number in [0, 1), got {self.threshold!r}")
        if isinstance(self.dilate_px, bool) or not isinstance(self.dilate_px, int):
            raise ValueError(f"dilate_px must be an int, got {self.dilate_px!r}")
        if self.dilate_px < 0:
            raise ValueError(f"dilate_px must be >= 0, got {self.dilate_px}")
        if not (isinstance(self.feather_px, int | float) and 0.0 <= self.feather_px < np.inf):
            raise ValueError(f"feather_px must be a finite number >= 0, got {self.feather_px!r}")
        if not (isinstance(self.noise_sigmas, int | float) and 0.0 <= self.noise_sigmas < np.inf):
            raise ValueError(
                f"noise_sigmas must be a finite number >= 0, got {self.noise_sigmas!r}"
            )
        if not (isinstance(self.signal_sigmas, int | float) and 0.0 <= self.signal_sigmas < np.inf):
            raise ValueError(
                f"signal_sigmas must be a finite number >= 0, got {self.signal_sigmas!r}"
            )


STRETCH_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class StretchOptions:
    """When and how linear data is auto-stretched (config section ``stretch``)."""

    mode: str = "auto"  # auto: linear inputs only | always | never
    shadows_clip_mad: float = -2.8
    target_background: float = 0.25
    linked: bool = True

    def __post_init__(self) -> None:
        if self.mode not in STRETCH_MODES:
            raise ValueError(f"stretch mode must be one of {STRETCH_MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class ProtectOptions:
    """Background protection (config section ``protect``): keep the input wherever the
    network's own star layer says there is no star.

    ``starless = original - mask * (original - network output)`` with ``mask`` the
    star mask of the network's star layer at these settings. The network's small
    changes far from any star (texture, colour) are undone; stars are untouched.
    Measured on the held-out benchmark (model 0.1.0): whole-image PSNR 33.9 -> 34.8 dB,
    background PSNR up in 7 of the 8 scenes that have background (the 8th unchanged),
    real pairs' background PSNR 39.4 -> 41.2 dB.

    ``signal_sigmas`` > 0 also puts the input back where the network's change does not
    stand that many of the image's pixel-noise sigmas out (:class:`MaskOptions`): the
    specks of grain a network takes from a noisy frame. Off by default: at 4, model
    0.8.0's real pairs' background rose 43.9 -> 45.0 dB, but the faint stars of dense
    fields, each too faint to stand out, came back (residual p95 1.18 -> 1.33).
    """

    enabled: bool = True
    threshold: float = 0.02
    dilate_px: int = 2
    feather_px: float = 1.5
    signal_sigmas: float = 0.0  # MaskOptions.signal_sigmas for the protection mask (0: off)

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        _ = self.mask  # the mask's own checks, on the fields it takes from here

    @property
    def mask(self) -> MaskOptions:
        # the fixed threshold, no layer-spread rule: protection was measured that way
        return MaskOptions(
            self.threshold,
            self.dilate_px,
            self.feather_px,
            noise_sigmas=0.0,
            signal_sigmas=self.signal_sigmas,
        )


@dataclass(frozen=True)
class SkyColourOptions:
    """The sky's colour where stars were (config section ``sky_colour``).

    Where a star dominates a pixel the input holds little of the sky's colour, and
    none where the core is clipped white in every channel. The network fills such
    pixels with about the right brightness but pulled toward grey (model 0.5.0 on
    coloured nebulae: a grey square per saturated star, greyish discs elsewhere).
    The fill keeps the network's luminance (the channel mean) and takes its chroma
    from the nearest sky, see :func:`starnet_core.masks.fill_sky_colour`. It weighs
    1 on the clipped cores the network took (a clipped core it kept, such as a galaxy's
    nucleus white after the stretch, keeps its colour) and, elsewhere, ramps from 0 to 1
    as the star's share of the pixel's light (``1 - starless / original`` in luminance)
    goes from ``star_share_low`` to ``star_share_high``.

    Attributes:
        enabled: False leaves the network's colours as they are.
        clip_level: a pixel is clipped when every channel of the input is >= this.
        dilate_px: the clipped area is grown by a disc of this radius (the ring around
            a clipped core is as colourless in the input).
        feather_px: Gaussian sigma of the clipped area's outward edge, px (0: hard).
        star_share_low, star_share_high: the ramp for unclipped star pixels
            (``star_share_low >= 1``: clipped cores only).
        sky_threshold: sky = pixels whose star layer (input - starless, max over
            channels) is below this; the chroma is averaged over them.
    """

    enabled: bool = True
    clip_level: float = 0.95
    dilate_px: int = 2
    feather_px: float = 1.0
    star_share_low: float = 0.3
    star_share_high: float = 0.8
    sky_threshold: float = 0.02

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        _check_range("clip_level", self.clip_level, 0.5, 1.0)
        _check_range("star_share_low", self.star_share_low, 0.0, 1.0)
        _check_range("star_share_high", self.star_share_high, 0.0, 1.0)
        if self.star_share_high <= self.star_share_low and self.star_share_low < 1.0:
            raise ValueError(
                f"star_share_high must be > star_share_low, got {self.star_share_high} <= "
                f"{self.star_share_low}"
            )
        _check_range("sky_threshold", self.sky_threshold, 0.0, 1.0)
        if self.sky_threshold == 0.0:
            raise ValueError("sky_threshold must be > 0, got 0")
        check_int("dilate_px", self.dilate_px, 0)
        if not (isinstance(self.feather_px, int | float) and 0.0 <= self.feather_px < np.inf):
            raise ValueError(f"feather_px must be a finite number >= 0, got {self.feather_px!r}")


@dataclass(frozen=True)
class CoreFillOptions:
    """Burnt-out stars filled from their rim (config section ``core_fill``).

    Over a star whose core is clipped white the input holds no sky at all, and the
    network's fill of the core and of the halo around it is its guess: model 0.5.0
    leaves a soft glow there, brighter than the sky around (real_2's double star,
    real_1's brightest star); over a near-white core, as the bright stars of a
    stretched dense field have, it leaves a thin ring. This step takes each white or
    near-white core (every channel at least ``clip_level``) the network did
    remove (its star layer, averaged over the core, at least ``core_drop``), grows it
    through the pixels where the star layer (luminance) stays above
    ``layer_threshold``, no further than ``reach`` core radii plus ``reach_px`` from
    the core, then by ``grow_px``; inside that footprint the starless image is
    replaced by a smooth interpolation (push-pull) of the starless image around it,
    see :func:`starnet_core.masks.fill_burnt_stars`, with noise at the grain of the
    starless image around the stars added (``grain``), so that the fill does not show
    as a smooth disc. Cores the network kept (a clipped nebula or galaxy core) are left
    alone.

    Attributes:
        enabled: False leaves the network's fill as it is.
        clip_level: a pixel belongs to a core when every channel of the input is >= this:
            white (clipped) or near white. 0.95 (clipped only) until the eleventh session;
            0.75 also takes the near-white cores of bright stars in stretched dense
            fields, where the network leaves rings and glow (held-out PSNR 32.45 ->
            32.91 dB, dense-2 and dense-3 +2.7 dB each; real pairs 30.45 -> 30.54;
            chosen on development seeds, BENCHMARKS.md).
        core_drop: a core counts when the network took at least this much
            (stretched units, mean over the core) away from it.
        layer_threshold: the footprint follows the star layer while it is above this.
        reach: the footprint ends this many core radii (of the disc of the core's
            area) from the core ...
        reach_px: ... plus this many pixels.
        grow_px: the footprint is then grown by this many pixels.
        grain: add Gaussian noise at the starless image's own pixel noise (robust,
            per channel, measured on a ring around the footprints) to the fill;
            seeded, so a frame always gives the same result. The remnants step
            (:class:`RemnantOptions`, on by default since the sixteenth session) runs
            later and smooths most of this grain away again wherever the star layer is
            above its threshold, which covers most of the fill.
    """

    enabled: bool = True
    clip_level: float = 0.75
    core_drop: float = 0.25
    layer_threshold: float = 0.3
    reach: float = 2.0
    reach_px: int = 6
    grow_px: int = 1
    grain: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "grain"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        _check_range("clip_level", self.clip_level, 0.5, 1.0)
        _check_range("core_drop", self.core_drop, 0.0, 1.0)
        _check_range("layer_threshold", self.layer_threshold, 0.0, 1.0)
        if self.layer_threshold == 0.0:
            raise ValueError("layer_threshold must be > 0, got 0")
        _check_range("reach", self.reach, 0.0, 100.0)
        check_int("reach_px", self.reach_px, 0)
        check_int("grow_px", self.grow_px, 0)


@dataclass(frozen=True)
class SpikeOptions:
    """Diffraction spikes the network left, taken out along each star's arms (config
    section ``spikes``; method in :mod:`starnet_core.spikes`).

    Every star of a frame has its spikes at the same two angles (the telescope's
    spider), on both sides of the star: the step finds the frame's angle from its
    brightest stars and, only when they show it clearly, lowers the thin lines that
    run symmetrically through stars at that angle to the sky beside them. On
    development scenes it changes nothing on frames without spikes.

    Attributes:
        enabled: False leaves the network's output as it is.
        min_score: the frame's spike angle must stand this many robust sigmas above
            the other angles (held-out scenes without spikes reach up to 4.8, those
            with clear spikes 6.4-21.5, real_1 17; BENCHMARKS.md, "Thirteenth
            session").
        star_threshold: stars are the components of the star layer (luminance,
            stretched units) above this.
        max_stars: the angle is measured on at most this many of the brightest stars.
        ray_px: rays are sampled this far beyond each star's core.
        detect_sigma: a spike pixel's line excess is above this many robust sigmas of
            the frame's line excess ...
        line_ratio: ... and this many times the excess across (a blob's is the same
            both ways).
        min_arm_px: a star's arms must reach this far beyond its core radius on both
            sides (galaxies and filaments that touch a star on one side do not).
        gap_px: gaps of up to this many pixels along an arm are bridged.
        core_threshold: arms are lowered up to where the star layer exceeds this (the
            star's core, which the network and the rim fill take care of); 0.1 (the
            star threshold) until the fourteenth session, which left the arms' inner
            ends, in the star's component, to the network; 0.3, the rim fill's own
            footprint threshold, takes them (development scenes +0.015 / +0.019 dB,
            BENCHMARKS.md, "Fourteenth session").
    """

    enabled: bool = True
    min_score: float = 6.0
    star_threshold: float = 0.1
    max_stars: int = 40
    ray_px: int = 20
    detect_sigma: float = 3.0
    line_ratio: float = 2.0
    min_arm_px: int = 8
    gap_px: int = 2
    core_threshold: float = 0.3

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        _check_range("min_score", self.min_score, 0.0, 1000.0)
        _check_range("star_threshold", self.star_threshold, 0.0, 1.0)
        if self.star_threshold == 0.0:
            raise ValueError("star_threshold must be > 0, got 0")
        check_int("max_stars", self.max_stars, 1)
        check_int("ray_px", self.ray_px, 4)
        _check_range("detect_sigma", self.detect_sigma, 0.0, 100.0)
        _check_range("line_ratio", self.line_ratio, 0.0, 100.0)
        check_int("min_arm_px", self.min_arm_px, 0)
        check_int("gap_px", self.gap_px, 0)
        _check_range("core_threshold", self.core_threshold, 0.0, 1.0)
        if self.core_threshold == 0.0:
            raise ValueError("core_threshold must be > 0, got 0")


@dataclass(frozen=True)
class RemnantOptions:
    """What is left of the stars inside their footprints, smoothed away (config section
    ``remnants``; method :func:`starnet_core.masks.smooth_remnants`).

    Where the network took a star out, its fill carries the star's faint remnants:
    pixel-scale bumps where faint stars were, the lines of spikes, the output's 4 px
    grid. Under a star the input holds little of the sky's own grain (the star's light
    and noise cover it), so the fill cannot recover that grain either, and a smooth fill
    is the better estimate of the sky there. This step blurs the finished starless image
    by a Gaussian of ``sigma_px`` where the star layer (brightest channel) is above
    ``threshold``, grown by ``dilate_px`` and feathered by ``feather_px``; everything
    else is left as it is. It runs last, after the spikes step.

    Attributes:
        enabled: False leaves the starless image as the steps before it made it.
        threshold: footprints are where the star layer (stretched units, brightest
            channel) is above this. 0.3, with ``sigma_px`` 1, was chosen on the
            development scenes (PSNR +0.12 dB, galaxies kept -0.004; lower thresholds
            and wider blurs gained more but blurred kept galaxies more: BENCHMARKS.md,
            "Sixteenth session").
        sigma_px: the Gaussian's sigma.
        dilate_px: the footprints are grown by this many pixels ...
        feather_px: ... and their edge blurred by a Gaussian of this sigma.
    """

    enabled: bool = True
    threshold: float = 0.3
    sigma_px: float = 1.0
    dilate_px: int = 1
    feather_px: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        _check_range("threshold", self.threshold, 0.0, 1.0)
        if self.threshold == 0.0:
            raise ValueError("threshold must be > 0, got 0")
        _check_range("sigma_px", self.sigma_px, 0.0, 20.0)
        if self.sigma_px == 0.0:
            raise ValueError("sigma_px must be > 0, got 0")
        check_int("dilate_px", self.dilate_px, 0)
        _check_range("feather_px", self.feather_px, 0.0, 20.0)


@dataclass(frozen=True)
class LargeStarOptions:
    """Stars too large for the network, taken at half resolution (config section
    ``large_stars``, ``starnet transform --large-stars``; method
    :mod:`starnet_core.large_stars`).

    The network runs once more on the frame at half resolution; where the
    full-resolution result kept a large bright blob that the half-resolution one took,
    and the full-resolution network took a star's halo around it, the blob is taken
    away, never below the sky around it. Costs a quarter more network time. Off by
    default: on the real pairs it gains 0.11 dB and it takes the blobs big plate stars
    leave, but on the development scenes it takes galaxies in dense star fields the
    network keeps (-0.08 / -0.12 dB; BENCHMARKS.md, "Twenty-fifth session").

    Attributes:
        enabled: run the half-resolution pass.
        signal_sigmas: a candidate is where the full-resolution starless stands this many
            pixel-noise sigmas above the half-resolution one (smoothed, channel mean).
        min_area_px: ... over at least this many pixels ...
        core_level: ... holding an input pixel at least this bright (any channel) ...
        ring_sigmas: ... with the full-resolution star layer's median on a ring 3-6 px
            around it at least this many pixel-noise sigmas (a star's halo taken).
        grow_px: the result is not let below the sky interpolated from around the chosen
            regions grown by this many pixels.
    """

    enabled: bool = False
    signal_sigmas: float = 3.0
    min_area_px: int = 40
    core_level: float = 0.85
    ring_sigmas: float = 3.0
    grow_px: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"enabled must be a bool, got {self.enabled!r}")
        _check_range("signal_sigmas", self.signal_sigmas, 0.0, 1000.0)
        check_int("min_area_px", self.min_area_px, 1)
        _check_range("core_level", self.core_level, 0.0, 1.0)
        _check_range("ring_sigmas", self.ring_sigmas, 0.0, 1000.0)
        check_int("grow_px", self.grow_px, 0)


def _check_range(name: str, value: object, low: float, high: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.floating)
        or not low <= value <= high
    ):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
