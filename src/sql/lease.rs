//! The statements on lease rows: acquire, renew, set data, release, give
//! back, complete, fence, wait marks, release requests and the listings.

/// Take a lease that is absent, released or expired, in one statement.
///
/// `cur` reads the row without locking it: on a held lease the statement
/// touches no lock at all, so failed attempts never queue behind the holder
/// (an `INSERT … ON CONFLICT DO UPDATE … WHERE expired` would lock the row
/// even when the WHERE is false). `lk` locks a free or expired row with
/// `SKIP LOCKED`, re-checking expiry on the latest version (a concurrent
/// taker's committed version fails the re-check), and never waits: a row
/// held by a fenced transaction (`FOR KEY SHARE`) counts as taken for now.
/// The token comes from the global sequence when the row is written. The
/// last branch reports the current holder and how long until its expiry, by
/// the database clock, so a waiter knows when to look again. A row that
/// already carries this owner id (a retry of a statement whose answer was
/// lost with its connection) is taken again, with a new token.
///
/// Lock-delay (`$6`, milliseconds or NULL, stored in `delay_ms`): an
/// expired row is free only `delay_ms` after its expiry, and `wait_ms`
/// counts to then. A released row has no expiry (`owner` and `expires_at`
/// NULL), so it is never delayed. `{s}.ttl($4)` refuses a TTL not above 0.
pub(super) const LEASE_ACQUIRE: &str = "\
WITH cur AS (
    SELECT token, owner, holder, expires_at, delay_ms FROM {s}.leases WHERE pool = '' AND name = $1
), lk AS (
    SELECT l.name FROM {s}.leases l, cur
     WHERE l.pool = '' AND l.name = $1
       AND (cur.owner IS NULL OR cur.owner = $2
            OR cur.expires_at + coalesce(cur.delay_ms, 0) * interval '1 ms' <= clock_timestamp())
       AND (l.owner IS NULL OR l.owner = $2
            OR l.expires_at + coalesce(l.delay_ms, 0) * interval '1 ms' <= clock_timestamp())
       FOR UPDATE OF l SKIP LOCKED
), ins AS (
    INSERT INTO {s}.leases AS l (pool, name, token, owner, holder, acquired_at, expires_at, data, delay_ms,
                                 data_token, data_holder)
    SELECT '', $1, t.token, $2, $3, clock_timestamp(),
           clock_timestamp() + {s}.ttl($4), $5, $6,
           CASE WHEN $5::jsonb IS NOT NULL THEN t.token END, CASE WHEN $5::jsonb IS NOT NULL THEN $3::text END
      FROM (SELECT nextval('{s}.fencing_tokens') AS token) t
     WHERE NOT EXISTS (SELECT 1 FROM cur)
    ON CONFLICT (pool, name) DO NOTHING
    RETURNING l.token, l.expires_at, l.data
), tok AS (
    SELECT nextval('{s}.fencing_tokens') AS token FROM lk
), upd AS (
    UPDATE {s}.leases AS l
       SET token = tok.token, owner = $2, holder = $3,
           acquired_at = clock_timestamp(), delay_ms = $6,
           expires_at = clock_timestamp() + {s}.ttl($4),
           data = coalesce($5, l.data), release_requested = false,
           data_token = CASE WHEN $5::jsonb IS NOT NULL THEN tok.token ELSE l.data_token END,
           data_holder = CASE WHEN $5::jsonb IS NOT NULL THEN $3::text ELSE l.data_holder END,
           updated_at = clock_timestamp()
      FROM lk, tok
     WHERE l.pool = '' AND l.name = lk.name
    RETURNING l.token, l.expires_at, l.data
)
SELECT true AS acquired, token, expires_at, data, NULL::text AS holder, NULL::float8 AS wait_ms FROM ins
UNION ALL
SELECT true, token, expires_at, data, NULL, NULL FROM upd
UNION ALL
SELECT false, token, expires_at, NULL, holder,
       greatest(0, extract(epoch FROM expires_at + coalesce(delay_ms, 0) * interval '1 ms' - clock_timestamp()) * 1000)::float8
  FROM cur
 WHERE NOT EXISTS (SELECT 1 FROM ins) AND NOT EXISTS (SELECT 1 FROM upd)";

