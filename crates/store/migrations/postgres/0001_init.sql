-- serversync schema, version 1. Each entity row holds the full record as JSON (`doc`)
-- plus the columns that queries filter, join or enforce uniqueness on.

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    org_id TEXT,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    name TEXT NOT NULL
);

CREATE TABLE users (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    email TEXT NOT NULL
);
CREATE INDEX users_org ON users(org_id, id);

CREATE TABLE queues (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    email TEXT NOT NULL
);
CREATE INDEX queues_org ON queues(org_id, id);

CREATE TABLE roles (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    name TEXT NOT NULL
);
CREATE INDEX roles_org ON roles(org_id, id);

CREATE TABLE profiles (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    name TEXT NOT NULL,
    server_type TEXT NOT NULL,
    is_default BOOLEAN NOT NULL
);
CREATE INDEX profiles_org ON profiles(org_id, id);

CREATE TABLE email_settings (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX email_settings_org ON email_settings(org_id, id);

CREATE TABLE mailboxes (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    email TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    regarding_id TEXT NOT NULL,
    profile_id TEXT,
    approval TEXT NOT NULL,
    overall_status TEXT NOT NULL
);
CREATE INDEX mailboxes_org ON mailboxes(org_id, id);

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    owner_id TEXT NOT NULL
);
CREATE INDEX accounts_org ON accounts(org_id, id);

CREATE TABLE contacts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    owner_id TEXT NOT NULL
);
CREATE INDEX contacts_org ON contacts(org_id, id);

CREATE TABLE leads (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    owner_id TEXT NOT NULL
);
CREATE INDEX leads_org ON leads(org_id, id);

CREATE TABLE activities (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT,
    owner_id TEXT NOT NULL,
    message_id TEXT,
    regarding_id TEXT,
    conversation_id TEXT
);
CREATE INDEX activities_org ON activities(org_id, id);

CREATE TABLE queue_items (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    queue_id TEXT NOT NULL,
    activity_id TEXT NOT NULL
);
CREATE INDEX queue_items_org ON queue_items(org_id, id);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    severity TEXT NOT NULL,
    mailbox_id TEXT,
    profile_id TEXT
);
CREATE INDEX alerts_org ON alerts(org_id, id);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE INDEX jobs_org ON jobs(org_id, id);


CREATE UNIQUE INDEX organizations_name ON organizations(name);
CREATE UNIQUE INDEX users_email ON users(org_id, email);
CREATE UNIQUE INDEX queues_email ON queues(org_id, email);
CREATE UNIQUE INDEX roles_name ON roles(org_id, name);
CREATE UNIQUE INDEX profiles_name ON profiles(org_id, name);
CREATE UNIQUE INDEX profiles_one_default ON profiles(org_id) WHERE is_default;
CREATE UNIQUE INDEX mailboxes_email ON mailboxes(org_id, email);
CREATE UNIQUE INDEX mailboxes_regarding ON mailboxes(org_id, regarding_id);
CREATE INDEX mailboxes_profile ON mailboxes(org_id, profile_id);
CREATE INDEX activities_message_id ON activities(org_id, message_id);
CREATE INDEX activities_regarding ON activities(org_id, regarding_id);
CREATE INDEX activities_conversation ON activities(org_id, conversation_id);
CREATE INDEX queue_items_queue ON queue_items(org_id, queue_id);
CREATE INDEX alerts_mailbox ON alerts(org_id, mailbox_id);
CREATE INDEX jobs_status ON jobs(status);

-- Credentials and other secrets, sealed with AES-256-GCM under the master key.
CREATE TABLE secrets (
    id TEXT PRIMARY KEY,
    org_id TEXT,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- One row: a known value sealed under the current master key, to detect a wrong key at start.
CREATE TABLE keyring (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    rotated_at BIGINT NOT NULL
);

-- Work ownership with fencing: every write under a lease checks its epoch.
CREATE TABLE leases (
    resource TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);

-- Per-mailbox, per-folder synchronization cursors.
CREATE TABLE folder_state (
    mailbox_id TEXT NOT NULL,
    folder TEXT NOT NULL,
    doc TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, folder)
);

CREATE TABLE audit_log (
    seq BIGSERIAL PRIMARY KEY,
    org_id TEXT,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    before_doc TEXT,
    after_doc TEXT
);
CREATE INDEX audit_log_org ON audit_log(org_id, seq);
