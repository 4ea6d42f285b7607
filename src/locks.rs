//! [`Locks`], the handle everything starts from, and its builder.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Executor;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::Semaphore;

use crate::advisory::Advisory;
use crate::error::{Error, Result};
use crate::key::{AdvisoryKey, quote_schema};

/// Default schema of pglock's tables and functions.
pub const DEFAULT_SCHEMA: &str = "pglock";

/// Default number of advisory lock sessions a [`Locks`] may hold at once.
pub const DEFAULT_MAX_SESSIONS: u32 = 16;

/// The handle to pglock: advisory locks, leases, pools and semaphores on one
/// PostgreSQL database. Cheap to clone; clones share everything.
///
/// Short statements (lease acquire, renew, release, claim) run on the pool
/// you pass in. Connections that stay checked out for a long time — the
/// session behind each held [`AdvisoryGuard`](crate::AdvisoryGuard), and one
/// connection for LISTEN — are opened *beside* that pool with the same
/// connect options, so holding locks never starves your own queries. A
/// `Locks` opens at most [`max_sessions`](LocksBuilder::max_sessions) + 2 of
/// them.
#[derive(Clone, Debug)]
pub struct Locks {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// The caller's pool, for short statements.
    pub(crate) pool: PgPool,
    /// Connections beside the caller's pool: advisory lock sessions and the
    /// LISTEN connection. No ping before each use (the lock statement is the
    /// ping), so a lock costs one round trip.
    pub(crate) sessions: PgPool,
    /// Bounds how many advisory sessions are checked out at once.
    pub(crate) session_permits: Arc<Semaphore>,
    pub(crate) schema: String,
    pub(crate) quoted_schema: String,
    pub(crate) holder: String,
    /// Every statement on pglock's tables, with the schema filled in.
    pub(crate) sql: crate::sql::Statements,
    /// The shared LISTEN connection.
    pub(crate) hub: crate::wait::Hub,
    /// The background renewal task.
    pub(crate) keepalive: crate::keepalive::KeepAlive,
}

impl Locks {
    /// A handle on `pool` with the default schema (`pglock`) and holder label
    /// (`hostname:pid`).
    pub fn new(pool: PgPool) -> Locks {
        Locks::builder(pool)
            .build()
            .expect("the default options are valid")
    }

    /// A builder to set the schema, the holder label and limits.
    pub fn builder(pool: PgPool) -> LocksBuilder {
        LocksBuilder {
            pool,
            schema: DEFAULT_SCHEMA.to_owned(),
            holder: None,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }

    /// Installs or upgrades pglock's schema. Idempotent; safe to call from
    /// many processes at once.
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`] or [`Error::Database`] when the database refuses,
    /// for instance for lack of the `CREATE` privilege.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(pool: sqlx::PgPool) -> Result<(), pglock::Error> {
    /// let locks = pglock::Locks::new(pool);
    /// locks.migrate().await?;
    /// # Ok(()) }
    /// ```
    pub async fn migrate(&self) -> Result<()> {
        crate::migrate::run(self).await
    }

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
        Advisory::new(self.clone(), key.into())
    }

    /// The schema this handle works in (unquoted).
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The holder label written into lease rows.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The caller's pool this handle runs short statements on.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
}

/// Options of a [`Locks`]; see [`Locks::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct LocksBuilder {
    pool: PgPool,
    schema: String,
    holder: Option<String>,
    max_sessions: u32,
}

impl LocksBuilder {
    /// The schema of pglock's tables (default `pglock`): an identifier of at
    /// most 63 bytes, checked by [`build`](Self::build).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The label recorded as the holder of leases (default `hostname:pid`).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = Some(holder.into());
        self
    }

    /// How many advisory locks this handle may hold at once, each on a
    /// session of its own (default 16). A further `lock()` waits for one to
    /// be released.
    pub fn max_sessions(mut self, n: u32) -> Self {
        self.max_sessions = n;
        self
    }

    /// Checks the options and creates the handle. No connection is opened.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a schema that is not a plain identifier,
    /// an empty or oversized holder label, or `max_sessions` outside
    /// `1..=10000`.
    pub fn build(self) -> Result<Locks> {
        let quoted_schema = quote_schema(&self.schema)?;
        let holder = match self.holder {
            Some(h) => {
                crate::key::validate_name("holder", &h)?;
                h
            }
            None => default_holder(),
        };
        if !(1..=10_000).contains(&self.max_sessions) {
            return Err(Error::invalid(
                "max_sessions",
                format!("must be between 1 and 10000, got {}", self.max_sessions),
            ));
        }
        let options = (*self.pool.connect_options()).clone();
        let sessions = PgPoolOptions::new()
            .max_connections(self.max_sessions + 2)
            .min_connections(0)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(24 * 3600))
            .idle_timeout(Duration::from_secs(300))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // A session whose client went away (a cancelled lock()
                    // future closes its socket) ends within 250 ms even while
                    // it waits for a lock, and so releases everything.
                    if conn.server_version_num().unwrap_or(0) >= 140_000 {
                        conn.execute("SET client_connection_check_interval = 250")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        Ok(Locks {
            inner: Arc::new(Inner {
                pool: self.pool,
                sql: crate::sql::Statements::new(&quoted_schema),
                hub: crate::wait::Hub::new(self.schema.clone(), sessions.clone()),
                keepalive: Default::default(),
                sessions,
                session_permits: Arc::new(Semaphore::new(self.max_sessions as usize)),
                schema: self.schema,
                quoted_schema,
                holder,
            }),
        })
    }
}

fn default_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
