"""Interrupted attempts: ``run_attempts.status`` may be ``interrupted``.

An attempt stopped from outside (a stop signal to the watcher, serve or a worker, the
host restarting, a submission that never started) is recorded ``interrupted`` and not
counted toward ``max_attempts``; its run stays ``failed`` in ``runs`` (shown
``interrupted``). Only the check constraint of ``run_attempts`` changes: SQLite copies
that table (nothing references it); ``runs`` is left as it is.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "status IN ('queued', 'running', 'succeeded', 'failed')"
NEW = "status IN ('queued', 'running', 'succeeded', 'failed', 'interrupted')"


def upgrade() -> None:
    with op.batch_alter_table("run_attempts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_run_attempts_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_run_attempts_status"), NEW)


def downgrade() -> None:
    # an interrupted attempt was an ordinary failure before
    op.execute("UPDATE run_attempts SET status = 'failed' WHERE status = 'interrupted'")
    with op.batch_alter_table("run_attempts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_run_attempts_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_run_attempts_status"), OLD)
