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
:class:`FrameResult` naming the file and the reason, and the DB keeps it. So does
an output that cannot be written (the folder is a file, not writable, the disk
is full), and a frame that runs out of memory or crashes in its computation: the
next frames are still tried.

Outputs never overwrite those of another input (see :class:`OutputGuard`): a
frame whose output names are taken by a different input (``e.fits`` and
``e.fits.gz``; ``M42.fits`` and ``M42.tif``, which share ``M42_preview.jpg``;
two nights' ``M42.fits`` in one flat folder) fails with both files named, before
anything of it is written. The flows keep a frame's sub-folder of ``incoming/``
under the output folder (:func:`output_folder`), so the last case does not arise
there. ``starnet transform`` also refuses to replace a file that is not the
input's own output (the user's ``M42_starless.png``) unless told to
(``--overwrite``): its own means recorded in the DB, written earlier in the same
command, or stamped by starnet with the input's sha256 (:func:`stamped_input`).

A frame's outputs are written all or none (:func:`_write_products`): each to a
temporary file beside it, then all renamed into place; a failure leaves the
files that were there as they were. The temporaries' names are short and fixed in
length (``.starnet-<random><ext>``), so any output name the file system allows can be
written. Before the computing, the output folder is made and a file is created and
deleted in it (once per folder and command / flow run: :meth:`OutputGuard.writable`),
so that a folder that is a file, read-only or not allowed fails the frame at once, not
after minutes of computing.

The preview and the thumbnail show a FITS frame as FITS viewers (ds9, Siril, astropy
with ``origin="lower"``) do: row 0 at the bottom, unless its header says
``ROWORDER = 'TOP-DOWN'`` (:func:`rows_bottom_up`). The FITS outputs keep the input's
row order (and so its WCS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import socket
import stat
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch

from flows.provenance import (
    FREE_INTERRUPTIONS,
    ProvenanceDB,
    ProvenanceError,
    default_code_version,
)
from flows.provenance_records import (
    HeaderFacts,
    OutputKind,
    ProvenanceRecord,
    is_sha256,
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
    read_stamp,
    same_file,
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
    weights_path: str  # the file it was loaded from, resolved


def load_engine(settings: Settings) -> Engine:
    """The model from ``inference.weights`` (or the packaged one), on the configured device."""
    model, info = load_model(settings.inference.weights)
    device = select_device(settings.inference.device)
    place_model(model, device)
    return Engine(
        model,
        info.version,
        info.sha256,
        str(device),
        dataclasses.asdict(info.config),
        weights_path(settings),
    )


def weights_path(settings: Settings) -> str:
    """The weights file ``inference.weights`` names (the packaged one when None)."""
    if settings.inference.weights:
        return str(Path(settings.inference.weights).expanduser().resolve())
    from starnet_core.model import packaged_weights

    return str(packaged_weights()[0])


def model_record(engine: Engine, path: str | None = None, **extra: Any) -> dict[str, Any]:
    """The ``config`` a model version is registered with: its file (``path``, default the
    engine's) and architecture, so that it can be promoted and run later."""
    return {"weights_path": path or engine.weights_path, "architecture": engine.config, **extra}


def frame_params(settings: Settings) -> dict[str, Any]:
    """Every setting that changes the outputs (the run's identity hashes these).

    The device and the weights path are not here: the weights enter the identity
    by their sha256, and the device does not change what a run means. The
    ``large_stars`` section is here only when it is enabled: off, it changes nothing,
    and the runs recorded before it existed keep their identity.
    """
    inference = dataclasses.asdict(settings.inference)
    for key in ("weights", "device"):
        inference.pop(key)
    optional = (
        {"large_stars": dataclasses.asdict(settings.large_stars)}
        if settings.large_stars.enabled
        else {}
    )
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
        **optional,
    }


@dataclass(frozen=True)
class FrameClaim:
    """Who processes this frame. ``decision``: process | skip (done) | busy | exhausted;
    ``reason``: why it is not processed, for busy and exhausted (names the file)."""

    path: str
    sha256: str
    decision: str
    record: ProvenanceRecord
    attempt: int = 1
    reason: str | None = None

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
    status: str  # succeeded | failed | skipped | busy | exhausted (error: why)
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
    expect_sha256: str | None = None,
    redo: bool = False,
) -> FrameClaim:
    """Hash and register the input, claim its run. Without a DB the caller always owns it.

    ``expect_sha256``: the frame the caller means (the nightly rerun picks frames by
    content, and finds them at their last-seen path). When the file there is gone or
    holds other content, it is not processed as that frame: the frame's run is
    recorded as failed with the reason (so it counts toward ``max_attempts`` and is
    not picked forever) and an :class:`ImageError` is raised.
    """
    p = Path(path).expanduser().resolve()
    now = sha256_file(p) if p.is_file() else None
    if expect_sha256 is not None and db is not None and now != expect_sha256:
        _record_gone(p, expect_sha256, now, settings, db, engine, flow_run_id, max_attempts, redo)
    if now is None:  # the same reasons as read_image gives
        raise ImageError(p, "not a regular file" if p.exists() else "no such file")
    digest = now
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
    return _claim_run(db, p, digest, settings, engine, flow_run_id, max_attempts, redo)


