-- Blobs (raw messages, bodies, attachments) are stored out of line without compression.
-- PostgreSQL compressed every new one with pglz, in the backend of the transaction that
-- stored it: half a core, a quarter of the whole machine, during the ingest benchmark, and
-- attachments are mostly compressed already. Rows stored before stay as they are.
ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL;
