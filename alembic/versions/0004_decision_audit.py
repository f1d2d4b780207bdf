"""Decisions record the question they answered and the authority they were given under.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from pathlib import Path

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.get_bind().exec_driver_sql(Path(__file__).with_suffix(".sql").read_text())


def downgrade() -> None:
    op.get_bind().exec_driver_sql(
        "ALTER TABLE durakit_decisions DROP COLUMN node, DROP COLUMN question, DROP COLUMN authorized_as"
    )
