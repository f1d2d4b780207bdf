"""Timers made before workers (revision 0006) fire after an upgrade, once each.

The threads are made by the old code itself, not imitated: the tree of the commit before
0006 is taken from git into a temporary directory and run in a child process (its own
`durakit` package, same dependencies) against a scratch database, which that code
migrates to its head, 0005. There a booking completes with its reminder recorded, a
cancellation-save completes with its 30-day follow-up recorded, and an escalation waits
for an agent with its `reminder:1` recorded: rows and checkpoints exactly as that code
leaves them. Then this code upgrades the database to its head, the timers are moved due
(SQL: they have no jobs yet), and a real `durakit worker --burst` fires them.

Without a git checkout holding that commit the test is skipped: it cannot make old
threads honestly otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from durakit import db

REPO = Path(__file__).resolve().parents[2]
BEFORE_WORKERS = "d3a6aa87d8edf41112828ad2124e87e9e6df69a0"  # 4b642b3^, the last commit before revision 0006

# Where each directory of the checkout installs (pyproject.toml's package-dir).
PACKAGE_DIRS = {"runtime": "durakit", "graphs": "durakit/graphs", "state": "durakit/state",
                "checkpointers": "durakit/checkpointers", "alembic": "durakit/migrations"}

OLD_THREADS = """
import json, sys, uuid
from datetime import UTC, datetime, timedelta

from durakit import db
from durakit.runner import Runner

def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"

db.upgrade(sys.argv[1])
slot = (datetime.now(UTC) + timedelta(days=5)).replace(hour=10, minute=0, second=0, microsecond=0)
with Runner.open() as runner:
    customer = unique("cust")
    booking = runner.run("booking", {"customer_id": customer, "customer_email": f"{customer}@example.com",
                                     "service": unique("svc"), "slot": slot.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                     "payment_method": "pm_card_visa"})
    account_id, holder = unique("ACC"), unique("cust")
    runner.sandbox.add_account(account_id, customer_id=holder, customer_email=f"{holder}@example.com")
    save = runner.run("cancellation-save", {"account_id": account_id, "reason": "too expensive"})
    save = runner.approve(save.thread_id, "accepted", by="customer")
    asker = unique("cust")
    escalation = runner.run("escalation", {"conversation_id": unique("CONV"), "customer_id": asker,
                                           "customer_email": f"{asker}@example.com", "subject": "Checkout broken",
                                           "message": "Our shop is down. Nobody can pay."})
    print(json.dumps({
        "booking": booking.thread_id, "customer_email": f"{customer}@example.com",
        "save": save.thread_id, "save_status": save.status, "account_id": account_id,
        "escalation": escalation.thread_id, "escalation_status": escalation.status,
        "ticket_id": escalation.interrupt["ticket_id"], "queue": escalation.interrupt["queue"],
    }))
"""


def old_tree(target: Path) -> Path:
    """The commit before 0006 as an importable `durakit` package under `target`."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_WORKERS, *PACKAGE_DIRS],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs a git checkout of durakit holding commit {BEFORE_WORKERS[:7]}")
    source = target / "source"
    source.mkdir()
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True, timeout=60)
    for directory, package in PACKAGE_DIRS.items():  # runtime first: the others go inside it
        (source / directory).rename(target / package)
    return target


def run_old_code(tree: Path, url: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "DURAKIT_DATABASE_URL": url}
    for name in ("DURAKIT_ENCRYPTION_KEY", "DURAKIT_MODEL", "DURAKIT_FAULT"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", OLD_THREADS, url], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tree)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def burst(url: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "durakit", "worker", "--burst"],
                          env={**os.environ, "DURAKIT_DATABASE_URL": url}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def count(conn: psycopg.Connection, sql: str, *params: object) -> int:
    return conn.execute(sql, params).fetchone()["count"]


def test_timers_from_before_workers_fire_once_after_the_upgrade(scratch_database, tmp_path):
    ids = run_old_code(old_tree(tmp_path), scratch_database)
    assert (ids["save_status"], ids["escalation_status"]) == ("completed", "waiting")
    db.upgrade(scratch_database)

    with psycopg.connect(scratch_database, autocommit=True, row_factory=dict_row) as conn:
        old = conn.execute("SELECT thread_id, name FROM durakit_timers WHERE status = 'scheduled' ORDER BY name").fetchall()
        assert {(row["thread_id"], row["name"]) for row in old} == {
            (ids["booking"], "reminder"), (ids["save"], "follow_up"), (ids["escalation"], "reminder:1")}
        conn.execute("UPDATE durakit_timers SET due_at = now()")  # days and weeks away: due now

        first, again = burst(scratch_database), burst(scratch_database)

        reminders = count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s AND subject LIKE 'Reminder:%%'",
                          ids["customer_email"])
        follow_ups = count(conn, "SELECT count(*) FROM sandbox_crm_notes WHERE subject = %s",
                           f"30-day follow-up on {ids['account_id']}")
        queue_reminders = count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s AND subject = %s",
                                f"{ids['queue']}-queue@example.com", f"[{ids['ticket_id']}] still waiting for an agent")
        assert (reminders, follow_ups, queue_reminders) == (1, 1, 1), first.stdout + again.stdout
        assert count(conn, "SELECT count(*) FROM durakit_events WHERE kind = 'timer_cancelled'") == 0
        assert count(conn, "SELECT count(*) FROM durakit_events WHERE kind = 'timer_fired'") == 3
        assert "fire_timer" not in again.stdout  # nothing was left to fire

        statuses = {row["thread_id"]: row["status"] for row in conn.execute("SELECT thread_id, status FROM durakit_threads")}
        assert statuses == {ids["booking"]: "completed", ids["save"]: "completed", ids["escalation"]: "waiting"}
        # The escalation goes on as one made today: reminded every 48 hours while nobody accepts it.
        pending = conn.execute("SELECT name, due_at > now() + interval '47 hours' AS later FROM durakit_timers "
                               "WHERE thread_id = %s AND status = 'scheduled'", (ids["escalation"],)).fetchall()
        assert [(row["name"], row["later"]) for row in pending] == [("reminder:1:2", True)]
