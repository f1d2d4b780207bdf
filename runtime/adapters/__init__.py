"""The outside systems a template talks to, as small interfaces.

Every method that changes something takes an `idempotency_key`: called again with the
same key, a system must return its first answer and change nothing, as payment APIs
do. durakit's ledger supplies the key; a template never makes one up. The sandbox
(`durakit.adapters.sandbox`) implements all of them on PostgreSQL tables; swap in your
own to reach real systems.
"""

from __future__ import annotations

from typing import Any, Protocol

from durakit.domain import Account, Order, Usage


class Billing(Protocol):
    def get_order(self, order_id: str) -> Order | None: ...

    def get_account(self, account_id: str) -> tuple[Account, Usage] | None:
        """A subscription and its last 30 days of usage."""
        ...

    def charge(
        self, *, customer_id: str, amount_cents: int, payment_method: str, description: str, idempotency_key: str
    ) -> dict[str, Any]:
        """Returns `charge_id`, or `charge_id: None` and `declined` (why)."""
        ...

    def apply_discount(self, *, account_id: str, percent_off: int, months: int, idempotency_key: str) -> dict[str, Any]: ...

    def cancel_subscription(self, *, account_id: str, idempotency_key: str) -> dict[str, Any]: ...

    def refund(self, *, order_id: str, amount_cents: int, idempotency_key: str) -> dict[str, Any]:
        """Refund part or all of an order. Returns `refund_id`, or `refund_id: None` and
        `refused` (why) when billing will not refund, e.g. more than is left on the order."""
        ...


class CRM(Protocol):
    def recent_interactions(self, customer_id: str, limit: int) -> list[str]:
        """Subjects of the customer's latest interactions, newest first."""
        ...

    def log_interaction(
        self, *, customer_id: str, subject: str, body: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]: ...


class Notifier(Protocol):
    def send_email(
        self, *, to: str, subject: str, body: str, idempotency_key: str
    ) -> dict[str, Any]: ...


class Calendar(Protocol):
    def free_slots(self, *, resource: str, around: str, count: int) -> list[str]:
        """The `count` free slots nearest to `around` (ISO 8601 times), nearest first."""
        ...

    def is_free(self, *, resource: str, slot: str) -> bool: ...

    def hold_slot(self, *, resource: str, slot: str, customer_id: str, idempotency_key: str) -> dict[str, Any]:
        """Returns `hold_id`, or `hold_id: None` and `refused` when the slot was taken meanwhile."""
        ...

    def release_hold(self, *, hold_id: str, idempotency_key: str) -> dict[str, Any]: ...


class Ticketing(Protocol):
    def create_ticket(
        self, *, customer_id: str, subject: str, summary: str, priority: str, idempotency_key: str
    ) -> dict[str, Any]:
        """Returns `ticket_id`."""
        ...

    def assign_queue(self, *, ticket_id: str, queue: str, idempotency_key: str) -> dict[str, Any]:
        """Returns `assigned_at` (ISO 8601)."""
        ...


class AuditLog(Protocol):
    def record(self, *, subject: str, record: dict[str, Any], idempotency_key: str) -> dict[str, Any]: ...
