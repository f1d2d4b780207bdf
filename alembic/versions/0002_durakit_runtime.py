"""durakit's registry, ledger, decisions, event log and sandbox tables.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from pathlib import Path

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = [
    "sandbox_audit_records",
    "sandbox_emails",
    "sandbox_crm_notes",
    "sandbox_refunds",
    "sandbox_orders",
    "sandbox_requests",
    "durakit_events",
    "durakit_decisions",
    "durakit_effects",
    "durakit_threads",
]


def upgrade() -> None:
    op.get_bind().exec_driver_sql(Path(__file__).with_suffix(".sql").read_text())


def downgrade() -> None:
    op.get_bind().exec_driver_sql("DROP TABLE IF EXISTS " + ", ".join(TABLES))
