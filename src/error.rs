//! The one error type of pglock.

use std::time::Duration;

/// Everything that can go wrong in pglock.
///
/// Contention is not an error: `try_*` methods return `Ok(None)` when somebody
/// else holds what was asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock or lease was not obtained within the configured timeout.
    #[error("{what} not obtained within {waited:?}")]
    Timeout {
        /// What was waited for, e.g. `advisory lock "ckpt/run-42"`.
        what: String,
        /// How long the caller waited.
        waited: Duration,
    },

    /// The lease is no longer held by this owner: it expired, was taken over,
    /// force-released, or could not be renewed before its local deadline.
    #[error("lease {name:?} lost (token {token})")]
    LeaseLost {
        /// The lease name.
        name: String,
        /// The fencing token the caller held.
        token: i64,
    },

    /// The session that held an advisory lock is gone (terminated backend,
    /// network failure) or no longer holds the lock.
    #[error("advisory lock {key} lost (session {pid} no longer holds it)")]
    LockLost {
        /// The key, as given by the caller.
        key: String,
        /// The server process id of the session that held the lock.
        pid: i32,
    },

    /// Nothing in the pool is free or held: every item is done (or the pool
    /// is empty), so waiting for an item could never end.
    #[error("pool {pool:?} is drained: no item is free or held")]
    PoolDrained {
        /// The pool name.
        pool: String,
    },

    /// No pool of that name exists: no item was ever added to it
    /// ([`LeasePool::add`](crate::LeasePool::add) creates it). Unlike
    /// [`Error::PoolDrained`], this is most likely a wrong name.
    #[error("no pool named {pool:?}; add items to create it")]
    PoolNotFound {
        /// The pool name.
        pool: String,
    },

    /// An argument broke a rule; nothing was sent to the database. From
    /// [`Locks::migrate`](crate::Locks::migrate) also a server pglock
    /// refuses (`database`, `allow_async_replication`): only the checks'
    /// queries ran, nothing was installed.
    #[error("invalid {field}: {rule}")]
    InvalidInput {
        /// The argument, e.g. `lease name` or `ttl`.
        field: &'static str,
        /// The rule it broke, and the value where that helps.
        rule: String,
    },

    /// The schema has not been migrated (run `Locks::migrate`).
    #[error("schema {schema:?} is not installed; run Locks::migrate() or `pglock migrate` first")]
    NotMigrated {
        /// The schema that was expected.
        schema: String,
    },

    /// Running the crate's migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// The database reported an error, or the connection failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Shorthand for `Result<T, pglock::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: &'static str, rule: impl Into<String>) -> Self {
        Error::InvalidInput {
            field,
            rule: rule.into(),
        }
    }

    /// Turns a driver error into [`Error::NotMigrated`] when the schema's
    /// objects are missing, into [`Error::InvalidInput`] (`transaction_pooler`)
    /// for an undeclared transaction-mode pooler, and [`Error::Database`]
    /// otherwise.
    pub(crate) fn from_db(e: sqlx::Error, schema: &str) -> Self {
        if let sqlx::Error::Configuration(cause) = &e
            && let Some(pooler) = cause.downcast_ref::<crate::engine::UndeclaredPooler>()
        {
            return Error::invalid("transaction_pooler", pooler.to_string());
        }
        match sqlstate(&e).as_deref() {
            Some(UNDEFINED_TABLE | INVALID_SCHEMA | UNDEFINED_FUNCTION) => Error::NotMigrated {
                schema: schema.to_owned(),
            },
            _ => Error::Database(e),
        }
    }
}

pub(crate) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// `55P03 lock_not_available`: `lock_timeout` fired.
pub(crate) const LOCK_NOT_AVAILABLE: &str = "55P03";
/// `42P01 undefined_table` / `3F000 invalid_schema_name`: not migrated.
pub(crate) const UNDEFINED_TABLE: &str = "42P01";
pub(crate) const INVALID_SCHEMA: &str = "3F000";
pub(crate) const UNDEFINED_FUNCTION: &str = "42883";
/// Raised by `<schema>.fence(name, token)` when the token does not hold the lease.
pub(crate) const FENCE_FAILED: &str = "PGL01";
