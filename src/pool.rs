//! Lease pools (claim any free item of a set) and semaphores (at most N at a
//! time).
//!
//! A pool is a set of named items — dataset shards, hyperparameter trials,
//! GPU slots. A worker claims *any* free item and gets an ordinary
//! [`Lease`] on it, with a fresh fencing token: `fence`, `keep_alive`,
//! `set_data`, `release` all work. [`Lease::complete`] marks the item done
//! for good; `release` puts it back.
//!
//! ```no_run
//! # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
//! let shards = locks.lease_pool("imagenet-train");
//! shards.add(["shard-000", "shard-001", "shard-002"]).await?;
//! loop {
//!     let shard = match shards.claim().acquire().await {
//!         Ok(lease) => lease.keep_alive(),
//!         Err(pglock::Error::PoolDrained { .. }) => break, // every item is done
//!         Err(e) => return Err(e),
//!     };
//!     // … train on shard.name() …
//!     shard.complete().await?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Claim order
//!
//! A claim is one statement (`FOR UPDATE SKIP LOCKED`, so claimers never
//! wait for each other) that takes, in this order: an item released by, or
//! expired under, the same holder label (*sticky resume*: a restarted worker
//! gets its own shard back, with the progress it left in the lease data);
//! the oldest free item; the item whose lease expired first.
//!
//! # Speed with a million items
//!
//! Each claim path walks a partial index of the rows it wants. The free path
//! starts at the pool's `free_floor`, a lower bound of the free items' order
//! kept in the `pools` row, so the dead index entries that claimed and
//! completed items leave behind are never walked, even before VACUUM runs.
//!
//! # Drained pools
//!
//! [`Claim::acquire`] returns [`Error::PoolDrained`] when nothing is free and
//! nothing is held (every item is done, or the pool is empty): waiting
//! could not end. [`Claim::try_acquire`] returns `Ok(None)` then, as on
//! contention; [`LeasePool::status`] tells the two apart.

use std::time::Duration;

use sqlx::Row;
use tokio::time::Instant;
use uuid::Uuid;

use crate::Locks;
use crate::error::{Error, Result};
use crate::key::validate_name;
use crate::lease::{DEFAULT_TTL, Lease, Pending, Shared, validate_timeout, validate_ttl, within};
use crate::session::on_statement_conn;
use crate::wait::{Look, pool_topic, until_done};

/// Most permits a semaphore may have.
pub const MAX_PERMITS: u32 = 10_000;

/// A named set of items to claim; see [`Locks::lease_pool`].
#[derive(Debug, Clone)]
pub struct LeasePool {
    locks: Locks,
    name: String,
}

/// Counts of a pool's items, from [`LeasePool::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Every item ever added.
    pub total: u64,
    /// Items that can be claimed now (free, released or expired).
    pub free: u64,
    /// Items held now.
    pub held: u64,
    /// Items completed for good.
    pub done: u64,
}

/// One item of a pool, from [`LeasePool::items`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolItem {
    /// The item name.
    pub name: String,
    /// Token of its latest claim (0 if never claimed).
    pub token: i64,
    /// Label of its latest holder.
    pub holder: Option<String>,
    /// Held now.
    pub held: bool,
    /// Completed for good.
    pub done: bool,
    /// Expiry of the latest claim, while held.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The JSON payload its holders left.
    pub data: Option<serde_json::Value>,
}

impl Locks {
    /// The lease pool `name`. Nothing is created until [`LeasePool::add`].
    pub fn lease_pool(&self, name: impl Into<String>) -> LeasePool {
        LeasePool {
            locks: self.clone(),
            name: name.into(),
        }
    }

    /// A semaphore: at most `permits` holders at a time. A permit is a
    /// [`Lease`], so it expires if its holder dies and can be kept alive.
    ///
    /// Every process should use the same count; changing it takes effect
    /// for each process with its next acquire with the new count (permits
    /// are added as needed, and permits at or above the count are no longer
    /// handed out). Pools and semaphores share one namespace.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let permit = locks.semaphore("embeddings-api", 4).acquire().await?;
    /// // … at most 4 of these run at once, across every process …
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> Semaphore {
        Semaphore {
            claim: self.lease_pool(name).claim(),
            permits,
        }
    }
}

