"""Quality benchmark: input unchanged vs classical removal vs the model.

    python -m benchmarks.quality [--weights FILE] [--out benchmarks/results] [--quick]

``--weights`` takes an exported weights file or a training checkpoint
(``logs/checkpoint.safetensors``); without it the packaged model is used.

Data:

- Held-out synthetic scenes from :func:`starnet_core.synthetic.make_pair` with
  seeds from 9_000_001 up (training draws from 1234 + step). Each category
  (sparse, dense, spikes, galaxies, saturated) scans its own seed range for
  the first 16-bit scenes that have the property, so the set keeps its mix when
  the generator changes; the seeds used are written to the results.
- The real pairs in ``--real-pairs`` (``original/real_N.png`` and
  ``starless/real_N.png``, read at run time, never copied).

Figures (definitions in :mod:`starnet_core.metrics`), per scene and overall:
whole-image PSNR; background PSNR (pixels far from every star, pooled over
scenes); residual star flux median and p95, overall and by peak SNR (faint <
30 <= medium < 300 <= bright); structure kept for galaxies; the fraction of
stars still detectable; seconds (wall and CPU) per megapixel; for the model
its seam score, MAC per pixel and the ratio to StarNet v1.

Outputs in ``--out``: ``quality.json``, ``quality.md`` (also printed) and
``previews/*.png`` (original | classical | model | truth). ``--quick`` runs
three 256 px scenes and writes ``quality_quick.*`` instead; ``--ensemble N`` writes
``quality_ensembleN.*``, ``--passes N`` ``quality_passesN.*``, ``--upsample``
``quality_upsample.*`` and ``--glow-cap S`` (another truth for the same scenes)
``quality_glowS.*``, ``--scene-mix hard`` (other held-out scenes, drawn with the
generator's "hard" mix) ``quality_mixhard.*`` (their previews replace the plain
run's: add ``--no-previews``). ``--scene-mix large-galaxies`` draws held-out scenes
that each hold one large galaxy (10-40 px effective radius) and adds the figure
"large galaxies kept" (flux within 1.5 effective radii, as for the small ones); it is
reported apart, never pooled with the default set.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.report import finite_json, render_markdown
from starnet_core import metrics
from starnet_core.classical import classical_remove_stars
from starnet_core.imageio import read_image
from starnet_core.inference import TileOptions, network_fn
from starnet_core.model import load_model, macs_per_pixel
from starnet_core.options import (
    CoreFillOptions,
    LargeStarOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
)
from starnet_core.pipeline import remove_and_finish
from starnet_core.synthetic import (
    DEFAULT_GLOW_CAP,
    DEFAULT_MIX,
    MIXES,
    Mix,
    Scene,
    check_glow_cap,
    make_pair,
)
from starnet_core.tiling import place_model, seam_score, select_device

log = logging.getLogger("benchmarks.quality")

STARNET_V1_MACS_PER_PX = 92_000.0  # StarNet v1 generator, for the ratio in the report
SEED_BASE = 9_000_001  # far from training's 1234 + step
SEED_STRIDE = 100_000  # each category scans its own range, in CATEGORY_TESTS order
DEFAULT_REAL_PAIRS = Path("/work/shared/realdata/pairs")
FULL_PLAN: tuple[tuple[str, int], ...] = (
    ("sparse", 3),
    ("dense", 3),
    ("spikes", 2),
    ("galaxies", 2),
    ("saturated", 2),
)
QUICK_PLAN: tuple[tuple[str, int], ...] = (("sparse", 1), ("dense", 1), ("galaxies", 1))
FULL_SIZE_PX, QUICK_SIZE_PX = 512, 256
SYNTHETIC_PREVIEWS = 4
FAR_PX = 8.0  # background pixels are this far from anything a star touched
KEPT_RADIUS_PX = 6.0  # galaxies and knots kept: flux within this radius of their centres
LARGE_KEPT_RADII = 1.5  # a large galaxy kept: flux within this many effective radii
REAL_TOL = 4 / 255  # JPEG artefacts in the real pairs differ by a few 8-bit levels
METHOD_ORDER = ("input", "classical", "model")

Method = Callable[[np.ndarray], np.ndarray]


@dataclass
class Case:
    """One benchmark image: ``original`` and ``truth`` are (3, H, W) float32 in [0, 1]."""

    name: str
    original: np.ndarray
    truth: np.ndarray
    scene: Scene | None = None
    seed: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)


def _is_16bit(image: np.ndarray) -> bool:
    return not np.allclose(image * 255, np.round(image * 255), atol=1e-3)


def scene_properties(original: np.ndarray, truth: np.ndarray, scene: Scene) -> dict[str, Any]:
    """What a synthetic scene holds, for choosing and describing it."""
    _, H, W = original.shape
    g = scene.galaxy_xy
    inside = (g[:, 0] >= 0) & (g[:, 0] < W) & (g[:, 1] >= 0) & (g[:, 1] < H) if len(g) else []
    # make_pair draws 800..4000 stars per 128 px square for dense fields, fewer otherwise
    dense = len(scene.star_xy) >= 800 * H * W / 128**2
    return {
        "stars": len(scene.star_xy),
        "dense": bool(dense),
        "spikes": bool(scene.spikes),
        "galaxies": int(np.count_nonzero(inside)),
        "saturated_fraction": float(np.mean(original.mean(axis=0) >= 0.9)),
        "fwhm_px": round(float(scene.fwhm_px), 2),
        "background_fraction": float(
            metrics.background_mask(original, truth, scene, far_px=FAR_PX).mean()
        ),
        "bits": 16 if _is_16bit(original) else 8,
    }


CATEGORY_TESTS: dict[str, Callable[[dict[str, Any]], bool]] = {
    # sparse scenes also carry the background figures: they must have some background
    "sparse": lambda p: (
        not p["dense"] and p["saturated_fraction"] < 0.005 and p["background_fraction"] >= 0.05
    ),
    "dense": lambda p: p["dense"],
    "spikes": lambda p: p["spikes"],
    "galaxies": lambda p: p["galaxies"] >= 1,
    "saturated": lambda p: p["saturated_fraction"] >= 0.002,
}


def synthetic_cases(
    plan: Sequence[tuple[str, int]],
    size_px: int,
    *,
    max_tries: int = 300,
    glow_cap: float = DEFAULT_GLOW_CAP,
    mix: Mix = DEFAULT_MIX,
) -> list[Case]:
    """Held-out scenes: per category, the first 16-bit seeds whose scene has the property.

    The seeds are chosen under the default glow cap, so every ``glow_cap`` (how much
    smooth star glow the truth keeps) measures the same scenes with another truth.
    Another ``mix`` (:data:`starnet_core.synthetic.MIXES`) draws other scenes from the
    same held-out seed ranges: the harder cases a training mix leaned on.
    """
    cases = []
    for category, count in plan:
        if category not in CATEGORY_TESTS:
            raise ValueError(
                f"unknown scene category {category!r}; known: {sorted(CATEGORY_TESTS)}"
            )
        found = 0
        first = SEED_BASE + list(CATEGORY_TESTS).index(category) * SEED_STRIDE
        for seed in range(first, first + max_tries):
            o, t, scene = make_pair(np.random.default_rng(seed), size_px, mix=mix)
            props = scene_properties(o, t, scene)
            if props["bits"] != 16 or not CATEGORY_TESTS[category](props):
                continue
            found += 1
            if glow_cap != DEFAULT_GLOW_CAP:
                stars = scene.star_xy
                o, t, scene = make_pair(
                    np.random.default_rng(seed), size_px, glow_cap=glow_cap, mix=mix
                )
                if not np.array_equal(scene.star_xy, stars):
                    raise RuntimeError(
                        f"seed {seed}: another scene under glow cap {glow_cap:g} (its stretch "
                        "check redrew it); use another cap or the default"
                    )
                props = scene_properties(o, t, scene)
            cases.append(Case(f"{category}-{found}", o, t, scene, seed, props))
            if found == count:
                break
        else:
            raise RuntimeError(f"no {count} {category} scenes in {max_tries} seeds")
    return cases


def real_cases(root: Path) -> list[Case]:
    """The real pairs under ``root/original`` and ``root/starless`` (same file names)."""
    orig_dir, clean_dir = root / "original", root / "starless"
    if not orig_dir.is_dir():
        raise ValueError(f"{orig_dir}: no such directory (--real-pairs)")
    cases = []
    for path in sorted(orig_dir.glob("*.png")):
        partner = clean_dir / path.name
        if not partner.exists():
            raise ValueError(f"{path}: no starless partner {partner}")
        o, t = read_image(path).data, read_image(partner).data
        if o.shape != t.shape:
            raise ValueError(f"{partner}: shape {t.shape} differs from its original's {o.shape}")
        if o.shape[0] == 1:
            o, t = np.repeat(o, 3, 0), np.repeat(t, 3, 0)
        cases.append(Case(path.stem, o, t))
    return cases


def _timed(method: Method, image: np.ndarray) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = method(image)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def evaluate_case(
    case: Case, methods: dict[str, Method]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Run every method on one case.

    Returns the case's JSON record, per-method raw values for pooling
    (squared errors, per-star fractions, counts) and the outputs (for previews).
    """
    o, t = case.original, case.truth
    megapixels = o.shape[1] * o.shape[2] / 1e6
    scene = case.scene
    if scene is not None:
        bg = metrics.background_mask(o, t, scene, far_px=FAR_PX)
        aperture = max(2.0, 1.5 * scene.fwhm_px)
        bins = metrics.brightness_bins(scene.star_peak, scene.noise_sigma)
    else:
        bg = metrics.background_mask(o, t, None, far_px=FAR_PX / 2, tol=REAL_TOL)
    record: dict[str, Any] = {
        "name": case.name,
        "seed": case.seed,
        "size_px": [int(o.shape[1]), int(o.shape[2])],
        "properties": case.properties,
        "background_fraction": float(bg.mean()),
        "methods": {},
    }
    raw: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, method in methods.items():
        pred, wall_s, cpu_s = _timed(method, o)
        outputs[name] = pred
        diff = pred[:, bg].astype(np.float64) - t[:, bg]
        entry: dict[str, Any] = {
            "psnr_db": metrics.psnr(pred, t),
            "background_psnr_db": metrics.psnr(pred, t, bg),
            "s_per_mp": wall_s / megapixels,
            "cpu_s_per_mp": cpu_s / megapixels,
        }
        pooled: dict[str, Any] = {"bg_sse": float((diff * diff).sum()), "bg_n": int(diff.size)}
        if scene is not None:
            frac = metrics.residual_star_flux(o, pred, t, scene.star_xy, aperture)
            entry["residual_star_flux"] = metrics.summarize(frac, bins)
            kept = metrics.structure_kept(o, pred, t, scene.galaxy_xy, KEPT_RADIUS_PX)
            entry["structure_kept"] = [float(v) for v in kept if np.isfinite(v)]
            seen, still = metrics.detectable_counts(o, pred, t, scene.star_xy, aperture)
            entry["still_detectable"] = still / seen if seen else float("nan")
            pooled.update(fractions=frac, bins=bins, kept=kept, seen=seen, still=still)
            if scene.large_galaxy is not None:
                x, y, re = (float(v) for v in scene.large_galaxy)
                large = metrics.structure_kept(
                    o, pred, t, np.array([[x, y]]), LARGE_KEPT_RADII * re, shared_background=True
                )[0]
                entry["large_galaxy_kept"] = float(large)
                pooled["large_kept"] = large
        record["methods"][name] = entry
        raw[name] = pooled
    return record, raw, outputs


