"""The thread registry and the decisions table: SQL and small functions over a connection.

A thread's row says which template it runs, what it was asked, where it stands, and
which process advanced it last. Human answers are kept per interrupt, once each.

With DURAKIT_ENCRYPTION_KEY set, the columns that hold customer data (a thread's request,
result, interrupt and last error; a decision's question, note and answer) are stored
encrypted and bound to their row (`durakit.encryption`); the functions here take and return
them decrypted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.types.json import Jsonb

from durakit import timers
from durakit.encryption import (
    DECISION_ANSWER,
    DECISION_NOTE,
    DECISION_QUESTION,
    THREAD_INTERRUPT,
    THREAD_LAST_ERROR,
    THREAD_REQUEST,
    THREAD_RESULT,
)
from durakit.lease import LEASE_HELD_SQL
from durakit.record import Question, ThreadRecord
from durakit.sqltext import utc_text

# A run of the thread waits in the job queue for a worker (`durakit.jobs`).
QUEUED_SQL = """EXISTS (
    SELECT 1 FROM procrastinate_jobs j WHERE j.queueing_lock = {thread_id} AND j.status = 'todo'
)"""
# How long a worker may stay silent before its jobs count as abandoned (`durakit worker
# --stalled-after`; workers beat every second).
STALLED_AFTER_SECONDS = 5.0

# A live worker has taken a run of the thread (it holds the thread's lock, or will in a
# moment). A job of a worker that stopped beating does not count: its thread is an orphan.
TAKEN_SQL = f"""EXISTS (
    SELECT 1 FROM procrastinate_jobs j JOIN procrastinate_workers w ON w.id = j.worker_id
    WHERE j.lock = {{thread_id}} AND j.status = 'doing'
      AND w.last_heartbeat > now() - interval '{STALLED_AFTER_SECONDS} seconds'
)"""

THREAD_COLUMNS = f"""
    t.thread_id, t.template, t.status, t.request, t.business_key, t.superseded_by, t.result, t.interrupt, t.attempts,
    t.last_error, t.error_node, t.lease_owner,
    {utc_text('t.leased_at')} AS leased_at,
    {utc_text('t.created_at')} AS created_at,
    {utc_text('t.updated_at')} AS updated_at,
    {LEASE_HELD_SQL.format(thread_id="t.thread_id")} AS lease_held,
    t.worker_managed, t.waiting_for,
    {utc_text('t.retry_at')} AS retry_at, t.auto_retries, t.retry_limit,
    (SELECT {utc_text('min(tm.due_at)')} FROM durakit_timers tm
     WHERE tm.thread_id = t.thread_id AND tm.status = 'scheduled') AS next_wake,
    {QUEUED_SQL.format(thread_id="t.thread_id")} AS queued,
    {TAKEN_SQL.format(thread_id="t.thread_id")} AS taken
"""

GET_SQL = f"SELECT {THREAD_COLUMNS} FROM durakit_threads t WHERE t.thread_id = %s"

LIST_WHERE = """
WHERE (%(status)s::text IS NULL OR t.status = %(status)s)
  AND (%(template)s::text IS NULL OR t.template = %(template)s)
  AND (%(waiting_for)s::text IS NULL OR t.waiting_for = %(waiting_for)s)
"""
# One page of a listing, newest first (`durakit threads`) or oldest first (`durakit
# pending`: those waiting longest are nearest their deadlines); the thread id breaks ties,
# so pages neither overlap nor skip a row.
LIST_NEWEST_SQL = f"""
SELECT {THREAD_COLUMNS} FROM durakit_threads t {LIST_WHERE}
ORDER BY t.updated_at DESC, t.thread_id
LIMIT %(limit)s OFFSET %(offset)s
"""
LIST_OLDEST_SQL = f"""
SELECT {THREAD_COLUMNS} FROM durakit_threads t {LIST_WHERE}
ORDER BY t.updated_at, t.thread_id
LIMIT %(limit)s OFFSET %(offset)s
"""
COUNT_SQL = f"SELECT count(*) AS total FROM durakit_threads t {LIST_WHERE}"
# The page and its total from one snapshot, so that they agree.
ONE_SNAPSHOT_SQL = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"

# Running threads whose process is gone: nobody holds their lock, and no worker has
# (or is about to take) a run of them.
ORPHANS_SQL = f"""
SELECT t.thread_id FROM durakit_threads t
WHERE t.status = 'running' AND t.superseded_by IS NULL AND NOT {LEASE_HELD_SQL.format(thread_id="t.thread_id")}
  AND NOT {QUEUED_SQL.format(thread_id="t.thread_id")} AND NOT {TAKEN_SQL.format(thread_id="t.thread_id")}
