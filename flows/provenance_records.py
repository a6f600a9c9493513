"""Plain records of the provenance database, and the provenance written into output headers.

Nothing here touches SQLAlchemy: these frozen dataclasses are what
:class:`flows.provenance.ProvenanceDB` returns (never live ORM objects), so they
can cross threads, processes and Prefect task boundaries.

Identity is derived from content: ``run_key = make_run_key(input sha256,
weights sha256, param_hash(params))``; processing the same input with the same
weights and parameters again is the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

ModelStatus = Literal["candidate", "promoted", "retired"]
# "interrupted": an attempt stopped from outside (a stop signal, the host restarting, a
# submission never started); it is not counted toward ``max_attempts``
RunStatus = Literal["queued", "running", "succeeded", "failed", "interrupted"]
OutputKind = Literal["starless", "stars", "mask", "enhanced", "preview"]
ClaimState = Literal["owned", "done", "busy", "exhausted"]

HEADER_VALUE_MAX = 68  # characters of a FITS string value
HISTORY_LINE_MAX = 72  # characters of a FITS HISTORY card
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RUN_KEY_SCHEME = "starnet-run/1"


class ProvenanceError(RuntimeError):
    """The provenance database refused an operation (unknown frame or model, bad value)."""


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in ``chunk_bytes`` pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def is_sha256(text: str) -> bool:
    """True for a lowercase 64-digit hex string."""
    return _SHA256.fullmatch(text) is not None


def check_sha256(name: str, value: str) -> str:
    """``value`` if it is a hex sha256 (case folded), else a ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or not is_sha256(value.lower()):
        raise ValueError(f"{name}: expected a 64-digit hex sha256, got {value!r}")
    return value.lower()


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    raise TypeError(f"params: value {value!r} of type {type(value).__name__} is not JSON data")


def canonical_params(params: Mapping[str, Any]) -> str:
    """Canonical JSON of ``params``: sorted keys, no spaces, no NaN; the input of the hash."""
    if not isinstance(params, Mapping):
        raise ValueError(f"params: expected a mapping, got {type(params).__name__} {params!r}")
    try:
        return json.dumps(
            params, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default
        )
    except ValueError as e:
        raise ValueError(f"params: {e} (NaN and infinity are not allowed)") from e


def param_hash(params: Mapping[str, Any]) -> str:
    """sha256 of :func:`canonical_params` — equal parameter sets hash equal, in any key order."""
    return hashlib.sha256(canonical_params(params).encode()).hexdigest()