/// Renew a batch of leases in one statement (keep-alive renews every lease
/// of a `Locks` that is due with one of these). Only a lease that is still
/// ours and not yet expired by the database clock is renewed; a missing row
/// in the result means lost.
pub(super) const LEASE_RENEW: &str = "\
UPDATE {s}.leases AS l
   SET expires_at = clock_timestamp() + {s}.ttl(r.ttl_ms),
       updated_at = clock_timestamp()
  FROM unnest($1::text[], $2::text[], $3::int8[], $4::uuid[], $5::int8[])
       AS r(pool, name, token, owner, ttl_ms)
 WHERE l.pool = r.pool AND l.name = r.name AND l.token = r.token AND l.owner = r.owner
   AND l.expires_at > clock_timestamp()
RETURNING l.token, l.expires_at, l.release_requested";

/// Replace the payload, renewing the lease with it.
pub(super) const LEASE_SET_DATA: &str = "\
UPDATE {s}.leases
   SET data = $5, data_token = token, data_holder = holder,
       expires_at = clock_timestamp() + {s}.ttl($6), updated_at = clock_timestamp()
 WHERE pool = $1 AND name = $2 AND token = $3 AND owner = $4 AND expires_at > clock_timestamp()
RETURNING expires_at, release_requested";

/// Let go of a plain lease, if it is still ours (by owner id and token), and
/// wake its waiters: `{s}.wake($5)` sends the NOTIFY only when a waiter has
/// marked itself ([`WAIT_MARK`]), and says whether it did. Idempotent: a
/// repeat after success (the token is unchanged and nobody holds it)
/// succeeds again.
pub(super) const LEASE_RELEASE: &str = "\
UPDATE {s}.leases
   SET owner = NULL, expires_at = NULL, release_requested = false,
       updated_at = clock_timestamp()
 WHERE pool = $1 AND name = $2 AND token = $3 AND (owner = $4 OR owner IS NULL)
RETURNING {s}.wake($5)";

/// Hand a plain lease straight to a waiter of the same process: in one
/// statement, the lease this token and owner hold (`$1` name, `$2` token,
/// `$3` owner) is taken for the waiter (`$4` its new owner id, `$5` holder,
/// `$6` TTL in ms, `$7` data or NULL, `$8` lock-delay in ms or NULL) with a
/// new token from the sequence, exactly as [`LEASE_ACQUIRE`] would write it.
/// It replaces a release followed by the waiter's acquire: one commit and
/// no NOTIFY instead of two commits and a NOTIFY. Only a lease that is
/// still held by the database clock is handed on (an expired one is
/// released as usual, so no holder picks a successor for a lease it no
/// longer had). A row that already carries the waiter's owner id (a repeat
/// of this statement whose answer was lost with its connection) is taken
/// again, with a new token. No row: nothing was handed on.
pub(super) const LEASE_HANDOFF: &str = "\
WITH tok AS (
    SELECT nextval('{s}.fencing_tokens') AS token
)
UPDATE {s}.leases AS l
   SET token = tok.token, owner = $4, holder = $5,
       acquired_at = clock_timestamp(), delay_ms = $8,
       expires_at = clock_timestamp() + {s}.ttl($6),
       data = coalesce($7, l.data), release_requested = false,
       data_token = CASE WHEN $7::jsonb IS NOT NULL THEN tok.token ELSE l.data_token END,
       data_holder = CASE WHEN $7::jsonb IS NOT NULL THEN $5::text ELSE l.data_holder END,
       updated_at = clock_timestamp()
  FROM tok
 WHERE l.pool = '' AND l.name = $1
   AND ((l.token = $2 AND l.owner = $3 AND l.expires_at > clock_timestamp()) OR l.owner = $4)
