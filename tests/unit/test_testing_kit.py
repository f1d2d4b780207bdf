"""`durakit.testing`: templates run to their end, answered, woken and crashed, with no
PostgreSQL (DURAKIT_DATABASE_URL points at a closed port throughout)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from durakit.errors import Conflict, IdempotencyKeyReused, InvalidInput, LedgerMismatch, TransientAdapterError
from durakit.faults import POINTS
from durakit.graphs import get_template
from durakit.testing import InMemoryLedger, InMemorySandbox, run_template

CLOSED_PORT_URL = "postgresql://127.0.0.1:1/none"
README = Path(__file__).parents[2] / "README.md"
REFUND_REQUEST = {"order_id": "ORD-7", "amount": "250.00", "reason": "broken"}
APPROVED = {"await_approval": {"decision": "approve", "by": "dana"}}


@pytest.fixture(autouse=True)
def no_database(monkeypatch, tmp_path):
    """Any attempt to reach a database fails: the server URL is a closed port, and an
    embedded one would have to start in an empty home."""
    monkeypatch.setenv("DURAKIT_DATABASE_URL", CLOSED_PORT_URL)
    monkeypatch.setenv("DURAKIT_HOME", str(tmp_path / "durakit-home"))
    monkeypatch.delenv("DURAKIT_FAULT", raising=False)
    monkeypatch.delenv("DURAKIT_MODEL", raising=False)


def refund_sandbox() -> InMemorySandbox:
    sandbox = InMemorySandbox()
    sandbox.add_order("ORD-7", customer_id="c-7", customer_email="ada@example.com", amount_cents=30000)
    return sandbox


def future_slot(days: int = 5) -> str:
    slot = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) + timedelta(days=days)
    return slot.strftime("%Y-%m-%dT%H:%M:%SZ")


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return textwrap.dedent(next(block for block in blocks if "from durakit.testing import" in block))


def test_readme_example_runs_in_a_fresh_interpreter_without_a_database(tmp_path):
    check = textwrap.dedent("""
        import json, sys
        import durakit.testing
        at_import = {name: name in sys.modules for name in ("psycopg_pool", "pgserver")}
        exec(sys.stdin.read())
        print(json.dumps({"at_import": at_import, "pgserver": "pgserver" in sys.modules}))
    """)
    env = {"PATH": "/usr/bin:/bin", "DURAKIT_DATABASE_URL": CLOSED_PORT_URL, "DURAKIT_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", check], input=readme_example(), env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "at_import": {"psycopg_pool": False, "pgserver": False}, "pgserver": False,
    }
    assert not (tmp_path / "home").exists()  # no embedded database was started


# The four templates along their main paths


def test_refund_approved_is_refunded_once_and_told_to_everyone():
    sandbox = refund_sandbox()
    waiting = run_template("refund", REFUND_REQUEST, sandbox=sandbox)
    assert waiting.status == "waiting" and waiting.interrupt["question_id"] == "approval:1"
    assert waiting.interrupt["decisions"] == ["approve", "reject"] and sandbox.refunds == []

    done = waiting.answer("approve", by="dana")
    assert done.status == "completed" and done.interrupt is None
    assert done.result == {**done.result, "outcome": "refunded", "amount_cents": 25000, "approved_by": "dana"}
    assert [(e.step, e.system, e.applied) for e in done.effects] == [
        ("check_eligibility", "judgement", 0), ("request_approval", "email", 1), ("issue_refund", "billing", 1),
        ("sync_crm", "crm", 1), ("notify_customer", "email", 1), ("write_audit", "audit", 1),
    ]
    assert next(e for e in done.effects if e.step == "issue_refund").request == {"order_id": "ORD-7", "amount_cents": 25000}
    assert [(r["order_id"], r["amount_cents"]) for r in sandbox.refunds] == [("ORD-7", 25000)]
    assert [email["to"] for email in sandbox.emails] == ["refund-approvals@example.com", "ada@example.com"]
    assert [(t.name, t.status) for t in done.timers] == [("approval_deadline:1", "cancelled")]


def test_refund_rejected_refunds_nothing_and_tells_the_customer():
    sandbox = refund_sandbox()
    done = run_template("refund", REFUND_REQUEST, sandbox=sandbox,
                        answers={"approval:1": {"decision": "reject", "by": "dana", "note": "not broken"}})
    assert (done.status, done.result["outcome"]) == ("completed", "rejected")
    assert sandbox.refunds == [] and sandbox.emails[-1]["subject"] == "About your refund request"


def test_refund_nobody_approves_in_time_is_escalated_and_approved_there():
    sandbox = refund_sandbox()
    done = run_template("refund", REFUND_REQUEST, sandbox=sandbox, timers={"approval_deadline:1"},
                        answers={"approval:2": {"decision": "approve", "by": "erin"}})
    assert (done.status, done.result["outcome"], done.result["approved_by"]) == ("completed", "refunded", "erin")
    assert [email["to"] for email in sandbox.emails][:2] == ["refund-approvals@example.com",
                                                             "refund-escalations@example.com"]
    assert [(t.name, t.status) for t in done.timers] == [("approval_deadline:1", "fired"),
                                                         ("approval_deadline:2", "cancelled")]


def test_booking_is_booked_sleeps_until_its_reminder_and_sends_it():
    sandbox = InMemorySandbox()
    slot = future_slot()
    booked = run_template("booking", {"customer_id": "c-1", "customer_email": "bo@example.com", "slot": slot},
                          sandbox=sandbox)
    assert booked.status == "waiting" and booked.interrupt["timer"] == "reminder"
    assert booked.result["outcome"] == "booked" and booked.result["slot"] == slot
    assert datetime.fromisoformat(booked.interrupt["wakes_at"]) == datetime.fromisoformat(slot) - timedelta(hours=48)
    assert len(sandbox.holds) == len(sandbox.charges) == len(sandbox.emails) == 1

    done = booked.fire_timer("reminder")
    assert done.status == "completed" and "woken_at" in done.state["reminder"]
    assert [email["subject"] for email in sandbox.emails] == [f"Booked: repair-visit at {slot}",
                                                              f"Reminder: repair-visit at {slot}"]
    assert len(sandbox.charges) == 1 and all(effect.applied == 1 for effect in done.effects)


def test_cancellation_save_accepted_offer_is_applied_and_followed_up():
    sandbox = InMemorySandbox()
    sandbox.add_account("ACC-1", customer_id="c-2", customer_email="cy@example.com")
    done = run_template("cancellation-save", {"account_id": "ACC-1", "reason": "too expensive"}, sandbox=sandbox,
                        answers={"await_customer": {"decision": "accepted", "by": "customer"}}, timers={"follow_up"})
    assert done.status == "completed"
    assert done.result == {**done.result, "outcome": "saved", "account_status_at_follow_up": "active"}
    assert [(d["percent_off"], d["months"]) for d in sandbox.discounts] == [(15, 3)]
    assert [note["subject"] for note in sandbox.crm_notes] == [
        "Cancellation request for ACC-1: saved", "30-day follow-up on ACC-1"]


def test_escalation_is_ticketed_queued_and_accepted():
    sandbox = InMemorySandbox()
    request = {"conversation_id": "CONV-1", "customer_id": "c-3", "customer_email": "di@example.com",
               "subject": "Checkout broken", "message": "Our shop is down since 9am."}
    done = run_template("escalation", request, sandbox=sandbox,
                        answers={"await_agent": [{"decision": "reassign:technical", "by": "ann"},
                                                 {"decision": "accept", "by": "bob"}]})
    assert done.status == "completed"
    assert done.result == {**done.result, "outcome": "accepted", "queue": "technical", "accepted_by": "bob",
                           "assignments": 2}
    assert [a["queue"] for a in sandbox.assignments] == ["priority", "technical"]
    assert len(sandbox.tickets) == 1 and sandbox.emails[-1]["to"] == "di@example.com"


# Crash anywhere, resume, and every effect happened once

REFUND_NODES = [*get_template("refund").builder.nodes, "__start__", "__settle__"]
MAKE_NO_EFFECT = {"load_order", "await_approval", "__start__", "__settle__"}
PATHS = {
    "approved": ({"answers": APPROVED}, 2),  # emails: approval request, customer
    "escalated": ({"timers": {"approval_deadline:1"},
                   "answers": {"approval:2": {"decision": "approve", "by": "erin"}}}, 3),
}


def reaches(path: str, node: str, point: str) -> bool:
    if node == "__settle__":
        return point == "before"
    if node == "__start__":
        return point in ("before", "after_writes")  # LangGraph's input task saves writes too
    if node == "escalate_approval" and path == "approved":
        return False
    return point != "after_effect" or node not in MAKE_NO_EFFECT


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("node", REFUND_NODES)
def test_refund_crashed_anywhere_and_resumed_applies_every_effect_once(path, node, point):
    options, emails = PATHS[path]
    sandbox = refund_sandbox()
    done = run_template("refund", REFUND_REQUEST, sandbox=sandbox, crash_at=(node, point), **options)
    assert done.crashed == reaches(path, node, point)
    assert done.status == "completed" and done.result["outcome"] == "refunded", done.error
    outside = [effect for effect in done.effects if effect.system != "judgement"]
    assert [effect.applied for effect in outside] == [1] * len(outside)
    assert (len(sandbox.refunds), len(sandbox.emails), len(sandbox.crm_notes), len(sandbox.audit_records)) == (
        1, emails, 1, 1)
    if done.crashed and point == "after_effect":  # made, not recorded: made again, under the same key
        crashed = next(effect for effect in done.effects if effect.step == node)
        assert crashed.calls == 2 and crashed.received == (0 if crashed.system == "judgement" else 2)


# Answers, timers and the ledger's refusals


def test_a_wrong_answer_is_refused_with_the_templates_sentence_and_changes_nothing():
    sandbox = refund_sandbox()
    with pytest.raises(InvalidInput, match=r"^'escalate' is not an answer to this question; choose one of: "
                                           r"approve, reject\.$"):
        run_template("refund", REFUND_REQUEST, sandbox=sandbox,
                     answers={"await_approval": {"decision": "escalate", "by": "dana"}})
    waiting = run_template("refund", REFUND_REQUEST, sandbox=sandbox)
    with pytest.raises(InvalidInput, match=r"^The answer was refused: by: String should have at least 1 character\.$"):
        waiting.answer("approve", by="")
    with pytest.raises(InvalidInput, match=r"^The answer was refused: by: .*one line of visible characters"):
        waiting.answer("approve", by="da\u202ena")
    assert sandbox.refunds == []
    assert waiting.answer("approve", by="dana").status == "completed" and len(sandbox.refunds) == 1


def test_bad_input_is_refused_as_durakit_run_refuses_it():
    with pytest.raises(InvalidInput, match=r"^Invalid refund input: amount: Input should be greater than 0\.$"):
        run_template("refund", {**REFUND_REQUEST, "amount": "-1"})


def test_a_timer_the_thread_does_not_wait_on_cannot_be_fired():
    waiting = run_template("refund", REFUND_REQUEST, sandbox=refund_sandbox())
    with pytest.raises(Conflict, match="does not wait on timer 'reminder'"):
        waiting.fire_timer("reminder")
    with pytest.raises(InvalidInput, match="A crash point must be one of"):
        run_template("refund", REFUND_REQUEST, crash_at=("issue_refund", "midway"))


def test_the_ledger_replays_a_recorded_result_and_refuses_a_changed_request():
    sandbox = refund_sandbox()
    ledger = InMemoryLedger("t-1", ensure_held=lambda: None)
    request = {"order_id": "ORD-7", "amount_cents": 1000}

    def refund(key: str) -> dict:
        return sandbox.refund(**request, idempotency_key=key)

    first = ledger.apply("issue_refund", "billing", request, refund)
    assert ledger.apply("issue_refund", "billing", request, refund) == first  # recorded: not called again
    assert sandbox.requests["durakit:t-1:issue_refund"].received == 1

    sandbox.unavailable.add("email")  # a step that started and did not finish ...
    send = {"to": "ada@example.com", "subject": "Refunded", "body": "10.00"}
    with pytest.raises(TransientAdapterError):
        ledger.apply("notify", "email", send, lambda key: sandbox.send_email(**send, idempotency_key=key))
    sandbox.unavailable.clear()
    with pytest.raises(LedgerMismatch, match="first recorded with a different request"):  # ... and comes back changed
        ledger.apply("notify", "email", {**send, "body": "20.00"}, lambda key: {})
    assert sandbox.emails == [] and ledger.effects["notify"].calls == 2


def test_the_sandbox_answers_a_repeated_key_once_and_refuses_it_with_another_body():
    sandbox = refund_sandbox()
    first = sandbox.refund(order_id="ORD-7", amount_cents=1000, idempotency_key="k-1")
    assert sandbox.refund(order_id="ORD-7", amount_cents=1000, idempotency_key="k-1") == first
    with pytest.raises(IdempotencyKeyReused):
        sandbox.refund(order_id="ORD-7", amount_cents=2000, idempotency_key="k-1")
    assert (sandbox.requests["k-1"].received, sandbox.requests["k-1"].applied, len(sandbox.refunds)) == (2, 1, 1)
    assert sandbox.refund(order_id="ORD-7", amount_cents=29500, idempotency_key="k-2")["refused"] == (
        "the amount exceeds what is left to refund on the order")
