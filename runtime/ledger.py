"""The side-effect ledger: every call that changes an outside system goes through here.

For each (thread, step key) the ledger records the request before the call and the
result after it, and gives the outside system a deterministic idempotency key. When the
step runs again (after a crash, a retry, or a resume), a recorded result is returned
without calling; a call that was started but not recorded is made again with the same
key, and the outside system answers it without applying anything twice.

With DURAKIT_ENCRYPTION_KEY set, requests and results are stored encrypted and bound to
their (thread, step) (`durakit.encryption`); a re-run compares the decrypted request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from durakit import faults
from durakit.encryption import EFFECT_REQUEST, EFFECT_RESULT
from durakit.errors import LedgerMismatch
from durakit.lease import FENCE_CTE, Lease, lease_lost

# Every write of the ledger is fenced by the run's lease (`durakit.lease`): a process
# that lost the thread to another records nothing.
START_SQL = f"""
WITH {FENCE_CTE}
INSERT INTO durakit_effects (thread_id, step_key, system, idempotency_key, request, status)
SELECT %(thread_id)s, %(step)s, %(system)s, %(key)s, %(request)s, 'started' WHERE EXISTS (SELECT 1 FROM fence)
ON CONFLICT (thread_id, step_key) DO UPDATE
    SET calls = durakit_effects.calls + (durakit_effects.status = 'started')::int
RETURNING step_key, idempotency_key, status, request, result, inherited_from
"""

# A fork reached an inherited step with another request than its source made: the
# step is a new effect of the fork, under a key of its own.
DIVERGE_SQL = f"""
WITH {FENCE_CTE}
UPDATE durakit_effects
SET system = %(system)s, idempotency_key = %(key)s, request = %(request)s, status = 'started', result = NULL,
    calls = 1, inherited_from = NULL, started_at = now(), completed_at = NULL
WHERE thread_id = %(thread_id)s AND step_key = %(step)s AND inherited_from IS NOT NULL
  AND EXISTS (SELECT 1 FROM fence)
RETURNING step_key, idempotency_key, status, request, result, inherited_from
"""

FINISH_SQL = f"""
WITH {FENCE_CTE}
UPDATE durakit_effects SET status = 'done', result = %(result)s, completed_at = now()
WHERE thread_id = %(thread_id)s AND step_key = %(step)s AND EXISTS (SELECT 1 FROM fence)
"""

THREAD_EFFECTS_SQL = """
SELECT e.step_key, e.system, e.idempotency_key, e.status, e.calls, e.request, e.result, e.inherited_from,
       coalesce(s.received, 0) AS received, coalesce(s.applied, 0) AS applied
FROM durakit_effects e
LEFT JOIN sandbox_requests s ON s.idempotency_key = e.idempotency_key
WHERE e.thread_id = %s
ORDER BY e.started_at, e.step_key
"""


def _opened(row: dict[str, Any], thread_id: str) -> dict[str, Any]:
    """A ledger row with its request and result decrypted."""
    for sealed in (EFFECT_REQUEST, EFFECT_RESULT):
        row[sealed.column] = sealed.open(row[sealed.column], thread_id, row["step_key"])
    return row


def idempotency_key(thread_id: str, step: str) -> str:
    return f"durakit:{thread_id}:{step}"


class EffectLedger:
    """The ledger for one thread, handed to its nodes through the run's context."""

    def __init__(self, pool: ConnectionPool, lease: Lease, ensure_held: Callable[[], None]) -> None:
        self.pool = pool
        self.lease = lease
        self.thread_id = lease.thread_id
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
        params = {**self.lease.params, "step": step}
        start = {
            **params,
            "system": system,
            "key": idempotency_key(self.thread_id, step),
            "request": Jsonb(EFFECT_REQUEST.seal(request, self.thread_id, step)),
        }
        with self.pool.connection() as conn:
            recorded = self._fenced(conn.execute(START_SQL, start).fetchone())
            if recorded["inherited_from"] is not None and recorded["request"] != request:
                recorded = self._fenced(conn.execute(DIVERGE_SQL, start).fetchone())
        if recorded["status"] == "done":
            return recorded["result"]
        if recorded["request"] != request:
            raise LedgerMismatch(
                f"Step {step} of thread {self.thread_id} was first recorded with a different request; "
                f"refusing to call {system} again."
            )
        self.ensure_held()
        # The recorded key, not a fresh one: a fork inherits the key its source used.
        result = call(recorded["idempotency_key"])
        faults.maybe_kill(node or step, "after_effect")
        with self.pool.connection() as conn:
            sealed = Jsonb(EFFECT_RESULT.seal(result, self.thread_id, step))
            finished = conn.execute(FINISH_SQL, {**params, "result": sealed})
        if not finished.rowcount:
            raise lease_lost(self.thread_id)
        return result

    def _fenced(self, row: dict[str, Any] | None) -> dict[str, Any]:
        if row is None:
            raise lease_lost(self.thread_id)
        return _opened(row, self.thread_id)


INHERITED_SQL = """
SELECT step_key, system, idempotency_key, request, result, status, calls, started_at, completed_at
FROM durakit_effects WHERE thread_id = %s
"""

INHERIT_SQL = """
INSERT INTO durakit_effects
    (thread_id, step_key, system, idempotency_key, request, result, status, calls, started_at, completed_at,
     inherited_from)
VALUES (%(thread_id)s, %(step_key)s, %(system)s, %(idempotency_key)s, %(request)s, %(result)s, %(status)s,
        %(calls)s, %(started_at)s, %(completed_at)s, %(inherited_from)s)
"""


def inherit(conn: Connection, source_thread_id: str, fork_thread_id: str) -> int:
    """Give a fork its source's ledger, idempotency keys included, inside the caller's
    transaction: a step the source did or started is not done again by the fork, as
    long as the fork asks for the same thing (if not, `apply` makes it a new effect)."""
    rows = conn.execute(INHERITED_SQL, (source_thread_id,)).fetchall()
    for row in rows:
        row = _opened(row, source_thread_id)
        step = row["step_key"]
        conn.execute(
            INHERIT_SQL,
            {
                **row,
                "thread_id": fork_thread_id,
                "inherited_from": source_thread_id,
                "request": Jsonb(EFFECT_REQUEST.seal(row["request"], fork_thread_id, step)),
                "result": None if row["result"] is None else Jsonb(EFFECT_RESULT.seal(row["result"], fork_thread_id, step)),
            },
        )
    return len(rows)


def thread_effects(pool: ConnectionPool, thread_id: str) -> list[dict[str, Any]]:
    """The thread's effects, with how often the outside system received and applied each."""
    with pool.connection() as conn:
        return [_opened(row, thread_id) for row in conn.execute(THREAD_EFFECTS_SQL, (thread_id,)).fetchall()]
