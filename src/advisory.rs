//! Session advisory locks, for short critical sections.
//!
//! ```no_run
//! # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
//! use std::time::Duration;
//! let mut guard = locks
//!     .advisory("ckpt/run-42")
//!     .timeout(Duration::from_secs(5))
//!     .lock()
//!     .await?;
//! // The guard derefs to the session that holds the lock.
//! sqlx::query("UPDATE checkpoints SET step = 1200 WHERE run = 42")
//!     .execute(&mut *guard)
//!     .await?;
//! guard.release().await?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! Each guard owns one session (a connection beside your pool, see
//! [`Locks`]). `lock()` is one round trip: the server blocks in
//! `pg_advisory_lock` under `lock_timeout`; nothing polls. `release()` is one
//! round trip too. A guard dropped without `release()` unlocks in a spawned
//! task right away. Whenever pglock cannot be sure what a session holds — a
//! cancelled `lock()`, an error or a timeout from the lock statement (the
//! server can report `55P03` after granting), a failed unlock — it closes
//! that session instead of reusing it, and the server drops the session's
//! locks; a session waiting for a lock notices its client is gone within
//! 250 ms (`client_connection_check_interval`, PostgreSQL 14+). No session
//! goes back for reuse holding a lock.
//!
//! # Transaction-mode poolers
//!
//! Session locks need a session: behind PgBouncer in `pool_mode=transaction`
//! the server session changes under the client after every transaction, so
//! a lock taken there would be held by whichever client gets that server
//! connection next. With
//! [`LocksBuilder::transaction_pooler`](crate::LocksBuilder::transaction_pooler)
//! set, [`Advisory::lock`] and [`Advisory::try_lock`] therefore refuse with
//! [`Error::InvalidInput`] before any SQL runs, unless
//! [`LocksBuilder::session_options`](crate::LocksBuilder::session_options)
//! gave them a direct or session-mode connection, which they then use. Or
//! use [`Advisory::lock_xact`], which holds the lock until the end of your
//! transaction and works through any pooler.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Row};
use tokio::time::Instant;

use crate::error::{Error, LOCK_NOT_AVAILABLE, Result, sqlstate};
use crate::key::AdvisoryKey;
use crate::session::{Session, on_statement_conn};
use crate::{Locks, sql};

/// How often [`AdvisoryGuard::lost`] checks that the session still holds the
/// lock.
const LOST_POLL: Duration = Duration::from_millis(500);

/// Longest wait for an unlock's answer (a query the caller left running on
/// the session delays it); then the session is closed instead.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest accepted timeout: PostgreSQL's `lock_timeout` is an `int` of
/// milliseconds.
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A request for an advisory lock; see [`Locks::advisory`].
#[derive(Debug, Clone)]
#[must_use = "an Advisory does nothing until lock() or try_lock() is called"]
pub struct Advisory {
    locks: Locks,
    key: AdvisoryKey,
    shared: bool,
    timeout: Option<Duration>,
}

impl Advisory {
    pub(crate) fn new(locks: Locks, key: AdvisoryKey) -> Self {
        Advisory {
            locks,
            key,
            shared: false,
            timeout: None,
        }
    }

