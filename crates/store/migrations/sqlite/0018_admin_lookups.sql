-- The admin center's filters (issue #20): an item's sender and server arrival time (unix ms),
-- an email activity's sender, as columns, so a mailbox's items and the activities are filtered
-- without reading their documents. Listings run newest first (ORDER BY id DESC) on the same
-- indexes.
ALTER TABLE mail_items ADD COLUMN from_addr TEXT;
ALTER TABLE mail_items ADD COLUMN received_ms BIGINT;
UPDATE mail_items SET
    from_addr = lower(json_extract(doc, '$.from')),
    received_ms = CAST((julianday(json_extract(doc, '$.received_at')) - 2440587.5) * 86400000 AS INTEGER);
CREATE INDEX mail_items_from ON mail_items(mailbox_id, from_addr, id);
CREATE INDEX mail_items_received ON mail_items(mailbox_id, received_ms, id);
ALTER TABLE activities ADD COLUMN from_addr TEXT;
UPDATE activities SET from_addr = (
    SELECT lower(json_extract(p.value, '$.address')) FROM json_each(activities.doc, '$.parties') p
    WHERE json_extract(p.value, '$.role') = 'from' LIMIT 1)
WHERE kind = 'email';
CREATE INDEX activities_from ON activities(org_id, from_addr, id);