impl LeasePool {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds items, in one statement. Idempotent: items already in the pool
    /// (done or not) are left as they are, duplicates are ignored. Returns
    /// how many items were new.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad pool or item name;
    /// [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn add<I, S>(&self, items: I) -> Result<u64>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let items: Vec<String> = items.into_iter().map(Into::into).collect();
        validate_name("pool name", &self.name)?;
        for item in &items {
            validate_name("item name", item)?;
        }
        let slots = vec![None::<i32>; items.len()];
        self.add_raw("pool", &items, &slots).await
    }

    async fn add_raw(&self, kind: &str, items: &[String], slots: &[Option<i32>]) -> Result<u64> {
        let inner = &self.locks.inner;
        let added: i64 = on_statement_conn!(inner.sessions, |c| {
            inner
                .query_scalar(sqlx::AssertSqlSafe(inner.sql.pool_add.as_str()))
                .bind(&self.name)
                .bind(items)
                .bind(kind)
                .bind(slots)
                .fetch_one(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        Ok(added as u64)
    }

    /// A claim of any free item; see [`Claim`].
    pub fn claim(&self) -> Claim {
        Claim {
            pool: self.clone(),
            ttl: DEFAULT_TTL,
            timeout: None,
            holder: None,
            max_slot: None,
        }
    }

    /// Counts of the pool's items, in one query.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn status(&self) -> Result<PoolStatus> {
        validate_name("pool name", &self.name)?;
        let inner = &self.locks.inner;
        let row = on_statement_conn!(inner.sessions, |c| {
            inner
                .query(sqlx::AssertSqlSafe(inner.sql.pool_status.as_str()))
                .bind(&self.name)
                .fetch_one(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        let count = |col: &str| row.try_get::<i64, _>(col).map(|n| n as u64);
        Ok(PoolStatus {
            total: count("total")?,
            free: count("free")?,
            held: count("held")?,
            done: count("done")?,
        })
    }

    /// Every item of the pool, in the order they are handed out.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn items(&self) -> Result<Vec<PoolItem>> {
        validate_name("pool name", &self.name)?;
        let inner = &self.locks.inner;
        let rows = on_statement_conn!(inner.sessions, |c| {
            inner
                .query(sqlx::AssertSqlSafe(inner.sql.pool_items.as_str()))
                .bind(&self.name)
                .fetch_all(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        rows.into_iter()
            .map(|r| {
                Ok(PoolItem {
                    name: r.try_get("name")?,
                    token: r.try_get("token")?,
                    holder: r.try_get("holder")?,
                    held: r.try_get("held")?,
                    done: r.try_get("done")?,
                    expires_at: r.try_get("expires_at")?,
                    data: r.try_get("data")?,
                })
            })
            .collect()
    }

    /// Releases `item` whoever holds it; it becomes free again. Returns the
    /// released token, or `None` if nobody held it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn force_release(&self, item: &str) -> Result<Option<i64>> {
        validate_name("pool name", &self.name)?;
        validate_name("item name", item)?;
        self.locks.force_release_in(&self.name, item).await
    }

    /// Asks the holder of `item` to let go (see
    /// [`LeaseRef::release_requested`](crate::LeaseRef::release_requested)).
    /// Returns the holder's token, or `None` if nobody holds it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn request_release(&self, item: &str) -> Result<Option<i64>> {
        validate_name("pool name", &self.name)?;
        validate_name("item name", item)?;
        self.locks.request_release_in(&self.name, item).await
    }
}

/// A claim of any free item of a pool; see [`LeasePool::claim`].
#[derive(Debug, Clone)]
#[must_use = "a Claim does nothing until acquire() or try_acquire() is called"]
pub struct Claim {
    pool: LeasePool,
    ttl: Duration,
    timeout: Option<Duration>,
    holder: Option<String>,
    /// Semaphores: only permits below this slot.
    max_slot: Option<i32>,
}

impl Claim {
    /// The lease TTL of the claimed item (default 30 s; 100 ms to 30 days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Give up waiting with [`Error::Timeout`] after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The holder label (default: the `Locks`' holder). Sticky resume
    /// matches on it.
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    fn validate(&self) -> Result<()> {
        validate_name("pool name", &self.pool.name)?;
        validate_ttl(self.ttl)?;
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
        }
        if let Some(h) = &self.holder {
            validate_name("holder", h)?;
        }
        Ok(())
    }

    /// Claims a free (or expired) item if there is one; `Ok(None)` if not.
    ///
    /// # Cancel safety
    ///
    /// The claim is one statement. Dropped after it was sent, an item
    /// claimed is left to expire after its TTL.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] before any SQL; [`Error::NotMigrated`];
    /// [`Error::Database`].
    pub async fn try_acquire(self) -> Result<Option<Lease>> {
        self.validate()?;
        match self.attempt().await {
            Ok(Look::Done(lease)) => Ok(Some(lease)),
            Ok(Look::Again(_)) | Err(Error::PoolDrained { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits for a free item and claims it. Wakes when an item is released
    /// (NOTIFY), when a held item expires, and at least every 2 s (so it
    /// soon learns that the last items were completed).
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// [`Error::PoolDrained`] when nothing is free or held (every item is
    /// done); [`Error::Timeout`]; otherwise as
    /// [`try_acquire`](Self::try_acquire).
    pub async fn acquire(self) -> Result<Lease> {
        self.validate()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let what = format!("an item of pool {:?}", self.pool.name);
        let (hub, topic) = (&self.pool.locks.inner.hub, pool_topic(&self.pool.name));
        let wait = until_done(hub, &topic, || self.attempt());
        within(deadline, self.timeout, what, wait).await
    }

    /// One look: an item, how long until one may be free, or
    /// [`Error::PoolDrained`].
    async fn attempt(&self) -> Result<Look<Lease>> {
        let locks = &self.pool.locks;
        let inner = &locks.inner;
        let owner = Uuid::new_v4();
        let holder = self.holder.as_deref().unwrap_or(&inner.holder);
        let pending = Pending::item(locks, &self.pool.name, holder, owner);
        let sent = Instant::now();
        let row = on_statement_conn!(inner.sessions, |c| {
            inner
                .query(sqlx::AssertSqlSafe(inner.sql.pool_claim.as_str()))
                .bind(&self.pool.name)
                .bind(owner)
                .bind(holder)
                .bind(self.ttl.as_millis() as i64)
                .bind(self.max_slot)
                .fetch_one(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        pending.disarm();
        if row.try_get::<bool, _>("claimed")? {
            let shared = Shared::new(
                self.pool.name.clone(),
                row.try_get("name")?,
                row.try_get("token")?,
                owner,
                holder.to_owned(),
                self.ttl,
                sent,
                row.try_get("expires_at")?,
                row.try_get("data")?,
            );
            tracing::debug!(pool = %self.pool.name, item = %shared.name, token = shared.token, "item claimed");
            return Ok(Look::Done(Lease::new(locks.clone(), shared)));
        }
        let any_held: bool = row.try_get("any_held")?;
        let free_locked: bool = row.try_get("free_locked")?;
        if !any_held && !free_locked {
            return Err(Error::PoolDrained {
                pool: self.pool.name.clone(),
            });
        }
        if free_locked {
            // A concurrent claim holds a free item's row lock; it either
            // takes it or rolls back. Look again shortly.
            return Ok(Look::Again(Duration::from_millis(10)));
        }
        let ms: Option<f64> = row.try_get("wait_ms")?;
        Ok(Look::Again(ms.map_or(Duration::from_millis(100), |ms| {
            Duration::from_secs_f64(ms / 1000.0)
        })))
    }
}

/// A semaphore of N permits; see [`Locks::semaphore`].
#[derive(Debug, Clone)]
#[must_use = "a Semaphore does nothing until acquire() or try_acquire() is called"]
pub struct Semaphore {
    claim: Claim,
    permits: u32,
}

impl Semaphore {
    /// The lease TTL of a permit (default 30 s).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.claim = self.claim.ttl(ttl);
        self
    }

    /// Give up waiting with [`Error::Timeout`] after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.claim = self.claim.timeout(timeout);
        self
    }

    /// The holder label (default: the `Locks`' holder).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.claim = self.claim.holder(holder);
        self
    }

    fn validate(&self) -> Result<()> {
        if !(1..=MAX_PERMITS).contains(&self.permits) {
            return Err(Error::invalid(
                "permits",
                format!("must be between 1 and {MAX_PERMITS}, got {}", self.permits),
            ));
        }
        self.claim.validate()
    }

    /// Makes sure permits `0..permits` exist: once per process and count.
    async fn ensure(&self) -> Result<Claim> {
        let pool = &self.claim.pool;
        let key = (pool.name.clone(), self.permits);
        let known = pool.locks.inner.semaphores.lock().unwrap().contains(&key);
        if !known {
            let names: Vec<String> = (0..self.permits).map(|i| format!("permit-{i}")).collect();
            let slots: Vec<Option<i32>> = (0..self.permits as i32).map(Some).collect();
            pool.add_raw("semaphore", &names, &slots).await?;
            pool.locks.inner.semaphores.lock().unwrap().insert(key);
        }
        let mut claim = self.claim.clone();
        claim.max_slot = Some(self.permits as i32);
        Ok(claim)
    }

    /// Takes a permit if one is free now; `Ok(None)` if all are held.
    ///
    /// # Cancel safety
    ///
    /// As [`Claim::try_acquire`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for permits outside 1..=10000 or a bad name
    /// or TTL; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn try_acquire(self) -> Result<Option<Lease>> {
        self.validate()?;
        self.ensure().await?.try_acquire().await
    }

    /// Waits for a permit and takes it.
    ///
    /// # Cancel safety
    ///
    /// As [`Claim::acquire`].
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`]; otherwise as [`try_acquire`](Self::try_acquire).
    pub async fn acquire(self) -> Result<Lease> {
        self.validate()?;
        self.ensure().await?.acquire().await
    }
}
