"""`run_template`: one thread of a template, run on LangGraph's InMemorySaver the way the
runner runs it on PostgreSQL (durability="sync", answers checked with the template's
answer models, resumed from the last checkpoint after a crash), with no database."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.memory import InMemorySaver

from durakit import faults
from durakit.errors import Conflict, InvalidInput, describe_error
from durakit.record import Status
from durakit.testing.memory import Effect, InMemoryEvents, InMemoryLedger, InMemoryTimers, Timer
from durakit.testing.sandbox import InMemorySandbox

if TYPE_CHECKING:
    from langgraph.types import StateSnapshot
    from pydantic_settings import BaseSettings

    from durakit.judgement import Judgement
    from durakit.templates import Template, TemplateRequest

COMPLETED, WAITING, FAILED = Status.COMPLETED, Status.WAITING, Status.FAILED
Answer = Mapping[str, Any]


@dataclass(frozen=True)
class TemplateRun:
    """Where a thread stands after `run_template` (or `answer`, `fire_timer`)."""

    thread_id: str
    status: str  # completed, waiting or failed
    result: dict[str, Any]  # the template's summarize() of the state
    interrupt: dict[str, Any] | None  # the pending question or sleep, as `durakit status` shows it
    error: str | None
    state: dict[str, Any]
    effects: list[Effect]  # in the order they were first made, each with received and applied
    timers: list[Timer]
    events: list[dict[str, Any]]
    crashed: bool  # a crash_at point was reached (and the run resumed after it)
    _thread: _Thread = field(repr=False, compare=False)

    @property
    def sandbox(self) -> InMemorySandbox:
        return self._thread.sandbox

    def answer(self, decision: str, *, by: str, note: str | None = None) -> TemplateRun:
        """Answer the pending question, as `durakit approve` does, and run on."""
        self._thread.answer({"decision": decision, "by": by, "note": note})
        return self._thread.go_on()

    def fire_timer(self, name: str) -> TemplateRun:
        """Fire the timer the thread waits on now, as if it had fallen due, and run on."""
        self._thread.fire_timer(name)
        return self._thread.go_on()


def run_template(
    template: str | Template,
    request: Mapping[str, Any] | str,
    *,
    answers: Mapping[str, Answer | list[Answer]] | None = None,
    timers: Iterable[str] = (),
    sandbox: InMemorySandbox | None = None,
    settings: BaseSettings | Mapping[str, Any] | None = None,
    judgement: Judgement | None = None,
    crash_at: tuple[str, str] | None = None,
) -> TemplateRun:
    """Run a thread of `template` (a name, or your own `Template`) on `request` as far as
    it goes: to its end, a failure, or a question or timer nothing here answers.

    `answers` answer questions by question id or by node ({"decision": ..., "by": ...});
    a list answers that node's questions in turn. Each is checked like `durakit approve`
    checks it (`InvalidInput` with the template's sentence). `timers` names timers that
    fire when the thread waits on them (a sleep, or a deadline of an unanswered question).
    `settings` are the template's settings or overrides of them; `judgement` defaults to
    the rules. `crash_at=(node, point)` kills the run there (a `durakit.faults` point) and
    resumes it from its last checkpoint with a fresh graph, as `durakit resume` would.
    """
    from durakit.graphs import get_template
    from durakit.judgement import RulesJudgement
    from durakit.validation import parse_request

    template = get_template(template) if isinstance(template, str) else template
    if isinstance(settings, Mapping) or settings is None:
        settings = template.settings_model(**(settings or {}))
    timers = {timers} if isinstance(timers, str) else set(timers)
    planned = {key: list(value) if isinstance(value, list) else [value] for key, value in (answers or {}).items()}
    thread = _Thread(template, parse_request(template, request), sandbox or InMemorySandbox(), settings,
                     judgement or RulesJudgement(), planned, timers)
    if crash_at is None:
        thread.start()
        return thread.go_on()
    try:
        with faults.crash_in_process(*crash_at) as crash:
            thread.crash = crash
            thread.start()
            thread.go_on()
    except faults.SimulatedCrash:
        pass  # the process "died": what it saved is all there is
    if crash.happened:
        thread.recover()
    thread.crash = None
    return thread.go_on()


class _Thread:
    """One thread with everything the runner keeps of it: checkpoints, decisions, ledger,
    timers and events."""

    def __init__(self, template: Template, request: TemplateRequest, sandbox: InMemorySandbox,
                 settings: BaseSettings, judgement: Judgement, answers: dict[str, list[Answer]],
                 fire: set[str]) -> None:
        from durakit.services import Adapters, Services

        self.template, self.request, self.sandbox = template, request, sandbox
        self.thread_id = template.thread_id_for(request)
        self.config = {"configurable": {"thread_id": self.thread_id}}
        self.planned, self.fire = answers, fire
        self.crash: faults.InProcessCrash | None = None
        self.crashed = False
        self.saver = _Checkpoints(self.ensure_held)
        self.graph = template.builder.compile(checkpointer=self.saver)
        self.ledger = InMemoryLedger(self.thread_id, self.ensure_held)
        self.timers = InMemoryTimers(self.ensure_held)
        self.events = InMemoryEvents()
        self.decisions: dict[str, dict[str, Any]] = {}  # interrupt id -> its answer
        self.status, self.interrupt, self.error = Status.RUNNING, None, None
        self.services = Services(
            thread_id=self.thread_id, settings=settings, ensure_held=self.ensure_held, effects=self.ledger,
            timers=self.timers, events=self.events, adapters=Adapters.all(sandbox), judgement=judgement,
        )

    def ensure_held(self) -> None:
        """A crashed process holds nothing: whatever it still tries to do fails."""
        if self.crash is not None and self.crash.happened:
            raise faults.SimulatedCrash(f"the process died at {self.crash.node}:{self.crash.point}")

    def start(self) -> None:
        faults.maybe_kill("__start__", "before")
        self.advance(self.template.initial_state(self.request), "run_started")

    def recover(self) -> None:
        """What `durakit resume` does after a crash: a fresh graph, from the last checkpoint."""
        from langgraph.types import Command

        self.crash, self.crashed = None, True
        self.graph = self.template.builder.compile(checkpointer=self.saver)
        snapshot = self.graph.get_state(self.config)
        if snapshot.created_at is None:  # died before its first checkpoint: start again
            self.advance(self.template.initial_state(self.request), "resumed")
        elif snapshot.interrupts:  # answered, perhaps, but not yet carried out: answer again
            given = {pending.id: self.decisions[pending.id] for pending in snapshot.interrupts
                     if pending.id in self.decisions}
            if given:
                self.advance(Command(resume=given), "resumed")
            else:
                self.settle(snapshot)
        elif not snapshot.tasks:
            self.settle(snapshot)
        else:
            self.advance(None, "resumed")

    def go_on(self) -> TemplateRun:
        """Answer and fire what was planned until the thread ends or waits on something else."""
        while self.status == WAITING:
            if (answer := self.planned_answer()) is not None:
                self.answer(answer)
            elif self.interrupt.get("timer") in self.fire:
                self.fire_timer(self.interrupt["timer"])
            else:
                break
        return self.report()

    def planned_answer(self) -> Answer | None:
        if not self.interrupt.get("decisions"):
            return None  # a sleep: only its timer wakes it
        keys = (self.interrupt.get("question_id"), self.interrupt["id"], self.interrupt["node"])
        queue = next((self.planned[key] for key in keys if self.planned.get(key)), None)
        return queue.pop(0) if queue else None

    def answer(self, given: Answer) -> None:
        from langgraph.types import Command

        from durakit.validation import check_answer

        interrupt = self.waiting()
        allowed = interrupt.get("decisions") or []
        if not allowed:
            raise Conflict(f"Thread {self.thread_id} is not waiting for a decision: it sleeps until "
                           f"{interrupt.get('wakes_at')} ({interrupt.get('timer')}); fire_timer wakes it.")
        if given.get("decision") not in allowed:
            raise InvalidInput(f"{given.get('decision')!r} is not an answer to this question; "
                               f"choose one of: {', '.join(allowed)}.")
        answer = check_answer(self.template, interrupt["node"], {"note": None, **given})
        self.decisions[interrupt["id"]] = answer
        self.events.record(self.thread_id, "decided", interrupt["node"], decision=answer["decision"], by=answer["by"])
        self.advance(Command(resume={interrupt["id"]: answer}), "resumed")

    def fire_timer(self, name: str) -> None:
        from langgraph.types import Command

        from durakit.timers import answer as timer_answer

        interrupt = self.waiting()
        timer = self.timers.timers.get(name)
        if timer is None or interrupt.get("timer") != name:
            raise Conflict(f"Thread {self.thread_id} does not wait on timer {name!r} "
                           f"(it waits on {interrupt.get('timer') or 'a person only'}).")
        row = {"name": name, "payload": timer.payload, "due_at": timer.due_at, "before_workers": False}
        answer = timer_answer(self.template.name, row, interrupt)
        timer.status, timer.fired_at = "fired", datetime.now(UTC).isoformat(timespec="seconds")
        self.decisions[interrupt["id"]] = answer
        self.events.record(self.thread_id, "timer_fired", timer.node, timer=name, decision=answer["decision"])
        self.advance(Command(resume={interrupt["id"]: answer}), "woken")

    def waiting(self) -> dict[str, Any]:
        if self.status != WAITING or self.interrupt is None:
            raise Conflict(f"Thread {self.thread_id} is {self.status}, not waiting.")
        return self.interrupt

    def advance(self, graph_input: Any, kind: str) -> None:
        """Run the graph until it finishes, waits or fails, and settle the thread."""
        self.events.record(self.thread_id, kind)
        self.status = Status.RUNNING
        try:
            for update in self.graph.stream(graph_input, self.config, context=self.services,
                                            stream_mode="updates", durability="sync"):
                for node in update:
                    if node != "__interrupt__":
                        self.events.record(self.thread_id, "node_finished", node)
        except Exception as exc:
            self.settle(self.graph.get_state(self.config), error=exc)
            return
        self.settle(self.graph.get_state(self.config))

    def settle(self, snapshot: StateSnapshot, error: Exception | None = None) -> None:
        """Where the checkpoint says the thread stands, as the runner's `_settle` reads it."""
        faults.maybe_kill("__settle__", "before")
        failed = next((task for task in snapshot.tasks if task.error), None)
        if snapshot.interrupts and error is None:
            pending = snapshot.interrupts[0]
            node = next((task.name for task in snapshot.tasks if task.interrupts), None)
            value = pending.value if isinstance(pending.value, dict) else {"question": str(pending.value)}
            self.status, self.error = WAITING, None
            self.interrupt = {"id": pending.id, "node": node, **value, "answer_schema": pending.response_schema}
            timer = self.timers.timers.get(value.get("timer") or "")
            if timer is not None and pending.id not in self.decisions:
                timer.status = "scheduled"  # it waits on this timer again (re-armed, as the runner does)
            self.events.record(self.thread_id, "interrupted", node, interrupt_id=pending.id)
        elif error is not None or snapshot.tasks:
            cause = error or (failed.error if failed else None)
            self.status, self.interrupt = FAILED, None
            self.error = describe_error(cause) if cause else "The run stopped before finishing."
            self.events.record(self.thread_id, "failed", failed.name if failed else None, error=self.error)
        else:
            self.status, self.interrupt, self.error = COMPLETED, None, None
            for timer in self.timers.timers.values():
                timer.status = "cancelled" if timer.status == "scheduled" else timer.status
            self.events.record(self.thread_id, "completed")

    def report(self) -> TemplateRun:
        state = dict(self.graph.get_state(self.config).values)
        effects = []
        for effect in self.ledger.effects.values():
            seen = self.sandbox.requests.get(effect.idempotency_key)
            effects.append(replace(effect, received=seen.received if seen else 0, applied=seen.applied if seen else 0))
        return TemplateRun(
            thread_id=self.thread_id, status=self.status, result=self.template.summarize(state),
            interrupt=self.interrupt, error=self.error, state=state, effects=effects,
            timers=[replace(timer) for timer in self.timers.timers.values()], events=list(self.events.events),
            crashed=self.crashed, _thread=self,
        )


class _Checkpoints(InMemorySaver):
    """InMemorySaver with the `after_writes` fault point of durakit's saver; a crashed
    process can save nothing more."""

    def __init__(self, ensure_held: Callable[[], None]) -> None:
        super().__init__()
        self.ensure_held = ensure_held

    def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        self.ensure_held()
        return super().put(config, checkpoint, metadata, new_versions)

    def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
        self.ensure_held()
        super().put_writes(config, writes, task_id, task_path)
        faults.maybe_kill(task_path.rpartition(", ")[2], "after_writes")
