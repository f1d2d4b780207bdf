"""Timers, and sandbox calendar, charges, subscriptions and ticketing for the templates.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from pathlib import Path

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = [
    "sandbox_assignments",
    "sandbox_tickets",
    "sandbox_discounts",
    "sandbox_accounts",
    "sandbox_charges",
    "sandbox_holds",
    "durakit_timers",
]


def upgrade() -> None:
    op.get_bind().exec_driver_sql(Path(__file__).with_suffix(".sql").read_text())


def downgrade() -> None:
    op.get_bind().exec_driver_sql("DROP TABLE IF EXISTS " + ", ".join(TABLES))