    /// Take the lock in shared mode: shared holders exclude only exclusive
    /// ones.
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    /// Give up with [`Error::Timeout`] after `timeout` (counted from the
    /// call, including the wait for a free session). Must be above zero and
    /// at most 24 days.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn validate(&self) -> Result<()> {
        self.key.validate()?;
        if let Some(t) = self.timeout {
            if t.is_zero() {
                return Err(Error::invalid("timeout", "must be above zero"));
            }
            if t > MAX_TIMEOUT {
                return Err(Error::invalid(
                    "timeout",
                    format!("must be at most {MAX_TIMEOUT:?} (lock_timeout's limit), got {t:?}"),
                ));
            }
        }
        Ok(())
    }

    /// Refuses session locks where there is no session to hold them.
    fn check_session_available(&self) -> Result<()> {
        let inner = &self.locks.inner;
        if inner.transaction_pooler && inner.session_options.is_none() {
            return Err(Error::invalid(
                "advisory",
                "session advisory locks need a session; behind a transaction-mode pooler \
                 use lock_xact, or give LocksBuilder::session_options(..) a direct or \
                 session-mode connection",
            ));
        }
        Ok(())
    }

    fn what(&self) -> String {
        let mode = if self.shared {
            "shared advisory lock"
        } else {
            "advisory lock"
        };
        format!("{mode} {}", self.key)
    }

    /// Waits for the lock and returns a guard holding it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped at any point, nothing stays
    /// held. A session that had already sent the lock request is closed, and
    /// the server drops whatever it held or was about to be granted.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when a [`timeout`](Self::timeout) was set and ran
    /// out; [`Error::InvalidInput`] for a bad key or timeout, or behind a
    /// transaction-mode pooler without
    /// [`session_options`](crate::LocksBuilder::session_options) (before any
    /// SQL runs); [`Error::Database`] when the server or the connection
    /// fails.
    pub async fn lock(self) -> Result<AdvisoryGuard> {
        self.validate()?;
        self.check_session_available()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        // In flight until the answer is read: dropped before (cancelled) or
        // after an error, the session is closed, since the lock may have
        // been granted (the server can report 55P03 after granting).
        let mut session = self.session(deadline).await?;
        session.in_flight = true;
        let stmt = sql::ADVISORY_LOCK[self.key.is_text() as usize][self.shared as usize]
            [deadline.is_some() as usize];
        let mut query = self.key.bind(sqlx::query(stmt));
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            // 0 would mean "no timeout": round up to the first millisecond.
            query = query.bind(format!("{}ms", left.as_millis().max(1)));
        }
        let row = query.fetch_one(session.conn()).await;
        match row {
            Ok(row) => {
                let key = row.try_get(0)?;
                session.in_flight = false;
                Ok(self.guard(session, key))
            }
            Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => Err(Error::Timeout {
                what: self.what(),
                waited: self.timeout.unwrap_or_default(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the lock if it is free right now; `Ok(None)` if it is held.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key, or behind a transaction-mode
    /// pooler without [`session_options`](crate::LocksBuilder::session_options)
    /// (before any SQL runs); [`Error::Database`] when the server or the
    /// connection fails. Contention is not an error.
    pub async fn try_lock(self) -> Result<Option<AdvisoryGuard>> {
        self.validate()?;
        self.check_session_available()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut session = self.session(deadline).await?;
        session.in_flight = true;
        let stmt = sql::ADVISORY_TRY_LOCK[self.key.is_text() as usize][self.shared as usize];
        let row = self
            .key
            .bind(sqlx::query(stmt))
            .fetch_one(session.conn())
            .await?;
        let (key, taken): (i64, bool) = (row.try_get(0)?, row.try_get(1)?);
        session.in_flight = false;
        // Not taken: nothing held, the session goes back for reuse.
        Ok(taken.then(|| self.guard(session, key)))
    }

    /// Takes the lock for the rest of the transaction open on `conn`
    /// (`pg_advisory_xact_lock`); it is released at commit or rollback. Works
    /// behind transaction-mode poolers. With a [`timeout`](Self::timeout),
    /// the transaction's `lock_timeout` is changed only during this
    /// statement; without one, the transaction's own `lock_timeout` applies.
    ///
    /// Call it as `lock_xact(&mut *tx)`. A timeout aborts the transaction,
    /// as every error inside one does.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the statement running on `conn`; the
    /// lock then ends with the transaction, which sqlx rolls back when the
    /// transaction is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`], [`Error::InvalidInput`], [`Error::Database`] as
    /// for [`lock`](Self::lock); [`Error::InvalidInput`] if `conn` is not
    /// inside a transaction.
    pub async fn lock_xact(&self, conn: &mut PgConnection) -> Result<()> {
        self.validate()?;
        if !conn.is_in_transaction() {
            return Err(not_in_transaction());
        }
        let stmt = sql::ADVISORY_XACT_LOCK[self.key.is_text() as usize][self.shared as usize]
            [self.timeout.is_some() as usize];
        let mut query = self.key.bind(self.locks.inner.query(stmt));
        if let Some(t) = self.timeout {
            query = query.bind(format!("{}ms", t.as_millis().max(1)));
        }
        let result = query.execute(conn).await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => Err(Error::Timeout {
                what: self.what(),
                waited: self.timeout.unwrap_or_default(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the transaction lock if it is free right now; `Ok(false)` if
    /// it is held.
    ///
    /// # Cancel safety
    ///
    /// As [`lock_xact`](Self::lock_xact).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad key; [`Error::Database`] when the
    /// server or the connection fails.
    pub async fn try_lock_xact(&self, conn: &mut PgConnection) -> Result<bool> {
        self.validate()?;
        if !conn.is_in_transaction() {
            return Err(not_in_transaction());
        }
        let stmt = sql::ADVISORY_XACT_TRY_LOCK[self.key.is_text() as usize][self.shared as usize];
        let row = self
            .key
            .bind(self.locks.inner.query(stmt))
            .fetch_one(conn)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A free session (waits while `max_sessions` guards are held).
    async fn session(&self, deadline: Option<Instant>) -> Result<Session> {
        let get = self.locks.inner.lock_sessions.lock_session();
        match deadline {
            None => Ok(get.await?),
            Some(d) => match tokio::time::timeout_at(d, get).await {
                Ok(session) => Ok(session?),
                Err(_) => Err(Error::Timeout {
                    what: self.what(),
                    waited: self.timeout.unwrap_or_default(),
                }),
            },
        }
    }

    fn guard(&self, session: Session, key: i64) -> AdvisoryGuard {
        let id = SessionId {
            pid: session.id.pid,
            started: session.id.started,
            key,
        };
        tracing::debug!(key = %self.key, shared = self.shared, pid = id.pid, "advisory lock acquired");
        AdvisoryGuard {
            session: Some(session),
            locks: self.locks.clone(),
            key: self.key.clone(),
            shared: self.shared,
            id,
            used: false,
        }
    }
}

fn not_in_transaction() -> Error {
    Error::invalid(
        "conn",
        "lock_xact needs a connection inside a transaction begun with sqlx \
         (pool.begin() or conn.begin(), then call it with &mut *tx); \
         in autocommit mode the lock would end with the statement",
    )
}

/// A held advisory lock. Derefs to the session ([`PgConnection`]) that holds
/// it, for work inside the critical section.
///
/// Dropping the guard releases the lock at once, in a spawned task; call
/// [`release`](Self::release) to release it and learn whether it was still
/// held.
#[must_use = "dropping the guard releases the lock"]
pub struct AdvisoryGuard {
    session: Option<Session>,
    locks: Locks,
    key: AdvisoryKey,
    shared: bool,
    id: SessionId,
    /// Whether the caller reached the session (and may have left a
    /// transaction or other locks on it).
    used: bool,
}

/// Which session holds a guard's lock, and the lock's numeric key.
#[derive(Debug, Clone, Copy)]
struct SessionId {
    pid: i32,
    /// `pg_postmaster_start_time()`: a pid alone is reused after a restart.
    started: DateTime<Utc>,
    key: i64,
}

impl fmt::Debug for AdvisoryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvisoryGuard")
            .field("key", &self.key)
            .field("shared", &self.shared)
            .field("pid", &self.id.pid)
            .finish_non_exhaustive()
    }
}

impl AdvisoryGuard {
    /// The key this guard holds.
    pub fn key(&self) -> &AdvisoryKey {
        &self.key
    }

    /// Whether the lock is held in shared mode.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The server process id of the session holding the lock (as in
    /// `pg_locks.pid`).
    pub fn pid(&self) -> i32 {
        self.id.pid
    }

    /// Releases the lock now and returns the session for reuse.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the session no longer held the lock (it died,
    /// or somebody unlocked it on the session); [`Error::Database`] if the
    /// server refused the unlock. Either way nothing stays held: the session
    /// is closed unless the unlock succeeded.
    pub async fn release(mut self) -> Result<()> {
        let session = self
            .session
            .take()
            .expect("guard holds its session until released");
        match unlock(session, self.id.key, self.shared, self.used).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost_error()),
            Err(e) if e.as_database_error().is_some() => Err(e.into()),
            // The connection failed: the session, and its lock, are gone.
            Err(_) => Err(self.lost_error()),
        }
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            key: self.key.to_string(),
            pid: self.id.pid,
        }
    }

    /// Resolves when the session that holds the lock has died (terminated
    /// backend, server restart, network failure) or no longer holds the
    /// lock. It checks `pg_locks` on pglock's own connections twice a second, and also
    /// resolves after two checks in a row cannot reach the server.
    ///
    /// Typical use: run the critical section in a `select!` against
    /// `lost()`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn lost(&self) {
        let mut failures = 0;
        loop {
            tokio::time::sleep(LOST_POLL).await;
            let check = on_statement_conn!(self.locks.inner.sessions, |c| {
                self.locks
                    .inner
                    .query_scalar::<bool>(sql::ADVISORY_HELD_BY)
                    .bind(self.id.pid)
                    .bind(self.id.started)
                    .bind(self.id.key)
                    .fetch_one(c)
            });
            // A cut network never answers: no answer in time counts as a
            // failed check.
            let held = match tokio::time::timeout(LOST_POLL * 2, check).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", LOST_POLL * 2)),
            };
            match held {
                Ok(true) => failures = 0,
                Ok(false) => break,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(key = %self.key, error = %e, "cannot check advisory lock");
                    if failures >= 2 {
                        break;
                    }
                }
            }
        }
        tracing::warn!(key = %self.key, pid = self.id.pid, "advisory lock lost");
    }
}

