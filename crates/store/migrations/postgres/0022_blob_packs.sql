-- Raw messages and attachments of a file-backed SQLite store are kept in pack files beside the
-- database (issue 19: written once, outside the writer): such a row holds the pack's name and
-- the offset there, and an empty `data`. Rows stored before keep their bytes in `data`.
-- PostgreSQL keeps every blob in `data`; the columns exist there too (always NULL) so that
-- both backends share the blob statements.
ALTER TABLE blobs ADD COLUMN pack TEXT;
ALTER TABLE blobs ADD COLUMN pack_offset BIGINT;
