//! pglock's own connections, opened beside the caller's pool with the same
//! connect options.
//!
//! sqlx's pool pings a connection when it hands it out (by default) and
//! again when it takes it back: up to two extra round trips around a
//! one-statement operation, half the throughput of a lock+unlock cycle. This
//! small cache hands out idle connections as they are, pinging only those
//! idle for more than a second, and takes them back without a ping. A
//! connection whose state is unknown (a cancelled lock, an error from a lock
//! statement) is never put back: the caller closes it.
//!
//! Two budgets share the idle connections: advisory sessions, held for a
//! whole critical section (`max_sessions`), and short statements (lease
//! operations, renewals; `statement_connections`). Held locks therefore never
//! starve renewals.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use sqlx::Row;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Run on every new connection of pglock's: learn which server session it
/// is (for `AdvisoryGuard::lost`) and whether it is a standby (refused:
/// `engine::standby_refused`), wait for locks without a time limit unless
/// a statement sets one (whatever the connect options say), and commit
/// durably (see `Sessions::connect`).
const SESSION_SETUP: &str = "SELECT pg_backend_pid(), pg_postmaster_start_time(), \
     pg_is_in_recovery(), set_config('lock_timeout', '0', false), \
     CASE WHEN current_setting('synchronous_commit') = 'off' \
          THEN set_config('synchronous_commit', 'on', false) END";

/// [`SESSION_SETUP`] behind a transaction-mode pooler: the server session
/// behind such a connection changes between transactions and is shared with
/// other clients, so nothing is set on it (a session-level `set_config`
/// would stay on the server connection and apply to whichever client the
/// pooler hands it to next). The pid is read only to fill [`ConnId`]; it is
/// never used for statement connections. The settings move to
/// [`POOLED_BEGIN`], transaction-local.
const SESSION_SETUP_POOLED: &str =
    "SELECT pg_backend_pid(), pg_postmaster_start_time(), pg_is_in_recovery()";

/// Opens the transaction each statement runs in behind a transaction-mode
/// pooler, with [`SESSION_SETUP`]'s settings made transaction-local
/// (`set_config(.., true)`), so they end with the transaction and never
/// leak into the pooler's server connection.
///
/// Why a transaction at all: sqlx runs a statement with parameters in two
/// round trips, each ended by `Sync` (`Parse`+`Describe`, then
/// `Bind`+`Execute`). Outside a transaction, a transaction-mode pooler may
/// hand the server connection to another client between them, so the
/// `Bind` could reach a server that lacks the statement, or holds another
/// client's unnamed statement. Inside `BEGIN … COMMIT` the pooler keeps the
/// server connection for the whole exchange.
pub(crate) const POOLED_BEGIN: &str = "BEGIN; SELECT set_config('lock_timeout', '0', true), \
     CASE WHEN current_setting('synchronous_commit') = 'off' \
          THEN set_config('synchronous_commit', 'on', true) END";

/// What sits between pglock and the server, decided once by
/// [`LocksBuilder::transaction_pooler`](crate::LocksBuilder::transaction_pooler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooler {
    /// The server itself, or a session-mode pooler: a connection is one
    /// server session for its whole life.
    SessionMode,
    /// A transaction-mode pooler: the server session may change after every
    /// transaction, so nothing is set at session level, every statement runs
    /// in a transaction of its own with an unnamed prepared statement, and
    /// session advisory locks, LISTEN and migrations need
    /// `session_options`.
    TransactionMode,
}

/// Limits of pglock's own connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_sessions: u32,
    pub(crate) statement_connections: u32,
}

/// Which server session a connection is: its pid, and the server's start
/// time (a pid is reused after a restart).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnId {
    pub(crate) pid: i32,
    pub(crate) started: DateTime<Utc>,
}

/// A connection idle longer than this is pinged before reuse.
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);
/// A connection idle longer than this is closed.
const MAX_IDLE: Duration = Duration::from_secs(300);

