-- Records API filters (issue #5, item 7).
--
-- `activity_mailboxes`: which mailboxes saw an email activity (its `mailbox_ids`), written by the
-- store with the activity in the same transaction (replaced on update, removed on delete), so
-- activities can be listed per mailbox.
CREATE TABLE activity_mailboxes (
    activity_id TEXT NOT NULL,
    mailbox_id TEXT NOT NULL,
    org_id TEXT NOT NULL,
    PRIMARY KEY (activity_id, mailbox_id)
);
CREATE INDEX activity_mailboxes_mailbox ON activity_mailboxes(org_id, mailbox_id, activity_id);
INSERT INTO activity_mailboxes (activity_id, mailbox_id, org_id)
    SELECT DISTINCT a.id, j.value, a.org_id FROM activities a, json_each(a.doc, '$.mailbox_ids') j
    WHERE a.kind = 'email';

-- When an activity happened (email: received, else sent, else created; unix ms), for time filters.
ALTER TABLE activities ADD COLUMN occurred_at BIGINT;
UPDATE activities SET occurred_at = COALESCE(
    CAST((julianday(json_extract(doc, '$.received_at')) - 2440587.5) * 86400000 AS INTEGER),
    CAST((julianday(json_extract(doc, '$.sent_at')) - 2440587.5) * 86400000 AS INTEGER),
    created_at);
CREATE INDEX activities_occurred ON activities(org_id, occurred_at);
