//! Every SQL statement pglock sends, one named constant each, with why it
//! looks the way it does. Statements on pglock's tables are templates: the
//! quoted schema replaces `{schema}` once, when a [`Locks`](crate::Locks) is
//! built (see `Statements`).
//!
//! Advisory keys always travel as two parameters, `$1 int8` and `$2 text`,
//! one of them NULL: `coalesce($1, hashtextextended($2, 0))` is the key, so
//! string keys are hashed by the server exactly as `psql` would.

/// Session lock, waiting in the server (no client polling). The target list
/// is evaluated left to right: `set_config(.., true)` puts `lock_timeout` in
/// force, for this statement's implicit transaction only, before the lock
/// wait starts ('0' waits forever, overriding a `lock_timeout` in the
/// connect options). `pg_backend_pid()` lets `lost()` find the session.
pub(crate) const ADVISORY_LOCK: &str = "SELECT pg_backend_pid(), \
     set_config('lock_timeout', $3, true), \
     pg_advisory_lock(coalesce($1, hashtextextended($2, 0)))::text";

/// Shared variant of [`ADVISORY_LOCK`].
pub(crate) const ADVISORY_LOCK_SHARED: &str = "SELECT pg_backend_pid(), \
     set_config('lock_timeout', $3, true), \
     pg_advisory_lock_shared(coalesce($1, hashtextextended($2, 0)))::text";

/// One attempt, no wait.
pub(crate) const ADVISORY_TRY_LOCK: &str = "SELECT pg_backend_pid(), \
     pg_try_advisory_lock(coalesce($1, hashtextextended($2, 0)))";

/// Shared variant of [`ADVISORY_TRY_LOCK`].
pub(crate) const ADVISORY_TRY_LOCK_SHARED: &str = "SELECT pg_backend_pid(), \
     pg_try_advisory_lock_shared(coalesce($1, hashtextextended($2, 0)))";

/// Release; `false` means this session did not hold the lock.
pub(crate) const ADVISORY_UNLOCK: &str =
    "SELECT pg_advisory_unlock(coalesce($1, hashtextextended($2, 0)))";

/// Shared variant of [`ADVISORY_UNLOCK`].
pub(crate) const ADVISORY_UNLOCK_SHARED: &str =
    "SELECT pg_advisory_unlock_shared(coalesce($1, hashtextextended($2, 0)))";

/// Does session `$3` still hold the lock? A bigint advisory key shows in
/// `pg_locks` as `classid` (high 32 bits), `objid` (low 32 bits),
/// `objsubid = 1`.
pub(crate) const ADVISORY_HELD_BY: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks \
     WHERE locktype = 'advisory' AND pid = $3 AND granted AND objsubid = 1 \
       AND ((classid::int8 << 32) | objid::int8) = coalesce($1, hashtextextended($2, 0)))";

/// Transaction lock under the transaction's own `lock_timeout`.
pub(crate) const ADVISORY_XACT_LOCK: &str =
    "SELECT pg_advisory_xact_lock(coalesce($1, hashtextextended($2, 0)))::text";

/// Shared variant of [`ADVISORY_XACT_LOCK`].
pub(crate) const ADVISORY_XACT_LOCK_SHARED: &str =
    "SELECT pg_advisory_xact_lock_shared(coalesce($1, hashtextextended($2, 0)))::text";

/// Transaction lock with a timeout, in one statement that leaves the
/// caller's `lock_timeout` as it was: the LATERAL references force the order
/// (read the old value, set ours, wait for the lock, put the old one back).
pub(crate) const ADVISORY_XACT_LOCK_TIMED: &str = "SELECT set_config('lock_timeout', s.old, true) \
     FROM (SELECT current_setting('lock_timeout') AS old OFFSET 0) s \
     CROSS JOIN LATERAL (SELECT set_config('lock_timeout', $3 || left(s.old, 0), true) AS t OFFSET 0) a \
     CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock(coalesce($1, hashtextextended($2, 0)))::text AS l, a.t OFFSET 0) l";

/// Shared variant of [`ADVISORY_XACT_LOCK_TIMED`].
pub(crate) const ADVISORY_XACT_LOCK_SHARED_TIMED: &str = "SELECT set_config('lock_timeout', s.old, true) \
     FROM (SELECT current_setting('lock_timeout') AS old OFFSET 0) s \
     CROSS JOIN LATERAL (SELECT set_config('lock_timeout', $3 || left(s.old, 0), true) AS t OFFSET 0) a \
     CROSS JOIN LATERAL (SELECT pg_advisory_xact_lock_shared(coalesce($1, hashtextextended($2, 0)))::text AS l, a.t OFFSET 0) l";

/// One transaction-lock attempt, no wait.
pub(crate) const ADVISORY_XACT_TRY_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(coalesce($1, hashtextextended($2, 0)))";

/// Shared variant of [`ADVISORY_XACT_TRY_LOCK`].
pub(crate) const ADVISORY_XACT_TRY_LOCK_SHARED: &str =
    "SELECT pg_try_advisory_xact_lock_shared(coalesce($1, hashtextextended($2, 0)))";