#[derive(Debug)]
pub(crate) struct Sessions {
    options: PgConnectOptions,
    /// What `options` lead through: behind a transaction-mode pooler no
    /// session state is set on new connections (see [`Pooler`]).
    pooler: Pooler,
    idle: Mutex<Vec<(PgConnection, ConnId, Instant)>>,
    locks: Arc<Semaphore>,
    statements: Arc<Semaphore>,
    /// Set once a first connection showed that `options` do not lead
    /// through an undeclared transaction-mode pooler.
    probed: tokio::sync::OnceCell<()>,
}

/// A checked-out connection; goes back to the idle list when dropped, unless
/// taken with [`Session::into_conn`] or marked with [`Session::discard`].
#[derive(Debug)]
pub(crate) struct Session {
    conn: Option<PgConnection>,
    /// The server session behind `conn`.
    pub(crate) id: ConnId,
    /// Set while the connection's state is unknown — a statement runs, or a
    /// lock may have been granted but not yet confirmed or released.
    /// Dropped then (a cancelled or timed-out caller), it is closed, never
    /// reused, and the server drops whatever it held.
    pub(crate) in_flight: bool,
    /// Whether the connection was reused (not freshly opened).
    pub(crate) reused: bool,
    home: Arc<Sessions>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Sessions {
    pub(crate) fn new(options: PgConnectOptions, limits: Limits, pooler: Pooler) -> Arc<Self> {
        Arc::new(Sessions {
            options,
            pooler,
            idle: Mutex::new(Vec::new()),
            locks: Arc::new(Semaphore::new(limits.max_sessions as usize)),
            statements: Arc::new(Semaphore::new(limits.statement_connections as usize)),
            probed: tokio::sync::OnceCell::new(),
        })
    }

    /// A connection for an advisory lock session.
    pub(crate) async fn lock_session(self: &Arc<Self>) -> Result<Session, sqlx::Error> {
        self.checkout(&self.locks).await
    }

    /// A connection for one short statement.
    pub(crate) async fn statement(self: &Arc<Self>) -> Result<Session, sqlx::Error> {
        self.checkout(&self.statements).await
    }

    /// A connection, within the budget `budget`.
    async fn checkout(self: &Arc<Self>, budget: &Arc<Semaphore>) -> Result<Session, sqlx::Error> {
        let permit = budget.clone().acquire_owned().await.expect("never closed");
        loop {
            let popped = {
                let mut idle = self.idle.lock().unwrap();
                let now = Instant::now();
                // Oldest first in the list: drop the stale ones.
                let stale = idle
                    .iter()
                    .take_while(|(_, _, t)| now - *t > MAX_IDLE)
                    .count();
                let stale: Vec<_> = idle.drain(..stale).collect();
                let popped = idle.pop();
                drop(idle);
                drop(stale);
                popped
            };
            let Some((mut conn, id, since)) = popped else {
                break;
            };
            if since.elapsed() > PING_AFTER_IDLE && conn.ping().await.is_err() {
                continue;
            }
            return Ok(self.session(conn, id, true, permit));
        }
        let (conn, id) = self.connect().await?;
        Ok(self.session(conn, id, false, permit))
    }

    fn session(
        self: &Arc<Self>,
        conn: PgConnection,
        id: ConnId,
        reused: bool,
        permit: OwnedSemaphorePermit,
    ) -> Session {
        Session {
            conn: Some(conn),
            id,
            in_flight: false,
            reused,
            home: self.clone(),
            permit: Some(permit),
        }
    }

    /// Replaces `old`'s connection, which turned out dead, with a new one,
    /// keeping its permit (so a retry never waits for a second permit).
    pub(crate) async fn reconnect(
        self: &Arc<Self>,
        mut old: Session,
    ) -> Result<Session, sqlx::Error> {
        old.discard();
        let permit = old.permit.take().expect("a session holds its permit");
        let (conn, id) = self.connect().await?;
        Ok(self.session(conn, id, false, permit))
    }

    async fn connect(&self) -> Result<(PgConnection, ConnId), sqlx::Error> {
        let mut conn = PgConnection::connect_with(&self.options).await?;
        // An acquisition must be on disk before its token is handed out:
        // with synchronous_commit = off a crash can forget a committed
        // acquire, and the token sequence then hands the same token out
        // again (SESSION_SETUP). Through a transaction pooler no session
        // state is set at all (SESSION_SETUP_POOLED).
        let pooled = self.pooler == Pooler::TransactionMode;
        // Before any session state is set: a transaction-mode pooler that
        // was not declared is refused, not silently misused.
        if !pooled {
            self.probed
                .get_or_try_init(|| {
                    crate::engine::refuse_undeclared_pooler(&mut conn, &self.options)
                })
                .await?;
        }
        let setup = if pooled {
            SESSION_SETUP_POOLED
        } else {
            SESSION_SETUP
        };
        let row = sqlx::raw_sql(setup).fetch_one(&mut conn).await?;
        let id = ConnId {
            pid: row.try_get(0)?,
            started: row.try_get(1)?,
        };
        // A connection that reached a standby (a failover in progress, a
        // stale DNS name): its advisory locks would exclude nothing on the
        // primary. Closed, never used.
        if row.try_get::<bool, _>(2)? {
            close(conn);
            return Err(crate::engine::standby_refused());
        }
        // A session whose client went away (a cancelled lock() closes its
        // socket) ends within 250 ms even while it waits for a lock, and so
        // releases everything it held or was about to be granted. Not
        // through a transaction pooler: it only matters for sessions that
        // wait for advisory locks, which never run there.
        if !pooled && conn.server_version_num().unwrap_or(0) >= 140_000 {
            conn.execute("SET client_connection_check_interval = 250")
                .await?;
        }
        Ok((conn, id))
    }
}

/// Ends the transaction [`POOLED_BEGIN`] opened: commits after success (a
/// failed commit is the result then), rolls back after an error. A
/// connection left inside a transaction reports a non-database error, so
/// the caller closes it.
pub(crate) async fn end_pooled<T>(
    conn: &mut PgConnection,
    out: Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::raw_sql(end).execute(&mut *conn).await;
    match (out, ended) {
        (Ok(v), Ok(_)) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Err(_), Err(end_err)) if is_dead(&end_err) => Err(end_err),
        (Err(e), Err(_)) if !conn.is_in_transaction() => Err(e),
        (Err(e), Err(end_err)) => Err(sqlx::Error::Protocol(format!(
            "{e}; then the rollback failed ({end_err}), leaving a transaction open"
        ))),
    }
}

