//! Seeing and repairing leases: listing, forced release, preemption.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

use crate::Locks;
use crate::error::{Error, Result};
use crate::key::validate_name;
use crate::session::on_statement_conn;
use crate::wait::{lease_topic, payload, pool_topic};

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
    /// The JSON payload.
    pub data: Option<Value>,
    /// Whether a release was requested.
    pub release_requested: bool,
}

impl Locks {
    /// Every plain lease in the schema, held or not, and every held pool
    /// item, ordered by pool and name.
    ///
    /// # Errors
    ///
    /// [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        let inner = &self.inner;
        let rows = on_statement_conn!(inner.sessions, |c| {
            inner
                .query(sqlx::AssertSqlSafe(inner.sql.lease_list.as_str()))
                .fetch_all(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        rows.into_iter()
            .map(|r| {
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
                    release_requested: r.try_get("release_requested")?,
                })
            })
            .collect()
    }

    /// Releases lease `name` whoever holds it, and wakes waiters. For
    /// operators: the holder learns of it at its next renewal or fence.
    /// Returns the token that was released, or `None` if nobody held it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn force_release(&self, name: &str) -> Result<Option<i64>> {
        validate_name("lease name", name)?;
        self.force_release_in("", name).await
    }

    /// Asks the holder of lease `name` to let go: its
    /// [`release_requested`](crate::LeaseRef::release_requested) resolves.
    /// Returns the holder's token, or `None` if nobody holds the lease.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`]; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn request_release(&self, name: &str) -> Result<Option<i64>> {
        validate_name("lease name", name)?;
        self.request_release_in("", name).await
    }

    pub(crate) async fn force_release_in(&self, pool: &str, name: &str) -> Result<Option<i64>> {
        let inner = &self.inner;
        let wake = if pool.is_empty() {
            name.to_owned()
        } else {
            pool_topic(pool)
        };
        let row = on_statement_conn!(once inner.sessions, |c| {
            inner.query(sqlx::AssertSqlSafe(inner.sql.lease_force_release.as_str()))
                .bind(pool)
                .bind(name)
                .bind(payload(&inner.schema, &wake))
                .fetch_optional(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        match row {
            Some(r) => {
                let token: i64 = r.try_get(0)?;
                let holder: Option<String> = r.try_get(1)?;
                tracing::warn!(
                    pool,
                    name,
                    token,
                    holder = holder.as_deref(),
                    "lease force-released"
                );
                Ok(Some(token))
            }
            None => Ok(None),
        }
    }

    pub(crate) async fn request_release_in(&self, pool: &str, name: &str) -> Result<Option<i64>> {
        let inner = &self.inner;
        let token = on_statement_conn!(once inner.sessions, |c| {
            inner.query_scalar(sqlx::AssertSqlSafe(
                inner.sql.lease_request_release.as_str(),
            ))
            .bind(pool)
            .bind(name)
            .bind(payload(&inner.schema, &lease_topic(pool, name)))
            .fetch_optional(c)
        })
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        Ok(token)
    }
}
