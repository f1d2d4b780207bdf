-- `durakit fork` copies a thread into a new one.
--
-- The fork inherits its source's ledger: an effect the source made, or started, keeps
-- its idempotency key in the fork, so replaying that step there is answered without
-- being applied again. A key can therefore belong to a thread and its forks, and is no
-- longer unique; `inherited_from` marks the rows a fork was given (a fork that takes
-- another path at such a step makes a new effect under a key of its own).
ALTER TABLE durakit_effects DROP CONSTRAINT durakit_effects_idempotency_key_key;
CREATE INDEX durakit_effects_idempotency_key_idx ON durakit_effects (idempotency_key);
ALTER TABLE durakit_effects ADD COLUMN inherited_from TEXT;

-- Only the newest thread of a line of forks may act: a forked thread is superseded,
-- and is not resumed, answered, recovered or forked again.
ALTER TABLE durakit_threads ADD COLUMN superseded_by TEXT;
