-- Security issue #14, items 1 and 2.
--
-- Outgoing work per mailbox: an outgoing email in pending send or sending carries the mailbox
-- it is sent from (`send_mailbox`) and when it is due (`due_at`, unix ms: its send-after time,
-- or when its Email Router claim runs out; see `EmailActivity::send_due`). The engine finds
-- the mailboxes with due work by walking this index one mailbox at a time, and a sender
-- reads its own due email in due order, so emails that wait (far in the future, or many of
-- one mailbox) are never read to find another mailbox's due email.
ALTER TABLE activities ADD COLUMN send_mailbox TEXT;
ALTER TABLE activities ADD COLUMN due_at BIGINT;
UPDATE activities SET
    send_mailbox = json_extract(doc, '$.mailbox_ids[0]'),
    due_at = COALESCE(
        CASE status
            WHEN 'pending_send' THEN CAST((julianday(json_extract(doc, '$.send_after')) - 2440587.5) * 86400000 AS INTEGER)
            ELSE CAST((julianday(json_extract(doc, '$.router_claim.until')) - 2440587.5) * 86400000 AS INTEGER)
        END,
        created_at)
WHERE kind = 'email' AND status IN ('pending_send', 'sending')
    AND json_extract(doc, '$.direction') = 'outgoing';
CREATE INDEX activities_send_due ON activities(status, send_mailbox, due_at, id)
    WHERE send_mailbox IS NOT NULL;

-- Mail domains, each assigned to at most one organization by the installation administrator
-- (the primary key is the domain). The Email Router delivers only within the organization
-- holding the recipient's domain.
CREATE TABLE domains (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX domains_org ON domains(org_id, id);
