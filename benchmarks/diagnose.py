"""Where a model's errors are: the figures behind BENCHMARKS.md's sixth session.

    python -m benchmarks.diagnose [--weights FILE] [--real DIR] [--threads N] [--no-synthetic]
                                  [--no-sky-colour]

Runs the model as users get it (network, background protection, then the sky colour in
clipped cores; ``--no-sky-colour``: the network's own fill) and prints:

* **Real pairs, star pixels** (``|original - starless| > 0.1`` in some channel): the
  mean signed error per channel and the share of its squared error that this bias
  explains. A fill pulled toward grey on a coloured sky shows as errors of the
  opposite sign to the sky's colour (real_0's red sky: green too high).
* **Real pairs, background band**: the benchmark's real background figure split into
  the pixels within ``--edge`` px of the frame's border and those inside it (a
  structure cut by the border is half a blob to the network).
* **Held-out scenes, residual star flux by aperture SNR**: the median and p95 of
  the residual figure over the stars whose own flux is at least k x the truth's
  pixel noise x sqrt(aperture pixels), k = 0, 3, 5, 10; and, per scene, how many
  stars of SNR >= 10 keep more than 90% of their flux. Beside them, the same figure for
  a perfect subtraction of every star's noiseless light (the truth plus the stars' own
  shot noise, ``make_pair(star_noise_in_truth=True)``): the floor that noise alone sets.
* **Held-out scenes, error on galaxies and knots**: per scene, the PSNR, the share of
  its squared error on the pixels where the generator's galaxies and knots carry a
  noise sigma of light (``Scene.keep_mask``, grown by ``--keep-grow`` px), and the PSNR
  the scene would have if those pixels were perfect, and the same share of the error on
  the benchmark's background pixels; and the mean of both PSNRs. Beside
  them, the galaxies kept (the quality benchmark's figure) and kept when the network is
  fed the starless truth: what it takes away from a galaxy with no star in the frame.
  Pooled over the scenes: of the squared error on galaxy and knot pixels without star
  light (``original - truth`` below 0.005, 2 px from any above), the share where the
  star layer ``original - output`` is above 0.1, far above background protection's
  threshold: what the pipeline's steps after the network cannot give back.
* **Burnt-out stars' halos** (``--halo-scenes``, 24 by default): per clipped core
  (every channel >= 0.95, at least 4 px) of the real pairs and of generator scenes
  with clipped cores (default mix, 384 px, drawn from seed 77: neither held out nor a
  training stream), the core's radius (of a disc of its area), how far out the star's
  light (ring median of ``original - truth`` in luminance) stays above 0.1 in core
  radii, and the glow the model leaves on that halo (ring median of ``output -
  truth``, mean over the rings outside the core). Halos much wider than the core
  that the model leaves bright show where the generator's bright stars differ from
  real ones.
* **Clipped cores on a coloured sky** (``--cast-scenes``, 8 by default): generator
  scenes drawn with ``Mix(cast_share=1, dense_share=0)`` from seed 99 (not held out,
  not a training seed stream either), keeping those with clipped white cores and a
  coloured sky; per scene, the mean error on the cores projected on the sky's colour
  direction (median starless colour minus its grey). Negative: the fill is pulled
  toward grey.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from benchmarks.quality import (
    DEFAULT_REAL_PAIRS,
    FAR_PX,
    FULL_PLAN,
    FULL_SIZE_PX,
    KEPT_RADIUS_PX,
    REAL_TOL,
    Case,
    real_cases,
    synthetic_cases,
)
from starnet_core import metrics
from starnet_core.inference import TileOptions, remove_stars
from starnet_core.inpaint import pixel_noise
from starnet_core.masks import finish_starless
from starnet_core.options import CoreFillOptions, ProtectOptions, SkyColourOptions
from starnet_core.synthetic import DEFAULT_MIX, Mix, make_pair

HALO_SEED, HALO_SIZE_PX = 77, 384  # the halo figures' generator scenes
STAR_PX = 0.1  # |original - starless| above this, in some channel: a star pixel
SNR_LEVELS = (0, 3, 5, 10)


def edge_band(shape: tuple[int, int], px: int) -> np.ndarray:
    """``(H, W)`` bool: the pixels within ``px`` of the frame's border."""
    if px < 0:
        raise ValueError(f"edge band must be >= 0 px, got {px}")
    band = np.zeros(shape, bool)
    if px:
        band[:px] = band[-px:] = True
        band[:, :px] = band[:, -px:] = True
    return band


