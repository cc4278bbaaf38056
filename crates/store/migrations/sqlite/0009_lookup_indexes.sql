-- Lookups by a column return their rows in id order (`ORDER BY id`): with only
-- (org_id, column) indexes, SQLite preferred the (org_id, id) index to avoid a sort and then
-- read every row of the organization — each past its large JSON document — to test the
-- column: correlating one message cost a scan of all activities. Ending each lookup index with
-- id serves the filter and the order at once.
DROP INDEX activities_message_id;
CREATE INDEX activities_message_id ON activities(org_id, message_id, id);
DROP INDEX activities_regarding;
CREATE INDEX activities_regarding ON activities(org_id, regarding_id, id);
DROP INDEX activities_conversation;
CREATE INDEX activities_conversation ON activities(org_id, conversation_id, id);
DROP INDEX activities_tracking_token;
CREATE INDEX activities_tracking_token ON activities(org_id, tracking_token, id);
DROP INDEX activities_subject_key;
CREATE INDEX activities_subject_key ON activities(org_id, subject_key, id);
DROP INDEX mailboxes_profile;
CREATE INDEX mailboxes_profile ON mailboxes(org_id, profile_id, id);
DROP INDEX queue_items_queue;
CREATE INDEX queue_items_queue ON queue_items(org_id, queue_id, id);
DROP INDEX alerts_mailbox;
CREATE INDEX alerts_mailbox ON alerts(org_id, mailbox_id, id);
-- Counting a mailbox's items per decision reads the index alone.
CREATE INDEX mail_items_decision ON mail_items(mailbox_id, decision);
-- A message's queue item is looked up by queue and activity for every tracked message: without
-- this index that read every item of the queue.
CREATE INDEX queue_items_activity ON queue_items(org_id, activity_id, queue_id, id);
