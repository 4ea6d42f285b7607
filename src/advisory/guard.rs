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
use crate::session::{ConnId, Session};
use crate::sql::advisory::{self as sql, Mode};

use super::mux::{LocalHold, OnSlot};
use super::unlock::unlock_answer;

/// How often [`AdvisoryGuard::lost`] checks that the session still holds the
/// lock.
const LOST_POLL: Duration = Duration::from_millis(500);

/// A held advisory lock. Derefs to the session ([`PgConnection`]) that holds
/// it, for work inside the critical section.
///
/// Dropping the guard releases the lock at once, in a spawned task; call
/// [`release`](Self::release) to release it and learn whether it was still
/// held.
///
/// With [`LocksBuilder::advisory_sessions`](crate::LocksBuilder::advisory_sessions)
/// the guard may hold its lock on a session shared with other guards, and
/// has no session to lend: see the `Deref` impl.
#[must_use = "dropping the guard releases the lock"]
pub struct AdvisoryGuard {
    /// The guard's own session (none when multiplexed, or once released).
    session: Option<Session>,
    /// The shared session the lock is on, when multiplexed.
    on_slot: Option<OnSlot>,
    /// The in-process hold of a handle with shared sessions, given up only
    /// after the server unlock.
    local: Option<LocalHold>,
    /// Taken by a handle with shared sessions: no session to lend.
    multiplexed: bool,
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

impl SessionId {
    fn of(conn: &ConnId, key: i64) -> Self {
        SessionId {
            pid: conn.pid,
            started: conn.started,
            key,
        }
    }
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
        let id = SessionId::of(&session.id, numeric);
        let mut guard = Self::holding_nothing(id, db, key, mode);
        guard.session = Some(session);
        guard
    }

    /// A guard on a dedicated session of a multiplexing handle, with its
    /// in-process hold.
    pub(super) fn with_local(mut self, local: LocalHold) -> Self {
        self.local = Some(local);
        self.multiplexed = true;
        self
    }

    /// A guard whose lock is on a shared session.
    pub(super) fn on_slot(
        on: OnSlot,
        local: LocalHold,
        db: Arc<Db>,
        key: AdvisoryKey,
        mode: Mode,
        numeric: i64,
    ) -> Self {
        let id = SessionId::of(&on.life.id, numeric);
        let mut guard = Self::holding_nothing(id, db, key, mode);
        guard.on_slot = Some(on);
        guard.with_local(local)
    }

    /// The fields every constructor shares: no session, no hold yet.
    fn holding_nothing(id: SessionId, db: Arc<Db>, key: AdvisoryKey, mode: Mode) -> Self {
        AdvisoryGuard {
            session: None,
            on_slot: None,
            local: None,
            multiplexed: false,
            db,
            key,
            mode,
            id,
            used: false,
        }
    }

    /// Unlocks wherever the lock is, then gives up the in-process hold: in
    /// a spawned task, so neither a cancelled `release()` nor a drop can
    /// leave a shared session mid-statement (a session that is the guard's
    /// own is closed if its unlock is cut short; see `unlock`).
    fn unlock_task(
        &mut self,
        warn: bool,
    ) -> Option<tokio::task::JoinHandle<std::result::Result<bool, sqlx::Error>>> {
        let session = self.session.take();
        let on_slot = self.on_slot.take();
        let local = self.local.take();
        let (k, mode, used) = (self.id.key, self.mode, self.used);
        let key = self.key.clone();
        let rt = tokio::runtime::Handle::try_current().ok()?;
        Some(rt.spawn(async move {
            let out = match (session, on_slot) {
                (Some(session), _) => unlock(session, k, mode, used).await,
                (None, Some(on)) => on.mux.unlock(&on, k, mode).await,
                (None, None) => Ok(false),
            };
            drop(local);
            if let (true, Err(e)) = (warn, &out) {
                tracing::warn!(%key, error = %e, "unlock on drop failed; session closed");
            }
            out
        }))
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
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped at any point, nothing stays held. On the guard's
    /// own session the unlock runs in this future, and one cut short closes
    /// the session, which ends the lock; on a shared session the unlock runs
    /// to its end in a task of its own.
    pub async fn release(mut self) -> Result<()> {
        let out = if self.on_slot.is_none() && self.local.is_none() {
            // A session of its own and nothing else to give up: unlock here.
            // Dropped mid-statement, the session is closed (it is in
            // flight), which ends the lock with it.
            let Some(session) = self.session.take() else {
                return Err(self.lost_error());
            };
            unlock(session, self.id.key, self.mode, self.used).await
        } else {
            let Some(task) = self.unlock_task(false) else {
                return Err(self.lost_error());
            };
            match task.await {
                Ok(out) => out,
                Err(e) => Err(sqlx::Error::Protocol(format!("unlock task failed: {e}"))),
            }
        };
        match out {
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
    /// On a shared session (see
    /// [`LocksBuilder::advisory_sessions`](crate::LocksBuilder::advisory_sessions))
    /// it watches the session instead, with one check twice a second for
    /// all its guards: it resolves for every guard on it when the session
    /// dies, or when pglock closes it after a failure.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    pub async fn lost(&self) {
        if let Some(on) = &self.on_slot {
            on.life.dead(&self.db).await;
            tracing::warn!(key = %self.key, pid = self.id.pid, "advisory lock lost (shared session)");
            return;
        }
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

/// Unlocks, within [`UNLOCK_TIMEOUT`](super::unlock::UNLOCK_TIMEOUT). The session goes back for reuse only
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
    let held = unlock_answer(query).await?;
    // Reused only after a confirmed unlock on a session the caller never
    // touched.
    session.in_flight = !held || used;
    Ok(held)
}

/// The session that holds the lock, for work inside the critical section.
///
/// # Panics
///
/// For a guard of a handle built with
/// [`LocksBuilder::advisory_sessions`](crate::LocksBuilder::advisory_sessions):
/// its lock may live on a session shared by many guards, which no guard can
/// lend (use your pool for the work instead). Such a handle's guards never
/// deref, wherever their lock lives, so code that works in a test does not
/// panic under contention.
impl Deref for AdvisoryGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        assert!(!self.multiplexed, "{MULTIPLEXED}");
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
        assert!(!self.multiplexed, "{MULTIPLEXED}");
        self.used = true;
        self.session
            .as_mut()
            .expect("guard holds its session until released")
            .conn()
    }
}

const MULTIPLEXED: &str = "an AdvisoryGuard of a Locks built with advisory_sessions(..) \
     has no session of its own to lend; run the work on your pool";

impl Drop for AdvisoryGuard {
    fn drop(&mut self) {
        if self.session.is_none() && self.on_slot.is_none() {
            return;
        }
        if let Some(s) = self.session.as_mut() {
            // In flight until the unlock succeeds: if the task never runs
            // (runtime shutting down) the session is closed, not reused.
            s.in_flight = true;
        }
        let _detached = self.unlock_task(true);
    }
}