def _claim_run(
    db: ProvenanceDB,
    path: Path,
    digest: str,
    settings: Settings,
    engine: Engine,
    flow_run_id: str | None,
    max_attempts: int | None,
    redo: bool = False,
) -> FrameClaim:
    """Claim the run of the registered frame ``digest`` (found at ``path``); ``redo``: a
    done run too, as its next attempt (``ProvenanceDB.claim_run``)."""
    claim = db.claim_run(
        digest,
        engine.version,
        engine.weights_sha256,
        frame_params(settings),
        device=engine.device,
        flow_run_id=flow_run_id,
        max_attempts=max_attempts,
        redo=redo,
    )
    run = claim.run
    reason = None
    if claim.state == "busy":
        reason = (
            f"{path}: another run of this frame is in progress (run key {run.run_key[:12]}, "
            f"attempt {run.attempts}, started {run.started_at:%Y-%m-%d %H:%M:%S} UTC on "
            f"{run.host}); it is taken over {db.stale_after_s:g} s after its start "
            "(database.stale_run_s)"
        )
    elif claim.state == "exhausted":
        reason = (
            f"{path}: its run {run.run_key[:12]} reached prefect.max_attempts "
            f"({max_attempts} counted attempts, {run.attempts} in all: interrupted ones do not "
            f"count, beyond {FREE_INTERRUPTIONS} they do); last error: {run.error}"
        )
    decision = {"owned": "process", "done": "skip"}.get(claim.state, claim.state)
    return FrameClaim(str(path), digest, decision, claim.record(), run.attempts, reason)


def _record_gone(
    path: Path,
    recorded: str,
    now: str | None,
    settings: Settings,
    db: ProvenanceDB,
    engine: Engine,
    flow_run_id: str | None,
    max_attempts: int | None,
    redo: bool,
) -> None:
    """The frame ``recorded`` is no longer at ``path``: fail its run (when this caller
    gets it, ``redo`` as the caller claims) with the reason, then raise that reason as
    an :class:`ImageError`."""
    error = ImageError(
        path,
        f"input moved, deleted or replaced (sha256 now {now or 'none: no such file'}, "
        f"recorded {recorded}); not processed as that frame",
    )
    claim = _claim_run(db, path, recorded, settings, engine, flow_run_id, max_attempts, redo)
    if claim.decision == "process":
        finish_frame(db, claim, None, str(error))
    raise error


def output_folder(
    path: str | Path, out_dir: str | Path | None, incoming: str | Path | None = None
) -> Path:
    """The folder for the outputs of the frame ``path``: ``out_dir``, and below it the
    frame's sub-folder of ``incoming`` when the frame lies under ``incoming``
    (``incoming/n1/M42.fits`` -> ``<out_dir>/n1/M42_starless.fits``), so that frames of
    one name from different nights or cameras never share outputs. A frame outside
    ``incoming`` (or ``incoming`` None) gets ``out_dir`` itself; ``out_dir`` None: the
    input's own folder. A symlink counts where it lies (a link dropped into
    ``incoming/n1`` gets ``<out_dir>/n1``, wherever its target is); a folder reached
    through a symlinked folder counts too."""
    p = Path(os.path.abspath(Path(path).expanduser()))  # normalised, links kept
    if out_dir is None:
        return p.parent
    target = Path(out_dir)
    if incoming is not None:
        root = Path(os.path.abspath(Path(incoming).expanduser()))
        real = root.resolve()
        for frame, top in ((p, root), (p.parent.resolve() / p.name, real), (p.resolve(), real)):
            if frame.is_relative_to(top):
                return target / frame.parent.relative_to(top)
    return target


