-- Outgoing work is found by status: the engine lists emails in pending send and sending (of
-- every organization) each tick, and a mailbox's sender lists its own by status. Without an
-- index on status each listing read every activity, so sending slowed down as sent emails
-- piled up.
CREATE INDEX activities_status ON activities(status, id);
CREATE INDEX activities_org_status ON activities(org_id, status, id);
