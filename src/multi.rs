//! Several locks or leases at once: all or none, in one canonical order.
//!
//! Two callers that take overlapping sets one by one in their own order can
//! deadlock (A holds `a` and waits for `b`, B holds `b` and waits for `a`).
//! [`Locks::advisory_all`] and [`Locks::lease_all`] take every member in
//! one order that every caller shares, so waits never form a cycle:
//!
//! - **advisory keys** by their numeric key, ascending: for a string key
//!   `hashtextextended(key, 0)`, for an integer key the integer itself.
//!   Keys that hash to the same number are one lock and taken once.
//! - **lease names** by their UTF-8 bytes, ascending (what `ORDER BY name
//!   COLLATE "C"` gives in SQL). Duplicates are taken once.
//!
//! Another program joining the protocol must take its sets in the same
//! order. One [`timeout`](AdvisoryAll::timeout) covers the whole set. A
//! set that times out, fails or is cancelled leaves nothing held.
//!
//! ```no_run
//! # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
//! use std::time::Duration;
//! let guards = locks
//!     .advisory_all(["mem/a", "mem/b", "mem/c"])
//!     .timeout(Duration::from_secs(5))
//!     .lock()
//!     .await?;
//! // … update the three memory shards …
//! guards.release().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use sqlx::PgConnection;
use sqlx::{Connection, Row};
use tokio::time::Instant;

use crate::Locks;
use crate::error::{Error, FENCE_FAILED, LOCK_NOT_AVAILABLE, Result, sqlstate};
use crate::key::{AdvisoryKey, validate_name};
use crate::lease::{DEFAULT_TTL, Lease, validate_timeout, validate_ttl};
use crate::session::Session;

/// Most members of one set.
pub const MAX_SET_SIZE: usize = 1000;

/// Longest accepted timeout for an advisory set: PostgreSQL's `lock_timeout`
/// is an `int` of milliseconds.
const MAX_ADVISORY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// Longest wait for the unlock of a set; then its session is closed.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(1);

impl Locks {
    /// Exclusive session advisory locks on every key of `keys`, taken all
    /// or none, in ascending numeric key order (`hashtextextended(key, 0)` for a
    /// string, the integer itself otherwise; keys with the same number are
    /// one lock, taken once), on **one** session: a set costs one session and
    /// one round trip however many keys it has.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let guards = locks.advisory_all(["mem/a", "mem/b"]).lock().await?;
    /// drop(guards); // releases both
    /// # Ok(()) }
    /// ```
    pub fn advisory_all<I, K>(&self, keys: I) -> AdvisoryAll
    where
        I: IntoIterator<Item = K>,
        K: Into<AdvisoryKey>,
    {
        AdvisoryAll {
            locks: self.clone(),
            keys: keys.into_iter().map(Into::into).collect(),
            timeout: None,
        }
    }

    /// Leases on every name of `names`, taken all or none, in ascending
    /// order of the names' UTF-8 bytes (`ORDER BY name COLLATE "C"`),
    /// duplicates once. Every caller taking sets this way never deadlocks
    /// with another.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks, pool: sqlx::PgPool) -> Result<(), pglock::Error> {
    /// let set = locks.lease_all(["shard-1", "shard-7"]).acquire().await?;
    /// let mut tx = pool.begin().await?;
    /// set.fence(&mut *tx).await?; // every token, one statement
    /// // … fenced writes …
    /// tx.commit().await?;
    /// set.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lease_all<I, N>(&self, names: I) -> LeaseAll
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        LeaseAll {
            locks: self.clone(),
            names: names.into_iter().map(Into::into).collect(),
            ttl: DEFAULT_TTL,
            timeout: None,
        }
    }
}

fn validate_size(field: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(field, "must name at least one member"));
    }
    if n > MAX_SET_SIZE {
        return Err(Error::invalid(
            field,
            format!("must have at most {MAX_SET_SIZE} members, got {n}"),
        ));
    }
    Ok(())
}

/// A request for a set of advisory locks; see [`Locks::advisory_all`].
#[derive(Debug, Clone)]
#[must_use = "an AdvisoryAll does nothing until lock() is called"]
pub struct AdvisoryAll {
    locks: Locks,
    keys: Vec<AdvisoryKey>,
    timeout: Option<Duration>,
}

