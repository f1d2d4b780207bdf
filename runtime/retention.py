"""Retention (`durakit prune`): finished threads give back the space their checkpoints take.

Only `completed` threads are touched. A running or waiting thread needs its history,
and so does a failed one, which `durakit resume` can still finish. Each thread is
pruned while this process holds its lock, in one transaction that checks again that
it is completed. A thread another process holds is skipped and counted as busy.

- `keep`: a thread keeps its `keep` latest checkpoints (`durakit history` and
  `fork` see those).
- `older_than`: a thread finished longer ago than that loses all its checkpoints.
  Its registry row, ledger, decisions and events stay. They are small; they are the
  audit trail; and they make the same request reach the finished thread again
  instead of running (and refunding) a second time.

Each pruned thread gets a `pruned` event saying how many checkpoints went.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from psycopg import Connection
from psycopg_pool import ConnectionPool

from durakit import events
from durakit.checkpointers import sql
from durakit.checkpointers.saver import DurakitSaver
from durakit.errors import HistoryNeeded
from durakit.lease import ThreadLocks

# Per completed thread: whether it is past the age, how many checkpoints it has, how
# many lie beyond the `keep` latest of their namespace, and whether it uses a MessageLog.
CANDIDATES_SQL = """
SELECT t.thread_id, coalesce(t.updated_at < now() - %(older_than)s::interval, false) AS expired,
       (SELECT count(*) FROM checkpoints c WHERE c.thread_id = t.thread_id) AS checkpoints,
       (SELECT count(*) FROM (
            SELECT row_number() OVER (PARTITION BY checkpoint_ns ORDER BY checkpoint_id DESC) AS newest_first
            FROM checkpoints c WHERE c.thread_id = t.thread_id) ranked
        WHERE newest_first > coalesce(%(keep)s::int, 0)) AS beyond_keep,
       EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = t.thread_id
               AND (c.metadata ? 'counters_since_delta_snapshot' OR c.metadata ? 'delta_writes_versioned'))
           AS uses_delta
FROM durakit_threads t
WHERE t.status = 'completed'
  AND (t.updated_at < now() - %(older_than)s::interval OR %(keep)s::int IS NOT NULL)
ORDER BY t.updated_at, t.thread_id
"""

STILL_COMPLETED_SQL = "SELECT 1 FROM durakit_threads WHERE thread_id = %s AND status = 'completed' FOR UPDATE"


@dataclass
class PruneReport:
    """What a prune did (or, with dry_run, would do)."""

    threads_examined: int = 0
    threads_emptied: list[str] = field(default_factory=list)
    threads_trimmed: list[str] = field(default_factory=list)
    checkpoints_removed: int = 0
    busy: list[str] = field(default_factory=list)
    kept_whole: list[str] = field(default_factory=list)  # DeltaChannel threads: history needed
    dry_run: bool = False


def prune(
    pool: ConnectionPool,
    saver: DurakitSaver,
    locks: ThreadLocks,
    *,
    keep: int | None = None,
    older_than: timedelta | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Prune completed threads; see the module's docstring."""
    if keep is None and older_than is None:
        raise ValueError("say what to prune: keep, older_than, or both")
    if keep is not None and keep < 1:
        raise ValueError("keep must be at least 1")
    report = PruneReport(dry_run=dry_run)
    with pool.connection() as conn:
        candidates = conn.execute(CANDIDATES_SQL, {"older_than": older_than, "keep": keep}).fetchall()
    for row in candidates:
        report.threads_examined += 1
        expired = row["expired"]
        if expired and not row["checkpoints"]:
            continue  # emptied by an earlier prune
        if not expired and (row["uses_delta"] and row["beyond_keep"]):
            report.kept_whole.append(row["thread_id"])
            continue
        if not expired and not row["beyond_keep"]:
            continue
        if dry_run:
            (report.threads_emptied if expired else report.threads_trimmed).append(row["thread_id"])
            report.checkpoints_removed += row["checkpoints"] if expired else row["beyond_keep"]
            continue
        if not locks.try_acquire(row["thread_id"]):
            report.busy.append(row["thread_id"])
            continue
        try:
            with pool.connection() as conn, conn.transaction():
                _prune_thread(conn, saver, row["thread_id"], expired=expired, keep=keep, report=report)
        finally:
            locks.release(row["thread_id"])
    return report


def _prune_thread(
    conn: Connection, saver: DurakitSaver, thread_id: str, *, expired: bool, keep: int | None, report: PruneReport
) -> None:
    if conn.execute(STILL_COMPLETED_SQL, (thread_id,)).fetchone() is None:
        return  # no longer completed since the list was read
    with conn.cursor() as cur:
        if expired:
            cur.execute("SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s", (thread_id,))
            removed = cur.fetchone()["n"]
            for statement in sql.DELETE_THREAD:
                cur.execute(statement, {"thread_id": thread_id})
            report.threads_emptied.append(thread_id)
        else:
            try:
                removed = saver.keep_latest(thread_id, keep, cur=cur)
            except HistoryNeeded:
                report.kept_whole.append(thread_id)
                return
            report.threads_trimmed.append(thread_id)
    report.checkpoints_removed += removed
    events.insert(conn, thread_id, "pruned", checkpoints_removed=removed, all_checkpoints=expired)
