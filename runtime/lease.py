"""One process at a time per thread: a PostgreSQL session advisory lock.

The lock lives on a connection of its own, outside the saver's pool, for as long as the
process advances the thread. If the process dies, PostgreSQL ends its session and frees
the lock at once, which is how `recover` tells a dead run from a live one. A frozen
process keeps its session and so its lock: nobody else advances its thread meanwhile.
Needs a direct connection or a session-pooling proxy (transaction pooling would move
the lock to another client).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from durakit import db
from durakit.errors import ThreadBusy

LOCK_KEY_SQL = "hashtextextended('durakit.thread:' || %(thread_id)s, 0)"
TRY_LOCK_SQL = f"SELECT pg_try_advisory_lock({LOCK_KEY_SQL})"
UNLOCK_SQL = f"SELECT pg_advisory_unlock({LOCK_KEY_SQL})"

# True while some session holds the thread's lock (usable inside other queries).
LEASE_HELD_SQL = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.classid::bigint = ((hashtextextended('durakit.thread:' || {thread_id}, 0) >> 32) & 4294967295)
      AND l.objid::bigint = (hashtextextended('durakit.thread:' || {thread_id}, 0) & 4294967295)
)"""


class ThreadLocks:
    """The per-thread locks held by this process, on one dedicated connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.url, autocommit=True)
        return self._conn

    def try_acquire(self, thread_id: str) -> bool:
        row = self._connection().execute(TRY_LOCK_SQL, {"thread_id": thread_id}).fetchone()
        return bool(row and row[0])

    def release(self, thread_id: str) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.execute(UNLOCK_SQL, {"thread_id": thread_id})

    @contextmanager
    def hold(self, thread_id: str) -> Iterator[None]:
        """Hold the thread's lock for the block, or raise ThreadBusy at once."""
        if not self.try_acquire(thread_id):
            raise ThreadBusy(f"Thread {thread_id} is being advanced by another process right now; try again later.")
        try:
            yield
        finally:
            self.release(thread_id)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
