r"""Cancellation save: a customer wants to cancel; try to keep them with an offer.

    fetch_account -> compute_offer -> present_offer -> await_customer -> apply_retention ---\
                          |  |              ^                       \-> cancel_subscription -+
                          |  \-> request_supervisor_approval -> await_supervisor            ^   |
                          \------------------- (nothing worth offering) -------------------/   v
                               log_outcome -> send_confirmation -> schedule_follow_up <--------/
                                                    check_follow_up <- await_follow_up <-/

An offer worth more than the configured limit waits for a supervisor; a rejected offer
is cut down to the limit, not dropped, and so is one no supervisor answers within the
deadline. After the outcome the thread sleeps 30 days, then checks on the account (still
with us? gone after all?) and logs what it found. A model's unusable offer falls back to the rules
engine, and so does a model that stays unavailable; the supervisor limit applies to either.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.graph import END, START
from langgraph.runtime import Runtime

from durakit.domain import Account, RetentionOffer
from durakit.judgement import offer_value
from durakit.questions import answer_command
from durakit.services import Services
from durakit.state.cancellation_save import (
    CancellationRequest,
    CancellationSettings,
    CancellationState,
    CustomerAnswer,
    SupervisorAnswer,
    initial_state,
)
from durakit.steps import Deadline, ask_human, sleep_until
from durakit.template_graph import TemplateGraph
from durakit.templates import Template, money

Context = Runtime[Services[CancellationSettings]]

# The supervisor's question, as its email names it before it is asked.
SUPERVISOR_QUESTION = "supervisor"


def describe(offer: RetentionOffer) -> str:
    return f"{offer['percent_off']}% off for {offer['months']} months (worth {money(offer['value_cents'])})"


def cap(offer: RetentionOffer, account: Account, limit_cents: int) -> RetentionOffer:
    """The same discount for fewer months (or a smaller one for one month) within the limit."""
    percent, months = offer["percent_off"], offer["months"]
    while months > 1 and offer_value(account, percent, months) > limit_cents:
        months -= 1
    monthly = account["monthly_price_cents"] * months
    if monthly and offer_value(account, percent, months) > limit_cents:
        percent = limit_cents * 100 // monthly  # the largest whole percent within the limit
    return {**offer, "percent_off": percent, "months": months, "value_cents": offer_value(account, percent, months),
            "rationale": f"{offer['rationale']} (cut to the approval limit)"}


def fetch_account(state: CancellationState, runtime: Context) -> dict[str, Any]:
    found = runtime.context.billing.get_account(state["account_id"])
    if found is None or found[0]["status"] != "active":
        return {"account": None, "outcome": "not_found"}
    account, usage = found
    return {"account": account, "usage": usage}


def compute_offer(state: CancellationState, runtime: Context) -> dict[str, Any]:
    account, usage = state["account"], state["usage"]
    offer = runtime.context.judge(
        "compute_offer",
        {"account": account, "usage": usage, "reason": state["reason"]},
        lambda judgement: judgement.retention_offer(account, usage),
        if_malformed="rules",
        if_unavailable="rules",
    )
    return {"offer": offer, "needs_approval": offer["value_cents"] > runtime.context.settings.approval_above_cents}


def request_supervisor_approval(state: CancellationState, runtime: Context) -> dict[str, Any]:
    sent = runtime.context.send_email(
        "request_supervisor_approval",
        to=runtime.context.settings.supervisors_inbox,
        subject=f"Retention offer needs approval: account {state['account_id']}",
        body=f"Offer {describe(state['offer'])} ({state['offer']['rationale']}). "
        f"Answer with: {answer_command(runtime.context.thread_id, SUPERVISOR_QUESTION, 'approve|reject')}",
    )
    return {"approval_request": sent}


def await_supervisor(state: CancellationState, runtime: Context) -> dict[str, Any]:
    hours = runtime.context.settings.supervisor_deadline_hours
    answer = ask_human(
        f"Offer {describe(state['offer'])} to keep account {state['account_id']}?",
        ["approve", "reject"],
        question_id=SUPERVISOR_QUESTION,
        deadline=Deadline(
            "supervisor_deadline", datetime.now(UTC) + timedelta(hours=hours), "reject",
            note=f"no supervisor answered within {hours} hours",
        ),
        account_id=state["account_id"],
        offer=state["offer"],
        limit_cents=runtime.context.settings.approval_above_cents,
    )
    update: dict[str, Any] = {"supervisor": answer.model_dump()}
    if answer.decision == "reject":
        update["offer"] = cap(state["offer"], state["account"], runtime.context.settings.approval_above_cents)
    return update


def present_offer(state: CancellationState, runtime: Context) -> dict[str, Any]:
    sent = runtime.context.send_email(
        "present_offer",
        to=state["account"]["customer_email"],
        subject="Before you go: an offer for you",
        body=f"We would like to keep you: {describe(state['offer'])} on your {state['account']['plan']} plan.",
    )
    return {"presentation": sent}


def await_customer(state: CancellationState, runtime: Context) -> dict[str, Any]:
    answer = ask_human(
        f"Did {state['account']['customer_email']} accept {describe(state['offer'])}?",
        ["accepted", "declined"],
        question_id="customer",
        account_id=state["account_id"],
    )
    return {"customer": answer.model_dump()}


def apply_retention(state: CancellationState, runtime: Context) -> dict[str, Any]:
    request = {"account_id": state["account_id"], "percent_off": state["offer"]["percent_off"],
               "months": state["offer"]["months"]}
    retention = runtime.context.effects.apply(
        "apply_retention", "billing", request,
        lambda key: runtime.context.billing.apply_discount(**request, idempotency_key=key),
    )
    return {"retention": retention, "outcome": "saved"}


def cancel_subscription(state: CancellationState, runtime: Context) -> dict[str, Any]:
    request = {"account_id": state["account_id"]}
    cancellation = runtime.context.effects.apply(
        "cancel_subscription", "billing", request,
        lambda key: runtime.context.billing.cancel_subscription(**request, idempotency_key=key),
    )
    return {"cancellation": cancellation, "outcome": "cancelled"}


def log_outcome(state: CancellationState, runtime: Context) -> dict[str, Any]:
    request = {
        "customer_id": state["account"]["customer_id"],
        "subject": f"Cancellation request for {state['account_id']}: {state['outcome']}",
        "body": {
            "reason": state["reason"],
            "offer": state["offer"],
            "customer": (state.get("customer") or {}).get("decision", "no offer made"),
            "supervisor": (state.get("supervisor") or {}).get("decision"),
        },
    }
    note = runtime.context.effects.apply(
        "log_outcome", "crm", request,
        lambda key: runtime.context.crm.log_interaction(**request, idempotency_key=key),
    )
    return {"crm_note": note}


def send_confirmation(state: CancellationState, runtime: Context) -> dict[str, Any]:
    if state["outcome"] == "saved":
        subject, body = "You're staying with us", f"Your discount is active: {describe(state['offer'])}."
    else:
        subject, body = "Your subscription is cancelled", f"Account {state['account_id']} is cancelled. Sorry to see you go."
    sent = runtime.context.send_email(
        "send_confirmation", to=state["account"]["customer_email"], subject=subject, body=body
    )
    return {"confirmation": sent}


def schedule_follow_up(state: CancellationState, runtime: Context) -> dict[str, Any]:
    # Decided once, here: the node that sleeps runs again when woken, 30 days on.
    due = datetime.now(UTC) + timedelta(days=runtime.context.settings.follow_up_days)
    return {"follow_up": {"due_at": due.isoformat(timespec="seconds")}}


def await_follow_up(state: CancellationState, runtime: Context) -> dict[str, Any]:
    woken = sleep_until("follow_up", datetime.fromisoformat(state["follow_up"]["due_at"]), outcome=state["outcome"])
    return {"follow_up": {**state["follow_up"], "woken_at": woken["fired_at"]}}


def check_follow_up(state: CancellationState, runtime: Context) -> dict[str, Any]:
    found = runtime.context.billing.get_account(state["account_id"])
    status = found[0]["status"] if found else "unknown"
    request = {
        "customer_id": state["account"]["customer_id"],
        "subject": f"{runtime.context.settings.follow_up_days}-day follow-up on {state['account_id']}",
        "body": {"outcome": state["outcome"], "account_status": status,
                 "kept": state["outcome"] == "saved" and status == "active"},
    }
    note = runtime.context.effects.apply(
        "check_follow_up", "crm", request,
        lambda key: runtime.context.crm.log_interaction(**request, idempotency_key=key),
    )
    return {"follow_up_check": {"account_status": status, "crm_note": note}}


# Routing


def after_fetch(state: CancellationState) -> str:
    return END if state.get("outcome") == "not_found" else "compute_offer"


def nothing_to_offer(state: CancellationState) -> bool:
    return state["offer"]["percent_off"] == 0 or state["offer"]["months"] == 0


def after_offer(state: CancellationState) -> str:
    if nothing_to_offer(state):
        return "cancel_subscription"
    return "request_supervisor_approval" if state["needs_approval"] else "present_offer"


def after_supervisor(state: CancellationState) -> str:
    return "cancel_subscription" if nothing_to_offer(state) else "present_offer"


def after_customer(state: CancellationState) -> str:
    return "apply_retention" if state["customer"]["decision"] == "accepted" else "cancel_subscription"


def summarize(state: dict[str, Any]) -> dict[str, Any]:
    offer = state.get("offer") or {}
    return {
        "outcome": state.get("outcome"),
        "account_id": state.get("account_id"),
        "offer": describe(offer) if offer else None,
        "offered_by": offer.get("offered_by"),
        "supervisor": (state.get("supervisor") or {}).get("decision"),
        "follow_up_due": (state.get("follow_up") or {}).get("due_at"),
        "account_status_at_follow_up": (state.get("follow_up_check") or {}).get("account_status"),
    }


# The graph

builder = TemplateGraph(CancellationState)
builder.add_node("fetch_account", fetch_account)
builder.add_node("compute_offer", compute_offer)
builder.add_node("request_supervisor_approval", request_supervisor_approval)
builder.add_node("await_supervisor", await_supervisor, asks=SupervisorAnswer)
builder.add_node("present_offer", present_offer)
builder.add_node("await_customer", await_customer, asks=CustomerAnswer)
builder.add_node("apply_retention", apply_retention)
builder.add_node("cancel_subscription", cancel_subscription)
builder.add_node("log_outcome", log_outcome)
builder.add_node("send_confirmation", send_confirmation)
builder.add_node("schedule_follow_up", schedule_follow_up)
builder.add_node("await_follow_up", await_follow_up, sleeps=True)
builder.add_node("check_follow_up", check_follow_up)

builder.add_edge(START, "fetch_account")
builder.add_conditional_edges("fetch_account", after_fetch, ["compute_offer", END])
builder.add_conditional_edges(
    "compute_offer", after_offer, ["request_supervisor_approval", "present_offer", "cancel_subscription"]
)
builder.add_edge("request_supervisor_approval", "await_supervisor")
builder.add_conditional_edges("await_supervisor", after_supervisor, ["present_offer", "cancel_subscription"])
builder.add_edge("present_offer", "await_customer")
builder.add_conditional_edges("await_customer", after_customer, ["apply_retention", "cancel_subscription"])
builder.add_edge("apply_retention", "log_outcome")
builder.add_edge("cancel_subscription", "log_outcome")
builder.add_edge("log_outcome", "send_confirmation")
builder.add_edge("send_confirmation", "schedule_follow_up")
builder.add_edge("schedule_follow_up", "await_follow_up")
builder.add_edge("await_follow_up", "check_follow_up")
builder.add_edge("check_follow_up", END)

TEMPLATE = Template(
    name="cancellation-save",
    description="A customer wants to cancel: make a retention offer (a supervisor approves large ones), then save or cancel.",
    request_model=CancellationRequest,
    settings_model=CancellationSettings,
    builder=builder,
    initial_state=initial_state,
    summarize=summarize,
)
