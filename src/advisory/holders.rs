//! Who holds advisory locks, from `pg_locks`: the truth for every session on
//! the database, psql and other languages included (pglock keeps no
//! registry of its own).

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::db::Repeat;
use crate::error::Result;
use crate::key::AdvisoryKey;
use crate::locks::Locks;
use crate::sql::advisory as sql;

/// One granted advisory lock, from [`Locks::advisory_locks`] or
/// [`Locks::advisory_holders`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AdvisoryLockInfo {
    /// The server process id of the session holding it.
    pub pid: i32,
    /// That session's `application_name` (empty if unset).
    pub application_name: String,
    /// Held in shared mode.
    pub shared: bool,
    /// The 64-bit key, or `None` for a lock taken with two `int4` keys.
    pub key: Option<i64>,
    /// The key's two 32-bit halves (`classid`, `objid`), as `pg_locks`
    /// shows them.
    pub key_pair: (i64, i64),
    /// The session's last state change: for a session idling on its lock,
    /// about when it took it.
    pub since: Option<DateTime<Utc>>,
    /// Time since `since`, by the database clock.
    pub held_for: Option<chrono::Duration>,
}

impl AdvisoryLockInfo {
    fn from_row(r: &PgRow) -> Result<AdvisoryLockInfo> {
        let ms: Option<i64> = r.try_get("held_for_ms")?;
        Ok(AdvisoryLockInfo {
            pid: r.try_get("pid")?,
            application_name: r.try_get("application_name")?,
            shared: r.try_get("shared")?,
            key: r.try_get("key")?,
            key_pair: (r.try_get("key_high")?, r.try_get("key_low")?),
            since: r.try_get("since")?,
            held_for: ms.map(chrono::Duration::milliseconds),
        })
    }
}

impl Locks {
    /// Every advisory lock granted in this database, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database).
    pub async fn advisory_locks(&self) -> Result<Vec<AdvisoryLockInfo>> {
        let db = self.db();
        let rows = db.fetch_all(Repeat::Safe, &sql::held(), |q| q).await?;
        rows.iter().map(AdvisoryLockInfo::from_row).collect()
    }

    /// The sessions holding the advisory lock on `key` now (several for a
    /// shared lock), by pid.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad key;
    /// [`Error::Database`](crate::Error::Database).
    pub async fn advisory_holders(
        &self,
        key: impl Into<AdvisoryKey>,
    ) -> Result<Vec<AdvisoryLockInfo>> {
        let key = key.into();
        key.validate()?;
        let db = self.db();
        let rows = db
            .fetch_all(Repeat::Safe, &sql::holders(key.kind()), |q| key.bind(q))
            .await?;
        rows.iter().map(AdvisoryLockInfo::from_row).collect()
    }
}
