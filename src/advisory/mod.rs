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
//! # Many locks on a few sessions
//!
//! With [`LocksBuilder::advisory_sessions`](crate::LocksBuilder::advisory_sessions)
//! a handle multiplexes its locks onto a few shared sessions instead: a
//! `try_lock`, or a `lock` of a key no other session holds, is one
//! `pg_try_advisory_lock` on a shared session; tasks of the process
//! exclude each other in the client; a `lock` of a key another session
//! holds waits in the server on a session of its own as above. Such guards
//! lend no session to the critical section.
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

mod guard;
mod holders;
pub(crate) mod mux;
mod unlock;
mod xact;

pub use guard::AdvisoryGuard;
pub use holders::AdvisoryLockInfo;
pub(crate) use unlock::unlock_answer;

use std::time::Duration;

use sqlx::Row;
use tokio::time::Instant;

use crate::error::{Error, LOCK_NOT_AVAILABLE, Result, sqlstate};
use crate::key::AdvisoryKey;
use crate::locks::Locks;
use crate::metrics::Kind;
use crate::session::Session;
use crate::sql::advisory::{self as sql, Mode, Wait};
use crate::wait;

/// Longest accepted timeout: PostgreSQL's `lock_timeout` is an `int` of
/// milliseconds.
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

/// A request for an advisory lock; see [`Locks::advisory`].
///
/// # Reentrancy
///
/// None (as DistributedLock 2.0 decided; Redisson differs). A second
/// `advisory(k).lock()` while this process holds `k` takes another session
/// and waits for the first guard like any other holder: tasks of one
/// process exclude each other (with
/// [`advisory_sessions`](crate::LocksBuilder::advisory_sessions), the
/// second request waits in the process instead). In the task that holds the guard that wait
/// can never end, so it returns [`Error::Timeout`] if a
/// [`timeout`](Self::timeout) is set and blocks forever otherwise: use
/// [`try_lock`](Self::try_lock) (`None`) or a timeout where a task might
/// ask twice. Leases are the same: a lease held by this process is not given
/// to it again (`try_acquire()` returns `None`). Transaction locks
/// ([`lock_xact`](Self::lock_xact)) follow PostgreSQL: taken twice in one
/// transaction, both succeed and the lock ends with the transaction. A set
/// ([`Locks::advisory_all`], [`Locks::lease_all`]) takes each key once even
/// if named twice.
#[derive(Debug, Clone)]
#[must_use = "an Advisory does nothing until lock() or try_lock() is called"]
pub struct Advisory {
    locks: Locks,
    key: AdvisoryKey,
    shared: bool,
    timeout: Option<Duration>,
}

impl Locks {
    /// A session advisory lock on `key`: a string (hashed by the server with
    /// `hashtextextended(key, 0)`) or a raw `i64`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let guard = locks.advisory("ckpt/run-42").lock().await?;
    /// // … write the checkpoint …
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn advisory(&self, key: impl Into<AdvisoryKey>) -> Advisory {
        Advisory {
            locks: self.clone(),
            key: key.into(),
            shared: false,
            timeout: None,
        }
    }
}

