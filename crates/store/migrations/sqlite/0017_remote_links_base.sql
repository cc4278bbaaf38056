-- Issue #18: the base of the three-way comparison. The values both sides held after the last
-- synchronization of a link (a JSON object of the synchronized fields, see
-- `model::itemvalues`); `synced_hash` stays the SHA-256 of their canonical form. Links written
-- before this migration have an empty base: their next comparison treats every difference as
-- a conflict, resolved by the organization's policy.
ALTER TABLE remote_links ADD COLUMN synced_values TEXT NOT NULL DEFAULT '{}';
