"""Regression tests for failure modes found in review: stuck threads, lost locks,
over-refunds, and bad input that used to write."""

from __future__ import annotations

import threading
from dataclasses import replace

import psycopg
import pytest
from psycopg.types.json import Jsonb

from durakit import db
from durakit.adapters.sandbox import Sandbox
from durakit.errors import InvalidInput, TransientAdapterError
from durakit.lease import LeaseLost, ThreadLocks
from durakit.runner import Runner
from tests.conftest import create_database, drop_database, side_effect_counts, unique


def refund(runner: Runner, order_id: str, amount: str, **extra: str):
    return runner.run("refund", {"order_id": order_id, "amount": amount, "reason": "arrived broken", **extra})


def count(conn, sql: str, *params) -> int:
    return conn.execute(sql, params).fetchone()["count"]


def test_a_refused_answer_writes_nothing_at_all(runner, make_order, conn):
    view = refund(runner, make_order(30000), "250.00")
    events = count(conn, "SELECT count(*) FROM durakit_events WHERE thread_id = %s", view.thread_id)
    writes = count(conn, "SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s", view.thread_id)
    with pytest.raises(InvalidInput, match="note"):
        runner.approve(view.thread_id, "approve", by="dana", note="x" * 2001)
    after = runner.status(view.thread_id)
    assert (after.status, after.attempts) == ("waiting", view.attempts)
    assert count(conn, "SELECT count(*) FROM durakit_events WHERE thread_id = %s", view.thread_id) == events
    assert count(conn, "SELECT count(*) FROM checkpoint_writes WHERE thread_id = %s", view.thread_id) == writes


def test_a_recorded_answer_the_node_refuses_is_withdrawn_on_recover(runner, make_order, conn):
    """An answer recorded by an older answer model (or by hand) must not wedge the thread."""
    view = refund(runner, make_order(30000), "250.00")
    bad_answer = {"decision": "approve", "by": "", "note": None}  # `by` must not be empty
    conn.execute(
        "INSERT INTO durakit_decisions (thread_id, interrupt_id, decision, decided_by, answer) VALUES (%s, %s, 'approve', '', %s)",
        (view.thread_id, view.interrupt["id"], Jsonb(bad_answer)),
    )
    conn.execute("UPDATE durakit_threads SET status = 'running' WHERE thread_id = %s", (view.thread_id,))

    report = runner.recover()
    recovered = next(v for v in report.resumed if v.thread_id == view.thread_id)
    assert recovered.status == "waiting"
    assert count(conn, "SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", view.thread_id) == 0
    assert runner.approve(view.thread_id, "approve", by="dana").status == "completed"


def test_recover_goes_on_past_a_thread_it_cannot_resume(runner, make_order, conn):
    broken = unique("refund-broken")
    conn.execute(
        "INSERT INTO durakit_threads (thread_id, template, status, request) VALUES (%s, 'retired-template', 'running', '{}')",
        (broken,),
    )
    order_id = make_order(30000)
    stale = unique("refund-stale")
    conn.execute(
        "INSERT INTO durakit_threads (thread_id, template, status, request) VALUES (%s, 'refund', 'running', %s)",
        (stale, Jsonb({"order_id": order_id, "amount": "10.00", "reason": "late", "ticket_id": None})),
    )
    try:
        report = runner.recover()
        assert "retired-template" in report.errors[broken]
        assert next(v for v in report.resumed if v.thread_id == stale).status == "completed"
    finally:
        conn.execute("DELETE FROM durakit_threads WHERE thread_id = %s", (broken,))


class LockKillingBilling(Sandbox):
    """Billing that, while a run is inside it, has the run's lock session terminated
    (as a server restart or an idle-session timeout would), and optionally has another
    process take the thread meanwhile."""

    def __init__(self, pool, victim: ThreadLocks, thief: ThreadLocks | None = None) -> None:
        super().__init__(pool)
        self.victim = victim
        self.thief = thief  # another process's locks, which grab the thread meanwhile

    def get_order(self, order_id: str):
        with self.pool.connection() as conn:
            # Waits (up to 5 s) until the backend has exited, and its lock with it.
            conn.execute("SELECT pg_terminate_backend(%s, 5000)", (self.victim._conn.info.backend_pid,))
        if self.thief is not None:
            assert self.thief.try_acquire(f"refund-{order_id}")
        return super().get_order(order_id)


def test_a_run_that_loses_its_lock_once_takes_it_again_and_finishes(test_database, make_order, conn):
    order_id = make_order(30000)
    with Runner.open() as runner:
        runner.adapters = replace(runner.adapters, billing=LockKillingBilling(runner.pool, runner.locks))
        view = refund(runner, order_id, "10.00")
        kinds = [event["kind"] for event in runner.history(view.thread_id).extra["events"]]
    assert view.status == "completed"
    assert kinds.count("reconnected") == 1
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_a_run_whose_thread_is_taken_over_meanwhile_stops_before_acting(test_database, make_order, conn):
    order_id = make_order(30000)
    thread_id = f"refund-{order_id}"
    other_process = ThreadLocks(test_database.url)
    with Runner.open() as runner:
        runner.adapters = replace(runner.adapters, billing=LockKillingBilling(runner.pool, runner.locks, other_process))
        with pytest.raises(LeaseLost, match="taken over"):
            refund(runner, order_id, "10.00")
    other_process.close()
    assert conn.execute("SELECT status FROM durakit_threads WHERE thread_id = %s", (thread_id,)).fetchone()["status"] == "running"
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 0
    with Runner.open() as other:
        recovered = next(v for v in other.recover().resumed if v.thread_id == thread_id)
    assert recovered.status == "completed"
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


