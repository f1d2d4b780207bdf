"""Sandbox billing, CRM, email and audit systems backed by PostgreSQL tables.

They behave like real APIs where it matters for durability: each change arrives with an
idempotency key; the first request with a key is applied and its response stored; a
repeat returns the stored response and applies nothing; a repeat with a different body
is refused. `received` and `applied` per key show what the system saw.
DURAKIT_SANDBOX_LATENCY_MS makes every call take that long, so a kill can land mid-call.
DURAKIT_SANDBOX_UNAVAILABLE=crm,email makes the changes sent to those systems fail as an
outage does (a `TransientAdapterError`, before anything is received), until it is unset.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit.domain import Account, Order, Usage
from durakit.errors import IdempotencyKeyReused, TransientAdapterError
from durakit.sqltext import utc_text

RECEIVE_SQL = """
INSERT INTO sandbox_requests (idempotency_key, system, operation, request)
VALUES (%(key)s, %(system)s, %(operation)s, %(request)s)
ON CONFLICT (idempotency_key) DO UPDATE
    SET received = sandbox_requests.received + 1, last_seen_at = now()
RETURNING request, response
"""

RESPOND_SQL = """
UPDATE sandbox_requests SET response = %(response)s, applied = applied + 1
WHERE idempotency_key = %(key)s
"""

ORDER_SQL = f"""
SELECT o.order_id, o.customer_id, o.customer_email, o.amount_cents, o.currency, o.status,
       {utc_text('o.ordered_at')} AS ordered_at,
       coalesce((SELECT sum(r.amount_cents) FROM sandbox_refunds r
                 WHERE r.order_id = o.order_id), 0)::bigint AS refunded_cents
FROM sandbox_orders o WHERE o.order_id = %s
"""

# Locks the order row, so two refunds of one order are checked one after the other.
REFUNDABLE_SQL = """
SELECT o.amount_cents - coalesce((SELECT sum(r.amount_cents) FROM sandbox_refunds r
                                  WHERE r.order_id = o.order_id), 0) AS left_cents
FROM sandbox_orders o WHERE o.order_id = %s FOR UPDATE
"""

ADD_ORDER_SQL = """
INSERT INTO sandbox_orders (order_id, customer_id, customer_email, amount_cents, currency, ordered_at)
VALUES (%s, %s, %s, %s, %s, now() - make_interval(days => %s))
ON CONFLICT (order_id) DO NOTHING
"""


SLOT_HOURS = range(9, 17)  # the sandbox calendar has hourly slots from 09:00 to 16:00 UTC

ACCOUNT_SQL = """
SELECT account_id, customer_id, customer_email, plan, monthly_price_cents, months_active, status,
       days_active, sessions, support_tickets
FROM sandbox_accounts WHERE account_id = %s
"""

ADD_ACCOUNT_SQL = """
INSERT INTO sandbox_accounts (account_id, customer_id, customer_email, plan, monthly_price_cents,
                              months_active, days_active, sessions, support_tickets)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (account_id) DO NOTHING
