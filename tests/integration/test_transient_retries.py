"""A cause that outlasts a node's retries (an outside system down, the model away) no longer
leaves the thread `failed` until someone notices: the workers retry it on the template's
backoff until it gets through or the limit is reached, and a template's judgement falls back
as it declares when the model stays away.

The outside system's outage is DURAKIT_SANDBOX_UNAVAILABLE in the processes that have it;
the model's is an OpenAI-compatible server on 127.0.0.1 that is stopped or answers 500.
"""

from __future__ import annotations

import json
import time

import pytest

from durakit.runner import Runner
from tests.conftest import durakit, durakit_json, side_effect_counts, unique
from tests.fake_openai import FakeOpenAI, status

CRM_DOWN = {"DURAKIT_SANDBOX_UNAVAILABLE": "crm"}
ONCE_EACH = {"refunds": 1, "crm_notes": 1, "customer_emails": 1, "approval_requests": 0, "audit_records": 1}

RETRY_DUE_SQL = "SELECT retry_at <= now() AS due FROM durakit_threads WHERE thread_id = %s"
QUEUED_RUN_SQL = "SELECT id FROM procrastinate_jobs WHERE queueing_lock = %s AND status = 'todo'"
# A burst worker stops beating once it has taken its last job, so its run, which waits out
# the node's retries, must not count as stalled after the default 5 s.
BURST = ("worker", "--burst", "--stalled-after", "60")


@pytest.fixture
def fast_retries(monkeypatch, test_database):
    """Retries due in seconds, not minutes; the processes these tests start inherit them."""
    monkeypatch.setenv("DURAKIT_REFUND_AUTO_RETRY_BASE_SECONDS", "2")
    monkeypatch.setenv("DURAKIT_REFUND_AUTO_RETRIES", "3")


def small_refund(runner: Runner) -> tuple[str, str, dict[str, str]]:
    """An order the rules refund without asking anyone: (order id, customer email, request)."""
    order_id = unique("ORD")
    email = f"{order_id.lower()}@example.com"
    runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email=email, amount_cents=30000)
    return order_id, email, {"order_id": order_id, "amount": "20.00", "reason": "arrived broken"}


