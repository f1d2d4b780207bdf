r"""Refund: a customer asks for money back on an order.

    load_order -> check_eligibility -> issue_refund -> sync_crm -> notify_customer -> write_audit
                                    \-> request_approval -> await_approval -/  (approve)
                                    |                         ^     \-> escalate_approval (no answer
                                    |                         \--------/  by the deadline)
                                    \-> notify_customer (ineligible, or rejected by a person,
                                                        or refused by billing at issue time)

Small, low-risk refunds are issued on their own; anything above the auto-approval limit
or with more than low risk waits for a person. An approval nobody answers within the
deadline goes to the escalations inbox (or is rejected, as configured); an escalated
one nobody answers is rejected. Every step that changes an outside system
goes through the ledger (`runtime.context.effects`), so a crash or a retry never refunds,
logs or emails twice. Deciding happens in nodes that change nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.graph import END, START
from langgraph.runtime import Runtime

from durakit.questions import answer_command
from durakit.services import Services
from durakit.state.refund import (
    ApprovalAnswer,
    RefundRequest,
    RefundSettings,
    RefundState,
    initial_state,
)
from durakit.steps import Deadline, ask_human
from durakit.template_graph import TemplateGraph
from durakit.templates import Template, money

Context = Runtime[Services[RefundSettings]]


# The steps, in the order the process runs them


def load_order(state: RefundState, runtime: Context) -> dict[str, Any]:
    return {"order": runtime.context.billing.get_order(state["order_id"])}


def check_eligibility(state: RefundState, runtime: Context) -> dict[str, Any]:
    settings = runtime.context.settings
    order = state["order"]
    reasons = []
    if order is None:
        reasons.append("the order does not exist")
    else:
        if order["status"] != "paid":
            reasons.append(f"the order is {order['status']}, not paid")
        if state["amount_cents"] > order["amount_cents"] - order["refunded_cents"]:
            reasons.append("the amount exceeds what is left to refund on the order")
        ordered_at = datetime.fromisoformat(order["ordered_at"])
        if datetime.now(UTC) - ordered_at > timedelta(days=settings.refund_window_days):
            reasons.append(f"the order is older than {settings.refund_window_days} days")
    if reasons:
        return {"eligibility": {"eligible": False, "reasons": reasons}, "route": "ineligible", "outcome": "ineligible"}

    # A model's unusable answer, or a model that stays away, falls back to the rules:
    # refunds are small, rules are safe.
    risk = runtime.context.judge(
        "check_eligibility",
        {"order": order, "amount_cents": state["amount_cents"], "reason": state["reason"]},
        lambda judgement: judgement.assess_refund_risk(order, state["amount_cents"], state["reason"]),
        if_malformed="rules",
        if_unavailable="rules",
    )
    small = state["amount_cents"] <= settings.auto_approve_limit * 100
    route = "auto_approve" if small and risk["risk"] == "low" else "needs_approval"
    return {"eligibility": {"eligible": True, "reasons": []}, "risk": risk, "route": route}


def approval_question(round_: int) -> str:
    """The id of a round's approval question, which its email names before it is asked."""
    return f"approval:{round_}"


def request_approval(state: RefundState, runtime: Context) -> dict[str, Any]:
    order, risk = state["order"], state["risk"]
    amount = money(state["amount_cents"], order["currency"])
    sent = runtime.context.send_email(
        "request_approval",
        to=runtime.context.settings.approvals_inbox,
        subject=f"Refund approval needed: {amount} on order {state['order_id']}",
        body=f"Risk {risk['risk']} ({'; '.join(risk['reasons']) or 'no flags'}). "
        f"Answer with: {answer_command(runtime.context.thread_id, approval_question(1), 'approve|reject')}",
    )
    return {"approval_request": sent}


def await_approval(state: RefundState, runtime: Context) -> dict[str, Any]:
    order, risk, settings = state["order"], state["risk"], runtime.context.settings
    round_ = state.get("approval_round", 1)
    hours = settings.approval_deadline_hours
    answer = ask_human(
        f"Refund {money(state['amount_cents'], order['currency'])} on order {state['order_id']}?",
        ["approve", "reject"],
        question_id=approval_question(round_),
        deadline=Deadline(
            f"approval_deadline:{round_}",
            datetime.now(UTC) + timedelta(hours=hours),
            settings.on_approval_deadline if round_ == 1 else "reject",
            note=f"nobody answered within {hours} hours",
        ),
        order_id=state["order_id"],
        amount_cents=state["amount_cents"],
        risk=risk["risk"],
        risk_reasons=risk["reasons"],
        customer_reason=state["reason"],
    )
    update: dict[str, Any] = {"approval": answer.model_dump()}
    if answer.decision == "reject":
        update["outcome"] = "rejected"
    return update


def escalate_approval(state: RefundState, runtime: Context) -> dict[str, Any]:
    order = state["order"]
    sent = runtime.context.send_email(
        "escalate_approval",
        to=runtime.context.settings.escalations_inbox,
        subject=f"Unanswered refund approval: {money(state['amount_cents'], order['currency'])} "
        f"on order {state['order_id']}",
        body=f"Nobody answered within {runtime.context.settings.approval_deadline_hours} hours. "
        f"Answer with: {answer_command(runtime.context.thread_id, approval_question(2), 'approve|reject')}",
    )
    return {"escalation": sent, "approval_round": 2}


