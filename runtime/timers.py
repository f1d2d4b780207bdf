"""Durable timers: rows saying when a thread wants to be woken (a reminder, a follow-up,
an approval deadline), each with the job that wakes it.

A node schedules a timer and then pauses (`durakit.steps.sleep_until`, or `ask_human`
with a deadline). Scheduling writes the timer row and a procrastinate job due at the same
time, in one transaction, and is idempotent per (thread, name): a node that runs again
(after a crash, or when it is answered) records nothing new and keeps the first due time.
A worker runs the job when it is due (`Runner.fire_timer`). Cancelling a timer cancels
its job; a job whose timer was cancelled meanwhile finds nothing to do.

With DURAKIT_ENCRYPTION_KEY set, a timer's payload (it can name a customer's email) is
stored encrypted, bound to its (thread, name); `open_payload` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit import jobs
from durakit.encryption import TIMER_PAYLOAD
from durakit.lease import Lease
from durakit.sqltext import utc_text

# Who answers for a timer, in the decisions table and in the answers nodes receive.
TIMER = "durakit:timer"


INSERT_SQL = """
INSERT INTO durakit_timers (thread_id, name, due_at, payload, node) VALUES (%(thread_id)s, %(name)s, %(due_at)s, %(payload)s, %(node)s)
ON CONFLICT (thread_id, name) DO NOTHING
"""
SET_JOB_SQL = "UPDATE durakit_timers SET job_id = %s WHERE thread_id = %s AND name = %s"
GET_SQL = f"""
SELECT name, node, {utc_text('due_at')} AS due_at, due_at <= now() AS due, status, payload, job_id,
       {utc_text('fired_at')} AS fired_at, before_workers
FROM durakit_timers WHERE thread_id = %s AND name = %s
"""
CANCEL_SQL = """
UPDATE durakit_timers SET status = 'cancelled' WHERE thread_id = %s AND name = %s AND status = 'scheduled'
RETURNING job_id
"""
# A scheduled timer whose job will not fire it: none queued (the job ran and found it not
# yet due, or failed for good, or the timer predates workers).
UNARMED_SQL = """
SELECT t.thread_id, t.name, t.due_at FROM durakit_timers t
WHERE t.status = 'scheduled' AND NOT EXISTS (
    SELECT 1 FROM procrastinate_jobs j WHERE j.id = t.job_id AND j.status IN ('todo', 'doing'))
  AND CASE WHEN %(thread_id)s::text IS NULL THEN t.due_at <= now() + interval '1 minute'  -- soon due: the sweep
           ELSE t.thread_id = %(thread_id)s AND t.name = %(name)s END
ORDER BY t.due_at LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED
"""
REARM_SQL = "UPDATE durakit_timers SET status = 'scheduled', fired_at = NULL WHERE thread_id = %s AND name = %s"
CANCEL_ALL_SQL = "UPDATE durakit_timers SET status = 'cancelled' WHERE thread_id = %s AND status = 'scheduled' RETURNING job_id"
FIRED_SQL = "UPDATE durakit_timers SET status = 'fired', fired_at = now() WHERE thread_id = %s AND name = %s"
MOVE_SQL = "UPDATE durakit_timers SET due_at = %s WHERE thread_id = %s AND name = %s AND status = 'scheduled' RETURNING job_id"
THREAD_TIMERS_SQL = f"""
SELECT name, node, {utc_text('due_at')} AS due_at, status, payload, {utc_text('fired_at')} AS fired_at
FROM durakit_timers WHERE thread_id = %s ORDER BY due_at, name
"""
# Every timer still to fire, soonest first (`durakit timers`).
SCHEDULED_SQL = f"""
SELECT t.thread_id, t.name, t.node, {utc_text('t.due_at')} AS due_at, th.template,
       t.due_at <= now() AS overdue
