"""Forks: they inherit their source's ledger (idempotency keys shared), and supersede it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from pathlib import Path

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.get_bind().exec_driver_sql(Path(__file__).with_suffix(".sql").read_text())


def downgrade() -> None:
    # Fails while a fork shares a key with its source: drop the forks first.
    op.get_bind().exec_driver_sql(
        "ALTER TABLE durakit_threads DROP COLUMN superseded_by; "
        "ALTER TABLE durakit_effects DROP COLUMN inherited_from; "
        "DROP INDEX durakit_effects_idempotency_key_idx; "
        "ALTER TABLE durakit_effects ADD CONSTRAINT durakit_effects_idempotency_key_key UNIQUE (idempotency_key)"
    )
