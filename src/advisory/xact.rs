//! Transaction-scoped advisory locks (`pg_advisory_xact_lock`): taken on
//! the caller's transaction and released at its commit or rollback, so they
//! need no session of pglock's and work behind transaction-mode poolers.

use sqlx::{Connection, PgConnection, Row};

use super::Advisory;
use crate::error::{Error, LOCK_NOT_AVAILABLE, Result, sqlstate};
use crate::sql::advisory::{self as sql, Wait};

impl Advisory {
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
        let wait = if self.timeout.is_some() {
            Wait::Timed
        } else {
            Wait::Untimed
        };
        let db = self.locks.db();
        let mut query = self
            .key
            .bind(db.query(sql::xact_lock(self.key.kind(), self.mode(), wait)));
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
        let stmt = sql::xact_try_lock(self.key.kind(), self.mode());
        let row = self
            .key
            .bind(self.locks.db().query(stmt))
            .fetch_one(conn)
            .await?;
        Ok(row.try_get(0)?)
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
