"""The job queue the workers take their work from: procrastinate's tables, written from
durakit's own transactions.

Two kinds of job exist:

- `advance`: carry a thread on from its checkpoint (a submitted run, a queued answer, a
  run whose worker died; scheduled later: the automatic retry of a failed thread). Locked on the thread id, so procrastinate never hands two of
  one thread to workers at once; at most one waits per thread (its queueing lock).
- `fire_timer`: wake a thread whose timer is due; scheduled at the timer's due time. Not
  locked in procrastinate, which runs the jobs of one lock in the order they were queued,
  so a timer due in 30 days would hold up every run of its thread until then. The
  thread's own lock (`durakit.lease`) keeps it apart from a run of the same thread.

Jobs are deferred with procrastinate's own SQL function in the caller's transaction, so a
thread and the job that runs it (an answer and the job that carries it out) are written
together or not at all. The worker (`durakit.worker`) runs them with procrastinate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg import Connection
from psycopg.types.json import Jsonb

QUEUE = "durakit"
ADVANCE = "durakit.advance"
FIRE_TIMER = "durakit.fire_timer"

DEFER_SQL = """
SELECT (procrastinate_defer_jobs_v1(ARRAY[
    ROW(%(queue)s, %(task)s, 0, %(lock)s, %(queueing_lock)s, %(args)s, %(scheduled_at)s)::procrastinate_job_to_defer_v1
]))[1] AS job_id
"""

RESCHEDULE_SQL = "UPDATE procrastinate_jobs SET scheduled_at = %s WHERE id = %s AND status = 'todo'"
CANCEL_SQL = "SELECT procrastinate_cancel_job_v1(%s, false, true)"

# Jobs left `doing` by a worker whose heartbeat stopped (killed, frozen, cut off): handed
# back to the queue. (A frozen or cut-off worker still holds its threads' locks until its
# sessions end; the handed-back job retries until then.) Locked rows are skipped, and a job that a live worker took meanwhile
# no longer matches when its row is locked, so two sweeping workers never hand one back twice.
STALLED_SQL = """
SELECT id, task_name, lock, args FROM procrastinate_jobs
WHERE status = 'doing' AND queue_name = %(queue)s
  AND (worker_id IS NULL OR worker_id IN (
      SELECT id FROM procrastinate_workers WHERE last_heartbeat < now() - make_interval(secs => %(stalled_after)s)))
FOR UPDATE SKIP LOCKED
"""
RETRY_SQL = "SELECT procrastinate_retry_job_v2(%s, now(), NULL, NULL, NULL)"
# The handed-back run is a recovery, as the event log should say.
RECOVERED_SQL = f"UPDATE procrastinate_jobs SET args = args || '{{\"kind\": \"recovered\"}}' WHERE id = %s AND task_name = '{ADVANCE}'"
# procrastinate's insert trigger wakes idle workers; a job made ready by an update (handed
# back, moved to now) is announced the same way, or it would wait for the next poll.
NOTIFY_SQL = f"""
SELECT pg_notify('procrastinate_queue_v1#{QUEUE}', json_build_object('type', 'job_inserted', 'job_id', %s::bigint)::text)
"""
ABANDON_SQL = "SELECT procrastinate_finish_job_v1(%s, 'aborted', false)"

# A thread's queued run, moved to when its automatic retry is due (a run can be queued
# already: procrastinate keeps one per thread), or cancelled when a person resumes it now.
MOVE_QUEUED_RUN_SQL = f"""
UPDATE procrastinate_jobs SET scheduled_at = %s
WHERE queueing_lock = %s AND status = 'todo' AND task_name = '{ADVANCE}'
"""
CANCEL_RETRY_SQL = f"""
SELECT procrastinate_cancel_job_v1(id, false, true) FROM procrastinate_jobs
WHERE queueing_lock = %s AND status = 'todo' AND task_name = '{ADVANCE}' AND args->>'kind' = %s
"""

# What is due now and later, for `durakit stats` and the worker's metrics.
QUEUE_DEPTH_SQL = """
SELECT count(*) FILTER (WHERE status = 'todo' AND (scheduled_at IS NULL OR scheduled_at <= now())) AS ready,
       count(*) FILTER (WHERE status = 'todo' AND scheduled_at > now()) AS scheduled,
       count(*) FILTER (WHERE status = 'doing') AS running
FROM procrastinate_jobs WHERE queue_name = %s
"""


def defer_advance(conn: Connection, thread_id: str, kind: str) -> int | None:
    """Queue a run of the thread; None if one is queued already (it will do the same)."""
    try:
        with conn.transaction():
            return _defer(conn, ADVANCE, thread_id, {"thread_id": thread_id, "kind": kind}, queueing_lock=thread_id)
    except psycopg.errors.UniqueViolation:
        return None


def defer_retry(conn: Connection, thread_id: str, kind: str, at: datetime) -> None:
    """Queue a run of a failed thread for `at` (a worker's automatic retry)."""
    try:
        with conn.transaction():
            _defer(conn, ADVANCE, thread_id, {"thread_id": thread_id, "kind": kind}, queueing_lock=thread_id,
                   scheduled_at=at)
    except psycopg.errors.UniqueViolation:
        conn.execute(MOVE_QUEUED_RUN_SQL, (at, thread_id))


def cancel_retry(conn: Connection, thread_id: str, kind: str) -> None:
    """Cancel the queued automatic retry of a thread, if one waits (`kind`: its run's kind)."""
    conn.execute(CANCEL_RETRY_SQL, (thread_id, kind))


def defer_timer(conn: Connection, thread_id: str, name: str, due_at: datetime) -> int:
    return _defer(conn, FIRE_TIMER, None, {"thread_id": thread_id, "timer": name}, scheduled_at=due_at)


def _defer(
    conn: Connection,
    task: str,
    lock: str | None,
    args: dict[str, Any],
    *,
    queueing_lock: str | None = None,
    scheduled_at: datetime | None = None,
) -> int:
    row = conn.execute(
        DEFER_SQL,
        {"queue": QUEUE, "task": task, "lock": lock, "queueing_lock": queueing_lock,
         "args": Jsonb(args), "scheduled_at": scheduled_at},
    ).fetchone()
    return row["job_id"]


def reschedule(conn: Connection, job_id: int, at: datetime) -> None:
    if conn.execute(RESCHEDULE_SQL, (at, job_id)).rowcount:
        conn.execute(NOTIFY_SQL, (job_id,))  # wakes a worker if it is due now; harmless if not


def cancel(conn: Connection, job_id: int) -> None:
    conn.execute(CANCEL_SQL, (job_id,))


def hand_back_stalled(conn: Connection, stalled_after: float) -> list[dict[str, Any]]:
    """Put the jobs of workers that stopped beating back in the queue; returns them.

    An `advance` job whose thread has another one queued meanwhile is dropped instead
    (the queued one does the same work)."""
    handed_back = []
    with conn.transaction():
        stalled = conn.execute(STALLED_SQL, {"queue": QUEUE, "stalled_after": stalled_after}).fetchall()
        for job in stalled:
            try:
                with conn.transaction():
                    conn.execute(RECOVERED_SQL, (job["id"],))
                    conn.execute(RETRY_SQL, (job["id"],))
                    conn.execute(NOTIFY_SQL, (job["id"],))
                handed_back.append(job)
            except psycopg.errors.UniqueViolation:
                conn.execute(ABANDON_SQL, (job["id"],))
    return handed_back


def queue_depth(conn: Connection) -> dict[str, int]:
    return conn.execute(QUEUE_DEPTH_SQL, (QUEUE,)).fetchone()
