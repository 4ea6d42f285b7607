//! The statements on pool rows: add, claim, status, items.

/// Add items to a pool, idempotently, in one statement: existing items are
/// left as they are (done or not); new items join the free order. The pools
/// row is written once, after the items: its free_floor moves down to the
/// new items and its version changes, so that a concurrent claim either
/// waits for this row lock and then fails its compare-and-set on `version`,
/// or raised the floor before and sees it lowered again here. (A second
/// UPDATE of the same row in the same statement would be silently skipped.)
pub(super) const POOL_ADD: &str = "\
WITH ins AS (
    INSERT INTO {s}.leases (pool, name, seq, slot)
    SELECT $1, u.item, nextval('{s}.free_order'), u.slot
      FROM (SELECT DISTINCT ON (item) item, slot, ord
              FROM unnest($2::text[], $4::int4[]) WITH ORDINALITY AS u(item, slot, ord)
             ORDER BY item, ord) u
     ORDER BY u.ord
    ON CONFLICT (pool, name) DO NOTHING
    RETURNING seq
), p AS (
    INSERT INTO {s}.pools AS p (name, kind, free_floor)
    VALUES ($1, $3, coalesce((SELECT min(seq) FROM ins), 0))
    ON CONFLICT (name) DO UPDATE
       SET version = p.version + 1,
           free_floor = least(p.free_floor, coalesce((SELECT min(seq) FROM ins), p.free_floor))
    RETURNING name
)
SELECT count(*) FROM ins";

/// Claim an item of a pool in one statement: an UPDATE of the item that
/// `pick` chose, where `pick` is the probes in `{probes}` (a `UNION ALL`)
/// under `LIMIT 1`, so the server runs them in order and stops at the
/// first that yields an item (the probes after it are never started). The
/// forms (`Statements`):
/// - the claim: `sticky`, then `free`; the plain claim: `free` alone;
/// - the takeover, sent only when a claim took nothing: `expired`;
/// - each repeated (its answer lost with its connection) with `retried`
///   in front.
///
/// The probes:
/// - `retried` ([`RETRIED`]): an item this very owner id already holds
///   (the item is claimed again with a new token);
/// - `sticky` ([`STICKY`]): a released or expired item last held by this
///   holder label (a restarted worker resumes its own shard); never for a
///   semaphore, and left out while the client knows the label has nothing
///   to resume (`pool::resume`);
/// - `free` ([`FREE`]): the oldest free item, scanning from the pool's
///   free_floor, so the index entries of items claimed before are never
///   walked (a LATERAL join on the pools row, so that the floor is read
///   once, for the scan and for `raise`);
/// - `expired` ([`EXPIRED`]): the item whose lease expired first, once its
///   lock-delay (`delay_ms`, written from `$6` by the claim that took it)
///   has passed. A released item has no expiry and is never delayed. It
///   is a statement of its own, so that the claim's plan is only as large
///   as the free path needs: a plan's every node and expression is set up
///   at each execution, run or not (pgbench, 1M items, 8 clients: the
///   claim with the expired probe ran at 0.92-0.94x of a bare
///   `SKIP LOCKED` claim, without it 0.97-0.98x).
///
/// `retried` and `sticky` are written so that each can only be a plain
/// index scan of the holder's range of `leases_sticky`, in index order,
/// that stops at its first row: `holder` is bounded by a range (`>= $3 AND
/// <= $3`, where `= $3` would make `ORDER BY holder` a no-op), and
/// `coalesce(owner = $2, false)` does not imply `owner IS NOT NULL`, so
/// `leases_held` (every held item of the pool) cannot serve `retried`.
/// Why it matters: every item a holder claimed and completed leaves a dead
/// entry in its range until VACUUM. A plain index scan marks the dead
/// entries it passes, and later scans skip them without reading the heap;
/// a bitmap scan marks nothing. (One probe sorted by `owner = $2`, planned
/// as a bitmap scan, read every dead row of the range on every claim: 3 ms
/// and 1,100 pages after 7,600 claims by one holder. `tests/pools.rs`
/// checks the plans.)
///
/// `pick` is `MATERIALIZED`: run once, whatever plan the UPDATE gets. As a
/// subquery in the UPDATE's FROM list, a plan that scans the pool's rows
/// first and runs the probes once per row (chosen for a small pool) let
/// one claim take several items: with 64 semaphore permits and 8 clients,
/// up to 26 per claim, each after the previous one was locked by this very
/// statement. `tests/pools.rs` runs that load.
///
/// `SKIP LOCKED` everywhere: concurrent claimers never wait for each other.
/// `$5`, when not NULL, limits semaphore claims to permits below it.
/// `pool <> ''` repeats the indexes' predicate so that generic plans of the
/// prepared statement can use them.
///
/// Why this shape: an earlier claim was one statement of CTEs (the probes,
/// the UPDATE, the floor raise and the nothing-claimed answer). The CTEs
/// and the branches that only run when nothing is claimed cost a claim
/// about 40% more server CPU than a plain `FOR UPDATE SKIP LOCKED` claim
/// at 8 clients (pgbench, 1M items, fsync=on: 0.70x the plain claim's
/// throughput; this shape 0.9-0.97x). So the two rare parts are statements
/// of their own: [`POOL_WAIT`] when nothing was claimed, and
/// [`POOL_RAISE`], sent in the background when `raise` says the claimed
/// item lies more than 32 above the floor (the floor is only a shortcut,
/// so a late raise costs a few scanned entries, never an item).
pub(super) const POOL_CLAIM: &str = "\
WITH pick AS MATERIALIZED (
        {probes}
        LIMIT 1
)
UPDATE {s}.leases AS l
   SET token = nextval('{s}.fencing_tokens'), owner = $2, holder = $3,
       acquired_at = clock_timestamp(), delay_ms = $6,
       expires_at = clock_timestamp() + {s}.ttl($4),
       release_requested = false, updated_at = clock_timestamp()
  FROM pick
 WHERE l.pool = $1 AND l.name = pick.name