impl AdvisoryAll {
    /// Give up with [`Error::Timeout`] after `timeout` for the whole set
    /// (counted from the call, including the wait for a free session).
    /// Must be above zero and at most 24 days.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn validate(&self) -> Result<()> {
        validate_size("advisory keys", self.keys.len())?;
        for k in &self.keys {
            k.validate()?;
        }
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
            if t > MAX_ADVISORY_TIMEOUT {
                return Err(Error::invalid(
                    "timeout",
                    format!(
                        "must be at most {MAX_ADVISORY_TIMEOUT:?} (lock_timeout's limit), got {t:?}"
                    ),
                ));
            }
        }
        let inner = &self.locks.inner;
        if inner.transaction_pooler && inner.session_options.is_none() {
            return Err(Error::invalid(
                "advisory",
                "session advisory locks need a session; behind a transaction-mode pooler \
                 give LocksBuilder::session_options(..) a direct or session-mode connection",
            ));
        }
        Ok(())
    }

    fn what(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(ToString::to_string).collect();
        format!("advisory locks [{}]", keys.join(", "))
    }

    /// Waits until every key is locked and returns one guard for all.
    ///
    /// One statement on one session: the server locks the keys in
    /// ascending numeric order, each under a `lock_timeout` of what is left
    /// of the timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped at any point, nothing stays
    /// held. A session that had sent the lock statement is closed, and the
    /// server drops whatever it held or was about to be granted (a waiting
    /// session notices within 250 ms).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the [`timeout`](Self::timeout) ran out (the
    /// keys taken so far are dropped with the session);
    /// [`Error::InvalidInput`] for no keys, more than [`MAX_SET_SIZE`], a
    /// bad key or timeout, or behind a transaction-mode pooler without
    /// [`session_options`](crate::LocksBuilder::session_options) (before
    /// any SQL runs); [`Error::Database`] when the server or the connection
    /// fails (nothing is held then either).
    pub async fn lock(self) -> Result<AdvisorySet> {
        self.validate()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let timed_out = || Error::Timeout {
            what: self.what(),
            waited: self.timeout.unwrap_or_default(),
        };
        let (texts, ints) = split_keys(&self.keys);
        let locked = lock_set(&self.locks, &texts, &ints, deadline);
        let result = match deadline {
            None => locked.await,
            // The server gives up first (its lock_timeout is what is left);
            // this only bounds the wait for a free session.
            Some(d) => match tokio::time::timeout_at(d + Duration::from_secs(1), locked).await {
                Ok(r) => r,
                Err(_) => return Err(timed_out()),
            },
        };
        match result {
            Ok(Some((session, numeric))) => {
                tracing::debug!(
                    keys = numeric.len(),
                    pid = session.id.pid,
                    "advisory set acquired"
                );
                Ok(AdvisorySet {
                    session: Some(session),
                    keys: self.keys,
                    numeric,
                })
            }
            Ok(None) => Err(timed_out()),
            Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => Err(timed_out()),
            Err(e) => Err(Error::Database(e)),
        }
    }
}

/// String keys and integer keys, apart: the statement hashes the strings.
fn split_keys(keys: &[AdvisoryKey]) -> (Vec<String>, Vec<i64>) {
    let mut texts = Vec::new();
    let mut ints = Vec::new();
    for k in keys {
        match k {
            AdvisoryKey::Text(s) => texts.push(s.clone()),
            AdvisoryKey::Int(i) => ints.push(*i),
        }
    }
    (texts, ints)
}

// ---------------------------------------------------------------------------
// Internals (to port onto the session layer): the two statements of a set and
// the two functions that run them on a lock session.
// ---------------------------------------------------------------------------

/// Lock a set on one session: `$1` string keys (hashed here), `$2` integer
/// keys, `$3` milliseconds left (NULL: no limit). The subquery sorts and
/// dedups the numeric keys (`OFFSET 0` keeps it a subquery); the outer
/// target list runs row by row in that order, left to right: first a
/// transaction-local `lock_timeout` of what is left since the statement
/// began, then the lock. A timeout raises 55P03 with some keys already held
/// by the session (session locks ignore the rollback): the caller then
/// closes the session.
pub(crate) const ADVISORY_LOCK_ALL: &str = "\
SELECT s.k, set_config('lock_timeout',
           CASE WHEN $3::int8 IS NULL THEN '0'
                ELSE greatest(1, $3::int8 - floor(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::int8)::text || 'ms'
           END, true) AS t,
       pg_advisory_lock(s.k)::text AS l
  FROM (SELECT DISTINCT k
          FROM (SELECT hashtextextended(t, 0) AS k FROM unnest($1::text[]) AS t
                UNION ALL SELECT unnest($2::int8[])) u
         ORDER BY k OFFSET 0) s";

/// Unlock a set: true when the session held every key.
pub(crate) const ADVISORY_UNLOCK_ALL: &str = "\
SELECT coalesce(bool_and(pg_advisory_unlock(k)), true) FROM unnest($1::int8[]) AS k";

