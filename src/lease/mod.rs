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
pub(crate) mod handoff;
pub(crate) mod keepalive;
mod owned;
pub(crate) mod state;

pub use handle::LeaseRef;
pub use owned::{Lease, Permit, PoolLease};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::time::Instant;
use uuid::Uuid;

use crate::db::Repeat;
use crate::error::{Error, Result};
use crate::key::{validate_data, validate_name};
use crate::locks::Locks;
use crate::metrics::{self, Kind};
use crate::wait::{self, Look, MAX_WAIT, payload, validate_timeout};
use handoff::Offer;
use state::{Identity, Scope, Shared};

/// A request for a lease; see [`Locks::lease`].
#[derive(Debug, Clone)]
#[must_use = "a LeaseRequest does nothing until acquire() or try_acquire() is called"]
pub struct LeaseRequest {
    locks: Locks,
    name: String,
    terms: Terms,
    data: Option<Value>,
}

/// What every acquire of a lease, pool item or permit is asked with: its
/// TTL, how long to wait, and the holder label.
#[derive(Debug, Clone)]
pub(crate) struct Terms {
    pub(crate) ttl: Duration,
    pub(crate) timeout: Option<Duration>,
    pub(crate) holder: Option<String>,
    pub(crate) lock_delay: Option<Duration>,
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            ttl: LeaseRequest::DEFAULT_TTL,
            timeout: None,
            holder: None,
            lock_delay: None,
        }
    }
}

impl Terms {
    pub(crate) fn validate(&self) -> Result<()> {
        validate_ttl(self.ttl)?;
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
        }
        if let Some(h) = &self.holder {
            validate_name("holder", h)?;
        }
        if let Some(d) = self.lock_delay
            && d > LeaseRequest::MAX_TTL
        {
            return Err(Error::invalid(
                "lock_delay",
                format!("must be at most {:?}, got {d:?}", LeaseRequest::MAX_TTL),
            ));
        }
        Ok(())
    }

    /// The holder label: this request's, or the `Locks`' default.
    pub(crate) fn holder(&self, locks: &Locks) -> String {
        self.holder
            .clone()
            .unwrap_or_else(|| locks.holder().to_owned())
    }

    pub(crate) fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// The lock-delay in milliseconds, `None` when off (a delay under 1 ms
    /// rounds up to 1 ms).
    pub(crate) fn delay_ms(&self) -> Option<i64> {
        self.lock_delay
            .filter(|d| !d.is_zero())
            .map(|d| (d.as_millis() as i64).max(1))
    }
}

/// The `ttl`, `timeout` and `holder` setters of a request type with a
/// `terms: Terms` field.
macro_rules! terms_setters {
    () => {
        /// How long the lease lasts without renewal (default 30 s; 100 ms
        /// to 30 days).
        pub fn ttl(mut self, ttl: std::time::Duration) -> Self {
            self.terms.ttl = ttl;
            self
        }

        /// Give up waiting with [`Error::Timeout`](crate::Error::Timeout)
        /// after `timeout`.
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.terms.timeout = Some(timeout);
            self
        }

        /// The holder label (default: the `Locks`' holder). Sticky resume
        /// of pool items matches on it.
        pub fn holder(mut self, holder: impl Into<String>) -> Self {
            self.terms.holder = Some(holder.into());
            self
        }

        /// Lock-delay (default off, like Consul's): if this acquisition
        /// *expires* (its holder died or stalled, it was not released),
        /// nobody else gets it until `delay` after the expiry, so writes the
        /// dead holder left in flight on unfenced stores drain first. A
        /// release, a completion or a forced release is never delayed.
        /// Waiters wait the delay out (it counts against their timeout);
        /// [`Locks::leases`](crate::Locks::leases) shows the row's
        /// `delayed_until` meanwhile. At most 30 days; zero is off.
        pub fn lock_delay(mut self, delay: std::time::Duration) -> Self {
            self.terms.lock_delay = Some(delay);
            self
        }
    };
}
pub(crate) use terms_setters;

impl Shared {
    /// The lease an acquire or claim sent at `sent` took, as its `row` says.
    pub(crate) fn taken(
        row: &PgRow,
        scope: Scope,
        name: String,
        owner: Uuid,
        holder: String,
        terms: &Terms,
        sent: Instant,
    ) -> Result<Shared> {
        let id = Identity {
            scope,
            name,
            token: row.try_get("token")?,
            owner,
        };
        tracing::debug!(pool = id.scope.pool(), name = %id.name, token = id.token, "lease taken");
        metrics::token(id.token);
        let (expires_at, data) = (row.try_get("expires_at")?, row.try_get("data")?);
        Ok(Shared::new(id, holder, terms.ttl, sent, expires_at, data))
    }
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
            terms: Terms::default(),
            data: None,
        }
    }
}