def test_two_threads_of_one_process_cannot_both_hold_a_thread(runner):
    thread_id = unique("in-process")
    results: list[bool] = []
    barrier = threading.Barrier(2)

    def grab() -> None:
        barrier.wait()
        results.append(runner.locks.try_acquire(thread_id))

    workers = [threading.Thread(target=grab) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    runner.locks.release(thread_id)
    assert sorted(results) == [False, True]


def test_a_lock_in_another_database_does_not_hide_a_dead_run(runner, make_order, conn, admin_url):
    thread_id = unique("refund-cross-db")
    conn.execute(
        "INSERT INTO durakit_threads (thread_id, template, status, request) VALUES (%s, 'refund', 'running', %s)",
        (thread_id, Jsonb({"order_id": make_order(30000), "amount": "10.00", "reason": "late", "ticket_id": None})),
    )
    name = f"durakit_other_{unique('db').replace('-', '_')}"
    other_url = create_database(admin_url, name)
    db.upgrade(other_url)  # another durakit database on the same server
    other_locks = ThreadLocks(other_url)
    try:
        assert other_locks.try_acquire(thread_id)  # same thread id, another database
        assert runner.status(thread_id).stale is True
        assert thread_id in [v.thread_id for v in runner.recover().resumed]
    finally:
        other_locks.close()
        drop_database(admin_url, name)


def test_two_tickets_cannot_refund_more_than_the_order(runner, make_order, conn):
    order_id = make_order(30000)
    first = refund(runner, order_id, "250.00", ticket_id=unique("T"))
    second = refund(runner, order_id, "250.00", ticket_id=unique("T"))
    assert first.status == second.status == "waiting"  # each alone is refundable
    assert runner.approve(first.thread_id, "approve", by="dana").result["outcome"] == "refunded"
    late = runner.approve(second.thread_id, "approve", by="dana")
    assert late.result["outcome"] == "ineligible"
    assert late.result["reasons"] == ["the amount exceeds what is left to refund on the order"]
    refunded = conn.execute("SELECT sum(amount_cents) AS cents FROM sandbox_refunds WHERE order_id = %s", (order_id,))
    assert refunded.fetchone()["cents"] == 25000


def test_a_nul_character_is_bad_input_not_a_crash(runner, make_order):
    with pytest.raises(InvalidInput, match="NUL"):
        runner.run("refund", {"order_id": make_order(), "amount": "5.00", "reason": "a\x00b"})


def test_the_same_amount_written_differently_is_the_same_request(runner, make_order):
    order_id = make_order(30000)
    first = refund(runner, order_id, "50")
    assert refund(runner, order_id, "50.00").thread_id == first.thread_id


class FlakyBilling(Sandbox):
    """Billing whose first two refund calls time out, as a real API sometimes does."""

    def __init__(self, pool) -> None:
        super().__init__(pool)
        self.failures_left = 2

    def refund(self, **kwargs):
        if self.failures_left:
            self.failures_left -= 1
            raise TransientAdapterError("billing timed out")
        return super().refund(**kwargs)


def test_transient_failures_are_retried_and_logged(test_database, make_order, conn):
    order_id = make_order(30000)
    with Runner.open() as runner:
        runner.adapters = replace(runner.adapters, billing=FlakyBilling(runner.pool))
        view = refund(runner, order_id, "10.00")
        events = runner.history(view.thread_id).extra["events"]
    assert view.status == "completed"
    retries = [(e["node"], e["detail"]["attempt"]) for e in events if e["kind"] == "retried"]
    assert retries == [("issue_refund", 2), ("issue_refund", 3)]
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


class TimingOutBilling(Sandbox):
    """Billing whose refund query always hits a statement timeout: an OperationalError
    on a live connection, the step's own failure, not a lost database."""

    def refund(self, **kwargs):
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout")


def test_a_step_that_keeps_failing_with_a_live_database_ends_failed_not_stuck(test_database, make_order, conn):
    order_id = make_order(30000)
    with Runner.open() as runner:
        runner.adapters = replace(runner.adapters, billing=TimingOutBilling(runner.pool))
        view = refund(runner, order_id, "10.00")
        kinds = [event["kind"] for event in runner.history(view.thread_id).extra["events"]]
    assert (view.status, view.error_node) == ("failed", "issue_refund")
    assert "QueryCanceled" in view.error
    # failed, with a worker's automatic retry planned (a statement timeout is transient)
    assert kinds.count("retried") == 3 and "reconnected" not in kinds and kinds[-2:] == ["failed", "retry_planned"]
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 0
