//! Fenced leases, for long-lived claims.
//!
//! A lease is a row in `<schema>.leases` with an expiry decided by the
//! database clock and a **fencing token** from one global sequence: every
//! acquisition gets a token greater than every token issued before it.
//!
//! ```no_run
//! # async fn f(locks: pglock::Locks, pool: sqlx::PgPool) -> Result<(), pglock::Error> {
//! use std::time::Duration;
//! let lease = locks.lease("shard-17").ttl(Duration::from_secs(30)).acquire().await?;
//! let lease = lease.keep_alive(); // renewed in the background
//!
//! let mut tx = pool.begin().await?;
//! lease.fence(&mut *tx).await?; // still ours? and no takeover until we commit
//! sqlx::query("INSERT INTO results (shard, token) VALUES ($1, $2)")
//!     .bind(lease.name())
//!     .bind(lease.token())
//!     .execute(&mut *tx)
//!     .await?;
//! tx.commit().await?;
//! lease.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Clocks
//!
//! The server decides expiry with `clock_timestamp()`. The holder keeps its
//! own deadline on its monotonic clock: 90% of the TTL, counted from
//! *before* it sent the acquire or renew, so the holder's deadline passes at
//! least a tenth of the TTL before the server's expiry. [`LeaseRef::lost`] resolves at that deadline at the
//! latest; [`LeaseRef::remaining`] tells how much is left.
//!
//! # Dropping
//!
//! A [`Lease`] dropped without [`release`](Lease::release) is released in a
//! spawned task; [`orphan`](Lease::orphan) instead leaves it to expire.

mod handle;
mod pending;

pub(crate) use handle::Shared;
pub use handle::{Lease, LeaseRef};
pub(crate) use pending::Pending;

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use tokio::time::Instant;
use uuid::Uuid;

use crate::Locks;
use crate::error::{Error, Result};
use crate::key::validate_name;
use crate::session::on_statement_conn;
use crate::wait::{Look, MAX_WAIT, until_done};

/// Default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Shortest accepted TTL.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest accepted TTL (30 days).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest accepted JSON payload, serialized.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// A request for a lease; see [`Locks::lease`].
#[derive(Debug, Clone)]
#[must_use = "a LeaseRequest does nothing until acquire() or try_acquire() is called"]
pub struct LeaseRequest {
    locks: Locks,
    name: String,
    ttl: Duration,
    timeout: Option<Duration>,
    holder: Option<String>,
    data: Option<Value>,
}

impl Locks {
    /// A lease on `name`: a claim that outlives connections, with an expiry
    /// by the database clock and a fencing token.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// if let Some(lease) = locks.lease("trial-42").try_acquire().await? {
    ///     println!("trial 42 is mine, token {}", lease.token());
    ///     lease.release().await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn lease(&self, name: impl Into<String>) -> LeaseRequest {
        LeaseRequest {
            locks: self.clone(),
            name: name.into(),
            ttl: DEFAULT_TTL,
            timeout: None,
            holder: None,
            data: None,
        }
    }
}

