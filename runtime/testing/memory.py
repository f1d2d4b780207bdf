"""In-memory stand-ins for what a node reaches through `runtime.context` besides the
outside systems: the side-effect ledger, timers and the event log of one thread, with
the methods and the semantics of `durakit.ledger`, `durakit.timers` and `durakit.events`.

`ensure_held` stands for the thread's lock: a "process" that crashed
(`durakit.faults.crash_in_process`) raises there, so it records and calls nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from durakit import faults
from durakit.testing.sandbox import as_json, iso


@dataclass
class Effect:
    """One step's side effect, as the ledger recorded it; `received` and `applied` say
    how often the outside system got its idempotency key and made the change (filled in
    by `TemplateRun.effects`)."""

    step: str
    system: str
    request: dict[str, Any]
    idempotency_key: str
    status: str = "started"  # started: called, or about to be; done: its result is recorded
    calls: int = 1  # times the step started without a recorded result
    result: dict[str, Any] | None = None
    received: int = 0
    applied: int = 0


class InMemoryLedger:
    """`durakit.ledger.EffectLedger.apply`, in memory: the request is recorded before the
    call, a recorded result is returned without calling, a started call is made again
    with the same key, and a re-run with a changed request is refused."""

    def __init__(self, thread_id: str, ensure_held: Callable[[], None]) -> None:
        self.thread_id = thread_id
        self.ensure_held = ensure_held
        self.effects: dict[str, Effect] = {}

    def apply(
        self, step: str, system: str, request: dict[str, Any], call: Callable[[str], dict[str, Any]], *,
        node: str | None = None,
    ) -> dict[str, Any]:
        from durakit.errors import LedgerMismatch
        from durakit.ledger import idempotency_key

        self.ensure_held()
        recorded = self.effects.get(step)
        if recorded is None:
            recorded = Effect(step, system, as_json(request), idempotency_key(self.thread_id, step))
            self.effects[step] = recorded
        elif recorded.status == "started":
            recorded.calls += 1
        if recorded.status == "done":
            return as_json(recorded.result)
        if recorded.request != request:
            raise LedgerMismatch(
                f"Step {step} of thread {self.thread_id} was first recorded with a different request; "
                f"refusing to call {system} again."
            )
        self.ensure_held()
        result = call(recorded.idempotency_key)
        faults.maybe_kill(node or step, "after_effect")
        self.ensure_held()
        recorded.status, recorded.result = "done", as_json(result)
        return result


@dataclass
class Timer:
    name: str
    due_at: str  # ISO 8601 UTC, as `durakit status` shows it
    node: str | None
    payload: dict[str, Any]
    status: str = "scheduled"  # scheduled, cancelled, fired
    fired_at: str | None = None


class InMemoryTimers:
    """`durakit.timers.Timers`, in memory: scheduling is once per name (a node that runs
    again keeps the first due time); nothing fires on its own (`TemplateRun.fire_timer`)."""

    def __init__(self, ensure_held: Callable[[], None]) -> None:
        self.ensure_held = ensure_held
        self.timers: dict[str, Timer] = {}

    def schedule(self, name: str, due_at: datetime, *, node: str | None = None, **payload: Any) -> dict[str, Any]:
        self.ensure_held()
        timer = self.timers.setdefault(name, Timer(name, iso(due_at), node, as_json(payload)))
        return {"name": name, "due_at": timer.due_at}

    def cancel(self, name: str) -> bool:
        self.ensure_held()
        timer = self.timers.get(name)
        if timer is None or timer.status != "scheduled":
            return False
        timer.status = "cancelled"
        return True


@dataclass
class InMemoryEvents:
    """`durakit.events.EventLog`, in memory."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def record(self, thread_id: str, kind: str, node: str | None = None, **detail: Any) -> None:
        self.events.append({"thread_id": thread_id, "kind": kind, "node": node, "detail": as_json(detail)})

    def for_thread(self, thread_id: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["thread_id"] == thread_id]
