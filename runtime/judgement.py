"""Judgement calls templates delegate: how risky is this refund, what offer might keep
this customer, how urgent is this conversation?

`Judgement` is the interface. `RulesJudgement` is the deterministic, offline default;
`durakit.models.ModelJudgement` asks an OpenAI-compatible model through langchain-openai.
`judgement_from_env()` picks one from DURAKIT_MODEL. A model answer that cannot be used
(malformed JSON, wrong schema, a refusal) raises `MalformedAnswer`; each template says
what it does then (fall back to these rules, or hand the case to a person).
"""

from __future__ import annotations

import os
from typing import Protocol

from durakit.domain import (
    Account,
    Conversation,
    ConversationSummary,
    Order,
    Priority,
    RetentionOffer,
    RiskAssessment,
    RiskLevel,
    Usage,
)

ESCALATION_WORDS = ("chargeback", "fraud", "lawyer", "stolen", "police", "dispute")
URGENT_WORDS = ("outage", "down", "cannot log in", "can't log in", "data loss", "security", "breach")


class Judgement(Protocol):
    def assess_refund_risk(self, order: Order, amount_cents: int, reason: str) -> RiskAssessment: ...

    def retention_offer(self, account: Account, usage: Usage) -> RetentionOffer: ...

    def summarize_conversation(self, conversation: Conversation) -> ConversationSummary: ...


def offer_value(account: Account, percent_off: int, months: int) -> int:
    return account["monthly_price_cents"] * percent_off * months // 100


class RulesJudgement:
    """Decides from facts alone, the same way every time."""

    def assess_refund_risk(self, order: Order, amount_cents: int, reason: str) -> RiskAssessment:
        score, reasons = 0, []
        if amount_cents * 2 > order["amount_cents"]:
            score += 40
            reasons.append("more than half of the order's value")
        if order["refunded_cents"] > 0:
            score += 30
            reasons.append("the order was refunded before")
        words = [word for word in ESCALATION_WORDS if word in reason.lower()]
        if words:
            score += 30
            reasons.append(f"the reason mentions {', '.join(words)}")
        risk: RiskLevel = "low" if score < 30 else "medium" if score < 60 else "high"
        return {"risk": risk, "score": min(score, 100), "reasons": reasons, "assessed_by": "rules"}

    def retention_offer(self, account: Account, usage: Usage) -> RetentionOffer:
        """Loyal customers get more; customers who barely use the product get a short trial
        discount; busy customers with many tickets get the most (they are the ones at risk)."""
        if usage["support_tickets"] >= 3:
            percent, months, why = 50, 3, "several support tickets this month"
        elif account["months_active"] >= 24:
            percent, months, why = 30, 6, "customer for two years or more"
        elif usage["days_active"] < 5:
            percent, months, why = 20, 2, "little use in the last 30 days"
        else:
            percent, months, why = 15, 3, "standard retention offer"
        return {
            "percent_off": percent,
            "months": months,
            "value_cents": offer_value(account, percent, months),
            "rationale": why,
            "offered_by": "rules",
        }

    def summarize_conversation(self, conversation: Conversation) -> ConversationSummary:
        text = conversation["message"].lower()
        if any(word in text for word in URGENT_WORDS):
            priority: Priority = "urgent"
        elif len(conversation["history"]) >= 3 or any(word in text for word in ESCALATION_WORDS):
            priority = "high"
        else:
            priority = "normal"
        first_sentence = conversation["message"].strip().split(". ")[0][:200]
        summary = f"{conversation['subject']}: {first_sentence}"
        if conversation["history"]:
            summary += f" ({len(conversation['history'])} earlier contacts)"
        return {"summary": summary, "priority": priority, "summarized_by": "rules"}


def judgement_from_env() -> Judgement:
    """RulesJudgement unless DURAKIT_MODEL names a model (then OPENAI_API_KEY is needed;
    OPENAI_BASE_URL points at any OpenAI-compatible server)."""
    model = os.environ.get("DURAKIT_MODEL", "").strip()
    if not model or model == "rules":
        return RulesJudgement()
    from durakit.models import ModelJudgement

    return ModelJudgement.from_env(model)
