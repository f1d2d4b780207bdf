-- Fencing: every write a run makes names the lease generation it was started under, and
-- is refused once another process has taken the thread (and so bumped the generation).
-- A process that lost its lock session without noticing (frozen, cut off) can then no
-- longer save a stale step over the new owner's work.
ALTER TABLE durakit_threads ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;

-- Automatic retries (issue 12, part 7): a thread that failed on a transient error stays
-- `failed` with the time a worker retries it (NULL: no retry planned), how many automatic
-- retries of this failure were made, and the template's limit at the time.
ALTER TABLE durakit_threads
    ADD COLUMN retry_at TIMESTAMPTZ,
    ADD COLUMN auto_retries INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN retry_limit INTEGER;
CREATE INDEX durakit_threads_retry_idx ON durakit_threads (retry_at) WHERE retry_at IS NOT NULL;

-- Timers from before workers (0006): the templates recorded them and went on, and nothing
-- fired them. They are the timers without a node (every timer since names the node that
-- waits on it). Marked, so that a worker carries each out as its template does today
-- (`durakit.timers.BEFORE_WORKERS`: the booking's reminder, the cancellation's follow-up,
-- the escalation's queue reminder) instead of cancelling it as waited on by nobody.
ALTER TABLE durakit_timers ADD COLUMN before_workers BOOLEAN NOT NULL DEFAULT false;
UPDATE durakit_timers SET before_workers = true WHERE node IS NULL;
