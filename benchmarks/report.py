"""The quality benchmark's markdown report (tables from the results dict of
:func:`benchmarks.quality.run_benchmark`) and JSON clean-up."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["finite_json", "render_markdown"]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _flux_cell(summary: dict[str, dict[str, float]], key: str) -> str:
    s = summary[key]
    return f"{_fmt(s['median'], 2)} / {_fmt(s['p95'], 2)} ({s['n']})"


def _synthetic_section(results: dict[str, Any], syn: dict[str, Any]) -> list[str]:
    """The synthetic scenes' overall and per-scene tables."""
    lines = [
        f"## Synthetic held-out scenes ({len(syn['scenes'])} × {syn['size_px']} px, seeds "
        f"{', '.join(str(s['seed']) for s in syn['scenes'])})",
        "",
        "Residual star flux: fraction of each star's flux left, median / p95 (stars); "
        "bins by linear peak SNR: faint < 30 ≤ medium < 300 ≤ bright. Background PSNR: "
        f"pixels > {syn['far_px']:g} px from anything a star touched, pooled. The truth "
        f"keeps smooth star glow up to {results.get('glow_cap_sigma', 3.0):g} noise sigmas."
        + (
            f" Scenes drawn with the generator's {results['scene_mix']!r} mix "
            "(starnet_core.synthetic.MIXES), not the default held-out set."
            if results.get("scene_mix", "default") != "default"
            else ""
        ),
        "",
        "| method | PSNR dB | bg PSNR dB | residual all | faint | medium | bright | "
        "structure kept | still detectable | s/MP (CPU s/MP) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, o in syn["overall"].items():
        r = o["residual_star_flux"]
        lines.append(
            f"| {name} | {_fmt(o['psnr_db'])} | {_fmt(o['background_psnr_db'])} | "
            f"{_flux_cell(r, 'all')} | {_flux_cell(r, 'faint')} | {_flux_cell(r, 'medium')} | "
            f"{_flux_cell(r, 'bright')} | {_fmt(o['structure_kept']['mean'], 2)} "
            f"({o['structure_kept']['n']}) | {_fmt(o['still_detectable'], 2)} | "
            f"{_fmt(o['s_per_mp'], 2)} ({_fmt(o['cpu_s_per_mp'], 2)}) |"
        )
    names = list(syn["overall"])
    if all("large_galaxy_kept" in o for o in syn["overall"].values()):
        large = [s for s in syn["scenes"] if "large_galaxy_kept" in s["methods"][names[0]]]
        lines += [
            "",
            "Large galaxies kept: share of each large galaxy's flux (within 1.5 effective "
            "radii, above the truth's local background) the output keeps, pixel by pixel, "
            "mean (galaxies); per scene after it.",
            "",
            "| method | mean | " + " | ".join(s["name"] for s in large) + " |",
            "|---|---|" + "---|" * len(large),
        ]
        for name, o in syn["overall"].items():
            per = [_fmt(s["methods"][name]["large_galaxy_kept"], 2) for s in large]
            lines.append(
                f"| {name} | {_fmt(o['large_galaxy_kept']['mean'], 2)} "
                f"({o['large_galaxy_kept']['n']}) | " + " | ".join(per) + " |"
            )
    if all("residual_by_field" in o for o in syn["overall"].values()):
        lines += [
            "",
            "Residual star flux by field, median / p95 (stars): the pooled figure above is "
            "almost all the dense fields' stars.",
            "",
            "| method | dense fields | other scenes |",
            "|---|---|---|",
        ]
        for name, o in syn["overall"].items():
            f = o["residual_by_field"]
            lines.append(f"| {name} | {_flux_cell(f, 'dense')} | {_flux_cell(f, 'other')} |")
    lines += [
        "",
        "Per scene (PSNR dB / bg PSNR dB / bright-star residual median / galaxies and knots "
        "kept, mean):",
        "",
        "| scene | seed | stars | fwhm px | " + " | ".join(names) + " |",
        "|---|---|---|---|" + "---|" * len(names),
    ]
    for s in syn["scenes"]:
        cells = []
        for n in names:
            m = s["methods"][n]
            kept = m.get("structure_kept") or []
            cells.append(
                f"{_fmt(m['psnr_db'])} / {_fmt(m['background_psnr_db'])} / "
                f"{_fmt(m['residual_star_flux']['bright']['median'], 2)} / "
                f"{_fmt(float(np.mean(kept)) if kept else float('nan'), 2)}"
            )
        p = s["properties"]
        lines.append(
            f"| {s['name']} | {s['seed']} | {p['stars']} | {p['fwhm_px']} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """The report: overall tables, per-scene PSNR, model cost."""
    lines = [f"# Star removal quality — {results['model']['label']}", ""]
    syn = results.get("synthetic")
    if syn:
        lines += _synthetic_section(results, syn)
    real = results.get("real")
    if real:
        lines += [
            "",
            f"## Real pairs ({len(real['scenes'])}, PSNR dB against the hand-made starless)",
            "",
            "| method | "
            + " | ".join(s["name"] for s in real["scenes"])
            + " | mean | bg PSNR dB |",
            "|---|" + "---|" * (len(real["scenes"]) + 2),
        ]
        for n, o in real["overall"].items():
            cells = [_fmt(s["methods"][n]["psnr_db"]) for s in real["scenes"]]
            lines.append(
                f"| {n} | "
                + " | ".join(cells)
                + f" | {_fmt(o['psnr_db'])} | {_fmt(o['background_psnr_db'])} |"
            )
    m = results["model"]
    if m.get("macs_per_px") is not None:
        lines += [
            "",
            "## Model cost",
            "",
            f"- MAC per pixel: {m['macs_per_px'] / 1000:.2f} k "
            f"({100 * m['macs_ratio_to_starnet_v1']:.1f}% of StarNet v1's ~92 k)",
            "- Seam score (largest change on tile borders when tiles move): "
            + (
                _fmt(m["seam_score"], 4)
                if m.get("seam_score") is not None
                else "not measured (real pairs only)"
            ),
        ]
    lines += ["", f"Device: {results['device']}; torch threads: {results['torch_threads']}.", ""]
    return "\n".join(lines)


def finite_json(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
