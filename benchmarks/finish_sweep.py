"""Tune the steps after the network on development scenes, never the held-out ones.

    python -m benchmarks.finish_sweep [--weights W] [--threads N] SETTING [SETTING ...]

The steps after the network (``starnet_core.masks.finish_starless``: background
protection, the sky's colour where stars were, the rim fill of burnt-out stars,
the diffraction spikes the network left, the stars' remnants smoothed) have
settings in config.yaml (``protect``, ``sky_colour``, ``core_fill``, ``spikes``,
``remnants``). This
tool measures candidate settings on development scenes: generator seeds
6,000,000-6,000,047 at 384 px, drawn with the default and the hard mix
(:data:`DEV_SEEDS`; far from training's ``1234 + step`` and from the held-out
benchmark's 9,000,001 and up). The network runs once per scene; each setting is
then applied to its output and scored with the quality benchmark's own
figures (:func:`benchmarks.quality.evaluate_case` and
:func:`benchmarks.quality.aggregate`). Choose on these, then judge the choice
once with ``python -m benchmarks.quality`` against a rule written beforehand.

A SETTING is one candidate: comma-separated ``section.field=value`` overrides
of the defaults, e.g. ``core_fill.clip_level=0.75`` or
``protect.dilate_px=1,protect.threshold=0.03``. The defaults are always the
first row. Prints a markdown table: per mix, PSNR, pooled background PSNR,
residual star flux median / p95, galaxies kept and still detectable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from benchmarks.quality import Case, aggregate, evaluate_case
from starnet_core.inference import TileOptions, remove_stars
from starnet_core.masks import finish_starless
from starnet_core.model import load_model
from starnet_core.options import (
    CoreFillOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
)
from starnet_core.synthetic import MIXES, make_pair

DEV_SEEDS = range(6_000_000, 6_000_048)
DEV_SIZE_PX = 384
SECTIONS: dict[str, type] = {
    "protect": ProtectOptions,
    "sky_colour": SkyColourOptions,
    "core_fill": CoreFillOptions,
    "spikes": SpikeOptions,
    "remnants": RemnantOptions,
}

Finish = dict[str, Any]  # section name -> options object


def parse_setting(text: str) -> Finish:
    """``"core_fill.clip_level=0.75,protect.dilate_px=1"`` -> the options per section.

    Sections not named keep their defaults. Values take the type of the field's
    default (bool from ``true``/``false``). Raises ValueError naming the bad part.
    """
    finish: Finish = {name: cls() for name, cls in SECTIONS.items()}
    changes: dict[str, dict[str, Any]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, raw = part.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or not dot:
            raise ValueError(f"{part!r}: expected section.field=value")
        if section not in SECTIONS:
            raise ValueError(f"{part!r}: unknown section {section!r}; known: {sorted(SECTIONS)}")
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        if field not in fields:
            raise ValueError(f"{part!r}: {section} has no field {field!r}; known: {sorted(fields)}")
        default = getattr(finish[section], field)
        raw = raw.strip()
        value: Any
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false"):
                raise ValueError(f"{part!r}: {section}.{field} takes true or false")
            value = raw.lower() == "true"
        else:
            try:
                value = type(default)(raw)
            except ValueError:
                raise ValueError(
                    f"{part!r}: {section}.{field} takes a {type(default).__name__}"
                ) from None
        changes.setdefault(section, {})[field] = value
    for section, kw in changes.items():
        finish[section] = dataclasses.replace(finish[section], **kw)  # the options' own checks
    return finish


def dev_cases(mix: str, seeds: Sequence[int] = DEV_SEEDS, size_px: int = DEV_SIZE_PX) -> list[Case]:
    """The development scenes of one generator mix (every kind, 8- and 16-bit)."""
    cases = []
    for seed in seeds:
        o, t, scene = make_pair(np.random.default_rng(seed), size_px, mix=MIXES[mix])
        cases.append(Case(str(seed), o, t, scene, seed))
    return cases


def score(cases: list[Case], outputs: list[np.ndarray], finish: Finish) -> dict[str, float]:
    """The benchmark's overall figures of ``finish`` applied to the network's ``outputs``."""
    records, raws = [], []
    for case, net in zip(cases, outputs, strict=True):

        def method(x: np.ndarray, net: np.ndarray = net) -> np.ndarray:
            return finish_starless(
                x,
                net,
                finish["protect"],
                finish["sky_colour"],
                finish["core_fill"],
                finish["spikes"],
                remnants=finish["remnants"],
            )

        record, raw, _ = evaluate_case(case, {"model": method})
        records.append(record)
        raws.append(raw)
    o = aggregate(records, raws)["model"]
    return {
        "psnr": o["psnr_db"],
        "bg": o["background_psnr_db"],
        "median": o["residual_star_flux"]["all"]["median"],
        "p95": o["residual_star_flux"]["all"]["p95"],
        "kept": o["structure_kept"]["mean"],
        "detectable": o["still_detectable"],
    }


def _row(label: str, per_mix: dict[str, dict[str, float]]) -> str:
    cells = [
        f"{s['psnr']:.3f} | {s['bg']:.2f} | {s['median']:.4f} / {s['p95']:.3f} | "
        f"{s['kept']:.3f} | {s['detectable']:.3f}"
        for s in per_mix.values()
    ]
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.finish_sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("settings", nargs="*", metavar="SETTING", help="section.field=value,...")
    parser.add_argument("--weights", help="weights file or training checkpoint (default: packaged)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--mix",
        nargs="+",
        choices=sorted(MIXES),
        default=["default", "hard"],
        help="generator mixes of the development scenes (default: default hard)",
    )
    parser.add_argument(
        "--scenes",
        type=int,
        default=len(DEV_SEEDS),
        help=f"scenes per mix, from the first seed (default {len(DEV_SEEDS)})",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.scenes <= len(DEV_SEEDS):
        parser.error(f"--scenes must be 1 to {len(DEV_SEEDS)}, got {args.scenes}")
    try:
        candidates = [("defaults", parse_setting(""))]
        candidates += [(s, parse_setting(s)) for s in args.settings]
    except ValueError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    from starnet_core.checkpoint import load_any

    try:
        model = load_model(None)[0] if args.weights is None else load_any(args.weights)[0]
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    seeds = DEV_SEEDS[: args.scenes]
    sets = {}
    for mix in args.mix:
        cases = dev_cases(mix, seeds)
        sets[mix] = (cases, [remove_stars(model, c.original, TileOptions()) for c in cases])
    head = " | ".join(
        f"{m} PSNR | {m} bg | {m} residual median / p95 | {m} kept | {m} detectable"
        for m in args.mix
    )
    print(
        f"Development scenes: seeds {seeds.start:,}-{seeds.stop - 1:,}, {DEV_SIZE_PX} px, "
        f"mixes {', '.join(args.mix)}\n"
    )
    print(f"| setting | {head} |")
    print("|---|" + "---|" * (5 * len(args.mix)))
    for label, finish in candidates:
        per_mix = {mix: score(cases, outs, finish) for mix, (cases, outs) in sets.items()}
        print(_row(label, per_mix), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