def _pooled_psnr(raws: list[dict[str, Any]]) -> float:
    n = sum(r["bg_n"] for r in raws)
    if n == 0:
        return float("nan")
    mse = sum(r["bg_sse"] for r in raws) / n
    return (
        metrics.PSNR_MAX_DB if mse <= 10 ** (-metrics.PSNR_MAX_DB / 10) else -10 * math.log10(mse)
    )


def aggregate(
    records: list[dict[str, Any]], raws: list[dict[str, dict[str, Any]]]
) -> dict[str, Any]:
    """Overall figures per method: mean PSNR, pooled background PSNR and star statistics."""
    out: dict[str, Any] = {}
    for name in records[0]["methods"]:
        per = [r["methods"][name] for r in records]
        raw = [r[name] for r in raws]
        entry: dict[str, Any] = {
            "psnr_db": float(np.mean([p["psnr_db"] for p in per])),
            "background_psnr_db": _pooled_psnr(raw),
            "s_per_mp": float(np.mean([p["s_per_mp"] for p in per])),
            "cpu_s_per_mp": float(np.mean([p["cpu_s_per_mp"] for p in per])),
        }
        if "fractions" in raw[0]:
            frac = np.concatenate([r["fractions"] for r in raw])
            entry["residual_star_flux"] = metrics.summarize(
                frac, np.concatenate([r["bins"] for r in raw])
            )
            # pooled over stars, the dense fields (tens of thousands of stars each) are
            # almost the whole figure: the other scenes get their own
            dense = np.concatenate(
                [
                    np.full(len(r["fractions"]), bool(rec["properties"].get("dense")))
                    for rec, r in zip(records, raw, strict=True)
                ]
            )
            entry["residual_by_field"] = {
                field: metrics.summarize(frac[pick])["all"]
                for field, pick in (("dense", dense), ("other", ~dense))
            }
            kept = np.concatenate([r["kept"] for r in raw])
            kept = kept[np.isfinite(kept)]
            entry["structure_kept"] = {
                "mean": float(kept.mean()) if kept.size else float("nan"),
                "n": int(kept.size),
            }
            seen = sum(r["seen"] for r in raw)
            entry["still_detectable"] = (
                sum(r["still"] for r in raw) / seen if seen else float("nan")
            )
            large = np.array([r["large_kept"] for r in raw if "large_kept" in r])
            large = large[np.isfinite(large)]
            if large.size:  # scenes of the "large-galaxies" mix
                entry["large_galaxy_kept"] = {"mean": float(large.mean()), "n": int(large.size)}
        out[name] = entry
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def write_preview(path: Path, panels: Sequence[np.ndarray], gap_px: int = 4) -> None:
    """Panels (3, H, W) side by side with white gaps, as a PNG (8-bit)."""
    h = panels[0].shape[1]
    gap = np.full((h, gap_px, 3), 255, np.uint8)
    row = [x for p in panels for x in (_to_uint8(p), gap)][:-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(row, axis=1)).save(path, optimize=True)