impl Advisory {
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
        if !self.locks.db().has_sessions() {
            return Err(Error::invalid(
                "advisory",
                "session advisory locks need a session; behind a transaction-mode pooler \
                 use lock_xact, or give LocksBuilder::session_options(..) a direct or \
                 session-mode connection",
            ));
        }
        Ok(())
    }

    fn mode(&self) -> Mode {
        if self.shared {
            Mode::Shared
        } else {
            Mode::Exclusive
        }
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
    /// the server drops whatever it held or was about to be granted. On a
    /// shared session ([`advisory_sessions`](crate::LocksBuilder::advisory_sessions))
    /// the statement runs in a spawned task that finishes anyway and
    /// unlocks what it was granted.
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
        let name = self.what();
        wait::observe((Kind::Advisory, &name), self.lock_now()).await
    }

    async fn lock_now(self) -> Result<AdvisoryGuard> {
        self.validate()?;
        self.check_session_available()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let Some(mux) = self.locks.mux().cloned() else {
            return self.lock_dedicated(deadline).await;
        };
        // First the in-process hold: local tasks wait for each other here.
        let local = mux.local(&self.key, self.mode());
        let local = match deadline {
            None => local.await,
            Some(d) => tokio::time::timeout_at(d, local)
                .await
                .map_err(|_| self.timeout_error())?,
        };
        // Then the shared session, if no other session holds the key.
        let local = match self.within(deadline, self.on_slot(mux, local)).await? {
            Ok(guard) => return Ok(guard),
            Err(local) => local,
        };
        // Held elsewhere: wait in the server on a dedicated session, still
        // holding the in-process hold.
        Ok(self.lock_dedicated(deadline).await?.with_local(local))
    }

    fn timeout_error(&self) -> Error {
        Error::Timeout {
            what: self.what(),
            waited: self.timeout.unwrap_or_default(),
        }
    }

    /// `fut` until the deadline, else [`Error::Timeout`].
    async fn within<T>(
        &self,
        deadline: Option<Instant>,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match deadline {
            None => fut.await,
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .map_err(|_| self.timeout_error())?,
        }
    }

    /// One try on the key's shared session: a guard, or the in-process
    /// hold back when another session holds the key. The statement runs in
    /// a spawned task: dropped midway, the task still finishes, and a guard
    /// it made is dropped, which unlocks.
    async fn on_slot(
        &self,
        mux: std::sync::Arc<mux::Mux>,
        local: mux::LocalHold,
    ) -> Result<std::result::Result<AdvisoryGuard, mux::LocalHold>> {
        let db = self.locks.db().clone();
        let (key, mode) = (self.key.clone(), self.mode());
        let task = tokio::spawn(async move {
            match mux.try_on_slot(&db, &key, mode).await {
                Ok(Some((k, on))) => {
                    tracing::debug!(%key, pid = on.life.id.pid, "advisory lock acquired on a shared session");
                    Ok(Ok(AdvisoryGuard::on_slot(on, local, db, key, mode, k)))
                }
                Ok(None) => Ok(Err(local)),
                Err(e) => Err(e),
            }
        });
        match task.await {
            Ok(out) => out,
            Err(e) => Err(Error::from(sqlx::Error::Protocol(format!(
                "advisory lock task failed: {e}"
            )))),
        }
    }

    /// The lock on a session of its own, waiting in the server.
    async fn lock_dedicated(&self, deadline: Option<Instant>) -> Result<AdvisoryGuard> {
        // In flight until the answer is read: dropped before (cancelled) or
        // after an error, the session is closed, since the lock may have
        // been granted (the server can report 55P03 after granting).
        let mut session = self.session(deadline).await?;
        session.in_flight = true;
        let wait = if deadline.is_some() {
            Wait::Timed
        } else {
            Wait::Untimed
        };
        let stmt = sql::lock(self.key.kind(), self.mode(), wait);
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
        let name = self.what();
        wait::try_once((Kind::Advisory, &name), self.try_lock_now()).await
    }

    async fn try_lock_now(self) -> Result<Option<AdvisoryGuard>> {
        self.validate()?;
        self.check_session_available()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        if let Some(mux) = self.locks.mux().cloned() {
            let Some(local) = mux.try_local(&self.key, self.mode()) else {
                return Ok(None);
            };
            return Ok(self.within(deadline, self.on_slot(mux, local)).await?.ok());
        }
        let mut session = self.session(deadline).await?;
        session.in_flight = true;
        let stmt = sql::try_lock(self.key.kind(), self.mode());
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

    /// A free session (waits while `max_sessions` guards are held).
    async fn session(&self, deadline: Option<Instant>) -> Result<Session> {
        let get = self.locks.db().lock_session();
        match deadline {
            None => get.await,
            Some(d) => match tokio::time::timeout_at(d, get).await {
                Ok(session) => session,
                Err(_) => Err(Error::Timeout {
                    what: self.what(),
                    waited: self.timeout.unwrap_or_default(),
                }),
            },
        }
    }

    fn guard(&self, session: Session, key: i64) -> AdvisoryGuard {
        tracing::debug!(key = %self.key, shared = self.shared, pid = session.id.pid, "advisory lock acquired");
        AdvisoryGuard::new(
            session,
            self.locks.db().clone(),
            self.key.clone(),
            self.mode(),
            key,
        )
    }
}
