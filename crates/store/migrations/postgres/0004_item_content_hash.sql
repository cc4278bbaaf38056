-- The raw message's SHA-256 as a column, to recognise a message seen before when a folder is
-- renumbered (UIDVALIDITY change) and the message has no Message-ID.
ALTER TABLE mail_items ADD COLUMN raw_sha256 TEXT;
CREATE INDEX mail_items_content ON mail_items(mailbox_id, raw_sha256);
