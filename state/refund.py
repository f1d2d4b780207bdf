"""Typed input, settings, state and human answer of the refund template."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal, TypedDict

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from durakit.domain import Order, RiskAssessment
from durakit.retries import TemplateSettings
from durakit.templates import IDENTIFIER, HumanAnswer, TemplateRequest


class RefundSettings(TemplateSettings):
    """Refund policy. Each field can be set from the environment, for example
    DURAKIT_REFUND_AUTO_APPROVE_LIMIT=250."""

    model_config = SettingsConfigDict(env_prefix="DURAKIT_REFUND_", frozen=True)

    auto_approve_limit: Decimal = Field(Decimal("100.00"), ge=0)
    """Refunds up to this amount with low risk are issued without asking anyone."""
    refund_window_days: int = Field(30, ge=0)
    """Orders older than this are not refundable."""
    approvals_inbox: str = "refund-approvals@example.com"
    approval_deadline_hours: int = Field(48, ge=1)
    """How long a person has to answer an approval request before the fallback applies."""
    on_approval_deadline: Literal["escalate", "reject"] = "escalate"
    """What an unanswered approval leads to: ask the escalations inbox (whose own deadline
    then rejects), or reject at once."""
    escalations_inbox: str = "refund-escalations@example.com"
    """Where approval requests are sent."""


class RefundRequest(TemplateRequest):
    """A customer's request to refund (part of) an order."""

    order_id: str = Field(pattern=IDENTIFIER, description="The order to refund.")
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, description="Amount to refund, e.g. 49.90.")
    reason: str = Field(min_length=1, max_length=2000, description="The customer's reason, in their words.")
    ticket_id: str | None = Field(
        None, pattern=IDENTIFIER, description="The support ticket that asked for it; identifies the request."
    )

    def business_key(self) -> str:
        return self.ticket_id or self.order_id


class ApprovalAnswer(HumanAnswer):
    """A person's answer to an approval request."""

    decision: Literal["approve", "reject", "escalate"]  # "escalate" only from the deadline


class Eligibility(TypedDict):
    eligible: bool
    reasons: list[str]


Outcome = Literal["refunded", "rejected", "ineligible"]


class RefundState(TypedDict, total=False):
    # The request
    order_id: str
    amount_cents: int
    reason: str
    ticket_id: str | None
    # What the steps found and did
    order: Order | None
    eligibility: Eligibility
    risk: RiskAssessment
    route: Literal["auto_approve", "needs_approval", "ineligible"]
    approval_request: dict
    approval_round: int  # 1, and 2 once escalated
    approval: dict  # an ApprovalAnswer, as JSON
    escalation: dict
    refund: dict
    crm_note: dict
    notification: dict
    audit: dict
    outcome: Outcome


def initial_state(request: RefundRequest) -> RefundState:
    return {
        "order_id": request.order_id,
        "amount_cents": int(request.amount * 100),
        "reason": request.reason,
        "ticket_id": request.ticket_id,
    }
