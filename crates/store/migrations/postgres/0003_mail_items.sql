-- Every message seen in a mailbox, with its decision trace (the item-level record).
CREATE TABLE mail_items (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    mailbox_id TEXT NOT NULL,
    source_key TEXT NOT NULL,
    message_id TEXT,
    decision TEXT NOT NULL
);
CREATE UNIQUE INDEX mail_items_source ON mail_items(mailbox_id, source_key);
CREATE INDEX mail_items_mailbox ON mail_items(mailbox_id, id);
CREATE INDEX mail_items_message_id ON mail_items(org_id, message_id);

-- Raw messages and attachments, stored once by SHA-256.
CREATE TABLE blobs (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
