"""The business records durakit's outside systems, judgement and templates share: an
order, a subscription account and its usage, a conversation, and what judgement makes of
them. Plain typed dicts in a module of their own, so the adapters, the judgement and the
models import them from here and not from each other."""

from __future__ import annotations

from typing import Literal, TypedDict


class Order(TypedDict):
    order_id: str
    customer_id: str
    customer_email: str
    amount_cents: int
    currency: str
    status: str
    ordered_at: str  # ISO 8601
    refunded_cents: int


RiskLevel = Literal["low", "medium", "high"]
Priority = Literal["low", "normal", "high", "urgent"]


class RiskAssessment(TypedDict):
    risk: RiskLevel
    score: int  # 0..100
    reasons: list[str]
    assessed_by: str  # "rules" or the model's name


class Account(TypedDict):
    account_id: str
    customer_id: str
    customer_email: str
    plan: str
    monthly_price_cents: int
    months_active: int
    status: str  # active, cancelled


class Usage(TypedDict):
    days_active: int  # of the last 30
    sessions: int
    support_tickets: int


class RetentionOffer(TypedDict):
    percent_off: int  # 0..100; 0 means no offer
    months: int  # how long the discount lasts
    value_cents: int  # percent_off of the monthly price, times months
    rationale: str
    offered_by: str


class Conversation(TypedDict):
    customer_id: str
    subject: str
    message: str  # the customer's latest words
    history: list[str]  # earlier interactions, newest first


class ConversationSummary(TypedDict):
    summary: str  # at most a few sentences
    priority: Priority
    summarized_by: str