ORDER BY t.updated_at
LIMIT %s
"""

CREATE_SQL = """
INSERT INTO durakit_threads (thread_id, template, status, request, business_key, worker_managed)
VALUES (%s, %s, 'running', %s, %s, %s)
ON CONFLICT (thread_id) DO NOTHING
"""

START_SQL = """
UPDATE durakit_threads
SET status = 'running', attempts = attempts + 1, lease_owner = %s, leased_at = now(), updated_at = now()
WHERE thread_id = %s
"""

MARK_RUNNING_SQL = "UPDATE durakit_threads SET status = 'running', updated_at = now() WHERE thread_id = %s"

# Returns the thread as it stands now, so settling a run reads its row no second time.
SETTLE_SQL = f"""
UPDATE durakit_threads AS t
SET status = %(status)s, result = %(result)s, interrupt = %(interrupt)s, waiting_for = %(waiting_for)s,
    last_error = %(error)s, error_node = %(error_node)s, updated_at = now()
WHERE t.thread_id = %(thread_id)s
RETURNING {THREAD_COLUMNS}
"""

DECISION_SQL = """
INSERT INTO durakit_decisions
    (thread_id, interrupt_id, node, question, decision, decided_by, note, answer, authorized_as)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

GET_DECISION_SQL = "SELECT answer FROM durakit_decisions WHERE thread_id = %s AND interrupt_id = %s"

FIND_DECISION_SQL = f"""
SELECT decided_by, {utc_text('decided_at')} AS decided_at
FROM durakit_decisions WHERE thread_id = %s AND interrupt_id = %s
"""

WITHDRAW_DECISION_SQL = "DELETE FROM durakit_decisions WHERE thread_id = %s AND interrupt_id = %s"

THREAD_DECISIONS_SQL = f"""
SELECT interrupt_id, node, question, decision, decided_by, note, authorized_as,
       {utc_text('decided_at')} AS decided_at
FROM durakit_decisions WHERE thread_id = %s ORDER BY decided_at
"""

# `next`: the nodes this checkpoint starts, read off the `branch:to:NODE` channels the
# step before it wrote (how LangGraph 1.x routes), without loading LangGraph.
CHECKPOINTS_SQL = """
SELECT checkpoint_id, parent_checkpoint_id, (metadata->>'step')::int AS step, metadata->>'source' AS source,
       ARRAY(SELECT substr(channel, 11) FROM jsonb_array_elements_text(checkpoint -> 'updated_channels') AS channel
             WHERE channel LIKE 'branch:to:%%' ORDER BY 1) AS next
FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' ORDER BY checkpoint_id
"""