RETURNING l.name, l.token, l.expires_at, l.data,
          pick.seq > pick.floor + 32 AS raise, pick.resumed";

/// The free probe of [`POOL_CLAIM`]: the oldest free item, from the
/// pool's free floor.
pub(super) const FREE: &str = "\
SELECT * FROM (
        SELECT free.name, free.seq, p.free_floor AS floor, false AS resumed FROM {s}.pools p CROSS JOIN LATERAL (
        SELECT name, seq FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done
           AND seq >= p.free_floor
           AND ($5::int4 IS NULL OR slot < $5)
         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) free
         WHERE p.name = $1) f";

/// The probe of the takeover form of [`POOL_CLAIM`]: the item whose lease
/// expired first, once its lock-delay is over. `expires_at <= now()` (the
/// statement's start) bounds the index scan, so that it stops at the first
/// item still held instead of walking every held item; `clock_timestamp()`
/// is not a bound an index scan can use.
pub(super) const EXPIRED: &str = "\
SELECT * FROM (
        SELECT name, NULL::int8 AS seq, NULL::int8 AS floor, false AS resumed FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NOT NULL AND NOT done
           AND expires_at <= now()
           AND expires_at + coalesce(delay_ms, 0) * interval '1 ms' <= clock_timestamp()
           AND ($5::int4 IS NULL OR slot < $5)
         ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED) expired";

/// The first probe of the repeat forms of [`POOL_CLAIM`]: a repeated claim
/// takes back an item its owner already holds.
pub(super) const RETRIED: &str = "\
SELECT * FROM (
        SELECT name, NULL::int8 AS seq, NULL::int8 AS floor, true AS resumed FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND holder >= $3 AND holder <= $3 AND NOT done
           AND coalesce(owner = $2, false)
           AND ($5::int4 IS NULL OR slot < $5)
         ORDER BY holder LIMIT 1 FOR UPDATE SKIP LOCKED) retried
        UNION ALL
        ";

/// The sticky probe of [`POOL_CLAIM`]: an item released by, or expired
/// under, this holder label.
pub(super) const STICKY: &str = "\
SELECT * FROM (
        SELECT name, NULL::int8 AS seq, NULL::int8 AS floor, true AS resumed FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND holder >= $3 AND holder <= $3 AND NOT done
           AND (owner IS NULL
                OR expires_at + coalesce(delay_ms, 0) * interval '1 ms' <= clock_timestamp())
           AND ($5::int4 IS NULL OR slot < $5)
         ORDER BY holder LIMIT 1 FOR UPDATE SKIP LOCKED) sticky
        UNION ALL
        ";

