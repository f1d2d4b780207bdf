"""One process at a time per thread: a PostgreSQL session advisory lock.

The lock lives on a connection of its own, outside the saver's pool, for as long as the
process advances the thread. If the process dies, PostgreSQL ends its session and frees
the lock at once, which is how `recover` tells a dead run from a live one. A frozen
process keeps its session and so its lock: nobody else advances its thread meanwhile.

If the lock's session ends while a run goes on (server restart, idle or proxy timeout),
the lock is gone, so the run checks it (`ensure_held`) before each node and before each
side effect, and stops with `LeaseLost` rather than act for a thread another process may
now own. Needs a direct connection or a session-pooling proxy (transaction pooling would
move the lock between clients).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from durakit import db
from durakit.checkpointers import DEAD_PEER_DETECTION
from durakit.errors import Conflict, ThreadBusy

LOCK_KEY_SQL = "hashtextextended('durakit.thread:' || %(thread_id)s, 0)"
TRY_LOCK_SQL = f"SELECT pg_try_advisory_lock({LOCK_KEY_SQL})"
UNLOCK_SQL = f"SELECT pg_advisory_unlock({LOCK_KEY_SQL})"

# True while some session of this database holds the thread's lock (pg_locks spans the
# whole server, and advisory locks of other databases must not count).
LEASE_HELD_SQL = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = ((hashtextextended('durakit.thread:' || {thread_id}, 0) >> 32) & 4294967295)
      AND l.objid::bigint = (hashtextextended('durakit.thread:' || {thread_id}, 0) & 4294967295)
)"""


class LeaseLost(Conflict):
    """This process no longer holds the thread's lock; it must stop advancing it."""


class ThreadLocks:
    """The per-thread locks held by this process, on one dedicated connection.

    Advisory locks are re-entrant within a session, so the threads of this process are
    kept apart by an in-process set as well.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._held: set[str] = set()
        self._mutex = threading.Lock()

    def try_acquire(self, thread_id: str) -> bool:
        with self._mutex:
            if thread_id in self._held:
                return False
            if not self._held:
                self._reconnect_if_broken()  # nothing held, so nothing is lost by reconnecting
            row = self._connection().execute(TRY_LOCK_SQL, {"thread_id": thread_id}).fetchone()
            if row and row[0]:
                self._held.add(thread_id)
                return True
            return False

    def ensure_held(self, thread_id: str) -> None:
        """Raise LeaseLost unless this process still holds the thread's lock."""
        with self._mutex:
            if thread_id not in self._held or self._conn is None:
                raise LeaseLost(f"This process does not hold thread {thread_id}.")
            try:
                self._conn.execute("SELECT 1")
            except psycopg.Error:
                self._held.clear()  # the session is gone, and every lock it held with it
                raise LeaseLost(
                    f"This process lost its lock on thread {thread_id} (its database session ended); "
                    "it stopped so that no other process's work is repeated."
                ) from None

    def release(self, thread_id: str) -> None:
        with self._mutex:
            if thread_id not in self._held:
                return
            self._held.discard(thread_id)
            try:
                self._conn.execute(UNLOCK_SQL, {"thread_id": thread_id})
            except psycopg.Error:
                pass  # a dead session has released its locks already

    @contextmanager
    def hold(self, thread_id: str, *, wait: float = 0.0) -> Iterator[None]:
        """Hold the thread's lock for the block, or raise ThreadBusy if it is still taken
        after `wait` seconds (at once by default)."""
        deadline = time.monotonic() + wait
        while not self.try_acquire(thread_id):
            if time.monotonic() >= deadline:
                raise ThreadBusy(
                    f"Thread {thread_id} is being advanced by another process right now; try again later."
                )
            time.sleep(0.01)
        try:
            yield
        finally:
            self.release(thread_id)

    def close(self) -> None:
        with self._mutex:
            self._held.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.url, autocommit=True, application_name="durakit-locks", **DEAD_PEER_DETECTION)
        return self._conn

    def _reconnect_if_broken(self) -> None:
        if self._conn is None or self._conn.closed:
            return
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._conn.close()