RETURNING l.token, l.expires_at, l.data";

/// Put a pool item back, if it is still ours: it goes to the end of the
/// free order, and the pool's floor and version move so that no concurrent
/// claim raises the floor past it. Wakes the pool's waiters.
pub(super) const ITEM_RELEASE: &str = "\
WITH rel AS (
    UPDATE {s}.leases
       SET owner = NULL, expires_at = NULL, release_requested = false,
           seq = nextval('{s}.free_order'), updated_at = clock_timestamp()
     WHERE pool = $1 AND name = $2 AND token = $3 AND (owner = $4 OR owner IS NULL) AND NOT done
    RETURNING seq
), bump AS (
    UPDATE {s}.pools SET free_floor = least(free_floor, (SELECT seq FROM rel)), version = version + 1
     WHERE name = $1 AND EXISTS (SELECT 1 FROM rel)
)
SELECT {s}.wake($5) FROM rel";

/// Mark a pool item done for good, if it is still ours. No NOTIFY: a
/// completion frees nothing to claim, and every NOTIFY serializes commits on
/// the database's notification lock (a third of the claim+complete rate
/// with four workers). A waiter learns that the pool is drained at its next
/// look (at the first held item's expiry, or within two seconds).
pub(super) const ITEM_COMPLETE: &str = "\
UPDATE {s}.leases
   SET done = true, owner = NULL, expires_at = NULL, release_requested = false,
       updated_at = clock_timestamp()
 WHERE pool = $1 AND name = $2 AND token = $3 AND (owner = $4 OR (owner IS NULL AND done))
RETURNING token";

/// Undo an acquire whose caller went away before reading the answer (a
/// cancelled or timed-out `acquire()`): free the lease if this owner id got
/// it, and wake its waiters. An upsert, because the acquire may still be
/// inserting the row on its own connection: the insert path waits for that
/// transaction and sees its row (a plain UPDATE would not). With no row at
/// all, it leaves a free one.
pub(super) const LEASE_ABANDON: &str = "\
INSERT INTO {s}.leases AS l (pool, name) VALUES ('', $1)
ON CONFLICT (pool, name) DO UPDATE
   SET owner = NULL, expires_at = NULL, updated_at = clock_timestamp()
 WHERE l.owner = $2
RETURNING {s}.wake($3)";

/// Undo a claim whose caller went away before reading the answer: put back
/// whichever item this owner id got, as a release does.
pub(super) const ITEM_ABANDON: &str = "\
WITH rel AS (
    UPDATE {s}.leases
       SET owner = NULL, expires_at = NULL, seq = nextval('{s}.free_order'),
           updated_at = clock_timestamp()
     WHERE pool = $1 AND pool <> '' AND holder = $2 AND owner = $3 AND NOT done
    RETURNING seq
), bump AS (
    UPDATE {s}.pools SET free_floor = least(free_floor, (SELECT min(seq) FROM rel)), version = version + 1
     WHERE name = $1 AND EXISTS (SELECT 1 FROM rel)
)
SELECT {s}.wake($4) FROM rel";

/// The fence check, through the function other languages call too
/// (`$1` pool, `$2` name, `$3` token): raises PGL01 unless the token holds
/// the lease by the statement clock, and locks the row FOR KEY SHARE until
/// the caller's transaction ends, so a takeover (which changes the key
/// column `token`) waits for that transaction. (Outside a transaction the
/// lock would end with the statement: the client refuses that before
/// sending it.)
pub(super) const LEASE_FENCE: &str = "SELECT {s}.fence($1, $2, $3)::text";

/// The fence of a set of plain leases (`$1` names, `$2` tokens, in the
/// order the set took them): the same function as [`LEASE_FENCE`], once per
/// lease, in one statement; the first token that fails raises PGL01 naming
/// it.
pub(super) const SET_FENCE: &str =
    "SELECT {s}.fence(u.n, u.t)::text FROM unnest($1::text[], $2::int8[]) AS u(n, t)";

