"""The figures a CX team watches, read from the database (`durakit stats`): how many
threads of each template completed, how often each node had to be retried, how deep
the job queue is, how long the oldest question has waited for a person and how many
failed threads wait for a worker's automatic retry.

The worker's Prometheus metrics (`durakit.metrics`) serve the queue depth and the
oldest waiting approval from the same queries."""

from __future__ import annotations

from typing import Any

from psycopg_pool import ConnectionPool

from durakit import jobs
from durakit.sqltext import utc_text

# Forks' sources are left out: the fork carries the thread on.
TEMPLATES_SQL = """
SELECT template, count(*) AS threads,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       count(*) FILTER (WHERE status = 'failed' AND retry_at IS NOT NULL) AS retrying,
       count(*) FILTER (WHERE status = 'waiting' AND waiting_for = 'person') AS waiting,
       count(*) FILTER (WHERE status = 'waiting' AND waiting_for = 'timer') AS sleeping,
       count(*) FILTER (WHERE status = 'running') AS running
FROM durakit_threads WHERE superseded_by IS NULL
GROUP BY template ORDER BY template
"""

# A node's attempts are the runs that finished plus the retries (failed attempts tried again).
NODES_SQL = """
SELECT t.template, e.node,
       count(*) FILTER (WHERE e.kind = 'node_finished') AS finished,
       count(*) FILTER (WHERE e.kind = 'retried') AS retries
FROM durakit_events e JOIN durakit_threads t USING (thread_id)
WHERE e.kind IN ('node_finished', 'retried') AND e.node IS NOT NULL
GROUP BY t.template, e.node ORDER BY t.template, e.node
"""

# Failed threads a worker retries on its own (`durakit.retries`).
RETRYING_SQL = f"""
SELECT count(*) AS threads, {utc_text('min(retry_at)')} AS next_at
FROM durakit_threads WHERE status = 'failed' AND retry_at IS NOT NULL AND superseded_by IS NULL
"""

OLDEST_WAITING_SQL = """
SELECT extract(epoch FROM now() - min(updated_at))::float AS seconds, count(*) AS waiting
FROM durakit_threads WHERE status = 'waiting' AND waiting_for = 'person' AND superseded_by IS NULL
"""


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def figures(pool: ConnectionPool) -> dict[str, Any]:
    with pool.connection() as conn:
        templates = conn.execute(TEMPLATES_SQL).fetchall()
        nodes = conn.execute(NODES_SQL).fetchall()
        oldest = conn.execute(OLDEST_WAITING_SQL).fetchone()
        retrying = conn.execute(RETRYING_SQL).fetchone()
        queue = jobs.queue_depth(conn)
    for row in templates:
        row["completion_rate"] = ratio(row["completed"], row["threads"])
    for row in nodes:
        row["retry_rate"] = ratio(row["retries"], row["finished"] + row["retries"])
    return {
        "templates": templates,
        "nodes": nodes,
        "queue": queue,
        "waiting_for_a_person": oldest["waiting"],
        "oldest_waiting_approval_seconds": oldest["seconds"],
        "waiting_for_a_retry": retrying["threads"],
        "next_retry_at": retrying["next_at"],
    }


def waiting_approvals(pool: ConnectionPool) -> dict[str, Any]:
    with pool.connection() as conn:
        return conn.execute(OLDEST_WAITING_SQL).fetchone()


def queue_depth(pool: ConnectionPool) -> dict[str, int]:
    with pool.connection() as conn:
        return jobs.queue_depth(conn)
