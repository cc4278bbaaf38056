-- The admin center's filters (issue #20): an item's sender and server arrival time (unix ms),
-- an email activity's sender, as columns, so a mailbox's items and the activities are filtered
-- without reading their documents. Listings run newest first (ORDER BY id DESC) on the same
-- indexes.
ALTER TABLE mail_items ADD COLUMN from_addr TEXT;
ALTER TABLE mail_items ADD COLUMN received_ms BIGINT;
UPDATE mail_items SET
    from_addr = lower(doc::jsonb ->> 'from'),
    received_ms = (extract(epoch FROM (doc::jsonb ->> 'received_at')::timestamptz) * 1000)::BIGINT;
CREATE INDEX mail_items_from ON mail_items(mailbox_id, from_addr, id);
CREATE INDEX mail_items_received ON mail_items(mailbox_id, received_ms, id);
ALTER TABLE activities ADD COLUMN from_addr TEXT;
UPDATE activities a SET from_addr = (
    SELECT lower(p ->> 'address') FROM jsonb_array_elements(a.doc::jsonb -> 'parties') p
    WHERE p ->> 'role' = 'from' LIMIT 1)
WHERE a.kind = 'email';
CREATE INDEX activities_from ON activities(org_id, from_addr, id);
