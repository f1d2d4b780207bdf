-- durakit's own tables: the thread registry, the side-effect ledger, human decisions,
-- the event log, and the sandbox that stands in for billing, CRM, email and audit.

-- One row per thread: what was asked, where it stands, who holds it.
CREATE TABLE durakit_threads (
    thread_id     TEXT PRIMARY KEY,
    template      TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('running', 'waiting', 'completed', 'failed')),
    request       JSONB NOT NULL,          -- validated input, kept so a run that died before
                                           -- its first checkpoint can start again
    business_key  TEXT,
    result        JSONB,
    interrupt     JSONB,                   -- the pending question while status = 'waiting'
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    error_node    TEXT,
    lease_owner   TEXT,                    -- host:pid of the process that advanced it last
    leased_at     TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX durakit_threads_status_idx ON durakit_threads (status, template);

-- Every call that changes an outside system, recorded before and after it is made.
CREATE TABLE durakit_effects (
    thread_id        TEXT NOT NULL,
    step_key         TEXT NOT NULL,
    system           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    request          JSONB NOT NULL,
    result           JSONB,
    status           TEXT NOT NULL CHECK (status IN ('started', 'done')),
    calls            INTEGER NOT NULL DEFAULT 1,   -- how often durakit called the system
    started_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    PRIMARY KEY (thread_id, step_key)
);

-- Who answered which interrupt, when, and with what.
CREATE TABLE durakit_decisions (
    thread_id     TEXT NOT NULL,
    interrupt_id  TEXT NOT NULL,
    decision      TEXT NOT NULL,
    decided_by    TEXT NOT NULL,
    note          TEXT,
    answer        JSONB NOT NULL,
    decided_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, interrupt_id)
);

-- Append-only audit trail: run started, node finished, retried, failed, interrupted,
-- resumed, decided, completed.
CREATE TABLE durakit_events (
    id         BIGSERIAL PRIMARY KEY,
    thread_id  TEXT NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    kind       TEXT NOT NULL,
    node       TEXT,
    detail     JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX durakit_events_thread_idx ON durakit_events (thread_id, id);
CREATE INDEX durakit_events_kind_idx ON durakit_events (kind, at);

-- Sandbox outside systems. Every request carries an idempotency key; a repeated key
-- returns the first response and applies nothing, the way payment APIs behave.
CREATE TABLE sandbox_requests (
    idempotency_key  TEXT PRIMARY KEY,
    system           TEXT NOT NULL,
    operation        TEXT NOT NULL,
    request          JSONB NOT NULL,
    response         JSONB,
    received         INTEGER NOT NULL DEFAULT 1,   -- requests that arrived with this key
    applied          INTEGER NOT NULL DEFAULT 0,   -- times the change was actually made
    first_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sandbox_orders (
    order_id        TEXT PRIMARY KEY,
    customer_id     TEXT NOT NULL,
    customer_email  TEXT NOT NULL,
    amount_cents    BIGINT NOT NULL CHECK (amount_cents >= 0),
    currency        TEXT NOT NULL DEFAULT 'EUR',
    status          TEXT NOT NULL DEFAULT 'paid',
    ordered_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sandbox_refunds (
    refund_id        TEXT PRIMARY KEY,
    order_id         TEXT NOT NULL REFERENCES sandbox_orders (order_id),
    amount_cents     BIGINT NOT NULL CHECK (amount_cents > 0),
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_refunds_order_idx ON sandbox_refunds (order_id);

CREATE TABLE sandbox_crm_notes (
    id               BIGSERIAL PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             JSONB NOT NULL,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sandbox_emails (
    id               BIGSERIAL PRIMARY KEY,
    recipient        TEXT NOT NULL,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sandbox_audit_records (
    id               BIGSERIAL PRIMARY KEY,
    subject          TEXT NOT NULL,
    record           JSONB NOT NULL,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
