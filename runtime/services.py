"""What a node can reach through `runtime.context`: the thread's id, its template's
settings, the side-effect ledger, timers, the event log, the outside systems and
judgement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from durakit.adapters import CRM, AuditLog, Billing, Calendar, Notifier, Ticketing
from durakit.errors import MalformedAnswer
from durakit.events import EventLog
from durakit.judgement import Judgement, RulesJudgement
from durakit.ledger import EffectLedger
from durakit.timers import Timers

SettingsT = TypeVar("SettingsT")
Fallback = Literal["rules", "human"]  # what a judgement falls back to: the rules, or a person
AnswerT = TypeVar("AnswerT")


@dataclass(frozen=True)
class Adapters:
    """The outside systems; the sandbox provides all of them by default."""

    billing: Billing
    crm: CRM
    notifier: Notifier
    audit: AuditLog
    calendar: Calendar
    ticketing: Ticketing

    @classmethod
    def all(cls, system: Any) -> Adapters:
        """One object standing in for every outside system (the sandbox does)."""
        return cls(billing=system, crm=system, notifier=system, audit=system, calendar=system, ticketing=system)


@dataclass(frozen=True)
class Services(Generic[SettingsT]):
    thread_id: str
    settings: SettingsT
    ensure_held: Callable[[], None]  # raises LeaseLost if this process lost the thread's lock
    effects: EffectLedger
    timers: Timers
    events: EventLog
    adapters: Adapters
    judgement: Judgement

    # The outside systems, as nodes name them (`runtime.context.billing`).

    @property
    def billing(self) -> Billing:
        return self.adapters.billing

    @property
    def crm(self) -> CRM:
        return self.adapters.crm

    @property
    def notifier(self) -> Notifier:
        return self.adapters.notifier

    @property
    def audit(self) -> AuditLog:
        return self.adapters.audit

    @property
    def calendar(self) -> Calendar:
        return self.adapters.calendar

    @property
    def ticketing(self) -> Ticketing:
        return self.adapters.ticketing

    def send_email(self, step: str, *, to: str, subject: str, body: str, node: str | None = None) -> dict[str, Any]:
        """Send an email through the ledger: once per (thread, step), whatever happens."""
        request = {"to": to, "subject": subject, "body": body}
        return self.effects.apply(
            step, "email", request, lambda key: self.notifier.send_email(**request, idempotency_key=key), node=node
        )

    def judge(
        self,
        step: str,
        facts: dict[str, Any],
        question: Callable[[Judgement], AnswerT],
        *,
        if_malformed: Fallback,
        if_unavailable: Fallback | None = None,
    ) -> AnswerT | None:
        """Ask `question` of the configured judgement (rules or a model) and record the
        answer in the ledger, so a crash or a retry never asks (and pays) twice.

        If a model's answer is unusable, the event log says so and, per the template's
        choice, the rules answer instead (`"rules"`) or None, for a person to decide
        (`"human"`). Transient model errors (429, 5xx, timeout, no connection) propagate,
        for the node's retry policy; with `if_unavailable`, the node's last attempt takes
        that fallback instead of failing the thread.
        """

        def ask(_key: str) -> dict[str, Any]:
            try:
                return {"answer": question(self.judgement)}
            except MalformedAnswer as exc:
                return fall_back(if_malformed, "the model's answer was unusable", exc)
            except Exception as exc:
                if if_unavailable is None or not is_last_try_of_unavailable_model(exc):
                    raise
                return fall_back(if_unavailable, "the model stayed unavailable through the step's retries", exc)

        def fall_back(fallback: Fallback, why: str, exc: Exception) -> dict[str, Any]:
            self.events.record(self.thread_id, "model_fallback", step, error=str(exc), fallback=fallback, why=why)
            answer = question(RulesJudgement()) if fallback == "rules" else None
            return {"answer": answer, "model_error": str(exc)}

        return self.effects.apply(step, "judgement", facts, ask)["answer"]


def is_last_try_of_unavailable_model(exc: Exception) -> bool:
    """A model API's transient error on the node's last attempt (`TRANSIENT_RETRY`)."""
    from langgraph.runtime import get_runtime

    from durakit.steps import TRANSIENT_RETRY, is_transient_model_error

    if not is_transient_model_error(exc):
        return False
    return get_runtime().execution_info.node_attempt >= TRANSIENT_RETRY.max_attempts
