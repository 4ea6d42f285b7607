//! The advisory lock statements. They name no table, so they need no
//! schema.
//!
//! An advisory key travels as `$1`: an `int8` as is ([`KeyKind::Int`]), a
//! string as `text` that the statement hashes with `hashtextextended($1,
//! 0)` ([`KeyKind::Text`]), exactly as `psql` would. Each statement is
//! chosen by named enums — key kind, [`Mode`], [`Wait`] — so each binds one
//! kind.

/// How the key travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// `$1 int8`, the key itself.
    Int,
    /// `$1 text`, hashed by the server.
    Text,
}

/// Lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Exclusive,
    Shared,
}

/// Whether a lock statement sets its own `lock_timeout` (`$2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The session's (0: wait as long as it takes) or the transaction's.
    Untimed,
    /// `$2`, e.g. `'1500ms'`.
    Timed,
}

/// A session lock. Column 0 is the numeric key (a text key is hashed by the
/// server); the unlock sends it back. The lock waits in the server, no
/// client polling: pglock's sessions have `lock_timeout = 0`; a timed lock
/// puts its own in force first — the target list is evaluated left to
/// right, and `set_config(.., true)` lasts only for this statement's
/// implicit transaction.
pub(crate) fn lock(kind: KeyKind, mode: Mode, wait: Wait) -> &'static str {
    use {KeyKind::*, Mode::*, Wait::*};
    match (kind, mode, wait) {
        (Int, Exclusive, Untimed) => "SELECT $1::int8, pg_advisory_lock($1)::text",
        (Int, Exclusive, Timed) => {
            "SELECT $1::int8, set_config('lock_timeout', $2, true), pg_advisory_lock($1)::text"
        }
        (Int, Shared, Untimed) => "SELECT $1::int8, pg_advisory_lock_shared($1)::text",
        (Int, Shared, Timed) => {
            "SELECT $1::int8, set_config('lock_timeout', $2, true), pg_advisory_lock_shared($1)::text"
        }
        (Text, Exclusive, Untimed) => {
            "SELECT hashtextextended($1, 0), pg_advisory_lock(hashtextextended($1, 0))::text"
        }
        (Text, Exclusive, Timed) => {
            "SELECT hashtextextended($1, 0), set_config('lock_timeout', $2, true), \
             pg_advisory_lock(hashtextextended($1, 0))::text"
        }
        (Text, Shared, Untimed) => {
            "SELECT hashtextextended($1, 0), pg_advisory_lock_shared(hashtextextended($1, 0))::text"
        }
        (Text, Shared, Timed) => {
            "SELECT hashtextextended($1, 0), set_config('lock_timeout', $2, true), \
             pg_advisory_lock_shared(hashtextextended($1, 0))::text"
        }
    }
}

/// One session-lock attempt, no wait: the numeric key, and whether the
/// lock was taken.
pub(crate) fn try_lock(kind: KeyKind, mode: Mode) -> &'static str {
    use {KeyKind::*, Mode::*};
    match (kind, mode) {
        (Int, Exclusive) => "SELECT $1::int8, pg_try_advisory_lock($1)",
        (Int, Shared) => "SELECT $1::int8, pg_try_advisory_lock_shared($1)",
        (Text, Exclusive) => {
            "SELECT hashtextextended($1, 0), pg_try_advisory_lock(hashtextextended($1, 0))"
        }
        (Text, Shared) => {
            "SELECT hashtextextended($1, 0), pg_try_advisory_lock_shared(hashtextextended($1, 0))"
        }
    }
}

/// Release by numeric key; `false` means this session did not hold the
/// lock.
pub(crate) fn unlock(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "SELECT pg_advisory_unlock($1)",
        Mode::Shared => "SELECT pg_advisory_unlock_shared($1)",
    }
}

/// Does session `$1` of the server started at `$2` still hold lock `$3`? A
/// bigint advisory key shows in `pg_locks` as `classid` (high 32 bits),
/// `objid` (low 32 bits), `objsubid = 1`.
pub(crate) const HELD_BY: &str = "SELECT pg_postmaster_start_time() = $2 \
     AND EXISTS (SELECT 1 FROM pg_locks \
     WHERE locktype = 'advisory' AND pid = $1 AND granted AND objsubid = 1 \
       AND ((classid::int8 << 32) | objid::int8) = $3)";

/// Is session `$1` of the server started at `$2` still there? One check
/// for every guard multiplexed on that session.
pub(crate) const SESSION_ALIVE: &str = "SELECT pg_postmaster_start_time() = $2 \
     AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)";

/// A timed transaction lock around `$lock`: read the old `lock_timeout`,
/// set ours, wait for the lock, put the old one back.
macro_rules! timed_xact {
    ($lock:literal) => {
        concat!(
            "SELECT set_config('lock_timeout', s.old, true) \
             FROM (SELECT current_setting('lock_timeout') AS old OFFSET 0) s \
             CROSS JOIN LATERAL (SELECT set_config('lock_timeout', $2 || left(s.old, 0), true) AS t OFFSET 0) a \
             CROSS JOIN LATERAL (SELECT ",
            $lock,
            " AS l, a.t OFFSET 0) l"
        )
    };
}