/// Unlocks, within [`UNLOCK_TIMEOUT`]. The session goes back for reuse only
/// if the unlock answered that it held the lock and the caller never `used`
/// the session: a session the caller ran statements on may carry anything
/// (an open transaction, settings, other locks, LISTENs), so it is closed
/// and the server drops whatever it held. So is a session whose unlock
/// failed, timed out or was cancelled.
async fn unlock(
    session: Session,
    key: i64,
    shared: bool,
    used: bool,
) -> std::result::Result<bool, sqlx::Error> {
    let mut session = session;
    session.in_flight = true;
    let stmt = if shared {
        sql::ADVISORY_UNLOCK_SHARED
    } else {
        sql::ADVISORY_UNLOCK
    };
    let query = sqlx::query_scalar::<_, bool>(stmt)
        .bind(key)
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
    // Reused only after a confirmed unlock on a session the caller never
    // touched.
    session.in_flight = !held || used;
    Ok(held)
}

impl Deref for AdvisoryGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.session
            .as_ref()
            .expect("guard holds its session until released")
            .conn_ref()
    }
}

impl DerefMut for AdvisoryGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        // The caller may leave anything on the session: it is closed, not
        // reused, after the unlock.
        self.used = true;
        self.session
            .as_mut()
            .expect("guard holds its session until released")
            .conn()
    }
}

impl Drop for AdvisoryGuard {
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        // In flight until the unlock succeeds: if the task never runs
        // (runtime shutting down) the session is closed, not reused.
        session.in_flight = true;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let key = self.key.clone();
            let (k, shared, used) = (self.id.key, self.shared, self.used);
            rt.spawn(async move {
                if let Err(e) = unlock(session, k, shared, used).await {
                    tracing::warn!(%key, error = %e, "unlock on drop failed; session closed");
                }
            });
        }
    }
}