# Automatic retries of a failed thread (`durakit.retries`): planned in the transaction that
# marks it failed, and forgotten once it gets on or a person resumes it.
RETRIES_MADE_SQL = "SELECT auto_retries FROM durakit_threads WHERE thread_id = %s"
PLAN_RETRY_SQL = """
UPDATE durakit_threads
SET retry_at = now() + make_interval(secs => %(delay)s), auto_retries = %(retry)s, retry_limit = %(limit)s
WHERE thread_id = %(thread_id)s
RETURNING retry_at
"""
NO_RETRY_SQL = "UPDATE durakit_threads SET retry_at = NULL, retry_limit = %s WHERE thread_id = %s"
# Failed threads whose planned retry has no job (a job lost to a race with the stalled-job
# sweep, or deleted by hand): the sweep queues one again.
UNQUEUED_RETRIES_SQL = f"""
SELECT t.thread_id, t.retry_at FROM durakit_threads t
WHERE t.status = 'failed' AND t.retry_at IS NOT NULL AND t.superseded_by IS NULL
  AND NOT {QUEUED_SQL.format(thread_id="t.thread_id")} AND NOT {TAKEN_SQL.format(thread_id="t.thread_id")}
ORDER BY t.retry_at
LIMIT %s
"""
FORGET_RETRIES_SQL = """
UPDATE durakit_threads SET retry_at = NULL, auto_retries = 0, retry_limit = NULL
WHERE thread_id = %s AND (retry_at IS NOT NULL OR auto_retries > 0 OR retry_limit IS NOT NULL)
"""


def _open_thread(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """A thread row with its customer data decrypted (as stored, without a key)."""
    if row is None:
        return None
    thread_id = row["thread_id"]
    for sealed in (THREAD_REQUEST, THREAD_RESULT, THREAD_INTERRUPT, THREAD_LAST_ERROR):
        row[sealed.column] = sealed.open(row[sealed.column], thread_id)
    return row


def get(conn: Connection, thread_id: str) -> dict[str, Any] | None:
    return _open_thread(conn.execute(GET_SQL, (thread_id,)).fetchone())


def record(conn: Connection, thread_id: str) -> ThreadRecord | None:
    """The thread's row, typed."""
    row = get(conn, thread_id)
    return None if row is None else ThreadRecord.from_row(row)


def list_threads(
    conn: Connection,
    *,
    status: str | None = None,
    template: str | None = None,
    waiting_for: str | None = None,
    limit: int = 100,
    offset: int = 0,
    oldest_first: bool = False,
) -> tuple[list[ThreadRecord], int]:
    """One page of the threads that match, and how many match in all."""
    params = {"status": status, "template": template, "waiting_for": waiting_for, "limit": limit, "offset": offset}
    with conn.transaction():
        conn.execute(ONE_SNAPSHOT_SQL)
        rows = conn.execute(LIST_OLDEST_SQL if oldest_first else LIST_NEWEST_SQL, params).fetchall()
        total = conn.execute(COUNT_SQL, params).fetchone()["total"]
    return [ThreadRecord.from_row(_open_thread(row)) for row in rows], total


def orphans(conn: Connection, limit: int = 10_000) -> list[str]:
    return [row["thread_id"] for row in conn.execute(ORPHANS_SQL, (limit,)).fetchall()]


def create(
    conn: Connection,
    thread_id: str,
    template: str,
    request: dict[str, Any],
    business_key: str,
    *,
    worker_managed: bool = False,
) -> bool:
    """Register a new thread; False if the id is taken."""
    stored = Jsonb(THREAD_REQUEST.seal(request, thread_id))
    return conn.execute(CREATE_SQL, (thread_id, template, stored, business_key, worker_managed)).rowcount == 1


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
) -> ThreadRecord:
    """Write where the thread stands; returns it as it stands then (timers and queue
    included, as far as this transaction has changed them)."""
    row = conn.execute(
        SETTLE_SQL,
        {
            "thread_id": thread_id,
            "status": status,
            "result": Jsonb(THREAD_RESULT.seal(result, thread_id)) if result is not None else None,
            "interrupt": Jsonb(THREAD_INTERRUPT.seal(interrupt, thread_id)) if interrupt is not None else None,
            "waiting_for": None if interrupt is None else Question.from_interrupt(interrupt).waiting_for,
            "error": THREAD_LAST_ERROR.seal(error, thread_id),
            "error_node": error_node,
        },
    ).fetchone()
    return ThreadRecord.from_row(_open_thread(row))