def star_pixel_bias(
    original: np.ndarray, output: np.ndarray, truth: np.ndarray
) -> tuple[np.ndarray, float]:
    """``(signed error per channel (C,), share of the squared error the bias explains)``
    over the star pixels; ``(nan..., nan)`` when there are none."""
    star = np.abs(original - truth).max(0) > STAR_PX
    if not star.any():
        return np.full(original.shape[0], np.nan), float("nan")
    err = (output - truth)[:, star].astype(np.float64)
    bias = err.mean(1)
    return bias, float((bias**2).sum() / (err**2).mean(1).sum())


def aperture_snr(
    original: np.ndarray, truth: np.ndarray, star_xy: np.ndarray, aperture_px: float
) -> np.ndarray:
    """``(N,)`` each star's own flux (as the residual figure measures it) over the
    truth's pixel noise (:func:`starnet_core.classical.pixel_noise`) x sqrt(aperture pixels)."""
    own, n = metrics.star_fluxes(original.mean(0) - truth.mean(0), star_xy, aperture_px)
    sigma = max(pixel_noise(truth.mean(0)), 1e-9)
    return own / (sigma * np.sqrt(np.maximum(n, 1)))


def perfect_subtraction(case: Case) -> np.ndarray:
    """The held-out ``case``'s original less every star's noiseless light: its truth plus
    the stars' own shot noise, which no method can tell from the sky under a star."""
    size = case.original.shape[-1]
    o, ref, _ = make_pair(np.random.default_rng(case.seed), size, star_noise_in_truth=True)
    if not np.array_equal(o, case.original):
        raise RuntimeError(f"{case.name} (seed {case.seed}): the reference drew another scene")
    return ref


def keep_error(
    output: np.ndarray,
    truth: np.ndarray,
    keep_mask: np.ndarray,
    grow_px: int = 2,
    within: np.ndarray | None = None,
) -> tuple[float, float]:
    """``(share of the squared error on keep_mask grown by grow_px, PSNR with those
    pixels' error taken away)`` of ``output`` against ``truth`` (peak 1), over the
    ``within`` pixels (``(H, W)`` bool; None: all, as :func:`starnet_core.metrics.psnr`).
    ``(0, inf)`` where there is no error."""
    keep = np.asarray(keep_mask, bool)
    if grow_px > 0 and keep.any():
        keep = ndimage.binary_dilation(keep, iterations=grow_px)
    se = ((output - truth).astype(np.float64) ** 2).sum(0)
    if within is not None:
        se, keep = se[within], keep[within]
    total = float(se.sum())
    if total <= 0:
        return 0.0, float("inf")
    rest = total - float(se[keep].sum())
    values = se.size * output.shape[0]
    return 1.0 - rest / total, 10 * np.log10(values / rest) if rest > 0 else float("inf")


# galaxy pixels "without star light": original - truth below this, this far from any above
STARLIT_LEVEL, STARLIT_GROW_PX = 0.005, 2
TAKEN_LAYER = 0.1  # a star layer above this is taken out, not a protection-scale change


def keep_error_taken(
    original: np.ndarray,
    output: np.ndarray,
    truth: np.ndarray,
    keep_mask: np.ndarray,
    layer_level: float = TAKEN_LAYER,
) -> tuple[float, float, int, int]:
    """``(squared error, of it where the star layer > layer_level, pixels, of them
    there)`` on the ``keep_mask`` pixels without star light, ``(C, H, W)`` arrays: how
    much of a galaxy's error is the network taking its light out as a star's."""
    unlit = metrics.background_mask(original, truth, far_px=STARLIT_GROW_PX, tol=STARLIT_LEVEL)
    px = np.asarray(keep_mask, bool) & unlit
    taken = px & ((original - output).max(axis=0) > layer_level)
    se = ((output - truth).astype(np.float64) ** 2).sum(0)
    return float(se[px].sum()), float(se[taken].sum()), int(px.sum()), int(taken.sum())


def grey_pull(
    original: np.ndarray, output: np.ndarray, truth: np.ndarray, core_level: float = 0.98
) -> float:
    """Mean error on the clipped cores (every channel >= ``core_level``) projected on
    the sky's colour direction (median truth colour minus its grey); nan without cores
    or without a sky colour. Negative: the cores are filled greyer than the sky."""
    core = (original >= core_level).all(0)
    sky = np.median(truth.reshape(truth.shape[0], -1), axis=1).astype(np.float64)
    direction = sky - sky.mean()
    norm = float(np.linalg.norm(direction))
    if not core.any() or norm < 1e-6:
        return float("nan")
    err = (output - truth)[:, core].astype(np.float64).mean(1)
    return float(err @ direction / norm)


