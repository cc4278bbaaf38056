-- Issue #15, item 4: the data model of two-way synchronization (EWS, Graph, CalDAV/CardDAV).

-- Who made each change of the feed: `api`, `sync:<mailbox id>` (a syncer writing what it read
-- from that mailbox's server, so it can skip its own writes when it follows the feed),
-- `tracker`, `system`. Written in the same transaction as the change; rows from before this
-- migration read `system`.
ALTER TABLE changes ADD COLUMN origin TEXT NOT NULL DEFAULT 'system';

-- The link between a CRM record and its copy on one mailbox's server: the server's id, its
-- version tag (ETag, EWS ChangeKey), the SHA-256 of the values last synchronized, which way
-- that went, and the link's own optimistic-concurrency version. One link per record per
-- mailbox, one per remote id per mailbox. The store checks that the record and the mailbox
-- belong to `org_id` in the transaction that writes the link. A link outlives its record
-- (the syncer needs it to delete the server's copy); it is removed by the syncer.
CREATE TABLE remote_links (
    org_id TEXT NOT NULL,
    mailbox_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    version_tag TEXT,
    synced_hash TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('to_server', 'from_server')),
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, record_id),
    UNIQUE (mailbox_id, remote_id)
);
CREATE INDEX remote_links_record ON remote_links(org_id, record_id);

-- Folder cursors (`folder_state.doc`) are typed from now on (`{"kind": "imap", …}`); rows in
-- the earlier untagged shape are read as they are (see `model::sync::FolderCursor`), so none
-- is rewritten here and a worker of the previous version can still write one during an
-- upgrade.
