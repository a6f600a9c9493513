"""``starnet train`` / ``starnet plot``: the original StarNet's training modes.

``starnet train`` resumes: from the run's checkpoint when one exists, else from
the current weights (``inference.weights`` or the packaged model). A resumed run
keeps the settings it was started with (the checkpoint's): only the options given
again change them, and it says which changed. --device, --threads, --workers,
--minutes and --d-warmup are this start's alone.
``starnet train --new`` starts a fresh model (asks first, or ``--yes``); it is
unconditioned unless ``--width-cond`` is given (the packaged model is conditioned).
Pairs come from ``train/original/`` and ``train/starless/`` (identical names)
and/or the synthetic generator (``--synthetic``). Logs, showcase images and the
checkpoint go to ``./logs`` (``--logs``). A resumed run's log loses the records of the
steps after its checkpoint (they are trained again); a run that starts over moves the
previous run's log, showcase images and kept weights into ``previous-<time>/`` there.
Ctrl-C (or SIGTERM) stops at the next step and saves the checkpoint; a second Ctrl-C
aborts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

log = logging.getLogger("starnet.train")


# Mix field -> (the option that sets it, its kind: SHARE, RANGE (LOW HIGH) or RATE, help).
# Errors name the option.
_MIX_OPTIONS: dict[str, tuple[str, str, str]] = {
    "dense_share": ("--dense-share", "SHARE", "share of Milky-Way-dense crops (0.25)"),
    "spike_share": ("--spike-share", "SHARE", "share of crops with spiked stars (0.3)"),
    "spike_amp": (
        "--spike-amp",
        "RANGE",
        "spike strength over the star's peak, log-uniform (0.003 0.1)",
    ),
    "spike_decay": (
        "--spike-decay",
        "RANGE",
        "fall-off exponent along a spike; lower: long arms on faint stars too (0.9 1.6)",
    ),
    "chromatic_spike_share": (
        "--chromatic-spikes",
        "SHARE",
        "share of spiked crops whose arms break into colour segments (0)",
    ),
    "chromatic_psf_share": (
        "--chromatic-psf",
        "SHARE",
        "share of crops whose star cores and halos differ in width by colour (0)",
    ),
    "bayer_share": (
        "--bayer-share",
        "SHARE",
        "share of colour crops mosaicked and demosaiced as by a one-shot-colour camera (0)",
    ),
    "nucleus_share": (
        "--nucleus-share",
        "SHARE",
        "share of small galaxies with a bright, nearly star-sharp nucleus (0.3)",
    ),
    "galaxy_share": ("--galaxy-share", "SHARE", "share of crops with small galaxies (0.7)"),
    "galaxy_rate": (
        "--galaxy-rate",
        "RATE",
        "small galaxies per crop, x the default count of 2 per 176 px square (1)",
    ),
    "bright_rate": (
        "--bright-rate",
        "RATE",
        "very bright (saturated, bloated) stars per crop that has them, x the default of 0.6 "
        "per 128 px square (1)",
    ),
    "large_galaxy_share": (
        "--large-galaxy-share",
        "SHARE",
        "share of crops with one large galaxy (10-40 px effective radius, spiral arms in "
        "half of them), kept (0)",
    ),
    "group_share": (
        "--group-share",
        "SHARE",
        "share of crops with extra bright close doubles and small groups of stars (0)",
    ),
    "clip_headroom": (
        "--clip-headroom",
        "RANGE",
        "the camera's clip level over the generator's own, log-uniform per crop; higher: "
        "small burnt-out cores in wide halos, as in real frames (1 1)",
    ),
    "cast_share": (
        "--cast-share",
        "SHARE",
        "share of colour crops given a colour cast after the stretch (per-channel curves, "
        "saturation) (0)",
    ),
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train the model (resumes; --new for a fresh one)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--new",
        action="store_true",
        help="start a fresh model instead of resuming (unconditioned unless --width-cond, "
        "although the packaged model is width-conditioned)",
    )
    p.add_argument(
        "--yes", action="store_true", help="do not ask before --new discards a checkpoint"
    )
    p.add_argument("--synthetic", action="store_true", help="train on generated star fields")
    p.add_argument(
        "--data",
        help="folder with original/ and starless/ (default ./train, which --synthetic "
        "does without)",
    )
    p.add_argument(
        "--logs", default="logs", help="logs, showcase images, checkpoint (default ./logs)"
    )
    p.add_argument("--steps", type=int, help="total steps to reach (default from TrainConfig)")
    p.add_argument("--batch", type=int, help="batch size")
    p.add_argument("--crop", type=int, help="crop size in px")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument(
        "--lr-min",
        type=float,
        help="learning rate at the end of the cosine decay (default 5e-5, or --lr / 10 if lower)",
    )
    p.add_argument("--real-ratio", type=float, help="share of file pairs in a batch when mixing")
    p.add_argument(
        "--gan-start", type=int, help="step at which adversarial + perceptual terms start"
    )
    p.add_argument(
        "--d-warmup",
        type=int,
        metavar="STEPS",
        help="discriminator-only steps against the frozen generator before it trains (a "
        "fine-tune starts with a fresh discriminator); not counted in --steps, but part of the "
        "--minutes budget",
    )
    p.add_argument(
        "--star-weight",
        type=float,
        help="extra L1 weight on star pixels, |original - starless| > --star-threshold (20)",
    )
    p.add_argument(
        "--star-threshold",
        type=float,
        help="stretched difference above which a pixel is a star pixel (0.01); lower: "
        "fainter stars and wings weigh too",
    )
    p.add_argument(
        "--w-rel",
        type=float,
        help="weight of the star pixels' error relative to their star light, so faint "
        "stars count as much as bright ones (0: none)",
    )
    p.add_argument(
        "--w-over", type=float, help="weight of the over-removal term (galaxies, nebula kept)"
    )
    p.add_argument(
        "--w-galaxy",
        type=float,
        help="extra over-removal weight on the galaxies and knots of synthetic crops, "
        "stars on them included (0: none)",
    )
    p.add_argument(
        "--w-anchor",
        type=float,
        help="L1 to a reference model's output on dense-field crops: hold what it does "
        "there while the fine-tune learns the rest (0: none)",
    )
    p.add_argument(
        "--anchor",
        metavar="WEIGHTS",
        help="the reference model of --w-anchor (default: the weights the run fine-tunes "
        "from, inference.weights or the packaged model)",
    )
    p.add_argument(
        "--ema",
        type=float,
        metavar="DECAY",
        help="keep a moving average of the generator's weights at this decay (e.g. 0.999) "
        "and export it; checkpoints are then evaluated as it (0: none)",
    )
    p.add_argument(
        "--film-lr-mult",
        type=float,
        metavar="M",
        help="a width-conditioned model's FiLM weights learn at M times --lr (default 1); "
        "at 1 they stay near zero in a fine-tune",
    )
    p.add_argument(
        "--film-only",
        action=argparse.BooleanOptionalAction,
        help="train a width-conditioned model's FiLM weights alone, every other weight frozen "
        "(--no-film-only: a resumed --film-only run trains them all)",
    )
    p.add_argument(
        "--over-threshold",
        type=float,
        help="the over-removal term applies where |original - starless| is at most this",
    )
    p.add_argument("--w-gan", type=float, help="weight of the adversarial term (0: none)")
    p.add_argument(
        "--w-percep", type=float, help="weight of the discriminator-feature perceptual term"
    )
    p.add_argument(
        "--width-cond",
        action="store_true",
        help="condition the generator on each frame's typical star width (a fresh model, "
        "or the fine-tuned one made conditioned, starting exactly as it was); applies when "
        "a run starts, a resumed run keeps its checkpoint's architecture",
    )
    p.add_argument(
        "--glow-cap",
        type=float,
        help="smooth star glow the synthetic truth keeps, in noise sigmas (default 1.5)",
    )
    mix = p.add_argument_group(
        "synthetic mix",
        "how often generated crops draw their harder cases (defaults: the generator's own "
        "mix, the one the quality benchmark's held-out scenes use)",
    )
    mix.add_argument(
        "--scene-mix",
        help="named mix to start from: default, hard or large-galaxies (synthetic.MIXES; "
        "default: default, or a resumed run's own); the options below change single fields "
        "of it",
    )
    for field, (option, kind, text) in _MIX_OPTIONS.items():
        if kind == "RANGE":
            mix.add_argument(
                option, dest=field, type=float, nargs=2, metavar=("LOW", "HIGH"), help=text
            )
        else:
            mix.add_argument(option, dest=field, type=float, metavar=kind, help=text)
    p.add_argument("--pool", type=int, help="synthetic crops held in memory")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes generating synthetic crops (default 0: in the training loop)",
    )
    p.add_argument(
        "--minutes",
        type=float,
        help="wall-clock budget of the whole run, building the synthetic pool and any "
        "--d-warmup included: stop when it is spent; the learning rate decays over what "
        "is left of it once training starts (anew when the run resumes a checkpoint)",
    )
    p.add_argument(
        "--export",
        help="after training, write the generator weights (its moving average with --ema) here",
    )
    p.add_argument(
        "--keep-every",
        type=int,
        metavar="STEPS",
        help="every this many steps (a multiple of 500, the checkpoint interval) also keep "
        "the generator as weights-<step>.safetensors in --logs, to average with "
        "`starnet soup` (default 0: none)",
    )
    p.add_argument(
        "--version",
        help="version stored in the --export and --ship weights (default 0.0.0-dev+<8 hex "
        "of the weights>, unique to them)",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help="after training, make the generator (its moving average with --ema) the "
        "packaged default model (with --version)",
    )
    p.set_defaults(func=cmd_train)

    q = sub.add_parser("plot", help="draw loss and metric graphs from training logs to PNG")
    q.add_argument("--logs", default="logs", help="training log folder (default ./logs)")
    q.add_argument("--out", help="PNG path (default LOGS/training.png)")
    q.set_defaults(func=cmd_plot)

    a = sub.add_parser(
        "soup",
        help="average the weights of models fine-tuned from one ancestor (a model soup)",
        description="Write the parameter-wise weighted mean of two or more generators "
        "(exported weights files or training checkpoints) as a weights file, or ship it as "
        "the packaged default model.",
    )
    a.add_argument("models", nargs="+", help="weights files or training checkpoints")
    a.add_argument("--mix", type=float, nargs="+", help="one share per model (default equal)")
    dest = a.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="write the averaged weights here")
    dest.add_argument("--ship", action="store_true", help="make it the packaged default model")
    a.add_argument(
        "--version",
        help="version stored in the weights (default 0.0.0-dev+<8 hex of the weights>, "
        "unique to them)",
    )
    a.set_defaults(func=cmd_soup)


# A --minutes run without --steps: the budget alone ends it.
_TIME_ONLY_STEPS = 2**62
# What a resumed run does not take from its checkpoint: the machine it runs on, and what
# one start does (its time budget, its discriminator warm-up).
_THIS_START = ("device", "threads", "workers", "time_limit_s", "d_warmup_steps")


def _config(args: argparse.Namespace, base: Any = None) -> Any:
    """The run's TrainConfig: ``base`` (a resumed run: its checkpoint's config, less
    :data:`_THIS_START`) or the defaults, with the options given on the command line."""
    from starnet_core.synthetic import MIXES
    from starnet_core.train import TrainConfig

    defaults = TrainConfig()
    cfg = dataclasses.replace(base) if base is not None else defaults
    if base is not None:
        for name in _THIS_START:
            setattr(cfg, name, getattr(defaults, name))
        if cfg.steps == _TIME_ONLY_STEPS and args.minutes is None:
            cfg.steps = defaults.steps  # a --minutes run's steps: not a target
    for attr, name in (
        ("steps", "steps"),
        ("batch", "batch_size"),
        ("crop", "crop_px"),
        ("lr", "lr"),
        ("lr_min", "lr_min"),
        ("real_ratio", "real_ratio"),
        ("gan_start", "gan_start_step"),
        ("d_warmup", "d_warmup_steps"),
        ("pool", "pool_size"),
        ("glow_cap", "glow_cap_sigma"),
        ("star_weight", "star_weight"),
        ("star_threshold", "star_threshold"),
        ("w_rel", "w_rel"),
        ("w_over", "w_over"),
        ("w_galaxy", "w_galaxy"),
        ("w_anchor", "w_anchor"),
        ("ema", "ema_decay"),
        ("film_lr_mult", "film_lr_mult"),
        ("over_threshold", "over_threshold"),
        ("w_gan", "w_gan"),
        ("w_percep", "w_percep"),
        ("threads", "threads"),
        ("device", "device"),
        ("workers", "workers"),
        ("keep_every", "keep_every"),
    ):
        value = getattr(args, attr)
        if value is not None:
            setattr(cfg, name, value)
    if args.width_cond:
        cfg.model = dataclasses.replace(cfg.model, width_cond=True)
    if args.film_only is not None:
        cfg.film_only = bool(args.film_only)
    shifts = {f: getattr(args, f) for f in _MIX_OPTIONS if getattr(args, f) is not None}
    if args.scene_mix is not None:
        if args.scene_mix not in MIXES:
            raise ValueError(
                f"--scene-mix must be one of {', '.join(MIXES)}, got {args.scene_mix!r}"
            )
        cfg.mix = MIXES[args.scene_mix]
    elif base is None:
        cfg.mix = MIXES["default"]
    if shifts:
        try:
            cfg.mix = dataclasses.replace(cfg.mix, **shifts)
        except ValueError as e:  # name the option the user typed, not the field
            field = str(e).split(" ", 1)[0]
            option = _MIX_OPTIONS[field][0] if field in _MIX_OPTIONS else field
            raise ValueError(f"{option}: {e}") from None
    for option, value in (
        ("--star-weight", cfg.star_weight),
        ("--star-threshold", cfg.star_threshold),
        ("--w-rel", cfg.w_rel),
        ("--w-over", cfg.w_over),
        ("--w-galaxy", cfg.w_galaxy),
        ("--w-anchor", cfg.w_anchor),
        ("--over-threshold", cfg.over_threshold),
        ("--w-gan", cfg.w_gan),
        ("--w-percep", cfg.w_percep),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{option} must be a number >= 0, got {value:g}")
    for option, count, least in (
        ("--steps", cfg.steps, 1),
        ("--batch", cfg.batch_size, 1),
        ("--crop", cfg.crop_px, cfg.model.multiple),
        ("--pool", cfg.pool_size, 1),
        ("--gan-start", cfg.gan_start_step, 0),
        ("--threads", cfg.threads, 0),
    ):
        if count < least:
            raise ValueError(f"{option} must be at least {least}, got {count}")
    if cfg.crop_px % cfg.model.multiple:
        raise ValueError(
            f"--crop must be a multiple of {cfg.model.multiple} px (the network's input "
            f"size step), got {cfg.crop_px}"
        )
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"--lr must be a number > 0, got {cfg.lr:g}")
    if args.lr_min is None and cfg.lr_min > cfg.lr:  # --lr alone, below the default floor
        cfg.lr_min = cfg.lr / 10
    if not (math.isfinite(cfg.lr_min) and 0 <= cfg.lr_min <= cfg.lr):
        raise ValueError(
            f"--lr-min must be a number from 0 to --lr ({cfg.lr:g}), got {cfg.lr_min:g}"
        )
    if cfg.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {cfg.workers}")
    if not 0 <= cfg.real_ratio <= 1:
        raise ValueError(f"--real-ratio must be a share in [0, 1], got {cfg.real_ratio:g}")
    if cfg.keep_every < 0 or cfg.keep_every % cfg.checkpoint_every:
        raise ValueError(
            f"--keep-every must be 0 or a multiple of {cfg.checkpoint_every} steps (the "
            f"checkpoint interval), got {cfg.keep_every}"
        )
    if cfg.d_warmup_steps < 0:
        raise ValueError(f"--d-warmup must be 0 or more steps, got {cfg.d_warmup_steps}")
    if cfg.d_warmup_steps > 0 and cfg.w_gan == 0 and cfg.w_percep == 0:
        raise ValueError("--d-warmup needs the adversarial terms (--w-gan or --w-percep > 0)")
    if not (math.isfinite(cfg.film_lr_mult) and cfg.film_lr_mult > 0):
        raise ValueError(f"--film-lr-mult must be a number > 0, got {cfg.film_lr_mult:g}")
    if not (math.isfinite(cfg.ema_decay) and 0 <= cfg.ema_decay < 1):
        raise ValueError(f"--ema must be a decay in [0, 1), got {cfg.ema_decay:g}")
    if args.minutes is not None:
        if not args.minutes > 0:
            raise ValueError(f"--minutes must be positive, got {args.minutes}")
        cfg.time_limit_s = 60.0 * args.minutes
        if args.steps is None and (base is None or base.steps == _TIME_ONLY_STEPS):
            cfg.steps = _TIME_ONLY_STEPS  # the budget alone ends the run (a resumed run
            # with a step target keeps it: whichever comes first ends this start)
    return cfg


def _changes(before: Any, after: Any) -> list[str]:
    """``name old -> new`` for each TrainConfig field (mix fields as ``mix.name``) that
    differs, the architecture and :data:`_THIS_START` left out."""

    def flat(cfg: Any) -> dict[str, Any]:
        d = dataclasses.asdict(cfg)
        d.pop("model", None)
        out = {k: v for k, v in d.items() if k != "mix" and k not in _THIS_START}
        out |= {f"mix.{k}": v for k, v in d["mix"].items()}
        return out

    old, new = flat(before), flat(after)

    def show(v: Any) -> str:
        return "none" if v == _TIME_ONLY_STEPS else str(list(v) if isinstance(v, tuple) else v)

    return [f"{k} {show(old[k])} -> {show(new[k])}" for k in new if old.get(k) != new[k]]


# The names of the generators a run keeps (--keep-every; train.kept_weights_path).
_KEPT_WEIGHTS = re.compile(r"weights-\d{9}\.safetensors")
# What a run leaves in --logs besides its checkpoint (which --new discards): set aside
# when a run starts over. training.png: `starnet plot`'s default output, drawn from the log.
_RUN_FILES = re.compile(
    r"train_log\.jsonl|training\.png|showcase_\d{7}\.png|weights-\d{9}\.safetensors"
)


def _set_aside_previous_run(logs: Path) -> Path | None:
    """Move the files a previous run left in ``logs`` (:data:`_RUN_FILES`) into a new
    ``logs/previous-<time>/``, so a run that starts over never mixes with them; returns
    that folder, None when there were none. Nothing else in ``logs`` is touched."""
    files = sorted(p for p in logs.iterdir() if _RUN_FILES.fullmatch(p.name) and p.is_file())
    if not files:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = logs / f"previous-{stamp}", 1
    while dest.exists():
        n += 1
        dest = logs / f"previous-{stamp}-{n}"
    dest.mkdir()
    for p in files:
        p.rename(dest / p.name)
    return dest


def _log_step(line: str) -> int | None:
    """The step of one train_log.jsonl line; None when it is not a record (torn by a
    run killed mid-write)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


