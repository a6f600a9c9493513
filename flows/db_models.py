"""SQLAlchemy 2.0 models of the provenance database, and their conversion to plain records.

The database holds metadata, paths, checksums and sizes; pixels stay on disk.
Every change to these models needs an Alembic revision in ``flows/migrations``;
a test compares the two (autogenerate must find no difference).

Times are timezone-aware UTC on both backends (:class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    select,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.types import TypeDecorator

from flows.provenance_records import (
    Attempt,
    Frame,
    HeaderFacts,
    ModelStatus,
    ModelVersion,
    Output,
    OutputKind,
    Run,
    RunStatus,
    TrainingPair,
)

MODEL_STATUSES = ("candidate", "promoted", "retired")
RUN_STATUSES = ("queued", "running", "succeeded", "failed")
# an attempt may also be "interrupted" (stopped from outside: not counted toward
# max_attempts); its run is recorded "failed" and shown "interrupted" (to_run)
ATTEMPT_STATUSES = (*RUN_STATUSES, "interrupted")
OUTPUT_KINDS = ("starless", "stars", "mask", "enhanced", "preview")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always hands back aware UTC datetimes.

    SQLite stores no zone and returns naive values; they are UTC by construction.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: provenance times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


model_training_pairs = Table(
    "model_training_pairs",
    Base.metadata,
    Column(
        "model_version_id", ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    ),
    Column(
        "training_pair_id", ForeignKey("training_pairs.id", ondelete="CASCADE"), primary_key=True
    ),
)


class FrameRow(Base):
    """One input, identified by content (sha256); ``path`` is where it was last seen."""

    __tablename__ = "frames"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text, index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    mtime: Mapped[datetime | None]
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    # header facts (FITS keyword in the comment)
    object_name: Mapped[str | None] = mapped_column(Text)  # OBJECT
    date_obs: Mapped[str | None] = mapped_column(String(32))  # DATE-OBS, as written
    exposure_s: Mapped[float | None] = mapped_column(Float)  # EXPTIME
    filter_name: Mapped[str | None] = mapped_column(Text)  # FILTER
    telescope: Mapped[str | None] = mapped_column(Text)  # TELESCOP
    instrument: Mapped[str | None] = mapped_column(Text)  # INSTRUME
    bitpix: Mapped[int | None] = mapped_column(Integer)  # BITPIX
    channels: Mapped[int | None] = mapped_column(Integer)
    height_px: Mapped[int | None] = mapped_column(Integer)
    width_px: Mapped[int | None] = mapped_column(Integer)

    runs: Mapped[list[RunRow]] = relationship(back_populates="frame")


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        # at most one promoted model, enforced by the database
        Index(
            "uq_model_versions_one_promoted",
            "status",
            unique=True,
            sqlite_where=text("status = 'promoted'"),
            postgresql_where=text("status = 'promoted'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    weights_sha256: Mapped[str] = mapped_column(String(64), index=True)
    config: Mapped[dict[str, Any]]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    benchmark: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]

    parent: Mapped[ModelVersionRow | None] = relationship(remote_side=[id])
    training_pairs: Mapped[list[TrainingPairRow]] = relationship(
        secondary=model_training_pairs, back_populates="used_by"
    )


class RunRow(Base):
    """One processing of one frame by one model with one parameter set (``run_key``).

    The row describes the run's latest success (status ``succeeded``; its claimant, times,
    timings, figures and outputs) or, before any success, its latest attempt. Every
    claim is an attempt (:class:`RunAttemptRow`); an attempt to redo a succeeded run
    leaves the row as the success recorded it until it succeeds itself."""

    __tablename__ = "runs"
    __table_args__ = (CheckConstraint(_in("status", RUN_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_key: Mapped[str] = mapped_column(String(64), unique=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    params: Mapped[dict[str, Any]]
    param_hash: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    host: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    timings: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    # the figures of the frame (spike score, ...) its success computed; JSON data
    figures: Mapped[dict[str, Any] | None]

    frame: Mapped[FrameRow] = relationship(back_populates="runs")
    model_version: Mapped[ModelVersionRow] = relationship()
    outputs: Mapped[list[OutputRow]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="OutputRow.id"
    )
    tries: Mapped[list[RunAttemptRow]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="RunAttemptRow.id"
    )


class RunAttemptRow(Base):
    """One claim of a run: who tried it (host, process, boot), when, and how it ended.

    The newest attempt of a run is its current claim: ``running``/``queued`` while a
    worker holds it. ``pid``, ``pid_start`` (the process's start, clock ticks after boot,
    ``/proc/<pid>/stat`` field 22), ``pid_ns`` (its pid namespace) and ``boot_id`` (the
    host's, Linux) say which process on ``host`` claimed it, so that a claim whose
    process is gone (killed, out of memory, power cut) is taken over at once."""

    __tablename__ = "run_attempts"
    __table_args__ = (CheckConstraint(_in("status", ATTEMPT_STATUSES), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(Text)
    device: Mapped[str] = mapped_column(String(64))
    code_version: Mapped[str] = mapped_column(String(64))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    pid: Mapped[int | None] = mapped_column(Integer)
    pid_start: Mapped[int | None] = mapped_column(BigInteger)
    pid_ns: Mapped[int | None] = mapped_column(BigInteger)
    boot_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime | None]  # the last sign of life while it computes
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    run: Mapped[RunRow] = relationship(back_populates="tries")


class OutputRow(Base):
    """A file a run wrote. A later success of the same run (a redo) supersedes the run's
    outputs (``superseded_at``) without deleting them: a file of the earlier success,
    in another folder or copied away, keeps its provenance."""

    __tablename__ = "outputs"
    __table_args__ = (
        CheckConstraint(_in("kind", OUTPUT_KINDS), name="kind"),
        # one current output per kind and run, enforced by the database
        Index(
            "uq_outputs_current_kind",
            "run_id",
            "kind",
            unique=True,
            sqlite_where=text("superseded_at IS NULL"),
            postgresql_where=text("superseded_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text, index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    superseded_at: Mapped[datetime | None]

    run: Mapped[RunRow] = relationship(back_populates="outputs")


class TrainingPairRow(Base):
    __tablename__ = "training_pairs"
    __table_args__ = (UniqueConstraint("original_sha256", "starless_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    original_path: Mapped[str] = mapped_column(Text)
    original_sha256: Mapped[str] = mapped_column(String(64))
    starless_path: Mapped[str] = mapped_column(Text)
    starless_sha256: Mapped[str] = mapped_column(String(64))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)

    used_by: Mapped[list[ModelVersionRow]] = relationship(
        secondary=model_training_pairs, back_populates="training_pairs"
    )


# ---- rows -> plain records (flows.provenance_records) ---------------------------------------


def run_query() -> Any:
    return select(RunRow).options(
        joinedload(RunRow.frame),
        joinedload(RunRow.model_version),
        selectinload(RunRow.outputs),
        selectinload(RunRow.tries),
    )


def to_frame(row: FrameRow) -> Frame:
    facts = HeaderFacts(
        object_name=row.object_name,
        date_obs=row.date_obs,
        exposure_s=row.exposure_s,
        filter_name=row.filter_name,
        telescope=row.telescope,
        instrument=row.instrument,
        bitpix=row.bitpix,
        channels=row.channels,
        height_px=row.height_px,
        width_px=row.width_px,
    )
    return Frame(
        id=row.id,
        sha256=row.sha256,
        path=row.path,
        size_bytes=row.size_bytes,
        mtime=row.mtime,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        facts=facts,
    )


def to_model(row: ModelVersionRow) -> ModelVersion:
    return ModelVersion(
        version=row.version,
        weights_sha256=row.weights_sha256,
        config=dict(row.config),
        parent=row.parent.version if row.parent is not None else None,
        status=cast(ModelStatus, row.status),
        benchmark=None if row.benchmark is None else dict(row.benchmark),
        created_at=row.created_at,
        promoted_at=row.promoted_at,
        training_pair_ids=tuple(sorted(p.id for p in row.training_pairs)),
    )


def to_output(o: OutputRow) -> Output:
    return Output(
        kind=cast(OutputKind, o.kind),
        path=o.path,
        sha256=o.sha256,
        size_bytes=o.size_bytes,
        superseded_at=o.superseded_at,
    )


def to_attempt(a: RunAttemptRow) -> Attempt:
    return Attempt(
        attempt=a.attempt,
        status=cast(RunStatus, a.status),
        host=a.host,
        device=a.device,
        code_version=a.code_version,
        flow_run_id=a.flow_run_id,
        pid=a.pid,
        boot_id=a.boot_id,
        started_at=a.started_at,
        finished_at=a.finished_at,
        error=a.error,
    )


def run_status(row: RunRow) -> RunStatus:
    """The run's status as shown: ``interrupted`` for a run recorded ``failed`` whose
    newest attempt was interrupted (it is taken up again, that attempt not counted)."""
    if row.status == "failed" and row.tries and row.tries[-1].status == "interrupted":
        return "interrupted"
    return cast(RunStatus, row.status)


def to_run(row: RunRow) -> Run:
    return Run(
        run_key=row.run_key,
        status=run_status(row),
        frame_sha256=row.frame.sha256,
        frame_path=row.frame.path,
        model_version=row.model_version.version,
        weights_sha256=row.model_version.weights_sha256,
        params=dict(row.params),
        param_hash=row.param_hash,
        code_version=row.code_version,
        host=row.host,
        device=row.device,
        flow_run_id=row.flow_run_id,
        attempts=row.attempts,
        error=row.error,
        timings={str(k): float(v) for k, v in row.timings.items()},
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        duration_s=row.duration_s,
        outputs=tuple(to_output(o) for o in row.outputs if o.superseded_at is None),
        figures=None if row.figures is None else dict(row.figures),
        earlier_outputs=tuple(to_output(o) for o in row.outputs if o.superseded_at is not None),
        attempt_log=tuple(to_attempt(a) for a in row.tries),
    )


def to_pair(row: TrainingPairRow) -> TrainingPair:
    return TrainingPair(
        id=row.id,
        original_path=row.original_path,
        original_sha256=row.original_sha256,
        starless_path=row.starless_path,
        starless_sha256=row.starless_sha256,
        added_at=row.added_at,
        used_by=tuple(sorted(m.version for m in row.used_by)),
    )
