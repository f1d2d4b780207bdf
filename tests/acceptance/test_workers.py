"""Workers with real processes: `durakit submit` queues, `durakit worker` runs, a killed
worker's job is taken over, a stopped worker hands its runs back, and timers (reminders,
follow-ups, answer deadlines) fire once, at their time, across worker restarts.

Workers are real child processes (`python -m durakit worker`), stopped with SIGTERM or
killed with SIGKILL. Time is controlled by moving timers (`Runner.move_timer`), never by
waiting it out; every wait polls the database with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from durakit import jobs, registry
from durakit.errors import Conflict, NotFound
from durakit.runner import Runner
from durakit.stats import figures
from durakit.views import ThreadView
from tests.conftest import CHILD_TIMEOUT_SECONDS, durakit_json, side_effect_counts
from tests.fake_openai import FakeOpenAI, answer, status
from tests.scenarios import (
    booking_setup,
    cancellation_setup,
    escalation_setup,
    refund_setup,
)

KILLED = -signal.SIGKILL
STALLED_AFTER = 2.0  # seconds of silence after which another worker takes a worker's jobs
POLL_INTERVAL = 0.2
WORKER_ARGS = ("worker", "--concurrency", "2", "--poll-interval", str(POLL_INTERVAL),
               "--stalled-after", str(STALLED_AFTER))
LOW_RISK = {"risk": "low", "score": 5, "reasons": ["small amount"]}

# `python -c RUN_ALL_AT_ONCE '[request, ...]'`: one process running refunds side by side.
RUN_ALL_AT_ONCE = """
import json, sys, threading
from durakit import Runner
with Runner.open() as runner:
    runs = [threading.Thread(target=runner.run, args=("refund", request)) for request in json.loads(sys.argv[1])]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
