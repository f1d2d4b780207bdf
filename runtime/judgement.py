"""Judgement calls a template delegates: how risky is this refund?

`Judgement` is the interface; `RulesJudgement` is the deterministic, offline default.
A model-backed implementation plugs in behind the same interface.
"""

from __future__ import annotations

from typing import Literal, Protocol, TypedDict

from durakit.adapters import Order

RiskLevel = Literal["low", "medium", "high"]

ESCALATION_WORDS = ("chargeback", "fraud", "lawyer", "stolen", "police", "dispute")


class RiskAssessment(TypedDict):
    risk: RiskLevel
    score: int  # 0..100
    reasons: list[str]
    assessed_by: str


class Judgement(Protocol):
    def assess_refund_risk(self, order: Order, amount_cents: int, reason: str) -> RiskAssessment: ...


class RulesJudgement:
    """Scores a refund from facts alone: share of the order, earlier refunds, wording."""

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
