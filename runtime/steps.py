"""Building blocks for template nodes.

- `step(fn)` wraps a node function so DURAKIT_FAULT can kill the process around it
  and each retry is written to the event log.
- `TRANSIENT_RETRY` is the retry policy for nodes that talk to the outside world:
  exponential backoff with jitter, on the errors `is_transient` names, and on no others.
- `ask_human(...)` pauses the thread until a person answers it with `durakit approve`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from langgraph.runtime import Runtime
from langgraph.types import RetryPolicy, interrupt
from pydantic import BaseModel

from durakit import db, faults
from durakit.adapters import TransientAdapterError

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
AnswerT = TypeVar("AnswerT", bound=BaseModel)


def step(fn: NodeFn) -> NodeFn:
    """The node `fn`, with DURAKIT_FAULT's `before`/`after` points and retry events; it
    refuses to start if this process has lost the thread's lock."""
    name = fn.__name__

    def node(state: Any, runtime: Runtime[Any]) -> dict[str, Any]:
        runtime.context.ensure_held()
        faults.maybe_kill(name, "before")
        attempt = runtime.execution_info.node_attempt
        if attempt > 1:
            runtime.context.events.record(runtime.context.thread_id, "retried", name, attempt=attempt)
        update = fn(state, runtime)
        faults.maybe_kill(name, "after")
        return update

    node.__name__ = name
    node.__qualname__ = fn.__qualname__
    node.__doc__ = fn.__doc__
    return node


def ask_human(question: str, decisions: Sequence[str], answer: type[AnswerT], **details: Any) -> AnswerT:
    """Wait for a person's answer and return it, validated as `answer`.

    The first time, this stops the run: the thread becomes `waiting`, and `durakit
    pending` shows `question` with the allowed `decisions` and `details` (JSON values).
    When someone answers, the node runs again from its first line and this returns the
    answer. So nothing before this call in the same node may change the outside world.
    """
    payload = {"question": question, "decisions": list(decisions), **details}
    return interrupt(payload, response_schema=answer)
