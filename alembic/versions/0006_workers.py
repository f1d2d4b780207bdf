"""Workers and durable timers: procrastinate's job schema, and what durakit adds to it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from pathlib import Path

from procrastinate.schema import SchemaManager

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    # procrastinate ships its schema as SQL with its package; the version is pinned, so
    # this is the schema its worker expects.
    bind.exec_driver_sql(SchemaManager.get_schema().replace("%", "%%"))
    bind.exec_driver_sql(Path(__file__).with_suffix(".sql").read_text())


def downgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql(
        "DROP INDEX durakit_events_node_idx; "
        "ALTER TABLE durakit_timers DROP COLUMN job_id, DROP COLUMN fired_at, DROP COLUMN node; "
        "ALTER TABLE durakit_threads DROP COLUMN worker_managed, DROP COLUMN waiting_for; "
        "DROP TABLE procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs, procrastinate_workers "
        "CASCADE"
    )
    functions = bind.exec_driver_sql(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate%%'"
    ).fetchall()
    for (signature,) in functions:
        bind.exec_driver_sql(f"DROP FUNCTION {signature} CASCADE")
    bind.exec_driver_sql(
        "DROP TYPE procrastinate_job_to_defer_v1, procrastinate_job_event_type, procrastinate_job_status"
    )
