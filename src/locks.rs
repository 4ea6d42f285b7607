//! [`Locks`], the handle everything starts from, and its builder.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryScalar};
use sqlx::{Postgres, SqlSafeStr};

use crate::advisory::Advisory;
use crate::error::{Error, Result};
use crate::key::{AdvisoryKey, quote_schema};

/// Default schema of pglock's tables and functions.
pub const DEFAULT_SCHEMA: &str = "pglock";

/// Default number of advisory lock sessions a [`Locks`] may hold at once.
pub const DEFAULT_MAX_SESSIONS: u32 = 16;

/// Default number of connections a [`Locks`] uses for short statements
/// (lease operations, renewals, claims) at once.
pub const DEFAULT_STATEMENT_CONNECTIONS: u32 = 8;

/// The handle to pglock: advisory locks, leases, pools and semaphores on one
/// PostgreSQL database. Cheap to clone; clones share everything.
///
/// # Connections
///
/// pglock opens its connections *beside* the pool you pass in, with the same
/// connect options, so holding locks never starves your own queries and a
/// busy application pool never delays a renewal: at most
/// [`max_sessions`](LocksBuilder::max_sessions) advisory sessions (one per
/// held [`AdvisoryGuard`](crate::AdvisoryGuard), default 16),
/// [`statement_connections`](LocksBuilder::statement_connections) for lease
/// operations and renewals (default 8), and one LISTEN connection, all opened
/// on first need and closed after five idle minutes. Your pool itself is
/// only read for its connect options; your transactions (`fence`,
/// `lock_xact`) run on the connections you pass.
///
/// Behind PgBouncer in `pool_mode=transaction`, declare it with
/// [`transaction_pooler`](LocksBuilder::transaction_pooler), and give
/// [`session_options`](LocksBuilder::session_options) a direct (or
/// session-mode) address for session advisory locks and NOTIFY wake-ups.
///
/// Create it inside a Tokio runtime.
#[derive(Clone, Debug)]
pub struct Locks {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// The caller's pool: its connect options are pglock's.
    pub(crate) pool: PgPool,
    /// pglock's own connections beside the caller's pool: advisory lock
    /// sessions and short statements, without sqlx's pings.
    pub(crate) sessions: Arc<crate::session::Sessions>,
    /// Connections for advisory lock sessions: `sessions` itself unless
    /// [`LocksBuilder::session_options`] was given.
    pub(crate) lock_sessions: Arc<crate::session::Sessions>,
    /// Whether the pool's connect options lead through a transaction-mode
    /// pooler ([`LocksBuilder::transaction_pooler`]).
    pub(crate) transaction_pooler: bool,
    /// Connect options of connections that need a real session (advisory
    /// lock sessions, LISTEN, `migrate`), if they differ from the pool's.
    pub(crate) session_options: Option<PgConnectOptions>,
    pub(crate) schema: String,
    pub(crate) quoted_schema: String,
    pub(crate) holder: String,
    /// Every statement on pglock's tables, with the schema filled in.
    pub(crate) sql: crate::sql::Statements,
    /// The shared LISTEN connection.
    pub(crate) hub: crate::wait::Hub,
    /// The background renewal task.
    pub(crate) keepalive: crate::keepalive::KeepAlive,
    /// Semaphores (name, permits) whose permits this handle has ensured.
    pub(crate) semaphores: std::sync::Mutex<std::collections::HashSet<(String, u32)>>,
}

impl Inner {
    /// `sqlx::query(sql)`, with an unnamed prepared statement behind a
    /// transaction-mode pooler (a named one would stay on a server
    /// connection that the pooler hands to other clients).
    pub(crate) fn query<'q>(&self, sql: impl SqlSafeStr) -> Query<'q, Postgres, PgArguments> {
        sqlx::query(sql).persistent(!self.transaction_pooler)
    }

