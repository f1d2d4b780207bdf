"""`InMemorySandbox`: the sandbox's billing, CRM, email, audit, calendar and ticketing
systems (`durakit.adapters.sandbox`), kept in Python lists instead of PostgreSQL tables.

It keeps the sandbox's idempotency contract: the first request with a key is applied
and its response kept; a repeat returns that response and applies nothing; a repeat
with another body is refused. `requests` shows, per key, how often a request arrived
and how often it was applied; the lists (`refunds`, `emails`, ...) are what was done.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from durakit.domain import Order
from durakit.errors import TransientAdapterError

SLOT_HOURS = range(9, 17)  # hourly slots from 09:00 to 16:00 UTC, as in the sandbox


def as_json(value: Any) -> Any:
    """`value` as it comes back from a JSONB column: a copy, with tuples as lists."""
    return json.loads(json.dumps(value))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Received:
    """One idempotency key, as the outside system saw it."""

    system: str
    operation: str
    request: dict[str, Any]
    response: dict[str, Any]
    received: int = 1  # requests that arrived with this key
    applied: int = 1  # times the change was made (more than 1 would be a duplicate)


class InMemorySandbox:
    """All the sandbox systems in memory; seed it with `add_order` and `add_account`.
    A system named in `unavailable` fails every change as an outage does."""

    def __init__(self, *, unavailable: Iterable[str] = ()) -> None:
        self.unavailable = set(unavailable)
        self.requests: dict[str, Received] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.refunds: list[dict[str, Any]] = []
        self.charges: list[dict[str, Any]] = []
        self.discounts: list[dict[str, Any]] = []
        self.holds: list[dict[str, Any]] = []
        self.tickets: dict[str, dict[str, Any]] = {}
        self.assignments: list[dict[str, Any]] = []
        self.crm_notes: list[dict[str, Any]] = []
        self.emails: list[dict[str, Any]] = []
        self.audit_records: list[dict[str, Any]] = []

    # Billing

    def add_order(
        self, order_id: str, *, customer_id: str, customer_email: str, amount_cents: int, currency: str = "EUR",
        days_ago: int = 3,
    ) -> None:
        """Seed a paid order; an existing order is left as it is."""
        self.orders.setdefault(order_id, {
            "order_id": order_id, "customer_id": customer_id, "customer_email": customer_email,
            "amount_cents": amount_cents, "currency": currency, "status": "paid",
            "ordered_at": iso(datetime.now(UTC) - timedelta(days=days_ago)),
        })

    def get_order(self, order_id: str) -> Order | None:
        order = self.orders.get(order_id)
        return None if order is None else {**order, "refunded_cents": self._refunded(order_id)}  # type: ignore[typeddict-item]

    def refund(self, *, order_id: str, amount_cents: int, idempotency_key: str) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            order = self.orders.get(order_id)
            if order is None:
                return {"refund_id": None, "refused": "the order does not exist"}
            if amount_cents > order["amount_cents"] - self._refunded(order_id):
                return {"refund_id": None, "refused": "the amount exceeds what is left to refund on the order"}
            refund = {"refund_id": f"re_{uuid.uuid4().hex[:16]}", "order_id": order_id, "amount_cents": amount_cents}
            self.refunds.append({**refund, "idempotency_key": idempotency_key})
            return refund

        request = {"order_id": order_id, "amount_cents": amount_cents}
        return self._once("billing", "refund", idempotency_key, request, apply)

    def charge(
        self, *, customer_id: str, amount_cents: int, payment_method: str, description: str, idempotency_key: str
    ) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            if payment_method == "pm_card_declined":
                return {"charge_id": None, "declined": "the card was declined"}
            charge_id = f"ch_{uuid.uuid4().hex[:16]}"
            self.charges.append({"charge_id": charge_id, "customer_id": customer_id, "amount_cents": amount_cents,
                                 "description": description, "idempotency_key": idempotency_key})
            return {"charge_id": charge_id, "amount_cents": amount_cents}

        request = {"customer_id": customer_id, "amount_cents": amount_cents, "payment_method": payment_method,
                   "description": description}
        return self._once("billing", "charge", idempotency_key, request, apply)

    def add_account(
        self, account_id: str, *, customer_id: str, customer_email: str, plan: str = "pro",
        monthly_price_cents: int = 4900, months_active: int = 12, days_active: int = 10, sessions: int = 40,
        support_tickets: int = 0,
    ) -> None:
        """Seed an active subscription; an existing one is left as it is."""
        self.accounts.setdefault(account_id, {
            "account_id": account_id, "customer_id": customer_id, "customer_email": customer_email, "plan": plan,
            "monthly_price_cents": monthly_price_cents, "months_active": months_active, "status": "active",
            "usage": {"days_active": days_active, "sessions": sessions, "support_tickets": support_tickets},
        })

    def get_account(self, account_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        if account_id not in self.accounts:
            return None
        account = as_json(self.accounts[account_id])
        account.pop("cancelled_at", None)
        return account, account.pop("usage")

    def apply_discount(self, *, account_id: str, percent_off: int, months: int, idempotency_key: str) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            discount_id = f"di_{uuid.uuid4().hex[:16]}"
            self.discounts.append({"discount_id": discount_id, "account_id": account_id, "percent_off": percent_off,
                                   "months": months, "idempotency_key": idempotency_key})
            return {"discount_id": discount_id}

        request = {"account_id": account_id, "percent_off": percent_off, "months": months}
        return self._once("billing", "apply_discount", idempotency_key, request, apply)

    def cancel_subscription(self, *, account_id: str, idempotency_key: str) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            account = self.accounts.get(account_id)
            if account is None or account["status"] != "active":
                return {"cancelled": False, "reason": "no active subscription"}
            account.update(status="cancelled", cancelled_at=iso(datetime.now(UTC)))
            return {"cancelled": True, "cancelled_at": account["cancelled_at"]}

        return self._once("billing", "cancel_subscription", idempotency_key, {"account_id": account_id}, apply)

    # Calendar

    def free_slots(self, *, resource: str, around: str, count: int) -> list[str]:
        """Free hourly slots within 14 days of `around`, nearest first (never in the past)."""
        now = datetime.now(UTC)
        target = max(datetime.fromisoformat(around), now)
        held = self._held(resource)
        day0 = target.replace(hour=0, minute=0, second=0, microsecond=0)
        candidates = [day0 + timedelta(days=day, hours=hour) for day in range(-14, 15) for hour in SLOT_HOURS]
        free = [slot for slot in candidates if slot > now and slot != target and slot not in held]
        free.sort(key=lambda slot: (abs(slot - target), slot))
        return [iso(slot) for slot in free[:count]]

    def is_free(self, *, resource: str, slot: str) -> bool:
        start = datetime.fromisoformat(slot)
        return start.hour in SLOT_HOURS and start > datetime.now(UTC) and start not in self._held(resource)

    def hold_slot(self, *, resource: str, slot: str, customer_id: str, idempotency_key: str) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            if datetime.fromisoformat(slot) in self._held(resource):
                return {"hold_id": None, "refused": "the slot was taken meanwhile"}
            hold_id = f"ho_{uuid.uuid4().hex[:16]}"
            self.holds.append({"hold_id": hold_id, "resource": resource, "slot": slot, "customer_id": customer_id,
                               "status": "held", "idempotency_key": idempotency_key})
            return {"hold_id": hold_id, "slot": slot}

        request = {"resource": resource, "slot": slot, "customer_id": customer_id}
        return self._once("calendar", "hold_slot", idempotency_key, request, apply)

    def release_hold(self, *, hold_id: str, idempotency_key: str) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            for hold in self.holds:
                if hold["hold_id"] == hold_id:
                    hold["status"] = "released"
            return {"released": hold_id}

        return self._once("calendar", "release_hold", idempotency_key, {"hold_id": hold_id}, apply)

    # Ticketing

    def create_ticket(
        self, *, customer_id: str, subject: str, summary: str, priority: str, idempotency_key: str
    ) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            ticket_id = f"TCK-{uuid.uuid4().hex[:8].upper()}"
            self.tickets[ticket_id] = {"ticket_id": ticket_id, "customer_id": customer_id, "subject": subject,
                                       "summary": summary, "priority": priority, "queue": None}
            return {"ticket_id": ticket_id}

        request = {"customer_id": customer_id, "subject": subject, "summary": summary, "priority": priority}
        return self._once("ticketing", "create_ticket", idempotency_key, request, apply)

    def assign_queue(self, *, ticket_id: str, queue: str, idempotency_key: str) -> dict[str, Any]:
        def apply() -> dict[str, Any]:
            assignment = {"ticket_id": ticket_id, "queue": queue, "assigned_at": iso(datetime.now(UTC))}
            self.assignments.append(assignment)
            if ticket_id in self.tickets:
                self.tickets[ticket_id]["queue"] = queue
            return dict(assignment)

        return self._once("ticketing", "assign_queue", idempotency_key, {"ticket_id": ticket_id, "queue": queue}, apply)

    # CRM, email and audit

    def recent_interactions(self, customer_id: str, limit: int) -> list[str]:
        subjects = [note["subject"] for note in reversed(self.crm_notes) if note["customer_id"] == customer_id]
        return subjects[:limit]

    def log_interaction(
        self, *, customer_id: str, subject: str, body: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        request = {"customer_id": customer_id, "subject": subject, "body": body}
        return self._once("crm", "log_interaction", idempotency_key, request,
                          lambda: {"note_id": f"note_{self._append(self.crm_notes, request)}"})

    def send_email(self, *, to: str, subject: str, body: str, idempotency_key: str) -> dict[str, Any]:
        request = {"to": to, "subject": subject, "body": body}
        return self._once("email", "send_email", idempotency_key, request,
                          lambda: {"message_id": f"msg_{self._append(self.emails, request)}"})

    def record(self, *, subject: str, record: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        request = {"subject": subject, "record": record}
        return self._once("audit", "record", idempotency_key, request,
                          lambda: {"audit_id": f"audit_{self._append(self.audit_records, request)}"})

    # The idempotency contract shared by every change

    def _once(
        self, system: str, operation: str, key: str, request: dict[str, Any], apply: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        if system in self.unavailable:
            raise TransientAdapterError(f"{system} is unavailable (503 Service Unavailable, InMemorySandbox.unavailable).")
        request = as_json(request)
        seen = self.requests.get(key)
        if seen is None:
            response = apply()
            self.requests[key] = Received(system, operation, request, as_json(response))
            return response
        if seen.request != request:
            from durakit.errors import IdempotencyKeyReused

            raise IdempotencyKeyReused(f"{system}: idempotency key {key} was first used with a different request.")
        seen.received += 1
        return as_json(seen.response)

    def _append(self, rows: list[dict[str, Any]], row: dict[str, Any]) -> int:
        rows.append({**as_json(row), "id": len(rows) + 1})
        return len(rows)

    def _refunded(self, order_id: str) -> int:
        return sum(refund["amount_cents"] for refund in self.refunds if refund["order_id"] == order_id)

    def _held(self, resource: str) -> set[datetime]:
        return {datetime.fromisoformat(hold["slot"]) for hold in self.holds
                if hold["resource"] == resource and hold["status"] == "held"}
