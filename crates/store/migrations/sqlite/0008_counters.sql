-- Outgoing email (issue #6): per-organization counters, such as the tracking-token counter,
-- advanced atomically (one row per organization and name).
CREATE TABLE counters (
    org_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);
