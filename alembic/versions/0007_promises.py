"""Kept promises: a fencing token per thread (the lease generation), and what the
fixes of issue 12 need besides.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from pathlib import Path

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.get_bind().exec_driver_sql(Path(__file__).with_suffix(".sql").read_text())


def downgrade() -> None:
    op.get_bind().exec_driver_sql("ALTER TABLE durakit_threads DROP COLUMN lease_epoch")
    op.get_bind().exec_driver_sql(  # automatic retries (its index goes with the column)
        "ALTER TABLE durakit_threads DROP COLUMN retry_at, DROP COLUMN auto_retries, DROP COLUMN retry_limit"
    )
    op.get_bind().exec_driver_sql("ALTER TABLE durakit_timers DROP COLUMN before_workers")  # timers from before workers