/// Why a claim took nothing, when neither the claim nor the takeover
/// ([`POOL_CLAIM`]) returned a row: how long
/// until the first held item expires (or its lock-delay ends), whether
/// anything is held at all, whether a free item exists (one that a
/// concurrent claim had locked, or one freed since; look again soon;
/// nothing free and nothing held: the pool is drained), and whether the
/// pool exists at all (no pools row: no item was ever added, so the name is
/// likely a typo). The free probe is ordered by `seq` so that it can only
/// walk `leases_free` from the floor: as an `EXISTS`, it is planned as a
/// sequential scan of the table, which reads every done item of a pool
/// that is nearly done.
pub(super) const POOL_WAIT: &str = "\
SELECT (SELECT greatest(0, extract(epoch FROM min(expires_at + coalesce(delay_ms, 0) * interval '1 ms') - clock_timestamp()) * 1000)::float8
          FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NOT NULL AND NOT done
           AND expires_at + coalesce(delay_ms, 0) * interval '1 ms' > clock_timestamp()
           AND ($2::int4 IS NULL OR slot < $2)) AS wait_ms,
       EXISTS (SELECT 1 FROM {s}.leases
                WHERE pool = $1 AND pool <> '' AND owner IS NOT NULL AND NOT done) AS any_held,
       (SELECT seq FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done
           AND seq >= (SELECT free_floor FROM {s}.pools WHERE name = $1)
           AND ($2::int4 IS NULL OR slot < $2)
         ORDER BY seq LIMIT 1) IS NOT NULL AS free_found,
       EXISTS (SELECT 1 FROM {s}.pools WHERE name = $1) AS pool_exists";

/// Raise a pool's free_floor to its lowest free seq, sent in the background
/// after a claim whose item lay more than 32 above the floor. The lowest
/// free seq counts locked rows too, so an in-flight claim that may roll
/// back is never skipped. The floor and the lowest seq are read in this
/// statement's snapshot, and the pools row is written only if no add or
/// release changed it since (`version`, checked again on the row's latest
/// version when it is locked). It never waits: a pools row that another
/// raise, add or release has locked is skipped, since raising the floor is
/// only a shortcut. (A waiting raise stalled every claimer that reached the
/// same floor for a commit.)
pub(super) const POOL_RAISE: &str = "\
WITH p AS (
    SELECT free_floor, version FROM {s}.pools WHERE name = $1
), lowest AS (
    SELECT seq FROM {s}.leases
     WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done AND seq >= (SELECT free_floor FROM p)
     ORDER BY seq LIMIT 1
)
UPDATE {s}.pools
   SET free_floor = (SELECT seq FROM lowest)
 WHERE name = (SELECT name FROM {s}.pools
                WHERE name = $1 AND version = (SELECT version FROM p)
                  AND (SELECT seq FROM lowest) > free_floor + 32
                  FOR UPDATE SKIP LOCKED)
RETURNING free_floor";

/// Counts of a pool, in one scan of its rows, and whether the pool exists
/// (a pools row: some item was once added). An expired item whose
/// lock-delay is not over is `delayed`: neither held nor free yet.
pub(super) const POOL_STATUS: &str = "\
SELECT EXISTS (SELECT 1 FROM {s}.pools WHERE name = $1) AS pool_exists,
       count(*) AS total,
       count(*) FILTER (WHERE NOT done AND (owner IS NULL
                        OR expires_at + coalesce(delay_ms, 0) * interval '1 ms' <= clock_timestamp())) AS free,
       count(*) FILTER (WHERE NOT done AND owner IS NOT NULL AND expires_at > clock_timestamp()) AS held,
       count(*) FILTER (WHERE NOT done AND owner IS NOT NULL AND expires_at <= clock_timestamp()
                          AND expires_at + coalesce(delay_ms, 0) * interval '1 ms' > clock_timestamp()) AS delayed,
       count(*) FILTER (WHERE done) AS done
  FROM {s}.leases WHERE pool = $1";

/// Every item of a pool, in free order. `delayed_until` as in the lease
/// listing: set while an expired item's lock-delay is not over.
pub(super) const POOL_ITEMS: &str = "\
SELECT name, coalesce(token, 0) AS token, holder, done,
       NOT done AND owner IS NOT NULL AND expires_at > clock_timestamp() AS held,
       expires_at, data, data_token, data_holder,
       CASE WHEN NOT done AND owner IS NOT NULL AND expires_at <= clock_timestamp()
             AND expires_at + delay_ms * interval '1 ms' > clock_timestamp()
            THEN expires_at + delay_ms * interval '1 ms' END AS delayed_until
  FROM {s}.leases WHERE pool = $1 ORDER BY seq, name";