/// Mark a waiter (`$2`, a uuid per wait) of the NOTIFY payload `$1` for
/// `$3` milliseconds: releases of that topic send their NOTIFY while a mark
/// lives (see `migrations/0004_waiters.sql` for why no wake-up is lost
/// between the mark and a release). Sent once the first look failed and the
/// LISTEN is in place, before the next look; renewed while waiting.
pub(super) const WAIT_MARK: &str = "SELECT {s}.wait_mark($1, $2, $3)::text";

/// Remove a waiter's mark (`$1` payload, `$2` waiter) when it stops
/// waiting, and the marks of that topic that have aged out (dead waiters).
pub(super) const WAIT_UNMARK: &str = "SELECT {s}.wait_unmark($1, $2)::text";

/// Wake the waiters and observers of a lease (`$1` its payload): a new
/// election leader announces itself with it (an acquire sends no NOTIFY).
pub(super) const ANNOUNCE: &str = "SELECT pg_notify('pglock', $1)::text";

/// Ask the holder to let go: flag the row and wake it. Returns the token of
/// the holder that was asked, if the lease is held.
pub(super) const LEASE_REQUEST_RELEASE: &str = "\
UPDATE {s}.leases SET release_requested = true, updated_at = clock_timestamp()
 WHERE pool = $1 AND name = $2 AND owner IS NOT NULL AND expires_at > clock_timestamp()
RETURNING token, pg_notify('pglock', $3)::text";

/// Does token `$3` still hold lease `$1/$2` with a release requested?
pub(super) const LEASE_RELEASE_REQUESTED: &str = "\
SELECT release_requested FROM {s}.leases WHERE pool = $1 AND name = $2 AND token = $3";

/// Release whoever holds the lease. Explicit and logged by the caller; the
/// token sequence is not touched (the next acquire still gets a greater one).
/// A pool item goes to the end of the free order, as on release.
pub(super) const LEASE_FORCE_RELEASE: &str = "\
WITH rel AS (
    UPDATE {s}.leases
       SET owner = NULL, expires_at = NULL, release_requested = false,
           seq = CASE WHEN pool = '' THEN NULL ELSE nextval('{s}.free_order') END,
           updated_at = clock_timestamp()
     WHERE pool = $1 AND name = $2 AND owner IS NOT NULL
    RETURNING token, holder, seq
), bump AS (
    UPDATE {s}.pools SET free_floor = least(free_floor, (SELECT seq FROM rel)), version = version + 1
     WHERE name = $1 AND EXISTS (SELECT 1 FROM rel)
)
SELECT token, holder, {s}.wake($3) FROM rel";

/// The columns of a lease row that [`LEASE_GET`] and [`LEASE_LIST`] show.
macro_rules! lease_row {
    () => {
        "\
SELECT pool, name, coalesce(token, 0) AS token, holder,
       owner IS NOT NULL AND expires_at > clock_timestamp() AS held,
       acquired_at, expires_at, data, data_token, data_holder, release_requested,
       CASE WHEN owner IS NOT NULL
            THEN extract(epoch FROM expires_at - clock_timestamp()) * 1000 END::float8 AS expires_in_ms,
       CASE WHEN owner IS NOT NULL AND expires_at <= clock_timestamp()
             AND expires_at + delay_ms * interval '1 ms' > clock_timestamp()
            THEN expires_at + delay_ms * interval '1 ms' END AS delayed_until
  FROM {s}.leases
"
    };
}

/// One lease row by pool and name, held or not, as [`LEASE_LIST`] shows
/// it: who holds it and until when, or what became of it.
pub(super) const LEASE_GET: &str = concat!(lease_row!(), " WHERE pool = $1 AND name = $2");

/// Every lease row, for `pglock ls`: plain leases and held pool items.
pub(super) const LEASE_LIST: &str = concat!(
    lease_row!(),
    " WHERE pool = '' OR owner IS NOT NULL\n ORDER BY pool, name"
);