def record_decision(
    conn: Connection, thread_id: str, interrupt: dict[str, Any], answer: dict[str, Any], authorized_as: list[str]
) -> bool:
    """Record a person's answer to `interrupt` (the question as the registry holds it),
    with the roles that allowed it; False if this interrupt was answered already.

    The thread turns `running` in the same transaction: should the process die before
    the answer is carried out, `recover` finds the thread and answers again from here.
    """
    row = (thread_id, interrupt["id"])
    try:
        with conn.transaction():
            conn.execute(
                DECISION_SQL,
                (
                    thread_id,
                    interrupt["id"],
                    interrupt.get("node"),
                    DECISION_QUESTION.seal(interrupt.get("question"), *row),
                    answer["decision"],
                    answer["by"],
                    DECISION_NOTE.seal(answer.get("note"), *row),
                    Jsonb(DECISION_ANSWER.seal(answer, *row)),
                    authorized_as,
                ),
            )
            conn.execute(MARK_RUNNING_SQL, (thread_id,))
    except psycopg.errors.UniqueViolation:
        return False
    return True


def decision_for(conn: Connection, thread_id: str, interrupt_id: str) -> dict[str, Any] | None:
    row = conn.execute(GET_DECISION_SQL, (thread_id, interrupt_id)).fetchone()
    return DECISION_ANSWER.open(row["answer"], thread_id, interrupt_id) if row else None


def who_decided(conn: Connection, thread_id: str, interrupt_id: str) -> dict[str, Any] | None:
    return conn.execute(FIND_DECISION_SQL, (thread_id, interrupt_id)).fetchone()


def withdraw_decision(conn: Connection, thread_id: str, interrupt_id: str) -> None:
    conn.execute(WITHDRAW_DECISION_SQL, (thread_id, interrupt_id))


def decisions(conn: Connection, thread_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(THREAD_DECISIONS_SQL, (thread_id,)).fetchall()
    for row in rows:
        for sealed in (DECISION_QUESTION, DECISION_NOTE):
            row[sealed.column] = sealed.open(row[sealed.column], thread_id, row["interrupt_id"])
    return rows


def supersede(conn: Connection, thread_id: str, fork_thread_id: str) -> None:
    """Mark a forked thread as replaced by its fork, and cancel its pending timers."""
    conn.execute("UPDATE durakit_threads SET superseded_by = %s WHERE thread_id = %s", (fork_thread_id, thread_id))
    timers.cancel_all(conn, thread_id)


def has_checkpoints(conn: Connection, thread_id: str) -> bool:
    return conn.execute("SELECT 1 FROM checkpoints WHERE thread_id = %s LIMIT 1", (thread_id,)).fetchone() is not None


def checkpoints(conn: Connection, thread_id: str) -> list[dict[str, Any]]:
    return conn.execute(CHECKPOINTS_SQL, (thread_id,)).fetchall()


def retries_made(conn: Connection, thread_id: str) -> int:
    """The automatic retries made since the thread last got on (or a person resumed it)."""
    return conn.execute(RETRIES_MADE_SQL, (thread_id,)).fetchone()["auto_retries"]


def plan_retry(conn: Connection, thread_id: str, *, delay: float, retry: int, limit: int) -> datetime:
    """Record that automatic retry number `retry` (of `limit`) is due in `delay` seconds;
    returns when."""
    params = {"thread_id": thread_id, "delay": delay, "retry": retry, "limit": limit}
    return conn.execute(PLAN_RETRY_SQL, params).fetchone()["retry_at"]


def plan_no_retry(conn: Connection, thread_id: str, *, limit_reached: int | None = None) -> None:
    """No automatic retry: the failure is not transient, or the retries reached `limit_reached`."""
    conn.execute(NO_RETRY_SQL, (limit_reached, thread_id))


def unqueued_retries(conn: Connection, limit: int = 500) -> list[dict[str, Any]]:
    """Failed threads with a planned retry and no job to run it: thread_id, retry_at."""
    return conn.execute(UNQUEUED_RETRIES_SQL, (limit,)).fetchall()


def forget_retries(conn: Connection, thread_id: str) -> bool:
    """Start the count of automatic retries again; False if there was nothing to forget."""
    return conn.execute(FORGET_RETRIES_SQL, (thread_id,)).rowcount > 0
