"""Alembic environment: run durakit's migrations against one PostgreSQL database.

The URL comes from the `sqlalchemy.url` main option when durakit calls alembic itself,
otherwise from DURAKIT_DATABASE_URL. Migrations run under a transaction-scoped advisory
lock, so several processes starting at once apply them exactly once.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, pool, text

from alembic import context

MIGRATION_LOCK_KEY = 7_231_840_112  # arbitrary, fixed: serialises concurrent upgrades


def sqlalchemy_url(libpq_url: str) -> str:
    """Turn a libpq URL (postgresql://...) into SQLAlchemy's psycopg 3 form."""
    for prefix in ("postgresql://", "postgres://"):
        if libpq_url.startswith(prefix):
            return "postgresql+psycopg://" + libpq_url[len(prefix) :]
    return libpq_url


def database_url() -> str:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ.get("DURAKIT_DATABASE_URL")
    if not url:
        raise SystemExit("Set DURAKIT_DATABASE_URL to the PostgreSQL database to migrate.")
    return sqlalchemy_url(url)


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=database_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