def rows_bottom_up(img: ImageData) -> bool:
    """Whether the image's row 0 is its bottom row, as viewers show it: a FITS frame (the
    FITS convention: pixel (1, 1) lower left), unless its header says ``ROWORDER =
    'TOP-DOWN'`` (the capture programs that store the sensor's first row first and say
    so). TIFF, PNG and JPEG store the top row first. For the previews only: the outputs
    keep the input's row order."""
    if img.format != "fits":
        return False
    order = img.header.get("ROWORDER") if img.header is not None else None
    return not (isinstance(order, str) and order.strip().upper() == "TOP-DOWN")


def planned_outputs(path: str | Path, settings: Settings, target: Path) -> dict[str, Path]:
    """Every output file the frame ``path`` gets in the folder ``target``, by kind."""
    kinds = ["starless", "mask"]
    kinds += ["stars"] if settings.outputs.stars else []
    kinds += ["enhanced"] if settings.outputs.enhanced else []
    paths = {kind: output_path(path, kind, target) for kind in kinds}
    if settings.outputs.preview:  # always JPEG, whatever the input's format
        paths["preview"] = output_path(path, "preview", target).with_suffix(".jpg")
    return paths


Replace = Literal["own", "unrecorded", "any"]


@dataclass(frozen=True)
class _Owner:
    """Whose an existing file is, and how that is known: ``run`` (written earlier in this
    command / flow run), ``output`` or ``input`` (the provenance DB records the file's
    content as that input's output, or as that input itself), ``training`` (the DB
    records it as a file of a training pair: ``path`` and ``sha256`` are the file's own),
    ``stamp`` (the starnet provenance inside the file names that input's sha256)."""

    path: str
    sha256: str
    how: Literal["run", "output", "input", "training", "stamp"]

    def owned_by(self, sha256: str) -> bool:
        """Whether the file is an output of the input content ``sha256``."""
        return self.how in ("run", "output", "stamp") and self.sha256 == sha256


def stamped_input(path: str | Path) -> tuple[str, str] | None:
    """The input ``(path, sha256)`` that the starnet output ``path`` says it was made from,
    or None when it carries no starnet provenance (or cannot be read as an image).

    Every output is stamped by :func:`starnet_core.imageio.write_image` with the run's
    :meth:`ProvenanceRecord.to_header_cards` (``INSHA``: the input's sha256) and
    :meth:`~ProvenanceRecord.to_history` (the input's whole path): ``HIERARCH STARNET``
    cards and HISTORY in FITS, the same as JSON in a TIFF's ImageDescription, a PNG text
    chunk or a JPEG comment. Only the headers are read (no pixels), so this is cheap. It
    proves where the file came from, not that nobody edited its pixels since: a tool
    that keeps the metadata when it saves over the file keeps the stamp too.
    """
    stamp = read_stamp(path)
    if stamp is None:
        return None
    cards, history = stamp
    sha, card = cards.get("INSHA"), cards.get("INPUT")
    if not isinstance(sha, str) or not is_sha256(sha):
        return None
    source = _history_input(history, sha) or (card if isinstance(card, str) else None)
    return (source or "an unknown input", sha)


def _history_input(history: Sequence[str], sha256: str) -> str | None:
    """The input's path from the provenance HISTORY lines: ``input <path>`` in fixed-width
    pieces up to the ``insha <sha256>`` line (the ``INPUT`` card keeps only the end of a
    long path), escapes turned back into the characters they stand for."""
    try:
        start = next(i for i, line in enumerate(history) if line.startswith("input "))
        end = history.index(f"insha {sha256}", start)
    except (StopIteration, ValueError):
        return None
    text = "".join(history[start:end])[len("input ") :]
    if "\\" in text:  # ascii_text's escapes of non-ASCII characters
        with contextlib.suppress(UnicodeError):
            text = text.encode("ascii").decode("unicode_escape")
    return text or None


