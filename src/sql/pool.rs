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

/// Claim any item of a pool in one statement, in this order:
/// 1. `retried`: an item this very owner id already holds (a retry of a
///    statement whose answer was lost with its connection: the item is
///    claimed again with a new token);
/// 2. `sticky`: a released or expired item last held by this holder label
///    (a restarted worker resumes its own shard);
/// 3. `free`: the oldest free item, scanning from the pool's free_floor, so
///    the index entries of items claimed before are never walked;
/// 4. `expired`: the item whose lease expired first, once its lock-delay
///    (`delay_ms`, written from `$6` by the claim that took it) has passed.
///    A released item has no expiry and is never delayed.
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
/// and 1,100 pages after 7,600 claims by one holder. Claim+complete at 8
/// clients went from 0.35-0.58x to 0.86-1.08x of a plain `SKIP LOCKED`
/// claim; `tests/pools.rs` checks the plans.)
///
/// `SKIP LOCKED` everywhere: concurrent claimers never wait for each other.
/// `$5`, when not NULL, limits semaphore claims to permits below it.
/// `pool <> ''` repeats the indexes' predicate so that generic plans of the
/// prepared statement can use them.
///
/// `lowest` is the lowest free seq visible (locked ones included, so an
/// in-flight claim that may roll back is never skipped); `raise` moves the
/// floor up to it when the claimed item lies far above it (so `lowest` is
/// only read then), only if no add or release
/// changed the pool since this statement's snapshot (`version`, checked
/// again on the row's latest version when it is locked). It never waits:
/// a pools row that a concurrent claim is raising (or an add or release is
/// lowering) is skipped, since raising the floor is only a shortcut. (A
/// waiting raise stalled every claimer that reached the same floor for a
/// commit: claim+complete at 8 workers ran 16% faster without the wait.)
/// Its first condition names no column, so the server makes it a one-time
/// filter and skips both looks at the pools row unless the claimed item
/// lies more than 32 above the floor of this statement's snapshot, which
/// any raise needs (a raise by another claim only lifts the floor, and an
/// add or release changes `version`). Claims mostly take an item near the
/// floor, and the two unneeded pools scans cost a claim+complete about
/// 35 us of server time at one client.
///
/// When nothing is claimable, the last branch tells how long until the
/// first held item expires (or its lock-delay ends), whether anything is held at all, whether a
/// free item exists that a concurrent claim had locked (nothing free and
/// nothing held: the pool is drained), and whether the pool exists at all
/// (no pools row: no item was ever added, so the name is likely a typo).
pub(super) const POOL_CLAIM: &str = "\
WITH p AS (
    SELECT free_floor, version FROM {s}.pools WHERE name = $1
), retried AS (
    SELECT name FROM {s}.leases
     WHERE pool = $1 AND pool <> '' AND holder >= $3 AND holder <= $3 AND NOT done
       AND coalesce(owner = $2, false)
       AND ($5::int4 IS NULL OR slot < $5)
     ORDER BY holder LIMIT 1 FOR UPDATE SKIP LOCKED
), sticky AS (
    SELECT name FROM {s}.leases
     WHERE pool = $1 AND pool <> '' AND holder >= $3 AND holder <= $3 AND NOT done
       AND (owner IS NULL
            OR expires_at + coalesce(delay_ms, 0) * interval '1 ms' <= clock_timestamp())
       AND ($5::int4 IS NULL OR slot < $5)
       AND NOT EXISTS (SELECT 1 FROM retried)
     ORDER BY holder LIMIT 1 FOR UPDATE SKIP LOCKED
), free AS (
    SELECT name, seq FROM {s}.leases
     WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done AND seq >= (SELECT free_floor FROM p)
       AND ($5::int4 IS NULL OR slot < $5)
       AND NOT EXISTS (SELECT 1 FROM retried) AND NOT EXISTS (SELECT 1 FROM sticky)
     ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT name FROM {s}.leases
     WHERE pool = $1 AND pool <> '' AND owner IS NOT NULL AND NOT done AND expires_at <= clock_timestamp()
       AND expires_at + coalesce(delay_ms, 0) * interval '1 ms' <= clock_timestamp()
       AND ($5::int4 IS NULL OR slot < $5)
       AND NOT EXISTS (SELECT 1 FROM retried) AND NOT EXISTS (SELECT 1 FROM sticky)
       AND NOT EXISTS (SELECT 1 FROM free)
     ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED
), pick AS (
    SELECT name FROM retried UNION ALL SELECT name FROM sticky
    UNION ALL SELECT name FROM free UNION ALL SELECT name FROM expired
     LIMIT 1
), claimed AS (
    UPDATE {s}.leases AS l
       SET token = nextval('{s}.fencing_tokens'), owner = $2, holder = $3,
           acquired_at = clock_timestamp(), delay_ms = $6,
           expires_at = clock_timestamp() + {s}.ttl($4),
           release_requested = false, updated_at = clock_timestamp()
      FROM pick
     WHERE l.pool = $1 AND l.name = pick.name
    RETURNING l.name, l.token, l.expires_at, l.data
), lowest AS (
    SELECT seq FROM {s}.leases
     WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done AND seq >= (SELECT free_floor FROM p)
     ORDER BY seq LIMIT 1
), raise AS (
    UPDATE {s}.pools
       SET free_floor = (SELECT seq FROM lowest)
     WHERE (SELECT seq FROM free) > (SELECT free_floor FROM p) + 32
       AND name = (SELECT name FROM {s}.pools
                    WHERE name = $1 AND version = (SELECT version FROM p)
                      AND (SELECT seq FROM free) > free_floor + 32
                      AND (SELECT seq FROM lowest) > free_floor + 32
                      FOR UPDATE SKIP LOCKED)
)
SELECT true AS claimed, name, token, expires_at, data, NULL::float8 AS wait_ms,
       true AS any_held, false AS free_locked, true AS pool_exists
  FROM claimed
UNION ALL
SELECT false, NULL, NULL, NULL, NULL,
       (SELECT greatest(0, extract(epoch FROM min(expires_at + coalesce(delay_ms, 0) * interval '1 ms') - clock_timestamp()) * 1000)::float8
          FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NOT NULL AND NOT done
           AND expires_at + coalesce(delay_ms, 0) * interval '1 ms' > clock_timestamp()
           AND ($5::int4 IS NULL OR slot < $5)),
       EXISTS (SELECT 1 FROM {s}.leases WHERE pool = $1 AND pool <> '' AND owner IS NOT NULL AND NOT done),
       (SELECT seq FROM {s}.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done AND seq >= (SELECT free_floor FROM p)
           AND ($5::int4 IS NULL OR slot < $5)
         ORDER BY seq LIMIT 1) IS NOT NULL,
       EXISTS (SELECT 1 FROM p)
 WHERE NOT EXISTS (SELECT 1 FROM claimed)";

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