def issue_refund(state: RefundState, runtime: Context) -> dict[str, Any]:
    request = {"order_id": state["order_id"], "amount_cents": state["amount_cents"]}
    refund = runtime.context.effects.apply(
        "issue_refund", "billing", request,
        lambda key: runtime.context.billing.refund(**request, idempotency_key=key),
    )
    if refund["refund_id"] is None:  # billing refused, e.g. another refund of the order came first
        return {"refund": refund, "outcome": "ineligible", "eligibility": {"eligible": False, "reasons": [refund["refused"]]}}
    return {"refund": refund, "outcome": "refunded"}


def sync_crm(state: RefundState, runtime: Context) -> dict[str, Any]:
    order = state["order"]
    request = {
        "customer_id": order["customer_id"],
        "subject": f"Refund {state['refund']['refund_id']} on order {state['order_id']}",
        "body": {
            "amount_cents": state["amount_cents"],
            "reason": state["reason"],
            "ticket_id": state.get("ticket_id"),
            "approved_by": (state.get("approval") or {}).get("by", "auto"),
        },
    }
    note = runtime.context.effects.apply(
        "sync_crm", "crm", request,
        lambda key: runtime.context.crm.log_interaction(**request, idempotency_key=key),
    )
    return {"crm_note": note}


def notify_customer(state: RefundState, runtime: Context) -> dict[str, Any]:
    order = state["order"]
    if order is None:  # nobody to write to: the order (and so the customer) is unknown
        return {"notification": {"skipped": "unknown order"}}
    amount = money(state["amount_cents"], order["currency"])
    messages = {
        "refunded": ("Your refund is on its way", f"We refunded {amount} on order {state['order_id']}."),
        "rejected": ("About your refund request", f"We could not refund {amount} on order {state['order_id']}."),
        "ineligible": (
            "About your refund request",
            f"Order {state['order_id']} cannot be refunded: {'; '.join(state['eligibility']['reasons'])}.",
        ),
    }
    subject, body = messages[state["outcome"]]
    sent = runtime.context.send_email("notify_customer", to=order["customer_email"], subject=subject, body=body)
    return {"notification": sent}


def write_audit(state: RefundState, runtime: Context) -> dict[str, Any]:
    request = {
        "subject": f"refund:{state['order_id']}",
        "record": {
            "thread_id": runtime.context.thread_id,
            "outcome": state["outcome"],
            "amount_cents": state["amount_cents"],
            "refund_id": (state.get("refund") or {}).get("refund_id"),
            "risk": (state.get("risk") or {}).get("risk"),
            "decided_by": (state.get("approval") or {}).get("by"),
            "ineligible_because": state["eligibility"]["reasons"],
        },
    }
    record = runtime.context.effects.apply(
        "write_audit", "audit", request,
        lambda key: runtime.context.audit.record(**request, idempotency_key=key),
    )
    return {"audit": record}


# Routing


def after_eligibility(state: RefundState) -> str:
    return {"auto_approve": "issue_refund", "needs_approval": "request_approval", "ineligible": "notify_customer"}[
        state["route"]
    ]


def after_approval(state: RefundState) -> str:
    return {"approve": "issue_refund", "reject": "notify_customer", "escalate": "escalate_approval"}[
        state["approval"]["decision"]
    ]


def after_refund(state: RefundState) -> str:
    return "sync_crm" if state["outcome"] == "refunded" else "notify_customer"


def summarize(state: dict[str, Any]) -> dict[str, Any]:
    """The thread's result, as `durakit status` shows it."""
    return {
        "outcome": state.get("outcome"),
        "order_id": state.get("order_id"),
        "amount_cents": state.get("amount_cents"),
        "refund_id": (state.get("refund") or {}).get("refund_id"),
        "approved_by": (state.get("approval") or {}).get("by"),
        "reasons": (state.get("eligibility") or {}).get("reasons", []),
    }


# The graph

builder = TemplateGraph(RefundState)
builder.add_node("load_order", load_order)
builder.add_node("check_eligibility", check_eligibility)
builder.add_node("request_approval", request_approval)
builder.add_node("await_approval", await_approval, asks=ApprovalAnswer)
builder.add_node("escalate_approval", escalate_approval)
builder.add_node("issue_refund", issue_refund)
builder.add_node("sync_crm", sync_crm)
builder.add_node("notify_customer", notify_customer)
builder.add_node("write_audit", write_audit)

builder.add_edge(START, "load_order")
builder.add_edge("load_order", "check_eligibility")
builder.add_conditional_edges("check_eligibility", after_eligibility, ["issue_refund", "request_approval", "notify_customer"])
builder.add_edge("request_approval", "await_approval")
builder.add_conditional_edges("await_approval", after_approval, ["issue_refund", "notify_customer", "escalate_approval"])
builder.add_edge("escalate_approval", "await_approval")
builder.add_conditional_edges("issue_refund", after_refund, ["sync_crm", "notify_customer"])
builder.add_edge("sync_crm", "notify_customer")
builder.add_edge("notify_customer", "write_audit")
builder.add_edge("write_audit", END)

TEMPLATE = Template(
    name="refund",
    description="Refund (part of) an order; above the auto-approval limit or with risk, a person approves.",
    request_model=RefundRequest,
    settings_model=RefundSettings,
    builder=builder,
    initial_state=initial_state,
    summarize=summarize,
)
