"""Every statement durakit's savers send, in one place.

They work on LangGraph's own tables (`checkpoints`, `checkpoint_blobs`,
`checkpoint_writes`), row for row as stock `PostgresSaver` lays them out, so either
saver reads what the other wrote. What differs is how many statements a step costs:
a checkpoint and its blobs are one statement, a task's writes are one statement,
each its own transaction, so a durable step is two round trips and two commits.
"""

from __future__ import annotations

from durakit.lease import FENCE_CTE

# One statement, one commit: the new blobs (unnest of parallel arrays) and the
# checkpoint row that references them. A data-modifying CTE runs even though the
# outer INSERT does not read it.
_NEW_BLOBS = """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(thread_id)s, %(checkpoint_ns)s, b.channel, b.version, b.type, b.blob
    FROM unnest(%(channels)s::text[], %(versions)s::text[], %(types)s::text[], %(blobs)s::bytea[])
        AS b(channel, version, type, blob)
    {guard}
    ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
"""
_CHECKPOINT_ROW = """
    INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
    SELECT %(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(parent_checkpoint_id)s, %(checkpoint)s, %(metadata)s
    {guard}
    ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
    DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
"""
PUT_CHECKPOINT = f"WITH new_blobs AS ({_NEW_BLOBS.format(guard='')}) {_CHECKPOINT_ROW.format(guard='')}"

# A run's writes carry its lease generation (`durakit.lease`): fenced, the same
# statement writes nothing once another process has taken the thread, and says so
# (`held`), so the stale process stops instead of saving a step over the new owner's.
_GUARD = "WHERE EXISTS (SELECT 1 FROM fence)"
PUT_CHECKPOINT_FENCED = f"""
WITH {FENCE_CTE},
new_blobs AS ({_NEW_BLOBS.format(guard=_GUARD)}),
saved AS ({_CHECKPOINT_ROW.format(guard=_GUARD)})
SELECT EXISTS (SELECT 1 FROM fence) AS held
"""

_PUT_WRITES = """
INSERT INTO checkpoint_writes
    (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
SELECT %(thread_id)s, %(checkpoint_ns)s, %(checkpoint_id)s, %(task_id)s, %(task_path)s,
       w.idx, w.channel, w.type, w.blob
FROM unnest(%(idxs)s::int[], %(channels)s::text[], %(types)s::text[], %(blobs)s::bytea[])
    AS w(idx, channel, type, blob)
{guard}
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
"""

# Special writes (errors, interrupts, resume values) replace what a task saved
# before under the same index; ordinary writes are saved once, as in stock.
_REPLACING = "DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
_ONCE = "DO NOTHING"
PUT_WRITES_REPLACING = _PUT_WRITES.format(guard="") + _REPLACING
PUT_WRITES_ONCE = _PUT_WRITES.format(guard="") + _ONCE


def _fenced_writes(conflict: str) -> str:
    return f"WITH {FENCE_CTE}, saved AS ({_PUT_WRITES.format(guard=_GUARD)}{conflict}) SELECT EXISTS (SELECT 1 FROM fence) AS held"


PUT_WRITES_REPLACING_FENCED = _fenced_writes(_REPLACING)
PUT_WRITES_ONCE_FENCED = _fenced_writes(_ONCE)

DELETE_THREAD = (
    "DELETE FROM checkpoints WHERE thread_id = %(thread_id)s",
    "DELETE FROM checkpoint_blobs WHERE thread_id = %(thread_id)s",
    "DELETE FROM checkpoint_writes WHERE thread_id = %(thread_id)s",
)

# Copies a thread under a new id: every checkpoint up to `until` (all of them when
# NULL; checkpoint ids sort by time), the blobs they reference, and the writes saved
# against them, except those of `until` itself: a fork starts at that checkpoint and
# runs its next step again.
COPY_THREAD = (
    """
    INSERT INTO checkpoints
        (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
    SELECT %(target)s, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
    FROM checkpoints
    WHERE thread_id = %(source)s AND (%(until)s::text IS NULL OR checkpoint_id <= %(until)s::text)
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO checkpoint_writes
        (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
    SELECT %(target)s, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.task_path, w.idx, w.channel, w.type, w.blob
    FROM checkpoint_writes w
    WHERE w.thread_id = %(source)s AND (%(until)s::text IS NULL OR w.checkpoint_id < %(until)s::text)
      AND EXISTS (SELECT 1 FROM checkpoints c
                  WHERE c.thread_id = %(target)s AND c.checkpoint_ns = w.checkpoint_ns
                    AND c.checkpoint_id = w.checkpoint_id)
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
    SELECT %(target)s, b.checkpoint_ns, b.channel, b.version, b.type, b.blob
    FROM checkpoint_blobs b
    WHERE b.thread_id = %(source)s
      AND EXISTS (SELECT 1 FROM checkpoints c
                  CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
                  WHERE c.thread_id = %(target)s AND c.checkpoint_ns = b.checkpoint_ns
                    AND v.key = b.channel AND v.value = b.version)
    ON CONFLICT DO NOTHING
    """,
)

