-- Write each body once (issue 19). An email's parsed bodies are content-addressed blobs
-- (table `blobs`, kept: `attachment` is set on them, so raw-copy retention never removes one),
-- referenced by SHA-256 from the item and the activity instead of being copied into their
-- documents; trace lines appended to an item after it was stored (the tracker's, a re-mapping's,
-- retention's) go to `trace_tail` (a JSON array), so marking an item tracked rewrites a few
-- hundred bytes. A change-feed row of a create or update keeps no document (`doc` = ''): its
-- payload is read from the record when the feed is read; a delete keeps the record's last one.
-- Rows of the earlier shape (inline bodies, the whole trace in the document, a document on
-- every change) stay readable; `Store::migrate` moves them batch by batch afterwards, its
-- progress kept in `data_migrations` (resumable, idempotent).
ALTER TABLE mail_items ADD COLUMN text_sha256 TEXT;
ALTER TABLE mail_items ADD COLUMN html_sha256 TEXT;
ALTER TABLE mail_items ADD COLUMN trace_tail TEXT;
ALTER TABLE activities ADD COLUMN text_sha256 TEXT;
ALTER TABLE activities ADD COLUMN html_sha256 TEXT;
CREATE TABLE data_migrations (
    name TEXT PRIMARY KEY,
    cursor TEXT NOT NULL,
    done BOOLEAN NOT NULL
);