def make_run_key(input_sha256: str, weights_sha256: str, params_sha256: str) -> str:
    """The identity of a run: sha256 of (input content, weights, parameter hash)."""
    parts = (
        _RUN_KEY_SCHEME,
        check_sha256("input_sha256", input_sha256),
        check_sha256("weights_sha256", weights_sha256),
        check_sha256("params_sha256", params_sha256),
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat(timespec="seconds").replace("+00:00", "Z")


def _ascii_pieces(text: str) -> list[str]:
    """``text`` one character at a time, as printable ASCII (see :func:`ascii_text`)."""
    pieces = []
    for ch in text:
        n = ord(ch)
        if 0x20 <= n <= 0x7E:
            pieces.append(ch)
        elif n <= 0xFF:
            pieces.append(f"\\x{n:02x}")
        elif n <= 0xFFFF:
            pieces.append(f"\\u{n:04x}")
        else:
            pieces.append(f"\\U{n:08x}")
    return pieces


def ascii_text(text: str) -> str:
    """``text`` as printable ASCII, for FITS cards, HISTORY and the other image metadata.

    Printable ASCII is kept as it is; every other character (accents, other scripts,
    control characters, the surrogates of undecodable file-name bytes) becomes a Python
    escape, ``\\xNN`` (up to U+00FF), ``\\uNNNN`` or ``\\UNNNNNNNN`` in lowercase hex, so
    ``/data/Nébuleuse/M42.fits`` is written ``/data/N\\xe9buleuse/M42.fits``.
    ``text.encode("ascii").decode("unicode_escape")`` gives the original back (exactly,
    unless the original itself held a backslash). The database keeps the real text.
    """
    return "".join(_ascii_pieces(text))


def _short(text: str, limit: int = HEADER_VALUE_MAX) -> str:
    """:func:`ascii_text` of ``text`` cut to ``limit`` characters, keeping the end (the file
    name) of a long path; an escape is never cut in half."""
    pieces = _ascii_pieces(text)
    if sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    kept: list[str] = []
    size = 3  # the "..."
    for piece in reversed(pieces):
        if size + len(piece) > limit:
            break
        kept.append(piece)
        size += len(piece)
    return "..." + "".join(reversed(kept))


def _wrap(text: str, limit: int = HISTORY_LINE_MAX) -> list[str]:
    """:func:`ascii_text` of ``text`` in fixed-width pieces of at most ``limit`` characters
    (no whitespace folding, an escape never split): their concatenation is the whole text."""
    lines = [""]
    for piece in _ascii_pieces(text):
        if len(lines[-1]) + len(piece) > limit:
            lines.append("")
        lines[-1] += piece
    return lines


def _card_key(stage: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", stage.upper())[:24]


def as_json(obj: Any) -> Any:
    """A record (or list/dict of them) as JSON data: datetimes in ISO 8601, tuples as lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, datetime):
        return _iso(obj)
    if isinstance(obj, Mapping):
        return {str(k): as_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [as_json(v) for v in obj]
    return obj


@dataclass(frozen=True)
class HeaderFacts:
    """What the database keeps from an input's header (no pixels)."""

    object_name: str | None = None
    date_obs: str | None = None
    exposure_s: float | None = None
    filter_name: str | None = None
    telescope: str | None = None
    instrument: str | None = None
    bitpix: int | None = None
    channels: int | None = None
    height_px: int | None = None
    width_px: int | None = None

    @classmethod
    def from_header(
        cls, header: Mapping[str, Any], shape_chw: tuple[int, int, int] | None = None
    ) -> HeaderFacts:
        """Facts from a FITS-style header (``OBJECT``, ``DATE-OBS``, ``EXPTIME``, ``FILTER``,
        ``TELESCOP``, ``INSTRUME``, ``BITPIX``); the shape from ``shape_chw`` (C, H, W) or
        from ``NAXIS1..3`` (missing keys give None)."""

        def text(key: str) -> str | None:
            v = header.get(key)
            return None if v is None or str(v).strip() == "" else str(v).strip()

        def number(key: str, kind: type[int] | type[float]) -> Any:
            v = header.get(key)
            try:
                return None if v is None or isinstance(v, bool) else kind(v)
            except (TypeError, ValueError):
                return None

        channels: int | None
        if shape_chw is not None:
            channels, height_px, width_px = (int(n) for n in shape_chw)
        else:
            width_px, height_px = number("NAXIS1", int), number("NAXIS2", int)
            channels = number("NAXIS3", int) or (1 if height_px else None)
        return cls(
            object_name=text("OBJECT"),
            date_obs=text("DATE-OBS"),
            exposure_s=number("EXPTIME", float),
            filter_name=text("FILTER"),
            telescope=text("TELESCOP"),
            instrument=text("INSTRUME"),
            bitpix=number("BITPIX", int),
            channels=channels,
            height_px=height_px,
            width_px=width_px,
        )


@dataclass(frozen=True)
class Frame:
    id: int
    sha256: str
    path: str
    size_bytes: int
    mtime: datetime | None
    first_seen: datetime
    last_seen: datetime
    facts: HeaderFacts


@dataclass(frozen=True)
class ModelVersion:
    version: str
    weights_sha256: str
    config: dict[str, Any]
    parent: str | None
    status: ModelStatus
    benchmark: dict[str, Any] | None
    created_at: datetime
    promoted_at: datetime | None
    training_pair_ids: tuple[int, ...]


@dataclass(frozen=True)
class Output:
    kind: OutputKind
    path: str
    sha256: str
    size_bytes: int
    superseded_at: datetime | None = None  # a later success of its run (a redo) wrote anew


@dataclass(frozen=True)
class Attempt:
    """One claim of a run: who tried it, when, and how it ended (``Run.attempt_log``)."""

    attempt: int  # as ``Run.attempts`` counted it: the tries since the last success
    status: RunStatus
    host: str
    device: str
    code_version: str
    flow_run_id: str | None
    pid: int | None  # the claiming process, on ``host`` (None: recorded for another host)
    boot_id: str | None  # ``host``'s boot id (Linux; None elsewhere)
    started_at: datetime
    finished_at: datetime | None
    error: str | None


@dataclass(frozen=True)
class Run:
    """One processing of one frame: everything needed to answer "what made this file?".

    A succeeded run describes its latest success: a redo that failed or is still going
    leaves it as it was; ``attempt_log`` (every claim, oldest first) records the redo.
    ``outputs``: the files of that success; ``earlier_outputs``: those of its earlier
    successes (superseded, perhaps elsewhere and still there). ``figures``: what the
    success measured on the frame (spike score, ...).
    """

    run_key: str
    status: RunStatus
    frame_sha256: str
    frame_path: str
    model_version: str
    weights_sha256: str
    params: dict[str, Any]
    param_hash: str
    code_version: str
    host: str
    device: str
    flow_run_id: str | None
    attempts: int
    error: str | None
    timings: dict[str, float]
    created_at: datetime
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    outputs: tuple[Output, ...] = ()
    figures: dict[str, Any] | None = None
    earlier_outputs: tuple[Output, ...] = ()
    attempt_log: tuple[Attempt, ...] = ()

    def provenance(
        self, timings: Mapping[str, float] | None = None, finished_at: datetime | None = None
    ) -> ProvenanceRecord:
        """The record to write into this run's output headers (timings/finish so far)."""
        return ProvenanceRecord(
            run_key=self.run_key,
            input_path=self.frame_path,
            input_sha256=self.frame_sha256,
            model_version=self.model_version,
            weights_sha256=self.weights_sha256,
            params=self.params,
            param_hash=self.param_hash,
            code_version=self.code_version,
            host=self.host,
            device=self.device,
            flow_run_id=self.flow_run_id,
            started_at=self.started_at,
            finished_at=finished_at or self.finished_at,
            timings=dict(timings if timings is not None else self.timings),
        )


@dataclass(frozen=True)
class Claim:
    """The answer of ``claim_run``: whether this caller owns the run.

    ``state``: ``owned`` (go ahead; ``run.attempts`` says which attempt), ``done``
    (it already succeeded: skip), ``busy`` (another worker holds it and is not
    stale), ``exhausted`` (failed ``max_attempts`` times already).
    """

    state: ClaimState
    run: Run

    @property
    def owned(self) -> bool:
        return self.state == "owned"

    @property
    def run_key(self) -> str:
        return self.run.run_key

    def record(
        self, timings: Mapping[str, float] | None = None, finished_at: datetime | None = None
    ) -> ProvenanceRecord:
        return self.run.provenance(timings=timings, finished_at=finished_at)


@dataclass(frozen=True)
class TrainingPair:
    id: int
    original_path: str
    original_sha256: str
    starless_path: str
    starless_sha256: str
    added_at: datetime
    used_by: tuple[str, ...]


@dataclass(frozen=True)
class History:
    """Everything known about one file, found by content (or by its recorded path)."""

    query: str
    sha256: str | None
    role: Literal["input", "output", "training", "unknown"]
    frame: Frame | None = None
    produced_by: Run | None = None  # the run that wrote this file, when it is an output
    output: Output | None = None  # this file among the outputs of ``produced_by`` (its kind)
    runs: tuple[Run, ...] = ()  # every run of the input frame, newest first
    training_pairs: tuple[TrainingPair, ...] = ()
    note: str | None = None  # e.g. the file at a recorded path now holds other content


@dataclass(frozen=True)
class ProvenanceRecord:
    """The provenance of one run, as written to the database and into each output's header."""

    run_key: str
    input_path: str
    input_sha256: str
    model_version: str
    weights_sha256: str
    params: dict[str, Any]
    param_hash: str
    code_version: str
    host: str
    device: str
    flow_run_id: str | None
    started_at: datetime
    finished_at: datetime | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_header_cards(self) -> dict[str, str | int | float]:
        """Cards for ``HIERARCH STARNET <KEY>``: short keys, values of at most 68 characters.

        Texts are printable ASCII (:func:`ascii_text`: a non-ASCII input path is written
        with Python escapes, e.g. ``N\\xe9buleuse``); long ones keep their end.
        The parameters go in as their hash (``PHASH``); the full set is in :meth:`to_history`.
        Timings are ``T_<STAGE>`` in seconds.
        """
        cards: dict[str, str | int | float] = {
            "RUNKEY": self.run_key,
            "INPUT": _short(self.input_path),
            "INSHA": self.input_sha256,
            "MODEL": _short(self.model_version),
            "WSHA": self.weights_sha256,
            "PHASH": self.param_hash,
            "CODE": _short(self.code_version),
            "HOST": _short(self.host),
            "DEVICE": _short(self.device),
        }
        if self.flow_run_id:
            cards["FLOWRUN"] = _short(self.flow_run_id)
        cards["STARTED"] = _iso(self.started_at) or ""
        if self.finished_at is not None:
            cards["FINISHED"] = _iso(self.finished_at) or ""
            cards["DURATION"] = round((self.finished_at - self.started_at).total_seconds(), 3)
        for stage, seconds in self.timings.items():
            cards[f"T_{_card_key(stage)}"] = round(float(seconds), 3)
        return cards

    def to_history(self) -> list[str]:
        """``HISTORY`` lines (at most 72 characters each), the full parameters included.

        The lines are printable ASCII, escaped as in :meth:`to_header_cards`
        (:func:`ascii_text`); the input path is written whole, wrapped over lines.
        """
        lines = [
            "starnet provenance (the HIERARCH STARNET cards hold the same)",
            f"run {self.run_key}",
            f"input {self.input_path}",
            f"insha {self.input_sha256}",
            f"model {self.model_version}",
            f"wsha {self.weights_sha256}",
            f"code {self.code_version} host {self.host} device {self.device}",
        ]
        if self.flow_run_id:
            lines.append(f"prefect flow run {self.flow_run_id}")
        lines.append(f"started {_iso(self.started_at)} finished {_iso(self.finished_at) or '-'}")
        if self.timings:
            lines.append(
                "timings_s " + " ".join(f"{k}={float(v):.3f}" for k, v in self.timings.items())
            )
        lines.append(f"phash {self.param_hash}")
        lines.append("params " + canonical_params(self.params))
        # fixed-width pieces (no whitespace folding): concatenating the ``params`` lines
        # gives back the exact canonical JSON (ASCII already: json.dumps escapes the rest)
        return [piece for line in lines for piece in _wrap(line)]
