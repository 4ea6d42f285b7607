//! Seeing and repairing leases: listing, who holds what, forced release,
//! preemption. The command line's `ls`, `release --force` and
//! `request-release` are these calls.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::db::Repeat;
use crate::error::Result;
use crate::key::validate_name;
use crate::lease::state::Scope;
use crate::locks::Locks;
use crate::pool::LeasePool;
use crate::wait::payload;

/// One row of [`Locks::leases`]: a plain lease, or a held pool item.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct LeaseInfo {
    /// The pool, for a pool item or semaphore permit.
    pub pool: Option<String>,
    /// The lease (or item) name.
    pub name: String,
    /// Token of the latest acquisition.
    pub token: i64,
    /// Label of the latest holder.
    pub holder: Option<String>,
    /// Whether it is held now (by the database clock).
    pub held: bool,
    /// When the latest holder acquired it.
    pub acquired_at: Option<DateTime<Utc>>,
    /// When it expires (or expired) unless renewed; `None` once released.
    pub expires_at: Option<DateTime<Utc>>,
    /// Time until expiry by the database clock (negative once expired).
    pub expires_in: Option<chrono::Duration>,
    /// The JSON payload. It outlives its holder: an acquire without data
    /// keeps it, so it may be a previous holder's (see
    /// [`data_token`](Self::data_token)).
    pub data: Option<Value>,
    /// Token of the acquisition that wrote [`data`](Self::data): equal to
    /// [`token`](Self::token) when the latest holder wrote it, smaller when
    /// a previous holder did. `None` with data present: written before
    /// schema version 3.
    pub data_token: Option<i64>,
    /// Holder label of the acquisition that wrote [`data`](Self::data).
    pub data_holder: Option<String>,
    /// Whether a release was requested.
    pub release_requested: bool,
    /// Set while the lease expired (was not released) and its lock-delay
    /// has not yet passed: nobody can take it before this time.
    pub delayed_until: Option<DateTime<Utc>>,
}

impl LeaseInfo {
    fn from_row(r: &PgRow) -> Result<LeaseInfo> {
        let ms: Option<f64> = r.try_get("expires_in_ms")?;
        let pool: String = r.try_get("pool")?;
        Ok(LeaseInfo {
            pool: Some(pool).filter(|p| !p.is_empty()),
            name: r.try_get("name")?,
            token: r.try_get("token")?,
            holder: r.try_get("holder")?,
            held: r.try_get("held")?,
            acquired_at: r.try_get("acquired_at")?,
            expires_at: r.try_get("expires_at")?,
            expires_in: ms.map(|ms| chrono::Duration::milliseconds(ms as i64)),
            data: r.try_get("data")?,
            data_token: r.try_get("data_token")?,
            data_holder: r.try_get("data_holder")?,
            release_requested: r.try_get("release_requested")?,
            delayed_until: r.try_get("delayed_until")?,
        })
    }
}

