-- Each decision names the question it answered and the roles that allowed it, so the
-- decisions table alone says who answered what, when, to which question, under which
-- authority (authorized_as is empty when no authority rule covered the question).
ALTER TABLE durakit_decisions
    ADD COLUMN node          TEXT,
    ADD COLUMN question      TEXT,
    ADD COLUMN authorized_as TEXT[] NOT NULL DEFAULT '{}';
