//! The one layer that talks to the database: [`Db`] owns pglock's own
//! connections, its statements, the pooler mode and the schema, and every
//! feature module runs its SQL through it. Errors come back as
//! [`pglock::Error`](crate::Error), already mapped (a missing schema is
//! [`Error::NotMigrated`]).

use std::future::Future;
use std::sync::Arc;

use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgRow};
use sqlx::query::Query;

use crate::error::{Error, Result};
use crate::session::{Limits, Pooler};
use crate::session::{POOLED_BEGIN, Session, Sessions, end_pooled, is_dead};
use crate::sql::Statements;
use crate::wait::hub::Hub;

/// A statement with its parameters bound.
pub(crate) type Q = Query<'static, Postgres, PgArguments>;

/// Picks one statement of [`Statements`].
pub(crate) type Pick = fn(&Statements) -> &String;

/// May a statement run again on a fresh connection when the reused one
/// turned out dead? Its first run may have committed before the connection
/// died.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Repeat {
    /// Idempotent, or recognises its own owner id: repeat once.
    Safe,
    /// Repeat once as the statement this picks, with the same parameters:
    /// one that also recognises its own owner id, where the first run
    /// need not (a claim's probe for an item it already holds runs only
    /// when repeated).
    As(Pick),
    /// Never repeat.
    Never,
}

/// pglock's connections, statements and schema; see the module docs.
#[derive(Debug)]
pub(crate) struct Db {
    /// The caller's pool: its connect options are pglock's.
    pub(crate) pool: PgPool,
    /// Connections for short statements (and advisory sessions unless
    /// `session_options` were given).
    sessions: Arc<Sessions>,
    /// Connections for advisory lock sessions.
    lock_sessions: Arc<Sessions>,
    pub(crate) pooler: Pooler,
    /// Connect options of connections that need a real session (advisory
    /// lock sessions, LISTEN, `migrate`), if they differ from the pool's.
    pub(crate) session_options: Option<PgConnectOptions>,
    pub(crate) schema: String,
    pub(crate) quoted_schema: String,
    /// `migrate` accepts asynchronous replication (with a warning).
    pub(crate) allow_async_replication: bool,
    /// Pools whose free floor a background [`POOL_RAISE`] of this handle
    /// is raising: at most one in flight per pool.
    ///
    /// [`POOL_RAISE`]: crate::sql::Statements::pool_raise
    pub(crate) raising: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Every statement on pglock's tables, with the schema filled in.
    pub(crate) sql: Statements,
    /// The shared LISTEN connection of waiters.
    pub(crate) hub: Hub,
}

impl Db {
    pub(crate) fn new(
        pool: PgPool,
        schema: String,
        quoted_schema: String,
        pooler: Pooler,
        session_options: Option<PgConnectOptions>,
        limits: Limits,
    ) -> Db {
        let options = (*pool.connect_options()).clone();
        let sessions = Sessions::new(options.clone(), limits, pooler);
        let lock_sessions = match &session_options {
            Some(o) => Sessions::new(o.clone(), limits, Pooler::SessionMode),
            None => sessions.clone(),
        };
        // Where LISTEN can work: not through a transaction pooler.
        let listen_options = match (&session_options, pooler) {
            (Some(o), _) => Some(o.clone()),
            (None, Pooler::SessionMode) => Some(options),
            (None, Pooler::TransactionMode) => None,
        };
        Db {
            pool,
            sql: Statements::new(&quoted_schema),
            hub: Hub::new(schema.clone(), listen_options),
            sessions,
            lock_sessions,
            pooler,
            session_options,
            schema,
            quoted_schema,
            allow_async_replication: false,
            raising: Default::default(),
        }
    }

    /// Whether a session advisory lock has a session to live in.
    pub(crate) fn has_sessions(&self) -> bool {
        self.pooler == Pooler::SessionMode || self.session_options.is_some()
    }

    /// `sqlx::query(sql)`, with an unnamed prepared statement behind a
    /// transaction-mode pooler (a named one would stay on a server
    /// connection that the pooler hands to other clients).
    pub(crate) fn query(&self, sql: &str) -> Q {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .persistent(self.pooler == Pooler::SessionMode)
    }

    /// Maps a driver error to pglock's.
    pub(crate) fn error(&self, e: sqlx::Error) -> Error {
        Error::from_db(e, &self.schema)
    }

    /// A connection for an advisory lock session.
    pub(crate) async fn lock_session(&self) -> Result<Session> {
        self.lock_sessions
            .lock_session()
            .await
            .map_err(|e| self.error(e))
    }

    /// Runs `sql` with the parameters `bind` adds, on a statement
    /// connection, and returns its first row.
    pub(crate) async fn fetch_one(
        &self,
        repeat: Repeat,
        sql: &str,
        bind: impl Fn(Q) -> Q,
    ) -> Result<PgRow> {
        self.fetch_optional(repeat, sql, bind)
            .await?
            .ok_or_else(|| self.error(sqlx::Error::RowNotFound))
    }

