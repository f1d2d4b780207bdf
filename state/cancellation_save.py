"""Typed input, settings, state and answers of the cancellation-save template."""

from __future__ import annotations

from typing import Literal, TypedDict

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from durakit.domain import Account, RetentionOffer, Usage
from durakit.retries import TemplateSettings
from durakit.templates import IDENTIFIER, HumanAnswer, TemplateRequest


class CancellationSettings(TemplateSettings):
    """Retention policy; e.g. DURAKIT_CANCELLATION_APPROVAL_ABOVE_CENTS=10000."""

    model_config = SettingsConfigDict(env_prefix="DURAKIT_CANCELLATION_", frozen=True)

    approval_above_cents: int = Field(5000, ge=0)
    """Offers worth more than this (discount times months) need a supervisor's approval."""
    supervisors_inbox: str = "retention-supervisors@example.com"
    follow_up_days: int = Field(30, ge=1)
    """The thread sleeps this long after the outcome, then checks on the account."""
    supervisor_deadline_hours: int = Field(48, ge=1)
    """How long a supervisor has to answer; unanswered, the offer is cut to the limit (reject)."""


class CancellationRequest(TemplateRequest):
    """A customer asks to cancel their subscription."""

    account_id: str = Field(pattern=IDENTIFIER, description="The subscription account to cancel.")
    reason: str = Field(min_length=1, max_length=2000, description="Why, in the customer's words.")
    request_id: str | None = Field(None, pattern=IDENTIFIER, description="Identifies the request (default: the account).")

    def business_key(self) -> str:
        return self.request_id or self.account_id


class SupervisorAnswer(HumanAnswer):
    decision: Literal["approve", "reject"]


class CustomerAnswer(HumanAnswer):
    decision: Literal["accepted", "declined"]


Outcome = Literal["saved", "cancelled", "not_found"]


class CancellationState(TypedDict, total=False):
    account_id: str
    reason: str
    account: Account | None
    usage: Usage
    offer: RetentionOffer
    needs_approval: bool
    approval_request: dict
    supervisor: dict
    presentation: dict
    customer: dict
    retention: dict
    cancellation: dict
    crm_note: dict
    confirmation: dict
    follow_up: dict
    follow_up_check: dict
    outcome: Outcome


def initial_state(request: CancellationRequest) -> CancellationState:
    return {"account_id": request.account_id, "reason": request.reason}
