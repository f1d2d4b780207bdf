"""Sandbox billing, CRM, email and audit systems backed by PostgreSQL tables.

They behave like real APIs where it matters for durability: each change arrives with an
idempotency key; the first request with a key is applied and its response stored; a
repeat returns the stored response and applies nothing; a repeat with a different body
is refused. `received` and `applied` per key show what the system saw.
DURAKIT_SANDBOX_LATENCY_MS makes every call take that long, so a kill can land mid-call.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit.adapters import Order

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

ORDER_SQL = """
SELECT o.order_id, o.customer_id, o.customer_email, o.amount_cents, o.currency, o.status,
       to_char(o.ordered_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS ordered_at,
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


class IdempotencyKeyReused(Exception):
    """The same idempotency key came with a different request body."""


class Sandbox:
    """All four sandbox systems over one pool; pass it wherever an adapter is expected."""

    def __init__(self, pool: ConnectionPool, latency_ms: float | None = None) -> None:
        self.pool = pool
        if latency_ms is None:
            latency_ms = float(os.environ.get("DURAKIT_SANDBOX_LATENCY_MS") or 0)
        self.latency_s = latency_ms / 1000

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

    # CRM

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
