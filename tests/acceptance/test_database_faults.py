"""The database fails under a running `durakit` process: its sessions are terminated,
it refuses connections for a while or for too long, or it restarts. The run finishes
once the database is back, or stops with one sentence and finishes on `durakit resume`;
every side effect happens once and every checkpoint stays readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from durakit import db
from durakit.graphs import get_template
from durakit.runner import Runner
from tests.conftest import CHILD_TIMEOUT_SECONDS, create_database, drop_database, unique

pytestmark = pytest.mark.crash

TERMINATE_SQL = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = %s AND application_name LIKE 'durakit%%'
"""


class FaultyDatabase:
    """A migrated scratch database, and the levers to fail it from an admin session."""

    def __init__(self, admin_url: str, name: str, url: str) -> None:
        self.admin_url, self.name, self.url = admin_url, name, url

    def admin(self, statement: sql.Composable | str, params: tuple = ()) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement, params)

    def terminate_sessions(self) -> None:
        self.admin(TERMINATE_SQL, (self.name,))

    def refuse_connections(self) -> None:
        self.admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(self.name)))
        self.terminate_sessions()

    def allow_connections(self) -> None:
        self.admin(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(self.name)))

    def runner(self) -> Runner:
        return Runner(db.Database(self.url, embedded=False))


@pytest.fixture
def faulty(admin_url: str) -> Iterator[FaultyDatabase]:
    name = f"durakit_faults_{uuid.uuid4().hex[:10]}"
    url = create_database(admin_url, name)
    db.upgrade(url)
    database = FaultyDatabase(admin_url, name, url)
    try:
        yield database
    finally:
        database.allow_connections()
        drop_database(admin_url, name)


def start_refund(url: str, order_id: str, **env: str) -> subprocess.Popen[str]:
    request = json.dumps({"order_id": order_id, "amount": "50.00", "reason": "arrived broken"})
    return subprocess.Popen(
        [sys.executable, "-m", "durakit", "run", "refund", "--input", request, "--json"],
        env={**os.environ, "DURAKIT_DATABASE_URL": url, "DURAKIT_SANDBOX_LATENCY_MS": "400", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def seed_order(database: FaultyDatabase) -> str:
    order_id = unique("ORD")
    with database.runner() as runner:
        runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email=f"{order_id.lower()}@example.com",
                                 amount_cents=30000)
    return order_id


def wait_until_mid_run(url: str, thread_id: str, child: subprocess.Popen[str], nodes: int = 2) -> None:
    """Until the child has finished `nodes` nodes of the thread (and is still at it)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            finished = conn.execute("SELECT count(*) FROM durakit_events WHERE thread_id = %s AND kind = 'node_finished'",
                                    (thread_id,)).fetchone()[0]
            if finished >= nodes:
                return
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)


def check_done_once(database: FaultyDatabase, order_id: str) -> list[str]:
    """The thread completed with one refund and every checkpoint readable; returns its event kinds."""
    thread_id = f"refund-{order_id}"
    with database.runner() as runner:
        view = runner.status(thread_id)
        assert (view.status, view.result["outcome"]) == ("completed", "refunded"), view
        assert all(effect["applied"] <= 1 and effect["status"] == "done" for effect in view.effects), view.effects
        graph = runner.engine.graph(get_template(view.template))
        history = list(graph.get_state_history({"configurable": {"thread_id": thread_id}}))
        assert history and all(snapshot.values for snapshot in history[:-1])
        events = [event["kind"] for event in runner.history(thread_id).extra["events"]]
        with runner.pool.connection() as conn:
            refunds = conn.execute("SELECT count(*) FROM sandbox_refunds WHERE order_id = %s", (order_id,)).fetchone()
    assert refunds["count"] == 1
    return events


def test_sessions_terminated_mid_run_the_run_reconnects_and_finishes(faulty):
    order_id = seed_order(faulty)
    child = start_refund(faulty.url, order_id)
    wait_until_mid_run(faulty.url, f"refund-{order_id}", child)
    faulty.terminate_sessions()
    out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    assert child.returncode == 0, err
    assert json.loads(out)["status"] == "completed"
    assert "reconnected" in check_done_once(faulty, order_id)


def test_database_away_for_seconds_mid_run_the_run_waits_and_finishes(faulty):
    order_id = seed_order(faulty)
    child = start_refund(faulty.url, order_id)
    wait_until_mid_run(faulty.url, f"refund-{order_id}", child)
    faulty.refuse_connections()
    time.sleep(3)
    assert child.poll() is None, "the run gave up although the database was away for seconds only"
    faulty.allow_connections()
    out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    assert child.returncode == 0, err
    assert "reconnected" in check_done_once(faulty, order_id)


def test_database_away_too_long_the_run_stops_with_a_sentence_and_resume_finishes(faulty):
    order_id = seed_order(faulty)
    thread_id = f"refund-{order_id}"
    child = start_refund(faulty.url, order_id, DURAKIT_DB_RETRY_SECONDS="2")
    wait_until_mid_run(faulty.url, thread_id, child)
    faulty.refuse_connections()
    out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    assert child.returncode == 5, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("durakit: ") and f"durakit resume {thread_id}" in lines[0]

    faulty.allow_connections()
    resumed = subprocess.run([sys.executable, "-m", "durakit", "resume", thread_id, "--json"],
                             env={**os.environ, "DURAKIT_DATABASE_URL": faulty.url},
                             capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
    assert resumed.returncode == 0, resumed.stderr
    check_done_once(faulty, order_id)


def test_a_command_started_while_the_database_refuses_exits_5_within_seconds(faulty):
    faulty.refuse_connections()
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "durakit", "threads"],
                          env={**os.environ, "DURAKIT_DATABASE_URL": faulty.url},
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS)
    assert done.returncode == 5
    assert time.monotonic() - began < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("durakit: ") and "Traceback" not in done.stderr


def test_embedded_postgres_restarted_mid_run_the_run_finishes(tmp_path):
    home = tmp_path / "durakit-home"
    url = db.start_embedded(home)
    try:
        db.upgrade(url)
        database = FaultyDatabase(url, "postgres", url)
        order_id = seed_order(database)
        env = {k: v for k, v in os.environ.items() if k != "DURAKIT_DATABASE_URL"}
        child = subprocess.Popen(
            [sys.executable, "-m", "durakit", "run", "refund", "--input",
             json.dumps({"order_id": order_id, "amount": "50.00", "reason": "arrived broken"}), "--json"],
            env={**env, "DURAKIT_HOME": str(home), "DURAKIT_SANDBOX_LATENCY_MS": "400"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        wait_until_mid_run(url, f"refund-{order_id}", child)
        assert db.stop_embedded(home)
        time.sleep(1)
        db.start_embedded(home)
        out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
        assert child.returncode == 0, err
        assert "reconnected" in check_done_once(database, order_id)
    finally:
        db.stop_embedded(home)
