-- What the booking, cancellation-save and escalation templates need: durable timer rows
-- (firing them is the worker's job) and the sandbox's calendar, charges, subscriptions
-- and ticketing.

-- A time a thread wants to be woken at: a reminder, a follow-up, a deadline.
CREATE TABLE durakit_timers (
    thread_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    due_at      TIMESTAMPTZ NOT NULL,
    payload     JSONB NOT NULL DEFAULT '{}',
    status      TEXT NOT NULL DEFAULT 'scheduled' CHECK (status IN ('scheduled', 'cancelled', 'fired')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, name)
);
CREATE INDEX durakit_timers_due_idx ON durakit_timers (due_at) WHERE status = 'scheduled';

-- Calendar: a slot of a resource is taken while a hold on it is `held`.
CREATE TABLE sandbox_holds (
    hold_id          TEXT PRIMARY KEY,
    resource         TEXT NOT NULL,
    slot_start       TIMESTAMPTZ NOT NULL,
    customer_id      TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'released')),
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX sandbox_holds_one_per_slot ON sandbox_holds (resource, slot_start) WHERE status = 'held';

-- Card charges (deposits). Payment method `pm_card_declined` is always declined.
CREATE TABLE sandbox_charges (
    charge_id        TEXT PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    amount_cents     BIGINT NOT NULL CHECK (amount_cents > 0),
    description      TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Subscriptions with their last 30 days of usage.
CREATE TABLE sandbox_accounts (
    account_id           TEXT PRIMARY KEY,
    customer_id          TEXT NOT NULL,
    customer_email       TEXT NOT NULL,
    plan                 TEXT NOT NULL,
    monthly_price_cents  BIGINT NOT NULL CHECK (monthly_price_cents >= 0),
    months_active        INTEGER NOT NULL DEFAULT 0,
    status               TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    days_active          INTEGER NOT NULL DEFAULT 0,
    sessions             INTEGER NOT NULL DEFAULT 0,
    support_tickets      INTEGER NOT NULL DEFAULT 0,
    cancelled_at         TIMESTAMPTZ
);

CREATE TABLE sandbox_discounts (
    discount_id      TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES sandbox_accounts (account_id),
    percent_off      INTEGER NOT NULL CHECK (percent_off BETWEEN 1 AND 100),
    months           INTEGER NOT NULL CHECK (months > 0),
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Ticketing: tickets and every queue assignment they went through.
CREATE TABLE sandbox_tickets (
    ticket_id        TEXT PRIMARY KEY,
    customer_id      TEXT NOT NULL,
    subject          TEXT NOT NULL,
    summary          TEXT NOT NULL,
    priority         TEXT NOT NULL,
    queue            TEXT,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sandbox_assignments (
    id               BIGSERIAL PRIMARY KEY,
    ticket_id        TEXT NOT NULL REFERENCES sandbox_tickets (ticket_id),
    queue            TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
