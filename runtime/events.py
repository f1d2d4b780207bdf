"""The event log: an append-only record of what happened to each thread, for audit and
metrics. Kinds: run_started, resumed, recovered, reconnected, node_finished, retried,
model_fallback, interrupted, decided, decision_refused, answer_refused, failed, completed,
forked (on a fork), forked_to (on its source), pruned, timer_fired, woken (the run a fired
timer started), timer_cancelled (a timer whose thread had moved on), handed_back (a
stopping worker queued the rest of a run), retry_planned and retries_exhausted (after a
transient failure), auto_retry (the run a worker started to retry it).

With DURAKIT_ENCRYPTION_KEY set, an event's detail (which can quote a note, an error or a
model's answer) is stored encrypted, bound to its thread, kind and node; the kind and the
node stay in clear."""

from __future__ import annotations

from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit.encryption import EVENT_DETAIL
from durakit.lease import FENCE_CTE, Lease, lease_lost
from durakit.sqltext import utc_text

INSERT_SQL = "INSERT INTO durakit_events (thread_id, kind, node, detail) VALUES (%s, %s, %s, %s)"
# An event a run records on its own, outside a transaction of the registry: fenced by
# the run's lease (`durakit.lease`).
FENCED_INSERT_SQL = f"""
WITH {FENCE_CTE}
INSERT INTO durakit_events (thread_id, kind, node, detail)
SELECT %(thread_id)s, %(kind)s, %(node)s, %(detail)s WHERE EXISTS (SELECT 1 FROM fence)
"""
THREAD_EVENTS_SQL = f"""
SELECT id, {utc_text('at', millis=True)} AS at, kind, node, detail
FROM durakit_events WHERE thread_id = %s ORDER BY id
"""


def _stored(thread_id: str, kind: str, node: str | None, detail: dict[str, Any]) -> Jsonb:
    return Jsonb(EVENT_DETAIL.seal(detail, thread_id, kind, node))  # no detail stays {} in clear


def insert(conn: Connection, thread_id: str, kind: str, node: str | None = None, **detail: Any) -> None:
    """Record an event on `conn`, inside the caller's transaction: an event that says what
    a registry change did commits with that change or not at all."""
    conn.execute(INSERT_SQL, (thread_id, kind, node, _stored(thread_id, kind, node, detail)))


class EventLog:
    """The event log; with a `lease`, a run's own: its events of that thread are fenced."""

    def __init__(self, pool: ConnectionPool, lease: Lease | None = None) -> None:
        self.pool = pool
        self.lease = lease

    def record(self, thread_id: str, kind: str, node: str | None = None, **detail: Any) -> None:
        with self.pool.connection() as conn:
            if self.lease is None or self.lease.thread_id != thread_id:
                insert(conn, thread_id, kind, node, **detail)
                return
            params = {**self.lease.params, "kind": kind, "node": node,
                      "detail": _stored(thread_id, kind, node, detail)}
            if not conn.execute(FENCED_INSERT_SQL, params).rowcount:
                raise lease_lost(thread_id)

    def for_thread(self, thread_id: str) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(THREAD_EVENTS_SQL, (thread_id,)).fetchall()
        for row in rows:
            row["detail"] = EVENT_DETAIL.open(row["detail"], thread_id, row["kind"], row["node"])
        return rows
