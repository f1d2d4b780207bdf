"""The side-effect ledger: every call that changes an outside system goes through here.

For each (thread, step key) the ledger records the request before the call and the
result after it, and gives the outside system a deterministic idempotency key. When the
step runs again (after a crash, a retry, or a resume), a recorded result is returned
without calling; a call that was started but not recorded is made again with the same
key, and the outside system answers it without applying anything twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit import faults

START_SQL = """
INSERT INTO durakit_effects (thread_id, step_key, system, idempotency_key, request, status)
VALUES (%(thread_id)s, %(step)s, %(system)s, %(key)s, %(request)s, 'started')
ON CONFLICT (thread_id, step_key) DO UPDATE
    SET calls = durakit_effects.calls + (durakit_effects.status = 'started')::int
RETURNING status, request, result
"""

FINISH_SQL = """
UPDATE durakit_effects SET status = 'done', result = %(result)s, completed_at = now()
WHERE thread_id = %(thread_id)s AND step_key = %(step)s
"""

THREAD_EFFECTS_SQL = """
SELECT e.step_key, e.system, e.idempotency_key, e.status, e.calls, e.request, e.result,
       coalesce(s.received, 0) AS received, coalesce(s.applied, 0) AS applied
FROM durakit_effects e
LEFT JOIN sandbox_requests s ON s.idempotency_key = e.idempotency_key
WHERE e.thread_id = %s
ORDER BY e.started_at, e.step_key
"""


class LedgerMismatch(Exception):
    """A step ran again with a different request than the one recorded: refusing to act."""


def idempotency_key(thread_id: str, step: str) -> str:
    return f"durakit:{thread_id}:{step}"


class EffectLedger:
    """The ledger for one thread, handed to its nodes through the run's context."""

    def __init__(self, pool: ConnectionPool, thread_id: str, ensure_held: Callable[[], None]) -> None:
        self.pool = pool
        self.thread_id = thread_id
        self.ensure_held = ensure_held  # raises if this process lost the thread's lock

    def apply(
        self,
        step: str,
        system: str,
        request: dict[str, Any],
        call: Callable[[str], dict[str, Any]],
        *,
        node: str | None = None,
    ) -> dict[str, Any]:
        """Make `call(idempotency_key)` at most once in effect and return its result.

        `request` is what the call sends, recorded for audit and compared on a re-run;
        `step` names the effect within the thread (usually the node's name); `node` is
        the node for DURAKIT_FAULT's `after_effect` point (default: `step`).
        """
        params = {"thread_id": self.thread_id, "step": step}
        with self.pool.connection() as conn:
            recorded = conn.execute(
                START_SQL,
                {**params, "system": system, "key": idempotency_key(self.thread_id, step), "request": Jsonb(request)},
            ).fetchone()
        if recorded["status"] == "done":
            return recorded["result"]
        if recorded["request"] != request:
            raise LedgerMismatch(
                f"Step {step} of thread {self.thread_id} was first recorded with a different request; "
                f"refusing to call {system} again."
            )
        self.ensure_held()
        result = call(idempotency_key(self.thread_id, step))
        faults.maybe_kill(node or step, "after_effect")
        with self.pool.connection() as conn:
            conn.execute(FINISH_SQL, {**params, "result": Jsonb(result)})
        return result


def thread_effects(pool: ConnectionPool, thread_id: str) -> list[dict[str, Any]]:
    """The thread's effects, with how often the outside system received and applied each."""
    with pool.connection() as conn:
        return conn.execute(THREAD_EFFECTS_SQL, (thread_id,)).fetchall()
