"""Seeded synthetic star fields: (original, starless) pairs that differ only by the stars.

There is no public set of real paired images, so the model learns from these.
Everything is rendered in linear units on a canvas larger than the crop (so
stars and halos from outside the crop reach in), then the camera is applied
(shot and read noise, saturation), then ONE non-linear stretch fitted on the
original is applied to both images, then both are quantised. The starless
truth keeps what a retoucher's starless keeps: unresolved stars below the
noise, and star light that is smooth on a star's scale up to a faint level
(:func:`_star_glow`).

Arrays: returned pairs are ``(3, S, S)`` float32 in [0, 1]; mono scenes have
three equal channels (the model treats mono as grey RGB).

Diversity is what makes a model trained here work on real images: emission /
reflection / dust / faint-flux backgrounds, small galaxies and compact knots
that must stay, Moffat + Gaussian PSFs with wide halos, undersampled to bloated
stars, elongation, diffraction spikes, power-law brightness from the noise
floor to saturated cores, star colours, sparse to Milky-Way-dense fields, and
the stretches users apply.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy import ndimage

from starnet_core.stretch import apply_stretch, fit_auto_stretch, mtf

Array = np.ndarray

# Smooth star glow the starless truth keeps, at most this many noise sigmas (see
# :func:`_star_glow`); training runs may choose another (``TrainConfig.glow_cap_sigma``).
# 1.5 since model 0.5.0: runs trained with 3 left a glow over clusters where hand-made
# starless images are flat, and 1.5 did better on the real pairs (BENCHMARKS.md).
DEFAULT_GLOW_CAP = 1.5


def check_glow_cap(value: float, name: str = "glow_cap") -> float:
    """``value`` as a float if it is a usable glow cap (finite, >= 0 noise sigmas), else
    ``ValueError`` naming it as ``name`` (the option a user typed, e.g. ``--glow-cap``)."""
    if not (isinstance(value, int | float | np.floating) and np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be 0 or more noise sigmas (finite), got {value!r}")
    return float(value)


MAX_RATE = 20.0  # the most a rate field of Mix multiplies its default count by


@dataclass(frozen=True)
class Mix:
    """How often the generator draws its harder cases, and how hard: what a training run
    may shift towards a weakness (``starnet train --spike-share ...``).

    The defaults are the generator's own mix: the held-out benchmark scenes are
    drawn with them, and a default mix draws exactly the scenes it always drew
    (chromatic spikes, chromatic PSFs, Bayer scenes, close star groups, colour casts and
    large galaxies draw their numbers only when their share is above 0). Any other mix draws other
    scenes from a seed: a share moves a threshold (a rate, the mean of a count), and
    what the case it lets in draws (a spike's parameters, a nucleus, a galaxy) shifts
    every later draw.
    Chromatic PSFs widen or narrow red and blue cores (0.8-1.3x), so they also
    shift each star's overall colour a little.
    """

    dense_share: float = 0.25  # Milky-Way-dense crops (800-4000 stars per 128 px)
    spike_share: float = 0.3  # scenes whose stars carry diffraction spikes
    spike_amp: tuple[float, float] = (0.003, 0.1)  # spike strength / star peak, log-uniform
    # spike fall-off exponent along the arm: low = long arms even on faint stars
    spike_decay: tuple[float, float] = (0.9, 1.6)
    # spiked scenes whose spikes are chromatic: each colour diffracts at its own scale, so
    # arms break into coloured segments (refractor-free reflectors, as in real_1's frame)
    chromatic_spike_share: float = 0.0
    nucleus_share: float = 0.3  # small galaxies with a bright, nearly star-sharp nucleus
    # scenes whose stars' cores and halos differ in width and strength by colour, so a
    # star's wings are not the colour of its core (coloured rings of real optics)
    chromatic_psf_share: float = 0.0
    # colour scenes shot with a one-shot-colour (Bayer) camera and demosaiced: the
    # per-pixel colour zipper on sharp stars and spikes (real_1's spikes carry it)
    bayer_share: float = 0.0
    # crops with small galaxies, and how many they hold (x the default mean of 2 per
    # 176 px square): compact galaxies beside stars of their size are what the background
    # figure loses most (held-out sparse-2)
    galaxy_share: float = 0.7
    galaxy_rate: float = 1.0
    # crops with one large galaxy (10-40 px effective radius: an exponential disc, a
    # bulge, logarithmic spiral arms in half of them), kept like the small ones: the
    # large galaxies of a galaxy field (SDSS r in the real frames, where model 0.5.0
    # takes out a face-on spiral and a round one about 40 px across)
    large_galaxy_share: float = 0.0
    # crops with extra bright close doubles and small groups (2-5 stars a few FWHM apart,
    # inside one halo): what a net that keeps compact galaxies must still take for stars
    # (run G kept real_2's two saturated stars 13 px apart as a galaxy)
    group_share: float = 0.0
    # colour crops given a colour cast after the stretch (per-channel curves that keep
    # black and white, then a saturation boost), in both images: processed frames' skies
    # are red, magenta or green (real_0, real_1), where the generator's stretched sky is
    # near grey
    cast_share: float = 0.0
    # headroom of the camera's clip level over the generator's own (which is tied to the
    # background's bright end, so bright stars burn out over wide cores), log-uniform per
    # scene; drawn only when it is not (1, 1). Real 8-bit frames' burnt-out stars have
    # small clipped cores inside halos 3-5 core radii wide, the default's about 2; 10x
    # headroom gives 2.9 (benchmarks.diagnose, "burnt-out stars' halos"; BENCHMARKS.md)
    clip_headroom: tuple[float, float] = (1.0, 1.0)
    # how many very bright stars (saturated, bloated, with their own coloured glow) the
    # crops that have them hold, x the default mean of 0.6 per 128 px square: the real
    # pairs hold 3-20 star blobs over 10 px in radius per 256 px frame, the default mix
    # 2.2 on average (BENCHMARKS.md, "Sixteenth session")
    bright_rate: float = 1.0

    # the fields that are not shares: (low, high) ranges, and rates (a count's multiplier)
    RANGES: ClassVar[tuple[str, ...]] = ("spike_amp", "spike_decay", "clip_headroom")
    RATES: ClassVar[tuple[str, ...]] = ("galaxy_rate", "bright_rate")

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self) if f.name not in self.RANGES):
            value = getattr(self, name)
            number = not isinstance(value, bool) and isinstance(
                value, int | float | np.integer | np.floating
            )
            if name in self.RATES:
                if not (number and 0.0 < value <= MAX_RATE):
                    raise ValueError(f"{name} must be a rate in (0, {MAX_RATE:g}], got {value!r}")
            elif not (number and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))  # numpy scalars too: JSON-safe
        for name in self.RANGES:
            value = getattr(self, name)
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be two numbers (low high), got {value!r}") from None
            if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo <= hi):
                raise ValueError(f"{name} must be 0 < low <= high, got {value!r}")
            object.__setattr__(self, name, (lo, hi))


DEFAULT_MIX = Mix()
# Named mixes (``starnet train --scene-mix NAME``, ``benchmarks.quality --scene-mix NAME``).
# "hard" leans on what model 0.5.0 got wrong: long, chromatic spikes on faint stars (the
# crosses it left on real_1), star wings of another colour than the core (real_0's cyan
# rings), the colour zipper a Bayer camera's demosaicing leaves on sharp stars and spikes
# (real_1), nucleated galaxies as sharp as the stars beside them (part of the background
# figure's loss: 0.5.0 also takes out bright small galaxies of any shape, which
# ``galaxy_rate`` trains), and a few more dense fields.
MIXES: dict[str, Mix] = {
    "default": DEFAULT_MIX,
    "hard": Mix(
        dense_share=0.3,
        spike_share=0.5,
        spike_amp=(0.003, 0.3),
        spike_decay=(0.5, 1.6),
        chromatic_spike_share=0.5,
        nucleus_share=0.6,
        chromatic_psf_share=0.4,
        bayer_share=0.4,
    ),
    # every scene with one large galaxy (a galaxy field such as SDSS r in the real frames):
    # the held-out large-galaxy scenes of benchmarks.quality, reported apart
    "large-galaxies": Mix(large_galaxy_share=1.0),
}


@dataclass(frozen=True)
class Scene:
    """What a pair was made of (for benchmarks: per-star residual flux, galaxies kept)."""

    star_xy: Array  # (N, 2) float pixel positions in the crop (x, y)
    star_peak: Array  # (N,) linear peak above background, before saturation
    galaxy_xy: Array  # (M, 2)
    fwhm_px: float
    noise_sigma: float  # linear read+sky noise
    spikes: bool
    # (H, W) bool: where the galaxies and knots (what must stay) carry at least one noise
    # sigma of light; for a training term that guards them (None: not recorded)
    keep_mask: Array | None = None
    # (3,) x, y, effective radius (px) of the scene's large galaxy (``Mix.large_galaxy_share``;
    # None: the scene has none); its centre is in ``galaxy_xy`` too
    large_galaxy: Array | None = None
    # a Milky-Way-dense field (800-4000 stars per 128 px square; ``Mix.dense_share``)
    dense: bool = False


# Approximate RGB of stars by colour class (hot blue .. cool red), normalised to green.
_STAR_COLOURS = np.array(
    [
        [0.62, 0.75, 1.00],
        [0.80, 0.87, 1.00],
        [1.00, 1.00, 1.00],
        [1.00, 0.95, 0.82],
        [1.00, 0.85, 0.63],
        [1.00, 0.72, 0.45],
        [1.00, 0.60, 0.35],
    ],
    dtype=np.float32,
)
# Nebula tints: H-alpha red/magenta, OIII teal, reflection blue, dust brown, grey IFN.
_NEBULA_TINTS = np.array(
    [
        [1.00, 0.25, 0.35],
        [1.00, 0.35, 0.60],
        [0.30, 0.85, 0.90],
        [0.45, 0.65, 1.00],
        [0.85, 0.65, 0.45],
        [0.80, 0.80, 0.80],
    ],
    dtype=np.float32,
)
# Halo tints of bright stars: the blue/cyan and magenta rings of refractors and filters.
_HALO_TINTS = np.array(
    [[0.55, 0.75, 1.00], [0.45, 0.90, 1.00], [1.00, 0.55, 0.90], [1.00, 0.85, 0.55]],
    dtype=np.float32,
)


def _grid(n: int) -> tuple[Array, Array]:
    f = np.fft.fftfreq(n).astype(np.float32)
    return f[None, :], f[:, None]


def fractal_noise(rng: np.random.Generator, n: int, beta: float) -> Array:
    """(n, n) zero-mean unit-variance noise with power spectrum 1/f^beta."""
    fx, fy = _grid(n)
    k = np.sqrt(fx * fx + fy * fy)
    k[0, 0] = 1.0
    amp = k ** (-beta / 2)
    amp[0, 0] = 0.0
    phase = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    field = np.fft.ifft2(amp * phase).real.astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-12)


def _background(
    rng: np.random.Generator, n: int, sky: float, fwhm: float, mix: Mix
) -> tuple[Array, Array, Array, Array | None]:
    """Linear background (3, n, n) above sky, the positions of the compact structures
    that must stay (galaxies, knots), their light alone (n, n), channel mean, and the
    large galaxy's x, y, effective radius (None: no large galaxy drawn)."""
    bg = np.zeros((3, n, n), np.float32)
    keep_light = np.zeros((n, n), np.float32)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    # smooth gradient (light pollution, vignetting residue)
    g = rng.uniform(-1, 1, 2) * rng.uniform(0, 0.3) * sky
    bg += (g[0] * (xx - 0.5) + g[1] * (yy - 0.5))[None] * rng.uniform(0.6, 1.2, (3, 1, 1))
    kind = rng.choice(["empty", "faint", "nebula", "nebula", "nebula", "dust"])
    if kind != "empty":
        for _ in range(int(rng.integers(1, 3))):
            beta = rng.uniform(2.6, 4.2)
            f = fractal_noise(rng, n, beta)
            if rng.random() < 0.4:  # ridged noise: filaments and fronts
                f = 1.5 - np.abs(f)
            contrast = rng.uniform(0.5, 2.0)
            layer = np.exp(contrast * f).astype(np.float32)
            layer /= np.percentile(layer, 99)
            amp = sky * (rng.uniform(0.05, 0.5) if kind == "faint" else rng.uniform(0.5, 12.0))
            tint = _NEBULA_TINTS[rng.integers(len(_NEBULA_TINTS))] * rng.uniform(0.8, 1.2, 3)
            bg += amp * tint[:, None, None].astype(np.float32) * layer[None]
        if kind == "dust" or rng.random() < 0.4:  # dark lanes absorb what is behind them
            d = fractal_noise(rng, n, rng.uniform(2.5, 4.0))
            depth = rng.uniform(0.4, 0.95)
            trans = 1 - depth / (1 + np.exp(-(d - rng.uniform(-0.5, 1.0)) * rng.uniform(2, 6)))
            bg *= trans[None].astype(np.float32)
    keep = np.zeros((0, 2), np.float32)
    # small galaxies (Sersic-like, elliptical, extended) and compact knots: must stay
    # (at least 1.3x the star FWHM: what is as sharp as a star is a star to anyone)
    # as common as bright stars with halos, so round soft glows are not all stars to the net
    n_gal = (
        int(rng.poisson(2.0 * mix.galaxy_rate * (n / 176) ** 2))
        if rng.random() < mix.galaxy_share
        else 0
    )
    if n_gal:
        keep = rng.uniform(0, n, (n_gal, 2)).astype(np.float32)
        for x0, y0 in keep:
            re = max(rng.uniform(2.0, 9.0), 1.3 * fwhm)
            q = rng.uniform(0.25, 1.0)
            th = rng.uniform(0, np.pi)
            sersic_n = rng.uniform(0.6, 4.0)
            dx, dy = xx * n - x0, yy * n - y0
            u = dx * np.cos(th) + dy * np.sin(th)
            v = (-dx * np.sin(th) + dy * np.cos(th)) / q
            r = np.sqrt(u * u + v * v + 0.25)
            bn = 2 * sersic_n - 0.33
            prof = np.exp(-bn * ((r / re) ** (1 / sersic_n) - 1)).astype(np.float32)
            prof /= prof.max()
            # a bright nucleus (bulge, AGN), still wider than a star
            if rng.random() < mix.nucleus_share:
                s_nuc = 1.3 * fwhm / 2.3548 * rng.uniform(1.0, 1.5)
                nuc = np.exp(-(dx * dx + dy * dy) / (2 * s_nuc * s_nuc)).astype(np.float32)
                prof = prof + rng.uniform(0.5, 2.0) * nuc
                prof /= prof.max()
            col = np.array([1.0, 0.9, 0.75], np.float32) * rng.uniform(0.8, 1.2, 3).astype(
                np.float32
            )
            light = sky * rng.uniform(0.5, 10.0) * col[:, None, None] * prof[None]
            bg += light
            keep_light += light.mean(axis=0)
    large = None
    if mix.large_galaxy_share > 0 and rng.random() < mix.large_galaxy_share:
        centre = rng.uniform(0.3 * n, 0.7 * n, 2).astype(np.float32)
        big, re = _large_galaxy(rng, n, fwhm, xx * n - centre[0], yy * n - centre[1])
        light = sky * rng.uniform(1.0, 15.0) * big
        bg += light
        keep_light += light.mean(axis=0)
        keep = np.concatenate([keep, centre[None]])
        large = np.array([centre[0], centre[1], re], np.float32)
    if kind != "empty" and rng.random() < 0.5:
        # compact nebular knots (HII knots, globule rims): wider than the PSF, kept
        knots = rng.uniform(0, n, (int(rng.integers(1, 8)), 2)).astype(np.float32)
        for x0, y0 in knots:
            sig = max(1.5, rng.uniform(1.6, 3.5) * fwhm / 2.3548)
            q = rng.uniform(0.4, 1.0)
            th = rng.uniform(0, np.pi)
            dx, dy = xx * n - x0, yy * n - y0
            u = dx * np.cos(th) + dy * np.sin(th)
            v = (-dx * np.sin(th) + dy * np.cos(th)) / q
            blob = np.exp(-(u * u + v * v) / (2 * sig * sig)).astype(np.float32)
            tint = _NEBULA_TINTS[rng.integers(len(_NEBULA_TINTS))]
            light = sky * rng.uniform(0.3, 3.0) * tint[:, None, None] * blob[None]
            bg += light
            keep_light += light.mean(axis=0)
        keep = np.concatenate([keep, knots])
    return bg, keep, keep_light, large


def _large_galaxy(
    rng: np.random.Generator, n: int, fwhm: float, dx: Array, dy: Array
) -> tuple[Array, float]:
    """(3, n, n) light of one large galaxy at offsets ``dx``, ``dy`` (px) from its
    centre (peak 1 before its colour), and its effective radius in px: an exponential
    disc of 10-40 px effective radius (at most a quarter of the canvas), inclined, with
    a de Vaucouleurs-like bulge and, in half of them, two logarithmic spiral arms; bulge
    yellower than the disc."""
    re = min(rng.uniform(10.0, 40.0), n / 4)
    q = rng.uniform(0.3, 1.0)
    th = rng.uniform(0, np.pi)
    u = dx * np.cos(th) + dy * np.sin(th)
    v = (-dx * np.sin(th) + dy * np.cos(th)) / q
    r = np.sqrt(u * u + v * v + 0.25)
    disc = np.exp(-1.68 * r / re)
    if rng.random() < 0.5:
        pitch = np.deg2rad(rng.uniform(12.0, 30.0))
        phase = rng.uniform(0, 2 * np.pi)
        spiral = np.cos(2 * (np.arctan2(v, u) - np.log(r / re + 1e-3) / np.tan(pitch)) + phase)
        disc = disc * (1 + rng.uniform(0.3, 0.8) * spiral * (1 - np.exp(-r / (0.3 * re))))
    rb = max(rng.uniform(0.1, 0.3) * re, 1.3 * fwhm)
    bulge = np.exp(-7.67 * ((r / rb) ** 0.25 - 1))
    bulge = bulge / bulge.max()
    prof = disc + rng.uniform(0.05, 0.5) * bulge
    prof = (prof / prof.max()).astype(np.float32)
    disc_col = np.array([0.85, 0.9, 1.0], np.float32) * rng.uniform(0.85, 1.15, 3)
    bulge_col = np.array([1.0, 0.9, 0.7], np.float32) * rng.uniform(0.85, 1.15, 3)
    share = np.clip(bulge, 0, 1).astype(np.float32)
    col = disc_col[:, None, None] * (1 - share) + bulge_col[:, None, None] * share
    return (col * prof[None]).astype(np.float32), float(re)


def _psf(rng: np.random.Generator, n: int, fwhm: float, spikes: bool, mix: Mix) -> Array:
    """(n, n) PSF centred at (0, 0) with wrap-around, peak 1: Moffat/Gaussian core + halo;
    (3, n, n), one per colour (green's peak 1), when its spikes or its core are chromatic."""
    fx = np.fft.fftfreq(n, 1 / n).astype(np.float32)
    x, y = fx[None, :], fx[:, None]
    th = rng.uniform(0, np.pi)
    elong = rng.uniform(0.0, 0.35) if rng.random() < 0.35 else 0.0
    u = x * np.cos(th) + y * np.sin(th)
    v = -x * np.sin(th) + y * np.cos(th)
    r2 = (u / (1 + elong)) ** 2 + v**2
    moffat_b = rng.uniform(2.5, 5.0) if rng.random() < 0.7 else None
    halo_scale = rng.uniform(2, 6)
    halo_amp = rng.uniform(0.0005, 0.006)

    def profile(width: float = 1.0, halo_gain: float = 1.0) -> Array:
        f = fwhm * width
        if moffat_b is not None:
            alpha2 = (f / (2 * np.sqrt(2 ** (1 / moffat_b) - 1))) ** 2
            core = (1 + r2 / alpha2) ** (-moffat_b)
        else:
            core = np.exp(-r2 / (2 * (f / 2.3548) ** 2))
        halo = (1 + r2 / (f * halo_scale / 2) ** 2) ** (-2.0)
        return core + halo_amp * halo_gain * halo

    arms: list[tuple[float, Array, Array]] = []
    chromatic_arms = False

    def arm(a_amp: float, along: Array, across: Array, lam: float | None = None) -> Array:
        """One spike arm; with ``lam`` (chromatic arms) stretched by that colour's
        wavelength factor and fringed."""
        d = np.abs(along) if lam is None else np.abs(along) / lam
        term = a_amp * np.exp(-(across**2) / (2 * w * w)) * (1 + d / fwhm) ** -decay
        if lam is not None:
            term = term * (0.25 + 1.5 * (0.5 + 0.5 * np.cos(2 * np.pi * d / period + phase)))
        return term

    if spikes:
        # Diffraction spikes of a Newtonian's spider: thin, and on saturated stars long
        # enough to cross the frame (real frames show them from 0 to 45 degrees).
        ang = rng.uniform(0, np.pi / 2) if rng.random() < 0.6 else rng.choice([0.0, np.pi / 4])
        w = rng.uniform(0.4, 1.0)
        amp = float(np.exp(rng.uniform(*np.log(mix.spike_amp))))
        decay = rng.uniform(*mix.spike_decay)
        for a in (ang, ang + np.pi / 2):
            along = x * np.cos(a) + y * np.sin(a)
            across = -x * np.sin(a) + y * np.cos(a)
            arms.append((amp * rng.uniform(0.7, 1.3), along, across))
        if mix.chromatic_spike_share > 0:
            chromatic_arms = bool(rng.random() < mix.chromatic_spike_share)
    chromatic_core = mix.chromatic_psf_share > 0 and bool(rng.random() < mix.chromatic_psf_share)
    if not (chromatic_arms or chromatic_core):  # one grey PSF (the default mix's draws)
        psf = profile()
        for a_amp, along, across in arms:
            psf += arm(a_amp, along, across)
        return (psf / psf.max()).astype(np.float32)
    widths, halo_gains = np.ones(3), np.ones(3)
    if chromatic_core:
        # seeing, focus and optics differ by colour: red and blue cores wider or narrower
        # than green, halos tinted, so a star's wings are not the colour of its core
        widths[[0, 2]] = np.exp(rng.uniform(np.log(0.8), np.log(1.3), 2))
        halo_gains = np.exp(rng.uniform(np.log(0.4), np.log(2.5), 3))
    if chromatic_arms:
        # a thin vane's diffraction scales with wavelength: each colour's arm is
        # stretched by its own factor and fringed with its own period, so the arm
        # breaks into red, green and blue segments
        period = rng.uniform(2.5, 10.0)
        phase = rng.uniform(0, 2 * np.pi)
    rgb = []
    for c, lam in enumerate((1.2, 1.0, 0.82)):
        chan = profile(float(widths[c]), float(halo_gains[c]))
        for a_amp, along, across in arms:
            chan = chan + arm(a_amp, along, across, lam if chromatic_arms else None)
        rgb.append(chan)
    out = np.stack(rgb)
    return (out / out[1].max()).astype(np.float32)


def _bright_halos(
    rng: np.random.Generator, n: int, xy: Array, peak: Array, colours: Array, fwhm: float
) -> Array:
    """(3, n, n) extra glow of very bright stars: bloated, often coloured halos (optics,
    filters, reflections) well beyond the PSF's own halo."""
    out = np.zeros((3, n, n), np.float32)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    for (x0, y0), a, col in zip(xy, peak, colours, strict=True):
        radius = fwhm * rng.uniform(2.0, 8.0)
        amp = a * float(np.exp(rng.uniform(np.log(3e-4), np.log(6e-3))))
        tint = col if rng.random() < 0.5 else _HALO_TINTS[rng.integers(len(_HALO_TINTS))]
        glow = (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / radius**2) ** -rng.uniform(1.2, 2.5)
        out += amp * tint[:, None, None] * glow[None]
    return out


def _close_groups(
    rng: np.random.Generator, n: int, fwhm: float, noise_sigma: float
) -> tuple[Array, Array]:
    """Positions (k, 2) and linear peaks (k,) of bright close doubles and small groups:
    a primary from well above the noise to far past saturation, and 1-4 companions
    1-6 FWHM away (at least 2 px) at 5-100% of its peak, so their halos merge."""
    groups = max(1, int(rng.poisson(2.0 * (n / 128) ** 2)))
    xy, peak = [], []
    for _ in range(groups):
        members = int(rng.choice([2, 3, 4, 5], p=[0.6, 0.25, 0.1, 0.05]))
        centre = rng.uniform(0, n, 2)
        top = float(np.exp(rng.uniform(np.log(50 * noise_sigma), np.log(30.0))))
        xy.append(centre)
        peak.append(top)
        for _ in range(members - 1):
            sep = max(2.0, fwhm * float(np.exp(rng.uniform(0.0, np.log(6.0)))))
            ang = rng.uniform(0, 2 * np.pi)
            xy.append(centre + sep * np.array([np.cos(ang), np.sin(ang)]))
            peak.append(top * float(np.exp(rng.uniform(np.log(0.05), 0.0))))
    return (
        (np.array(xy, np.float64) % n).astype(np.float32),
        np.array(peak, np.float32),
    )


def _star_glow(stars: Array, fwhm: float, cap: float) -> Array:
    """(3, n, n) part of the star layer a star removal leaves: a grey opening wider than a
    star (so every peak is cut to its surroundings' level), smoothed, limited to ``cap``
    (linear) and never above the star light itself."""
    size = 2 * int(np.ceil(2.0 * fwhm)) + 1
    floor = ndimage.grey_opening(stars, size=(1, size, size))
    floor = ndimage.gaussian_filter(floor, sigma=(0, size / 4, size / 4))
    return np.minimum(np.minimum(floor, cap), stars).astype(np.float32)


def _star_colours(rng: np.random.Generator, count: int) -> Array:
    idx = np.clip(rng.normal(3.3, 1.5, count), 0, len(_STAR_COLOURS) - 1)
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, len(_STAR_COLOURS) - 1)
    t = (idx - lo)[:, None].astype(np.float32)
    col = _STAR_COLOURS[lo] * (1 - t) + _STAR_COLOURS[hi] * t
    col = 1 + (col - 1) * rng.uniform(0.5, 2.0)  # colour saturation varies between images
    col = np.clip(col, 0.05, None)
    return (col * rng.uniform(0.9, 1.1, (count, 3))).astype(np.float32)