def _trim_log(log_file: Path, step: int) -> int:
    """Drop the records of the steps after ``step`` (those past the checkpoint a run
    resumes: they are trained and logged again) from ``log_file``, rewritten atomically;
    other lines stay. Returns how many records were dropped."""
    if not log_file.exists():
        return 0
    from starnet_core.imageio import _atomic_write

    text = log_file.read_text(encoding="utf-8")
    lines = text.splitlines()
    kept = [line for line in lines if (_log_step(line) or 0) <= step]
    if len(kept) < len(lines) or (text and not text.endswith("\n")):
        # a torn last line gets its newline: the next record starts a line of its own
        data = "".join(line + "\n" for line in kept).encode("utf-8")

        def write(fh: BinaryIO) -> None:
            fh.write(data)

        _atomic_write(log_file, write)
    return len(lines) - len(kept)


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` once its missing folders are made (a
    file in the way, a folder not writable); None when they can. Makes nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _check_out_file(option: str, path: Path) -> None:
    """Refuse, before any work, an output file that cannot be written: ``ValueError``
    naming ``option`` and ``path``. Its missing folders are made when it is written."""
    problem = "it is a folder" if path.is_dir() else _folder_problem(path.parent)
    if problem:
        raise ValueError(f"{option} {path}: {problem}")


def _check_data(data: str | None) -> Path:
    """The pair folder; ``ValueError`` naming it when given (--data) but it is missing or
    lacks original/ or starless/ (the default ./train may be missing: --synthetic)."""
    if data is None:
        return Path("train")
    folder = Path(data)
    if not folder.is_dir():
        raise ValueError(f"--data {folder}: no such folder")
    missing = [f"{sub}/" for sub in ("original", "starless") if not (folder / sub).is_dir()]
    if missing:
        raise ValueError(f"--data {folder}: no {' or '.join(missing)} folder in it")
    return folder


def _ask_new(ckpt: Path) -> bool:
    """Whether the user confirms that --new discards ``ckpt``; no answer (stdin closed,
    Ctrl-C) is a no."""
    try:
        answer = input(f"--new discards the checkpoint {ckpt}. Continue? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        print(
            f"\nstarnet train: --new: no answer, nothing done; pass --yes to discard {ckpt}",
            file=sys.stderr,
        )
        return False
    if answer.strip().lower() not in ("y", "yes"):
        print("nothing done")
        return False
    return True


def _check_export(path: Path, logs: Path) -> None:
    """Refuse, before any work, an --export that cannot be written or would replace the
    run's own checkpoint or one of its kept weights (``ValueError`` naming it)."""
    _check_out_file("--export", path)
    target = path.resolve()
    if target == (logs / "checkpoint.safetensors").resolve():
        raise ValueError(
            f"--export {path}: that is the run's checkpoint (it could no longer resume); "
            "export to another file"
        )
    if target.parent == logs.resolve() and _KEPT_WEIGHTS.fullmatch(target.name):
        raise ValueError(
            f"--export {path}: that name is the run's own kept weights (--keep-every); "
            "export to another file"
        )


def _check_ship(version: str | None, trains: bool) -> None:
    """Refuse, before any work, a --ship that would fail after the run: the package's
    weights folder not writable, or (when the run trains, so its weights are new) an
    explicit ``version`` that is packaged already. ``ValueError`` naming --ship."""
    import starnet_core.model as model_module

    folder = model_module.WEIGHTS_DIR
    if problem := _folder_problem(folder):
        raise ValueError(f"--ship: {problem} (the package's weights folder {folder})")
    if version is None or not trains:  # a generated version is the weights' own
        return
    taken = folder / f"starnet-{version}.safetensors"
    packaged = None
    if model_module.MANIFEST.exists():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            packaged = model_module.packaged_weights()
    if taken.exists() or (packaged is not None and packaged[2] == version):
        where = taken if taken.exists() else packaged[0] if packaged else taken
        raise ValueError(
            f"--ship: model version {version} is packaged already ({where}); give the new "
            "weights a new --version"
        )


def _resume_base(ckpt: Path) -> tuple[int, Any]:
    """The step of the checkpoint a run resumes and the TrainConfig it was saved with
    (None: an older checkpoint without one). ``ValueError`` naming the file when it is not
    a readable training checkpoint."""
    from starnet_core.checkpoint import checkpoint_metadata
    from starnet_core.train import TrainConfig

    meta = checkpoint_metadata(ckpt)
    if "train_config" not in meta:
        return int(meta["step"]), None
    try:
        return int(meta["step"]), TrainConfig.from_json(meta["train_config"])
    except (ValueError, TypeError) as e:  # not JSON, unknown values
        raise ValueError(f"{ckpt}: unusable train_config in the metadata ({e})") from e


def cmd_train(args: argparse.Namespace) -> int:
    from starnet_core.model import check_version, dev_version, load_model, with_width_conditioning
    from starnet_core.synthetic import check_glow_cap
    from starnet_core.tiling import select_device
    from starnet_core.train import (
        WorkersLostError,
        export_generator,
        read_pair_folder,
        release_generator,
        train,
    )

    logs = Path(args.logs)
    ckpt = logs / "checkpoint.safetensors"
    resume_step: int | None = None
    base: Any = None
    if not args.new and ckpt.exists():
        try:  # a resumed run starts from the settings it was started with
            resume_step, base = _resume_base(ckpt)
        except ValueError as e:  # truncated, corrupt, not a checkpoint: names the file
            print(f"starnet train: {e}; restore it, or start over with --new", file=sys.stderr)
            return 2
    try:
        cfg = _config(args, base)
        select_device(cfg.device)
        check_glow_cap(cfg.glow_cap_sigma, "--glow-cap")
        data = _check_data(args.data)
        if args.version is not None:
            try:
                check_version(args.version)
            except ValueError as e:
                raise ValueError(f"--version: {e}") from None
        # the outputs: refused now, not after the whole run
        if problem := _folder_problem(logs):
            raise ValueError(f"--logs {logs}: {problem}")
        if args.export:
            _check_export(Path(args.export), logs)
        if args.ship:
            _check_ship(args.version, resume_step is None or resume_step < cfg.steps)
    except ValueError as e:
        print(f"starnet train: {e}", file=sys.stderr)
        return 2
    if args.new and ckpt.exists() and not args.yes and not _ask_new(ckpt):
        return 1
    pairs = []
    if (data / "original").is_dir():
        validation = args.settings.validation
        try:  # NaN/Inf as for the frames (validation.nan_policy)
            pairs = read_pair_folder(
                data,
                nan_policy=validation.nan_policy,
                max_nonfinite_fraction=validation.max_nonfinite_fraction,
            )
        except ValueError as e:
            print(f"starnet train: {e}", file=sys.stderr)
            return 2
        print(f"{len(pairs)} training pairs from {data}")
    if not pairs and not args.synthetic:
        print(
            f"starnet train: no pairs in {data}/original + {data}/starless; "
            "add pairs or pass --synthetic",
            file=sys.stderr,
        )
        return 2
    if pairs and args.synthetic and args.real_ratio is None:
        if base is None:
            cfg.real_ratio = 0.5  # mixing: half of each batch (a resumed mix keeps its share)
        elif not cfg.real_ratio:
            print(
                f"{len(pairs)} training pairs found, but this run was started with "
                "real_ratio 0 and keeps it: give --real-ratio to mix them in"
            )
    if resume_step is not None:
        if base is None:
            print(
                f"resuming {ckpt} at step {resume_step}: it holds no training settings (an "
                "older checkpoint), so the defaults and the options given apply"
            )
        else:
            changed = _changes(base, cfg)
            print(
                f"resuming {ckpt} at step {resume_step} with its run's settings"
                + (f"; changed: {', '.join(changed)}" if changed else "")
            )
    init = None
    if not args.new and not ckpt.exists():
        try:
            init, info = load_model(args.settings.inference.weights)
        except (OSError, ValueError) as e:  # names the file: missing, not safetensors, ...
            print(f"starnet train: inference.weights: {e}", file=sys.stderr)
            return 2
        gan = (
            f"adversarial terms from step {cfg.gan_start_step} (--gan-start)"
            if cfg.w_gan > 0 or cfg.w_percep > 0
            else "no adversarial or perceptual terms (--w-gan 0 --w-percep 0)"
        )
        if cfg.d_warmup_steps:
            gan += f", after {cfg.d_warmup_steps} discriminator-only steps (--d-warmup)"
        print(f"fine-tuning model {info.version} ({info.sha256[:12]}) from step 0; {gan}")
        if args.width_cond and not init.config.width_cond:
            init = with_width_conditioning(init)
            print("conditioned on the frames' typical star width (--width-cond)")
        elif args.width_cond:
            print(f"--width-cond: model {info.version} is conditioned on the star width already")
    elif args.width_cond and ckpt.exists() and not args.new:
        print(f"--width-cond: resuming {ckpt}, whose architecture is kept")
    # a resumed checkpoint keeps its own architecture: build_state checks that one
    fresh = args.new or not ckpt.exists()
    if cfg.film_only and fresh and not (init.config if init is not None else cfg.model).width_cond:
        what = f"model {info.version}" if init is not None else "a fresh model"
        print(
            f"starnet train: --film-only: {what} is not width-conditioned (add --width-cond)",
            file=sys.stderr,
        )
        return 2
    anchor = None
    if cfg.w_anchor > 0:
        # a resumed run keeps its anchor file (one it recorded by name, not "packaged X")
        kept = cfg.anchor_weights if base is not None else ""
        kept = kept if kept and not kept.startswith("packaged ") else None
        source = args.anchor or kept or args.settings.inference.weights
        try:
            anchor, ainfo = load_model(source)
        except (OSError, ValueError) as e:
            print(f"starnet train: --anchor: {e}", file=sys.stderr)
            return 2
        cfg.anchor_weights = str(source or f"packaged {ainfo.version}")
        print(f"anchored on dense fields to model {ainfo.version} ({ainfo.sha256[:12]})")
    elif args.anchor:
        print("starnet train: --anchor needs --w-anchor > 0", file=sys.stderr)
        return 2
    log_file = logs / "train_log.jsonl"
    try:
        logs.mkdir(parents=True, exist_ok=True)
        if resume_step is None:  # a run from step 0: the previous run's files go aside
            aside = _set_aside_previous_run(logs)
            if aside is not None:
                print(f"the previous run's log, showcase images and kept weights: {aside}")
        elif dropped := _trim_log(log_file, resume_step):
            print(
                f"{log_file}: dropped {dropped} records after step {resume_step}, the checkpoint's"
            )
    except OSError as e:  # --logs is a file, not writable, ...
        print(f"starnet train: --logs {logs}: {e}", file=sys.stderr)
        return 2

    def on_log(record: dict[str, float]) -> None:
        with log_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_showcase(step: int, strip: np.ndarray) -> None:
        from PIL import Image

        img = (np.clip(strip, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
        Image.fromarray(img).save(logs / f"showcase_{step:07d}.png")

    stop = {"flag": False}

    def handler(signum: int, frame: Any) -> None:
        if stop["flag"] and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: at once
        stop["flag"] = True
        with contextlib.suppress(RuntimeError):  # print interrupted mid-print
            print(
                f"\nstopping after this step, then saving {ckpt} (Ctrl-C again: abort at once)",
                file=sys.stderr,
            )

    if args.new and ckpt.exists():
        ckpt.unlink()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        state = train(
            cfg,
            logs,
            file_pairs=pairs,
            synthetic=args.synthetic,
            init=init,
            anchor=anchor,
            on_log=on_log,
            on_showcase=on_showcase,
            should_stop=lambda: stop["flag"],
        )
    except ValueError as e:  # e.g. --film-only on a checkpoint of an unconditioned model
        where = f"{ckpt}: " if ckpt.exists() and not str(e).startswith(str(ckpt)) else ""
        print(f"starnet train: {where}{e}", file=sys.stderr)
        return 2
    except WorkersLostError as e:  # while the synthetic pool was built: no step trained
        kept = f"{ckpt} is as it was" if ckpt.exists() else "no checkpoint"
        print(f"starnet train: {e}; {kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = f"{ckpt} holds the last checkpoint saved" if ckpt.exists() else "no checkpoint"
        print(f"starnet train: aborted; {kept}", file=sys.stderr)
        return 130
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if state.stop_reason:  # e.g. a crop worker killed: the run stopped, its step saved
        print(
            f"starnet train: {state.stop_reason}; stopped at step {state.step} with the "
            f"checkpoint {ckpt} saved (nothing exported or shipped): run it again to resume",
            file=sys.stderr,
        )
        return 1
    print(f"stopped at step {state.step}; checkpoint {ckpt}")
    # --export and --ship write what a run releases: the moving average when --ema keeps
    # one, marked so; without --version, a version unique to those weights
    version = args.version or dev_version(state.release)
    extra = {"train_steps": str(state.step)}
    if args.export:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        digest = export_generator(state, Path(args.export), version, extra)
        print(f"weights {args.export} sha256 {digest} version {version}")
    if args.ship:
        from starnet_core.model import ship_weights

        model, marked = release_generator(state, extra)
        try:
            path = ship_weights(model, version, marked)
        except (OSError, ValueError) as e:
            print(f"starnet train: --ship: {e}", file=sys.stderr)
            return 1
        kind = " (the generator's moving average)" if state.ema is not None else ""
        print(f"shipped {path} as the default model {version}{kind}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log_file = Path(args.logs) / "train_log.jsonl"
    if not log_file.exists():
        print(f"starnet plot: {log_file}: no training log found", file=sys.stderr)
        return 2
    records = []
    for n, line in enumerate(log_file.read_text(encoding="utf-8").splitlines(), 1):
        if _log_step(line) is not None:
            records.append(json.loads(line))
        elif line.strip():  # e.g. torn by a run killed mid-write
            print(f"starnet plot: {log_file} line {n}: not a log record, skipped", file=sys.stderr)
    if not records:
        print(f"starnet plot: {log_file}: the log is empty", file=sys.stderr)
        return 2
    keys = [
        k
        for k in (
            "l_g_pix",
            "l_g_rel",
            "l_g_low",
            "l_g_over",
            "l_g_keep",
            "l_g_percep",
            "l_g_gan",
            "l_d_real",
            "l_d_fake",
            "residual_star_flux",
            "bg_l1",
        )
        if any(k in r for r in records)
    ]
    if not keys:
        print(
            f"starnet plot: {log_file}: no loss or metric values in the log (not a "
            "`starnet train` log?)",
            file=sys.stderr,
        )
        return 2
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.2 * len(keys)), sharex=True)
    for ax, k in zip(np.atleast_1d(axes), keys, strict=True):
        pts = [(r["step"], r[k]) for r in records if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_ylabel(k)
        ax.grid(alpha=0.3)
        if k in ("l_g_pix", "bg_l1"):
            ax.set_yscale("log")
    np.atleast_1d(axes)[-1].set_xlabel("step")
    fig.tight_layout()
    out = Path(args.out) if args.out else Path(args.logs) / "training.png"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
    except (OSError, ValueError) as e:  # not writable, unknown format (--out p.xyz)
        print(f"starnet plot: {out}: {e}", file=sys.stderr)
        return 2
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    from starnet_core.checkpoint import load_any
    from starnet_core.model import (
        average_generators,
        check_version,
        dev_version,
        save_weights,
        ship_weights,
    )

    if args.out and Path(args.out).resolve() in {Path(m).resolve() for m in args.models}:
        print(f"starnet soup: {args.out}: would overwrite one of its inputs", file=sys.stderr)
        return 2
    try:
        if args.version is not None:
            try:
                check_version(args.version)
            except ValueError as e:
                raise ValueError(f"--version: {e}") from None
        if args.out:
            _check_out_file("--out", Path(args.out))
        loaded = [load_any(m) for m in args.models]
        soup = average_generators([m for m, _ in loaded], args.mix, names=args.models)
    except ValueError as e:
        print(f"starnet soup: {e}", file=sys.stderr)
        return 2
    shares = args.mix or [1.0 / len(loaded)] * len(loaded)
    recipe = "; ".join(f"{w:g} x {label}" for w, (_, label) in zip(shares, loaded, strict=True))
    extra = {"soup": recipe}
    version = args.version or dev_version(soup)  # unique to these weights
    if args.ship:
        try:
            path = ship_weights(soup, version, extra)
        except (OSError, ValueError) as e:  # another model of that version, not writable
            print(f"starnet soup: --ship: {e}", file=sys.stderr)
            return 1
        print(f"shipped {path} as the default model {version} ({recipe})")
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        digest = save_weights(soup, Path(args.out), version=version, extra=extra)
        print(f"weights {args.out} sha256 {digest} version {version} ({recipe})")
    return 0
