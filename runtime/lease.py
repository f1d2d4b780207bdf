"""One process at a time per thread: a PostgreSQL session advisory lock, and a fencing
token that every write of a run carries.

The lock lives on a connection of its own, outside the saver's pool, for as long as the
process advances the thread. If the process dies, PostgreSQL ends its session and frees
the lock at once, which is how `recover` tells a dead run from a live one. A frozen
process keeps its session and so its lock: nobody else advances its thread meanwhile.

A lock alone cannot stop a process that lost it without noticing: one whose lock session
ended (an idle timeout in a proxy, a firewall) while it was frozen or busy in a step would
still save that step when it wakes, over the work of the process that took the thread in
the meantime. So taking a thread also moves its lease generation on
(`durakit_threads.lease_epoch`), and every write a run makes (checkpoint, task writes,
ledger, registry, events, timers) checks, in the same statement or transaction, that the
generation is still the one it took. A stale process's writes then match nothing, and it
stops with `LeaseLost`.

The check takes a share lock on the thread's row for the length of its statement (or
transaction); the generation is moved on with an update, which waits for those. So a write
either lands before the new owner has the thread, and the new owner reads it, or it is
refused. A frozen process holding such a share lock (frozen inside a transaction) delays a
takeover by at most `TAKEOVER_LOCK_TIMEOUT`, after which the thread counts as busy.

Needs a direct connection or a session-pooling proxy (transaction pooling would move the
lock between clients).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from durakit import db
from durakit.checkpointers import DEAD_PEER_DETECTION
from durakit.errors import LeaseLost, ThreadBusy

__all__ = ["LEASE_EPOCH_KEY", "FENCE_CTE", "Lease", "LeaseLost", "ThreadLocks"]

LOCK_KEY_SQL = "hashtextextended('durakit.thread:' || %(thread_id)s, 0)"
UNLOCK_SQL = f"SELECT pg_advisory_unlock({LOCK_KEY_SQL})"

# Take the thread's lock and, if it is registered, its next lease generation: one round trip.
TAKE_SQL = f"""
WITH lock AS MATERIALIZED (SELECT pg_try_advisory_lock({LOCK_KEY_SQL}) AS taken),
bumped AS (
    UPDATE durakit_threads SET lease_epoch = lease_epoch + 1
    WHERE thread_id = %(thread_id)s AND (SELECT taken FROM lock)
    RETURNING lease_epoch
)
SELECT (SELECT taken FROM lock) AS taken, (SELECT lease_epoch FROM bumped) AS epoch
"""

# A thread registered after its lock was taken (`durakit run` of a new request) gets its
# first generation here.
CLAIM_SQL = """
UPDATE durakit_threads SET lease_epoch = lease_epoch + 1 WHERE thread_id = %(thread_id)s RETURNING lease_epoch
"""

# How long taking a thread waits for writes still in flight under the previous generation.
TAKEOVER_LOCK_TIMEOUT = "5s"

# The fence: the thread is still on the generation this run took it with. As a CTE for
# one-statement writes (`WHERE EXISTS (SELECT 1 FROM fence)`), and as the first statement
# of a transaction, locking the row as the transaction's own updates of it will.
FENCE_CTE = """fence AS MATERIALIZED (
    SELECT 1 FROM durakit_threads WHERE thread_id = %(thread_id)s AND lease_epoch = %(lease_epoch)s FOR SHARE
)"""
FENCE_TRANSACTION_SQL = """
SELECT 1 FROM durakit_threads WHERE thread_id = %(thread_id)s AND lease_epoch = %(lease_epoch)s FOR NO KEY UPDATE
"""

# In a run's LangGraph config: the saver fences its writes with it. LangGraph hands every
# configurable key to the saver and keeps those starting with "__" out of checkpoint metadata.
LEASE_EPOCH_KEY = "__durakit_lease_epoch"

# True while some session of this database holds the thread's lock (pg_locks spans the
# whole server, and advisory locks of other databases must not count).
LEASE_HELD_SQL = """EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = ((hashtextextended('durakit.thread:' || {thread_id}, 0) >> 32) & 4294967295)
      AND l.objid::bigint = (hashtextextended('durakit.thread:' || {thread_id}, 0) & 4294967295)
)"""


def lease_lost(thread_id: str) -> LeaseLost:
    return LeaseLost(
        f"Thread {thread_id} was taken over by another process while this one was cut off or frozen; "
        "this process stopped without writing, and the other carries the thread on."
    )


@dataclass(frozen=True)
class Lease:
    """A thread as this process took it: the generation its writes are fenced with."""

    thread_id: str
    epoch: int

    @property
    def params(self) -> dict[str, Any]:
        return {"thread_id": self.thread_id, "lease_epoch": self.epoch}

    def check(self, conn: psycopg.Connection) -> None:
        """Inside the caller's transaction: raise LeaseLost unless the thread is still on
        this generation, and keep it there until the transaction ends."""
        if conn.execute(FENCE_TRANSACTION_SQL, self.params).fetchone() is None:
            raise lease_lost(self.thread_id)


class ThreadLocks:
    """The per-thread locks held by this process, on one dedicated connection.

    Advisory locks are re-entrant within a session, so the threads of this process are
    kept apart by an in-process set as well. The generation each thread was taken with is
    kept until the thread is released, even if the lock's session ends: the fence, not the
    lock, decides whether a write still lands.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._held: set[str] = set()
        self._epochs: dict[str, int] = {}
        self._mutex = threading.Lock()

    def try_acquire(self, thread_id: str) -> bool:
        with self._mutex:
            if thread_id in self._held:
                return False
            if not self._held:
                self._reconnect_if_broken()  # nothing held, so nothing is lost by reconnecting
            conn = self._connection()
            try:
                row = conn.execute(TAKE_SQL, {"thread_id": thread_id}).fetchone()
            except psycopg.errors.LockNotAvailable:
                # A write of the previous holder is still in flight (a frozen process): the
                # session-level lock was taken all the same, and must be given back.
                conn.execute(UNLOCK_SQL, {"thread_id": thread_id})
                return False
            if not (row and row[0]):
                return False
            self._held.add(thread_id)
            if row[1] is not None:
                self._epochs[thread_id] = row[1]
            return True

    def claim(self, thread_id: str) -> None:
        """Give a thread this process registered while holding its lock its first generation."""
        with self._mutex:
            if thread_id not in self._held:
                raise lease_lost(thread_id)
            row = self._connection().execute(CLAIM_SQL, {"thread_id": thread_id}).fetchone()
            self._epochs[thread_id] = row[0]

    def lease(self, thread_id: str) -> Lease:
        """The lease this process took the thread with; LeaseLost if it has none."""
        epoch = self._epochs.get(thread_id)
        if epoch is None:
            raise LeaseLost(f"This process does not hold thread {thread_id}.")
        return Lease(thread_id, epoch)

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
            self._epochs.pop(thread_id, None)
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
            self._epochs.clear()
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(self.url, autocommit=True, application_name="durakit-locks", **DEAD_PEER_DETECTION)
            self._conn.execute(f"SET lock_timeout = '{TAKEOVER_LOCK_TIMEOUT}'")
        return self._conn

    def _reconnect_if_broken(self) -> None:
        if self._conn is None or self._conn.closed:
            return
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            self._conn.close()