def clipped_scenes(
    mix: Mix, seed: int, count: int, size_px: int, min_sky_spread: float = 0.0
) -> list[tuple[np.ndarray, ...]]:
    """``count`` (original, starless) generator pairs drawn with ``mix`` from ``seed``
    with at least 20 clipped core pixels and a sky colour spread (peak-to-peak of the
    median starless colour) of at least ``min_sky_spread``."""
    rng = np.random.default_rng(seed)
    out: list[tuple[np.ndarray, ...]] = []
    for _ in range(50 * count):
        o, c, _ = make_pair(rng, size_px, mix=mix)
        spread = np.ptp(np.median(c.reshape(c.shape[0], -1), axis=1)) if min_sky_spread else 0.0
        if (o >= 0.98).all(0).sum() >= 20 and spread >= min_sky_spread:
            out.append((o, c))
            if len(out) == count:
                return out
    raise RuntimeError(f"only {len(out)} scenes with clipped cores in {50 * count} draws")


def cast_scenes(count: int, size_px: int = 192, seed: int = 99) -> list[tuple[np.ndarray, ...]]:
    """``count`` (original, starless) generator pairs with a colour cast, at least 20
    clipped core pixels and a sky colour spread of at least 0.08."""
    return clipped_scenes(Mix(cast_share=1.0, dense_share=0.0), seed, count, size_px, 0.08)


HALO_LEVEL = 0.1  # a halo ends where the star's light (stretched luminance) falls below this
HALO_MAX_PX = 40  # ... or this far from the core's centre


def burnt_halos(
    original: np.ndarray, truth: np.ndarray, output: np.ndarray, min_core_px: int = 4
) -> np.ndarray:
    """``(N, 3)``: per clipped core (every channel of ``original`` >= 0.95, one connected
    component of at least ``min_core_px``), its radius (px, of a disc of its area), the
    halo's extent in core radii (first ring, 1 px wide, whose median star light
    ``original - truth`` in luminance is below :data:`HALO_LEVEL`; at most
    :data:`HALO_MAX_PX`) and the mean over the halo's rings outside the core of the
    ring median of ``output - truth`` in luminance (nan when the halo ends in the core).
    """
    core = (original >= 0.95).all(0)
    labels, _ = ndimage.label(core)
    light = (original - truth).mean(0)
    left = (output - truth).mean(0)
    h, w = core.shape
    rows = []
    for k, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        mine = labels[box] == k + 1
        area = int(mine.sum())
        if area < min_core_px:
            continue
        centre = ndimage.center_of_mass(mine)
        cy, cx = float(centre[0]) + box[0].start, float(centre[1]) + box[1].start
        y0, y1 = max(int(cy) - HALO_MAX_PX, 0), min(int(cy) + HALO_MAX_PX + 1, h)
        x0, x1 = max(int(cx) - HALO_MAX_PX, 0), min(int(cx) + HALO_MAX_PX + 1, w)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        ring = np.hypot(yy - cy, xx - cx).astype(int)
        radius = np.sqrt(area / np.pi)
        extent, glow = float(HALO_MAX_PX), []
        for r in range(HALO_MAX_PX):
            sel = ring == r
            if not sel.any():
                break
            if np.median(light[y0:y1, x0:x1][sel]) < HALO_LEVEL:
                extent = float(r)
                break
            if r > radius:
                glow.append(float(np.median(left[y0:y1, x0:x1][sel])))
        rows.append((radius, extent / radius, np.mean(glow) if glow else np.nan))
    return np.array(rows, np.float64).reshape(-1, 3)


def _halo_row(name: str, halos: np.ndarray) -> str:
    if not len(halos):
        return f"| {name} | 0 | – | – | – | – |"
    return (
        f"| {name} | {len(halos)} | {np.median(halos[:, 0]):.1f} | {np.median(halos[:, 1]):.1f} "
        f"| {np.percentile(halos[:, 1], 90):.1f} | {np.nanmedian(halos[:, 2]):+.3f} |"
    )