/// A transaction lock. Untimed, the transaction's own `lock_timeout`
/// applies. Timed, one statement leaves the caller's `lock_timeout` as it
/// was: the LATERAL references force the order (read the old value, set
/// ours, wait for the lock, put the old one back).
pub(crate) fn xact_lock(kind: KeyKind, mode: Mode, wait: Wait) -> &'static str {
    use {KeyKind::*, Mode::*, Wait::*};
    match (kind, mode, wait) {
        (Int, Exclusive, Untimed) => "SELECT pg_advisory_xact_lock($1)::text",
        (Int, Exclusive, Timed) => timed_xact!("pg_advisory_xact_lock($1)::text"),
        (Int, Shared, Untimed) => "SELECT pg_advisory_xact_lock_shared($1)::text",
        (Int, Shared, Timed) => timed_xact!("pg_advisory_xact_lock_shared($1)::text"),
        (Text, Exclusive, Untimed) => "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))::text",
        (Text, Exclusive, Timed) => {
            timed_xact!("pg_advisory_xact_lock(hashtextextended($1, 0))::text")
        }
        (Text, Shared, Untimed) => {
            "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))::text"
        }
        (Text, Shared, Timed) => {
            timed_xact!("pg_advisory_xact_lock_shared(hashtextextended($1, 0))::text")
        }
    }
}

/// One transaction-lock attempt, no wait.
pub(crate) fn xact_try_lock(kind: KeyKind, mode: Mode) -> &'static str {
    use {KeyKind::*, Mode::*};
    match (kind, mode) {
        (Int, Exclusive) => "SELECT pg_try_advisory_xact_lock($1)",
        (Int, Shared) => "SELECT pg_try_advisory_xact_lock_shared($1)",
        (Text, Exclusive) => "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))",
        (Text, Shared) => "SELECT pg_try_advisory_xact_lock_shared(hashtextextended($1, 0))",
    }
}

/// Every advisory lock granted in this database, oldest first, as
/// `pg_locks` shows them (also those of psql sessions and other
/// languages): for `pglock ls` and
/// [`Locks::advisory_locks`](crate::Locks::advisory_locks). A one-`bigint`
/// key (`objsubid = 1`) is rebuilt from its two halves; a two-`int4` key
/// has no `key` and shows as its pair. `since` is the session's last state
/// change: for a session idling on its lock, about when it took it.
const HELD: &str = "\
SELECT l.pid, coalesce(a.application_name, '') AS application_name,
       l.mode = 'ShareLock' AS shared,
       CASE WHEN l.objsubid = 1 THEN (l.classid::int8 << 32) | l.objid::int8 END AS key,
       l.classid::int8 AS key_high, l.objid::int8 AS key_low,
       coalesce(a.state_change, a.backend_start) AS since,
       (extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.backend_start)) * 1000)::int8
           AS held_for_ms
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Every advisory lock: [`HELD`], ordered.
pub(crate) fn held() -> String {
    format!("{HELD}\n ORDER BY since NULLS LAST, l.pid")
}

/// The sessions holding key `$1` (granted only, this database).
pub(crate) fn holders(kind: KeyKind) -> String {
    let key = match kind {
        KeyKind::Int => "$1::int8",
        KeyKind::Text => "hashtextextended($1, 0)",
    };
    format!(
        "{HELD}\n   AND l.objsubid = 1 AND ((l.classid::int8 << 32) | l.objid::int8) = {key}\n ORDER BY l.pid"
    )
}

/// Lock a set on one session: `$1` string keys (hashed here), `$2` integer
/// keys, `$3` milliseconds left (NULL: no limit). The subquery sorts and
/// dedups the numeric keys (`OFFSET 0` keeps it a subquery); the outer
/// target list runs row by row in that order, left to right: first a
/// transaction-local `lock_timeout` of what is left since the statement
/// began, then the lock. A timeout raises 55P03 with some keys already held
/// by the session (session locks ignore the rollback): the caller then
/// closes the session.
pub(crate) const LOCK_ALL: &str = "\
SELECT s.k, set_config('lock_timeout',
           CASE WHEN $3::int8 IS NULL THEN '0'
                ELSE greatest(1, $3::int8 - floor(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::int8)::text || 'ms'
           END, true) AS t,
       pg_advisory_lock(s.k)::text AS l
  FROM (SELECT DISTINCT k
          FROM (SELECT hashtextextended(t, 0) AS k FROM unnest($1::text[]) AS t
                UNION ALL SELECT unnest($2::int8[])) u
         ORDER BY k OFFSET 0) s";

/// Unlock a set (`$1` its numeric keys): true when the session held every
/// key.
pub(crate) const UNLOCK_ALL: &str = "\
SELECT coalesce(bool_and(pg_advisory_unlock(k)), true) FROM unnest($1::int8[]) AS k";
