-- Until when an API token lets its user in (unix ms): 0 once revoked, its expiry, or the largest
-- BIGINT when it never expires. The admin center and the API list live tokens with
-- `live_until >= now` instead of reading every session token ever made.
ALTER TABLE api_tokens ADD COLUMN live_until BIGINT NOT NULL DEFAULT 9223372036854775807;
UPDATE api_tokens SET live_until = CASE
    WHEN json_extract(doc, '$.revoked') THEN 0
    WHEN json_extract(doc, '$.expires_at') IS NOT NULL
        THEN CAST(strftime('%s', json_extract(doc, '$.expires_at')) AS INTEGER) * 1000
            + CAST(substr(strftime('%f', json_extract(doc, '$.expires_at')), 4) AS INTEGER)
    ELSE 9223372036854775807
END;
CREATE INDEX api_tokens_live ON api_tokens(org_id, live_until);
