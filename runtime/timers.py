"""Durable timers: rows saying when a thread wants to be woken (a reminder, a follow-up).

Templates record them; firing them is the worker's job (a later step). Scheduling is
idempotent per (thread, name), so a step that runs again after a crash records nothing new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

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
                {"thread_id": self.thread_id, "name": name, "due_at": due_at, "payload": Jsonb(payload)},
            ).fetchone()
        return {"name": name, "due_at": row["due_at"]}

    def cancel(self, name: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(CANCEL_SQL, (self.thread_id, name))


def thread_timers(pool: ConnectionPool, thread_id: str) -> list[dict[str, Any]]:
    with pool.connection() as conn:
        return conn.execute(THREAD_TIMERS_SQL, (thread_id,)).fetchall()