FROM durakit_timers t JOIN durakit_threads th USING (thread_id)
WHERE t.status = 'scheduled'
ORDER BY t.due_at, t.thread_id, t.name
LIMIT %s
"""


class Timers:
    """The timers of one thread, handed to its nodes through the run's context; what they
    write is fenced by the run's lease (`durakit.lease`)."""

    def __init__(self, pool: ConnectionPool, lease: Lease) -> None:
        self.pool = pool
        self.lease = lease
        self.thread_id = lease.thread_id

    def schedule(self, name: str, due_at: datetime, *, node: str | None = None, **payload: Any) -> dict[str, Any]:
        """Record the timer and the job that fires it, once; returns the timer as stored
        (name and due_at, ISO 8601 UTC)."""
        with self.pool.connection() as conn, conn.transaction():
            self.lease.check(conn)
            sealed = Jsonb(TIMER_PAYLOAD.seal(payload, self.thread_id, name))
            inserted = conn.execute(
                INSERT_SQL,
                {"thread_id": self.thread_id, "name": name, "due_at": due_at, "payload": sealed, "node": node},
            ).rowcount
            if inserted:
                job_id = jobs.defer_timer(conn, self.thread_id, name, due_at)
                conn.execute(SET_JOB_SQL, (job_id, self.thread_id, name))
            row = conn.execute(GET_SQL, (self.thread_id, name)).fetchone()
        return {"name": name, "due_at": row["due_at"]}

    def cancel(self, name: str) -> bool:
        """Cancel the timer if it has not fired; True if it was still scheduled."""
        with self.pool.connection() as conn, conn.transaction():
            self.lease.check(conn)
            return cancel(conn, self.thread_id, name)


def cancel(conn: Connection, thread_id: str, name: str) -> bool:
    row = conn.execute(CANCEL_SQL, (thread_id, name)).fetchone()
    if row and row["job_id"] is not None:
        jobs.cancel(conn, row["job_id"])
    return row is not None


def cancel_all(conn: Connection, thread_id: str) -> None:
    for row in conn.execute(CANCEL_ALL_SQL, (thread_id,)).fetchall():
        if row["job_id"] is not None:
            jobs.cancel(conn, row["job_id"])


def get(conn: Connection, thread_id: str, name: str) -> dict[str, Any] | None:
    row = conn.execute(GET_SQL, (thread_id, name)).fetchone()
    if row is not None:
        row["payload"] = open_payload(row["payload"], thread_id, name)
    return row


@dataclass(frozen=True)
class BeforeWorkers:
    """What a timer the kit's templates made before workers (revision 0006) stands for.

    Back then a template recorded the timer and went on, and nothing fired it: a booking
    or a cancellation-save completed with its reminder or follow-up pending, an
    escalation asked for an agent with no deadline on the question. The templates now
    wait for such a timer themselves, so an old one, when due, takes its thread to where
    the template waits for it today and does what the template does then."""

    template: str
    name: str  # the timer's name up to its first ':' (an escalation's reminder:1, reminder:2, ...)
    ended_in: str | None = None  # a thread that completed in this node goes on from it (into the sleep)
    asked_in: str | None = None  # a thread still asked in this node (an old question) ...
    answer: str | None = None  # ... gets this answer, as the question's deadline gives it today


BEFORE_WORKERS = (
    BeforeWorkers("booking", "reminder", ended_in="schedule_reminder"),  # on to await_reminder, send_reminder
    BeforeWorkers("cancellation-save", "follow_up", ended_in="schedule_follow_up"),  # await_, check_follow_up
    BeforeWorkers("escalation", "reminder", asked_in="await_agent", answer="remind"),
)


def before_workers(template: str, timer: dict[str, Any]) -> BeforeWorkers | None:
    """The meaning of `timer` (a row from `get`) if it was made before workers."""
    if not timer["before_workers"]:
        return None
    name = timer["name"].split(":", 1)[0]
    return next((old for old in BEFORE_WORKERS if (old.template, old.name) == (template, name)), None)


