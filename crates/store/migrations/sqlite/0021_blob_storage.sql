-- PostgreSQL stores blobs without compression from this version on (see its 0021); SQLite
-- never compressed them. Kept so that both backends count the same versions.
SELECT 1;
