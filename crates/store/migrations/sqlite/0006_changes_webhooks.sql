-- The change feed of CRM records and webhook endpoints (issue #5, part 8).
--
-- `changes`: one row per create/update/delete of a CRM record, written in the same transaction
-- as the record. SQLite has one writer at a time and assigns `seq` (AUTOINCREMENT) under the
-- write lock, so `seq` grows in commit order and a reader paging with `seq > after` never skips
-- a row.
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    op TEXT NOT NULL,
    version BIGINT NOT NULL,
    at BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX changes_org ON changes(org_id, seq);

-- Webhook endpoints: configuration as a document (the signing secret is in `secrets`).
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks(org_id, id);

-- Delivery state, written by the delivery worker under the lease `webhook:<id>` (fenced).
CREATE TABLE webhook_state (
    webhook_id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    state TEXT NOT NULL,
    cursor_seq BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    next_attempt_at BIGINT,
    last_error TEXT,
    paused_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_state_state ON webhook_state(state);

-- The delivery log: every attempt with its outcome.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    ok BOOLEAN NOT NULL,
    status BIGINT,
    error TEXT,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries(webhook_id, id);