class OutputGuard:
    """Keeps a frame from overwriting a file that is not its own.

    Output names come from the input's name, so different inputs can map to the same
    files (``e.fits`` and ``e.fits.gz``; ``M42.fits`` and ``M42.tif``, which share
    ``M42_preview.jpg``; two ``M42.fits`` from different folders into one ``--out``),
    and a user's own file may sit where an output goes (a hand-made ``M42_starless.png``
    next to ``M42.png``). A frame may replace an existing file only when it is its own:
    written earlier in this command / flow run for the same input content (the guard
    remembers), recorded in the provenance DB as an output of the same input sha256 (so
    a frame re-processed with another model or settings overwrites its own outputs), or,
    when the DB does not know the file's content (``--no-db``, another DB), stamped by
    starnet as made from the same input sha256 (:func:`stamped_input`; so ``starnet
    transform --no-db x.fits`` run twice needs nothing more).

    ``replace`` says what else may be replaced:

    - ``"own"`` (``starnet transform``): nothing else. A file that is a different
      input's output (recorded or stamped), a recorded input, a training pair's file or
      unknown (none of these: the user's own) fails the frame, naming it and the fix
      (``--overwrite``, ``--out`` or moving it), before any of the frame's outputs is
      written.
    - ``"unrecorded"`` (the default: the flows): also a file that is neither recorded nor
      stamped. The flows write under ``output_dir``, a folder of starnet's own, where such
      a file is starnet's output from before its DB or stamps (or a copy of one); a
      different input's outputs, a recorded input and a training pair's file (a
      hand-made starless) are still refused.
    - ``"any"`` (``starnet transform --overwrite``): every file that existed before,
      whoever's it is. Never, even so, one of the command's inputs (unless it is this
      input's own output: ``*.tif`` run again) nor a file this command or flow run wrote
      for a different input (``e.fits`` and ``e.fits.gz`` would leave one's outputs with
      the other's names): the user asked to replace what was there, not to have the
      inputs overwrite each other.

    One guard lives as long as one command or flow run; it is not shared between runs
    (the DB is what they share). Limit: the DB learns a run's outputs when it finishes,
    so two runs computing at the same time (two workers) whose outputs share names are
    not caught. With the flows' sub-folders that takes two inputs of one stem in one
    folder (``e.fits`` and ``e.fits.gz``) dispatched to two workers at once.
    """

    def __init__(self, replace: Replace = "unrecorded") -> None:
        self.replace: Replace = replace
        self._owners: dict[Path, tuple[str, str]] = {}  # output -> (input path, sha256)
        self._inputs: set[Path] = set()
        self._writable: set[Path] = set()  # folders a file was created in (writable())

    def writable(self, folder: Path) -> None:
        """Make ``folder`` (with its parents) and check that files can be created and
        deleted in it, before a frame's computing (:func:`_make_folder`); the check is
        made once per folder for the guard's command / flow run. Raises
        :class:`ImageError` naming the folder and the reason."""
        key = Path(folder).expanduser().resolve()
        _make_folder(folder, probe=key not in self._writable)
        self._writable.add(key)

    def protect_inputs(self, paths: Sequence[str | Path]) -> None:
        """The inputs of the command (``starnet transform a.tif a_mask.tif``): none of them
        is overwritten by another's outputs, unless it is that other input's own output,
        recorded or stamped (``*.tif`` run again takes in last run's outputs)."""
        self._inputs |= {Path(p).expanduser().resolve() for p in paths}

    def reserve(
        self, paths: dict[str, Path], path: str, sha256: str, db: ProvenanceDB | None
    ) -> None:
        """Check every file of ``paths`` for the input ``path`` (content ``sha256``), then
        remember them as its own; raises :class:`ImageError` naming the input and the file."""
        resolved = [Path(out).expanduser().resolve() for out in paths.values()]
        for out in resolved:
            self._check(out, path, sha256, db)
        for out in resolved:
            self._owners[out] = (path, sha256)

    def _check(self, out: Path, path: str, sha256: str, db: ProvenanceDB | None) -> None:
        """Raise unless the input ``path`` (``sha256``) may write ``out`` (see the class)."""
        mine = self._owners.get(out)
        owner = _Owner(*mine, "run") if mine is not None else None
        if owner is None and out.is_file():
            owner = _recorded_owner(out, path, sha256, db) or _stamp_owner(out)
        own = owner is not None and owner.owned_by(sha256)
        if out in self._inputs and not (own and owner is not None and owner.how != "run"):
            raise ImageError(
                path,
                f"its output {out} would overwrite an input of this command; rename one "
                "of them or use --out",
            )
        if own or (owner is not None and owner.how != "run" and self.replace == "any"):
            return
        hint = "use --overwrite to replace it, --out to write elsewhere, or move it away"
        if owner is None:
            if out.is_file() and self.replace == "own":
                raise ImageError(
                    path,
                    f"its output {out} exists and is not this input's output (neither the "
                    "provenance DB nor a starnet stamp in the file says so); " + hint,
                )
            return  # new (or not a file: the write says why it cannot replace it)
        if owner.how == "run" or self.replace != "own":  # no --overwrite to offer
            hint = "rename it, move the old outputs away or use --out"
        raise ImageError(path, f"{_whose(out, path, sha256, owner)}; {hint}")


