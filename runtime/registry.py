"""The thread registry and the decisions table: SQL and small functions over a connection.

A thread's row says which template it runs, what it was asked, where it stands, and
which process advanced it last. Human answers are kept per interrupt, once each.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import Connection
from psycopg.types.json import Jsonb

from durakit.lease import LEASE_HELD_SQL

THREAD_COLUMNS = f"""
    t.thread_id, t.template, t.status, t.request, t.result, t.interrupt, t.attempts,
    t.last_error, t.error_node, t.lease_owner,
    to_char(t.leased_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS leased_at,
    to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
    to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS updated_at,
    {LEASE_HELD_SQL.format(thread_id="t.thread_id")} AS lease_held
"""

GET_SQL = f"SELECT {THREAD_COLUMNS} FROM durakit_threads t WHERE t.thread_id = %s"

LIST_SQL = f"""
SELECT {THREAD_COLUMNS} FROM durakit_threads t
WHERE (%(status)s::text IS NULL OR t.status = %(status)s)
  AND (%(template)s::text IS NULL OR t.template = %(template)s)
ORDER BY t.updated_at DESC, t.thread_id
LIMIT %(limit)s
"""

# Running threads whose process is gone: nobody holds their lock.
ORPHANS_SQL = f"""
SELECT t.thread_id FROM durakit_threads t
WHERE t.status = 'running' AND NOT {LEASE_HELD_SQL.format(thread_id="t.thread_id")}
ORDER BY t.updated_at
"""

CREATE_SQL = """
INSERT INTO durakit_threads (thread_id, template, status, request, business_key)
VALUES (%s, %s, 'running', %s, %s)
ON CONFLICT (thread_id) DO NOTHING
"""

START_SQL = """
UPDATE durakit_threads
SET status = 'running', attempts = attempts + 1, lease_owner = %s, leased_at = now(), updated_at = now()
WHERE thread_id = %s
"""

MARK_RUNNING_SQL = "UPDATE durakit_threads SET status = 'running', updated_at = now() WHERE thread_id = %s"

SETTLE_SQL = """
UPDATE durakit_threads
SET status = %(status)s, result = %(result)s, interrupt = %(interrupt)s,
    last_error = %(error)s, error_node = %(error_node)s, updated_at = now()
WHERE thread_id = %(thread_id)s
"""

DECISION_SQL = """
INSERT INTO durakit_decisions
    (thread_id, interrupt_id, node, question, decision, decided_by, note, answer, authorized_as)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

GET_DECISION_SQL = "SELECT answer FROM durakit_decisions WHERE thread_id = %s AND interrupt_id = %s"

FIND_DECISION_SQL = """
SELECT decided_by, to_char(decided_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS decided_at
FROM durakit_decisions WHERE thread_id = %s AND interrupt_id = %s
"""

WITHDRAW_DECISION_SQL = "DELETE FROM durakit_decisions WHERE thread_id = %s AND interrupt_id = %s"

THREAD_DECISIONS_SQL = """
SELECT interrupt_id, node, question, decision, decided_by, note, authorized_as,
       to_char(decided_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS decided_at
FROM durakit_decisions WHERE thread_id = %s ORDER BY decided_at
"""

CHECKPOINTS_SQL = """
SELECT checkpoint_id, parent_checkpoint_id, (metadata->>'step')::int AS step, metadata->>'source' AS source
FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' ORDER BY checkpoint_id
"""


def get(conn: Connection, thread_id: str) -> dict[str, Any] | None:
    return conn.execute(GET_SQL, (thread_id,)).fetchone()


def list_threads(
    conn: Connection, *, status: str | None = None, template: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    return conn.execute(LIST_SQL, {"status": status, "template": template, "limit": limit}).fetchall()


def orphans(conn: Connection) -> list[str]:
    return [row["thread_id"] for row in conn.execute(ORPHANS_SQL).fetchall()]


def create(conn: Connection, thread_id: str, template: str, request: dict[str, Any], business_key: str) -> bool:
    """Register a new thread; False if the id is taken."""
    return conn.execute(CREATE_SQL, (thread_id, template, Jsonb(request), business_key)).rowcount == 1


def start(conn: Connection, thread_id: str, owner: str) -> None:
    conn.execute(START_SQL, (owner, thread_id))


def settle(
    conn: Connection,
    thread_id: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    interrupt: dict[str, Any] | None = None,
    error: str | None = None,
    error_node: str | None = None,
) -> None:
    conn.execute(
        SETTLE_SQL,
        {
            "thread_id": thread_id,
            "status": status,
            "result": Jsonb(result) if result is not None else None,
            "interrupt": Jsonb(interrupt) if interrupt is not None else None,
            "error": error,
            "error_node": error_node,
        },
    )


def record_decision(
    conn: Connection, thread_id: str, interrupt: dict[str, Any], answer: dict[str, Any], authorized_as: list[str]
) -> bool:
    """Record a person's answer to `interrupt` (the question as the registry holds it),
    with the roles that allowed it; False if this interrupt was answered already.

    The thread turns `running` in the same transaction: should the process die before
    the answer is carried out, `recover` finds the thread and answers again from here.
    """
    try:
        with conn.transaction():
            conn.execute(
                DECISION_SQL,
                (
                    thread_id,
                    interrupt["id"],
                    interrupt.get("node"),
                    interrupt.get("question"),
                    answer["decision"],
                    answer["by"],
                    answer.get("note"),
                    Jsonb(answer),
                    authorized_as,
                ),
            )
            conn.execute(MARK_RUNNING_SQL, (thread_id,))
    except psycopg.errors.UniqueViolation:
        return False
    return True


def decision_for(conn: Connection, thread_id: str, interrupt_id: str) -> dict[str, Any] | None:
    row = conn.execute(GET_DECISION_SQL, (thread_id, interrupt_id)).fetchone()
    return row["answer"] if row else None


def who_decided(conn: Connection, thread_id: str, interrupt_id: str) -> dict[str, Any] | None:
    return conn.execute(FIND_DECISION_SQL, (thread_id, interrupt_id)).fetchone()


def withdraw_decision(conn: Connection, thread_id: str, interrupt_id: str) -> None:
    conn.execute(WITHDRAW_DECISION_SQL, (thread_id, interrupt_id))


def decisions(conn: Connection, thread_id: str) -> list[dict[str, Any]]:
    return conn.execute(THREAD_DECISIONS_SQL, (thread_id,)).fetchall()


def checkpoints(conn: Connection, thread_id: str) -> list[dict[str, Any]]:
    return conn.execute(CHECKPOINTS_SQL, (thread_id,)).fetchall()
