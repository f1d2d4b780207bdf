"""Typed input, settings, state and customer answer of the booking template."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal, TypedDict

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from durakit.retries import TemplateSettings
from durakit.templates import IDENTIFIER, HumanAnswer, TemplateRequest

NONE_OF_THESE = "none"


class BookingSettings(TemplateSettings):
    """Booking policy; e.g. DURAKIT_BOOKING_DEPOSIT_CENTS=5000."""

    model_config = SettingsConfigDict(env_prefix="DURAKIT_BOOKING_", frozen=True)

    deposit_cents: int = Field(2000, ge=1)
    """Taken when the slot is held; a declined card releases the hold."""
    alternatives_offered: int = Field(3, ge=1, le=10)
    """How many of the nearest free slots are offered when the requested one is taken."""
    reminder_hours_before: int = Field(48, ge=1)


class BookingRequest(TemplateRequest):
    """A customer's request for an appointment."""

    customer_id: str = Field(pattern=IDENTIFIER, description="The customer who books.")
    customer_email: str = Field(
        pattern=r"^[^@\s]{1,64}@[^@\s]{1,190}$", description="Where confirmations and reminders go."
    )
    service: str = Field("repair-visit", pattern=IDENTIFIER, description="What is booked (a calendar resource).")
    slot: datetime = Field(description="Requested start, on the hour, in the future, e.g. 2026-12-01T10:00:00Z.")
    payment_method: str = Field("pm_card_visa", pattern=IDENTIFIER, description="Card for the deposit.")
    booking_ref: str | None = Field(None, pattern=IDENTIFIER, description="Identifies the request (default: customer and slot).")

    @field_validator("slot")
    @classmethod
    def on_the_hour_in_the_future(cls, slot: datetime, info: ValidationInfo) -> datetime:
        if slot.tzinfo is None:
            raise ValueError("must include a time zone, e.g. 2026-12-01T10:00:00Z")
        slot = slot.astimezone(UTC)
        if (slot.minute, slot.second, slot.microsecond) != (0, 0, 0):
            raise ValueError("must start on the hour")
        # A request stored earlier may be read back after its slot passed (a run that died
        # before its first checkpoint): the calendar then offers other slots.
        if slot <= datetime.now(UTC) and not (info.context or {}).get("stored"):
            raise ValueError("must be in the future")
        return slot

    def business_key(self) -> str:
        return self.booking_ref or f"{self.customer_id}-{self.slot:%Y%m%dT%H%M}"


class SlotChoice(HumanAnswer):
    """The customer's pick among the offered slots (ISO 8601 times), or "none"."""


Outcome = Literal["booked", "payment_failed", "no_slot"]


class BookingState(TypedDict, total=False):
    customer_id: str
    customer_email: str
    service: str
    requested_slot: str  # ISO 8601, UTC
    payment_method: str
    slot: str  # the slot being held or booked
    slot_free: bool
    hold_attempts: int
    alternatives: list[str]
    rounds: int  # times alternatives were offered
    proposal: dict
    choice: dict
    hold: dict
    deposit: dict
    release: dict
    confirmation: dict
    reminder: dict
    outcome: Outcome


def initial_state(request: BookingRequest) -> BookingState:
    slot = request.slot.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "customer_id": request.customer_id,
        "customer_email": request.customer_email,
        "service": request.service,
        "requested_slot": slot,
        "payment_method": request.payment_method,
        "slot": slot,
        "rounds": 0,
    }
