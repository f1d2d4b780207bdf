"""Typed input, settings, state and agent answer of the escalation template."""

from __future__ import annotations

import re
from typing import Literal, TypedDict, get_args

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from durakit.domain import ConversationSummary, Priority
from durakit.retries import TemplateSettings
from durakit.templates import IDENTIFIER, HumanAnswer, TemplateRequest

ACCEPT = "accept"
QUEUE_NAME = r"[a-z0-9_-]{1,40}"
REASSIGN = "reassign:"  # followed by a queue name
REMIND = "remind"  # the answer the reminder timer gives when nobody accepted in time


class EscalationSettings(TemplateSettings):
    """Where escalations go; e.g. DURAKIT_ESCALATION_REMINDER_HOURS=24."""

    model_config = SettingsConfigDict(env_prefix="DURAKIT_ESCALATION_", frozen=True)

    queues: tuple[str, ...] = ("general", "priority", "billing", "technical")
    queue_for_priority: dict[str, str] = {"urgent": "priority", "high": "priority", "normal": "general", "low": "general"}
    triage_queue: str = "triage"
    """Where a case goes when no usable summary could be made: a person sorts it."""
    reminder_hours: int = Field(48, ge=1)
    """While a ticket is unaccepted, its queue is reminded this often."""
    queue_inbox: str = "{queue}-queue@example.com"
    """Where a queue's reminders go; {queue} is the queue's name."""
    history_limit: int = Field(5, ge=0, le=50)

    @model_validator(mode="after")
    def every_priority_has_a_known_queue(self) -> EscalationSettings:
        names = [*self.queues, self.triage_queue]
        bad = [name for name in names if not re.fullmatch(QUEUE_NAME, name)]
        if bad:
            raise ValueError(f"queue names must match {QUEUE_NAME}: {', '.join(bad)}")
        missing = [p for p in get_args(Priority) if self.queue_for_priority.get(p) not in self.queues]
        if missing:
            raise ValueError(f"queue_for_priority must map {', '.join(missing)} to one of the queues")
        return self


class EscalationRequest(TemplateRequest):
    """A conversation a first-line agent (or bot) could not resolve."""

    conversation_id: str = Field(pattern=IDENTIFIER, description="Identifies the conversation, and so the request.")
    customer_id: str = Field(pattern=IDENTIFIER, description="The customer whose conversation it is.")
    customer_email: str = Field(
        pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}$", description="Where the customer hears who took the case."
    )
    subject: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$", description="One line.")
    message: str = Field(min_length=1, max_length=5000, description="The customer's latest message.")

    def business_key(self) -> str:
        return self.conversation_id


class AgentAnswer(HumanAnswer):
    """A human agent accepts the ticket, or sends it to another queue."""

    decision: str = Field(pattern=rf"^(accept|remind|reassign:{QUEUE_NAME})$")  # "remind" only from the timer


Outcome = Literal["accepted"]


class EscalationState(TypedDict, total=False):
    conversation_id: str
    customer_id: str
    customer_email: str
    subject: str
    message: str
    history: list[str]
    summary: ConversationSummary
    needs_triage: bool
    ticket: dict
    queue: str
    round: int  # queue assignments so far
    assignment: dict
    reminders: int  # sent for the current assignment
    next_reminder_at: str  # ISO 8601
    last_reminder: dict
    agent: dict
    notification: dict
    outcome: Outcome


def initial_state(request: EscalationRequest) -> EscalationState:
    return {
        "conversation_id": request.conversation_id,
        "customer_id": request.customer_id,
        "customer_email": request.customer_email,
        "subject": request.subject,
        "message": request.message,
        "round": 0,
    }
