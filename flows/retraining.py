"""The ``retrain`` flow: fine-tune the model on the registered training pairs, evaluate,
register the candidate, promote it when it is better.

Triggered by the event ``starnet.training.pair.added`` (the watcher emits it for
each complete pair in ``training/original`` + ``training/starless``), or run by
hand (``starnet retrain``). One retrain at a time: the global concurrency limit
``prefect.retrain_limit_name`` (1 slot) is held for the whole run, so a burst of
pairs queues retrains, and a retrain that finds no pair newer than the last
retrained model returns at once.

Fine-tuning starts from the model the pipeline runs now (the promoted one) and
mixes crops of the training pairs with synthetic ones (``retrain.real_ratio``)
so the model does not forget what the pairs do not show. Evaluation compares
candidate and parent on held-out synthetic scenes (a seed never used for
training) and, when ``retrain.validation_dir`` is set, on real validation
pairs. Promotion policy (``retrain.promote``): ``better`` promotes when the
decisive PSNR (validation pairs when configured, else the synthetic scenes)
gains at least ``retrain.min_gain_db``, the synthetic PSNR does not drop by
more than that, and the median fraction of each synthetic star left in the
output does not rise by more than ``retrain.max_star_flux_rise`` (PSNR alone
promoted a candidate that left more of each star: +0.56 dB, flux 0.44 -> 0.48);
``always``; ``never`` (register only).

A pair that cannot be trained on (a file missing or changed since it was registered, or
sides of another size, channel count or kind) is left out with a warning naming its file;
the evaluation sets are read before the fine-tune, and a candidate that is not registered
(registered and promoted in one transaction) leaves no weights file behind.

The fine-tune and its evaluation run on ``retrain.device`` (by default the frames' own
``inference.device``). On a GPU they hold one slot of the frames' GPU limit
(:func:`flows.pipeline.gpu_slot`), so a fine-tune never shares a GPU with a frame; set
``retrain.device: cpu`` to leave the GPU to the frames while the model trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.frame import model_record
from flows.pipeline import (
    concurrency_slot,
    ensure_gpu_limit,
    ensure_slot_limit,
    gpu_slot,
    load_run_engine,
)
from flows.provenance import ProvenanceDB, TrainingPair, sha256_file
from flows.settings import (
    PROMOTE_POLICIES,
    RetrainSettings,
    Settings,
    ValidationSettings,
    load_settings,
    retrain_device,
    tile_options,
)
from starnet_core.tiling import select_device

Pair = tuple[np.ndarray, np.ndarray]  # (original, starless), stretched (C, H, W) float32
Scored = tuple[np.ndarray, np.ndarray, Any]  # (original, truth, synthetic scene or None)


def train_config(r: RetrainSettings, architecture: dict[str, Any], device: str = "cpu") -> Any:
    """The :class:`starnet_core.train.TrainConfig` of a fine-tune: short, L1 only.

    The adversarial and perceptual terms stay off: the weights file holds no
    discriminator, and a fresh one says nothing useful in a few hundred steps
    (``gan_start_step`` beyond the end also keeps its warm-up steps from running).
    A ``crop_px`` the model cannot take is a ``ValueError`` naming the setting.
    """
    from starnet_core.model import ModelConfig
    from starnet_core.train import TrainConfig

    model = ModelConfig.from_json(json.dumps(architecture))
    if r.crop_px % model.multiple:
        raise ValueError(
            f"retrain.crop_px: expected a multiple of {model.multiple} px (the model's input "
            f"size step), got {r.crop_px}"
        )
    return TrainConfig(
        steps=r.steps,
        batch_size=r.batch_size,
        crop_px=r.crop_px,
        lr=r.lr,
        lr_min=r.lr / 10,
        warmup_steps=50,  # at most a tenth of the run: train.warmup_length
        pool_size=r.pool_size,
        real_ratio=r.real_ratio,
        w_percep=0.0,
        w_gan=0.0,
        gan_start_step=r.steps + 10_000,
        log_every=max(1, r.steps // 20),
        checkpoint_every=r.steps,
        threads=r.threads,
        device=device,
        model=model,
    )


def pair_problem(pair: TrainingPair) -> str | None:
    """Why ``pair`` cannot be trained on as recorded (a file missing, or its content no longer
    the recorded sha256, e.g. re-saved under the same name), naming the file; None if it can."""
    for side, path, recorded in (
        ("original", pair.original_path, pair.original_sha256),
        ("starless", pair.starless_path, pair.starless_sha256),
    ):
        try:
            digest = sha256_file(path)
        except OSError as e:
            return f"{path}: {side} of training pair {pair.id} cannot be read ({e.strerror or e})"
        if digest != recorded:
            return (
                f"{path}: {side} of training pair {pair.id} changed since it was recorded "
                f"(sha256 {digest[:12]}, recorded {recorded[:12]})"
            )
    return None


def usable_pairs(pairs: list[TrainingPair]) -> tuple[list[TrainingPair], list[str]]:
    """The pairs whose files still hold the recorded content, and why each other one is
    left out (its new content, if any, is a pair of its own once registered)."""
    usable, problems = [], []
    for p in pairs:
        problem = pair_problem(p)
        if problem is None:
            usable.append(p)
        else:
            problems.append(problem)
    return usable, problems


def read_pairs(
    pairs: list[TrainingPair], validation: ValidationSettings | None = None
) -> tuple[dict[int, Pair], list[str]]:
    """The images of each pair that can be trained on, by pair id, and why each other one
    is left out (naming the user's file): one bad pair never blocks the others.

    Each pair's files must still hold their recorded content: a missing or changed file
    is left out (never trained as if it were the recorded pair). NaN/Inf samples follow
    ``validation`` (``validation.nan_policy``, as for the frames; default: refused)."""
    from starnet_core.train import read_pair

    v = validation or ValidationSettings()

    images: dict[int, Pair] = {}
    problems: list[str] = []
    for p in pairs:
        problem = pair_problem(p)
        if problem is None:
            try:
                images[p.id] = read_pair(
                    p.original_path,
                    p.starless_path,
                    nan_policy=v.nan_policy,
                    max_nonfinite_fraction=v.max_nonfinite_fraction,
                )
            except (OSError, ValueError) as e:
                problem = f"{e} (training pair {p.id})"
        if problem is not None:
            problems.append(problem)
    return images, problems


@task(name="fine-tune", cache_policy=NO_CACHE)
def fine_tune(
    file_pairs: list[Pair],
    parent_weights: str,
    out_path: str,
    version: str,
    r: RetrainSettings,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fine-tune ``parent_weights`` on ``file_pairs`` (:func:`read_pairs`) on ``device``;
    writes the candidate to ``out_path``."""
    from starnet_core.model import load_weights
    from starnet_core.train import export_generator, train

    logger = get_run_logger()
    model, info = load_weights(parent_weights)
    cfg = train_config(r, dataclasses.asdict(info.config), device)
    logger.info(
        "fine-tuning %s on %d pair(s), %d steps on %s",
        info.version, len(file_pairs), cfg.steps, device,
    )  # fmt: skip
    progress = cast(UUID, create_progress_artifact(0.0, description=f"fine-tuning {version}"))
    last: dict[str, float] = {}

    def on_log(record: dict[str, float]) -> None:
        last.update(record)
        update_progress_artifact(progress, 100.0 * record["step"] / cfg.steps)

    run_dir = Path(out_path).with_suffix(".run")
    state = train(
        cfg, run_dir, file_pairs=file_pairs, synthetic=cfg.real_ratio < 1.0, init=model,
        resume=False, on_log=on_log,
    )  # fmt: skip
    sha = export_generator(
        state, Path(out_path), version, {"parent": info.version, "recipe": cfg.to_json()}
    )
    shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoint: D and optimiser states
    return {"weights_sha256": sha, "train": {k: float(v) for k, v in last.items()}}


def discard_candidate(out_path: Path) -> None:
    """Remove what a fine-tune that is not registered left: the weights and its run folder."""
    out_path.unlink(missing_ok=True)
    shutil.rmtree(out_path.with_suffix(".run"), ignore_errors=True)


def _scores(model: Any, items: list[Scored], settings: Settings) -> dict[str, float]:
    from starnet_core.inference import remove_stars
    from starnet_core.metrics import background_mask, psnr, residual_star_flux

    whole, background, left = [], [], []
    for original, truth, scene in items:
        out = remove_stars(model, original, tile_options(settings))
        whole.append(psnr(out, truth))
        bg = psnr(out, truth, background_mask(original, truth, scene))
        if math.isfinite(bg):
            background.append(bg)
        if scene is not None and len(scene.star_xy):
            flux = residual_star_flux(
                original, out, truth, scene.star_xy, max(2.0, 1.5 * scene.fwhm_px)
            )
            left.extend(flux[np.isfinite(flux)].tolist())
    scores = {"psnr_db": float(np.mean(whole)) if whole else float("nan")}
    scores["background_psnr_db"] = float(np.mean(background)) if background else float("nan")
    if left:
        scores["residual_star_flux_median"] = float(np.median(left))
    return scores


def validation_pairs(root: Path, validation: ValidationSettings | None = None) -> list[Pair]:
    """The pairs of ``root`` (``retrain.validation_dir``); a folder without ``original/``
    and ``starless/``, without a pair, or with a pair that cannot be read is a
    ``ValueError`` naming the setting and the folder or file. NaN/Inf samples follow
    ``validation`` (``validation.nan_policy``; default: refused)."""
    from starnet_core.train import read_pair_folder

    where = "retrain.validation_dir"
    for side in ("original", "starless"):
        if not (root / side).is_dir():
            raise ValueError(f"{where}: {root / side}: no such folder (validation pairs)")
    try:
        v = validation or ValidationSettings()
        pairs = read_pair_folder(
            root, nan_policy=v.nan_policy, max_nonfinite_fraction=v.max_nonfinite_fraction
        )
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e
    if not pairs:
        raise ValueError(f"{where}: {root / 'original'}: no validation image")
    return pairs


def held_out(settings: Settings) -> dict[str, list[Scored]]:
    """What candidate and parent are scored on: the held-out synthetic scenes
    (``synthetic``, seed ``retrain.eval_seed``) and the validation pairs (``validation``,
    when ``retrain.validation_dir`` is set). Built before the fine-tune, so a wrong
    validation folder never costs one."""
    from starnet_core.synthetic import make_pair

    r = settings.retrain
    rng = np.random.default_rng(r.eval_seed)
    sets: dict[str, list[Scored]] = {
        "synthetic": [make_pair(rng, r.eval_size_px) for _ in range(r.eval_scenes)]
    }
    if r.validation_dir:
        pairs = validation_pairs(settings.resolve(r.validation_dir), settings.validation)
        sets["validation"] = [(o, c, None) for o, c in pairs]
    return sets


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(
    weights: dict[str, str], sets: dict[str, list[Scored]], settings: Settings
) -> dict[str, dict[str, float]]:
    """Scores of each named weights file on each set of :func:`held_out`, prefixed by the
    set's name (``synthetic_*``, ``validation_*``)."""
    from starnet_core.model import load_weights

    out: dict[str, dict[str, float]] = {}
    for name, path in weights.items():
        model, _ = load_weights(path)
        out[name] = {
            f"{set_name}_{k}": v
            for set_name, items in sets.items()
            for k, v in _scores(model, items, settings).items()
        }
    return out


def promotion(
    r: RetrainSettings, candidate: dict[str, float], parent: dict[str, float]
) -> tuple[bool, str]:
    """Whether the candidate is promoted under ``r.promote``, and why."""
    if r.promote not in PROMOTE_POLICIES:
        raise ValueError(f"retrain.promote: expected one of {PROMOTE_POLICIES}, got {r.promote!r}")
    if r.promote != "better":
        return r.promote == "always", f"policy {r.promote!r}"
    key = "validation_psnr_db" if "validation_psnr_db" in candidate else "synthetic_psnr_db"
    gain = candidate[key] - parent[key]
    synthetic_gain = candidate["synthetic_psnr_db"] - parent["synthetic_psnr_db"]
    if not gain >= r.min_gain_db:
        return False, f"{key} gain {gain:+.3f} dB < {r.min_gain_db} dB"
    if synthetic_gain < -r.min_gain_db:
        return False, f"synthetic PSNR fell {synthetic_gain:+.3f} dB"
    flux = "synthetic_residual_star_flux_median"
    if flux in candidate and flux in parent:  # PSNR alone rewards a smoother background
        rise = candidate[flux] - parent[flux]  # even when more of each star is left
        if rise > r.max_star_flux_rise:
            return False, f"residual star flux rose {rise:+.3f} (PSNR {key} {gain:+.3f} dB)"
    return True, f"{key} gain {gain:+.3f} dB"


def candidate_version(parent: str, now: datetime) -> str:
    """``<parent base>+ft.<UTC time>``: new weights always get a new version."""
    base = parent.split("+ft.")[0][:40]
    return f"{base}+ft.{now:%Y%m%d.%H%M%S}"


def register_folder_pairs(settings: Settings, db: ProvenanceDB) -> int:
    """Register every complete pair in the training folder (catch-up); returns how many new."""
    root = settings.resolve(settings.training_dir)
    originals = root / "original"
    if not originals.is_dir():
        return 0
    new = 0
    for o in sorted(originals.iterdir()):
        s = root / "starless" / o.name
        if o.is_file() and not o.name.startswith(".") and s.is_file():
            new += db.add_training_pair(o, s)[1]
    return new


def _retrain_run_name() -> str:
    original = flow_run.parameters.get("original")
    return f"retrain-{Path(original).name}" if original else "retrain-all-pairs"


@flow(name="retrain", flow_run_name=_retrain_run_name, log_prints=False)
def retrain(
    original: str | None = None,
    starless: str | None = None,
    config: str | None = None,
    steps: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Fine-tune on every registered training pair (``original`` + ``starless``: register
    that pair first), evaluate against the current model, register, maybe promote."""
    logger = get_run_logger()
    settings = load_settings(config)
    if steps is not None:
        if steps < 1:
            raise ValueError(f"steps: expected an integer >= 1, got {steps}")
        settings = dataclasses.replace(
            settings, retrain=dataclasses.replace(settings.retrain, steps=steps)
        )
    device = retrain_device(settings)
    try:
        on_gpu = select_device(device).type != "cpu"
    except ValueError as e:  # an absent device: at once, not after reading every pair
        where = "retrain" if settings.retrain.device else "inference"
        raise ValueError(f"{where}.device: {e}") from e
    name = settings.prefect.retrain_limit_name
    ensure_slot_limit(name, 1)
    with concurrency_slot(settings, name, 1, "retrain"):  # never leaks in local mode
        db = ProvenanceDB.from_settings(settings)
        if original and starless:
            db.add_training_pair(original, starless)
        register_folder_pairs(settings, db)
        registered = db.list_training_pairs()
        if not registered:
            logger.info("no training pairs registered: nothing to do")
            return {"status": "no-pairs"}
        pairs, problems = usable_pairs(registered)
        for problem in problems:
            logger.warning("left out: %s", problem)
        trained = [m for m in db.list_models() if m.training_pair_ids]
        last = set(trained[-1].training_pair_ids) if trained else None
        if pairs and last is not None and {p.id for p in pairs} <= last and not force:
            logger.info("no pair newer than model %s: nothing to do", trained[-1].version)
            return {"status": "up-to-date", "model": trained[-1].version}
        # after the check: reads every image
        file_pairs, unreadable = read_pairs(pairs, settings.validation)
        for problem in unreadable:
            logger.warning("left out: %s", problem)
        problems += unreadable
        if not file_pairs:
            raise ValueError(
                f"no training pair to train on: every registered pair's files are missing, "
                f"changed or unreadable: {'; '.join(problems)}"
            )
        ids = set(file_pairs)
        if last is not None and ids <= last and not force:  # the new pairs are left out
            logger.info("no usable pair newer than model %s: nothing to do", trained[-1].version)
            return {"status": "up-to-date", "model": trained[-1].version}
        sets = held_out(settings)
        run_settings = dataclasses.replace(
            settings, inference=dataclasses.replace(settings.inference, device=device)
        )
        engine, parent_path = load_run_engine(settings, db)
        version = candidate_version(engine.version, datetime.now(UTC))
        models_dir = settings.resolve("models")
        models_dir.mkdir(parents=True, exist_ok=True)
        out_path = models_dir / f"{version}.safetensors"
        if on_gpu:
            ensure_gpu_limit(settings)
        slot = gpu_slot(settings, "retrain") if on_gpu else contextlib.nullcontext()
        try:
            with slot:  # the frames' GPU slot: never a fine-tune beside a frame on one GPU
                trained_info = fine_tune(
                    list(file_pairs.values()), parent_path, str(out_path), version,
                    settings.retrain, device,
                )  # fmt: skip
                scores = evaluate(
                    {"candidate": str(out_path), "parent": parent_path}, sets, run_settings
                )
            promote, why = promotion(settings.retrain, scores["candidate"], scores["parent"])
            benchmark: dict[str, Any] = {
                "candidate": scores["candidate"],
                "parent": scores["parent"],
            }
            benchmark |= {"train": trained_info["train"], "decision": why}
            db.register_model(  # one transaction: never a candidate left unpromoted
                version,
                trained_info["weights_sha256"],
                model_record(engine, str(out_path), recipe=dataclasses.asdict(settings.retrain)),
                parent=engine.version,
                status="promoted" if promote else None,
                benchmark=benchmark,
                training_pair_ids=sorted(ids),
            )
        except BaseException:
            discard_candidate(out_path)  # unregistered: no file in models/ without its row
            raise
        logger.info("candidate %s %s (%s)", version, "promoted" if promote else "kept", why)
        create_table_artifact(
            table=[
                {"figure": k, "parent": f"{scores['parent'].get(k, float('nan')):.3f}",
                 "candidate": f"{v:.3f}"}
                for k, v in scores["candidate"].items()
            ] + [{"figure": "decision", "parent": engine.version,
                  "candidate": f"{version}: {'promoted' if promote else 'candidate'} ({why})"}],
            key="retrain-evaluation",
            description=f"{version} vs {engine.version} on {len(file_pairs)} pair(s)",
        )  # fmt: skip
        return {
            "status": "promoted" if promote else "candidate",
            "version": version,
            "parent": engine.version,
            "weights": str(out_path),
            "pairs": len(file_pairs),
            "scores": scores,
            "decision": why,
        }
