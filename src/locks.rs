//! [`Locks`], the handle everything starts from, and its builder.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use sqlx::postgres::{PgConnectOptions, PgPool};

use crate::advisory::mux::Mux;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::key::{quote_schema, validate_name};
use crate::lease::handoff::Queues;
use crate::lease::keepalive::KeepAlive;
use crate::pool::resume::Resume;
use crate::session::{Limits, Pooler};

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
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Db>,
    holder: String,
    /// The background renewal task.
    keepalive: KeepAlive,
    /// Waiters of this handle that a release hands a lease to.
    handoffs: Arc<Queues>,
    /// When this handle's pool claims may leave out the sticky probe.
    resume: Resume,
    /// Semaphores (name, permits) whose permits this handle has ensured.
    semaphores: Mutex<HashSet<(String, u32)>>,
    /// The shared advisory sessions, with
    /// [`LocksBuilder::advisory_sessions`].
    mux: Option<Arc<Mux>>,
}

impl Locks {
    /// Default schema of pglock's tables and functions.
    pub const DEFAULT_SCHEMA: &str = "pglock";
    /// Default number of advisory lock sessions a [`Locks`] may hold at once.
    pub const DEFAULT_MAX_SESSIONS: u32 = 16;
    /// Default number of connections a [`Locks`] uses for short statements
    /// (lease operations, renewals, claims) at once.
    pub const DEFAULT_STATEMENT_CONNECTIONS: u32 = 8;
    /// Longest accepted lease, pool, item, holder or advisory key name, in
    /// bytes.
    pub const MAX_NAME_BYTES: usize = crate::key::MAX_NAME_BYTES;

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
            schema: Locks::DEFAULT_SCHEMA.to_owned(),
            holder: None,
            max_sessions: Locks::DEFAULT_MAX_SESSIONS,
            advisory_sessions: 0,
            statement_connections: Locks::DEFAULT_STATEMENT_CONNECTIONS,
            transaction_pooler: false,
            session_options: None,
            allow_async_replication: false,
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
    /// holds a session advisory lock); [`Error::InvalidInput`] (`database`)
    /// when advisory locks do not exclude on the server (checked with a
    /// second session), and (`allow_async_replication`) when the server has
    /// streaming standbys but commits wait for none, unless
    /// [`allow_async_replication`](LocksBuilder::allow_async_replication).
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
        crate::migrate::run(self.db()).await
    }

    /// The schema this handle works in (unquoted).
    pub fn schema(&self) -> &str {
        &self.inner.db.schema
    }

    /// The holder label written into lease rows.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The statement [`LeaseRef::fence`](crate::LeaseRef::fence) runs, with
    /// this handle's schema filled in, for fencing on a connection pglock
    /// does not own (another driver, another language): bind `$1` the pool
    /// or semaphore name (`''` for a plain lease), `$2` the lease name, `$3`
    /// the token, and run it inside the transaction of the fenced writes.
    /// It raises SQLSTATE `PGL01` if the token no longer holds the lease.
    pub fn fence_sql(&self) -> &str {
        &self.inner.db.sql.lease_fence
    }

    /// The SQL pglock sends, with this handle's schema: for pglock's own
    /// tests and benchmarks, behind the unstable `internals` feature.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn __statements(&self) -> &crate::sql::Statements {
        &self.inner.db.sql
    }

    /// How many tasks of this handle wait for `topic` (a lease's name, or
    /// `"\u{1f}<pool>"`) in its wake-up queue, marked and past the look
    /// after the mark: for pglock's own tests, behind the unstable
    /// `internals` feature.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn __queued(&self, topic: &str) -> usize {
        self.inner.db.hub.queued(topic)
    }

    /// The pool this handle was created with.
    pub fn pool(&self) -> &PgPool {
        &self.inner.db.pool
    }

    pub(crate) fn db(&self) -> &Arc<Db> {
        &self.inner.db
    }

    pub(crate) fn keepalive(&self) -> &KeepAlive {
        &self.inner.keepalive
    }

    pub(crate) fn resume(&self) -> &Resume {
        &self.inner.resume
    }

    pub(crate) fn handoffs(&self) -> &Arc<Queues> {
        &self.inner.handoffs
    }

    pub(crate) fn mux(&self) -> Option<&Arc<Mux>> {
        self.inner.mux.as_ref()
    }

    pub(crate) fn semaphores(&self) -> &Mutex<HashSet<(String, u32)>> {
        &self.inner.semaphores
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
    advisory_sessions: u32,
    statement_connections: u32,
    transaction_pooler: bool,
    session_options: Option<PgConnectOptions>,
    allow_async_replication: bool,
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

    /// Multiplexes session advisory locks onto `n` shared sessions (default
    /// 0: off, each guard holds a session of its own). With `n` set, one
    /// handle can hold thousands of advisory locks on a few server
    /// sessions:
    ///
    /// - [`try_lock`](crate::Advisory::try_lock), and a
    ///   [`lock`](crate::Advisory::lock) whose key no other session holds,
    ///   take the lock with `pg_try_advisory_lock` on one of the `n` shared
    ///   sessions (chosen by the key), one round trip;
    /// - tasks of this process exclude each other in the client (session
    ///   locks are reentrant per session): a second exclusive request for
    ///   a key this handle holds waits in the process (or `try_lock`
    ///   returns `None`); shared requests share;
    /// - a `lock` of a key another session holds waits in the server on a
    ///   session of its own (within `max_sessions`), as without this
    ///   option, and keeps the lock there;
    /// - dropping or releasing a guard unlocks on the session the lock is
    ///   on before any other local task can take the key; a cancelled
    ///   acquire leaves nothing held; when a shared session dies, `lost()`
    ///   resolves for every guard on it.
    ///
    /// The price: a guard has no session to lend, so its `Deref` to
    /// [`PgConnection`](sqlx::PgConnection) panics (see
    /// [`AdvisoryGuard`](crate::AdvisoryGuard)). The shared sessions count
    /// against `max_sessions`; `n` must be below it and at most 64. The
    /// server's lock table must fit the locks:
    /// `max_locks_per_transaction × (max_connections + max_prepared_transactions)`
    /// entries for the whole server.
    pub fn advisory_sessions(mut self, n: u32) -> Self {
        self.advisory_sessions = n;
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

    /// Accept a server that replicates asynchronously (default `false`).
    ///
    /// [`Locks::migrate`] refuses, with [`Error::InvalidInput`]
    /// (`allow_async_replication`), a server with streaming standbys whose
    /// commits wait for none (`synchronous_standby_names` empty, or
    /// `synchronous_commit` below `on` for pglock's sessions): a failover
    /// there can lose the last acquisitions, hand a lease to a second holder
    /// and hand out a fencing token again. With `true` it logs a warning
    /// (`tracing`) instead. The check runs only in `migrate`, one round trip.
    pub fn allow_async_replication(mut self, yes: bool) -> Self {
        self.allow_async_replication = yes;
        self
    }

    /// Checks the options and creates the handle. No connection is opened.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a schema that is not a plain identifier,
    /// an empty or oversized holder label, `max_sessions` outside `1..=10000`,
    /// `advisory_sessions` above 64 or not below `max_sessions`, or
    /// `statement_connections` outside `1..=1000`.
    pub fn build(self) -> Result<Locks> {
        let quoted_schema = quote_schema(&self.schema)?;
        let holder = match self.holder {
            Some(h) => {
                validate_name("holder", &h)?;
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
        if self.advisory_sessions > 64 || self.advisory_sessions >= self.max_sessions {
            return Err(Error::invalid(
                "advisory_sessions",
                format!(
                    "must be at most 64 and below max_sessions ({}), got {}",
                    self.max_sessions, self.advisory_sessions
                ),
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
        let pooler = if self.transaction_pooler {
            Pooler::TransactionMode
        } else {
            Pooler::SessionMode
        };
        let limits = Limits {
            max_sessions: self.max_sessions,
            statement_connections: self.statement_connections,
        };
        let mut db = Db::new(
            self.pool,
            self.schema,
            quoted_schema,
            pooler,
            self.session_options,
            limits,
        );
        db.allow_async_replication = self.allow_async_replication;
        Ok(Locks {
            inner: Arc::new(Inner {
                db: Arc::new(db),
                holder,
                keepalive: KeepAlive::default(),
                handoffs: Arc::default(),
                resume: Resume::default(),
                semaphores: Mutex::default(),
                mux: (self.advisory_sessions > 0).then(|| Mux::new(self.advisory_sessions)),
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
