//! Lease pools: claim any free item of a set. (Semaphores, at most N at a
//! time, are pools of permits: see [`Semaphore`](crate::Semaphore).)
//!
//! A pool is a set of named items — dataset shards, hyperparameter trials,
//! GPU slots. A worker claims *any* free item and gets a [`PoolLease`] on
//! it, with a fresh fencing token: `fence`, `keep_alive`, `set_data`,
//! `release` all work as on a [`Lease`](crate::Lease).
//! [`PoolLease::complete`] marks the item done for good; `release` puts it
//! back.
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
//! the oldest free item. (A semaphore's claim skips the first: its permits
//! are all alike.) Only when nothing is free, a second statement takes the
//! item whose lease expired first.
//!
//! The sticky look costs every claim an index descent, and a worker that
//! completes what it claims never has anything to resume. So after a claim
//! whose sticky look found nothing, the same [`Locks`] handle leaves it
//! out of its claims of that pool under that label for a second, unless it
//! releases, drops or orphans an item of the pool meanwhile. An item it
//! released is resumed by its next claim; one left to expire (by an
//! earlier process of the same label, or lost) at most a second after it
//! can be claimed. Others take an expired item only when nothing is free.
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

use sqlx::{FromRow, Row};

use crate::db::{Db, Repeat};
use crate::error::{Error, Result};
use crate::key::validate_name;
use crate::lease::state::Scope;
use crate::lease::{PoolLease, Terms, terms_setters};
use crate::locks::Locks;

mod floor;
mod look;
pub(crate) mod resume;

pub(crate) use look::{claim, try_claim};

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
    /// Items that can be claimed now (free, released, or expired and past
    /// their lock-delay).
    pub free: u64,
    /// Items held now.
    pub held: u64,
    /// Items whose holder's lease expired and whose lock-delay is not over
    /// yet: nobody can claim them until it is.
    pub delayed: u64,
    /// Items completed for good.
    pub done: u64,
}

/// One item of a pool, from [`LeasePool::items`].
#[derive(Debug, Clone, FromRow)]
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
    /// The JSON payload its holders left (it carries from claim to claim).
    pub data: Option<serde_json::Value>,
    /// Token of the claim that wrote [`data`](Self::data) (see
    /// [`LeaseInfo::data_token`](crate::LeaseInfo::data_token)).
    pub data_token: Option<i64>,
    /// Holder label of the claim that wrote [`data`](Self::data).
    pub data_holder: Option<String>,
    /// Set while its holder's lease expired (it was not released) and its
    /// lock-delay has not yet passed: nobody can claim it before this time.
    /// Such an item is neither held nor free (see [`PoolStatus::delayed`]).
    pub delayed_until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Locks {
    /// The lease pool `name`. Nothing is created until [`LeasePool::add`].
    pub fn lease_pool(&self, name: impl Into<String>) -> LeasePool {
        LeasePool {
            locks: self.clone(),
            name: name.into(),
        }
    }
}

impl LeasePool {
    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn locks(&self) -> &Locks {
        &self.locks
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
        add_items(self.locks.db(), &self.name, "pool", &items, &slots).await
    }

    /// A claim of any free item; see [`Claim`].
    pub fn claim(&self) -> Claim {
        Claim {
            pool: self.clone(),
            terms: Terms::default(),
        }
    }

    /// Counts of the pool's items, in one query.
    ///
    /// # Errors
    ///
    /// [`Error::PoolNotFound`] if no item was ever added to it;
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn status(&self) -> Result<PoolStatus> {
        validate_name("pool name", &self.name)?;
        let db = self.locks.db();
        let row = db
            .fetch_one(Repeat::Safe, &db.sql.pool_status, |q| q.bind(&self.name))
            .await?;
        if !row.try_get::<bool, _>("pool_exists")? {
            return Err(Error::PoolNotFound {
                pool: self.name.clone(),
            });
        }
        let count = |col: &str| row.try_get::<i64, _>(col).map(|n| n as u64);
        Ok(PoolStatus {
            total: count("total")?,
            free: count("free")?,
            held: count("held")?,
            delayed: count("delayed")?,
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
        let db = self.locks.db();
        let rows = db
            .fetch_all(Repeat::Safe, &db.sql.pool_items, |q| q.bind(&self.name))
            .await?;
        rows.iter().map(|r| Ok(PoolItem::from_row(r)?)).collect()
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
        let scope = Scope::Item {
            pool: self.name.clone(),
        };
        self.locks.force_release_in(&scope, item).await
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
        let scope = Scope::Item {
            pool: self.name.clone(),
        };
        self.locks.request_release_in(&scope, item).await
    }
}

/// Adds `items` of `kind` (`pool` or `semaphore`) to pool `pool`, in one
/// statement; how many were new.
pub(crate) async fn add_items(
    db: &Db,
    pool: &str,
    kind: &str,
    items: &[String],
    slots: &[Option<i32>],
) -> Result<u64> {
    let row = db
        .fetch_one(Repeat::Safe, &db.sql.pool_add, |q| {
            q.bind(pool).bind(items).bind(kind).bind(slots)
        })
        .await?;
    Ok(row.try_get::<i64, _>(0)? as u64)
}

/// A claim of any free item of a pool; see [`LeasePool::claim`].
#[derive(Debug, Clone)]
#[must_use = "a Claim does nothing until acquire() or try_acquire() is called"]
pub struct Claim {
    pool: LeasePool,
    terms: Terms,
}

impl Claim {
    terms_setters!();

    fn validate(&self) -> Result<()> {
        validate_name("pool name", &self.pool.name)?;
        self.terms.validate()
    }

    /// Claims a free (or expired) item if there is one; `Ok(None)` if not.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped at any point, nothing stays held. Once sent,
    /// the claim statement runs to its end in a task of its own, which puts
    /// the item back (after the statement) if its caller is gone by then.
    ///
    /// # Errors
    ///
    /// [`Error::PoolNotFound`] if no item was ever added to the pool;
    /// [`Error::InvalidInput`] before any SQL; [`Error::NotMigrated`];
    /// [`Error::Database`].
    pub async fn try_acquire(self) -> Result<Option<PoolLease>> {
        self.validate()?;
        let scope = Scope::Item {
            pool: self.pool.name.clone(),
        };
        let got = try_claim(&self.pool.locks, &scope, &self.terms, None).await?;
        Ok(got.map(|s| PoolLease::new(self.pool.locks.clone(), s)))
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
    pub async fn acquire(self) -> Result<PoolLease> {
        self.validate()?;
        let scope = Scope::Item {
            pool: self.pool.name.clone(),
        };
        let s = claim(&self.pool.locks, &scope, &self.terms, None).await?;
        Ok(PoolLease::new(self.pool.locks.clone(), s))
    }
}
