"""Paths through the four templates, shared by the crash matrix (tests/) and the chaos
soak (bench/): how to set each one up in the sandbox, the answers people give along the
way (or a deadline they let pass), the outcome it must reach and what the outside
systems must hold at the end. Timers (a reminder, a follow-up, a deadline) are fired
early: moved to now, then fired, as a worker would at their time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durakit.graphs import TEMPLATES
from durakit.runner import Runner


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def future_slot(days: int = 5, hour: int = 10) -> str:
    """An hourly slot that is always in the future and inside the sandbox's opening hours."""
    day = datetime.now(UTC) + timedelta(days=days)
    return day.replace(hour=hour, minute=0, second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


FIRST_OFFERED = "<first offered>"  # an answer picked from the question's own decisions
LET_IT_PASS = "<nobody answers>"  # no answer: the question's deadline passes


def count(conn, sql: str, *params: Any) -> int:
    return conn.execute(sql, params).fetchone()["count"]


@dataclass(frozen=True)
class Scenario:
    template: str
    name: str
    setup: Callable[[Runner], tuple[dict[str, Any], dict[str, str]]]  # -> (request, ids for counting)
    answers: tuple[str, ...]
    outcome: str
    effects: Callable[[Any, dict[str, str]], dict[str, int]]  # what the sandbox holds
    expected: dict[str, int]
    nodes: tuple[str, ...]  # the nodes this scenario is used to crash


# refund


def refund_setup(runner: Runner) -> tuple[dict[str, Any], dict[str, str]]:
    order_id = unique("ORD")
    email = f"{order_id.lower()}@example.com"
    runner.sandbox.add_order(order_id, customer_id=unique("cust"), customer_email=email, amount_cents=30000)
    return {"order_id": order_id, "amount": "250.00", "reason": "arrived broken"}, {"order": order_id, "email": email}


def refund_effects(conn, ids: dict[str, str]) -> dict[str, int]:
    return {
        "refunds": count(conn, "SELECT count(*) FROM sandbox_refunds WHERE order_id = %s", ids["order"]),
        "crm_notes": count(conn, "SELECT count(*) FROM sandbox_crm_notes WHERE subject LIKE %s", f"% on order {ids['order']}"),
        "emails": count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s OR subject LIKE %s",
                        ids["email"], f"Refund approval needed:% order {ids['order']}"),
        "escalations": count(conn, "SELECT count(*) FROM sandbox_emails WHERE subject LIKE %s",
                             f"Unanswered refund approval:% order {ids['order']}"),
        "audit_records": count(conn, "SELECT count(*) FROM sandbox_audit_records WHERE subject = %s", f"refund:{ids['order']}"),
    }


# booking


def booking_setup(*, taken: bool = False, card: str = "pm_card_visa"):
    def setup(runner: Runner) -> tuple[dict[str, Any], dict[str, str]]:
        service, customer, slot = unique("svc"), unique("cust"), future_slot()
        if taken:
            runner.sandbox.hold_slot(resource=service, slot=slot, customer_id="someone-else", idempotency_key=unique("k"))
        request = {"customer_id": customer, "customer_email": f"{customer}@example.com", "service": service,
                   "slot": slot, "payment_method": card}
        return request, {"customer": customer, "email": f"{customer}@example.com"}

    return setup


def booking_effects(conn, ids: dict[str, str]) -> dict[str, int]:
    return {
        "held": count(conn, "SELECT count(*) FROM sandbox_holds WHERE customer_id = %s AND status = 'held'", ids["customer"]),
        "released": count(conn, "SELECT count(*) FROM sandbox_holds WHERE customer_id = %s AND status = 'released'",
                          ids["customer"]),
        "charges": count(conn, "SELECT count(*) FROM sandbox_charges WHERE customer_id = %s", ids["customer"]),
        "emails": count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s", ids["email"]),
    }


# cancellation-save


def cancellation_setup(**usage: int):
    def setup(runner: Runner) -> tuple[dict[str, Any], dict[str, str]]:
        account_id, customer = unique("ACC"), unique("cust")
        email = f"{customer}@example.com"
        runner.sandbox.add_account(account_id, customer_id=customer, customer_email=email, **usage)
        return {"account_id": account_id, "reason": "too expensive"}, {"account": account_id, "customer": customer,
                                                                        "email": email}

    return setup


def cancellation_effects(conn, ids: dict[str, str]) -> dict[str, int]:
    return {
        "discounts": count(conn, "SELECT count(*) FROM sandbox_discounts WHERE account_id = %s", ids["account"]),
        "cancelled": count(conn, "SELECT count(*) FROM sandbox_accounts WHERE account_id = %s AND status = 'cancelled'",
                           ids["account"]),
        "crm_notes": count(conn, "SELECT count(*) FROM sandbox_crm_notes WHERE customer_id = %s", ids["customer"]),
        "customer_emails": count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s", ids["email"]),
        "supervisor_emails": count(conn, "SELECT count(*) FROM sandbox_emails WHERE subject LIKE %s",
                                   f"%account {ids['account']}"),
    }


# escalation


def escalation_setup(runner: Runner) -> tuple[dict[str, Any], dict[str, str]]:
    customer = unique("cust")
    request = {"conversation_id": unique("CONV"), "customer_id": customer, "customer_email": f"{customer}@example.com",
               "subject": "Checkout broken", "message": "Our shop is down. Nobody can pay."}
    return request, {"customer": customer, "email": f"{customer}@example.com"}