/// Errors that mean the connection is gone, not that the statement failed.
pub(crate) fn is_dead(e: &sqlx::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        sqlx::Error::Io(io) => {
            matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted | NotConnected
            )
        }
        // "terminating connection due to administrator command" and friends.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

impl Session {
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("session holds its connection")
    }

    /// What the connection leads through.
    pub(crate) fn pooler(&self) -> Pooler {
        self.home.pooler
    }

    pub(crate) fn conn_ref(&self) -> &PgConnection {
        self.conn.as_ref().expect("session holds its connection")
    }

    /// Closes the connection instead of reusing it.
    pub(crate) fn discard(&mut self) {
        if let Some(conn) = self.conn.take() {
            close(conn);
        }
    }

    /// Passes `out` through; after an error that leaves the connection in
    /// doubt, closes it (see [`Session::discard_if_broken`]).
    pub(crate) fn keep_if_sound<T>(
        &mut self,
        out: Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        if let Err(e) = &out {
            self.discard_if_broken(e);
        }
        out
    }

    /// Discards the connection unless `e` is an ordinary statement error on
    /// a healthy connection.
    pub(crate) fn discard_if_broken(&mut self, e: &sqlx::Error) {
        let statement_error = matches!(e, sqlx::Error::Database(_)) && !is_dead(e);
        if !statement_error {
            self.discard();
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.in_flight {
            self.discard();
        }
        if let Some(conn) = self.conn.take() {
            self.home
                .idle
                .lock()
                .unwrap()
                .push((conn, self.id, Instant::now()));
        }
    }
}

/// Closes a connection for good, so the server ends the session and drops
/// its locks: gracefully in a task when a runtime is there, else by dropping
/// the socket.
pub(crate) fn close(conn: PgConnection) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            rt.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
            });
        }
        Err(_) => drop(conn),
    }
}