impl LeaseRequest {
    /// Default lease TTL.
    pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
    /// Shortest accepted TTL.
    pub const MIN_TTL: Duration = Duration::from_millis(100);
    /// Longest accepted TTL (30 days).
    pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
    /// Largest accepted JSON payload, serialized.
    pub const MAX_DATA_BYTES: usize = crate::key::MAX_DATA_BYTES;

    terms_setters!();

    /// A JSON payload stored with the lease, visible to everyone (at most
    /// 64 KiB). Without it, the payload the previous holder left is kept.
    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn validate(&self) -> Result<()> {
        validate_name("lease name", &self.name)?;
        self.terms.validate()?;
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
    /// Cancel safe: dropped at any point, nothing stays held. Once sent,
    /// the acquire statement runs to its end in a task of its own, which
    /// gives the lease back (after the statement, on another connection) if
    /// its caller is gone by then.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] before any SQL; [`Error::NotMigrated`];
    /// [`Error::Database`].
    pub async fn try_acquire(self) -> Result<Option<Lease>> {
        self.validate()?;
        let look = async {
            match self.attempt().await? {
                Look::Done(lease) => Ok(Some(lease)),
                Look::Again(_) | Look::WhenWoken => Ok(None),
            }
        };
        wait::try_once((Kind::Lease, &self.name), look).await
    }

    /// Waits for the lease and takes it. Wakes when the holder releases it
    /// (by NOTIFY, within milliseconds) or at the holder's expiry. A holder
    /// of the same `Locks` (a task of this process) that releases it hands
    /// it straight to the waiter that has waited longest, in one statement
    /// (at most three times in a row, then it releases it to every process;
    /// never once the holder has seen a release request).
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire): dropped while waiting or
    /// while the statement runs, nothing stays held. A lease handed to a
    /// waiter that is gone by the time it arrives is released in a spawned
    /// task.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the [`timeout`](Self::timeout) runs out;
    /// otherwise as [`try_acquire`](Self::try_acquire).
    pub async fn acquire(self) -> Result<Lease> {
        self.validate()?;
        let what = || format!("lease {:?}", self.name);
        let db = self.locks.db();
        // The waiter's place in line for a hand-off, taken after its first
        // look fails (an uncontended acquire makes none).
        let offer = std::sync::OnceLock::<Arc<Offer>>::new();
        let (me, offer) = (&self, &offer);
        // A look takes a lease handed to this waiter before it asks the
        // database.
        let look = move || async move {
            if let Some(lease) = offer.get().and_then(|o| o.take()) {
                return Ok(Look::Done(lease));
            }
            let look = me.attempt().await?;
            if !matches!(look, Look::Done(_)) {
                offer.get_or_init(|| {
                    Offer::queued(
                        me.locks.handoffs(),
                        me.name.clone(),
                        me.terms.holder(&me.locks),
                        me.terms.clone(),
                        me.data.clone(),
                    )
                });
            }
            Ok(look)
        };
        let arrived = move || async move {
            match offer.get() {
                Some(o) => o.arrived().await,
                None => std::future::pending().await,
            }
        };
        wait::acquire(
            db,
            (Kind::Lease, &self.name),
            &self.name,
            self.terms.timeout,
            what,
            (look, arrived),
        )
        .await
    }

    /// One look: the lease, or how long until the holder's expiry.
    async fn attempt(&self) -> Result<Look<Lease>> {
        let db = self.locks.db();
        let owner = Uuid::new_v4();
        let holder = self.terms.holder(&self.locks);
        let (name, h, ttl_ms, data) = (
            self.name.clone(),
            holder.clone(),
            self.terms.ttl_ms(),
            self.data.clone(),
        );
        let delay_ms = self.terms.delay_ms();
        let (n, wake) = (self.name.clone(), payload(&db.schema, &self.name));
        let sent = Instant::now();
        let row = db
            .take(
                |s| &s.lease_acquire,
                Repeat::Safe,
                move |q| {
                    q.bind(&name)
                        .bind(owner)
                        .bind(&h)
                        .bind(ttl_ms)
                        .bind(&data)
                        .bind(delay_ms)
                },
                |s| &s.lease_abandon,
                move |q| q.bind(&n).bind(owner).bind(&wake),
            )
            .await?;
        let Some(row) = row else {
            // Lost an insert race with another first-time taker: look again.
            return Ok(Look::Again(Duration::ZERO));
        };
        if row.try_get::<bool, _>("acquired")? {
            let name = self.name.clone();
            let shared = Shared::taken(&row, Scope::Lease, name, owner, holder, &self.terms, sent)?;
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

pub(crate) fn validate_ttl(ttl: Duration) -> Result<()> {
    if ttl < LeaseRequest::MIN_TTL || ttl > LeaseRequest::MAX_TTL {
        return Err(Error::invalid(
            "ttl",
            format!(
                "must be between {:?} and 30 days, got {ttl:?}",
                LeaseRequest::MIN_TTL
            ),
        ));
    }
    Ok(())
}
