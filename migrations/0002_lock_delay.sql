-- pglock schema, version 2: lock-delay, and TTLs checked by the server.

-- Lock-delay: how long after this acquisition *expires* (it was not
-- released: a released row has expires_at NULL) nobody else may take it, so
-- that writes a dead holder left in flight on unfenced stores drain first.
-- Written by every acquire and claim (NULL: no delay). A takeover waits
-- until expires_at + delay_ms.
ALTER TABLE leases ADD COLUMN delay_ms bigint CHECK (delay_ms > 0);

-- A TTL in milliseconds as an interval, refusing a TTL that is not above
-- zero (or NULL): without it the server would hand out a lease that is
-- already expired, or one that never expires. Every statement that takes a
-- TTL goes through it.
CREATE FUNCTION ttl(ms bigint) RETURNS interval
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF ms IS NULL OR ms <= 0 THEN
        RAISE EXCEPTION 'pglock: ttl must be above 0 ms, got %', coalesce(ms::text, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    RETURN ms * interval '1 millisecond';
END
$$;