def _splat(n: int, xy: Array, weights: Array) -> Array:
    """Bilinear splat of point fluxes (N, 3) at sub-pixel positions into a (3, n, n) image."""
    img = np.zeros((3, n * n), np.float32)
    x0 = np.floor(xy[:, 0]).astype(int)
    y0 = np.floor(xy[:, 1]).astype(int)
    fx = (xy[:, 0] - x0).astype(np.float32)
    fy = (xy[:, 1] - y0).astype(np.float32)
    for dx, dy, w in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi = (x0 + dx) % n
        yi = (y0 + dy) % n
        for c in range(3):
            np.add.at(img[c], yi * n + xi, weights[:, c] * w)
    return img.reshape(3, n, n)


_DEMOSAIC_RB = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4
_DEMOSAIC_G = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4


def _bayer(image: Array, offset: tuple[int, int]) -> Array:
    """(3, n, n) linear image through an RGGB colour-filter mosaic (shifted by ``offset``
    rows, columns) and bilinear demosaicing, as a one-shot-colour camera's frames are."""
    _, h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = (yy + offset[0]) % 2, (xx + offset[1]) % 2
    sites = np.stack([(ry == 0) & (rx == 0), (ry + rx) == 1, (ry == 1) & (rx == 1)])
    raw = np.where(sites, image, 0).astype(np.float32)
    return np.stack(
        [
            ndimage.convolve(raw[c], _DEMOSAIC_G if c == 1 else _DEMOSAIC_RB, mode="mirror")
            for c in range(3)
        ]
    ).astype(np.float32)


