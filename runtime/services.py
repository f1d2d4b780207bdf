"""What a node can reach through `runtime.context`: the thread's id, its template's
settings, the side-effect ledger, timers, the event log, the outside systems and
judgement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from durakit.adapters import CRM, AuditLog, Billing, Calendar, Notifier, Ticketing
from durakit.events import EventLog
from durakit.judgement import Judgement, MalformedAnswer, RulesJudgement
from durakit.ledger import EffectLedger
from durakit.timers import Timers

SettingsT = TypeVar("SettingsT")
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


@dataclass(frozen=True)
class Services(Generic[SettingsT]):
    thread_id: str
    settings: SettingsT
    ensure_held: Callable[[], None]  # raises LeaseLost if this process lost the thread's lock
    effects: EffectLedger
    timers: Timers
    events: EventLog
    billing: Billing
    crm: CRM
    notifier: Notifier
    audit: AuditLog
    calendar: Calendar
    ticketing: Ticketing
    judgement: Judgement

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
        if_malformed: Literal["rules", "human"],
    ) -> AnswerT | None:
        """Ask `question` of the configured judgement (rules or a model) and record the
        answer in the ledger, so a crash or a retry never asks (and pays) twice.

        If a model's answer is unusable, the event log says so and, per the template's
        choice, the rules answer instead (`"rules"`) or None, for a person to decide
        (`"human"`). Transient model errors propagate, for the node's retry policy.
        """

        def ask(_key: str) -> dict[str, Any]:
            try:
                return {"answer": question(self.judgement)}
            except MalformedAnswer as exc:
                self.events.record(self.thread_id, "model_fallback", step, error=str(exc), fallback=if_malformed)
                fallback = question(RulesJudgement()) if if_malformed == "rules" else None
                return {"answer": fallback, "model_error": str(exc)}

        return self.effects.apply(step, "judgement", facts, ask)["answer"]