    /// `sqlx::query_scalar(sql)`, as [`Inner::query`].
    pub(crate) fn query_scalar<'q, O>(
        &self,
        sql: impl SqlSafeStr,
    ) -> QueryScalar<'q, Postgres, O, PgArguments>
    where
        (O,): for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        sqlx::query_scalar(sql).persistent(!self.transaction_pooler)
    }
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
            statement_connections: DEFAULT_STATEMENT_CONNECTIONS,
            transaction_pooler: false,
            session_options: None,
        }
    }

    /// Installs or upgrades pglock's schema. Idempotent; safe to call from
    /// many processes at once.
    ///
    /// # Errors
    ///
    /// [`Error::Migrate`] or [`Error::Database`] when the database refuses,
    /// for instance for lack of the `CREATE` privilege;
    /// [`Error::InvalidInput`] with
    /// [`transaction_pooler`](LocksBuilder::transaction_pooler) and no
    /// [`session_options`](LocksBuilder::session_options) (the migration
    /// holds a session advisory lock).
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

    /// The SQL pglock sends, with this handle's schema (for benchmarks).
    #[doc(hidden)]
    pub fn __statements(&self) -> &crate::sql::Statements {
        &self.inner.sql
    }

    /// The pool this handle was created with.
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
    statement_connections: u32,
    transaction_pooler: bool,
    session_options: Option<PgConnectOptions>,
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

    /// How many connections this handle uses at once for short statements
    /// (lease acquire, renew, release, claims; default 8).
    pub fn statement_connections(mut self, n: u32) -> Self {
        self.statement_connections = n;
        self
    }

    /// Declares that the pool's connect options lead through a
    /// transaction-mode pooler (PgBouncer `pool_mode=transaction`, or any
    /// pooler that may hand the server connection to another client after
    /// each transaction). Default `false`: a direct server or a session-mode
    /// pooler.
    ///
    /// With `true`:
    /// - every statement pglock sends on its own connections runs in a
    ///   transaction of its own with an unnamed prepared statement (works
    ///   with PgBouncer before 1.21, which has no prepared statement
    ///   support), and sets nothing at session level (`lock_timeout` and
    ///   `synchronous_commit` are set per transaction instead); statements
    ///   on your transactions (`fence`, `lock_xact`) use unnamed prepared
    ///   statements too;
    /// - session advisory locks ([`Advisory::lock`](crate::Advisory::lock),
    ///   [`try_lock`](crate::Advisory::try_lock)) and
    ///   [`Locks::migrate`] need [`session_options`](Self::session_options)
    ///   and fail with [`Error::InvalidInput`] without it; `lock_xact` works
    ///   either way;
    /// - without `session_options`, waiters get no NOTIFY (LISTEN needs a
    ///   session) and look again at the holder's expiry and at least every
    ///   2 seconds instead.
    pub fn transaction_pooler(mut self, yes: bool) -> Self {
        self.transaction_pooler = yes;
        self
    }

    /// Connect options for the connections that need a real server session:
    /// advisory lock sessions, the LISTEN connection of waiters, and
    /// [`Locks::migrate`]. Point them at the server itself or at a
    /// session-mode pooler, at the same database as the pool. Default: the
    /// pool's connect options (or, with
    /// [`transaction_pooler`](Self::transaction_pooler), none: those
    /// features are then refused or replaced by polling).
    pub fn session_options(mut self, options: PgConnectOptions) -> Self {
        self.session_options = Some(options);
        self
    }

    /// Checks the options and creates the handle. No connection is opened.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a schema that is not a plain identifier,
    /// an empty or oversized holder label, `max_sessions` outside `1..=10000`
    /// or `statement_connections` outside `1..=1000`.
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
        if !(1..=1000).contains(&self.statement_connections) {
            return Err(Error::invalid(
                "statement_connections",
                format!(
                    "must be between 1 and 1000, got {}",
                    self.statement_connections
                ),
            ));
        }
        let options = (*self.pool.connect_options()).clone();
        let sessions = crate::session::Sessions::new(
            options.clone(),
            self.max_sessions,
            self.statement_connections,
            self.transaction_pooler,
        );
        let lock_sessions = match &self.session_options {
            Some(o) => crate::session::Sessions::new(
                o.clone(),
                self.max_sessions,
                self.statement_connections,
                false,
            ),
            None => sessions.clone(),
        };
        // Where LISTEN can work: not through a transaction pooler.
        let listen_options = match (&self.session_options, self.transaction_pooler) {
            (Some(o), _) => Some(o.clone()),
            (None, false) => Some(options),
            (None, true) => None,
        };
        // PgListener needs a sqlx pool: a private one, for that connection only.
        let listen_pool = listen_options.map(|o| {
            PgPoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy_with(o)
        });
        Ok(Locks {
            inner: Arc::new(Inner {
                pool: self.pool,
                sql: crate::sql::Statements::new(&quoted_schema),
                hub: crate::wait::Hub::new(self.schema.clone(), listen_pool),
                lock_sessions,
                transaction_pooler: self.transaction_pooler,
                session_options: self.session_options,
                keepalive: Default::default(),
                semaphores: Default::default(),
                sessions,
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
