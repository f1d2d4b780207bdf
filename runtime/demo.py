"""`durakit demo`: each template's story, with a crash and a recovery in every one.

Each run seeds its own orders, accounts and calendar and uses fresh thread ids (suffix:
the time it started), so the demo can be run again and again; earlier runs stay visible
in `durakit threads`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from durakit.output import console
from durakit.record import Status
from durakit.runner import Runner
from durakit.views import ThreadView

TOUR_ORDERS = ("ORD-42", "ORD-43")  # used by README's tour
TOUR_ACCOUNT = "ACC-7"


def act(title: str) -> None:
    console.print(f"\n[bold]{title}[/bold]")


def show(view: ThreadView, what: str = "") -> None:
    outcome = (view.result or {}).get("outcome")
    if sleeping(view):
        what = f"(sleeps until {view.interrupt['wakes_at']}: {view.interrupt['timer']}) {what}".rstrip()
    console.print(f"  {view.thread_id}: {view.status}" + (f" -> {outcome}" if outcome else "") + (f" {what}" if what else ""))


def sleeping(view: ThreadView) -> bool:
    """Waiting for a timer (a reminder, a follow-up), not for a person: its work is done until then."""
    return view.question is not None and not view.question.for_person


def done(view: ThreadView) -> bool:
    return view.status is Status.COMPLETED or sleeping(view)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `durakit ARGS` as a separate process, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "durakit", *args], env={**os.environ, **(env or {})}, capture_output=True, text=True
    )


def crash_and_recover(runner: Runner, thread_id: str, fault: str, *args: str) -> tuple[bool, ThreadView]:
    """Run `durakit ARGS` in a child that SIGKILLs itself at `fault`, then `durakit recover`."""
    console.print(f"  child process: DURAKIT_FAULT={fault} durakit {args[0]} ...")
    child = cli(*args, env={"DURAKIT_FAULT": fault})
    killed = child.returncode == -signal.SIGKILL
    runner.wait_until_released(thread_id)  # PostgreSQL notices the dead process's session
    console.print(f"  killed by SIGKILL: {killed}; {thread_id} is {runner.status(thread_id).status}; "
                  "another process runs `durakit recover`")
    cli("recover")
    view = runner.status(thread_id)
    show(view, "after recovery")
    return killed, view


def refund_story(runner: Runner, run_id: str) -> list[tuple[bool, ThreadView]]:
    customer = {"customer_id": "cust-ada", "customer_email": "ada@example.com", "amount_cents": 30000}
    orders = {name: f"ORD-{name}-{run_id}" for name in ("small", "large", "crash")}
    for order_id in (*orders.values(), *TOUR_ORDERS):
        runner.sandbox.add_order(order_id, **customer)

    act("Refund 1: 19.90 of a 300.00 order, low risk, under the auto-approval limit: no one is asked")
    show(runner.run("refund", {"order_id": orders["small"], "amount": "19.90", "reason": "late delivery"}))

    act("Refund 2: 250.00 waits for a person; the demo approves it through the Python API")
    large = runner.run("refund", {"order_id": orders["large"], "amount": "250.00", "reason": "arrived broken"})
    show(large, f"({large.interrupt['question']} risk {large.interrupt['risk']})")
    console.print(f"  runner.approve({large.thread_id!r}, 'approve', by='dana')")
    show(runner.approve(large.thread_id, "approve", by="dana", note="long-time customer"))

    act("Refund 3: killed after billing refunded, before the ledger recorded it")
    request = f'{{"order_id": "{orders["crash"]}", "amount": "60.00", "reason": "wrong size"}}'
    return [crash_and_recover(runner, f"refund-{orders['crash']}", "issue_refund:after_effect",
                              "run", "refund", "--input", request)]


def booking_story(runner: Runner, run_id: str) -> list[tuple[bool, ThreadView]]:
    service = f"repair-visit-{run_id}"
    slot = (datetime.now(UTC) + timedelta(days=7)).replace(hour=10, minute=0, second=0, microsecond=0)
    slot_text = slot.strftime("%Y-%m-%dT%H:%M:%SZ")

    def request(customer: str, **extra: str) -> dict[str, str]:
        return {"customer_id": customer, "customer_email": f"{customer}@example.com", "service": service,
                "slot": slot_text, "booking_ref": f"{customer}-{run_id}", **extra}

    act(f"Booking 1: {slot_text} is free: held, deposit taken, confirmed; it sleeps until 48 hours before")
    first = runner.run("booking", request("bo"))
    show(first)
    console.print("  A `durakit worker` wakes it when the reminder is due; the demo moves the timer to now and fires it:")
    console.print(f"  runner.move_timer({first.thread_id!r}, 'reminder', now); runner.fire_timer(...)")
    runner.move_timer(first.thread_id, "reminder", datetime.now(UTC))
    show(runner.fire_timer(first.thread_id, "reminder"), "(reminder emailed)")

    act("Booking 2: the same slot is taken; the customer picks one of the nearest free slots")
    second = runner.run("booking", request("cy"))
    show(second, f"(offered: {', '.join(second.question.decisions)})")
    choice = second.question.decisions[0]
    console.print(f"  runner.approve({second.thread_id!r}, {choice!r}, by='cy')")
    show(runner.approve(second.thread_id, choice, by="cy"))

    act("Booking 3: a declined card releases the hold again (compensation)")
    later = request("di", slot=(slot + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"), payment_method="pm_card_declined")
    show(runner.run("booking", later))

    act("Booking 4: killed after the deposit was charged, before the ledger recorded it")
    crash = request("ed", slot=(slot + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return [crash_and_recover(runner, f"booking-ed-{run_id}", "take_deposit:after_effect",
                              "run", "booking", "--input", json.dumps(crash))]


def cancellation_story(runner: Runner, run_id: str) -> list[tuple[bool, ThreadView]]:
    busy, quiet = f"ACC-busy-{run_id}", f"ACC-quiet-{run_id}"
    runner.sandbox.add_account(busy, customer_id="cust-fay", customer_email="fay@example.com", support_tickets=4)
    runner.sandbox.add_account(quiet, customer_id="cust-gus", customer_email="gus@example.com")
    runner.sandbox.add_account(TOUR_ACCOUNT, customer_id="cust-ivy", customer_email="ivy@example.com", support_tickets=4)

    act("Cancellation 1: a large retention offer needs a supervisor, then the customer says yes")
    view = runner.run("cancellation-save", {"account_id": busy, "reason": "too many problems"})
    show(view, f"({view.interrupt['question']})")
    view = runner.approve(view.thread_id, "approve", by="sam")
    show(view, f"({view.interrupt['question']})")
    show(runner.approve(view.thread_id, "accepted", by="fay"))

    act("Cancellation 2: the customer declines; the process answering is killed while billing cancels")
    view = runner.run("cancellation-save", {"account_id": quiet, "reason": "not using it"})
    show(view, f"({view.interrupt['question']})")
    return [crash_and_recover(runner, view.thread_id, "cancel_subscription:after_effect",
                              "approve", view.thread_id, "--decision", "declined", "--by", "gus")]


def escalation_story(runner: Runner, run_id: str) -> list[tuple[bool, ThreadView]]:
    act("Escalation: summarised as urgent, queued, reassigned by an agent, accepted")
    view = runner.run("escalation", {
        "conversation_id": f"CONV-{run_id}", "customer_id": "cust-hal", "customer_email": "hal@example.com",
        "subject": "Checkout broken", "message": "Our shop is down since 9am. Nobody can pay.",
    })
    show(view, f"(queue {view.interrupt['queue']})")
    view = runner.approve(view.thread_id, "reassign:technical", by="ann", note="payments")
    show(view, f"(queue {view.interrupt['queue']})")
    console.print("  accepting in a process that is killed after the customer was emailed:")
    return [crash_and_recover(runner, view.thread_id, "notify_customer:after_effect",
                              "approve", view.thread_id, "--decision", "accept", "--by", "bob")]


def main() -> None:
    run_id = time.strftime("%Y%m%d%H%M%S")
    with Runner.open() as runner:
        console.print(f"durakit demo on {runner.database.display}; this run's ids end in -{run_id}.")
        crashes = [
            *refund_story(runner, run_id),
            *booking_story(runner, run_id),
            *cancellation_story(runner, run_id),
            *escalation_story(runner, run_id),
        ]

        act("The ledger: what the outside systems received and applied for the crashed threads")
        effects = [(view.thread_id, effect) for _, view in crashes for effect in runner.status(view.thread_id).effects
                   if effect["system"] != "judgement"]
        for thread_id, effect in effects:
            console.print(f"  {thread_id} {effect['step_key']}: durakit called {effect['calls']}x, "
                          f"{effect['system']} received {effect['received']}x, applied {effect['applied']}x")
        console.print(
            "  A call repeated after a crash carried the same idempotency key, so the outside system\n"
            "  replayed its first answer: every effect was applied exactly once."
        )
        ok = all(killed and done(view) for killed, view in crashes)
        ok = ok and all(effect["applied"] == 1 for _, effect in effects)
    if not ok:
        console.print("\n[red]The demo did not end as expected; see above.[/red]")
        raise SystemExit(1)
    console.print(
        f"\nNext: `durakit threads`, `durakit history THREAD_ID`, and README's tour "
        f"(the sandbox now holds its orders {' and '.join(TOUR_ORDERS)} and account {TOUR_ACCOUNT})."
    )
