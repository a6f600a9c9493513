"""Initial provenance schema: frames, model_versions, runs, outputs, training_pairs.

Revision ID: 0001
Revises: -
Create Date: 2026-11-25 19:23:43.917168
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "frames",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("mtime", sa.DateTime(timezone=True), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("object_name", sa.Text(), nullable=True),
        sa.Column("date_obs", sa.String(length=32), nullable=True),
        sa.Column("exposure_s", sa.Float(), nullable=True),
        sa.Column("filter_name", sa.Text(), nullable=True),
        sa.Column("telescope", sa.Text(), nullable=True),
        sa.Column("instrument", sa.Text(), nullable=True),
        sa.Column("bitpix", sa.Integer(), nullable=True),
        sa.Column("channels", sa.Integer(), nullable=True),
        sa.Column("height_px", sa.Integer(), nullable=True),
        sa.Column("width_px", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_frames")),
        sa.UniqueConstraint("sha256", name=op.f("uq_frames_sha256")),
    )
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_frames_path"), ["path"], unique=False)

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("weights_sha256", sa.String(length=64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("benchmark", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'promoted', 'retired')", name=op.f("ck_model_versions_status")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["model_versions.id"],
            name=op.f("fk_model_versions_parent_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_model_versions_version")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_model_versions_weights_sha256"), ["weights_sha256"], unique=False
        )
        batch_op.create_index(
            "uq_model_versions_one_promoted",
            ["status"],
            unique=True,
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        )

    op.create_table(
        "training_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("original_path", sa.Text(), nullable=False),
        sa.Column("original_sha256", sa.String(length=64), nullable=False),
        sa.Column("starless_path", sa.Text(), nullable=False),
        sa.Column("starless_sha256", sa.String(length=64), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_pairs")),
        sa.UniqueConstraint(
            "original_sha256",
            "starless_sha256",
            name=op.f("uq_training_pairs_original_sha256_starless_sha256"),
        ),
    )
    op.create_table(
        "model_training_pairs",
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("training_pair_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_training_pairs_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["training_pair_id"],
            ["training_pairs.id"],
            name=op.f("fk_model_training_pairs_training_pair_id_training_pairs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "model_version_id", "training_pair_id", name=op.f("pk_model_training_pairs")
        ),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_key", sa.String(length=64), nullable=False),
        sa.Column("frame_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("param_hash", sa.String(length=64), nullable=False),
        sa.Column("code_version", sa.String(length=64), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name=op.f("ck_runs_status")
        ),
        sa.ForeignKeyConstraint(["frame_id"], ["frames.id"], name=op.f("fk_runs_frame_id_frames")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_runs_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
        sa.UniqueConstraint("run_key", name=op.f("uq_runs_run_key")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_runs_flow_run_id"), ["flow_run_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_frame_id"), ["frame_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_runs_model_version_id"), ["model_version_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_runs_started_at"), ["started_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_runs_status"), ["status"], unique=False)

    op.create_table(
        "outputs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('starless', 'stars', 'mask', 'enhanced', 'preview')",
            name=op.f("ck_outputs_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_outputs_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outputs")),
        sa.UniqueConstraint("run_id", "kind", name=op.f("uq_outputs_run_id_kind")),
    )
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outputs_path"), ["path"], unique=False)
        batch_op.create_index(batch_op.f("ix_outputs_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outputs_sha256"))
        batch_op.drop_index(batch_op.f("ix_outputs_path"))

    op.drop_table("outputs")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_status"))
        batch_op.drop_index(batch_op.f("ix_runs_started_at"))
        batch_op.drop_index(batch_op.f("ix_runs_model_version_id"))
        batch_op.drop_index(batch_op.f("ix_runs_frame_id"))
        batch_op.drop_index(batch_op.f("ix_runs_flow_run_id"))

    op.drop_table("runs")
    op.drop_table("model_training_pairs")
    op.drop_table("training_pairs")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_model_versions_one_promoted",
            sqlite_where=sa.text("status = 'promoted'"),
            postgresql_where=sa.text("status = 'promoted'"),
        )
        batch_op.drop_index(batch_op.f("ix_model_versions_weights_sha256"))

    op.drop_table("model_versions")
    with op.batch_alter_table("frames", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_frames_path"))

    op.drop_table("frames")