class _DegenerateSceneError(Exception):
    """A drawn scene no stretch can be fitted to (an original constant in every channel:
    clipped white or black all over); :func:`make_pair` draws another."""


def _stretch_pair(rng: np.random.Generator, orig: Array, clean: Array) -> tuple[Array, Array]:
    """One stretch, fitted on the original, applied to both (linear [0,1] in, [0,1] out).
    :class:`_DegenerateSceneError` when the original is constant in every channel."""
    if all(float(ch.min()) == float(ch.max()) for ch in orig):
        raise _DegenerateSceneError("the original is constant in every channel")
    kind = rng.choice(["mtf", "mtf", "mtf", "asinh", "gamma"])
    if kind == "mtf":
        p = fit_auto_stretch(
            orig,
            shadows_clip_mad=float(rng.uniform(-4.0, -1.5)),
            target_background=float(rng.uniform(0.08, 0.35)),
            linked=bool(rng.random() < 0.6),
        )
        a, b = apply_stretch(orig, p), apply_stretch(clean, p)
    else:
        black = np.percentile(orig, rng.uniform(0.5, 20), axis=(1, 2), keepdims=True)
        black = np.minimum(black, 0.9)
        o = np.clip((orig - black) / (1 - black), 0, 1)
        c = np.clip((clean - black) / (1 - black), 0, 1)
        if kind == "asinh":
            beta = rng.uniform(20, 500)
            a, b = np.arcsinh(beta * o) / np.arcsinh(beta), np.arcsinh(beta * c) / np.arcsinh(beta)
        else:
            gam = rng.uniform(0.2, 0.5)
            a, b = o**gam, c**gam
    if rng.random() < 0.3:  # a second, mild curve, as after further processing
        m = float(rng.uniform(0.3, 0.7))
        a, b = mtf(m, a), mtf(m, b)
    return a.astype(np.float32), b.astype(np.float32)