"""


# Child processes


@dataclass
class WorkerProcess:
    """A `durakit worker` child; its stdout and stderr go to `log`."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def owner(self) -> str:
        """The worker's `host:pid`, as it prints it first and as threads record their lease owner."""
        def first_line() -> str:
            line = self.output().partition("\n")[0]
            assert line or self.process.poll() is None, f"{self.log.name} exited {self.process.returncode} silently"
            return line

        first = wait_until(first_line, 30, f"{self.log.name} to print its first line")
        assert first.startswith("durakit worker "), self.output()
        return first.split()[2]

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, and the exit code once it has exited."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """start_worker(*extra_args, env={...}): a worker in a child process, stopped (SIGTERM,
    then SIGKILL) at the end of the test; each worker's output is printed for failures."""
    started: list[WorkerProcess] = []

    def start(*extra: str, env: dict[str, str] | None = None) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen([sys.executable, "-m", "durakit", *WORKER_ARGS, *extra],
                                       env={**os.environ, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT)
        worker = WorkerProcess(process, log)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in started:
            try:
                worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            print(f"--- {worker.log.name} (exit {worker.process.returncode}) ---\n{worker.output()}")


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "durakit", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(child: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = child.communicate(timeout=CHILD_TIMEOUT_SECONDS)
    return child.returncode, out, err


# Waiting and looking


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def thread_is(runner: Runner, thread_id: str, status: str, *, timer: str | None = None,
              node: str | None = None) -> Callable[[], ThreadView | None]:
    """A predicate: the thread is in `status` (waiting on `timer` / at `node`, if given)."""

    def check() -> ThreadView | None:
        view = runner.status(thread_id)
        if view.status != status:
            return None
        if timer is not None and (view.interrupt or {}).get("timer") != timer:
            return None
        if node is not None and (view.interrupt or {}).get("node") != node:
            return None
        return view

    return check


def count(conn, sql: str, *params: Any) -> int:
    return conn.execute(sql, params).fetchone()["count"]


def events(conn, thread_id: str, kind: str) -> list[dict[str, Any]]:
    return conn.execute("SELECT kind, node, detail FROM durakit_events WHERE thread_id = %s AND kind = %s ORDER BY id",
                        (thread_id, kind)).fetchall()


def timer_row(conn, thread_id: str, name: str) -> dict[str, Any]:
    row = conn.execute("SELECT status, due_at, fired_at, job_id FROM durakit_timers WHERE thread_id = %s AND name = %s",
                       (thread_id, name)).fetchone()
    assert row is not None, f"{thread_id} has no timer {name}"
    return row


def timer_fired(conn, thread_id: str, name: str) -> bool:
    return timer_row(conn, thread_id, name)["status"] == "fired"


def timers_fired(conn, thread_id: str, name: str) -> int:
    return count(conn, "SELECT count(*) FROM durakit_events WHERE thread_id = %s AND kind = 'timer_fired' "
                       "AND detail->>'timer' = %s", thread_id, name)


def db_now(conn, plus_seconds: float = 0.0) -> datetime:
    """The database's clock (timers are compared with it), plus some seconds."""
    return conn.execute("SELECT now() + make_interval(secs => %s) AS at", (plus_seconds,)).fetchone()["at"]


def emails(conn, *, to: str | None = None, subject_like: str = "%") -> int:
    return count(conn, "SELECT count(*) FROM sandbox_emails WHERE (%s::text IS NULL OR recipient = %s) "
                       "AND subject LIKE %s", to, to, subject_like)


def refund_request_counts(conn, thread_id: str) -> dict[str, int]:
    """How billing saw the thread's refund: requests received and applied under its key."""
    row = conn.execute(
        "SELECT received, applied FROM sandbox_requests WHERE operation = 'refund' AND idempotency_key IN "
        "(SELECT idempotency_key FROM durakit_effects WHERE thread_id = %s AND step_key = 'issue_refund')",
        (thread_id,),
    ).fetchone()
    return dict(row) if row else {"received": 0, "applied": 0}


def small_refund(runner: Runner) -> tuple[dict[str, str], str]:
    """A refund the rules approve on their own (20.00 of a 300.00 order): (request, order id)."""
    request, ids = refund_setup(runner)
    return {**request, "amount": "20.00", "reason": "late"}, ids["order"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# 1. submit, worker, approve


def test_submit_queues_a_worker_runs_it_and_approve_queues_the_answer_or_runs_it_with_wait(
    runner, conn, workers, monkeypatch
):
    """`durakit submit` only queues (nothing runs without a worker); a worker carries the
    thread to its question; `approve` queues the answer for the worker, which completes it,
    and says so (queued) even when the worker is quicker than the answering process;
    `approve --wait` runs a worker-managed thread to the end in the answering process."""
    (first, first_ids), (second, second_ids), (third, third_ids) = (refund_setup(runner) for _ in range(3))

    code, view, err = durakit_json("submit", "refund", "--input", json.dumps(first))
    assert code == 0, err
    first_id = view["thread_id"]
    assert (view["status"], view["queued"], view["worker_managed"]) == ("running", True, True), view
    assert view["stale"] is False  # queued, not abandoned
    # Nothing ran: no checkpoint, no approval request emailed.
    assert count(conn, "SELECT count(*) FROM checkpoints WHERE thread_id = %s", first_id) == 0
    assert emails(conn, subject_like=f"Refund approval needed:% order {first_ids['order']}") == 0
    second_id, third_id = runner.submit("refund", second).thread_id, runner.submit("refund", third).thread_id

    worker = workers()
    for thread_id in (first_id, second_id, third_id):
        waiting = wait_until(thread_is(runner, thread_id, "waiting", node="await_approval"), 30,
                             f"{thread_id} to wait for approval")
        assert waiting.queued is False and waiting.lease_owner == worker.owner()

    code, answered, err = durakit_json("approve", first_id, "--decision", "approve", "--by", "dana")
    assert code == 0, err
    assert answered["status"] == "running", answered  # queued for the worker, not run here

    # The same from Python, with the answering process paused for a second between queueing
    # the run and reading the thread back (as a busy machine may pause it): the worker, woken
    # at once, takes the run meanwhile.
    queued_now, read_thread = jobs.defer_advance, registry.get
    paused: list[str] = []

    def defer_advance(conn, thread_id, kind):
        paused.append(thread_id)
        return queued_now(conn, thread_id, kind)

    def get(conn, thread_id):
        if paused:
            time.sleep(1.0)  # shorter than the 2 s a worker waits for the thread's lock
            paused.clear()
        return read_thread(conn, thread_id)

    monkeypatch.setattr(jobs, "defer_advance", defer_advance)
    monkeypatch.setattr(registry, "get", get)
    answered_slowly = runner.approve(third_id, "approve", by="ivy")
    monkeypatch.undo()
    assert answered_slowly.status == "running"

    for thread_id, ids, by in ((first_id, first_ids, "dana"), (third_id, third_ids, "ivy")):
        done = wait_until(thread_is(runner, thread_id, "completed"), 30, f"the worker to complete {thread_id}")
        assert done.result["outcome"] == "refunded" and done.result["approved_by"] == by
        assert done.lease_owner == worker.owner()
        assert side_effect_counts(conn, ids["order"], ids["email"])["refunds"] == 1

    assert worker.stop() == 0
    code, view, err = durakit_json("approve", second_id, "--decision", "approve", "--by", "sam", "--wait")
    assert code == 0, err
    assert (view["status"], view["queued"], view["result"]["outcome"]) == ("completed", False, "refunded"), view
    assert view["lease_owner"] != worker.owner()
    assert side_effect_counts(conn, second_ids["order"], second_ids["email"])["refunds"] == 1
    assert count(conn, "SELECT count(*) FROM procrastinate_jobs WHERE args->>'thread_id' = %s "
                       "AND status IN ('todo', 'doing')", second_id) == 0

    # Checked last, so that everything above is proven either way: the answer's run was
    # queued, and `approve` says so.
    assert answered["queued"] is True, answered
    assert answered_slowly.queued is True, "approve reported a queued run as not queued (a worker had taken it)"


# 2. A worker killed mid-run


@pytest.mark.crash
def test_a_worker_killed_mid_run_is_taken_over_by_another_and_refunds_once(runner, conn, workers):
    """Worker A dies (SIGKILL) after billing refunded but before the ledger recorded it;
    worker B takes the job over once A's heartbeat has been silent `stalled_after` seconds
    and finishes the thread; billing applied the refund once."""
    request, order_id = small_refund(runner)
    worker_a = workers(env={"DURAKIT_FAULT": "issue_refund:after_effect"})
    thread_id = runner.submit("refund", request).thread_id
    wait_until(lambda: count(conn, "SELECT count(*) FROM procrastinate_jobs WHERE lock = %s AND status = 'doing'",
                             thread_id), 30, "worker A to take the run")
    worker_b = workers()
    wait_until(lambda: worker_a.process.poll() is not None, 30, "worker A to kill itself")
    assert worker_a.process.returncode == KILLED
    assert refund_request_counts(conn, thread_id) == {"received": 1, "applied": 1}
    assert runner.status(thread_id).status == "running"

    worker_b.owner()  # the takeover is timed from when A is dead and B is up (B may still be starting)
    since = time.monotonic()
    done = wait_until(thread_is(runner, thread_id, "completed"), STALLED_AFTER + 20, "worker B to complete the run")
    took = time.monotonic() - since
    assert took <= STALLED_AFTER + 5, f"worker B completed the thread {took:.1f} s after A died and B was up"
    assert done.result["outcome"] == "refunded" and done.lease_owner == worker_b.owner()
    assert refund_request_counts(conn, thread_id) == {"received": 2, "applied": 1}
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com") == {
        "refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 0, "audit_records": 1,
    }


@pytest.mark.crash
def test_a_thread_whose_only_worker_died_is_finished_by_recover(runner, conn, workers):
    """With no worker left to take over, a thread whose worker was SIGKILLed mid-run shows
    as stale, and recover (`durakit recover`, what the README prescribes for stale threads)
    resumes it once the dead worker's heartbeat has expired, refunding once."""
    request, order_id = small_refund(runner)
    worker = workers(env={"DURAKIT_FAULT": "issue_refund:after_effect"})
    thread_id = runner.submit("refund", request).thread_id
    wait_until(lambda: worker.process.poll() is not None, 30, "the worker to kill itself")
    assert worker.process.returncode == KILLED
    assert runner.wait_until_released(thread_id)
    wait_until(lambda: conn.execute(
        "SELECT bool_and(w.last_heartbeat < now() - make_interval(secs => %s)) AS silent FROM procrastinate_jobs j "
        "JOIN procrastinate_workers w ON w.id = j.worker_id WHERE j.lock = %s AND j.status = 'doing'",
        (registry.STALLED_AFTER_SECONDS, thread_id)).fetchone()["silent"], 15, "the dead worker's heartbeat to expire")
    stale = runner.status(thread_id)
    assert (stale.status, stale.stale, stale.queued) == ("running", True, False)

    report = runner.recover()  # what `durakit recover` runs
    resumed = {view.thread_id: view for view in report.resumed}
    assert thread_id in resumed, f"recover left the stale thread alone: {report.to_dict()}"
    assert resumed[thread_id].status == "completed"
    assert refund_request_counts(conn, thread_id) == {"received": 2, "applied": 1}
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com")["refunds"] == 1


# 3. Two workers and `durakit recover` racing for stale threads


@pytest.mark.crash
def test_two_workers_and_recover_racing_for_stale_threads_resume_each_once(runner, conn, workers):
    """Threads whose process died mid-run (running, nobody holding them, nothing queued) are
    found at the same moment by two workers' sweeps and by `durakit recover`: each thread
    is resumed by exactly one of the three, completes, and is refunded once."""
    requests = [small_refund(runner) for _ in range(2)]
    # One process runs both threads at once and SIGKILLs itself as soon as billing has
    # refunded one of them, the ledger not knowing: two stale threads, stopped at different steps.
    code, out, err = finish(subprocess.Popen(
        [sys.executable, "-c", RUN_ALL_AT_ONCE, json.dumps([request for request, _ in requests])],
        env={**os.environ, "DURAKIT_FAULT": "issue_refund:after_effect", "DURAKIT_SANDBOX_LATENCY_MS": "300"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    assert code == KILLED, (code, out, err)
    threads = {f"refund-{order_id}": order_id for _, order_id in requests}
    for thread_id in threads:
        assert runner.wait_until_released(thread_id)
        assert runner.status(thread_id).stale

    slow = {"DURAKIT_SANDBOX_LATENCY_MS": "200"}  # each resume takes a while, so the racers overlap
    recover = start_cli("recover", "--json", env=slow)
    racers = [workers(env=slow), workers(env=slow)]
    code, out, err = finish(recover)
    assert code == 0, err
    by_recover = {view["thread_id"] for view in json.loads(out)["resumed"]}
    owners = {racer.owner() for racer in racers}
    for thread_id, order_id in threads.items():
        done = wait_until(thread_is(runner, thread_id, "completed"), 40, f"{thread_id} to complete")
        assert done.result["outcome"] == "refunded"
        assert len(events(conn, thread_id, "recovered")) == 1, f"{thread_id} was resumed more than once"
        assert (done.lease_owner in owners) != (thread_id in by_recover), (thread_id, done.lease_owner, out)
        assert refund_request_counts(conn, thread_id)["applied"] == 1
        assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com") == {
            "refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 0, "audit_records": 1,
        }


# 4. SIGTERM


def test_sigterm_stops_at_a_step_boundary_and_hands_the_run_back(runner, conn, workers):
    """SIGTERM mid-run: the worker exits 0 within seconds, the run stops at a step boundary
    and is queued again ('handed_back'); a second worker completes it, each effect once."""
    request, order_id = small_refund(runner)
    first = workers(env={"DURAKIT_SANDBOX_LATENCY_MS": "300"})
    thread_id = runner.submit("refund", request).thread_id
    wait_until(lambda: events(conn, thread_id, "node_finished"), 30, "the worker to finish a node")

    stopping = time.monotonic()
    assert first.stop(timeout=10) == 0
    assert time.monotonic() - stopping < 5
    assert "durakit worker stopped." in first.output()
    view = runner.status(thread_id)
    assert (view.status, view.queued, view.stale) == ("running", True, False), view
    assert [event["detail"].get("reason") for event in events(conn, thread_id, "handed_back")] == ["worker stopping"]
    finished = {event["node"] for event in events(conn, thread_id, "node_finished")}
    assert "write_audit" not in finished, "the run was not interrupted: it finished before SIGTERM"

    second = workers()
    done = wait_until(thread_is(runner, thread_id, "completed"), 30, "the second worker to complete the run")
    assert done.result["outcome"] == "refunded" and done.lease_owner == second.owner()
    assert side_effect_counts(conn, order_id, f"{order_id.lower()}@example.com") == {
        "refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 0, "audit_records": 1,
    }
    assert count(conn, "SELECT count(*) FROM sandbox_requests WHERE idempotency_key IN "
                       "(SELECT idempotency_key FROM durakit_effects WHERE thread_id = %s) AND applied <> 1",
                 thread_id) == 0
    nodes = [event["node"] for event in events(conn, thread_id, "node_finished")]
    assert len(nodes) == len(set(nodes)), f"a finished step ran again: {nodes}"


def test_a_burst_worker_beats_on_while_its_last_job_runs(runner, conn, workers):
    """procrastinate stops its worker's heartbeat once a burst worker's queue runs dry, then
    waits for the jobs still running: the worker must beat on, or a sweep (its own, too)
    hands the job back while it runs and the thread is run a second time."""
    request, _ = refund_setup(runner)
    thread_id = runner.submit("refund", request).thread_id
    burst = workers("--burst", env={"DURAKIT_SANDBOX_LATENCY_MS": "1500"})  # a run of 3 s or more: past --stalled-after 2
    seen: list[str] = []  # the job's status, as the worker's sweeps see it
    while burst.process.poll() is None:
        row = conn.execute("SELECT status FROM procrastinate_jobs WHERE lock = %s", (thread_id,)).fetchone()
        if row and (not seen or seen[-1] != row["status"]):
            seen.append(row["status"])
        time.sleep(0.05)
    assert burst.process.returncode == 0, burst.output()
    assert "doing" in seen and "todo" not in seen[seen.index("doing"):], f"handed back while it ran: {seen}"
    view = runner.status(thread_id)
    assert (view.status, view.queued) == ("waiting", False), view
    assert [event["kind"] for event in events(conn, thread_id, "recovered")] == []


# 5. Timers across a worker restart


def test_timers_fire_once_at_their_time_across_a_worker_restart(runner, conn, workers):
    """Every kind of timer, brought to its wait by one worker and fired by the next: the
    booking reminder, the cancellation follow-up and supervisor deadline, the escalation
    reminder and both refund approval deadlines. Each fires once, not before it is due,
    and what follows it (an email, a CRM note, an offer) happens once. A deadline answered
    in time is cancelled with its job, cannot be moved, and never fires, while the same
    deadline of an unanswered thread, due at the same moment, does."""
    booking, booking_ids = booking_setup()(runner)
    follow_up, follow_up_ids = cancellation_setup()(runner)  # an offer within the limit: no supervisor
    supervised, supervised_ids = cancellation_setup(support_tickets=4)(runner)  # an offer above the limit
    escalation, escalation_ids = escalation_setup(runner)
    (refund, refund_ids), (answered, answered_ids) = refund_setup(runner), refund_setup(runner)
    ids = {name: runner.submit(name.split(":")[0], request).thread_id for name, request in (
        ("booking", booking), ("cancellation-save", follow_up), ("cancellation-save:supervised", supervised),
        ("escalation", escalation), ("refund", refund), ("refund:answered", answered))}
    booking_id, follow_up_id = ids["booking"], ids["cancellation-save"]
    supervised_id, escalation_id, refund_id = ids["cancellation-save:supervised"], ids["escalation"], ids["refund"]
    answered_id = ids["refund:answered"]

    first = workers()
    wait_until(thread_is(runner, follow_up_id, "waiting", node="await_customer"), 30, "the customer's question")
    runner.approve(follow_up_id, "declined", by="ivy")  # worker-managed: queued for the worker
    waits = {booking_id: "reminder", follow_up_id: "follow_up", supervised_id: "supervisor_deadline",
             escalation_id: "reminder:1:1", refund_id: "approval_deadline:1"}
    for thread_id, timer in [*waits.items(), (answered_id, "approval_deadline:1")]:
        wait_until(thread_is(runner, thread_id, "waiting", timer=timer), 30, f"{thread_id} to wait on {timer}")
        assert timer_row(conn, thread_id, timer)["status"] == "scheduled"
    second = workers()  # starting up (nothing is due yet) while the first one stops
    assert first.stop() == 0

    # One approval is answered in time (run here, not queued): its deadline goes, with its job.
    due = db_now(conn, 6.0)  # time enough to answer in time on a busy machine
    runner.move_timer(answered_id, "approval_deadline:1", due)
    view = runner.approve(answered_id, "approve", by="dana", wait=True)
    assert (view.status, view.result["outcome"]) == ("completed", "refunded")
    assert db_now(conn) < due, "the approval came too late to count as in time"
    cancelled = timer_row(conn, answered_id, "approval_deadline:1")
    assert cancelled["status"] == "cancelled"
    assert count(conn, "SELECT count(*) FROM procrastinate_jobs WHERE id = %s AND status <> 'cancelled'",
                 cancelled["job_id"]) == 0, "the answered deadline's job is still queued"
    with pytest.raises(NotFound):
        runner.move_timer(answered_id, "approval_deadline:1", due)
    for thread_id, timer in waits.items():
        runner.move_timer(thread_id, timer, due)
    for thread_id, timer in waits.items():
        wait_until(lambda t=thread_id, n=timer: timer_fired(conn, t, n), 30, f"{timer} of {thread_id} to fire")

    # What each firing led to
    wait_until(thread_is(runner, booking_id, "completed"), 30, "the booking to send its reminder")
    assert emails(conn, to=booking_ids["email"], subject_like="Reminder: %") == 1
    done = wait_until(thread_is(runner, follow_up_id, "completed"), 30, "the follow-up check")
    assert done.result["account_status_at_follow_up"] == "cancelled"
    assert count(conn, "SELECT count(*) FROM sandbox_crm_notes WHERE subject = %s",
                 f"30-day follow-up on {follow_up_ids['account']}") == 1
    offered = wait_until(thread_is(runner, supervised_id, "waiting", node="await_customer"), 30,
                         "the cut offer to be presented")
    assert count(conn, "SELECT count(*) FROM durakit_decisions WHERE thread_id = %s AND decided_by = 'durakit:timer' "
                       "AND decision = 'reject'", supervised_id) == 1
    assert emails(conn, to=supervised_ids["email"], subject_like="Before you go: an offer for you") == 1
    asked = conn.execute("SELECT body FROM sandbox_emails WHERE subject = %s",
                         (f"Retention offer needs approval: account {supervised_ids['account']}",)).fetchone()["body"]
    worth = [float(re.search(r"worth (\d+\.\d+)", text).group(1)) for text in (asked, offered.interrupt["question"])]
    assert worth[1] <= 50.00 < worth[0], f"the offer was not cut to the limit: {worth}"
    reminded = wait_until(thread_is(runner, escalation_id, "waiting", timer="reminder:1:2"), 30,
                          "the escalation to wait for an agent again")
    ticket = reminded.interrupt["ticket_id"]
    assert emails(conn, subject_like=f"[{ticket}] still waiting for an agent") == 1
    assert timer_row(conn, escalation_id, "reminder:1:2")["status"] == "scheduled"
    wait_until(thread_is(runner, refund_id, "waiting", timer="approval_deadline:2"), 30, "the escalated approval")
    assert emails(conn, to="refund-escalations@example.com",
                  subject_like=f"Unanswered refund approval:% on order {refund_ids['order']}") == 1

    # The escalated approval's own deadline rejects the refund.
    second_due = db_now(conn, 0.5)
    runner.move_timer(refund_id, "approval_deadline:2", second_due)
    rejected = wait_until(thread_is(runner, refund_id, "completed"), 30, "the second deadline to reject")
    assert rejected.result["outcome"] == "rejected" and rejected.result["approved_by"] == "durakit:timer"
    assert second.stop() == 0

    for thread_id, timer in [*waits.items(), (refund_id, "approval_deadline:2")]:
        row = timer_row(conn, thread_id, timer)
        assert row["status"] == "fired"
        assert row["fired_at"] >= row["due_at"], f"{timer} of {thread_id} fired before it was due"
        assert (row["fired_at"] - row["due_at"]).total_seconds() < 20, f"{timer} of {thread_id} fired late"
        assert timers_fired(conn, thread_id, timer) == 1, f"{timer} of {thread_id} fired more than once"
    assert side_effect_counts(conn, refund_ids["order"], refund_ids["email"])["refunds"] == 0
    assert timer_row(conn, answered_id, "approval_deadline:1")["status"] == "cancelled"
    assert events(conn, answered_id, "timer_fired") == []
    assert runner.status(answered_id).status == "completed"
    assert side_effect_counts(conn, answered_ids["order"], answered_ids["email"])["refunds"] == 1
    assert emails(conn, subject_like=f"Unanswered refund approval:% on order {answered_ids['order']}") == 0
    assert emails(conn, to=refund_ids["email"], subject_like="About your refund request") == 1
    assert emails(conn, to=follow_up_ids["email"]) == 2  # the offer and the cancellation, no more
    assert emails(conn, to=escalation_ids["email"]) == 0  # nobody accepted the ticket yet


# 6. Metrics and stats


def test_metrics_and_stats_report_what_the_worker_ran(runner, conn, workers):
    """A worker's /metrics counts its runs by template and outcome, times each step, counts
    retries and shows the queue and the oldest waiting approval; `durakit stats --json`
    reports completion rate per template and retry rate per node matching what ran."""
    before = figures(runner.pool)
    port = free_port()
    with FakeOpenAI(default=answer(LOW_RISK)) as model:
        model.script(status(429))  # one of the two judgements is rate-limited once, then answered
        worker = workers("--metrics-port", str(port), env=model.env())
        (small, _), (large, _) = small_refund(runner), refund_setup(runner)
        auto, waits = runner.submit("refund", small).thread_id, runner.submit("refund", large).thread_id
        wait_until(thread_is(runner, auto, "completed"), 40, "the small refund to complete")
        wait_until(thread_is(runner, waits, "waiting", node="await_approval"), 30, "the large refund's question")
    assert len(model.requests) == 3  # the 429, its retry, the other refund's judgement
    waited = conn.execute("SELECT extract(epoch FROM now() - updated_at)::float AS s FROM durakit_threads "
                          "WHERE thread_id = %s", (waits,)).fetchone()["s"]

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return None
        return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    samples = wait_until(scrape, 10, "the metrics endpoint")
    assert samples[("durakit_step_seconds_count", (("node", "issue_refund"),))] >= 1
    assert samples[("durakit_step_seconds_count", (("node", "check_eligibility"),))] >= 3  # two runs and a retry
    assert samples[("durakit_step_retries_total", (("node", "check_eligibility"),))] >= 1
    assert samples[("durakit_queue_jobs", (("state", "scheduled"),))] >= 1  # the large refund's deadline
    assert ("durakit_queue_jobs", (("state", "ready"),)) in samples
    assert samples[("durakit_oldest_waiting_approval_seconds", ())] >= waited
    assert samples[("durakit_waiting_approvals", ())] >= 1
    assert worker.process.poll() is None

    code, after, err = durakit_json("stats")
    assert code == 0, err

    def template_row(found: dict[str, Any]) -> dict[str, Any]:
        return next((row for row in found["templates"] if row["template"] == "refund"),
                    {"threads": 0, "completed": 0, "waiting": 0})

    def node_row(found: dict[str, Any], node: str) -> dict[str, Any]:
        return next((row for row in found["nodes"] if (row["template"], row["node"]) == ("refund", node)),
                    {"finished": 0, "retries": 0})

    was, now = template_row(before), template_row(after)
    assert (now["threads"] - was["threads"], now["completed"] - was["completed"],
            now["waiting"] - was["waiting"]) == (2, 1, 1)
    assert now["completion_rate"] == pytest.approx(now["completed"] / now["threads"], abs=1e-4)
    check = (node_row(after, "check_eligibility"), node_row(before, "check_eligibility"))
    assert (check[0]["finished"] - check[1]["finished"], check[0]["retries"] - check[1]["retries"]) == (2, 1)
    assert check[0]["retry_rate"] == pytest.approx(
        check[0]["retries"] / (check[0]["finished"] + check[0]["retries"]), abs=1e-4)
    assert check[0]["retry_rate"] > 0
    issued = (node_row(after, "issue_refund"), node_row(before, "issue_refund"))
    assert (issued[0]["finished"] - issued[1]["finished"], issued[0]["retries"] - issued[1]["retries"]) == (1, 0)
    assert after["waiting_for_a_person"] >= 1 and after["oldest_waiting_approval_seconds"] >= waited

    # Runs started and completed per template, as the README names them.
    def runs(event: str) -> float:
        return samples.get((f"durakit_runs_{event}_total", (("template", "refund"),)), 0)

    assert runs("started") >= 2 and runs("completed") >= 1, sorted({name for name, _ in samples})
    assert runs("failed") == 0


# 7. The CLI around workers


def test_cli_submit_refuses_bad_input_and_shows_timers_next_wake_and_sleeping_threads(runner, conn):
    """`submit` with bad JSON exits 2 with one sentence and queues nothing; `timers` lists
    a scheduled timer with its due time; `threads` shows when a sleeping thread wakes;
    `approve` on a sleeping thread exits 4 saying until when it sleeps; `pending` lists
    threads waiting for a person and not those that only sleep."""
    booking, _ = booking_setup()(runner)
    sleeping = runner.run("booking", booking)
    assert sleeping.status == "waiting" and sleeping.interrupt["timer"] == "reminder"
    asking = runner.run("refund", refund_setup(runner)[0])
    assert asking.status == "waiting" and asking.interrupt["decisions"]
    due_at = conn.execute("""SELECT to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS d
                             FROM durakit_timers WHERE thread_id = %s AND name = 'reminder'""",
                          (sleeping.thread_id,)).fetchone()["d"]
    queued = "SELECT (SELECT count(*) FROM procrastinate_jobs) + (SELECT count(*) FROM durakit_threads) AS count"
    rows_before = count(conn, queued)

    children = {
        "submit": start_cli("submit", "refund", "--input", "{bad"),
        "timers": start_cli("timers", "--json"),
        "threads": start_cli("threads", "--status", "waiting", "--json"),
        "approve": start_cli("approve", sleeping.thread_id, "--decision", "approve", "--by", "dana"),
        "pending": start_cli("pending", "--limit", "1000", "--json"),  # oldest first
    }
    done = {name: finish(child) for name, child in children.items()}

    code, out, err = done["submit"]
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("durakit: ") and len(err.strip().splitlines()) == 1 and "JSON" in err
    assert count(conn, queued) == rows_before

    code, out, err = done["timers"]
    assert code == 0, err
    listed = [t for t in json.loads(out)["timers"] if t["thread_id"] == sleeping.thread_id]
    assert [(t["name"], t["due_at"], t["template"]) for t in listed] == [("reminder", due_at, "booking")]

    code, out, err = done["threads"]
    assert code == 0, err
    found = {view["thread_id"]: view for view in json.loads(out)["threads"]}
    assert found[sleeping.thread_id]["next_wake"] == due_at
    assert found[asking.thread_id]["next_wake"] == asking.interrupt["wakes_at"]  # its approval deadline

    code, out, err = done["approve"]
    assert code == 4, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and f"sleeps until {due_at}" in err, err
    assert runner.status(sleeping.thread_id).status == "waiting"

    code, out, err = done["pending"]
    assert code == 0, err
    pending = {view["thread_id"] for view in json.loads(out)["threads"]}
    assert asking.thread_id in pending and sleeping.thread_id not in pending


def test_resume_of_a_sleeping_thread_says_it_sleeps_instead_of_sending_the_user_to_approve(runner):
    """`durakit resume` on a thread that sleeps until a timer is refused (exit 4) with a
    sentence saying until when it sleeps; it does not tell the user to answer it with
    `durakit approve`, which refuses a sleeping thread."""
    booking, _ = booking_setup()(runner)
    sleeping = runner.run("booking", booking)
    assert sleeping.status == "waiting" and sleeping.interrupt["timer"] == "reminder"
    with pytest.raises(Conflict) as refused:  # the CLI prints this sentence and exits 4
        runner.resume(sleeping.thread_id)
    assert refused.value.exit_code == 4
    assert f"sleeps until {sleeping.interrupt['wakes_at']}" in str(refused.value), str(refused.value)
    assert "durakit approve" not in str(refused.value), str(refused.value)
