"""Durable timers, deadlines and the job queue through the Python API, without a worker:
the tests fire timers in this process (`Runner.fire_timer`, what a worker's job calls)
after moving them to now (`Runner.move_timer`), instead of waiting hours or days.

Real worker processes are in tests/acceptance/test_workers.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from durakit import jobs
from durakit.errors import Conflict, NotFound
from durakit.runner import Runner
from durakit.state.refund import RefundSettings
from durakit.worker import Worker
from tests.conftest import future_slot, unique


def count(conn, sql: str, *params) -> int:
    return conn.execute(sql, params).fetchone()["count"]


def timer_row(conn, thread_id: str, name: str) -> dict:
    return conn.execute(
        "SELECT t.status, t.due_at, t.fired_at, t.job_id, j.status AS job_status, j.scheduled_at "
        "FROM durakit_timers t LEFT JOIN procrastinate_jobs j ON j.id = t.job_id "
        "WHERE t.thread_id = %s AND t.name = %s",
        (thread_id, name),
    ).fetchone()


def fire_now(runner: Runner, thread_id: str, name: str):
    runner.move_timer(thread_id, name, datetime.now(UTC))
    return runner.fire_timer(thread_id, name)


def emails_to(conn, recipient: str, subject_like: str = "%") -> int:
    return count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s AND subject LIKE %s",
                 recipient, subject_like)


def booked(runner: Runner):
    customer = unique("cust")
    slot = future_slot(days=5)
    request = {"customer_id": customer, "customer_email": f"{customer}@example.com", "service": unique("svc"),
               "slot": slot}
    return runner.run("booking", request), f"{customer}@example.com", slot


def test_a_booking_sleeps_until_its_reminder_and_a_fired_timer_sends_it_once(runner, conn):
    view, email, slot = booked(runner)
    due = datetime.fromisoformat(slot) - timedelta(hours=48)
    assert view.status == "waiting" and view.interrupt["timer"] == "reminder" and view.interrupt["decisions"] == []
    assert view.result["outcome"] == "booked"  # its business is done while it sleeps
    assert datetime.fromisoformat(view.next_wake) == due
    row = timer_row(conn, view.thread_id, "reminder")
    assert (row["status"], row["due_at"], row["job_status"], row["scheduled_at"]) == ("scheduled", due, "todo", due)
    assert view.thread_id not in [pending.thread_id for pending in runner.pending(limit=1000)]
    with pytest.raises(Conflict, match="sleeps until"):
        runner.approve(view.thread_id, "wake", by="dana")

    done = fire_now(runner, view.thread_id, "reminder")
    assert done.status == "completed" and done.result["outcome"] == "booked"
    assert emails_to(conn, email, "Reminder:%") == 1
    assert timer_row(conn, view.thread_id, "reminder")["status"] == "fired"
    assert runner.fire_timer(view.thread_id, "reminder") is None  # a second job finds nothing to do
    assert emails_to(conn, email, "Reminder:%") == 1


def waiting_refund(runner: Runner, make_order, **settings) -> str:
    order_id = make_order()
    if settings:
        runner.template_settings["refund"] = RefundSettings(**settings)
    try:
        view = runner.run("refund", {"order_id": order_id, "amount": "250.00", "reason": "broken"})
    finally:
        runner.template_settings.pop("refund", None)
    assert view.status == "waiting" and view.interrupt["timer"] == "approval_deadline:1"
    return view.thread_id


def test_an_unanswered_approval_is_escalated_then_rejected(runner, conn, make_order):
    thread_id = waiting_refund(runner, make_order)
    escalated = fire_now(runner, thread_id, "approval_deadline:1")
    assert escalated.status == "waiting" and escalated.interrupt["timer"] == "approval_deadline:2"
    assert escalated.interrupt["on_deadline"] == "reject"
    assert emails_to(conn, "refund-escalations@example.com", f"%{escalated.interrupt['order_id']}") == 1

    rejected = fire_now(runner, thread_id, "approval_deadline:2")
    assert rejected.status == "completed" and rejected.result["outcome"] == "rejected"
    assert rejected.result["refund_id"] is None
    decisions = conn.execute(
        "SELECT decision, decided_by FROM durakit_decisions WHERE thread_id = %s ORDER BY decided_at", (thread_id,)
    ).fetchall()
    assert [(d["decision"], d["decided_by"]) for d in decisions] == [("escalate", "durakit:timer"),
                                                                      ("reject", "durakit:timer")]


def test_the_refund_deadline_can_reject_at_once(runner, make_order):
    thread_id = waiting_refund(runner, make_order, on_approval_deadline="reject", approval_deadline_hours=2)
    due = datetime.fromisoformat(runner.status(thread_id).interrupt["wakes_at"])
    assert timedelta(hours=1, minutes=59) < due - datetime.now(UTC) <= timedelta(hours=2)
    runner.template_settings["refund"] = RefundSettings(on_approval_deadline="reject")
    try:
        done = fire_now(runner, thread_id, "approval_deadline:1")
    finally:
        runner.template_settings.pop("refund", None)
    assert done.result["outcome"] == "rejected"


def test_an_answer_in_time_cancels_the_deadline_and_its_job(runner, conn, make_order):
    thread_id = waiting_refund(runner, make_order)
    done = runner.approve(thread_id, "approve", by="dana")
    assert done.result["outcome"] == "refunded"
    row = timer_row(conn, thread_id, "approval_deadline:1")
    assert row["status"] == "cancelled" and row["job_status"] is None  # the queued job was deleted
    assert runner.fire_timer(thread_id, "approval_deadline:1") is None
    with pytest.raises(NotFound):
        runner.move_timer(thread_id, "approval_deadline:1", datetime.now(UTC))
    assert count(conn, "SELECT count(*) FROM durakit_events WHERE thread_id = %s AND kind = 'timer_fired'",
                 thread_id) == 0


def test_a_timer_whose_thread_moved_on_is_cancelled_not_fired(runner, conn, make_order):
    thread_id = waiting_refund(runner, make_order)
    conn.execute("INSERT INTO durakit_timers (thread_id, name, due_at) VALUES (%s, 'stray', now())", (thread_id,))
    assert runner.fire_timer(thread_id, "stray") is None
    assert timer_row(conn, thread_id, "stray")["status"] == "cancelled"
    assert runner.status(thread_id).status == "waiting"  # the approval question is untouched


def test_an_unaccepted_ticket_reminds_its_queue_until_accepted(runner, conn):
    customer = unique("cust")
    view = runner.run("escalation", {
        "conversation_id": unique("CONV"), "customer_id": customer, "customer_email": f"{customer}@example.com",
        "subject": "Checkout broken", "message": "Our shop is down since 9am. Nobody can pay.",
    })
    queue = view.interrupt["queue"]
    assigned = datetime.fromisoformat(view.interrupt["wakes_at"]) - timedelta(hours=48)
    assert abs(assigned - datetime.now(UTC)) < timedelta(minutes=1)  # 48 hours after the assignment

    again = fire_now(runner, view.thread_id, "reminder:1:1")
    assert again.status == "waiting" and again.interrupt["timer"] == "reminder:1:2"
    again = fire_now(runner, view.thread_id, "reminder:1:2")
    assert emails_to(conn, f"{queue}-queue@example.com", f"[{again.interrupt['ticket_id']}]%") == 2

    done = runner.approve(view.thread_id, "accept", by="bob")
    assert done.result["outcome"] == "accepted" and done.result["reminders"] == 2
    statuses = {t["name"]: t["status"] for t in runner.status(view.thread_id).timers}
    assert statuses == {"reminder:1:1": "fired", "reminder:1:2": "fired", "reminder:1:3": "cancelled"}


def test_an_unanswered_supervisor_cuts_the_offer_and_the_follow_up_checks_the_account(runner, conn, make_account):
    account = make_account(support_tickets=4)
    view = runner.run("cancellation-save", {"account_id": account, "reason": "too many problems"})
    assert view.interrupt["timer"] == "supervisor_deadline" and view.interrupt["on_deadline"] == "reject"
    presented = fire_now(runner, view.thread_id, "supervisor_deadline")
    assert presented.interrupt["node"] == "await_customer"
    assert "cut to the approval limit" in presented.interrupt["question"] or presented.interrupt["decisions"]

    sleeping = runner.approve(view.thread_id, "accepted", by="customer")
    assert sleeping.status == "waiting" and sleeping.interrupt["timer"] == "follow_up"
    assert sleeping.result["outcome"] == "saved"
    due = datetime.fromisoformat(sleeping.next_wake) - datetime.now(UTC)
    assert timedelta(days=29, hours=23) < due <= timedelta(days=30)

    done = fire_now(runner, view.thread_id, "follow_up")
    assert done.status == "completed" and done.result["account_status_at_follow_up"] == "active"
    assert count(conn, "SELECT count(*) FROM sandbox_crm_notes WHERE subject LIKE %s", f"30-day follow-up on {account}") == 1


def test_a_fork_takes_over_its_sources_timer_with_a_job_of_its_own(runner, conn):
    view, email, _slot = booked(runner)
    fork_id = unique("fork")
    fork = runner.fork(view.thread_id, fork_id)
    assert fork.status == "waiting" and fork.interrupt["timer"] == "reminder"
    source, copy = timer_row(conn, view.thread_id, "reminder"), timer_row(conn, fork_id, "reminder")
    assert source["status"] == "cancelled" and source["job_status"] is None
    assert copy["status"] == "scheduled" and copy["job_status"] == "todo" and copy["job_id"] != source["job_id"]
    assert runner.fire_timer(view.thread_id, "reminder") is None
    assert fire_now(runner, fork_id, "reminder").status == "completed"
    assert emails_to(conn, email, "Reminder:%") == 1


def queued_jobs(conn, thread_id: str) -> int:
    return count(conn, "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status = 'todo'", thread_id)


def test_submit_queues_one_run_and_the_same_request_reaches_the_same_thread(runner, conn, make_order):
    order_id = make_order()
    request = {"order_id": order_id, "amount": "20.00", "reason": "late"}
    view = runner.submit("refund", request)
    assert (view.status, view.queued, view.worker_managed, view.stale) == ("running", True, True, False)
    assert runner.submit("refund", request).thread_id == view.thread_id
    assert queued_jobs(conn, view.thread_id) == 1
    with pytest.raises(Conflict):
        runner.submit("refund", {**request, "amount": "21.00"})
    assert queued_jobs(conn, view.thread_id) == 1

    done = runner.work(view.thread_id, "run_started")  # what a worker's advance job does
    assert done.status == "completed" and done.result["outcome"] == "refunded"
    assert runner.work(view.thread_id, "run_started") is None


def test_an_answer_to_a_worker_managed_thread_is_queued_with_its_run(runner, conn, make_order):
    view = runner.submit("refund", {"order_id": make_order(), "amount": "250.00", "reason": "broken"})
    conn.execute("DELETE FROM procrastinate_jobs WHERE lock = %s", (view.thread_id,))  # as if a worker took it
    assert runner.work(view.thread_id, "run_started").status == "waiting"

    answered = runner.approve(view.thread_id, "approve", by="dana")
    assert (answered.status, answered.queued) == ("running", True)
    assert queued_jobs(conn, view.thread_id) == 1
    assert runner.work(view.thread_id, "resumed").result["outcome"] == "refunded"


def test_the_sweep_queues_dead_runs_and_hands_back_jobs_of_silent_workers(runner, conn, make_order):
    worker = Worker(runner, stalled_after=5)
    # A run whose process died before its first checkpoint: running, nobody holds it, no job.
    dead = runner.submit("refund", {"order_id": make_order(), "amount": "20.00", "reason": "late"})
    conn.execute("DELETE FROM procrastinate_jobs WHERE lock = %s", (dead.thread_id,))
    assert runner.status(dead.thread_id).stale
    # A job taken by a worker that stopped beating an hour ago.
    silent = conn.execute(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') RETURNING id"
    ).fetchone()["id"]
    taken = runner.submit("refund", {"order_id": make_order(), "amount": "20.00", "reason": "late"})
    conn.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE lock = %s",
                 (silent, taken.thread_id))

    handed_back, queued = worker.sweep()
    assert handed_back >= 1 and queued >= 1
    assert queued_jobs(conn, dead.thread_id) == 1 and queued_jobs(conn, taken.thread_id) == 1
    assert not runner.status(dead.thread_id).stale
    assert worker.sweep() == (0, 0)  # nothing twice
    for thread_id in (dead.thread_id, taken.thread_id):
        conn.execute("DELETE FROM procrastinate_jobs WHERE lock = %s", (thread_id,))
        assert runner.work(thread_id, "recovered").result["outcome"] == "refunded"


def test_queue_depth_counts_ready_and_scheduled_jobs(runner, conn):
    with runner.pool.connection() as c:
        before = jobs.queue_depth(c)
    view, _email, _slot = booked(runner)
    with runner.pool.connection() as c:
        after = jobs.queue_depth(c)
    assert after["scheduled"] == before["scheduled"] + 1


def test_a_timer_does_not_fire_before_its_time(runner, conn):
    view, email, _slot = booked(runner)
    assert runner.fire_timer(view.thread_id, "reminder") is None  # due in three days
    assert timer_row(conn, view.thread_id, "reminder")["status"] == "scheduled"
    assert emails_to(conn, email, "Reminder:%") == 0 and runner.status(view.thread_id).status == "waiting"


def test_a_fork_from_before_the_sleep_sleeps_again_and_fires(runner, conn):
    """The source's reminder fired long ago; a fork from before `await_reminder` waits on
    it again, so it must be scheduled again, not left fired with nobody to wake it."""
    view, email, _slot = booked(runner)
    assert fire_now(runner, view.thread_id, "reminder").status == "completed"
    before_sleep = next(c["checkpoint_id"] for c in runner.history(view.thread_id).extra["checkpoints"]
                        if "await_reminder" in c["next"])
    fork_id = unique("fork")
    runner.fork(view.thread_id, fork_id, checkpoint_id=before_sleep)
    sleeping = runner.resume(fork_id)
    assert sleeping.status == "waiting" and sleeping.next_wake is not None
    row = timer_row(conn, fork_id, "reminder")
    assert (row["status"], row["job_status"]) == ("scheduled", "todo")
    assert runner.fire_timer(fork_id, "reminder").status == "completed"  # due long ago
    assert emails_to(conn, email, "Reminder:%") == 1  # the fork's reminder step is answered from the ledger


def test_a_timer_that_falls_due_while_its_thread_runs_is_kept_and_rearmed(runner, conn):
    """A run killed after scheduling its timer but before pausing leaves the thread running:
    the timer's job must not cancel it, and the recovered run re-arms it."""
    view, email, _slot = booked(runner)
    conn.execute("UPDATE durakit_threads SET status = 'running' WHERE thread_id = %s", (view.thread_id,))
    runner.move_timer(view.thread_id, "reminder", datetime.now(UTC))
    assert runner.fire_timer(view.thread_id, "reminder") is None
    assert timer_row(conn, view.thread_id, "reminder")["status"] == "scheduled"
    conn.execute("DELETE FROM procrastinate_jobs WHERE id = %s", (timer_row(conn, view.thread_id, "reminder")["job_id"],))

    waiting = runner.work(view.thread_id, "recovered")
    assert waiting.status == "waiting" and waiting.interrupt["timer"] == "reminder"
    assert timer_row(conn, view.thread_id, "reminder")["job_status"] == "todo"  # armed again when it settled
    assert runner.fire_timer(view.thread_id, "reminder").status == "completed"
    assert emails_to(conn, email, "Reminder:%") == 1


def test_the_sweep_gives_a_due_timer_without_a_job_a_new_one(runner, conn):
    view, _email, _slot = booked(runner)
    job_id = timer_row(conn, view.thread_id, "reminder")["job_id"]
    conn.execute("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = %s", (job_id,))  # given up on
    Worker(runner).sweep()
    assert timer_row(conn, view.thread_id, "reminder")["job_id"] == job_id  # due in days: left for later
    runner.move_timer(view.thread_id, "reminder", datetime.now(UTC))
    Worker(runner).sweep()
    row = timer_row(conn, view.thread_id, "reminder")
    assert row["job_id"] != job_id and row["job_status"] == "todo" and row["scheduled_at"] <= datetime.now(UTC)