def _colour_cast(rng: np.random.Generator, orig: Array, clean: Array) -> tuple[Array, Array]:
    """The same colour processing on both stretched images: a curve per channel
    (x ** gamma, gamma 1-2, the smallest 1: black and white stay, a grey sky takes a
    colour), then a saturation boost of 1-1.8 around each pixel's grey level."""
    gammas = np.exp(rng.uniform(0.0, np.log(2.0), 3))
    gammas = (gammas / gammas.min()).astype(np.float32)[:, None, None]
    boost = float(rng.uniform(1.0, 1.8))

    def apply(x: Array) -> Array:
        x = np.clip(x, 0, 1) ** gammas
        grey = x.mean(0, keepdims=True)
        return np.clip(grey + boost * (x - grey), 0, 1).astype(np.float32)

    return apply(orig), apply(clean)


def _jpeg(image: Array, quality: int) -> Array:
    """``image`` (3, H, W) in [0, 1] through an 8-bit JPEG round trip (4:2:0, as cameras and
    web tools save)."""
    buf = io.BytesIO()
    rgb = np.round(np.clip(image, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return (np.asarray(im.convert("RGB"), np.float32) / 255.0).transpose(2, 0, 1).copy()


def make_pair(
    rng: np.random.Generator,
    size_px: int = 128,
    *,
    dense: bool | None = None,
    jpeg: bool = True,
    glow_cap: float = DEFAULT_GLOW_CAP,
    mix: Mix = DEFAULT_MIX,
    star_noise_in_truth: bool = False,
) -> tuple[Array, Array, Scene]:
    """One (original, starless, scene) triple; both images (3, size_px, size_px) float32 in [0,1].

    Scenes whose stretch came out degenerate (background crushed to black or
    blown to white) are drawn again: users do not feed such images.
    Some 8-bit pairs go through JPEG, each image on its own (``jpeg=False``
    keeps every pair exactly "original = starless + stars").
    ``glow_cap`` (in noise sigmas) is how much smooth star glow the starless
    truth keeps (:func:`_star_glow`); it draws nothing, so a seed gives the same
    scene for every cap and only its truth differs (unless the degenerate-stretch
    check above keeps a scene under one cap and redraws it under another: rare,
    the starless median must leave (0.01, 0.75)). ``mix`` shifts how often the
    harder cases come (:class:`Mix`); its default draws the scenes it always drew.
    ``star_noise_in_truth`` adds the stars' own shot noise to the truth: what a perfect
    subtraction of every star's noiseless light would leave, a reference for the residual
    figures (``benchmarks.diagnose``), never a training target. It draws nothing, so the
    original is the same, bit for bit (unless the truth's median moves across the
    degenerate-stretch check).
    """
    check_glow_cap(glow_cap)
    for _ in range(20):
        try:
            o, c, scene, med = _render_pair(
                rng, size_px, dense, jpeg, glow_cap, mix, star_noise_in_truth
            )
        except _DegenerateSceneError:
            continue
        if np.isfinite(o).all() and np.isfinite(c).all() and 0.01 < med < 0.75:
            return o, c, scene
    raise RuntimeError("synthetic generator kept producing degenerate scenes")


def _render_pair(
    rng: np.random.Generator,
    size_px: int,
    dense: bool | None,
    jpeg: bool,
    glow_cap: float,
    mix: Mix,
    star_noise_in_truth: bool,
) -> tuple[Array, Array, Scene, float]:
    """One pair, its scene and the starless median before JPEG and colour balance (what
    :func:`make_pair` judges, so ``jpeg`` never changes which scenes are kept)."""
    margin = 24
    n = size_px + 2 * margin
    sky = float(rng.uniform(0.02, 0.12))
    fwhm = float(np.exp(rng.uniform(np.log(1.0), np.log(6.5))))
    bg, gal_xy, keep_light, large = _background(rng, n, sky, fwhm, mix)
    noise_sigma = sky * float(np.exp(rng.uniform(np.log(0.005), np.log(0.08))))
    spikes = bool(rng.random() < mix.spike_share)
    # star count per crop: sparse .. Milky-Way dense (scaled with area)
    if dense is None:
        dense = bool(rng.random() < mix.dense_share)
    per_128 = (
        np.exp(rng.uniform(np.log(800), np.log(4000)))
        if dense
        else np.exp(rng.uniform(np.log(20), np.log(800)))
    )
    count = int(per_128 * (n / 128) ** 2)
    # peak brightness power law: N(>A) ~ A^-alpha, from ~2 sigma up to far past saturation
    alpha = rng.uniform(0.5, 1.0)
    a_min = 2.0 * noise_sigma
    peak = a_min * rng.random(count) ** (-1 / alpha)
    # and, in most frames, a few very bright stars: saturated, bloated, with long spikes
    n_bright = int(rng.poisson(0.6 * mix.bright_rate * (n / 128) ** 2)) if rng.random() < 0.7 else 0
    bright = np.exp(rng.uniform(np.log(2.0), np.log(100.0), n_bright))
    peak = np.concatenate([np.minimum(peak, 15.0), bright]).astype(np.float32)
    count += n_bright
    xy = rng.uniform(0, n, (count, 2)).astype(np.float32)
    if mix.group_share > 0 and rng.random() < mix.group_share:
        # inserted before the injected bright stars, which stay last in the arrays
        g_xy, g_peak = _close_groups(rng, n, fwhm, noise_sigma)
        at = count - n_bright
        xy = np.concatenate([xy[:at], g_xy, xy[at:]])
        peak = np.concatenate([peak[:at], g_peak, peak[at:]])
        count += len(g_peak)
    psf = _psf(rng, n, fwhm, spikes, mix)
    psf_f = np.fft.rfft2(psf)
    if psf_f.ndim == 2:
        psf_f = psf_f[None]
    colours = _star_colours(rng, count)
    mono = bool(rng.random() < 0.2)
    impulses = _splat(n, xy, peak[:, None] * colours)
    stars = np.fft.irfft2(np.fft.rfft2(impulses) * psf_f, s=(n, n)).astype(np.float32)
    if n_bright:  # the injected bright stars (last in the arrays) glow beyond their PSF
        very = slice(count - n_bright, count)
        stars += _bright_halos(rng, n, xy[very], peak[very], colours[very], fwhm)
    stars = np.maximum(stars, 0)
    # What a hand-made starless keeps stays in BOTH images: star light that is smooth on
    # the scale of a star (the glow of an unresolved crowd between its resolved stars, the
    # faint outer glow of a bright star's halo), up to a faint level. Retouchers fill each
    # star from its surroundings, so that glow survives; a truth without it teaches the net
    # to dig dark holes around bright stars and in Milky Way fields.
    glow = _star_glow(stars, fwhm, glow_cap * noise_sigma)  # no draw: scenes stay as they were
    stars -= glow
    gain = rng.uniform(0.3, 3.0) * noise_sigma**2 / max(sky, 1e-6)  # variance per unit signal
    # Unresolved stars below the noise are part of the background in BOTH images: no one
    # (and no hand-made starless) removes what cannot be seen, and asking the net to do so
    # teaches it to darken and tint the whole background.
    n_faint = int(count * rng.uniform(0.0, 3.0))
    faint_peak = noise_sigma * rng.uniform(0.1, 1.0, n_faint).astype(np.float32)
    faint = _splat(
        n,
        rng.uniform(0, n, (n_faint, 2)).astype(np.float32),
        faint_peak[:, None] * _star_colours(rng, n_faint),
    )
    faint = np.fft.irfft2(np.fft.rfft2(faint) * psf_f, s=(n, n))
    base = sky + bg + glow + np.maximum(faint, 0).astype(np.float32)
    shared = rng.standard_normal((3, n, n)).astype(np.float32) * np.sqrt(
        noise_sigma**2 + gain * np.maximum(base - sky, 0)
    )
    star_noise = rng.standard_normal((3, n, n)).astype(np.float32) * np.sqrt(gain * stars)
    clean = base + shared
    orig = clean + stars + star_noise
    if star_noise_in_truth:  # the reference "perfect subtraction" (see make_pair)
        clean = clean + star_noise
    if mono:  # a mono camera: one channel, shown as grey RGB
        clean = np.repeat(clean.mean(0, keepdims=True), 3, 0)
        orig = np.repeat(orig.mean(0, keepdims=True), 3, 0)
    sat = float(rng.uniform(0.5, 1.0)) * max(float(np.percentile(base, 99.5)) * 4, 0.3)
    sat = min(sat, 1.0)
    if mix.clip_headroom != (1.0, 1.0):
        sat *= float(np.exp(rng.uniform(*np.log(mix.clip_headroom))))
    clean = np.clip(clean / sat, 0, 1)
    orig = np.clip(orig / sat, 0, 1)
    if not mono and mix.bayer_share > 0 and rng.random() < mix.bayer_share:
        # a one-shot-colour camera: one colour per photosite, clipped there, then
        # demosaiced; sharp stars and thin spikes get the per-pixel colour zipper
        offset = (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
        orig, clean = _bayer(orig, offset), _bayer(clean, offset)
    sl = slice(margin, margin + size_px)
    o, c = _stretch_pair(rng, orig[:, sl, sl], clean[:, sl, sl])
    if not mono and mix.cast_share > 0 and rng.random() < mix.cast_share:
        o, c = _colour_cast(rng, o, c)
    levels = 255.0 if rng.random() < 0.3 else 65535.0
    o = np.round(o * levels) / levels
    c = np.round(c * levels) / levels
    med = float(np.median(c))
    if levels == 255.0 and rng.random() < 0.3:
        # web-shared 8-bit frames are JPEGs; a hand-made starless is saved separately
        # (the qualities are drawn either way, so jpeg=False gives the same scenes)
        q_o, q_c = int(rng.integers(75, 96)), int(rng.integers(75, 96))
        if jpeg:
            o, c = _jpeg(o, q_o), _jpeg(c, q_c)
    if rng.random() < 0.15:  # whole-image colour balance shift, as after colour calibration
        gains = rng.uniform(0.8, 1.1, (3, 1, 1)).astype(np.float32)
        o, c = np.clip(o * gains, 0, 1), np.clip(c * gains, 0, 1)
    inside = (
        (xy[:, 0] >= margin)
        & (xy[:, 0] < margin + size_px)
        & (xy[:, 1] >= margin)
        & (xy[:, 1] < margin + size_px)
    )
    scene = Scene(
        star_xy=xy[inside] - margin,
        star_peak=peak[inside] / sat,
        galaxy_xy=(gal_xy - margin).astype(np.float32),
        fwhm_px=fwhm,
        noise_sigma=noise_sigma / sat,
        spikes=spikes,
        keep_mask=keep_light[sl, sl] >= noise_sigma,
        large_galaxy=None if large is None else large - np.array([margin, margin, 0], np.float32),
        dense=dense,
    )
    return o.astype(np.float32), c.astype(np.float32), scene, med


# What :func:`crop_masks` stacks per crop, in this order: the galaxies and knots that
# must stay (``Scene.keep_mask``) and the whole crop where it is a dense field
MASK_CHANNELS = ("keep", "dense")


def crop_masks(scene: Scene) -> Array:
    """``(len(MASK_CHANNELS), H, W)`` uint8 masks of a rendered scene, for training terms
    that weigh parts of a crop: its galaxies and knots, and all of it if it is dense."""
    assert scene.keep_mask is not None  # _render_pair always records it
    dense = np.full(scene.keep_mask.shape, scene.dense, np.uint8)
    return np.stack([scene.keep_mask.astype(np.uint8), dense])


def make_pool(
    seed: int | list[int],
    count: int,
    size_px: int = 128,
    glow_cap: float = DEFAULT_GLOW_CAP,
    mix: Mix = DEFAULT_MIX,
) -> tuple[Array, Array, Array]:
    """``count`` pairs as two (count, 3, S, S) float32 arrays and their scenes'
    :func:`crop_masks` as (count, 2, S, S) uint8, reproducible from ``seed`` (an int, or a
    list of ints as ``np.random.default_rng`` takes them)."""
    rng = np.random.default_rng(seed)
    orig = np.empty((count, 3, size_px, size_px), np.float32)
    clean = np.empty_like(orig)
    masks = np.empty((count, len(MASK_CHANNELS), size_px, size_px), np.uint8)
    for i in range(count):
        orig[i], clean[i], scene = make_pair(rng, size_px, glow_cap=glow_cap, mix=mix)
        masks[i] = crop_masks(scene)
    return orig, clean, masks
