r"""Escalation: hand a conversation to a human agent, and make sure somebody takes it.

    fetch_history -> summarize -> create_ticket -> assign_queue -> await_agent <-> remind_queue (every 48 h
                                                       ^              |                 while unaccepted)
                                                       \- (reassign) -+
                                                                      v (accept)
                                                       mark_accepted -> notify_customer

The summary and priority come from judgement (rules or a model). If a model's answer is
unusable, or the model stays unavailable, the case goes to the triage queue for a person
to read, rather than being prioritised by a guess. While the ticket is unaccepted, a timer reminds its queue every
48 hours (counted from the assignment); accepting or reassigning cancels it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.graph import END, START
from langgraph.runtime import Runtime

from durakit.services import Services
from durakit.state.escalation import (
    ACCEPT,
    REASSIGN,
    REMIND,
    AgentAnswer,
    EscalationRequest,
    EscalationSettings,
    EscalationState,
    initial_state,
)
from durakit.steps import Deadline, ask_human
from durakit.template_graph import TemplateGraph
from durakit.templates import Template

Context = Runtime[Services[EscalationSettings]]


def fetch_history(state: EscalationState, runtime: Context) -> dict[str, Any]:
    history = runtime.context.crm.recent_interactions(state["customer_id"], runtime.context.settings.history_limit)
    return {"history": history}


def summarize(state: EscalationState, runtime: Context) -> dict[str, Any]:
    conversation = {
        "customer_id": state["customer_id"],
        "subject": state["subject"],
        "message": state["message"],
        "history": state["history"],
    }
    summary = runtime.context.judge(
        "summarize", conversation, lambda judgement: judgement.summarize_conversation(conversation),
        if_malformed="human", if_unavailable="human",
    )
    if summary is None:
        summary = {"summary": f"Needs triage: {state['subject']}", "priority": "normal", "summarized_by": "nobody"}
        return {"summary": summary, "needs_triage": True}
    return {"summary": summary, "needs_triage": False}


def create_ticket(state: EscalationState, runtime: Context) -> dict[str, Any]:
    request = {
        "customer_id": state["customer_id"],
        "subject": state["subject"],
        "summary": state["summary"]["summary"],
        "priority": state["summary"]["priority"],
    }
    ticket = runtime.context.effects.apply(
        "create_ticket", "ticketing", request,
        lambda key: runtime.context.ticketing.create_ticket(**request, idempotency_key=key),
    )
    settings = runtime.context.settings
    queue = settings.triage_queue if state["needs_triage"] else settings.queue_for_priority[state["summary"]["priority"]]
    return {"ticket": ticket, "queue": queue}


def assign_queue(state: EscalationState, runtime: Context) -> dict[str, Any]:
    round_ = state["round"] + 1
    request = {"ticket_id": state["ticket"]["ticket_id"], "queue": state["queue"]}
    assignment = runtime.context.effects.apply(
        f"assign_queue:{round_}", "ticketing", request,
        lambda key: runtime.context.ticketing.assign_queue(**request, idempotency_key=key),
        node="assign_queue",
    )
    first_reminder = datetime.fromisoformat(assignment["assigned_at"]) + timedelta(
        hours=runtime.context.settings.reminder_hours
    )
    return {"assignment": assignment, "round": round_, "reminders": 0, "next_reminder_at": first_reminder.isoformat()}


def await_agent(state: EscalationState, runtime: Context) -> dict[str, Any]:
    other_queues = [queue for queue in runtime.context.settings.queues if queue != state["queue"]]
    answer = ask_human(
        f"Ticket {state['ticket']['ticket_id']} ({state['summary']['priority']}) in queue {state['queue']}: "
        f"{state['summary']['summary']}",
        [ACCEPT, *(REASSIGN + queue for queue in other_queues)],
        question_id=f"agent:{state['round']}:{state.get('reminders', 0) + 1}",
        deadline=Deadline(
            f"reminder:{state['round']}:{state.get('reminders', 0) + 1}",
            next_reminder(state, runtime.context.settings.reminder_hours),
            REMIND,
            note=f"not accepted within {runtime.context.settings.reminder_hours} hours",
        ),
        ticket_id=state["ticket"]["ticket_id"],
        queue=state["queue"],
    )
    if answer.decision.startswith(REASSIGN):
        return {"agent": answer.model_dump(), "queue": answer.decision.removeprefix(REASSIGN)}
    return {"agent": answer.model_dump()}


def next_reminder(state: EscalationState, hours: int) -> datetime:
    if "next_reminder_at" in state:
        return datetime.fromisoformat(state["next_reminder_at"])
    # A ticket assigned before reminders were kept in the state (durakit < 0.2).
    return datetime.fromisoformat(state["assignment"]["assigned_at"]) + timedelta(hours=hours)


def remind_queue(state: EscalationState, runtime: Context) -> dict[str, Any]:
    reminders = state.get("reminders", 0) + 1
    hours = runtime.context.settings.reminder_hours
    ticket = state["ticket"]
    sent = runtime.context.send_email(
        f"remind_queue:{state['round']}:{reminders}",
        to=runtime.context.settings.queue_inbox.format(queue=state["queue"]),
        subject=f"[{ticket['ticket_id']}] still waiting for an agent",
        body=f"Ticket {ticket['ticket_id']} ({state['summary']['priority']}) has waited over {hours * reminders} hours "
        f"in {state['queue']}: {state['summary']['summary']}",
        node="remind_queue",
    )
    next_at = datetime.now(UTC) + timedelta(hours=hours)
    return {"reminders": reminders, "next_reminder_at": next_at.isoformat(), "last_reminder": sent}


def mark_accepted(state: EscalationState, runtime: Context) -> dict[str, Any]:
    return {"outcome": "accepted"}


def notify_customer(state: EscalationState, runtime: Context) -> dict[str, Any]:
    ticket_id = state["ticket"]["ticket_id"]
    sent = runtime.context.send_email(
        "notify_customer",
        to=state["customer_email"],
        subject=f"[{ticket_id}] {state['subject']}",
        body=f"{state['agent']['by']} is now looking after your request. Your reference: {ticket_id}.",
    )
    return {"notification": sent}


# Routing


def after_agent(state: EscalationState) -> str:
    decision = state["agent"]["decision"]
    return {ACCEPT: "mark_accepted", REMIND: "remind_queue"}.get(decision, "assign_queue")


def summarize_result(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "outcome": state.get("outcome"),
        "ticket_id": (state.get("ticket") or {}).get("ticket_id"),
        "queue": state.get("queue"),
        "priority": (state.get("summary") or {}).get("priority"),
        "summarized_by": (state.get("summary") or {}).get("summarized_by"),
        "accepted_by": (state.get("agent") or {}).get("by"),
        "assignments": state.get("round"),
        "reminders": state.get("reminders"),
    }


# The graph

builder = TemplateGraph(EscalationState)
builder.add_node("fetch_history", fetch_history)
builder.add_node("summarize", summarize)
builder.add_node("create_ticket", create_ticket)
builder.add_node("assign_queue", assign_queue)
builder.add_node("await_agent", await_agent, asks=AgentAnswer)
builder.add_node("remind_queue", remind_queue)
builder.add_node("mark_accepted", mark_accepted)
builder.add_node("notify_customer", notify_customer)

builder.add_edge(START, "fetch_history")
builder.add_edge("fetch_history", "summarize")
builder.add_edge("summarize", "create_ticket")
builder.add_edge("create_ticket", "assign_queue")
builder.add_edge("assign_queue", "await_agent")
builder.add_conditional_edges("await_agent", after_agent, ["mark_accepted", "assign_queue", "remind_queue"])
builder.add_edge("remind_queue", "await_agent")
builder.add_edge("mark_accepted", "notify_customer")
builder.add_edge("notify_customer", END)

TEMPLATE = Template(
    name="escalation",
    description="Summarise a conversation, open a ticket in the right queue, and wait until an agent accepts it.",
    request_model=EscalationRequest,
    settings_model=EscalationSettings,
    builder=builder,
    initial_state=initial_state,
    summarize=summarize_result,
)
