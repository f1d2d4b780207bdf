-- Workers and durable timers (`durakit worker`).
--
-- The job tables and functions are procrastinate's: revision 0006 applies the schema of
-- the procrastinate version pinned in pyproject.toml before this file. What follows is
-- durakit's own part.

-- A thread started with `durakit submit` is advanced by workers: `durakit approve`
-- queues its resume instead of running it in the answering process.
ALTER TABLE durakit_threads ADD COLUMN worker_managed BOOLEAN NOT NULL DEFAULT false;

-- A timer is fired by a procrastinate job scheduled at its due time; `job_id` names that
-- job, so moving or cancelling the timer moves or cancels the job with it.
ALTER TABLE durakit_timers ADD COLUMN job_id BIGINT;
ALTER TABLE durakit_timers ADD COLUMN fired_at TIMESTAMPTZ;
ALTER TABLE durakit_timers ADD COLUMN node TEXT;  -- the node that sleeps or asks until then

-- `durakit stats` and the worker's metrics read the event log by kind and node.
CREATE INDEX durakit_events_node_idx ON durakit_events (kind, node) WHERE node IS NOT NULL;

-- What a waiting thread waits for: 'person' (an answer) or 'timer' (it only sleeps),
-- kept in clear for `durakit pending`, `stats` and the metrics (its question may be encrypted).
ALTER TABLE durakit_threads ADD COLUMN waiting_for TEXT CHECK (waiting_for IN ('person', 'timer'));
UPDATE durakit_threads SET waiting_for = 'person' WHERE status = 'waiting';  -- nothing slept before workers