def escalation_effects(conn, ids: dict[str, str]) -> dict[str, int]:
    tickets = "SELECT ticket_id FROM sandbox_tickets WHERE customer_id = %s"
    return {
        "tickets": count(conn, f"SELECT count(*) FROM ({tickets}) t", ids["customer"]),
        "assignments": count(conn, f"SELECT count(*) FROM sandbox_assignments WHERE ticket_id IN ({tickets})",
                             ids["customer"]),
        "emails": count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s", ids["email"]),
        "queue_reminders": count(
            conn, f"SELECT count(*) FROM sandbox_emails e JOIN ({tickets}) t ON e.subject = '[' || t.ticket_id || "
            "'] still waiting for an agent'", ids["customer"]),
    }


SCENARIOS = [
    Scenario("refund", "approved", refund_setup, ("approve",), "refunded", refund_effects,
             {"refunds": 1, "crm_notes": 1, "emails": 2, "escalations": 0, "audit_records": 1},
             ("load_order", "check_eligibility", "request_approval", "await_approval", "issue_refund", "sync_crm",
              "notify_customer", "write_audit")),
    Scenario("refund", "unanswered, escalated, approved", refund_setup, (LET_IT_PASS, "approve"), "refunded",
             refund_effects, {"refunds": 1, "crm_notes": 1, "emails": 2, "escalations": 1, "audit_records": 1},
             ("escalate_approval",)),
    Scenario("booking", "free slot", booking_setup(), (), "booked", booking_effects,
             {"held": 1, "released": 0, "charges": 1, "emails": 2},
             ("check_availability", "hold_slot", "take_deposit", "send_confirmation", "schedule_reminder",
              "await_reminder", "send_reminder")),
    Scenario("booking", "slot taken", booking_setup(taken=True), (FIRST_OFFERED,), "booked", booking_effects,
             {"held": 1, "released": 0, "charges": 1, "emails": 3},
             ("propose_alternatives", "await_choice")),
    Scenario("booking", "card declined", booking_setup(card="pm_card_declined"), (), "payment_failed", booking_effects,
             {"held": 0, "released": 1, "charges": 0, "emails": 1},
             ("release_hold", "notify_payment_failed")),
    Scenario("booking", "nothing suits", booking_setup(taken=True), ("none",), "no_slot", booking_effects,
             {"held": 0, "released": 0, "charges": 0, "emails": 2},
             ("notify_no_slot",)),
    Scenario("cancellation-save", "approved and saved", cancellation_setup(support_tickets=4),
             ("approve", "accepted"), "saved", cancellation_effects,
             {"discounts": 1, "cancelled": 0, "crm_notes": 2, "customer_emails": 2, "supervisor_emails": 1},
             ("fetch_account", "compute_offer", "request_supervisor_approval", "await_supervisor", "present_offer",
              "await_customer", "apply_retention", "log_outcome", "send_confirmation", "schedule_follow_up",
              "await_follow_up", "check_follow_up")),
    Scenario("cancellation-save", "declined", cancellation_setup(), ("declined",), "cancelled", cancellation_effects,
             {"discounts": 0, "cancelled": 1, "crm_notes": 2, "customer_emails": 2, "supervisor_emails": 0},
             ("cancel_subscription",)),
    Scenario("escalation", "reassigned then accepted", escalation_setup, ("reassign:technical", "accept"), "accepted",
             escalation_effects, {"tickets": 1, "assignments": 2, "emails": 1, "queue_reminders": 0},
             ("fetch_history", "summarize", "create_ticket", "assign_queue", "await_agent",
              "mark_accepted", "notify_customer")),
    Scenario("escalation", "reminded, then accepted", escalation_setup, (LET_IT_PASS, "accept"), "accepted",
             escalation_effects, {"tickets": 1, "assignments": 1, "emails": 1, "queue_reminders": 1},
             ("remind_queue",)),
]


def thread_id_for(template_name: str, request: dict[str, Any]) -> str:
    """The id `durakit run` gives a thread for this request."""
    template = TEMPLATES[template_name]
    return template.thread_id_for(template.request_model.model_validate(request))


def answer_for(answer: str, interrupt: dict[str, Any]) -> str:
    return interrupt["decisions"][0] if answer == FIRST_OFFERED else answer


def next_move(interrupt: dict[str, Any], answers: list[str]) -> tuple[str, str]:
    """What moves a waiting thread on: ("timer", NAME) when it sleeps or its question's
    deadline is to pass (the next answer is LET_IT_PASS), else ("answer", DECISION).
    Takes the answer it uses off `answers`."""
    if not interrupt.get("decisions"):
        return "timer", interrupt["timer"]
    answer = answers.pop(0)
    return ("timer", interrupt["timer"]) if answer == LET_IT_PASS else ("answer", answer_for(answer, interrupt))


def fire_early(runner: Runner, thread_id: str, timer: str):
    """Fire a timer now, in this process, as a worker would at its time."""
    runner.move_timer(thread_id, timer, datetime.now(UTC))
    return runner.fire_timer(thread_id, timer)


def drive(runner: Runner, view, answers: list[str], *, by: str = "tester"):
    """Answer a thread (or let its timers fire) in this process until it no longer waits."""
    while view.status == "waiting":
        kind, value = next_move(view.interrupt, answers)
        view = fire_early(runner, view.thread_id, value) if kind == "timer" else runner.approve(
            view.thread_id, value, by=by)
    return view
