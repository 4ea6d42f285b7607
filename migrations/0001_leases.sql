-- pglock 0001: fenced leases.
--
-- Run with search_path set to the pglock schema (Locks::migrate does this;
-- with another migration tool: CREATE SCHEMA pglock; SET search_path TO pglock;
-- then apply the files of this folder in order).

-- Fencing tokens come from one sequence for every lease, so a token is
-- strictly greater than every token issued before it, whatever happens to the
-- rows (deletion, cleanup) or the server (restart: sequences are WAL-logged).
-- CACHE 1: no session hands out tokens from a private, out-of-order block.
CREATE SEQUENCE fencing_tokens AS bigint MINVALUE 1 NO CYCLE CACHE 1;

-- One row per lease name. A lease is held while owner IS NOT NULL and
-- expires_at > clock_timestamp(); expiry is decided by the database clock only.
CREATE TABLE leases (
    name              text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 1024),
    token             bigint NOT NULL,              -- fencing token of the latest acquisition
    owner             uuid,                         -- random per acquisition; NULL when released
    holder            text,                         -- label of the latest holder (host:pid by default)
    acquired_at       timestamptz,
    expires_at        timestamptz,                  -- NULL when released
    data              jsonb,                        -- payload, visible to all
    release_requested boolean NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 80);  -- room for HOT renewals: renew changes no indexed column

-- fence(name, token): raise unless `token` currently holds lease `name`, and
-- lock the lease row until the calling transaction ends, so that no newer
-- holder can take it over before this transaction's writes commit.
-- Usable from any language or from a trigger: SELECT pglock.fence('shard-17', 912);
CREATE FUNCTION fence(lease_name text, fencing_token bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM leases
     WHERE name = lease_name AND token = fencing_token
       AND owner IS NOT NULL AND expires_at > clock_timestamp()
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is not held by token %', lease_name, fencing_token
            USING ERRCODE = 'PGL01',
                  HINT = 'the lease expired or was taken over; abort this transaction';
    END IF;
END
$$;

-- Pin the function to this schema, whatever the caller's search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION fence(text, bigint) SET search_path = %I, pg_temp',
                   current_schema());
END
$$;