def answer(template: str, timer: dict[str, Any], interrupt: dict[str, Any]) -> dict[str, Any] | None:
    """What the due `timer` (a row from `get`) answers the question its thread waits on;
    None if the thread does not wait on it (answered before the deadline, gone on)."""
    if interrupt.get("timer") == timer["name"]:
        return (timer["payload"] or {}).get("answer") or {
            "decision": "wake", "by": TIMER, "note": None, "timer": timer["name"], "due_at": timer["due_at"],
            "fired_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    # A question asked before workers, when it had no deadline: the old timer is its deadline.
    old = before_workers(template, timer)
    if old is None or old.asked_in is None or interrupt.get("timer") or interrupt.get("node") != old.asked_in:
        return None
    return {"decision": old.answer, "by": TIMER, "note": f"{timer['name']}, scheduled before workers, fell due"}


def arm(conn: Connection, thread_id: str, name: str, *, rearm: bool = False) -> None:
    """Make sure the timer has a job queued to fire it (at its due time, or at once if that
    has passed); with `rearm`, schedule it again if it was cancelled or fired (the thread
    waits on it again: a run that died before its interrupt was saved, a fork)."""
    if rearm:
        conn.execute(REARM_SQL, (thread_id, name))
    for row in conn.execute(UNARMED_SQL, {"thread_id": thread_id, "name": name, "limit": 1}).fetchall():
        conn.execute(SET_JOB_SQL, (jobs.defer_timer(conn, thread_id, name, row["due_at"]), thread_id, name))


def arm_all(conn: Connection, limit: int = 500) -> int:
    """Queue a job for every scheduled timer due within a minute that has none (the
    worker's sweep); returns how many."""
    rows = conn.execute(UNARMED_SQL, {"thread_id": None, "name": None, "limit": limit}).fetchall()
    for row in rows:
        conn.execute(SET_JOB_SQL, (jobs.defer_timer(conn, row["thread_id"], row["name"], row["due_at"]),
                                   row["thread_id"], row["name"]))
    return len(rows)


def mark_fired(conn: Connection, thread_id: str, name: str) -> None:
    conn.execute(FIRED_SQL, (thread_id, name))


def move(conn: Connection, thread_id: str, name: str, due_at: datetime) -> bool:
    """Move a scheduled timer, and its job, to `due_at`; False if it is not scheduled."""
    row = conn.execute(MOVE_SQL, (due_at, thread_id, name)).fetchone()
    if row is None:
        return False
    if row["job_id"] is not None:
        jobs.reschedule(conn, row["job_id"], due_at)
    return True


def open_payload(stored: Any, thread_id: str, name: str) -> Any:
    """A timer's payload as scheduled, from the stored column (decrypted with a key)."""
    return TIMER_PAYLOAD.open(stored, thread_id, name)


INHERIT_SQL = """
INSERT INTO durakit_timers (thread_id, name, due_at, payload, status, created_at, node, fired_at, before_workers)
VALUES (%(thread_id)s, %(name)s, %(due_at)s, %(payload)s, %(status)s, %(created_at)s, %(node)s, %(fired_at)s,
        %(before_workers)s)
"""


def inherit(conn: Connection, source_thread_id: str, fork_thread_id: str) -> int:
    """Give a fork its source's timers, inside the caller's transaction; the fork's
    scheduled timers get jobs of their own."""
    rows = conn.execute(
        "SELECT name, due_at, payload, status, created_at, node, fired_at, before_workers FROM durakit_timers "
        "WHERE thread_id = %s",
        (source_thread_id,),
    ).fetchall()
    for row in rows:
        payload = open_payload(row["payload"], source_thread_id, row["name"])
        sealed = Jsonb(TIMER_PAYLOAD.seal(payload, fork_thread_id, row["name"]))
        conn.execute(INHERIT_SQL, {**row, "thread_id": fork_thread_id, "payload": sealed})
        if row["status"] == "scheduled":
            job_id = jobs.defer_timer(conn, fork_thread_id, row["name"], row["due_at"])
            conn.execute(SET_JOB_SQL, (job_id, fork_thread_id, row["name"]))
    return len(rows)


def thread_timers(pool: ConnectionPool, thread_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        rows = conn.execute(THREAD_TIMERS_SQL, (thread_id,)).fetchall()
    for row in rows:
        row["payload"] = open_payload(row["payload"], thread_id, row["name"])
    return rows


def scheduled(pool: ConnectionPool, limit: int = 1000) -> list[dict[str, Any]]:
    """Timers still to fire, soonest first, with their thread's template."""
    with pool.connection() as conn:
        return conn.execute(SCHEDULED_SQL, (limit,)).fetchall()
