"""`ModelJudgement`: the judgement calls of `durakit.judgement`, answered by an
OpenAI-compatible chat model through langchain-openai.

Each call is one request for a structured answer (OpenAI's `json_schema` response format).
An answer that does not fit the schema, or a refusal, raises `MalformedAnswer`. Transport
failures (429, 5xx, timeout, refused connection) propagate as the openai client's errors
and the client never retries them itself: LangGraph's RetryPolicy does, so every retry
is written to durakit's event log.
"""

from __future__ import annotations

import os
from typing import TypeVar

import openai
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field, ValidationError

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
from durakit.errors import InvalidInput, MalformedAnswer
from durakit.judgement import offer_value
from durakit.templates import money


class RiskAnswer(BaseModel):
    risk: RiskLevel
    score: int = Field(ge=0, le=100)
    reasons: list[str]


class RetentionAnswer(BaseModel):
    percent_off: int = Field(ge=0, le=100)
    months: int = Field(ge=0, le=24)
    rationale: str


class SummaryAnswer(BaseModel):
    summary: str = Field(max_length=600)
    priority: Priority


AnswerT = TypeVar("AnswerT", bound=BaseModel)

RISK_TASK = (
    "You assess the risk of granting a customer's refund request. Answer with a risk level "
    "(low, medium or high), a score from 0 (clearly fine) to 100 (clearly abusive) and short reasons."
)
RETENTION_TASK = (
    "A customer wants to cancel their subscription. Propose a discount that could keep them: "
    "percent_off from 0 (no offer) to 100, for 0 to 24 months, and a one-sentence rationale."
)
SUMMARY_TASK = (
    "Summarize this support conversation for the agent who picks it up, in at most three "
    "sentences, and set its priority: low, normal, high or urgent."
)


class ModelJudgement:
    """Judgement by a chat model; `from_env` builds one from durakit's environment."""

    def __init__(self, chat: ChatOpenAI) -> None:
        self.chat = chat
        self.name = f"model:{chat.model_name}"

    @classmethod
    def from_env(cls, model: str) -> ModelJudgement:
        api_key = os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise InvalidInput(f"DURAKIT_MODEL is {model!r} but OPENAI_API_KEY is not set.")
        timeout = os.environ.get("DURAKIT_MODEL_TIMEOUT") or "30"
        try:
            seconds = float(timeout)
        except ValueError:
            raise InvalidInput(f"DURAKIT_MODEL_TIMEOUT must be a number of seconds, not {timeout!r}.") from None
        chat = ChatOpenAI(
            model=model,
            api_key=api_key,
            base_url=os.environ.get("OPENAI_BASE_URL") or None,
            max_retries=0,  # LangGraph's RetryPolicy retries, so each attempt is in the event log
            timeout=seconds,
            temperature=0,
        )
        return cls(chat)

    def assess_refund_risk(self, order: Order, amount_cents: int, reason: str) -> RiskAssessment:
        facts = {
            "order": order["order_id"],
            "ordered at": order["ordered_at"],
            "order status": order["status"],
            "order amount": money(order["amount_cents"], order["currency"]),
            "already refunded": money(order["refunded_cents"], order["currency"]),
            "refund requested": money(amount_cents, order["currency"]),
            "customer's reason": reason,
        }
        answer = self._ask(RiskAnswer, RISK_TASK, facts)
        return {"risk": answer.risk, "score": answer.score, "reasons": answer.reasons, "assessed_by": self.name}

    def retention_offer(self, account: Account, usage: Usage) -> RetentionOffer:
        facts = {
            "plan": account["plan"],
            "monthly price": money(account["monthly_price_cents"]),
            "customer for": f"{account['months_active']} months",
            "days active in the last 30": usage["days_active"],
            "sessions in the last 30 days": usage["sessions"],
            "support tickets in the last 30 days": usage["support_tickets"],
        }
        answer = self._ask(RetentionAnswer, RETENTION_TASK, facts)
        return {
            "percent_off": answer.percent_off,
            "months": answer.months,
            # The value is arithmetic on our own prices, never the model's to state.
            "value_cents": offer_value(account, answer.percent_off, answer.months),
            "rationale": answer.rationale,
            "offered_by": self.name,
        }

    def summarize_conversation(self, conversation: Conversation) -> ConversationSummary:
        facts = {
            "subject": conversation["subject"],
            "customer's latest message": conversation["message"],
            "earlier contacts, newest first": "; ".join(conversation["history"]) or "none",
        }
        answer = self._ask(SummaryAnswer, SUMMARY_TASK, facts)
        return {"summary": answer.summary, "priority": answer.priority, "summarized_by": self.name}

    def _ask(self, schema: type[AnswerT], task: str, facts: dict[str, object]) -> AnswerT:
        """One request; the task is the system message, the facts (customer text included) the user's."""
        structured = self.chat.with_structured_output(schema, method="json_schema", include_raw=True)
        messages = [SystemMessage(task), HumanMessage("\n".join(f"{key}: {value}" for key, value in facts.items()))]
        try:
            result = structured.invoke(messages)
        except (ValidationError, openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            # The openai client parses a json_schema answer inside the request itself, so bad
            # JSON or a schema violation raises here instead of arriving as `parsing_error`.
            raise MalformedAnswer(f"{self.name} gave an unusable {schema.__name__}: {_reason(exc)}") from exc
        if refused := result["raw"].additional_kwargs.get("refusal"):
            raise MalformedAnswer(f"{self.name} refused: {_one_line(str(refused))}")
        if result["parsing_error"] is not None:
            raise MalformedAnswer(f"{self.name} gave an unusable {schema.__name__}: {_reason(result['parsing_error'])}")
        return result["parsed"]




def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where + ': ' if where else ''}{first['msg']}{more}"
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]
