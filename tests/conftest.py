"""Test harness: every test session gets a fresh PostgreSQL database of its own.

- With DURAKIT_DATABASE_URL set (a server, e.g. postgresql://postgres@127.0.0.1:5432/test),
  the session creates a scratch database on that server, applies the migrations the
  way an operator would (`durakit db upgrade`), and drops it at the end.
- Without it, the session uses the embedded PostgreSQL (pgserver) in a temporary
  DURAKIT_HOME, migrated automatically as a new user's would be, and stops it at the end.

Child processes started by tests inherit the session's environment, so they reach the
same database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from durakit import db
from durakit.runner import Runner
from durakit.settings import KitSettings
from tests.scenarios import future_slot, unique  # noqa: F401  (tests import them from here)

CHILD_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class SessionDatabase:
    url: str
    embedded: bool
    server_url: str | None  # to create and drop scratch databases (server mode)


def with_dbname(url: str, dbname: str) -> str:
    """The same libpq URL, naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


def create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return with_dbname(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def test_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionDatabase]:
    server_url = os.environ.get("DURAKIT_DATABASE_URL")
    if server_url:
        name = f"durakit_test_{uuid.uuid4().hex[:10]}"
        url = create_database(server_url, name)
        os.environ["DURAKIT_DATABASE_URL"] = url
        db.upgrade(url)
        try:
            yield SessionDatabase(url=url, embedded=False, server_url=server_url)
        finally:
            os.environ["DURAKIT_DATABASE_URL"] = server_url
            drop_database(server_url, name)
    else:
        home = tmp_path_factory.mktemp("durakit-home")
        os.environ["DURAKIT_HOME"] = str(home)
        database = db.locate(KitSettings.from_env())
        db.ensure_schema(database)  # the embedded database migrates itself
        try:
            yield SessionDatabase(url=database.url, embedded=True, server_url=None)
        finally:
            db.stop_embedded(home)


@pytest.fixture(scope="session")
def runner(test_database: SessionDatabase) -> Iterator[Runner]:
    with Runner.open() as runner:
        yield runner


@pytest.fixture
def conn(test_database: SessionDatabase) -> Iterator[psycopg.Connection]:
    with psycopg.connect(test_database.url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


@pytest.fixture
def admin_url(test_database: SessionDatabase) -> str:
    """A URL to create scratch databases with: the server's, or the embedded one's."""
    return test_database.server_url or test_database.url


@pytest.fixture
def scratch_database(admin_url: str) -> Iterator[str]:
    """An empty database on the same server, dropped afterwards."""
    name = f"durakit_scratch_{uuid.uuid4().hex[:10]}"
    url = create_database(admin_url, name)
    try:
        yield url
    finally:
        drop_database(admin_url, name)


@pytest.fixture
def make_order(runner: Runner):
    """Seed a sandbox order and return its id: make_order(amount_cents=30000, days_ago=3)."""

    def make(amount_cents: int = 30000, *, days_ago: int = 3, email: str | None = None) -> str:
        order_id = unique("ORD")
        runner.sandbox.add_order(
            order_id,
            customer_id=unique("cust"),
            customer_email=email or f"{order_id.lower()}@example.com",
            amount_cents=amount_cents,
            days_ago=days_ago,
        )
        return order_id

    return make


@pytest.fixture
def make_account(runner: Runner):
    """Seed a sandbox subscription and return its id; keyword arguments override usage and price."""

    def make(**overrides: Any) -> str:
        account_id = unique("ACC")
        fields = {"customer_id": unique("cust"), "customer_email": f"{account_id.lower()}@example.com", **overrides}
        runner.sandbox.add_account(account_id, **fields)
        return account_id

    return make


def durakit(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the `durakit` CLI in a new process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "durakit", *args],
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
    )


def durakit_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any] | None, str]:
    """Run `durakit ARGS --json`; returns (exit code, parsed stdout or None, stderr)."""
    done = durakit(*args, "--json", env=env)
    data = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, data, done.stderr


def table_row_counts(conn: psycopg.Connection):
    """counts(): the row count of every table of the database, to show that a refused
    command wrote nothing."""
    tables = [row[0] for row in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version' ORDER BY 1")]

    def counts() -> dict[str, int]:
        union = " UNION ALL ".join(f"SELECT '{name}', count(*) FROM {name}" for name in tables)
        return dict(conn.execute(union).fetchall())

    return counts


def side_effect_counts(conn: psycopg.Connection, order_id: str, customer_email: str) -> dict[str, int]:
    """What the sandbox systems applied for one order: the numbers a crash must not change."""
    def count(sql: str, *params: Any) -> int:
        return conn.execute(sql, params).fetchone()["count"]

    return {
        "refunds": count("SELECT count(*) FROM sandbox_refunds WHERE order_id = %s", order_id),
        "crm_notes": count("SELECT count(*) FROM sandbox_crm_notes WHERE subject LIKE %s", f"% on order {order_id}"),
        "customer_emails": count("SELECT count(*) FROM sandbox_emails WHERE recipient = %s", customer_email),
        "approval_requests": count(
            "SELECT count(*) FROM sandbox_emails WHERE subject LIKE %s", f"Refund approval needed:% order {order_id}"
        ),
        "audit_records": count("SELECT count(*) FROM sandbox_audit_records WHERE subject = %s", f"refund:{order_id}"),
    }