def _whose(out: Path, path: str, sha256: str, owner: _Owner) -> str:
    """What ``out``, the file ``owner`` has, is to the input ``path`` (``sha256``): which
    input's output, which input itself, or a training pair's file."""
    digest = f"sha256 {owner.sha256[:12]}"
    if owner.how == "training":
        return f"its output {out} is a file of a training pair in the provenance DB ({digest})"
    other = owner.path
    if owner.path == path and owner.sha256 != sha256:
        other = f"{owner.path} as it was before"
    if owner.how == "input":
        itself = Path(owner.path).expanduser().resolve() == out
        what = "that input itself" if itself else "a copy of that input"
        return (
            f"its outputs would overwrite {other} ({digest}, recorded as an input): {out} is {what}"
        )
    how = {"run": "written in this run", "output": "recorded", "stamp": "stamped"}
    return (
        f"its outputs would overwrite those of {other} ({digest}): {out} is that input's "
        f"output ({how[owner.how]})"
    )


def _recorded_owner(out: Path, path: str, sha256: str, db: ProvenanceDB | None) -> _Owner | None:
    """Whose the existing file ``out`` is by the provenance DB, if it knows, for the input
    ``path`` (``sha256``). By content; a file at a path recorded for a different input
    whose content is not the recorded one still counts as that input's (as it did), but
    one recorded for this input no longer proves it is this input's own (edited since?):
    the stamp or the user decides."""
    if db is None:
        return None
    try:
        history = db.history(out)  # hashes the file
    except OSError as e:
        raise ImageError(
            out,
            f"an output of {path} is here and cannot be read to check whose "
            f"it is ({e.strerror or e}); move it away or use --out",
        ) from e
    if history.role == "training" and history.sha256 is not None:
        return _Owner(str(out), history.sha256, "training")
    if history.frame is None or (history.note is not None and history.frame.sha256 == sha256):
        return None
    how: Literal["output", "input"] = "output" if history.role == "output" else "input"
    return _Owner(history.frame.path, history.frame.sha256, how)


def _stamp_owner(out: Path) -> _Owner | None:
    stamp = stamped_input(out)
    return None if stamp is None else _Owner(*stamp, "stamp")


