-- Retention (issue #14, item 10): what the pruner removes it finds by index, in small batches.

-- Raw copies of tracked messages. `raw_kept`: the item still keeps its raw message (from the
-- item's document; TRUE when unsure, so nothing is removed by mistake). `activity_id`: the
-- activity the tracker made or linked for the item (NULL: not tracked as an activity), taken
-- for existing items from their trace ("tracked as activity <id> (…)").
ALTER TABLE mail_items ADD COLUMN raw_kept BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE mail_items ADD COLUMN activity_id TEXT;
UPDATE mail_items SET raw_kept = FALSE WHERE doc::jsonb -> 'raw_kept' = 'false'::jsonb;
UPDATE mail_items SET activity_id = (
    SELECT substring(t FROM 21 FOR 36) FROM jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(doc::jsonb -> 'trace') = 'array' THEN doc::jsonb -> 'trace' ELSE '[]'::jsonb END) t
    WHERE t LIKE 'tracked as activity %' LIMIT 1)
WHERE tracked_at IS NOT NULL;
CREATE INDEX mail_items_raw_expiry ON mail_items(created_at) WHERE raw_kept AND activity_id IS NOT NULL;
CREATE INDEX mail_items_raw ON mail_items(raw_sha256) WHERE raw_kept;

-- A blob is removed with the last raw copy that needs it, never while it is also an
-- attachment (of an item or an activity, sent or received): `attachment` says so. Existing
-- blobs count as attachments unless they are only ever a raw message.
ALTER TABLE blobs ADD COLUMN attachment BOOLEAN NOT NULL DEFAULT TRUE;
UPDATE blobs SET attachment = FALSE
WHERE sha256 IN (SELECT raw_sha256 FROM mail_items WHERE raw_sha256 IS NOT NULL);
UPDATE blobs SET attachment = TRUE
WHERE sha256 IN (
    SELECT a ->> 'sha256' FROM mail_items m, jsonb_array_elements(
        CASE WHEN jsonb_typeof(m.doc::jsonb -> 'attachments') = 'array' THEN m.doc::jsonb -> 'attachments' ELSE '[]'::jsonb END) a);
UPDATE blobs SET attachment = TRUE
WHERE sha256 IN (
    SELECT a ->> 'sha256' FROM activities x, jsonb_array_elements(
        CASE WHEN jsonb_typeof(x.doc::jsonb -> 'attachments') = 'array' THEN x.doc::jsonb -> 'attachments' ELSE '[]'::jsonb END) a);

-- Web sessions (API tokens named "web session"): when each expires (unix ms; NULL for other
-- tokens), so expired ones are found by index.
ALTER TABLE api_tokens ADD COLUMN session_until BIGINT;
UPDATE api_tokens SET session_until =
    (extract(epoch FROM (doc::jsonb ->> 'expires_at')::timestamptz) * 1000)::BIGINT
WHERE doc::jsonb ->> 'name' = 'web session' AND doc::jsonb ->> 'expires_at' IS NOT NULL;
CREATE INDEX api_tokens_session ON api_tokens(session_until) WHERE session_until IS NOT NULL;

-- The oldest entries first, without reading the others.
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX webhook_deliveries_at ON webhook_deliveries(at);
