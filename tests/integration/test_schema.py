"""Alembic owns the whole schema, LangGraph's checkpoint tables included."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from langgraph.checkpoint.postgres import PostgresSaver

from durakit import db
from durakit.errors import DatabaseUnavailable, SchemaBehind
from tests.conftest import create_database, drop_database

CHECKPOINT_TABLES = ("checkpoint_migrations", "checkpoints", "checkpoint_blobs", "checkpoint_writes")

COLUMNS_SQL = """
SELECT table_name, column_name, data_type, is_nullable, column_default, ordinal_position
FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ANY(%s)
ORDER BY table_name, column_name
"""
INDEXES_SQL = "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY(%s) ORDER BY indexname"


def catalog(url: str) -> tuple[list[tuple], list[tuple]]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(COLUMNS_SQL, (list(CHECKPOINT_TABLES),)).fetchall()
        indexes = conn.execute(INDEXES_SQL, (list(CHECKPOINT_TABLES),)).fetchall()
    return columns, indexes


def test_code_knows_the_alembic_head():
    scripts = ScriptDirectory.from_config(db.alembic_config("postgresql://unused/unused"))
    assert scripts.get_current_head() == db.SCHEMA_HEAD
    in_order = [rev.revision for rev in reversed(list(scripts.walk_revisions()))]
    assert tuple(in_order) == db.SCHEMA_REVISIONS


def test_code_knows_the_checkpoint_migrations_and_refuses_a_saver_expecting_others(monkeypatch):
    assert db.CHECKPOINT_MIGRATIONS == len(PostgresSaver.MIGRATIONS)
    db.check_installed_saver()
    monkeypatch.setattr(PostgresSaver, "MIGRATIONS", [*PostgresSaver.MIGRATIONS, "SELECT 1"])
    with pytest.raises(DatabaseUnavailable, match="installed langgraph-checkpoint-postgres"):
        db.check_installed_saver()


def test_checkpoint_tables_are_exactly_what_stock_setup_creates(scratch_database, admin_url):
    stock_name = f"durakit_stock_{uuid.uuid4().hex[:8]}"
    stock_url = create_database(admin_url, stock_name)
    try:
        with PostgresSaver.from_conn_string(stock_url) as saver:
            saver.setup()
        db.upgrade(scratch_database, "0001")
        assert catalog(scratch_database) == catalog(stock_url)
        with psycopg.connect(scratch_database) as conn:
            recorded = [row[0] for row in conn.execute("SELECT v FROM checkpoint_migrations ORDER BY v")]
        assert recorded == list(range(len(PostgresSaver.MIGRATIONS)))
    finally:
        drop_database(admin_url, stock_name)


def test_downgrade_to_base_then_upgrade_to_head(scratch_database):
    db.upgrade(scratch_database)
    db.downgrade(scratch_database, "base")
    with psycopg.connect(scratch_database) as conn:
        left = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
        ).fetchall()
    assert left == []
    db.upgrade(scratch_database)
    assert db.current_revision(scratch_database) == db.SCHEMA_HEAD


def test_a_server_database_behind_is_refused_and_the_embedded_one_migrates_itself(scratch_database):
    with pytest.raises(SchemaBehind, match="durakit db upgrade"):
        db.ensure_schema(db.Database(scratch_database, embedded=False))
    db.upgrade(scratch_database, "0001")
    with pytest.raises(SchemaBehind, match="revision 0001"):
        db.ensure_schema(db.Database(scratch_database, embedded=False))
    db.ensure_schema(db.Database(scratch_database, embedded=True))
    assert db.current_revision(scratch_database) == db.SCHEMA_HEAD


def test_a_checkpoint_migration_alembic_lacks_is_refused(scratch_database):
    db.upgrade(scratch_database)
    with psycopg.connect(scratch_database, autocommit=True) as conn:
        conn.execute("DELETE FROM checkpoint_migrations WHERE v = (SELECT max(v) FROM checkpoint_migrations)")
    with pytest.raises(DatabaseUnavailable, match="checkpoint migrations"):
        db.ensure_schema(db.Database(scratch_database, embedded=False))


def test_alembic_from_a_checkout_uses_durakit_database_url(scratch_database):
    ini = Path(__file__).resolve().parents[2] / "alembic.ini"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        env={**os.environ, "DURAKIT_DATABASE_URL": scratch_database}, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    assert db.current_revision(scratch_database) == db.SCHEMA_HEAD
