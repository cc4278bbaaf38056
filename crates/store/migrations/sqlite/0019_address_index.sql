-- The address index (issue 19): every email address of a user, queue, contact, account and
-- lead, normalized as `serversync_model::track::normalize_address` does (trimmed, angle
-- brackets removed, lower-cased), with the record's type, owner and, for users, whether it is
-- disabled. The store writes a record's rows in the same transaction as the record (replaced
-- on update, removed on delete: `Entity::LINKS`), so the tracker resolves a batch's addresses
-- with one query instead of reading every record of the organization.
CREATE TABLE address_index (
    record_id TEXT NOT NULL,
    address TEXT NOT NULL,
    org_id TEXT NOT NULL,
    record_type TEXT NOT NULL,
    owner_id TEXT,
    disabled BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (record_id, address)
);
CREATE INDEX address_index_lookup ON address_index(org_id, address, record_id);
INSERT OR IGNORE INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT id, lower(trim(rtrim(ltrim(trim(json_extract(doc, '$.email'), ' ' || char(9, 10, 13)), '<'), '>'), ' ' || char(9, 10, 13))),
        org_id, 'user', id, COALESCE(json_extract(doc, '$.disabled'), 0)
    FROM users WHERE json_extract(doc, '$.email') IS NOT NULL;
INSERT OR IGNORE INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT id, lower(trim(rtrim(ltrim(trim(json_extract(doc, '$.email'), ' ' || char(9, 10, 13)), '<'), '>'), ' ' || char(9, 10, 13))),
        org_id, 'queue', json_extract(doc, '$.owner_id'), 0
    FROM queues WHERE json_extract(doc, '$.email') IS NOT NULL;
INSERT OR IGNORE INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT c.id, lower(trim(rtrim(ltrim(trim(e.value, ' ' || char(9, 10, 13)), '<'), '>'), ' ' || char(9, 10, 13))),
        c.org_id, 'contact', c.owner_id, 0
    FROM contacts c, json_each(c.doc, '$.emails') e;
INSERT OR IGNORE INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT a.id, lower(trim(rtrim(ltrim(trim(e.value, ' ' || char(9, 10, 13)), '<'), '>'), ' ' || char(9, 10, 13))),
        a.org_id, 'account', a.owner_id, 0
    FROM accounts a, json_each(a.doc, '$.emails') e;
INSERT OR IGNORE INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT l.id, lower(trim(rtrim(ltrim(trim(e.value, ' ' || char(9, 10, 13)), '<'), '>'), ' ' || char(9, 10, 13))),
        l.org_id, 'lead', l.owner_id, 0
    FROM leads l, json_each(l.doc, '$.emails') e;
