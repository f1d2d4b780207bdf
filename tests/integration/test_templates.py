"""Booking, cancellation-save and escalation through the Python API: every branch."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from durakit.adapters.sandbox import Sandbox
from durakit.errors import InvalidInput
from durakit.runner import Runner
from durakit.state.cancellation_save import CancellationSettings
from tests.conftest import future_slot, unique


def count(conn, sql: str, *params) -> int:
    return conn.execute(sql, params).fetchone()["count"]


# Booking


def booking(runner: Runner, *, service: str, slot: str, **extra: str):
    customer = unique("cust")
    request = {"customer_id": customer, "customer_email": f"{customer}@example.com", "service": service, "slot": slot}
    return runner.run("booking", {**request, **extra}), customer


def holds(conn, customer: str, status: str = "held") -> int:
    return count(conn, "SELECT count(*) FROM sandbox_holds WHERE customer_id = %s AND status = %s", customer, status)


def charges(conn, customer: str) -> int:
    return count(conn, "SELECT count(*) FROM sandbox_charges WHERE customer_id = %s", customer)


def emails(conn, customer: str) -> int:
    return count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s", f"{customer}@example.com")


def test_free_slot_is_held_paid_confirmed_and_reminded(runner, conn):
    service, slot = unique("svc"), future_slot()
    view, customer = booking(runner, service=service, slot=slot)
    assert view.status == "waiting" and view.interrupt["timer"] == "reminder"  # sleeps until the reminder
    assert view.result["outcome"] == "booked" and view.result["slot"] == slot
    assert (holds(conn, customer), charges(conn, customer), emails(conn, customer)) == (1, 1, 1)
    deposit = conn.execute("SELECT amount_cents FROM sandbox_charges WHERE customer_id = %s", (customer,)).fetchone()
    assert deposit["amount_cents"] == 2000
    timers = runner.status(view.thread_id).timers
    due = datetime.fromisoformat(slot) - timedelta(hours=48)
    assert [(t["name"], t["status"], datetime.fromisoformat(t["due_at"])) for t in timers] == [("reminder", "scheduled", due)]


def test_taken_slot_offers_the_nearest_free_ones_and_books_the_choice(runner, conn):
    service, slot = unique("svc"), future_slot()
    booking(runner, service=service, slot=slot)
    view, customer = booking(runner, service=service, slot=slot)
    assert view.status == "waiting"
    offered = view.interrupt["decisions"]
    assert offered[-1] == "none" and slot not in offered and len(offered) == 4
    distances = [abs(datetime.fromisoformat(s) - datetime.fromisoformat(slot)) for s in offered[:-1]]
    assert distances == sorted(distances) and distances[0] == timedelta(hours=1)
    assert emails(conn, customer) == 1  # the proposal

    done = runner.approve(view.thread_id, offered[1], by="customer")
    assert done.result["outcome"] == "booked" and done.result["slot"] == offered[1]
    assert (holds(conn, customer), charges(conn, customer), emails(conn, customer)) == (1, 1, 2)


def test_customer_wanting_none_of_the_alternatives_books_nothing(runner, conn):
    service, slot = unique("svc"), future_slot()
    booking(runner, service=service, slot=slot)
    view, customer = booking(runner, service=service, slot=slot)
    done = runner.approve(view.thread_id, "none", by="customer")
    assert done.result["outcome"] == "no_slot"
    assert (holds(conn, customer), charges(conn, customer), emails(conn, customer)) == (0, 0, 2)


def test_a_slot_that_was_not_offered_is_refused(runner, conn):
    service, slot = unique("svc"), future_slot()
    booking(runner, service=service, slot=slot)
    view, customer = booking(runner, service=service, slot=slot)
    with pytest.raises(InvalidInput, match="choose one of"):
        runner.approve(view.thread_id, slot, by="customer")  # the taken slot itself
    assert runner.status(view.thread_id).status == "waiting"
    assert count(conn, "SELECT count(*) FROM durakit_decisions WHERE thread_id = %s", view.thread_id) == 0


def test_declined_card_releases_the_hold_and_ends_as_payment_failed(runner, conn):
    service, slot = unique("svc"), future_slot()
    view, customer = booking(runner, service=service, slot=slot, payment_method="pm_card_declined")
    assert view.status == "completed"
    assert view.result["outcome"] == "payment_failed"
    assert (holds(conn, customer, "held"), holds(conn, customer, "released"), charges(conn, customer)) == (0, 1, 0)
    assert emails(conn, customer) == 1
    assert runner.status(view.thread_id).timers == []
    again, _ = booking(runner, service=service, slot=slot)  # the slot is free again
    assert again.result["outcome"] == "booked"


class RacyCalendar(Sandbox):
    """Says a slot is free although someone holds it: the hold then loses the race."""

    def is_free(self, *, resource: str, slot: str) -> bool:
        self.is_free = super().is_free  # only the first check is wrong
        return True


def test_a_slot_taken_between_check_and_hold_leads_to_alternatives(test_database, conn):
    service, slot = unique("svc"), future_slot()
    with Runner.open() as runner:
        booking(runner, service=service, slot=slot)
        runner.adapters = replace(runner.adapters, calendar=RacyCalendar(runner.pool))
        view, customer = booking(runner, service=service, slot=slot)
    assert view.status == "waiting" and slot not in view.interrupt["decisions"]
    assert holds(conn, customer) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"slot": "2030-01-01T10:30:00Z"},
        {"slot": "2020-01-01T10:00:00Z"},
        {"slot": "2030-01-01T10:00:00"},
        {"slot": "tomorrow"},
        {"customer_email": "not-an-email"},
        {"service": "no spaces allowed"},
    ],
)
def test_bad_booking_input_is_refused(runner, conn, change):
    request = {"customer_id": "c-1", "customer_email": "c@example.com", "slot": future_slot(), **change}
    before = count(conn, "SELECT count(*) FROM durakit_threads")
    with pytest.raises(InvalidInput):
        runner.run("booking", request)
    assert count(conn, "SELECT count(*) FROM durakit_threads") == before


# Cancellation save


def cancellation(runner: Runner, account_id: str):
    return runner.run("cancellation-save", {"account_id": account_id, "reason": "too expensive"})


def account_row(conn, account_id: str) -> dict:
    return conn.execute("SELECT * FROM sandbox_accounts WHERE account_id = %s", (account_id,)).fetchone()


def discounts(conn, account_id: str) -> list[tuple[int, int]]:
    rows = conn.execute("SELECT percent_off, months FROM sandbox_discounts WHERE account_id = %s", (account_id,))
    return [(row["percent_off"], row["months"]) for row in rows]


def test_small_offer_goes_straight_to_the_customer_who_accepts(runner, make_account, conn):
    account_id = make_account()  # standard offer: 15% off 3 months of 49.00 = 22.05, under the 50.00 limit
    view = cancellation(runner, account_id)
    assert view.status == "waiting" and view.interrupt["node"] == "await_customer"
    assert view.interrupt["decisions"] == ["accepted", "declined"]
    done = runner.approve(view.thread_id, "accepted", by="customer")
    assert done.result["outcome"] == "saved"
    assert discounts(conn, account_id) == [(15, 3)]
    assert account_row(conn, account_id)["status"] == "active"
    customer = account_row(conn, account_id)["customer_id"]
    assert count(conn, "SELECT count(*) FROM sandbox_crm_notes WHERE customer_id = %s", customer) == 1
    timer = runner.status(view.thread_id).timers[0]
    assert timer["name"] == "follow_up"
    assert timedelta(days=29) < datetime.fromisoformat(timer["due_at"]) - datetime.fromisoformat(done.updated_at) < timedelta(days=31)


def test_declined_offer_cancels_in_billing(runner, make_account, conn):
    account_id = make_account()
    view = cancellation(runner, account_id)
    done = runner.approve(view.thread_id, "declined", by="customer")
    assert done.result["outcome"] == "cancelled"
    assert account_row(conn, account_id)["status"] == "cancelled"
    assert discounts(conn, account_id) == []
    email = account_row(conn, account_id)["customer_email"]
    assert count(conn, "SELECT count(*) FROM sandbox_emails WHERE recipient = %s", email) == 2  # offer, confirmation


def test_large_offer_needs_a_supervisor_then_the_customer(runner, make_account, conn):
    account_id = make_account(support_tickets=4)  # 50% off 3 months of 49.00 = 73.50
    view = cancellation(runner, account_id)
    assert view.interrupt["node"] == "await_supervisor"
    assert view.interrupt["offer"]["value_cents"] == 7350
    view = runner.approve(view.thread_id, "approve", by="sam")
    assert view.interrupt["node"] == "await_customer"
    done = runner.approve(view.thread_id, "accepted", by="customer")
    assert discounts(conn, account_id) == [(50, 3)]
    assert done.result["supervisor"] == "approve"


def test_rejected_offer_is_cut_to_the_limit(runner, make_account, conn):
    account_id = make_account(support_tickets=4)
    view = cancellation(runner, account_id)
    view = runner.approve(view.thread_id, "reject", by="sam")
    assert "50% off for 2 months" in view.interrupt["question"]  # 49.00 worth, within 50.00
    runner.approve(view.thread_id, "accepted", by="customer")
    assert discounts(conn, account_id) == [(50, 2)]


def test_supervisor_limit_is_configuration(test_database, make_account):
    with Runner.open(template_settings={"cancellation-save": CancellationSettings(approval_above_cents=100_000)}) as runner:
        view = cancellation(runner, make_account(support_tickets=4))
    assert view.interrupt["node"] == "await_customer"


def test_unknown_or_cancelled_account_ends_without_side_effects(runner, make_account, conn):
    view = cancellation(runner, unique("NO-ACC"))
    assert (view.status, view.result["outcome"]) == ("completed", "not_found")
    assert runner.status(view.thread_id).effects == []


# Escalation


def escalation(runner: Runner, message: str = "Hello, I need help.", **extra: str):
    customer = unique("cust")
    request = {
        "conversation_id": unique("CONV"),
        "customer_id": customer,
        "customer_email": f"{customer}@example.com",
        "subject": "Checkout broken",
        "message": message,
    }
    return runner.run("escalation", {**request, **extra}), customer


def test_urgent_case_is_queued_reassigned_accepted_and_the_customer_told(runner, conn):
    view, customer = escalation(runner, "Our shop is down since 9am. Nobody can pay.")
    assert view.status == "waiting"
    assert view.interrupt["queue"] == "priority"
    assert view.interrupt["decisions"] == ["accept", "reassign:general", "reassign:billing", "reassign:technical"]
    ticket_id = view.interrupt["ticket_id"]

    view = runner.approve(view.thread_id, "reassign:technical", by="ann", note="payments team")
    assert view.status == "waiting" and view.interrupt["queue"] == "technical"
    assert "reassign:priority" in view.interrupt["decisions"]

    done = runner.approve(view.thread_id, "accept", by="bob")
    assert done.result == {**done.result, "outcome": "accepted", "ticket_id": ticket_id, "queue": "technical",
                           "priority": "urgent", "accepted_by": "bob", "assignments": 2}
    queues = conn.execute("SELECT queue FROM sandbox_assignments WHERE ticket_id = %s ORDER BY id", (ticket_id,))
    assert [row["queue"] for row in queues] == ["priority", "technical"]
    email = conn.execute("SELECT subject, body FROM sandbox_emails WHERE recipient = %s", (f"{customer}@example.com",))
    assert ticket_id in email.fetchone()["subject"]
    timers = runner.status(done.thread_id).timers
    assert [(t["name"], t["status"]) for t in timers] == [("reminder:1:1", "cancelled"), ("reminder:2:1", "cancelled")]


def test_waiting_ticket_has_a_reminder_48_hours_after_assignment(runner):
    view, _ = escalation(runner, "I was charged twice.")
    assert view.interrupt["queue"] == "general"
    timer = runner.status(view.thread_id).timers[0]
    assert (timer["name"], timer["status"]) == ("reminder:1:1", "scheduled")
    assert view.interrupt["timer"] == "reminder:1:1" and view.interrupt["on_deadline"] == "remind"
    waited = datetime.fromisoformat(timer["due_at"]) - datetime.fromisoformat(view.updated_at)
    assert timedelta(hours=47) < waited <= timedelta(hours=48)


def test_reassigning_to_the_same_queue_is_not_offered(runner):
    view, _ = escalation(runner, "I was charged twice.")
    with pytest.raises(InvalidInput):
        runner.approve(view.thread_id, "reassign:general", by="ann")
    with pytest.raises(InvalidInput):
        runner.approve(view.thread_id, "reassign:nowhere", by="ann")


@pytest.mark.parametrize("change", [{"subject": ""}, {"message": "x" * 5001}, {"conversation_id": "a b"}])
def test_bad_escalation_input_is_refused(runner, change):
    with pytest.raises(InvalidInput):
        escalation(runner, **change)



# Regressions from review


class CalendarThatLiesOnce(Sandbox):
    """Claims the requested slot is free (it is not) and offers it as an alternative:
    the first hold is refused, and the same slot is tried again later."""

    def __init__(self, pool, slot: str) -> None:
        super().__init__(pool)
        self.slot, self.lied = slot, False

    def is_free(self, *, resource: str, slot: str) -> bool:
        if not self.lied:
            self.lied = True
            return True
        return super().is_free(resource=resource, slot=slot)

    def free_slots(self, *, resource: str, around: str, count: int) -> list[str]:
        return [self.slot]


def test_a_slot_whose_hold_was_refused_can_be_held_when_it_frees_up(test_database, conn):
    service, slot = unique("svc"), future_slot()
    with Runner.open() as runner:
        first, _ = booking(runner, service=service, slot=slot)
        runner.adapters = replace(runner.adapters, calendar=CalendarThatLiesOnce(runner.pool, slot))
        view, customer = booking(runner, service=service, slot=slot)
        assert view.status == "waiting" and view.interrupt["decisions"] == [slot, "none"]
        conn.execute("UPDATE sandbox_holds SET status = 'released' WHERE hold_id = %s", (first.result["hold_id"],))
        done = runner.approve(view.thread_id, slot, by="customer")
    assert done.result["outcome"] == "booked" and done.result["slot"] == slot
    assert holds(conn, customer) == 1


def test_slots_outside_opening_hours_or_past_are_not_free(runner):
    service = unique("svc")
    assert runner.sandbox.is_free(resource=service, slot=future_slot(hour=10))
    assert not runner.sandbox.is_free(resource=service, slot=future_slot(hour=3))
    assert not runner.sandbox.is_free(resource=service, slot="2020-01-01T10:00:00Z")


def test_a_reminder_that_would_be_due_already_is_not_recorded(test_database, conn):
    from durakit.state.booking import BookingSettings

    with Runner.open(template_settings={"booking": BookingSettings(reminder_hours_before=24 * 30)}) as runner:
        view, _ = booking(runner, service=unique("svc"), slot=future_slot(days=5))
        assert view.result["outcome"] == "booked"
        assert runner.status(view.thread_id).timers == []


def test_a_stored_booking_whose_slot_passed_is_recovered_not_refused(runner, conn):
    from psycopg.types.json import Jsonb

    thread_id, customer = unique("booking-stale"), unique("cust")
    request = {"customer_id": customer, "customer_email": f"{customer}@example.com", "service": unique("svc"),
               "slot": "2020-01-01T10:00:00Z", "payment_method": "pm_card_visa", "booking_ref": None}
    conn.execute("INSERT INTO durakit_threads (thread_id, template, status, request) VALUES (%s, 'booking', 'running', %s)",
                 (thread_id, Jsonb(request)))
    report = runner.recover()
    assert thread_id not in report.errors
    view = runner.status(thread_id)
    assert view.status == "waiting" and "2020-01-01T10:00:00Z" not in view.interrupt["decisions"]


def test_a_rejected_offer_keeps_the_largest_discount_within_the_limit(runner, make_account, conn):
    account_id = make_account(monthly_price_cents=120_000, months_active=30)  # rules: 30% off 6 months = 2160.00
    view = cancellation(runner, account_id)
    view = runner.approve(view.thread_id, "reject", by="sam")
    assert "4% off for 1 months (worth 48.00)" in view.interrupt["question"]
    runner.approve(view.thread_id, "accepted", by="customer")
    assert discounts(conn, account_id) == [(4, 1)]


def test_escalation_settings_that_leave_a_priority_without_a_queue_are_refused(monkeypatch, test_database, conn):
    monkeypatch.setenv("DURAKIT_ESCALATION_QUEUE_FOR_PRIORITY", '{"urgent": "priority"}')
    before = count(conn, "SELECT count(*) FROM durakit_threads")
    with Runner.open() as runner, pytest.raises(InvalidInput, match="queue_for_priority"):
        escalation(runner)
    assert count(conn, "SELECT count(*) FROM durakit_threads") == before


def test_an_email_subject_cannot_carry_extra_header_lines(runner):
    with pytest.raises(InvalidInput, match="subject"):
        escalation(runner, subject="Hi\r\nBcc: everyone@example.com")
