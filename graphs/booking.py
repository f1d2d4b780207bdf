r"""Booking: a customer asks for an appointment slot.

    check_availability -> hold_slot -> take_deposit -> send_confirmation -> schedule_reminder
            |                 |             |       await_reminder -> send_reminder <-/  (sleeps until due)
            |                 |             \-> release_hold -> notify_payment_failed   (card declined)
            |                 \-> check_availability   (taken between the check and the hold)
            \-> propose_alternatives -> await_choice -> check_availability  (slot taken: customer picks)
                                                   \-> notify_no_slot      (nothing suits, or nothing free)

Holding the slot comes before the deposit, so a paying customer always has a slot; a
declined card releases the hold again (compensation) and the thread ends as
`payment_failed`, not as a crash. A step that can run more than once in a thread (the
hold, the proposal) names each run in its ledger step key. Once booked, the thread sleeps
until the reminder is due (48 hours before the slot by default), a worker wakes it, and
it emails the reminder. A reminder that would fall due before the booking is made (a
slot sooner than the reminder's lead time) is skipped, and the thread ends at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from langgraph.graph import END, START
from langgraph.runtime import Runtime

from durakit.services import Services
from durakit.state.booking import (
    NONE_OF_THESE,
    BookingRequest,
    BookingSettings,
    BookingState,
    SlotChoice,
    initial_state,
)
from durakit.steps import ask_human, sleep_until
from durakit.template_graph import TemplateGraph
from durakit.templates import Template

Context = Runtime[Services[BookingSettings]]


def check_availability(state: BookingState, runtime: Context) -> dict[str, Any]:
    calendar = runtime.context.calendar
    if calendar.is_free(resource=state["service"], slot=state["slot"]):
        return {"slot_free": True, "alternatives": []}
    nearest = calendar.free_slots(
        resource=state["service"], around=state["requested_slot"], count=runtime.context.settings.alternatives_offered
    )
    return {"slot_free": False, "alternatives": nearest}


def hold_slot(state: BookingState, runtime: Context) -> dict[str, Any]:
    attempt = state.get("hold_attempts", 0) + 1  # a refused hold may be tried again later
    request = {"resource": state["service"], "slot": state["slot"], "customer_id": state["customer_id"]}
    hold = runtime.context.effects.apply(
        f"hold_slot:{attempt}", "calendar", request,
        lambda key: runtime.context.calendar.hold_slot(**request, idempotency_key=key),
        node="hold_slot",
    )
    return {"hold": hold, "hold_attempts": attempt}


def propose_alternatives(state: BookingState, runtime: Context) -> dict[str, Any]:
    rounds = state["rounds"] + 1
    listing = "\n".join(f"- {slot}" for slot in state["alternatives"])
    sent = runtime.context.send_email(
        f"propose_alternatives:{rounds}",
        to=state["customer_email"],
        subject=f"{state['slot']} is taken: pick another time",
        body=f"The slot you asked for is taken. These are free:\n{listing}",
        node="propose_alternatives",
    )
    return {"proposal": sent, "rounds": rounds}


def await_choice(state: BookingState, runtime: Context) -> dict[str, Any]:
    choice = ask_human(
        f"Which of these slots does {state['customer_email']} want?",
        [*state["alternatives"], NONE_OF_THESE],
        question_id=f"choice:{state['rounds']}",
        requested_slot=state["requested_slot"],
    )
    if choice.decision == NONE_OF_THESE:
        return {"choice": choice.model_dump(), "outcome": "no_slot"}
    return {"choice": choice.model_dump(), "slot": choice.decision}


def take_deposit(state: BookingState, runtime: Context) -> dict[str, Any]:
    request = {
        "customer_id": state["customer_id"],
        "amount_cents": runtime.context.settings.deposit_cents,
        "payment_method": state["payment_method"],
        "description": f"Deposit for {state['service']} at {state['slot']}",
    }
    deposit = runtime.context.effects.apply(
        "take_deposit", "billing", request,
        lambda key: runtime.context.billing.charge(**request, idempotency_key=key),
    )
    return {"deposit": deposit}


def release_hold(state: BookingState, runtime: Context) -> dict[str, Any]:
    request = {"hold_id": state["hold"]["hold_id"]}
    released = runtime.context.effects.apply(
        "release_hold", "calendar", request,
        lambda key: runtime.context.calendar.release_hold(**request, idempotency_key=key),
    )
    return {"release": released, "outcome": "payment_failed"}


def notify_payment_failed(state: BookingState, runtime: Context) -> dict[str, Any]:
    sent = runtime.context.send_email(
        "notify_payment_failed",
        to=state["customer_email"],
        subject="Your booking could not be completed",
        body=f"The deposit for {state['slot']} was declined ({state['deposit']['declined']}); the slot is free again.",
    )
    return {"confirmation": sent}


def notify_no_slot(state: BookingState, runtime: Context) -> dict[str, Any]:
    sent = runtime.context.send_email(
        "notify_no_slot",
        to=state["customer_email"],
        subject="We could not find a time for you",
        body=f"Nothing was booked for {state['service']}; reply to this email to try other dates.",
    )
    return {"confirmation": sent, "outcome": "no_slot"}


def send_confirmation(state: BookingState, runtime: Context) -> dict[str, Any]:
    sent = runtime.context.send_email(
        "send_confirmation",
        to=state["customer_email"],
        subject=f"Booked: {state['service']} at {state['slot']}",
        body=f"Your deposit {state['deposit']['charge_id']} is taken; see you at {state['slot']}.",
    )
    return {"confirmation": sent}


def schedule_reminder(state: BookingState, runtime: Context) -> dict[str, Any]:
    # Decided once, here: the node that sleeps runs again when woken, past the due time.
    hours = runtime.context.settings.reminder_hours_before
    due = datetime.fromisoformat(state["slot"]) - timedelta(hours=hours)
    if due <= datetime.now(UTC):
        return {"reminder": {"skipped": f"the slot is less than {hours} hours away"}, "outcome": "booked"}
    return {"reminder": {"due_at": due.isoformat()}, "outcome": "booked"}


def await_reminder(state: BookingState, runtime: Context) -> dict[str, Any]:
    woken = sleep_until("reminder", datetime.fromisoformat(state["reminder"]["due_at"]), slot=state["slot"])
    return {"reminder": {**state["reminder"], "woken_at": woken["fired_at"]}}


def send_reminder(state: BookingState, runtime: Context) -> dict[str, Any]:
    sent = runtime.context.send_email(
        "send_reminder",
        to=state["customer_email"],
        subject=f"Reminder: {state['service']} at {state['slot']}",
        body=f"See you at {state['slot']}. Your deposit {state['deposit']['charge_id']} is taken.",
    )
    return {"reminder": {**state["reminder"], "sent": sent}}


# Routing


def after_check(state: BookingState) -> str:
    if state["slot_free"]:
        return "hold_slot"
    return "propose_alternatives" if state["alternatives"] else "notify_no_slot"


def after_hold(state: BookingState) -> str:
    return "take_deposit" if state["hold"]["hold_id"] else "check_availability"


def after_choice(state: BookingState) -> str:
    # The answer may come days later: the chosen slot is checked again before it is held.
    return "notify_no_slot" if state.get("outcome") == "no_slot" else "check_availability"


def after_deposit(state: BookingState) -> str:
    return "send_confirmation" if state["deposit"]["charge_id"] else "release_hold"


def after_reminder_scheduled(state: BookingState) -> str:
    return END if "skipped" in state["reminder"] else "await_reminder"


def summarize(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "outcome": state.get("outcome"),
        "slot": state.get("slot") if state.get("outcome") == "booked" else None,
        "requested_slot": state.get("requested_slot"),
        "hold_id": (state.get("hold") or {}).get("hold_id"),
        "charge_id": (state.get("deposit") or {}).get("charge_id"),
        "reminder_due": (state.get("reminder") or {}).get("due_at"),
    }


# The graph

builder = TemplateGraph(BookingState)
builder.add_node("check_availability", check_availability)
builder.add_node("hold_slot", hold_slot)
builder.add_node("propose_alternatives", propose_alternatives)
builder.add_node("await_choice", await_choice, asks=SlotChoice)
builder.add_node("take_deposit", take_deposit)
builder.add_node("release_hold", release_hold)
builder.add_node("notify_payment_failed", notify_payment_failed)
builder.add_node("notify_no_slot", notify_no_slot)
builder.add_node("send_confirmation", send_confirmation)
builder.add_node("schedule_reminder", schedule_reminder)
builder.add_node("await_reminder", await_reminder, sleeps=True)
builder.add_node("send_reminder", send_reminder)

builder.add_edge(START, "check_availability")
builder.add_conditional_edges(
    "check_availability", after_check, ["hold_slot", "propose_alternatives", "notify_no_slot"]
)
builder.add_conditional_edges("hold_slot", after_hold, ["take_deposit", "check_availability"])
builder.add_edge("propose_alternatives", "await_choice")
builder.add_conditional_edges("await_choice", after_choice, ["check_availability", "notify_no_slot"])
builder.add_conditional_edges("take_deposit", after_deposit, ["send_confirmation", "release_hold"])
builder.add_edge("release_hold", "notify_payment_failed")
builder.add_edge("notify_payment_failed", END)
builder.add_edge("notify_no_slot", END)
builder.add_edge("send_confirmation", "schedule_reminder")
builder.add_conditional_edges("schedule_reminder", after_reminder_scheduled, ["await_reminder", END])
builder.add_edge("await_reminder", "send_reminder")
builder.add_edge("send_reminder", END)

TEMPLATE = Template(
    name="booking",
    description="Book an appointment slot with a deposit; if the slot is taken, the customer picks another.",
    request_model=BookingRequest,
    settings_model=BookingSettings,
    builder=builder,
    initial_state=initial_state,
    summarize=summarize,
)
