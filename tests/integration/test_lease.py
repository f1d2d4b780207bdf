"""The lease generation that fences a run's writes (`durakit.lease`), on the real database:
taking a thread moves it on, a write of the old generation is refused, and a take waits
for a write still in flight under the old one, for at most `TAKEOVER_LOCK_TIMEOUT`."""

from __future__ import annotations

import time

import psycopg
import pytest

from durakit import registry
from durakit.errors import LeaseLost
from durakit.lease import TAKEOVER_LOCK_TIMEOUT, Lease, ThreadLocks
from tests.conftest import unique


@pytest.fixture
def thread_id(runner) -> str:
    thread_id = unique("lease")
    with runner.pool.connection() as conn:
        registry.create(conn, thread_id, "refund", {}, thread_id)
    return thread_id


def epoch(conn, thread_id: str) -> int:
    return conn.execute("SELECT lease_epoch FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()[
        "lease_epoch"]


def test_taking_a_thread_moves_its_generation_on_and_the_old_one_writes_nothing(test_database, conn, thread_id):
    first, second = ThreadLocks(test_database.url), ThreadLocks(test_database.url)
    try:
        assert first.try_acquire(thread_id)
        stale = first.lease(thread_id)
        assert stale.epoch == epoch(conn, thread_id)
        first.release(thread_id)
        assert second.try_acquire(thread_id)
        assert second.lease(thread_id).epoch == stale.epoch + 1
        with psycopg.connect(test_database.url, autocommit=True) as writer:
            with pytest.raises(LeaseLost, match="taken over"), writer.transaction():
                stale.check(writer)
            with writer.transaction():
                second.lease(thread_id).check(writer)  # the new owner's writes go through
    finally:
        first.close()
        second.close()


def test_a_take_waits_for_a_write_in_flight_then_counts_the_thread_busy_and_lets_its_lock_go(
    test_database, conn, thread_id
):
    holder, taker = ThreadLocks(test_database.url), ThreadLocks(test_database.url)
    try:
        assert holder.try_acquire(thread_id)
        in_flight = holder.lease(thread_id)
        holder.close()  # its lock session ends, as when a proxy cuts it
        with psycopg.connect(test_database.url) as frozen:
            with frozen.transaction():
                in_flight.check(frozen)  # a fenced transaction of the old holder, still open
                started = time.monotonic()
                assert taker.try_acquire(thread_id) is False
                waited = time.monotonic() - started
            assert float(TAKEOVER_LOCK_TIMEOUT.rstrip("s")) - 0.5 < waited < 15
            assert epoch(conn, thread_id) == in_flight.epoch  # not moved on: the write in flight may land
        # The take that gave up also gave its session lock back: the next one succeeds.
        assert taker.try_acquire(thread_id)
        assert taker.lease(thread_id) == Lease(thread_id, in_flight.epoch + 1)
    finally:
        holder.close()
        taker.close()
