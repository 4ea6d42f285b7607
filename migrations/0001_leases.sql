-- pglock 0001: fenced leases, lease pools, semaphores, rate limits.
--
-- Run with search_path set to the pglock schema (Locks::migrate does this;
-- with another migration tool: CREATE SCHEMA pglock; SET search_path TO pglock;
-- then apply the files of this folder in order).

-- Fencing tokens come from one sequence for every lease, so a token is
-- strictly greater than every token issued before it, whatever happens to the
-- rows (deletion, cleanup) or the server (restart: sequences are WAL-logged).
-- CACHE 1: no session hands out tokens from a private, out-of-order block.
CREATE SEQUENCE fencing_tokens AS bigint MINVALUE 1 NO CYCLE CACHE 1;

-- Order in which pool items become free (added, released): claims take the
-- oldest free item first.
CREATE SEQUENCE free_order AS bigint MINVALUE 1 NO CYCLE;

-- One row per lease. A plain lease has pool = ''; an item of a lease pool (or
-- a permit of a semaphore) has its pool's name. A lease is held while
-- owner IS NOT NULL AND expires_at > clock_timestamp(): expiry is decided by
-- the database clock only.
CREATE TABLE leases (
    pool              text NOT NULL DEFAULT '' CHECK (octet_length(pool) <= 1024),
    name              text NOT NULL CHECK (octet_length(name) BETWEEN 1 AND 1024),
    -- Fencing token of the latest acquisition (NULL: never acquired). UNIQUE
    -- makes it a key column: an acquire, which changes it, takes the row's
    -- FOR UPDATE lock and so waits for fence()'s FOR KEY SHARE, while renew,
    -- set-data, release and complete (no key change) do not.
    token             bigint UNIQUE,
    owner             uuid,                         -- random per acquisition; NULL when free
    holder            text,                         -- label of the latest holder (host:pid by default)
    acquired_at       timestamptz,
    expires_at        timestamptz,                  -- NULL when free
    data              jsonb,                        -- payload, visible to all
    release_requested boolean NOT NULL DEFAULT false,
    done              boolean NOT NULL DEFAULT false, -- pool item completed for good
    seq               bigint,                       -- pool items: free order (free_order)
    slot              integer,                      -- semaphore permits: 0..permits-1
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (pool, name)
) WITH (
    fillfactor = 80,                        -- room for HOT renewals of plain leases
    autovacuum_vacuum_scale_factor = 0.0,   -- vacuum by dead-row count, not table size
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

-- Claim paths of pools. Each index covers only rows a claim looks for, and
-- none is ordered so that claimed or completed rows pile up where claims
-- start scanning (see pools.free_floor).
-- Free items, oldest first.
CREATE INDEX leases_free ON leases (pool, seq)
    WHERE pool <> '' AND owner IS NULL AND NOT done;
-- Held items by expiry, to take over expired ones.
CREATE INDEX leases_held ON leases (pool, expires_at)
    WHERE pool <> '' AND owner IS NOT NULL AND NOT done;
-- Items last held by a holder label, for sticky resume; churn stays inside a
-- holder's key range, where index pages clean themselves.
CREATE INDEX leases_sticky ON leases (pool, holder)
    WHERE pool <> '' AND holder IS NOT NULL AND NOT done;

-- One row per pool.
CREATE TABLE pools (
    name       text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 1024),
    kind       text NOT NULL DEFAULT 'pool',    -- 'pool' or 'semaphore'
    -- Every free item of the pool has seq >= free_floor. Claims scan the free
    -- index from here, so the dead index entries of claimed items behind it
    -- cost nothing even before VACUUM. A claim raises it (compare-and-set on
    -- version) to the lowest visible free seq; adds and releases lower it
    -- and bump version.
    free_floor bigint NOT NULL DEFAULT 0,
    version    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Token buckets: capacity n, refilled at n per period by the database clock.
CREATE TABLE rate_limits (
    name        text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 1024),
    tokens      float8 NOT NULL,
    refilled_at timestamptz NOT NULL,
    last_taken  boolean NOT NULL DEFAULT true   -- did the latest attempt take a token?
);

-- fence(name, token) / fence(pool, item, token): raise unless `token`
-- currently holds the lease, and lock the lease row (FOR KEY SHARE) until
-- the calling transaction ends, so that no newer holder can take it over
-- before this transaction's writes commit; the holder's own renewals and
-- release still go through. Call it inside the writing transaction
-- (BEGIN; SELECT fence(...); writes; COMMIT): in autocommit mode the lock
-- ends with the statement and protects nothing. Usable from any language or from a trigger:
--   SELECT pglock.fence('shard-17', 912);
--   SELECT pglock.fence('imagenet-train', 'shard-017', 913);
CREATE FUNCTION fence(lease_pool text, lease_name text, fencing_token bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM leases
     WHERE pool = lease_pool AND name = lease_name AND token = fencing_token
       AND owner IS NOT NULL AND expires_at > clock_timestamp()
       FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease % is not held by token %',
                CASE WHEN lease_pool = '' THEN lease_name ELSE lease_pool || '/' || lease_name END,
                fencing_token
            USING ERRCODE = 'PGL01',
                  HINT = 'the lease expired or was taken over; abort this transaction';
    END IF;
END
$$;

CREATE FUNCTION fence(lease_name text, fencing_token bigint) RETURNS void
LANGUAGE sql AS $$ SELECT fence('', lease_name, fencing_token) $$;

-- Pin the functions to this schema, whatever the caller's search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION fence(text, text, bigint) SET search_path = %I, pg_temp', current_schema());
    EXECUTE format('ALTER FUNCTION fence(text, bigint) SET search_path = %I, pg_temp', current_schema());
END
$$;
