"""Process one frame file: the ONE implementation shared by ``starnet transform`` and the flows.

Three stages, each passing only paths and small records (Prefect tasks wrap
them one to one; the CLI calls :func:`process_file`, which chains them):

1. :func:`claim_frame` hashes the input, registers it and claims its run in the
   provenance DB (run identity = input sha256 + weights sha256 + parameter hash);
2. :func:`compute_outputs` reads and validates the file, runs
   :func:`starnet_core.pipeline.process_array` and writes every output
   atomically with the provenance record in its header;
3. :func:`finish_frame` records success (outputs with checksums) or the failure
   and its reason.

A bad input never crashes the caller: :func:`process_file` returns a failed
:class:`FrameResult` naming the file and the reason, and the DB keeps it.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from flows.provenance import ProvenanceDB, default_code_version
from flows.provenance_records import (
    HeaderFacts,
    OutputKind,
    ProvenanceRecord,
    make_run_key,
    param_hash,
    sha256_file,
)
from flows.settings import Settings, pipeline_options
from starnet_core.imageio import (
    ImageData,
    ImageError,
    output_path,
    read_fits_header,
    read_image,
    write_image,
)
from starnet_core.model import load_model
from starnet_core.pipeline import FrameProducts, preview_strip, process_array
from starnet_core.tiling import place_model, select_device

log = logging.getLogger(__name__)

# FITS/TIFF outputs carry the data; PNG/JPEG inputs give PNG/JPEG outputs.
OUTPUT_KINDS = ("starless", "mask", "stars", "enhanced")


@dataclass(frozen=True)
class Engine:
    """The loaded model and where it runs. Load once per process / flow run; pass it down."""

    model: torch.nn.Module
    version: str
    weights_sha256: str
    device: str
    config: dict[str, Any]


def load_engine(settings: Settings) -> Engine:
    """The model from ``inference.weights`` (or the packaged one), on the configured device."""
    model, info = load_model(settings.inference.weights)
    device = select_device(settings.inference.device)
    place_model(model, device)
    return Engine(model, info.version, info.sha256, str(device), dataclasses.asdict(info.config))


def frame_params(settings: Settings) -> dict[str, Any]:
    """Every setting that changes the outputs (the run's identity hashes these).

    The device and the weights path are not here: the weights enter the identity
    by their sha256, and the device does not change what a run means.
    """
    inference = dataclasses.asdict(settings.inference)
    for key in ("weights", "device"):
        inference.pop(key)
    return {
        "inference": inference,
        "stretch": dataclasses.asdict(settings.stretch),
        "validation": dataclasses.asdict(settings.validation),
        "mask": dataclasses.asdict(settings.mask),
        "protect": dataclasses.asdict(settings.protect),
        "sky_colour": dataclasses.asdict(settings.sky_colour),
        "core_fill": dataclasses.asdict(settings.core_fill),
        "spikes": dataclasses.asdict(settings.spikes),
        "remnants": dataclasses.asdict(settings.remnants),
        "enhance": dataclasses.asdict(settings.enhance),
        "outputs": dataclasses.asdict(settings.outputs),
    }


@dataclass(frozen=True)
class FrameClaim:
    """Who processes this frame. ``decision``: process | skip (done) | busy | exhausted."""

    path: str
    sha256: str
    decision: str
    record: ProvenanceRecord
    attempt: int = 1

    @property
    def run_key(self) -> str:
        return self.record.run_key


@dataclass(frozen=True)
class FrameOutputs:
    """What :func:`compute_outputs` wrote (paths only) and measured."""

    outputs: dict[str, str]
    timings_s: dict[str, float]
    figures: dict[str, float | str]
    thumbnail_jpeg: bytes | None = None


@dataclass(frozen=True)
class FrameResult:
    """The end of one frame, for the CLI and flow summaries."""

    path: str
    status: str  # succeeded | failed | skipped | busy
    run_key: str | None
    outputs: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float | str] = field(default_factory=dict)
    error: str | None = None


def _header_facts(path: Path) -> HeaderFacts | None:
    """Facts for the frames table from a FITS header (pixels are read once, later, by
    :func:`compute_outputs`); None for other formats."""
    header = read_fits_header(path)
    return None if header is None else HeaderFacts.from_header(header)


def claim_frame(
    path: str | Path,
    settings: Settings,
    db: ProvenanceDB | None,
    engine: Engine,
    *,
    flow_run_id: str | None = None,
    max_attempts: int | None = None,
) -> FrameClaim:
    """Hash and register the input, claim its run. Without a DB the caller always owns it."""
    p = Path(path).expanduser().resolve()
    if not p.is_file():  # the same reasons as read_image gives
        raise ImageError(p, "not a regular file" if p.exists() else "no such file")
    digest = sha256_file(p)
    params = frame_params(settings)
    if db is None:
        record = ProvenanceRecord(
            run_key=make_run_key(digest, engine.weights_sha256, param_hash(params)),
            input_path=str(p),
            input_sha256=digest,
            model_version=engine.version,
            weights_sha256=engine.weights_sha256,
            params=params,
            param_hash=param_hash(params),
            code_version=default_code_version(),
            host=socket.gethostname(),
            device=engine.device,
            flow_run_id=flow_run_id,
            started_at=datetime.now(UTC),
        )
        return FrameClaim(str(p), digest, "process", record)
    db.register_frame(p, _header_facts(p), sha256=digest)
    claim = db.claim_run(
        digest,
        engine.version,
        engine.weights_sha256,
        params,
        device=engine.device,
        flow_run_id=flow_run_id,
        max_attempts=max_attempts,
    )
    decision = {"owned": "process", "done": "skip"}.get(claim.state, claim.state)
    return FrameClaim(str(p), digest, decision, claim.record(), claim.run.attempts)


def _jpeg(strip: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    img = (np.clip(strip, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_products(
    img: ImageData,
    products: FrameProducts,
    settings: Settings,
    record: ProvenanceRecord,
    out_dir: Path,
) -> dict[str, str]:
    arrays = {"starless": products.starless, "mask": products.mask}
    if settings.outputs.stars:
        arrays["stars"] = products.stars
    if settings.outputs.enhanced:
        arrays["enhanced"] = products.enhanced
    cards = record.to_header_cards()
    history = record.to_history()
    written: dict[str, str] = {}
    for kind, data in arrays.items():
        out = output_path(img.source, kind, out_dir)
        write_image(out, data, like=img, header_cards=cards | {"KIND": kind}, history=history)
        written[kind] = str(out)
    if settings.outputs.preview:
        out = output_path(img.source, "preview", out_dir).with_suffix(".jpg")
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(_jpeg(preview_strip(products, max_px=512), quality=90))
        tmp.replace(out)
        written["preview"] = str(out)
    return written


def compute_outputs(
    path: str | Path,
    settings: Settings,
    engine: Engine,
    claim: FrameClaim,
    *,
    out_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FrameOutputs:
    """Read, validate, remove stars and write every output. Raises ImageError on bad input."""
    p = Path(path)
    img = read_image(
        p,
        nan_policy=settings.validation.nan_policy,
        max_nonfinite_fraction=settings.validation.max_nonfinite_fraction,
    )
    products = process_array(
        engine.model,
        img.data,
        is_linear=img.is_linear,
        **pipeline_options(settings),
        enhance_strength=settings.enhance.strength,
        progress=progress,
    )
    record = dataclasses.replace(
        claim.record,
        params=claim.record.params | products.provenance_params(),
        timings=dict(products.timings_s),
    )
    target = Path(out_dir) if out_dir is not None else p.parent
    target.mkdir(parents=True, exist_ok=True)
    outputs = _write_products(img, products, settings, record, target)
    figures: dict[str, float | str] = dict(products.figures)
    figures["model_version"] = engine.version
    if img.notes:
        figures["notes"] = "; ".join(img.notes)
    return FrameOutputs(
        outputs=outputs,
        timings_s=dict(products.timings_s),
        figures=figures,
        thumbnail_jpeg=_jpeg(preview_strip(products, max_px=160), quality=70),
    )


def finish_frame(
    db: ProvenanceDB | None,
    claim: FrameClaim,
    outputs: FrameOutputs | None,
    error: str | None,
) -> None:
    """Record the end of an owned run (nothing to do without a DB)."""
    if db is None or claim.decision != "process":
        return
    if outputs is not None and error is None:
        db.finish_run(
            claim.run_key,
            "succeeded",
            timings=outputs.timings_s,
            outputs=[(cast(OutputKind, k), p) for k, p in outputs.outputs.items()],
            attempt=claim.attempt,
        )
    else:
        db.finish_run(
            claim.run_key, "failed", error=error or "unknown error", attempt=claim.attempt
        )


def process_file(
    path: str | Path,
    settings: Settings,
    engine: Engine,
    *,
    out_dir: str | Path | None = None,
    db: ProvenanceDB | None = None,
    flow_run_id: str | None = None,
    skip_done: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FrameResult:
    """Claim, compute and finish one frame; bad input gives a failed result, not an exception.

    ``skip_done=False`` (the CLI) recomputes a frame the DB already has, without
    recording a second run of the same identity.
    """
    try:
        claim = claim_frame(path, settings, db, engine, flow_run_id=flow_run_id)
    except ImageError as e:
        return FrameResult(str(path), "failed", None, error=str(e))
    if claim.decision == "skip" and skip_done:
        return FrameResult(claim.path, "skipped", claim.run_key)
    if claim.decision in ("busy", "exhausted"):
        return FrameResult(claim.path, claim.decision, claim.run_key)
    try:
        outputs = compute_outputs(path, settings, engine, claim, out_dir=out_dir, progress=progress)
    except (ImageError, ValueError) as e:
        # ValueError: validation inside the core (shapes, ranges) names the parameter
        message = str(e) if isinstance(e, ImageError) else f"{path}: {e}"
        finish_frame(db, claim, None, message)
        return FrameResult(claim.path, "failed", claim.run_key, error=message)
    except BaseException as e:
        finish_frame(db, claim, None, f"{path}: interrupted: {type(e).__name__}: {e}")
        raise
    finish_frame(db, claim, outputs, None)
    return FrameResult(
        claim.path, "succeeded", claim.run_key, outputs.outputs, outputs.timings_s, outputs.figures
    )
