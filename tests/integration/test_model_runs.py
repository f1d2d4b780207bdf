"""Templates deciding with a model: the real ChatOpenAI client over HTTP, against an
OpenAI-compatible server these tests run on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal

import pytest

from durakit.runner import Runner
from tests.conftest import durakit, unique
from tests.fake_openai import FakeOpenAI, answer, status, text

LOW_RISK = {"risk": "low", "score": 5, "reasons": ["small amount"]}
HIGH_RISK = {"risk": "high", "score": 90, "reasons": ["pattern of abuse"]}


@pytest.fixture
def model(monkeypatch, test_database):
    """A fake model server, and the environment that selects it."""
    with FakeOpenAI() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.fixture
def model_runner(model):
    with Runner.open() as runner:
        yield runner


def small_refund(runner: Runner):
    order_id = unique("ORD")
    runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email="m@example.com", amount_cents=30000)
    return runner.run("refund", {"order_id": order_id, "amount": "20.00", "reason": "late"})


def events(runner: Runner, thread_id: str, kind: str) -> list[dict]:
    return [event for event in runner.history(thread_id).extra["events"] if event["kind"] == kind]


def test_the_models_judgement_decides(model, model_runner):
    model.script(answer(HIGH_RISK))
    view = small_refund(model_runner)  # the rules would auto-approve 20.00; the model says high risk
    assert view.status == "waiting"
    assert view.interrupt["risk"] == "high" and view.interrupt["risk_reasons"] == ["pattern of abuse"]
    assert len(model.requests) == 1
    judged = next(e for e in model_runner.status(view.thread_id).effects if e["system"] == "judgement")
    assert judged["result"]["answer"]["assessed_by"] == "model:fake-model"


def test_a_malformed_answer_falls_back_to_the_rules_and_is_logged(model, model_runner):
    model.script(text('{"risk": "low", "score": '))
    view = small_refund(model_runner)
    assert view.status == "completed" and view.result["outcome"] == "refunded"
    fallback = events(model_runner, view.thread_id, "model_fallback")
    assert [(e["node"], e["detail"]["fallback"]) for e in fallback] == [("check_eligibility", "rules")]


def test_a_rate_limit_is_retried_by_the_nodes_retry_policy(model, model_runner):
    model.script(status(429), answer(LOW_RISK))
    view = small_refund(model_runner)
    assert view.status == "completed"
    assert len(model.requests) == 2
    assert [(e["node"], e["detail"]["attempt"]) for e in events(model_runner, view.thread_id, "retried")] == [
        ("check_eligibility", 2)
    ]


def test_a_model_failing_every_time_leaves_the_refund_to_the_rules_after_the_last_attempt(model, model_runner):
    model.default = status(500)
    view = small_refund(model_runner)
    assert view.status == "completed" and view.result["outcome"] == "refunded"  # the rules' low risk
    assert len(model.requests) == 4  # the first try and three retries, then the template's fallback
    fallback = events(model_runner, view.thread_id, "model_fallback")
    assert [(e["node"], e["detail"]["fallback"]) for e in fallback] == [("check_eligibility", "rules")]
    assert "Error code: 500" in fallback[0]["detail"]["error"]


def test_a_malformed_offer_falls_back_to_the_rules(model, model_runner):
    model.script(answer({"percent_off": 150, "months": 3, "rationale": "generous"}))
    account_id = unique("ACC")
    model_runner.sandbox.add_account(account_id, customer_id=unique("cust"), customer_email="m@example.com")
    view = model_runner.run("cancellation-save", {"account_id": account_id, "reason": "too expensive"})
    assert view.interrupt["node"] == "await_customer"
    assert "15% off for 3 months" in view.interrupt["question"]  # the rules' standard offer
    assert len(events(model_runner, view.thread_id, "model_fallback")) == 1


def test_an_unusable_summary_sends_the_case_to_a_person_in_triage(model, model_runner):
    model.script(text("I'm sorry, I can't summarise that."))
    view = model_runner.run("escalation", {
        "conversation_id": unique("CONV"), "customer_id": unique("cust"), "customer_email": "m@example.com",
        "subject": "Login", "message": "I cannot log in.",
    })
    assert view.interrupt["queue"] == "triage"
    assert [e["detail"]["fallback"] for e in events(model_runner, view.thread_id, "model_fallback")] == ["human"]


def test_the_models_priority_picks_the_queue(model, model_runner):
    model.script(answer({"summary": "Customer asks about invoices.", "priority": "low"}))
    view = model_runner.run("escalation", {
        "conversation_id": unique("CONV"), "customer_id": unique("cust"), "customer_email": "m@example.com",
        "subject": "Invoices", "message": "Our site is down!",  # the rules would say urgent
    })
    assert view.interrupt["queue"] == "general"
    assert "Customer asks about invoices." in view.interrupt["question"]


def test_a_model_answer_is_not_paid_for_twice_after_a_crash(model, model_runner):
    model.script(answer(LOW_RISK))
    order_id = unique("ORD")
    model_runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email="m@example.com", amount_cents=30000)
    request = json.dumps({"order_id": order_id, "amount": "20.00", "reason": "late"})
    child = durakit("run", "refund", "--input", request, env={**os.environ, "DURAKIT_FAULT": "check_eligibility:after"})
    assert child.returncode == -signal.SIGKILL
    assert len(model.requests) == 1
    thread_id = f"refund-{order_id}"
    assert model_runner.wait_until_released(thread_id)
    done = model_runner.resume(thread_id)  # an unexpected second call would get a 400 and fail
    assert done.status == "completed" and done.result["outcome"] == "refunded"
    assert len(model.requests) == 1