    /// As [`fetch_one`](Self::fetch_one), `None` without a row.
    pub(crate) async fn fetch_optional(
        &self,
        repeat: Repeat,
        sql: &str,
        bind: impl Fn(Q) -> Q,
    ) -> Result<Option<PgRow>> {
        Ok(self.fetch_all(repeat, sql, bind).await?.into_iter().next())
    }

    /// As [`fetch_one`](Self::fetch_one), every row.
    ///
    /// A connection left mid-statement (the caller was cancelled) or broken
    /// is closed, never reused. With [`Repeat::Safe`], a statement whose
    /// reused connection turns out dead (closed by a server restart or a
    /// terminated backend) runs once more on a new connection.
    pub(crate) async fn fetch_all(
        &self,
        repeat: Repeat,
        sql: &str,
        bind: impl Fn(Q) -> Q,
    ) -> Result<Vec<PgRow>> {
        let mut session = self.sessions.statement().await.map_err(|e| self.error(e))?;
        let out = match self.run(&mut session, sql, &bind).await {
            Err(e) if !matches!(repeat, Repeat::Never) && session.reused && is_dead(&e) => {
                session = self
                    .sessions
                    .reconnect(session)
                    .await
                    .map_err(|e| self.error(e))?;
                let again = match repeat {
                    Repeat::As(pick) => pick(&self.sql),
                    _ => sql,
                };
                self.run(&mut session, again, &bind).await
            }
            out => out,
        };
        session.keep_if_sound(out).map_err(|e| self.error(e))
    }

    /// One run of `sql` on `session`, marked in flight meanwhile (dropped
    /// then, it is closed); behind a transaction-mode pooler inside a
    /// transaction of its own (see [`POOLED_BEGIN`]), committed if the
    /// statement succeeded and rolled back if not.
    async fn run(
        &self,
        session: &mut Session,
        sql: &str,
        bind: &impl Fn(Q) -> Q,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        session.in_flight = true;
        let query = bind(self.query(sql));
        let out = if session.pooler() == Pooler::TransactionMode {
            async {
                sqlx::raw_sql(POOLED_BEGIN).execute(session.conn()).await?;
                let out = query.fetch_all(session.conn()).await;
                end_pooled(session.conn(), out).await
            }
            .await
        } else {
            query.fetch_all(session.conn()).await
        };
        session.in_flight = false;
        out
    }

    /// Runs the statement `take` picks from the statements, a statement
    /// that may take something for this caller (an acquire or a claim), to
    /// its end in a task of its own (repeated as `repeat` says), and
    /// returns its row. If the caller goes away first (cancelled, timed
    /// out), or the statement fails so that its outcome is unknown, the
    /// statement `undo` picks runs in that task *after* it: ordered after
    /// the statement it undoes, it always finds what that statement took.
    pub(crate) async fn take<B, U>(
        self: &Arc<Self>,
        take: Pick,
        repeat: Repeat,
        bind: B,
        undo: Pick,
        undo_bind: U,
    ) -> Result<Option<PgRow>>
    where
        B: Fn(Q) -> Q + Send + Sync + 'static,
        U: Fn(Q) -> Q + Send + Sync + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let db = self.clone();
        tokio::spawn(async move {
            let out = db.fetch_optional(repeat, take(&db.sql), &bind).await;
            let undo: UndoFn = Box::new(move |db: Arc<Db>| -> UndoFuture {
                Box::pin(
                    async move { db.fetch_all(Repeat::Never, undo(&db.sql), &undo_bind).await },
                )
            });
            let answer = Answer {
                out: Some(out),
                undo: Some(undo),
                db,
            };
            // Not delivered, the caller is gone: dropping the answer undoes
            // the statement.
            let _ = tx.send(answer);
        });
        let mut answer = rx
            .await
            .map_err(|_| Error::Database(sqlx::Error::WorkerCrashed))?;
        let out = answer.out.take().expect("an answer is read once");
        // Kept: nothing to undo. After an error the outcome is unknown, and
        // dropping the answer undoes whatever the statement may have taken.
        if out.is_ok() {
            answer.undo = None;
        }
        out
    }
}

type UndoFn = Box<dyn FnOnce(Arc<Db>) -> UndoFuture + Send>;
type UndoFuture = std::pin::Pin<Box<dyn Future<Output = Result<Vec<PgRow>>> + Send>>;

/// The answer of a [`Db::take`] statement. Dropped before the caller read
/// it and kept it, it runs its undo (in a task: the statement has ended, so
/// the undo is ordered after it).
struct Answer {
    out: Option<Result<Option<PgRow>>>,
    undo: Option<UndoFn>,
    db: Arc<Db>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        let Some(undo) = self.undo.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let fut = undo(self.db.clone());
        rt.spawn(async move {
            match fut.await {
                Ok(rows) if !rows.is_empty() => {
                    crate::metrics::gave_back();
                    tracing::debug!("gave back what an abandoned acquire took")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not give back an abandoned acquire; it expires with its TTL"
                ),
            }
        });
    }
}
