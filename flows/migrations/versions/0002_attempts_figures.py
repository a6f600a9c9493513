"""Run attempts (with the claiming process), figures of a run, superseded outputs.

- ``run_attempts``: one row per claim of a run, with the claiming process (pid, its
  start, its pid namespace, the host's boot id), so that a claim whose process is gone
  is taken over at once, and so that a failed redo no longer overwrites the success.
  Each existing run gets one attempt from its own columns.
- ``runs.figures``: what the frame's success measured (spike score, ...).
- ``outputs.superseded_at``: a later success of the same run keeps the earlier outputs,
  superseded; the unique (run_id, kind) holds for the current outputs only.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CURRENT = "superseded_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "run_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("code_version", sa.String(length=64), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("pid_start", sa.BigInteger(), nullable=True),
        sa.Column("pid_ns", sa.BigInteger(), nullable=True),
        sa.Column("boot_id", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')",
            name=op.f("ck_run_attempts_status"),
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_attempts_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_attempts")),
    )
    with op.batch_alter_table("run_attempts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_attempts_run_id"), ["run_id"], unique=False)
    # every run so far: one attempt, its current state
    op.execute(
        "INSERT INTO run_attempts (run_id, attempt, status, host, device, code_version, "
        "flow_run_id, started_at, finished_at, error) "
        "SELECT id, attempts, status, host, device, code_version, flow_run_id, started_at, "
        "finished_at, error FROM runs ORDER BY id"
    )

    # ADD COLUMN only: runs is never copied (SQLite would drop it, and its outputs, on the way)
    with op.batch_alter_table("runs", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("figures", sa.JSON(), nullable=True))

    # outputs is referenced by nothing: SQLite may copy it to drop the unique constraint
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_constraint(batch_op.f("uq_outputs_run_id_kind"), type_="unique")
        batch_op.create_index(batch_op.f("ix_outputs_run_id"), ["run_id"], unique=False)
        batch_op.create_index(
            "uq_outputs_current_kind",
            ["run_id", "kind"],
            unique=True,
            sqlite_where=sa.text(CURRENT),
            postgresql_where=sa.text(CURRENT),
        )


def downgrade() -> None:
    # one output per (run, kind) again: the superseded ones go
    op.execute("DELETE FROM outputs WHERE superseded_at IS NOT NULL")
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_outputs_current_kind",
            sqlite_where=sa.text(CURRENT),
            postgresql_where=sa.text(CURRENT),
        )
        batch_op.drop_index(batch_op.f("ix_outputs_run_id"))
        batch_op.create_unique_constraint(batch_op.f("uq_outputs_run_id_kind"), ["run_id", "kind"])
        batch_op.drop_column("superseded_at")

    with op.batch_alter_table("runs", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("figures")

    with op.batch_alter_table("run_attempts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_attempts_run_id"))
    op.drop_table("run_attempts")