impl Locks {
    /// Every plain lease in the schema, held or not, and every held pool
    /// item, ordered by pool and name.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`](crate::Error::NotMigrated);
    /// [`Error::Database`](crate::Error::Database).
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let db = self.db();
        let rows = db
            .fetch_all(Repeat::Safe, &db.sql.lease_list, |q| q)
            .await?;
        rows.iter().map(LeaseInfo::from_row).collect()
    }

    /// The row of lease `name`, held or not (`held` tells), or `None` if it
    /// was never taken: who holds it and until when, or what became of it
    /// (a greater token than yours: taken over; `expires_at` empty:
    /// released).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput);
    /// [`Error::NotMigrated`](crate::Error::NotMigrated);
    /// [`Error::Database`](crate::Error::Database).
    pub async fn lease_info(&self, name: &str) -> Result<Option<LeaseInfo>> {
        validate_name("lease name", name)?;
        self.info_in(&Scope::Lease, name).await
    }

    /// Who holds lease `name` now, and for how long still (by the database
    /// clock); `None` if nobody does.
    ///
    /// # Errors
    ///
    /// As [`lease_info`](Self::lease_info).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<LeaseInfo>> {
        Ok(self.lease_info(name).await?.filter(|l| l.held))
    }

    pub(crate) async fn info_in(&self, scope: &Scope, name: &str) -> Result<Option<LeaseInfo>> {
        let db = self.db();
        let pool = scope.pool_column();
        let row = db
            .fetch_optional(Repeat::Safe, &db.sql.lease_get, |q| q.bind(pool).bind(name))
            .await?;
        row.as_ref().map(LeaseInfo::from_row).transpose()
    }

    /// Releases lease `name` whoever holds it, and wakes waiters. For
    /// operators: the holder learns of it at its next renewal or fence.
    /// Returns the token that was released, or `None` if nobody held it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput);
    /// [`Error::NotMigrated`](crate::Error::NotMigrated);
    /// [`Error::Database`](crate::Error::Database).
    pub async fn force_release(&self, name: &str) -> Result<Option<i64>> {
        validate_name("lease name", name)?;
        self.force_release_in(&Scope::Lease, name).await
    }

    /// Asks the holder of lease `name` to let go: its
    /// [`release_requested`](crate::LeaseRef::release_requested) resolves.
    /// Returns the holder's token, or `None` if nobody holds the lease.
    ///
    /// # Errors
    ///
    /// As [`force_release`](Self::force_release).
    pub async fn request_release(&self, name: &str) -> Result<Option<i64>> {
        validate_name("lease name", name)?;
        self.request_release_in(&Scope::Lease, name).await
    }

    pub(crate) async fn force_release_in(&self, scope: &Scope, name: &str) -> Result<Option<i64>> {
        let db = self.db();
        let wake = scope.free_topic(name);
        let Some(r) = self
            .notify_row(&db.sql.lease_force_release, scope, name, &wake)
            .await?
        else {
            return Ok(None);
        };
        let token: i64 = r.try_get(0)?;
        let holder: Option<String> = r.try_get(1)?;
        let pool = scope.pool_column();
        tracing::warn!(
            pool,
            name,
            token,
            holder = holder.as_deref(),
            "lease force-released"
        );
        Ok(Some(token))
    }

    pub(crate) async fn request_release_in(
        &self,
        scope: &Scope,
        name: &str,
    ) -> Result<Option<i64>> {
        let db = self.db();
        let wake = scope.holder_topic(name);
        let row = self
            .notify_row(&db.sql.lease_request_release, scope, name, &wake)
            .await?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?)
    }

    /// Runs `sql` (`$1` pool, `$2` name, `$3` the payload that wakes
    /// `topic`) once; its row, if any.
    async fn notify_row(
        &self,
        sql: &str,
        scope: &Scope,
        name: &str,
        topic: &str,
    ) -> Result<Option<PgRow>> {
        let db = self.db();
        let pool = scope.pool_column();
        let wake = payload(&db.schema, topic);
        db.fetch_optional(Repeat::Never, sql, |q| q.bind(pool).bind(name).bind(&wake))
            .await
    }
}

impl LeasePool {
    /// The row of `item`, held or not, or `None` if the pool has no such
    /// item; see [`Locks::lease_info`].
    ///
    /// # Errors
    ///
    /// As [`Locks::lease_info`].
    pub async fn item_info(&self, item: &str) -> Result<Option<LeaseInfo>> {
        validate_name("pool name", self.name())?;
        validate_name("item name", item)?;
        let scope = Scope::Item {
            pool: self.name().to_owned(),
        };
        self.locks().info_in(&scope, item).await
    }
}

impl Locks {
    /// Deletes the rows of plain leases that are free (released, or
    /// expired) and unchanged for at least `older_than`, in one statement;
    /// returns how many went. Pool items (done ones included: they are the
    /// pool's membership) and semaphore permits are never deleted. A name
    /// acquired after its row was deleted still gets a greater fencing
    /// token than any before (tokens come from one sequence). Rows an
    /// acquire or a fenced transaction is touching right now are skipped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for an
    /// `older_than` beyond 100 years;
    /// [`Error::NotMigrated`](crate::Error::NotMigrated);
    /// [`Error::Database`](crate::Error::Database).
    pub async fn gc(&self, older_than: std::time::Duration) -> Result<u64> {
        const MAX: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);
        if older_than > MAX {
            return Err(crate::Error::invalid(
                "older_than",
                format!("must be at most 100 years, got {older_than:?}"),
            ));
        }
        let ms = older_than.as_millis() as i64;
        let db = self.db();
        let row = db
            .fetch_one(Repeat::Safe, &db.sql.lease_gc, |q| q.bind(ms))
            .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }
}