/// Takes a lock session (within `deadline`) and locks the set on it.
/// `Ok(None)`: no session came free in time. On an error or a drop the
/// session stays marked in flight and is closed, dropping what it held.
async fn lock_set(
    locks: &Locks,
    texts: &[String],
    ints: &[i64],
    deadline: Option<Instant>,
) -> std::result::Result<Option<(Session, Vec<i64>)>, sqlx::Error> {
    let get = locks.inner.lock_sessions.lock_session();
    let mut session = match deadline {
        None => get.await?,
        Some(d) => match tokio::time::timeout_at(d, get).await {
            Ok(s) => s?,
            Err(_) => return Ok(None),
        },
    };
    session.in_flight = true;
    let left = deadline.map(|d| {
        d.saturating_duration_since(Instant::now())
            .as_millis()
            .max(1) as i64
    });
    let rows = sqlx::query(ADVISORY_LOCK_ALL)
        .bind(texts)
        .bind(ints)
        .bind(left)
        .fetch_all(session.conn())
        .await?;
    let numeric = rows
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    session.in_flight = false;
    Ok(Some((session, numeric)))
}

/// Unlocks every key of a set; the session goes back for reuse only if it
/// held them all.
async fn unlock_set(
    mut session: Session,
    numeric: Vec<i64>,
) -> std::result::Result<bool, sqlx::Error> {
    session.in_flight = true;
    let query = sqlx::query_scalar::<_, bool>(ADVISORY_UNLOCK_ALL)
        .bind(&numeric)
        .fetch_one(session.conn());
    let held = match tokio::time::timeout(UNLOCK_TIMEOUT, query).await {
        Ok(held) => held?,
        Err(_) => {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to the unlock within {UNLOCK_TIMEOUT:?}"),
            )));
        }
    };
    session.in_flight = !held;
    Ok(held)
}

// ---------------------------------------------------------------------------

/// A held set of advisory locks, all on one session.
///
/// Dropping it releases every key at once, in a spawned task;
/// [`release`](Self::release) does it now and reports.
#[must_use = "dropping the guard releases every lock of the set"]
pub struct AdvisorySet {
    session: Option<Session>,
    keys: Vec<AdvisoryKey>,
    /// The numeric keys, ascending, each once.
    numeric: Vec<i64>,
}

impl fmt::Debug for AdvisorySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvisorySet")
            .field("keys", &self.keys)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl AdvisorySet {
    /// The keys, as the caller gave them.
    pub fn keys(&self) -> &[AdvisoryKey] {
        &self.keys
    }

    /// The numeric keys held, in the order they were taken (ascending), each
    /// once.
    pub fn numeric_keys(&self) -> &[i64] {
        &self.numeric
    }

    /// The server process id of the session holding the set.
    pub fn pid(&self) -> i32 {
        self.session.as_ref().map_or(0, |s| s.id.pid)
    }

    /// Releases every lock of the set now.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the session no longer held every key (it
    /// died); [`Error::Database`] if the server refused. Either way nothing
    /// stays held: the session is closed unless the unlock succeeded.
    pub async fn release(mut self) -> Result<()> {
        let session = self.session.take().expect("held until released");
        let pid = session.id.pid;
        let lost = |keys: &[AdvisoryKey]| Error::LockLost {
            key: keys
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            pid,
        };
        match unlock_set(session, std::mem::take(&mut self.numeric)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(lost(&self.keys)),
            Err(e) if e.as_database_error().is_some() => Err(e.into()),
            Err(_) => Err(lost(&self.keys)),
        }
    }
}

impl Drop for AdvisorySet {
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        session.in_flight = true;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let numeric = std::mem::take(&mut self.numeric);
            rt.spawn(async move {
                if let Err(e) = unlock_set(session, numeric).await {
                    tracing::warn!(error = %e, "unlock of an advisory set on drop failed; session closed");
                }
            });
        }
    }
}

/// A request for a set of leases; see [`Locks::lease_all`].
#[derive(Debug, Clone)]
#[must_use = "a LeaseAll does nothing until acquire() is called"]
pub struct LeaseAll {
    locks: Locks,
    names: Vec<String>,
    ttl: Duration,
    timeout: Option<Duration>,
}

