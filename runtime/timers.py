"""Durable timers: rows saying when a thread wants to be woken (a reminder, a follow-up).

Templates record them; firing them is the worker's job (a later step). Scheduling is
idempotent per (thread, name), so a step that runs again after a crash records nothing new.
With DURAKIT_ENCRYPTION_KEY set, a timer's payload (it can name a customer's email) is stored
encrypted, bound to its (thread, name); whoever fires timers reads it with `open_payload`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit.encryption import open_json, seal_json

# Returns the timer as stored: a step that runs again keeps the first due time.
SCHEDULE_SQL = """
WITH inserted AS (
    INSERT INTO durakit_timers (thread_id, name, due_at, payload) VALUES (%(thread_id)s, %(name)s, %(due_at)s, %(payload)s)
    ON CONFLICT (thread_id, name) DO NOTHING
    RETURNING due_at
)
SELECT to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS due_at FROM inserted
UNION ALL
SELECT to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') FROM durakit_timers
WHERE thread_id = %(thread_id)s AND name = %(name)s
LIMIT 1
"""
CANCEL_SQL = "UPDATE durakit_timers SET status = 'cancelled' WHERE thread_id = %s AND name = %s AND status = 'scheduled'"
THREAD_TIMERS_SQL = """
SELECT name, to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS due_at, status, payload
FROM durakit_timers WHERE thread_id = %s ORDER BY due_at, name
"""


class Timers:
    """The timers of one thread, handed to its nodes through the run's context."""

    def __init__(self, pool: ConnectionPool, thread_id: str) -> None:
        self.pool = pool
        self.thread_id = thread_id

    def schedule(self, name: str, due_at: datetime, **payload: Any) -> dict[str, Any]:
        """Record the timer once; returns it as stored (name and due_at, ISO 8601 UTC)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                SCHEDULE_SQL,
                {"thread_id": self.thread_id, "name": name, "due_at": due_at,
                 "payload": Jsonb(seal_json(payload, "durakit_timers.payload", self.thread_id, name))},
            ).fetchone()
        return {"name": name, "due_at": row["due_at"]}

    def cancel(self, name: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(CANCEL_SQL, (self.thread_id, name))


def open_payload(stored: Any, thread_id: str, name: str) -> Any:
    """A timer's payload as scheduled, from the stored column (decrypted with a key)."""
    return open_json(stored, "durakit_timers.payload", thread_id, name)


INHERIT_SQL = """
INSERT INTO durakit_timers (thread_id, name, due_at, payload, status, created_at)
VALUES (%(thread_id)s, %(name)s, %(due_at)s, %(payload)s, %(status)s, %(created_at)s)
"""


def inherit(conn: Connection, source_thread_id: str, fork_thread_id: str) -> int:
    """Give a fork its source's timers, inside the caller's transaction."""
    rows = conn.execute(
        "SELECT name, due_at, payload, status, created_at FROM durakit_timers WHERE thread_id = %s",
        (source_thread_id,),
    ).fetchall()
    for row in rows:
        payload = open_payload(row["payload"], source_thread_id, row["name"])
        sealed = Jsonb(seal_json(payload, "durakit_timers.payload", fork_thread_id, row["name"]))
        conn.execute(INHERIT_SQL, {**row, "thread_id": fork_thread_id, "payload": sealed})
    return len(rows)


def thread_timers(pool: ConnectionPool, thread_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        rows = conn.execute(THREAD_TIMERS_SQL, (thread_id,)).fetchall()
    for row in rows:
        row["payload"] = open_payload(row["payload"], thread_id, row["name"])
    return rows
