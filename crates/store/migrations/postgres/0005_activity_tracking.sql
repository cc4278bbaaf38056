-- Email activities from stored messages (engine::records, the tracker).
-- Activities are found by tracking token and, for smart matching, by normalized subject.
ALTER TABLE activities ADD COLUMN tracking_token TEXT;
ALTER TABLE activities ADD COLUMN subject_key TEXT;
CREATE INDEX activities_tracking_token ON activities(org_id, tracking_token);
CREATE INDEX activities_subject_key ON activities(org_id, subject_key);
-- When the tracker finished with a stored item (NULL: still to do). A per-item mark rather than
-- an id cursor: item ids are not in commit order, and a mark cannot skip a late commit.
ALTER TABLE mail_items ADD COLUMN tracked_at BIGINT;
CREATE INDEX mail_items_untracked ON mail_items(org_id, id) WHERE tracked_at IS NULL AND decision = 'stored';