impl LeaseAll {
    /// The TTL of every lease of the set (default 30 s; 100 ms to 30 days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Give up with [`Error::Timeout`] after `timeout` for the whole set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Takes every lease, in ascending byte order of the names, each kept
    /// alive from the moment it is taken (so the first ones do not expire
    /// while the set waits for the last), and returns them as one set.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense of [`LeaseRequest::acquire`](crate::LeaseRequest::acquire):
    /// leases already taken are released in the background when the future
    /// is dropped; one whose acquire statement was in flight is given back
    /// by its owner id, or left to expire after its TTL.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the [`timeout`](Self::timeout) ran out (the
    /// leases taken so far are released); [`Error::InvalidInput`] for no
    /// names, more than [`MAX_SET_SIZE`], a bad name, TTL or timeout (before
    /// any SQL); [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn acquire(self) -> Result<LeaseSet> {
        validate_size("lease names", self.names.len())?;
        for n in &self.names {
            validate_name("lease name", n)?;
        }
        validate_ttl(self.ttl)?;
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
        }
        let mut names = self.names.clone();
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        names.dedup();
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut leases: Vec<Lease> = Vec::with_capacity(names.len());
        for name in &names {
            let mut request = self.locks.lease(name.as_str()).ttl(self.ttl);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out());
                }
                request = request.timeout(left);
            }
            match request.acquire().await {
                Ok(lease) => leases.push(lease.keep_alive()),
                // `leases` drops here: each is released in the background.
                Err(Error::Timeout { .. }) => return Err(self.timed_out()),
                Err(e) => return Err(e),
            }
        }
        Ok(LeaseSet {
            locks: self.locks,
            leases,
        })
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            what: format!("leases {:?}", self.names),
            waited: self.timeout.unwrap_or_default(),
        }
    }
}

/// A held set of leases, each kept alive. Dropping it releases them all in
/// the background.
#[must_use = "dropping the set releases every lease"]
#[derive(Debug)]
pub struct LeaseSet {
    locks: Locks,
    /// In acquisition order: ascending name bytes.
    leases: Vec<Lease>,
}

impl LeaseSet {
    /// The leases, in the order they were taken.
    pub fn leases(&self) -> &[Lease] {
        &self.leases
    }

    /// The fencing tokens, in the order of [`leases`](Self::leases).
    pub fn tokens(&self) -> Vec<i64> {
        self.leases.iter().map(|l| l.token()).collect()
    }

    /// Resolves when any lease of the set is lost.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) {
        let all = self.leases.iter().map(|l| Box::pin(l.lost()));
        futures_util::future::select_all(all).await;
    }

    /// Checks, inside the caller's transaction and in **one** statement,
    /// that every token still holds its lease, and locks every lease row
    /// until the transaction ends, as [`LeaseRef::fence`](crate::LeaseRef::fence)
    /// does for one. Call it as `set.fence(&mut *tx)`.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] naming a lease that is no longer held by its
    /// token (the transaction is then aborted: roll it back);
    /// [`Error::InvalidInput`] outside a transaction; [`Error::Database`].
    pub async fn fence(&self, conn: &mut PgConnection) -> Result<()> {
        if !conn.is_in_transaction() {
            return Err(Error::invalid(
                "conn",
                "fence needs a connection inside a transaction begun with sqlx \
                 (pool.begin() or conn.begin(), then call it with &mut *tx)",
            ));
        }
        for l in &self.leases {
            if l.remaining().is_zero() {
                return Err(Error::LeaseLost {
                    name: l.name().to_owned(),
                    token: l.token(),
                });
            }
        }
        let names: Vec<&str> = self.leases.iter().map(|l| l.name()).collect();
        match fence_all(&self.locks, conn, &names, &self.tokens()).await {
            Ok(()) => Ok(()),
            Err(e) if sqlstate(&e).as_deref() == Some(FENCE_FAILED) => {
                // The function names the token that failed.
                let message = e
                    .as_database_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                let lost = self
                    .leases
                    .iter()
                    .find(|l| message.ends_with(&format!("not held by token {}", l.token())))
                    .unwrap_or(&self.leases[0]);
                Err(Error::LeaseLost {
                    name: lost.name().to_owned(),
                    token: lost.token(),
                })
            }
            Err(e) => Err(Error::from_db(e, self.locks.schema())),
        }
    }

    /// Releases every lease now.
    ///
    /// # Errors
    ///
    /// The first error of the releases ([`Error::LeaseLost`] for a lease no
    /// longer ours, [`Error::Database`]); every release is attempted.
    pub async fn release(self) -> Result<()> {
        let results =
            futures_util::future::join_all(self.leases.into_iter().map(Lease::release)).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }

    /// The leases, for handling one by one.
    pub fn into_leases(self) -> Vec<Lease> {
        self.leases
    }
}

/// The fence of a set (internal: to port with the statement layer).
/// `<schema>.fence` is the same function a single fence calls.
async fn fence_all(
    locks: &Locks,
    conn: &mut PgConnection,
    names: &[&str],
    tokens: &[i64],
) -> std::result::Result<(), sqlx::Error> {
    let inner = &locks.inner;
    let sql = format!(
        "SELECT {}.fence(u.n, u.t)::text FROM unnest($1::text[], $2::int8[]) AS u(n, t)",
        inner.quoted_schema
    );
    inner
        .query(sqlx::AssertSqlSafe(sql))
        .bind(names)
        .bind(tokens)
        .execute(conn)
        .await
        .map(drop)
}
