//! A held session advisory lock: [`AdvisoryGuard`], and the unlock that
//! never puts a session back holding a lock.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::db::{Db, Repeat};
use crate::error::{Error, Result};
use crate::key::AdvisoryKey;
use crate::session::Session;
use crate::sql::advisory::{self as sql, Mode};

/// How often [`AdvisoryGuard::lost`] checks that the session still holds the
/// lock.
const LOST_POLL: Duration = Duration::from_millis(500);

/// Longest wait for an unlock's answer (a query the caller left running on
/// the session delays it); then the session is closed instead.
const UNLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// A held advisory lock. Derefs to the session ([`PgConnection`]) that holds
/// it, for work inside the critical section.
///
/// Dropping the guard releases the lock at once, in a spawned task; call
/// [`release`](Self::release) to release it and learn whether it was still
/// held.
#[must_use = "dropping the guard releases the lock"]
pub struct AdvisoryGuard {
    session: Option<Session>,
    db: Arc<Db>,
    key: AdvisoryKey,
    mode: Mode,
    id: SessionId,
    /// Whether the caller reached the session (and may have left a
    /// transaction or other locks on it).
    used: bool,
}

/// Which session holds a guard's lock, and the lock's numeric key.
#[derive(Debug, Clone, Copy)]
struct SessionId {
    pid: i32,
    /// `pg_postmaster_start_time()`: a pid alone is reused after a restart.
    started: DateTime<Utc>,
    key: i64,
}

impl fmt::Debug for AdvisoryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvisoryGuard")
            .field("key", &self.key)
            .field("shared", &self.is_shared())
            .field("pid", &self.id.pid)
            .finish_non_exhaustive()
    }
}

impl AdvisoryGuard {
    pub(super) fn new(
        session: Session,
        db: Arc<Db>,
        key: AdvisoryKey,
        mode: Mode,
        numeric: i64,
    ) -> Self {
        let id = SessionId {
            pid: session.id.pid,
            started: session.id.started,
            key: numeric,
        };
        AdvisoryGuard {
            session: Some(session),
            db,
            key,
            mode,
            id,
            used: false,
        }
    }

    /// The key this guard holds.
    pub fn key(&self) -> &AdvisoryKey {
        &self.key
    }

    /// Whether the lock is held in shared mode.
    pub fn is_shared(&self) -> bool {
        self.mode == Mode::Shared
    }

    /// The server process id of the session holding the lock (as in
    /// `pg_locks.pid`).
    pub fn pid(&self) -> i32 {
        self.id.pid
    }

    /// Releases the lock now and returns the session for reuse.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the session no longer held the lock (it died,
    /// or somebody unlocked it on the session); [`Error::Database`] if the
    /// server refused the unlock. Either way nothing stays held: the session
    /// is closed unless the unlock succeeded.
    pub async fn release(mut self) -> Result<()> {
        let session = self
            .session
            .take()
            .expect("guard holds its session until released");
        match unlock(session, self.id.key, self.mode, self.used).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lost_error()),
            Err(e) if e.as_database_error().is_some() => Err(e.into()),
            // The connection failed: the session, and its lock, are gone.
            Err(_) => Err(self.lost_error()),
        }
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            key: self.key.to_string(),
            pid: self.id.pid,
        }
    }

    /// Resolves when the session that holds the lock has died (terminated
    /// backend, server restart, network failure) or no longer holds the
    /// lock. It checks `pg_locks` on pglock's own connections twice a second, and also
    /// resolves after two checks in a row cannot reach the server.
    ///
    /// Typical use: run the critical section in a `select!` against
    /// `lost()`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn lost(&self) {
        let mut failures = 0;
        loop {
            tokio::time::sleep(LOST_POLL).await;
            let id = self.id;
            let check = async {
                let row = self
                    .db
                    .fetch_one(Repeat::Safe, sql::HELD_BY, |q| {
                        q.bind(id.pid).bind(id.started).bind(id.key)
                    })
                    .await?;
                Ok::<bool, Error>(sqlx::Row::try_get(&row, 0)?)
            };
            // A cut network never answers: no answer in time counts as a
            // failed check.
            let held = match tokio::time::timeout(LOST_POLL * 2, check).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", LOST_POLL * 2)),
            };
            match held {
                Ok(true) => failures = 0,
                Ok(false) => break,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(key = %self.key, error = %e, "cannot check advisory lock");
                    if failures >= 2 {
                        break;
                    }
                }
            }
        }
        tracing::warn!(key = %self.key, pid = self.id.pid, "advisory lock lost");
    }
}

/// Unlocks, within [`UNLOCK_TIMEOUT`]. The session goes back for reuse only
/// if the unlock answered that it held the lock and the caller never `used`
/// the session: a session the caller ran statements on may carry anything
/// (an open transaction, settings, other locks, LISTENs), so it is closed
/// and the server drops whatever it held. So is a session whose unlock
/// failed, timed out or was cancelled.
async fn unlock(
    session: Session,
    key: i64,
    mode: Mode,
    used: bool,
) -> std::result::Result<bool, sqlx::Error> {
    let mut session = session;
    session.in_flight = true;
    let query = sqlx::query_scalar::<_, bool>(sql::unlock(mode))
        .bind(key)
        .fetch_one(session.conn());
    let held = match tokio::time::timeout(UNLOCK_TIMEOUT, query).await {
        Ok(held) => held?,
        Err(_) => {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to the unlock within {UNLOCK_TIMEOUT:?}"),
            )));
        }
    };
    // Reused only after a confirmed unlock on a session the caller never
    // touched.
    session.in_flight = !held || used;
    Ok(held)
}

impl Deref for AdvisoryGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.session
            .as_ref()
            .expect("guard holds its session until released")
            .conn_ref()
    }
}

impl DerefMut for AdvisoryGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        // The caller may leave anything on the session: it is closed, not
        // reused, after the unlock.
        self.used = true;
        self.session
            .as_mut()
            .expect("guard holds its session until released")
            .conn()
    }
}

impl Drop for AdvisoryGuard {
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        // In flight until the unlock succeeds: if the task never runs
        // (runtime shutting down) the session is closed, not reused.
        session.in_flight = true;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let key = self.key.clone();
            let (k, mode, used) = (self.id.key, self.mode, self.used);
            rt.spawn(async move {
                if let Err(e) = unlock(session, k, mode, used).await {
                    tracing::warn!(%key, error = %e, "unlock on drop failed; session closed");
                }
            });
        }
    }
}