CHECKPOINT_EXISTS = """
SELECT 1 FROM checkpoints WHERE thread_id = %(thread_id)s AND checkpoint_id = %(checkpoint_id)s LIMIT 1
"""

# Runs are recorded by LangGraph in each checkpoint's metadata (`run_id`).
THREADS_OF_RUNS = """
SELECT DISTINCT thread_id FROM checkpoints WHERE metadata ->> 'run_id' = ANY(%(run_ids)s)
"""

DELETE_FOR_RUNS = (
    """
    DELETE FROM checkpoint_writes w USING checkpoints c
    WHERE c.thread_id = ANY(%(thread_ids)s) AND c.metadata ->> 'run_id' = ANY(%(run_ids)s)
      AND w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns AND w.checkpoint_id = c.checkpoint_id
    """,
    "DELETE FROM checkpoints WHERE thread_id = ANY(%(thread_ids)s) AND metadata ->> 'run_id' = ANY(%(run_ids)s)",
    """
    DELETE FROM checkpoint_blobs b
    WHERE b.thread_id = ANY(%(thread_ids)s)
      AND NOT EXISTS (SELECT 1 FROM checkpoints c
                      CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
                      WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
                        AND v.key = b.channel AND v.value = b.version)
    """,
)

# Keeps the `keep` latest checkpoints of each namespace of a thread, with their writes
# and the blobs they reference; a kept checkpoint whose parent goes loses its parent
# link, as stock's keep_latest does.
_RANKED = """
WITH ranked AS (
    SELECT checkpoint_ns, checkpoint_id,
           row_number() OVER (PARTITION BY checkpoint_ns ORDER BY checkpoint_id DESC) AS newest_first
    FROM checkpoints WHERE thread_id = %(thread_id)s
)
"""

KEEP_LATEST = (
    _RANKED
    + """
    DELETE FROM checkpoint_writes w
    WHERE w.thread_id = %(thread_id)s
      AND NOT EXISTS (SELECT 1 FROM ranked r WHERE r.newest_first <= %(keep)s
                      AND r.checkpoint_ns = w.checkpoint_ns AND r.checkpoint_id = w.checkpoint_id)
    """,
    _RANKED
    + """
    DELETE FROM checkpoints c USING ranked r
    WHERE c.thread_id = %(thread_id)s AND r.newest_first > %(keep)s
      AND c.checkpoint_ns = r.checkpoint_ns AND c.checkpoint_id = r.checkpoint_id
    """,
    """
    UPDATE checkpoints c SET parent_checkpoint_id = NULL
    WHERE c.thread_id = %(thread_id)s AND c.parent_checkpoint_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM checkpoints p WHERE p.thread_id = c.thread_id
                      AND p.checkpoint_ns = c.checkpoint_ns AND p.checkpoint_id = c.parent_checkpoint_id)
    """,
    """
    DELETE FROM checkpoint_blobs b
    WHERE b.thread_id = %(thread_id)s
      AND NOT EXISTS (SELECT 1 FROM checkpoints c
                      CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
                      WHERE c.thread_id = b.thread_id AND c.checkpoint_ns = b.checkpoint_ns
                        AND v.key = b.channel AND v.value = b.version)
    """,
)

# A DeltaChannel rebuilds a value from older checkpoints' writes: their history
# cannot be cut this way (the same rule as stock's prune).
USES_DELTA_CHANNEL = """
SELECT EXISTS (SELECT 1 FROM checkpoints WHERE thread_id = %(thread_id)s
               AND (metadata ? 'counters_since_delta_snapshot' OR metadata ? 'delta_writes_versioned'))
"""
