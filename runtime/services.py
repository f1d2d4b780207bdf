"""What a node can reach through `runtime.context`: the thread's id, its template's
settings, the side-effect ledger, the event log, the outside systems and judgement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from durakit.adapters import CRM, AuditLog, Billing, Notifier
from durakit.events import EventLog
from durakit.judgement import Judgement
from durakit.ledger import EffectLedger

SettingsT = TypeVar("SettingsT")


@dataclass(frozen=True)
class Adapters:
    """The outside systems; the sandbox provides all four by default."""

    billing: Billing
    crm: CRM
    notifier: Notifier
    audit: AuditLog


@dataclass(frozen=True)
class Services(Generic[SettingsT]):
    thread_id: str
    settings: SettingsT
    ensure_held: Callable[[], None]  # raises LeaseLost if this process lost the thread's lock
    effects: EffectLedger
    events: EventLog
    billing: Billing
    crm: CRM
    notifier: Notifier
    audit: AuditLog
    judgement: Judgement
