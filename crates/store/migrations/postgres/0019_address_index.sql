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
    disabled BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (record_id, address)
);
CREATE INDEX address_index_lookup ON address_index(org_id, address, record_id);
INSERT INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT id, lower(btrim(rtrim(ltrim(btrim(doc::jsonb ->> 'email', E' \t\r\n'), '<'), '>'), E' \t\r\n')),
        org_id, 'user', id, COALESCE((doc::jsonb ->> 'disabled')::boolean, FALSE)
    FROM users WHERE doc::jsonb ->> 'email' IS NOT NULL
    ON CONFLICT DO NOTHING;
INSERT INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT id, lower(btrim(rtrim(ltrim(btrim(doc::jsonb ->> 'email', E' \t\r\n'), '<'), '>'), E' \t\r\n')),
        org_id, 'queue', doc::jsonb ->> 'owner_id', FALSE
    FROM queues WHERE doc::jsonb ->> 'email' IS NOT NULL
    ON CONFLICT DO NOTHING;
INSERT INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT c.id, lower(btrim(rtrim(ltrim(btrim(e.value, E' \t\r\n'), '<'), '>'), E' \t\r\n')),
        c.org_id, 'contact', c.owner_id, FALSE
    FROM contacts c, jsonb_array_elements_text(c.doc::jsonb -> 'emails') e
    ON CONFLICT DO NOTHING;
INSERT INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT a.id, lower(btrim(rtrim(ltrim(btrim(e.value, E' \t\r\n'), '<'), '>'), E' \t\r\n')),
        a.org_id, 'account', a.owner_id, FALSE
    FROM accounts a, jsonb_array_elements_text(a.doc::jsonb -> 'emails') e
    ON CONFLICT DO NOTHING;
INSERT INTO address_index (record_id, address, org_id, record_type, owner_id, disabled)
    SELECT l.id, lower(btrim(rtrim(ltrim(btrim(e.value, E' \t\r\n'), '<'), '>'), E' \t\r\n')),
        l.org_id, 'lead', l.owner_id, FALSE
    FROM leads l, jsonb_array_elements_text(l.doc::jsonb -> 'emails') e
    ON CONFLICT DO NOTHING;