def _jpeg(strip: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    img = (np.clip(strip, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_products(
    img: ImageData,
    products: FrameProducts,
    record: ProvenanceRecord,
    paths: dict[str, Path],
) -> dict[str, str]:
    """Write every output of the frame, all or none.

    Each is written (by :func:`write_image`, atomically) to a hidden temporary file beside
    it, and only when all are there are they renamed into place (:func:`_commit`). A
    failure on the way (a full disk, a file that cannot be replaced) deletes the
    temporaries and puts back what the renamed ones replaced, so the folder holds the
    frame's old outputs or its new ones, never half of each: the DB, which records a
    failed frame without outputs, stays true to the folder.
    """
    arrays = {
        "starless": products.starless,
        "mask": products.mask,
        "stars": products.stars,
        "enhanced": products.enhanced,
    }
    for out in paths.values():  # as write_image checks it, but before anything is written
        if same_file(out, img.source):
            raise ImageError(out, "refusing to overwrite the input image")
    cards = record.to_header_cards()
    history = record.to_history()
    bottom_up = rows_bottom_up(img)
    staged: list[tuple[Path, Path]] = []  # (temporary, output)
    try:
        for kind, out in paths.items():
            if kind == "preview":
                data = preview_strip(products, max_px=512, bottom_up=bottom_up)
            else:
                data = arrays[kind]
            tmp = _hidden_name(out, out.suffix)  # the suffix tells write_image the format
            staged.append((tmp, out))
            try:
                write_image(
                    tmp, data, like=img, header_cards=cards | {"KIND": kind}, history=history
                )
            except ImageError as e:  # name the output, not its temporary
                raise ImageError(out, e.reason) from e
        _commit(staged)
    finally:
        for tmp, _ in staged:  # none left after a commit; after a failure, every one
            with contextlib.suppress(OSError):
                tmp.unlink()
    return {kind: str(out) for kind, out in paths.items()}


_HIDDEN_PREFIX = ".starnet-"  # an output's temporary, and an old output kept aside


def _hidden_name(out: Path, suffix: str) -> Path:
    """A new hidden name beside ``out``, of a short fixed length (``.starnet-`` + 32 hex
    digits + ``suffix``) whatever the length of ``out``'s name: an output name the
    file system allows (up to 255 bytes) never fails for its temporary's name."""
    return out.with_name(f"{_HIDDEN_PREFIX}{uuid.uuid4().hex}{suffix}")


def _commit(staged: Sequence[tuple[Path, Path]]) -> None:
    """Rename each temporary onto its output, all or none.

    Before an existing output is replaced, a hard link to it is kept (a rename where the
    file system has no hard links, e.g. FAT on a USB disk) so that a later failure can
    put it back; the links are removed once all are in place. A rename that fails (the
    file is immutable, the name is a folder) undoes the ones before it, in reverse, and
    raises :class:`ImageError` naming that output.
    """
    done: list[tuple[Path, Path | None]] = []  # (output, the file it replaced, kept aside)
    try:
        for tmp, out in staged:
            kept = None
            try:
                kept = _keep_aside(out)
                os.replace(tmp, out)
            except OSError as e:
                if kept is not None:  # a link beside the old file, or the old file renamed
                    with contextlib.suppress(OSError):
                        if os.path.lexists(out):
                            kept.unlink()
                        else:
                            os.replace(kept, out)
                raise ImageError(out, f"cannot write: {e.strerror or e}") from e
            done.append((out, kept))
    except BaseException:
        for out, kept in reversed(done):
            with contextlib.suppress(OSError):
                if kept is None:
                    out.unlink()
                else:
                    os.replace(kept, out)
        raise
    for out, kept in done:
        if kept is not None:
            try:
                kept.unlink()
            except OSError as e:  # the new outputs are in place: only a hidden file is left
                log.warning("%s: cannot remove %s: %s", out, kept, e.strerror or e)
    _sync_folders({out.parent for _, out in staged})


def _keep_aside(out: Path) -> Path | None:
    """A hidden second name for the existing file ``out`` (None: nothing there to keep, or
    a folder, which the rename onto it then refuses)."""
    try:
        if stat.S_ISDIR(os.lstat(out).st_mode):
            return None
    except FileNotFoundError:
        return None
    kept = _hidden_name(out, ".old")
    try:
        os.link(out, kept, follow_symlinks=False)
    except OSError:
        os.rename(out, kept)
    return kept


def _sync_folders(folders: set[Path]) -> None:
    """Make the renames durable (a crash after the DB records the outputs keeps them)."""
    if os.name != "posix":
        return
    for folder in folders:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _make_folder(target: Path, probe: bool = True) -> None:
    """Make the output folder ``target``; ``probe``: and create (exclusively, a new name)
    and delete a file in it, as the outputs' writes will. Any failure (``target`` or a
    parent is a file, the folder is read-only, on a read-only file system, not allowed
    to this user; or files can be created but not deleted nor renamed, an append-only
    folder) is an :class:`ImageError` naming the folder and the reason."""
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = "not a folder" if target.exists() else (e.strerror or str(e))
        raise ImageError(target, f"cannot write outputs here: {reason}") from e
    if not probe:
        return
    test = target / f"{_HIDDEN_PREFIX}{uuid.uuid4().hex}.probe"
    try:
        os.close(os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise ImageError(target, f"cannot write outputs here: {e.strerror or e}") from e
    try:
        test.unlink()
    except OSError as e:
        raise ImageError(
            target,
            f"cannot write outputs here: a new file cannot be deleted ({e.strerror or e}); "
            f"{test.name} is left there",
        ) from e


def compute_outputs(
    path: str | Path,
    settings: Settings,
    engine: Engine,
    claim: FrameClaim,
    *,
    out_dir: str | Path | None = None,
    db: ProvenanceDB | None = None,
    guard: OutputGuard | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FrameOutputs:
    """Read, validate, remove stars and write every output into ``out_dir`` (None: next
    to the input).

    Raises :class:`ImageError` on bad input, on outputs that would overwrite those of a
    different input (checked by ``guard``, and against ``db``, before anything is
    written; see :class:`OutputGuard`) and on outputs that cannot be written (the
    output path and the reason). The input, the output names and the output folder
    (:meth:`OutputGuard.writable`) are checked before the computing.
    """
    p = Path(path)
    img = read_image(
        p,
        nan_policy=settings.validation.nan_policy,
        max_nonfinite_fraction=settings.validation.max_nonfinite_fraction,
    )
    target = Path(out_dir) if out_dir is not None else p.parent
    paths = planned_outputs(img.source, settings, target)
    # before the minutes of computing: a frame whose outputs may not or cannot be written
    # (another's, the user's; a folder that is a file, read-only) fails now
    guard = guard or OutputGuard()
    guard.reserve(paths, claim.path, claim.sha256, db)
    guard.writable(target)
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
    outputs = _write_products(img, products, record, paths)
    figures: dict[str, float | str] = dict(products.figures)
    figures["model_version"] = engine.version
    if img.notes:
        figures["notes"] = "; ".join(img.notes)
    return FrameOutputs(
        outputs=outputs,
        timings_s=dict(products.timings_s),
        figures=figures,
        thumbnail_jpeg=_jpeg(
            preview_strip(products, max_px=160, bottom_up=rows_bottom_up(img)), quality=70
        ),
    )


def finish_frame(
    db: ProvenanceDB | None,
    claim: FrameClaim,
    outputs: FrameOutputs | None,
    error: str | None,
    *,
    interrupted: bool = False,
) -> None:
    """Record the end of an owned run (nothing to do without a DB). ``interrupted``: the
    frame was stopped from outside (a stop signal, Ctrl-C), not failed by itself: taken up
    again at the next start and not counted toward ``prefect.max_attempts``."""
    if db is None or claim.decision != "process":
        return
    if interrupted:
        db.finish_run(
            claim.run_key, "interrupted", error=error or "interrupted", attempt=claim.attempt
        )
        return
    if outputs is not None and error is None:
        db.finish_run(
            claim.run_key,
            "succeeded",
            timings=outputs.timings_s,
            outputs=[(cast(OutputKind, k), p) for k, p in outputs.outputs.items()],
            attempt=claim.attempt,
            figures=outputs.figures,
        )
    else:
        db.finish_run(
            claim.run_key, "failed", error=error or "unknown error", attempt=claim.attempt
        )


class Heartbeat:
    """Keeps an owned run from going stale while its frame waits for the GPU and computes.

    A run ``running`` for ``database.stale_run_s`` without a heartbeat is taken to be dead
    and may be claimed again (another worker, the nightly); a frame that computes longer
    than that was then computed twice, and its first worker's finish refused. A daemon
    thread calls ``db.heartbeat`` every ``interval_s`` (the flows: ``stale_run_s / 4``)
    until the block ends (the run's start and duration stay as they are); when the run's
    current attempt is no longer this claim's it stops beating, with a warning. A beat
    that fails (the DB briefly unreachable) is logged and tried again at the next
    interval; it never fails the frame."""

    def __init__(
        self,
        db: ProvenanceDB,
        claim: FrameClaim,
        interval_s: float,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        join_s: float = 60.0,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s: expected > 0, got {interval_s!r}")
        self.db, self.claim, self.interval_s, self.join_s = db, claim, interval_s, join_s
        self.logger = logger or log
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat {claim.run_key[:12]}", daemon=True
        )

    @classmethod
    def of(
        cls,
        db: ProvenanceDB,
        claim: FrameClaim,
        settings: Settings,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> Heartbeat:
        """The flows' and the CLI's heartbeat: every ``database.stale_run_s / 4``; a beat
        in flight is waited for as long as the DB's own lock wait, and a little more."""
        interval_s = settings.database.stale_run_s / 4
        return cls(db, claim, interval_s, logger, join_s=settings.database.busy_timeout_s + 5)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        # a beat in flight ends before the run is finished (a late beat would be refused,
        # or mark the finished run running again); a DB that hangs does not hold the frame
        self._thread.join(timeout=self.join_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                lost = self.db.heartbeat(self.claim.run_key, self.claim.attempt)
                if lost is None:
                    self.beats += 1
            except Exception as e:  # the DB unreachable a moment: the next beat may do
                self.logger.warning(
                    "%s: heartbeat of run %s failed (%s: %s); trying again in %.0f s",
                    self.claim.path, self.claim.run_key[:12], type(e).__name__, e,
                    self.interval_s,
                )  # fmt: skip
                continue
            if lost is not None:
                self.logger.warning(
                    "%s: run %s: %s; its heartbeat stops", self.claim.path,
                    self.claim.run_key[:12], lost,
                )  # fmt: skip
                return


def process_file(
    path: str | Path,
    settings: Settings,
    engine: Engine,
    *,
    out_dir: str | Path | None = None,
    db: ProvenanceDB | None = None,
    guard: OutputGuard | None = None,
    flow_run_id: str | None = None,
    skip_done: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> FrameResult:
    """Claim, compute and finish one frame; bad input gives a failed result, not an exception,
    and so does any other error in its computation (out of memory: :func:`frame_error`).
    Only KeyboardInterrupt and SystemExit propagate, the run recorded interrupted first.

    ``skip_done=False`` (the CLI) recomputes a frame the DB already has as a new attempt
    of its run (``redo``), so the new outputs are the recorded ones. A
    frame another worker holds (busy) or that failed too often (exhausted) is not
    processed: its result says why in ``error``. ``guard``: one per command, so that
    its inputs never overwrite each other's outputs (:class:`OutputGuard`).
    """
    try:
        claim = claim_frame(path, settings, db, engine, flow_run_id=flow_run_id, redo=not skip_done)
    except ImageError as e:
        return FrameResult(str(path), "failed", None, error=str(e))
    if claim.decision == "skip":
        return FrameResult(claim.path, "skipped", claim.run_key)
    if claim.decision in ("busy", "exhausted"):
        return FrameResult(claim.path, claim.decision, claim.run_key, error=claim.reason)
    beat = Heartbeat.of(db, claim, settings, log) if db is not None else contextlib.nullcontext()
    try:
        with beat:  # a long frame keeps its claim (another worker or the nightly waits)
            outputs = compute_outputs(
                path, settings, engine, claim, out_dir=out_dir, db=db, guard=guard,
                progress=progress,
            )  # fmt: skip
    except Exception as e:  # bad input, out of memory, a crash in this frame's computation
        message = frame_error(path, e)
        if not isinstance(e, ValueError) and not out_of_memory(e):  # unexpected: keep its trace
            log.error("%s", message, exc_info=e)
        finish_frame(db, claim, None, message)
        return FrameResult(claim.path, "failed", claim.run_key, error=message)
    except BaseException as e:  # Ctrl-C, SystemExit: the run is interrupted, then re-raised
        finish_frame(
            db, claim, None, f"{path}: interrupted: {type(e).__name__}: {e}", interrupted=True
        )
        raise
    result = FrameResult(
        claim.path, "succeeded", claim.run_key, outputs.outputs, outputs.timings_s, outputs.figures
    )
    try:
        finish_frame(db, claim, outputs, None)
    except ProvenanceError as e:  # claimed again meanwhile, or failed by hand: not its record
        written = ", ".join(str(p) for p in outputs.outputs.values())
        message = (
            f"{path}: outputs written ({written}) but not recorded in the provenance database: {e}"
        )
        log.error("%s", message)
        return dataclasses.replace(result, status="failed", error=message)
    return result


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the host or the device running out of memory (torch raises a
    plain RuntimeError for MPS, and for CUDA before it had OutOfMemoryError)."""
    return isinstance(e, MemoryError | torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e)
    )


def frame_error(path: str | Path, e: Exception) -> str:
    """The failure text of a frame, always naming the input first: an :class:`ImageError`
    about the input as it is; one about an output (a folder or file that cannot be
    written) and any other ValueError (validation inside the core names the parameter)
    after the input's path; running out of memory with what to change; anything else
    with its type."""
    if isinstance(e, ImageError) and e.path.resolve() == Path(path).resolve():
        return str(e)
    if isinstance(e, ValueError):
        return f"{path}: {e}"
    if out_of_memory(e):
        return (
            f"{path}: out of memory (try a smaller inference.tile_px or batch_size, --tile"
            f" / --batch, or --device cpu): {type(e).__name__}: {e}"
        )
    return f"{path}: {type(e).__name__}: {e}"