def run_benchmark(
    model: torch.nn.Module | None,
    *,
    model_label: str,
    quick: bool = False,
    real_dir: Path | None = DEFAULT_REAL_PAIRS,
    preview_dir: Path | None = None,
    tile_options: TileOptions | None = None,
    protect: ProtectOptions | None = None,
    sky_colour: SkyColourOptions | None = None,
    core_fill: CoreFillOptions | None = None,
    spikes: SpikeOptions | None = None,
    remnants: RemnantOptions | None = None,
    large_stars: LargeStarOptions | None = None,
    cases: list[Case] | None = None,
    glow_cap: float = DEFAULT_GLOW_CAP,
    scene_mix: str = "default",
    synthetic: bool = True,
) -> dict[str, Any]:
    """All figures as a JSON-ready dict (``cases`` overrides the synthetic scenes;
    ``scene_mix`` names the generator mix they are drawn with, :data:`MIXES`;
    ``synthetic=False``: the real pairs alone, a screen that takes seconds, with no
    seam score)."""
    if not synthetic and real_dir is None:
        raise ValueError("nothing to measure: no synthetic scenes and no real pairs")
    # read first: a missing or broken folder fails before minutes of synthetic scenes
    real = real_cases(real_dir) if real_dir is not None else None
    options = tile_options or TileOptions()
    protect = protect or ProtectOptions()
    sky_colour = sky_colour or SkyColourOptions()
    core_fill = core_fill or CoreFillOptions()
    spikes = spikes or SpikeOptions()
    remnants = remnants or RemnantOptions()
    large_stars = large_stars or LargeStarOptions()
    methods: dict[str, Method] = {"input": lambda x: x, "classical": classical_remove_stars}
    if model is not None:
        # what users get: the network (and, when enabled, the large stars at half
        # resolution), then background protection, the sky colour in clipped cores, the
        # rim fill of burnt-out stars, the spikes step and the remnants smoothed
        methods["model"] = lambda x: remove_and_finish(
            model,
            x,
            tiles=options,
            protect=protect,
            sky_colour=sky_colour,
            core_fill=core_fill,
            spikes=spikes,
            remnants=remnants,
            large_stars=large_stars,
        )
    size = QUICK_SIZE_PX if quick else FULL_SIZE_PX
    if not synthetic:
        cases = []
    elif cases is None:
        cases = synthetic_cases(
            QUICK_PLAN if quick else FULL_PLAN, size, glow_cap=glow_cap, mix=MIXES[scene_mix]
        )
        log.info("synthetic scenes: %s", ", ".join(f"{c.name}={c.seed}" for c in cases))
    results: dict[str, Any] = {
        "device": "cpu"
        if options.device == "auto" and not torch.cuda.is_available()
        else options.device,
        "torch_threads": torch.get_num_threads(),
        "tile_options": {
            k: getattr(options, k)
            for k in (
                "tile_px",
                "overlap_px",
                "batch_size",
                "passes",
                "ensemble",
                "upsample",
                "lattice_px",
            )
        },
        "glow_cap_sigma": glow_cap,
        "scene_mix": scene_mix,
    }
    groups = {"synthetic": cases} if synthetic else {}
    if real is not None:
        groups["real"] = real
    for group, group_cases in groups.items():
        records, raws = [], []
        for i, case in enumerate(group_cases):
            record, raw, outputs = evaluate_case(case, methods)
            records.append(record)
            raws.append(raw)
            log.info(
                "%s %s: PSNR %s",
                group,
                case.name,
                ", ".join(f"{n} {m['psnr_db']:.1f}" for n, m in record["methods"].items()),
            )
            if preview_dir is not None and (group == "real" or i < SYNTHETIC_PREVIEWS):
                panels = [case.original, outputs["classical"]]
                panels += [outputs["model"]] if "model" in outputs else []
                write_preview(preview_dir / f"{group}-{case.name}.png", [*panels, case.truth])
        results[group] = {"scenes": records, "overall": aggregate(records, raws)}
    if synthetic:
        results["synthetic"]["size_px"] = int(cases[0].original.shape[1])
        results["synthetic"]["far_px"] = FAR_PX
    model_info: dict[str, Any] = {"label": model_label}
    if model is not None:
        multiple = getattr(model, "multiple", 1)
        if not isinstance(multiple, int):
            raise ValueError(f"model.multiple must be an int, got {multiple!r}")
        seam_device = options.device  # where remove_stars left the model
        macs = macs_per_pixel(model.cpu())
        place_model(model, select_device(seam_device))
        seams = [  # on the synthetic scenes: the real pairs are smaller than one tile
            seam_score(
                network_fn(model, c.original),
                c.original,
                tile_px=options.tile_px,
                overlap_px=options.overlap_px,
                batch_size=options.batch_size,
                device=seam_device,
                multiple=multiple,
            )
            for c in cases[:2]
        ]
        model_info.update(
            macs_per_px=macs,
            macs_ratio_to_starnet_v1=macs / STARNET_V1_MACS_PER_PX,
            seam_score=float(max(seams)) if seams else None,
        )
    results["model"] = model_info
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--weights", type=Path, help="weights file or training checkpoint (default: packaged)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="output folder"
    )
    parser.add_argument("--quick", action="store_true", help="three 256 px scenes (smoke test)")
    parser.add_argument(
        "--real-pairs",
        type=Path,
        default=DEFAULT_REAL_PAIRS,
        help="folder with original/ and starless/ (default: %(default)s)",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--no-real", action="store_true", help="skip the real pairs")
    only.add_argument(
        "--real-only",
        action="store_true",
        help="the real pairs alone (seconds: a screen before the full benchmark)",
    )
    parser.add_argument("--no-model", action="store_true", help="input and classical only")
    parser.add_argument("--no-previews", action="store_true", help="write no preview images")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--ensemble",
        type=int,
        choices=(1, 2, 4, 8),
        default=1,
        help="model's geometric self-ensemble (inference.ensemble; default 1 = off)",
    )
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="network passes, each on the previous output (inference.passes; default 1)",
    )
    parser.add_argument(
        "--upsample",
        action="store_true",
        help="2x upsample each tile before the network (inference.upsample)",
    )
    parser.add_argument(
        "--glow-cap",
        type=float,
        default=DEFAULT_GLOW_CAP,
        help="smooth star glow the synthetic truth keeps, in noise sigmas (default %(default)s)",
    )
    parser.add_argument(
        "--scene-mix",
        choices=sorted(MIXES),
        default="default",
        help="generator mix the synthetic scenes are drawn with (default %(default)s: "
        "the held-out set every model is compared on)",
    )
    parser.add_argument(
        "--no-sky-colour",
        action="store_true",
        help="leave the network's fill of clipped star cores as it is (sky_colour.enabled: false)",
    )
    parser.add_argument(
        "--no-core-fill",
        action="store_true",
        help="leave burnt-out stars as the network fills them (core_fill.enabled: false)",
    )
    parser.add_argument(
        "--no-spikes",
        action="store_true",
        help="leave the diffraction spikes the network leaves (spikes.enabled: false)",
    )
    parser.add_argument(
        "--no-remnants",
        action="store_true",
        help="leave what the network leaves of the stars inside their footprints "
        "(remnants.enabled: false)",
    )
    parser.add_argument(
        "--large-stars",
        action="store_true",
        help="also run the network at half resolution for the big stars it leaves as "
        "blobs (large_stars.enabled: true)",
    )
    parser.add_argument(
        "--lattice",
        type=int,
        default=0,
        metavar="PX",
        help="take the network's grid pattern of this period out of its output "
        "(inference.lattice_px; default 0: left)",
    )
    args = parser.parse_args(argv)
    if args.passes < 1:
        parser.error(f"--passes must be 1 or more, got {args.passes}")
    try:
        check_glow_cap(args.glow_cap, "--glow-cap")
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    model: torch.nn.Module | None = None
    label = "no model"
    if not args.no_model:
        from starnet_core.checkpoint import load_any

        try:
            if args.weights is None:
                model, info = load_model(None)
                label = f"packaged model {info.version} sha256 {info.sha256[:12]}"
            else:
                model, label = load_any(args.weights)
        except (FileNotFoundError, ValueError) as e:
            parser.error(str(e))
    real_dir = None if args.no_real else args.real_pairs
    stem = "quality_quick" if args.quick else "quality"
    stem += "_real" if args.real_only else ""
    stem += f"_ensemble{args.ensemble}" if args.ensemble > 1 else ""
    stem += f"_passes{args.passes}" if args.passes > 1 else ""
    stem += "_upsample" if args.upsample else ""
    stem += f"_glow{args.glow_cap:g}" if args.glow_cap != DEFAULT_GLOW_CAP else ""
    stem += f"_mix{args.scene_mix}" if args.scene_mix != "default" else ""
    stem += "_noskycolour" if args.no_sky_colour else ""
    stem += "_nocorefill" if args.no_core_fill else ""
    stem += "_nospikes" if args.no_spikes else ""
    stem += "_noremnants" if args.no_remnants else ""
    stem += f"_lattice{args.lattice}" if args.lattice else ""
    stem += "_largestars" if args.large_stars else ""
    preview_dir = None if args.no_previews else args.out / "previews"
    if args.ensemble > 1:
        label += f", {args.ensemble}x self-ensemble"
    if args.passes > 1:
        label += f", {args.passes} passes"
    if args.upsample:
        label += ", 2x upsampled"
    if args.no_sky_colour:
        label += ", clipped cores left as the network colours them"
    if args.no_core_fill:
        label += ", burnt-out stars left as the network fills them"
    if args.no_spikes:
        label += ", diffraction spikes left as the network leaves them"
    if args.no_remnants:
        label += ", star remnants left as the network leaves them"
    if args.lattice:
        label += f", its {args.lattice} px grid pattern taken out"
    if args.large_stars:
        label += ", large stars taken at half resolution"
    try:
        results = run_benchmark(
            model,
            model_label=label,
            quick=args.quick,
            real_dir=real_dir,
            preview_dir=preview_dir,
            tile_options=TileOptions(
                ensemble=args.ensemble,
                passes=args.passes,
                upsample=args.upsample,
                lattice_px=args.lattice,
            ),
            glow_cap=args.glow_cap,
            scene_mix=args.scene_mix,
            sky_colour=SkyColourOptions(enabled=not args.no_sky_colour),
            core_fill=CoreFillOptions(enabled=not args.no_core_fill),
            spikes=SpikeOptions(enabled=not args.no_spikes),
            remnants=RemnantOptions(enabled=not args.no_remnants),
            large_stars=LargeStarOptions(enabled=args.large_stars),
            synthetic=not args.real_only,
        )
    except ValueError as e:  # a missing or unreadable real-pairs folder, named
        parser.error(str(e))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps(finite_json(results), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )
    report = render_markdown(results)
    (args.out / f"{stem}.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
