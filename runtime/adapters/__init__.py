"""The outside systems a template talks to, as small interfaces.

Every method that changes something takes an `idempotency_key`: called again with the
same key, a system must return its first answer and change nothing, as payment APIs
do. durakit's ledger supplies the key; a template never makes one up. The sandbox
(`durakit.adapters.sandbox`) implements all of them on PostgreSQL tables; swap in your
own to reach real systems.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict


class TransientAdapterError(Exception):
    """The outside system failed in a way that may pass (timeout, 503): retry later."""


class Order(TypedDict):
    order_id: str
    customer_id: str
    customer_email: str
    amount_cents: int
    currency: str
    status: str
    ordered_at: str  # ISO 8601
    refunded_cents: int


class Billing(Protocol):
    def get_order(self, order_id: str) -> Order | None: ...

    def refund(self, *, order_id: str, amount_cents: int, idempotency_key: str) -> dict[str, Any]:
        """Refund part or all of an order. Returns `refund_id`, or `refund_id: None` and
        `refused` (why) when billing will not refund, e.g. more than is left on the order."""
        ...


class CRM(Protocol):
    def log_interaction(
        self, *, customer_id: str, subject: str, body: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]: ...


class Notifier(Protocol):
    def send_email(
        self, *, to: str, subject: str, body: str, idempotency_key: str
    ) -> dict[str, Any]: ...


class AuditLog(Protocol):
    def record(self, *, subject: str, record: dict[str, Any], idempotency_key: str) -> dict[str, Any]: ...