"""

HELD_SLOTS_SQL = """
SELECT slot_start FROM sandbox_holds
WHERE resource = %s AND status = 'held' AND slot_start BETWEEN %s AND %s
"""


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sandbox:
    """All four sandbox systems over one pool; pass it wherever an adapter is expected."""

    def __init__(self, pool: ConnectionPool, latency_ms: float | None = None) -> None:
        self.pool = pool
        if latency_ms is None:
            latency_ms = float(os.environ.get("DURAKIT_SANDBOX_LATENCY_MS") or 0)
        self.latency_s = latency_ms / 1000
        self.unavailable = {name.strip() for name in os.environ.get("DURAKIT_SANDBOX_UNAVAILABLE", "").split(",")}

    # Billing

    def add_order(
        self,
        order_id: str,
        *,
        customer_id: str,
        customer_email: str,
        amount_cents: int,
        currency: str = "EUR",
        days_ago: int = 3,
    ) -> None:
        """Seed an order (tests and the demo); an existing order is left as it is."""
        with self.pool.connection() as conn:
            conn.execute(ADD_ORDER_SQL, (order_id, customer_id, customer_email, amount_cents, currency, days_ago))

    def get_order(self, order_id: str) -> Order | None:
        self._wait()
        with self.pool.connection() as conn:
            return conn.execute(ORDER_SQL, (order_id,)).fetchone()  # type: ignore[return-value]

    def refund(self, *, order_id: str, amount_cents: int, idempotency_key: str) -> dict[str, Any]:
        """Refund, or refuse (as payment APIs do) when the order has less left to refund.

        The refusal is an answer like any other: stored under the key and replayed."""

        def apply(conn: Connection) -> dict[str, Any]:
            order = conn.execute(REFUNDABLE_SQL, (order_id,)).fetchone()
            if order is None:
                return {"refund_id": None, "refused": "the order does not exist"}
            if amount_cents > order["left_cents"]:
                return {"refund_id": None, "refused": "the amount exceeds what is left to refund on the order"}
            refund_id = f"re_{uuid.uuid4().hex[:16]}"
            conn.execute(
                "INSERT INTO sandbox_refunds (refund_id, order_id, amount_cents, idempotency_key)"
                " VALUES (%s, %s, %s, %s)",
                (refund_id, order_id, amount_cents, idempotency_key),
            )
            return {"refund_id": refund_id, "order_id": order_id, "amount_cents": amount_cents}

        request = {"order_id": order_id, "amount_cents": amount_cents}
        return self._once("billing", "refund", idempotency_key, request, apply)

    def charge(
        self, *, customer_id: str, amount_cents: int, payment_method: str, description: str, idempotency_key: str
    ) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            if payment_method == "pm_card_declined":
                return {"charge_id": None, "declined": "the card was declined"}
            charge_id = f"ch_{uuid.uuid4().hex[:16]}"
            conn.execute(
                "INSERT INTO sandbox_charges (charge_id, customer_id, amount_cents, description, idempotency_key)"
                " VALUES (%s, %s, %s, %s, %s)",
                (charge_id, customer_id, amount_cents, description, idempotency_key),
            )
            return {"charge_id": charge_id, "amount_cents": amount_cents}

        request = {"customer_id": customer_id, "amount_cents": amount_cents, "payment_method": payment_method,
                   "description": description}
        return self._once("billing", "charge", idempotency_key, request, apply)

    def add_account(
        self,
        account_id: str,
        *,
        customer_id: str,
        customer_email: str,
        plan: str = "pro",
        monthly_price_cents: int = 4900,
        months_active: int = 12,
        days_active: int = 10,
        sessions: int = 40,
        support_tickets: int = 0,
    ) -> None:
        """Seed a subscription (tests and the demo); an existing one is left as it is."""
        with self.pool.connection() as conn:
            conn.execute(ADD_ACCOUNT_SQL, (account_id, customer_id, customer_email, plan, monthly_price_cents,
                                           months_active, days_active, sessions, support_tickets))

    def get_account(self, account_id: str) -> tuple[Account, Usage] | None:
        self._wait()
        with self.pool.connection() as conn:
            row = conn.execute(ACCOUNT_SQL, (account_id,)).fetchone()
        if row is None:
            return None
        usage: Usage = {key: row.pop(key) for key in ("days_active", "sessions", "support_tickets")}  # type: ignore[assignment]
        return row, usage  # type: ignore[return-value]

    def apply_discount(self, *, account_id: str, percent_off: int, months: int, idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            discount_id = f"di_{uuid.uuid4().hex[:16]}"
            conn.execute(
                "INSERT INTO sandbox_discounts (discount_id, account_id, percent_off, months, idempotency_key)"
                " VALUES (%s, %s, %s, %s, %s)",
                (discount_id, account_id, percent_off, months, idempotency_key),
            )
            return {"discount_id": discount_id}

        request = {"account_id": account_id, "percent_off": percent_off, "months": months}
        return self._once("billing", "apply_discount", idempotency_key, request, apply)

    def cancel_subscription(self, *, account_id: str, idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                "UPDATE sandbox_accounts SET status = 'cancelled', cancelled_at = now()"
                " WHERE account_id = %s AND status = 'active' RETURNING cancelled_at",
                (account_id,),
            ).fetchone()
            if row is None:
                return {"cancelled": False, "reason": "no active subscription"}
            return {"cancelled": True, "cancelled_at": iso(row["cancelled_at"])}

        return self._once("billing", "cancel_subscription", idempotency_key, {"account_id": account_id}, apply)

    # Calendar

    def free_slots(self, *, resource: str, around: str, count: int) -> list[str]:
        """Free hourly slots within 14 days of `around`, nearest first (never in the past)."""
        self._wait()
        now = datetime.now(UTC)
        target = max(datetime.fromisoformat(around), now)  # a past request: the nearest slots from now
        with self.pool.connection() as conn:
            held = {row["slot_start"] for row in conn.execute(
                HELD_SLOTS_SQL, (resource, target - timedelta(days=14), target + timedelta(days=14))
            )}
        day0 = target.replace(hour=0, minute=0, second=0, microsecond=0)
        candidates = [
            day0 + timedelta(days=day, hours=hour)
            for day in range(-14, 15)
            for hour in SLOT_HOURS
        ]
        free = [slot for slot in candidates if slot > now and slot != target and slot not in held]
        free.sort(key=lambda slot: (abs(slot - target), slot))
        return [iso(slot) for slot in free[:count]]

    def is_free(self, *, resource: str, slot: str) -> bool:
        """False for a slot that does not exist (outside opening hours, or past) or is held."""
        self._wait()
        start = datetime.fromisoformat(slot)
        if start.hour not in SLOT_HOURS or start <= datetime.now(UTC):
            return False
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) AS held FROM sandbox_holds WHERE resource = %s AND slot_start = %s AND status = 'held'",
                (resource, datetime.fromisoformat(slot)),
            ).fetchone()
        return row["held"] == 0

    def hold_slot(self, *, resource: str, slot: str, customer_id: str, idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            hold_id = f"ho_{uuid.uuid4().hex[:16]}"
            inserted = conn.execute(
                "INSERT INTO sandbox_holds (hold_id, resource, slot_start, customer_id, idempotency_key)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (hold_id, resource, datetime.fromisoformat(slot), customer_id, idempotency_key),
            ).rowcount
            if not inserted:
                return {"hold_id": None, "refused": "the slot was taken meanwhile"}
            return {"hold_id": hold_id, "slot": slot}

        request = {"resource": resource, "slot": slot, "customer_id": customer_id}
        return self._once("calendar", "hold_slot", idempotency_key, request, apply)

    def release_hold(self, *, hold_id: str, idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            conn.execute("UPDATE sandbox_holds SET status = 'released' WHERE hold_id = %s", (hold_id,))
            return {"released": hold_id}

        return self._once("calendar", "release_hold", idempotency_key, {"hold_id": hold_id}, apply)

    # Ticketing

    def create_ticket(
        self, *, customer_id: str, subject: str, summary: str, priority: str, idempotency_key: str
    ) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            ticket_id = f"TCK-{uuid.uuid4().hex[:8].upper()}"
            conn.execute(
                "INSERT INTO sandbox_tickets (ticket_id, customer_id, subject, summary, priority, idempotency_key)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (ticket_id, customer_id, subject, summary, priority, idempotency_key),
            )
            return {"ticket_id": ticket_id}

        request = {"customer_id": customer_id, "subject": subject, "summary": summary, "priority": priority}
        return self._once("ticketing", "create_ticket", idempotency_key, request, apply)

    def assign_queue(self, *, ticket_id: str, queue: str, idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                "INSERT INTO sandbox_assignments (ticket_id, queue, idempotency_key) VALUES (%s, %s, %s)"
                " RETURNING created_at",
                (ticket_id, queue, idempotency_key),
            ).fetchone()
            conn.execute("UPDATE sandbox_tickets SET queue = %s WHERE ticket_id = %s", (queue, ticket_id))
            return {"ticket_id": ticket_id, "queue": queue, "assigned_at": iso(row["created_at"])}

        request = {"ticket_id": ticket_id, "queue": queue}
        return self._once("ticketing", "assign_queue", idempotency_key, request, apply)

    # CRM

    def recent_interactions(self, customer_id: str, limit: int) -> list[str]:
        self._wait()
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT subject FROM sandbox_crm_notes WHERE customer_id = %s ORDER BY id DESC LIMIT %s",
                (customer_id, limit),
            ).fetchall()
        return [row["subject"] for row in rows]

    def log_interaction(
        self, *, customer_id: str, subject: str, body: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                "INSERT INTO sandbox_crm_notes (customer_id, subject, body, idempotency_key)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (customer_id, subject, Jsonb(body), idempotency_key),
            ).fetchone()
            return {"note_id": f"note_{row['id']}"}

        request = {"customer_id": customer_id, "subject": subject, "body": body}
        return self._once("crm", "log_interaction", idempotency_key, request, apply)

    # Email

    def send_email(self, *, to: str, subject: str, body: str, idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                "INSERT INTO sandbox_emails (recipient, subject, body, idempotency_key)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (to, subject, body, idempotency_key),
            ).fetchone()
            return {"message_id": f"msg_{row['id']}"}

        request = {"to": to, "subject": subject, "body": body}
        return self._once("email", "send_email", idempotency_key, request, apply)

    # Audit

    def record(self, *, subject: str, record: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        def apply(conn: Connection) -> dict[str, Any]:
            row = conn.execute(
                "INSERT INTO sandbox_audit_records (subject, record, idempotency_key)"
                " VALUES (%s, %s, %s) RETURNING id",
                (subject, Jsonb(record), idempotency_key),
            ).fetchone()
            return {"audit_id": f"audit_{row['id']}"}

        request = {"subject": subject, "record": record}
        return self._once("audit", "record", idempotency_key, request, apply)

    # The idempotency contract shared by every change

    def _once(
        self,
        system: str,
        operation: str,
        key: str,
        request: dict[str, Any],
        apply: Callable[[Connection], dict[str, Any]],
    ) -> dict[str, Any]:
        """Apply `request` once per key: the receipt, the change and the stored response
        commit together, and a concurrent request with the same key waits for them."""
        self._wait()
        if system in self.unavailable:
            raise TransientAdapterError(f"{system} is unavailable (503 Service Unavailable, DURAKIT_SANDBOX_UNAVAILABLE).")
        with self.pool.connection() as conn, conn.transaction():
            seen = conn.execute(
                RECEIVE_SQL,
                {"key": key, "system": system, "operation": operation, "request": Jsonb(request)},
            ).fetchone()
            if seen["request"] != request:
                raise IdempotencyKeyReused(
                    f"{system}: idempotency key {key} was first used with a different request."
                )
            if seen["response"] is not None:
                return seen["response"]
            response = apply(conn)
            conn.execute(RESPOND_SQL, {"key": key, "response": Jsonb(response)})
            return response

    def _wait(self) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)