def wait_until_retry_due(conn, thread_id: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not conn.execute(RETRY_DUE_SQL, (thread_id,)).fetchone()["due"]:
        assert time.monotonic() < deadline, f"the retry of {thread_id} did not fall due"
        time.sleep(0.1)


def event_kinds(runner: Runner, thread_id: str) -> list[str]:
    return [event["kind"] for event in runner.history(thread_id).extra["events"]]


def test_a_worker_managed_thread_failed_by_an_outage_is_retried_until_it_completes(runner, conn, fast_retries):
    order_id, email, request = small_refund(runner)
    code, submitted, _ = durakit_json("submit", "refund", "--input", json.dumps(request))
    assert code == 0
    thread_id = submitted["thread_id"]

    down = durakit(*BURST, env=CRM_DOWN)  # billing refunds, the CRM does not answer
    assert down.returncode == 0, down.stderr
    code, failed, _ = durakit_json("status", thread_id)
    assert failed["status"] == "failed" and failed["error_node"] == "sync_crm"
    assert failed["retry_at"] is not None and (failed["auto_retries"], failed["retry_limit"]) == (1, 3)
    assert not failed["retries_exhausted"] and failed["queued"]
    shown = durakit("status", thread_id)
    assert f"next retry at {failed['retry_at']} (automatic retry 1 of 3" in shown.stdout
    code, stats, _ = durakit_json("stats")
    assert stats["waiting_for_a_retry"] >= 1
    assert next(row for row in stats["templates"] if row["template"] == "refund")["retrying"] >= 1
    assert side_effect_counts(conn, order_id, email)["refunds"] == 1

    wait_until_retry_due(conn, thread_id)
    back = durakit("worker", "--burst")  # the CRM is back
    assert back.returncode == 0, back.stderr
    view = runner.status(thread_id)
    assert view.status == "completed" and view.result["outcome"] == "refunded"
    assert view.retry_at is None and view.auto_retries == 0
    assert side_effect_counts(conn, order_id, email) == ONCE_EACH
    kinds = event_kinds(runner, thread_id)
    assert kinds.count("retry_planned") == 1 and kinds.count("auto_retry") == 1


def test_a_thread_run_in_process_is_retried_by_a_worker_and_stays_failed_after_the_limit(
    runner, conn, fast_retries, monkeypatch
):
    monkeypatch.setenv("DURAKIT_REFUND_AUTO_RETRIES", "1")
    order_id, email, request = small_refund(runner)
    thread_id = f"refund-{order_id}"

    ran = durakit("run", "refund", "--input", json.dumps(request), env=CRM_DOWN)
    assert ran.returncode == 1
    assert "a worker retries it at" in ran.stderr and "(automatic retry 1 of 1)" in ran.stderr

    # The retry's job is lost (as in a race with the stalled-job sweep): the worker's sweep queues it again.
    conn.execute("DELETE FROM procrastinate_jobs WHERE queueing_lock = %s", (thread_id,))
    wait_until_retry_due(conn, thread_id)
    still_down = durakit(*BURST, env=CRM_DOWN)
    assert still_down.returncode == 0, still_down.stderr
    code, view, _ = durakit_json("status", thread_id)
    assert view["status"] == "failed" and view["retry_at"] is None
    assert view["retries_exhausted"] and (view["auto_retries"], view["retry_limit"]) == (1, 1)
    assert "no automatic retry left (1 of 1 made)" in durakit("status", thread_id).stdout
    assert conn.execute(QUEUED_RUN_SQL, (thread_id,)).fetchone() is None  # nothing more is queued
    assert event_kinds(runner, thread_id).count("retries_exhausted") == 1

    done = runner.resume(thread_id)  # a person, once the CRM is back
    assert done.status == "completed" and done.result["outcome"] == "refunded"
    assert side_effect_counts(conn, order_id, email) == ONCE_EACH


def test_resuming_a_thread_that_waits_for_its_retry_runs_it_now_and_the_retry_finds_nothing(
    runner, conn, monkeypatch, test_database
):
    monkeypatch.setenv("DURAKIT_REFUND_AUTO_RETRY_BASE_SECONDS", "600")
    order_id, email, request = small_refund(runner)
    monkeypatch.setenv("DURAKIT_SANDBOX_UNAVAILABLE", "crm")
    with Runner.open() as outage:
        failed = outage.run("refund", request)
    monkeypatch.delenv("DURAKIT_SANDBOX_UNAVAILABLE")
    assert failed.status == "failed" and failed.retry_at is not None

    with Runner.open() as back:
        done = back.resume(failed.thread_id)
        assert done.status == "completed"
        assert conn.execute(QUEUED_RUN_SQL, (failed.thread_id,)).fetchone() is None  # the planned retry is withdrawn
        assert back.work(failed.thread_id, "auto_retry") is None  # and had it run, it would find nothing to do
    assert side_effect_counts(conn, order_id, email) == ONCE_EACH


@pytest.fixture
def model_away(monkeypatch, test_database):
    """The environment of a model whose server is gone: every request is refused."""
    server = FakeOpenAI().start()
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    server.stop()


def test_a_refund_falls_back_to_the_rules_when_the_model_stays_away(model_away, conn):
    with Runner.open() as runner:
        order_id, email, request = small_refund(runner)
        view = runner.run("refund", request)
        assert view.status == "completed" and view.result["outcome"] == "refunded"
        events = runner.history(view.thread_id).extra["events"]
        fallback = [event for event in events if event["kind"] == "model_fallback"]
        assert [(event["node"], event["detail"]["fallback"]) for event in fallback] == [("check_eligibility", "rules")]
        assert "unavailable" in fallback[0]["detail"]["why"]
        assert "Connection" in fallback[0]["detail"]["error"]
        judged = next(e for e in runner.status(view.thread_id).effects if e["system"] == "judgement")
        assert judged["result"]["answer"]["assessed_by"] == "rules"
    assert side_effect_counts(conn, order_id, email) == ONCE_EACH


def test_an_escalation_goes_to_triage_when_the_model_keeps_failing(monkeypatch, test_database):
    with FakeOpenAI(default=status(500)) as model:
        for name, value in model.env().items():
            monkeypatch.setenv(name, value)
        with Runner.open() as runner:
            view = runner.run("escalation", {
                "conversation_id": unique("CONV"), "customer_id": unique("cust"), "customer_email": "m@example.com",
                "subject": "Login", "message": "I cannot log in.",
            })
            assert view.status == "waiting" and view.interrupt["queue"] == "triage"
            fallback = [e for e in runner.history(view.thread_id).extra["events"] if e["kind"] == "model_fallback"]
            assert [(e["node"], e["detail"]["fallback"]) for e in fallback] == [("summarize", "human")]
        assert len(model.requests) == 4  # the node's four attempts, then the fallback