def load_weights_arg(weights: Path | None, prog: str) -> torch.nn.Module | None:
    """The model of a ``--weights`` option (weights or checkpoint; None: the packaged
    one), or None after printing ``prog: reason`` (naming the file) to stderr."""
    from starnet_core.checkpoint import load_any
    from starnet_core.model import load_model

    try:
        return load_any(weights)[0] if weights else load_model(None)[0]
    except (ValueError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.diagnose", description=__doc__)
    p.add_argument("--weights", type=Path, help="weights or checkpoint (default: packaged)")
    p.add_argument("--real", type=Path, default=DEFAULT_REAL_PAIRS, help="real pairs folder")
    p.add_argument("--edge", type=int, default=16, help="edge band width, px (16)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-synthetic", action="store_true", help="real pairs only")
    p.add_argument(
        "--cast-scenes", type=int, default=8, help="colour-cast scenes for the grey pull (8)"
    )
    p.add_argument(
        "--keep-grow", type=int, default=2, help="px the galaxy and knot mask is grown by (2)"
    )
    p.add_argument(
        "--halo-scenes",
        type=int,
        default=24,
        help="generator scenes with clipped cores for the halo figures (24)",
    )
    p.add_argument(
        "--no-sky-colour",
        action="store_true",
        help="the network's own colour in clipped cores (sky_colour.enabled: false)",
    )
    p.add_argument(
        "--no-core-fill",
        action="store_true",
        help="burnt-out stars as the network fills them (core_fill.enabled: false)",
    )
    args = p.parse_args(argv)
    if args.edge < 1:
        print(f"diagnose: --edge must be >= 1 px, got {args.edge}", file=sys.stderr)
        return 2
    if args.keep_grow < 0:
        print(f"diagnose: --keep-grow must be >= 0 px, got {args.keep_grow}", file=sys.stderr)
        return 2
    for name in ("cast_scenes", "halo_scenes"):
        if getattr(args, name) < 0:
            flag = "--" + name.replace("_", "-")
            print(f"diagnose: {flag} must be >= 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_weights_arg(args.weights, "diagnose")
    if model is None:
        return 2
    try:
        real = real_cases(args.real) if args.real.is_dir() else []
    except (ValueError, OSError) as e:
        print(f"diagnose: {e}", file=sys.stderr)
        return 2
    if not real:
        print(f"diagnose: no real pairs at {args.real}", file=sys.stderr)
    options, protect = TileOptions(), ProtectOptions()
    sky_colour = SkyColourOptions(enabled=not args.no_sky_colour)
    core_fill = CoreFillOptions(enabled=not args.no_core_fill)

    def run(x: np.ndarray) -> np.ndarray:
        return finish_starless(x, remove_stars(model, x, options), protect, sky_colour, core_fill)

    halo_rows = []
    if real:
        print("| pair | sky RGB | star-pixel error R / G / B | bias share |")
        print("|---|---|---|---|")
        sums = {"inside": [0.0, 0], "edge": [0.0, 0]}
        for case in real:
            o, t = case.original, case.truth
            out = run(o)
            halo_rows.append(_halo_row(case.name, burnt_halos(o, t, out)))
            bias, share = star_pixel_bias(o, out, t)
            sky = np.median(t.reshape(t.shape[0], -1), axis=1)
            print(
                f"| {case.name} | {' '.join(f'{v:.3f}' for v in sky)} | "
                f"{' / '.join(f'{v:+.4f}' for v in bias)} | {share:.2f} |"
            )
            bg = metrics.background_mask(o, t, None, far_px=FAR_PX / 2, tol=REAL_TOL)
            band = edge_band(bg.shape, args.edge)
            se = ((out - t).astype(np.float64) ** 2).sum(0)
            for key, sel in (("inside", bg & ~band), ("edge", bg & band)):
                sums[key][0] += float(se[sel].sum())
                sums[key][1] += int(sel.sum()) * o.shape[0]
        print()
        for key, (sse, n) in sums.items():
            db = 10 * np.log10(n / sse) if n and sse > 0 else float("nan")
            print(f"real background, {key} ({n // 3} px, edge band {args.edge} px): {db:.1f} dB")
    if args.halo_scenes and not args.no_synthetic:
        pairs = clipped_scenes(DEFAULT_MIX, HALO_SEED, args.halo_scenes, HALO_SIZE_PX)
        halos = np.concatenate([burnt_halos(o, c, run(o)) for o, c in pairs])
        halo_rows.append(_halo_row(f"{len(pairs)} generator scenes", halos))
    if halo_rows:
        print()
        print(
            "| burnt-out stars | cores | core radius px (median) | halo extent in core radii "
            "(median) | (p90) | glow left on the halo (median) |"
        )
        print("|---|---|---|---|---|---|")
        print("\n".join(halo_rows))
    if args.no_synthetic:
        return 0
    if args.cast_scenes:
        pulls = [grey_pull(o, run(o), c) for o, c in cast_scenes(args.cast_scenes)]
        print()
        print(
            f"clipped cores on a coloured sky, {len(pulls)} cast scenes: error along the sky's "
            f"colour {np.mean(pulls):+.3f} (per scene {' '.join(f'{v:+.3f}' for v in pulls)})"
        )
    print()
    print(
        "| scene | stars SNR >= 10 | of them > 90% left | PSNR | galaxy and knot px "
        "| their share of the error | PSNR if they were perfect | their share of the "
        "background error | galaxies kept | kept, fed the truth |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    by_level: dict[int, list[np.ndarray]] = {k: [] for k in SNR_LEVELS}
    ref_level: dict[int, list[np.ndarray]] = {k: [] for k in SNR_LEVELS}
    psnrs: list[tuple[float, float]] = []
    bg_sse = [0.0, 0.0, 0]  # pooled background: all, on galaxies and knots, values
    galaxy_taken = np.zeros(4)  # pooled keep_error_taken
    for case in synthetic_cases(FULL_PLAN, FULL_SIZE_PX):
        o, t, scene = case.original, case.truth, case.scene
        assert scene is not None and scene.keep_mask is not None
        out = run(o)
        aperture = max(2.0, 1.5 * scene.fwhm_px)
        frac = metrics.residual_star_flux(o, out, t, scene.star_xy, aperture)
        snr = aperture_snr(o, t, scene.star_xy, aperture)
        ok = np.isfinite(frac)
        ref = metrics.residual_star_flux(o, perfect_subtraction(case), t, scene.star_xy, aperture)
        for k in SNR_LEVELS:
            by_level[k].append(frac[ok & (snr >= k)])
            ref_level[k].append(ref[ok & (snr >= k)])
        strong = ok & (snr >= 10)
        share, without = keep_error(out, t, scene.keep_mask, args.keep_grow)
        galaxy_taken += keep_error_taken(o, out, t, scene.keep_mask)
        psnrs.append((metrics.psnr(out, t), without))
        bg = metrics.background_mask(o, t, scene, far_px=FAR_PX)
        bg_share = None
        if bg.any():
            bg_share = keep_error(out, t, scene.keep_mask, args.keep_grow, bg)[0]
            sse = float(((out[:, bg] - t[:, bg]).astype(np.float64) ** 2).sum())
            bg_sse[0] += sse
            bg_sse[1] += bg_share * sse
            bg_sse[2] += int(bg.sum()) * o.shape[0]
        kept = [
            metrics.structure_kept(o, x, t, scene.galaxy_xy, KEPT_RADIUS_PX)
            for x in ((out, run(t)) if len(scene.galaxy_xy) else ())
        ]
        cells = [f"{np.nanmean(k):.2f}" if np.isfinite(k).any() else "–" for k in kept]
        print(
            f"| {case.name} | {int(strong.sum())} | {int((strong & (frac > 0.9)).sum())} "
            f"| {psnrs[-1][0]:.1f} | {scene.keep_mask.mean():.3f} | {share:.2f} | {without:.1f} "
            f"| {'–' if bg_share is None else f'{bg_share:.4f}'} "
            f"| {' | '.join(cells or ['–', '–'])} |"
        )
    mean_psnr, mean_without = np.mean(psnrs, axis=0)
    print(
        f"\nmean PSNR {mean_psnr:.2f} dB; with the galaxies and knots perfect {mean_without:.2f} dB"
    )
    if bg_sse[0] > 0:
        pooled = 10 * np.log10(bg_sse[2] / bg_sse[0])
        rest = bg_sse[0] - bg_sse[1]
        perfect = 10 * np.log10(bg_sse[2] / rest) if rest > 0 else float("inf")
        print(f"pooled background PSNR {pooled:.2f} dB; with them perfect {perfect:.2f} dB")
    if galaxy_taken[0] > 0:
        print(
            f"galaxy and knot pixels without star light: {galaxy_taken[1] / galaxy_taken[0]:.0%}"
            f" of their squared error where the star layer is above {TAKEN_LAYER} "
            f"({galaxy_taken[3] / galaxy_taken[2]:.0%} of those pixels)"
        )
    print()
    print("| stars counted | stars | median | p95 | perfect subtraction: median | p95 |")
    print("|---|---|---|---|---|---|")
    for k, parts in by_level.items():
        v, r = np.concatenate(parts), np.concatenate(ref_level[k])
        label = "all (the figure)" if k == 0 else f"aperture SNR >= {k}"
        print(
            f"| {label} | {v.size} | {np.median(v):.3f} | {np.percentile(v, 95):.2f} "
            f"| {np.median(r):.3f} | {np.percentile(r, 95):.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