impl LeaseRequest {
    /// How long the lease lasts without renewal (default 30 s; 100 ms to 30
    /// days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Give up waiting with [`Error::Timeout`] after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The holder label for this lease (default: the `Locks`' holder).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// A JSON payload stored with the lease, visible to everyone (at most
    /// 64 KiB). Without it, the payload the previous holder left is kept.
    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn validate(&self) -> Result<()> {
        validate_name("lease name", &self.name)?;
        validate_ttl(self.ttl)?;
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
        }
        if let Some(h) = &self.holder {
            validate_name("holder", h)?;
        }
        if let Some(d) = &self.data {
            validate_data(d)?;
        }
        Ok(())
    }

    /// Takes the lease if it is free, released or expired; `Ok(None)` if
    /// somebody holds it.
    ///
    /// # Cancel safety
    ///
    /// The acquire is one statement. If the future is dropped after the
    /// statement was sent, the lease may have been taken and is then left
    /// to expire after its TTL (nobody holds its owner id).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] before any SQL; [`Error::NotMigrated`];
    /// [`Error::Database`].
    pub async fn try_acquire(self) -> Result<Option<Lease>> {
        self.validate()?;
        match self.attempt().await? {
            Look::Done(lease) => Ok(Some(lease)),
            Look::Again(_) => Ok(None),
        }
    }

    /// Waits for the lease and takes it. Wakes when the holder releases it
    /// (by NOTIFY, within milliseconds) or at the holder's expiry.
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire): dropped while waiting, nothing
    /// is held; dropped while the statement runs, a lease taken is left to
    /// expire.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the [`timeout`](Self::timeout) runs out;
    /// otherwise as [`try_acquire`](Self::try_acquire).
    pub async fn acquire(self) -> Result<Lease> {
        self.validate()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let what = format!("lease {:?}", self.name);
        let wait = until_done(&self.locks.inner.hub, &self.name, || self.attempt());
        within(deadline, self.timeout, what, wait).await
    }

    /// One look: the lease, or how long until the holder's expiry.
    async fn attempt(&self) -> Result<Look<Lease>> {
        let inner = &self.locks.inner;
        let owner = Uuid::new_v4();
        let holder = self.holder.as_deref().unwrap_or(&inner.holder);
        let pending = Pending::lease(&self.locks, &self.name, owner);
        let sent = Instant::now();
        let row = on_statement_conn!(inner.sessions, |c| inner
            .query(sqlx::AssertSqlSafe(inner.sql.lease_acquire.as_str()))
            .bind(&self.name)
            .bind(owner)
            .bind(holder)
            .bind(self.ttl.as_millis() as i64)
            .bind(&self.data)
            .fetch_optional(c))
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        pending.disarm();
        let Some(row) = row else {
            // Lost an insert race with another first-time taker: look again.
            return Ok(Look::Again(Duration::ZERO));
        };
        if row.try_get::<bool, _>("acquired")? {
            let shared = Shared::new(
                String::new(),
                self.name.clone(),
                row.try_get("token")?,
                owner,
                holder.to_owned(),
                self.ttl,
                sent,
                row.try_get("expires_at")?,
                row.try_get("data")?,
            );
            tracing::debug!(name = %self.name, token = shared.token, "lease acquired");
            Ok(Look::Done(Lease::new(self.locks.clone(), shared)))
        } else {
            let ms: Option<f64> = row.try_get("wait_ms")?;
            // Expired but locked by a fenced transaction: look again shortly.
            let retry_in =
                Duration::from_secs_f64(ms.unwrap_or(0.0) / 1000.0).clamp(MIN_RETRY, MAX_WAIT);
            Ok(Look::Again(retry_in))
        }
    }

    /// Acquires the lease, keeps it alive while `work` runs, and releases it
    /// afterwards. If the lease is lost, `work` is dropped at its next await
    /// point and the result is [`Error::LeaseLost`]: no code of `work` runs
    /// after the holder has learnt it lost the lease.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops `work` and releases the lease in the
    /// background.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Self::acquire), and [`Error::LeaseLost`] if the lease
    /// was lost while `work` ran.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let steps = locks
    ///     .lease("leader")
    ///     .run(|lease| async move {
    ///         // … lead, writing with lease.fence(&mut *tx) …
    ///         lease.token()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<F, Fut, T>(self, work: F) -> Result<T>
    where
        F: FnOnce(LeaseRef) -> Fut,
        Fut: Future<Output = T>,
    {
        let lease = self.acquire().await?.keep_alive();
        lease.run_work(work).await
    }
}

/// Shortest pause before a waiter looks again at a lease it could not take.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Awaits `fut`, turning an elapsed `deadline` into [`Error::Timeout`].
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    what: String,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    match deadline {
        None => fut.await,
        Some(d) => tokio::time::timeout_at(d, fut).await.unwrap_or_else(|_| {
            Err(Error::Timeout {
                what,
                waited: timeout.unwrap_or_default(),
            })
        }),
    }
}

/// The holder's share of a TTL: 90%, counted from before the request was
/// sent. Its deadline therefore passes at least a tenth of the TTL before the
/// server's expiry, even with the client's clock running fast.
pub(crate) fn local_ttl(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

/// Whether a string or key anywhere in `data` holds a NUL character.
fn contains_nul(data: &Value) -> bool {
    match data {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(Error::invalid(
            "ttl",
            format!("must be between {MIN_TTL:?} and 30 days, got {ttl:?}"),
        ));
    }
    Ok(())
}

pub(crate) fn validate_timeout(t: Duration) -> Result<()> {
    if t.is_zero() {
        return Err(Error::invalid("timeout", "must be above zero"));
    }
    Ok(())
}

pub(crate) fn validate_data(data: &Value) -> Result<()> {
    // PostgreSQL's jsonb cannot hold \u0000: refused here, before any SQL.
    if contains_nul(data) {
        return Err(Error::invalid(
            "data",
            "JSON must not contain NUL characters (\\u0000): jsonb cannot store them",
        ));
    }
    let len = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > MAX_DATA_BYTES {
        return Err(Error::invalid(
            "data",
            format!("JSON must be at most {MAX_DATA_BYTES} bytes, got {len}"),
        ));
    }
    Ok(())
}
