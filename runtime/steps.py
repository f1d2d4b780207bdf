"""Building blocks for template nodes.

- `step(fn, name)` wraps a node function so DURAKIT_FAULT can kill the process around it
  and each retry is written to the event log. Templates do not call it:
  `durakit.template_graph.TemplateGraph.add_node` applies it, and the retry policy, to every node.
- `TRANSIENT_RETRY` is the retry policy for nodes that talk to the outside world:
  exponential backoff with jitter, on the errors `is_transient` names, and on no others.
- `ask_human(...)` pauses the thread until a person answers it with `durakit approve`,
  or until its deadline passes, whichever comes first; the answer is validated as the
  model the node was added with (`add_node(..., asks=Model)`).
- `sleep_until(...)` pauses the thread until a time; a worker wakes it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from langgraph.config import get_config
from langgraph.runtime import Runtime, get_runtime
from langgraph.types import RetryPolicy, interrupt

from durakit import db, faults, metrics
from durakit.errors import InvalidTemplate, TransientAdapterError
from durakit.templates import HumanAnswer
from durakit.timers import TIMER

# The one place that says which failures are worth retrying. Anything else is fatal:
# the thread stops as `failed` and is resumed after the cause is fixed. A lost database
# connection is not retried here: the runner waits for the database and continues the
# whole thread from its checkpoint (durakit.runner, "reconnected").
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientAdapterError,  # an outside system said "try again" (timeout, 429, 503)
    psycopg.OperationalError,  # on a live connection: deadlock, serialization failure, timeout
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if db.is_connection_lost(exc):
        return False
    return isinstance(exc, TRANSIENT_ERRORS) or is_transient_model_error(exc)


def is_transient_model_error(exc: BaseException) -> bool:
    """A model API's 429, 5xx, timeout or lost connection (the openai client's errors)."""
    if "openai" not in sys.modules:
        return False  # no model client loaded, so this cannot be one of its errors
    import openai

    return isinstance(
        exc, (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError, openai.APIConnectionError)
    )


TRANSIENT_RETRY = RetryPolicy(
    initial_interval=0.5,
    backoff_factor=2.0,
    max_interval=10.0,
    max_attempts=4,
    jitter=True,
    retry_on=is_transient,
)

StateT = TypeVar("StateT")
ContextT = TypeVar("ContextT")
NodeFn = Callable[[StateT, Runtime[ContextT]], dict[str, Any]]

# The answer model of the node running now, if it asks a person (set by `step`).
_answer_model: ContextVar[type[HumanAnswer] | None] = ContextVar("answer_model", default=None)


def step(fn: NodeFn, name: str | None = None, *, asks: type[HumanAnswer] | None = None) -> NodeFn:
    """The node `fn` (named `name`), with DURAKIT_FAULT's `before`/`after` points and retry
    events; it refuses to start if this process has lost the thread's lock. `asks` is the
    model `ask_human` validates the node's answer with."""
    name = name or fn.__name__

    def node(state: Any, runtime: Runtime[Any]) -> dict[str, Any]:
        runtime.context.ensure_held()
        faults.maybe_kill(name, "before")
        attempt = runtime.execution_info.node_attempt
        if attempt > 1:
            runtime.context.events.record(runtime.context.thread_id, "retried", name, attempt=attempt)
            metrics.step_retried(name)
        started = time.perf_counter()
        asking = _answer_model.set(asks)
        try:
            update = fn(state, runtime)
        finally:
            _answer_model.reset(asking)
            metrics.step_finished(name, time.perf_counter() - started)
        faults.maybe_kill(name, "after")
        return update

    node.__name__ = name
    node.__qualname__ = fn.__qualname__
    node.__doc__ = fn.__doc__
    node.step_of = fn  # marks a node the kit wrapped
    return node


@dataclass(frozen=True)
class Deadline:
    """Until when a person may answer, and the answer the node gets if nobody does.

    `timer` names the timer, unique within the thread (a question asked again, such as a
    second round of approval, needs a name of its own). `decision` must be one the answer
    model accepts; it need not be among those offered to people."""

    timer: str
    at: datetime
    decision: str
    note: str | None = None


def current_node() -> str:
    return get_config()["metadata"]["langgraph_node"]


def ask_human(
    question: str,
    decisions: Sequence[str],
    *,
    question_id: str | None = None,
    deadline: Deadline | None = None,
    **details: Any,
) -> HumanAnswer:
    """Wait for a person's answer and return it, validated as the answer model the node
    was added with (`add_node(name, fn, asks=Model)`).

    The first time, this stops the run: the thread becomes `waiting`, and `durakit
    pending` shows `question` with the allowed `decisions` and `details` (JSON values).
    When someone answers, the node runs again from its first line and this returns the
    answer. So nothing before this call in the same node may change the outside world.

    `question_id` names this question, unique within the thread (a question asked again
    needs one of its own, such as "approval:2"): `durakit approve --question ID` answers
    only this question, and is refused once another one is pending. Give one when an
    earlier step tells a person how to answer (an approval email), since LangGraph's
    interrupt id is known only once the interrupt is raised. Without it, the question's
    id is the interrupt id.

    With a `deadline`, a worker answers `deadline.decision` (by "durakit:timer") if
    nobody has answered when it passes; an answer given before cancels the timer.
    """
    answer = _answer_model.get()
    if answer is None:
        raise InvalidTemplate(f"Node {current_node()!r} asks a person but was added without its answer model (asks=...).")
    payload: dict[str, Any] = {"question": question, "decisions": list(decisions), **details}
    if question_id is not None:
        payload["question_id"] = question_id
    timers = get_runtime().context.timers if deadline else None
    if deadline is not None:
        timer = timers.schedule(
            deadline.timer, deadline.at, node=current_node(),
            answer={"decision": deadline.decision, "by": TIMER, "note": deadline.note},
        )
        payload |= {"timer": deadline.timer, "wakes_at": timer["due_at"], "on_deadline": deadline.decision}
    given = interrupt(payload, response_schema=answer)
    if deadline is not None:
        timers.cancel(deadline.timer)  # answered in time (a no-op if the deadline's own answer)
    return given


def sleep_until(name: str, until: datetime, **details: Any) -> dict[str, Any]:
    """Pause the thread until `until`, then return the timer as it fired.

    Schedules the timer `name` (once: a node that runs again keeps the first due time)
    and stops the run; the thread is `waiting`, with nothing to answer, until a worker
    fires the timer and runs the node again from its first line. Nothing before this
    call in the same node may change the outside world.
    """
    timer = get_runtime().context.timers.schedule(name, until, node=current_node())
    return interrupt({
        "question": f"Sleeping until {timer['due_at']} ({name})",
        "decisions": [],
        "timer": name,
        "wakes_at": timer["due_at"],
        **details,
    })
