//! Many advisory locks on a few shared sessions
//! ([`LocksBuilder::advisory_sessions`](crate::LocksBuilder::advisory_sessions)).
//!
//! A session advisory lock is reentrant per session: a second
//! `pg_try_advisory_lock(k)` on the session that holds `k` succeeds. So
//! when many guards share a session the exclusion between tasks of this
//! process is kept here, in the client:
//!
//! - a table key -> `RwLock` (a guard holds the write half for an exclusive
//!   lock, the read half for a shared one; local waiters queue on it, FIFO);
//! - per shared session, what it holds (numeric key -> mode, count), so a
//!   grant that only came from reentrancy (the same numeric key named both
//!   as a string and as its `i64` hash) is undone at once and counts as
//!   "held".
//!
//! Every statement on a shared session runs under that session's mutex, in
//! a spawned task (a cancelled caller never leaves a half-read answer on a
//! session other guards live on); the unlock runs before the local hold is
//! given up, so no other local task can believe it holds the key while the
//! server still grants it to the old guard. A shared session never goes
//! back for reuse: it is closed (and the server drops all its locks) when
//! it fails, and when the handle is dropped.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock, watch};

use crate::db::{Db, Repeat};
use crate::error::{Error, Result};
use crate::key::AdvisoryKey;
use crate::session::{ConnId, Session, is_dead};
use crate::sql::advisory::{self as sql, Mode};

use super::unlock::unlock_answer;

/// A shared session found dead by a statement that therefore granted
/// nothing: worth one more try on a new session.
struct Died(sqlx::Error);

/// How often a watched shared session is checked for life.
const LIFE_POLL: Duration = Duration::from_millis(500);

/// The shared sessions of one [`Locks`](crate::Locks) and the in-process
/// exclusion table.
#[derive(Debug)]
pub(crate) struct Mux {
    slots: Vec<tokio::sync::Mutex<Slot>>,
    local: std::sync::Mutex<HashMap<AdvisoryKey, Arc<RwLock<()>>>>,
}

#[derive(Debug, Default)]
struct Slot {
    /// The open session and its life; `None` until first used or after it
    /// failed.
    open: Option<(Session, Arc<Life>)>,
    /// What the open session holds: numeric key -> (mode, count).
    held: HashMap<i64, (Mode, u32)>,
}

impl Slot {
    /// Closes the session: the server drops every lock on it, and every
    /// guard on it is lost.
    fn kill(&mut self) {
        if let Some((mut session, life)) = self.open.take() {
            session.discard();
            life.dead.send_replace(true);
        }
        self.held.clear();
    }
}

/// One shared server session, for as long as it lives: what every guard on
/// it watches in `lost()`.
#[derive(Debug)]
pub(crate) struct Life {
    pub(crate) id: ConnId,
    dead: watch::Sender<bool>,
    /// Whether a checker task runs.
    checking: AtomicBool,
}

/// The in-process half of a multiplexed lock. Dropped after the server
/// unlock; then it frees the table entry if nobody else uses it.
pub(crate) struct LocalHold {
    hold: Option<Either>,
    lock: Arc<RwLock<()>>,
    key: AdvisoryKey,
    mux: Arc<Mux>,
}

enum Either {
    #[allow(dead_code)]
    Read(OwnedRwLockReadGuard<()>),
    #[allow(dead_code)]
    Write(OwnedRwLockWriteGuard<()>),
}

impl Drop for LocalHold {
    fn drop(&mut self) {
        self.hold.take();
        let mut table = self.mux.local.lock().unwrap();
        // Two references: this hold's and the table's. Clones are made only
        // under the table lock, so nobody can take one meanwhile.
        if Arc::strong_count(&self.lock) == 2 {
            table.remove(&self.key);
        }
    }
}

/// Where a multiplexed guard's lock lives.
#[derive(Debug, Clone)]
pub(crate) struct OnSlot {
    pub(crate) mux: Arc<Mux>,
    pub(crate) slot: usize,
    pub(crate) life: Arc<Life>,
}

impl Mux {
    pub(crate) fn new(n: u32) -> Arc<Mux> {
        Arc::new(Mux {
            slots: (0..n).map(|_| Default::default()).collect(),
            local: Default::default(),
        })
    }

    fn entry(&self, key: &AdvisoryKey) -> Arc<RwLock<()>> {
        self.local
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn hold(self: &Arc<Self>, key: &AdvisoryKey, lock: Arc<RwLock<()>>, h: Either) -> LocalHold {
        LocalHold {
            hold: Some(h),
            lock,
            key: key.clone(),
            mux: self.clone(),
        }
    }

    /// The in-process hold on `key`, waiting for local holders.
    ///
    /// Cancel safe: a dropped wait holds nothing.
    pub(crate) async fn local(self: &Arc<Self>, key: &AdvisoryKey, mode: Mode) -> LocalHold {
        let lock = self.entry(key);
        let h = match mode {
            Mode::Exclusive => Either::Write(lock.clone().write_owned().await),
            Mode::Shared => Either::Read(lock.clone().read_owned().await),
        };
        self.hold(key, lock, h)
    }

    /// The in-process hold on `key` if no local task conflicts right now.
    pub(crate) fn try_local(self: &Arc<Self>, key: &AdvisoryKey, mode: Mode) -> Option<LocalHold> {
        let lock = self.entry(key);
        let h = match mode {
            Mode::Exclusive => lock.clone().try_write_owned().ok().map(Either::Write),
            Mode::Shared => lock.clone().try_read_owned().ok().map(Either::Read),
        };
        match h {
            Some(h) => Some(self.hold(key, lock, h)),
            None => {
                // Let the table entry go if it was made just now.
                drop(LocalHold {
                    hold: None,
                    lock,
                    key: key.clone(),
                    mux: self.clone(),
                });
                None
            }
        }
    }

    /// The shared session a key goes to.
    fn slot_of(&self, key: &AdvisoryKey) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.slots.len() as u64) as usize
    }

    /// One `pg_try_advisory_lock` on the key's shared session: the numeric
    /// key and where it is held, or `None` if another session holds it.
    /// Not cancel safe on its own: run it in a spawned task.
    pub(crate) async fn try_on_slot(
        self: &Arc<Self>,
        db: &Arc<Db>,
        key: &AdvisoryKey,
        mode: Mode,
    ) -> Result<Option<(i64, OnSlot)>> {
        let slot = self.slot_of(key);
        let mut st = self.slots[slot].lock().await;
        // A session found dead by a checker is replaced before use.
        if st
            .open
            .as_ref()
            .is_some_and(|(_, life)| *life.dead.borrow())
        {
            st.kill();
        }
        // A dead connection holds nothing: one more try on a new one.
        match self.try_once(db, &mut st, slot, key, mode).await {
            Err(Died(e)) => {
                tracing::debug!(error = %e, "shared advisory session died; reopening");
                self.try_once(db, &mut st, slot, key, mode)
                    .await
                    .map_err(|Died(e)| Error::from(e))?
            }
            Ok(out) => out,
        }
    }

    async fn try_once(
        self: &Arc<Self>,
        db: &Arc<Db>,
        st: &mut Slot,
        slot: usize,
        key: &AdvisoryKey,
        mode: Mode,
    ) -> std::result::Result<Result<Option<(i64, OnSlot)>>, Died> {
        if st.open.is_none() {
            let mut session = match db.lock_session().await {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            // Never back to the idle list: closed when dropped.
            session.in_flight = true;
            let (dead, _) = watch::channel(false);
            let life = Arc::new(Life {
                id: session.id,
                dead,
                checking: AtomicBool::new(false),
            });
            st.open = Some((session, life));
            st.held.clear();
        }
        let (session, life) = st.open.as_mut().expect("opened above");
        let life = life.clone();
        let row = key
            .bind(sqlx::query(sql::try_lock(key.kind(), mode)))
            .fetch_one(session.conn())
            .await;
        let row = match row {
            Ok(row) => row,
            // Gone before the statement ran: it holds nothing, and no
            // grant is lost with it.
            Err(e) if is_dead(&e) => {
                st.kill();
                return Err(Died(e));
            }
            Err(e) => {
                if !matches!(e, sqlx::Error::Database(_)) || is_dead(&e) {
                    st.kill();
                }
                return Ok(Err(e.into()));
            }
        };
        let k_taken: std::result::Result<(i64, bool), _> =
            (|| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))();
        let (k, taken): (i64, bool) = match k_taken {
            Ok(v) => v,
            Err(e) => return Ok(Err(Error::from(e))),
        };
        if !taken {
            return Ok(Ok(None));
        }
        let held = st.held.get(&k).copied();
        match held {
            None => {
                st.held.insert(k, (mode, 1));
            }
            Some((Mode::Shared, n)) if mode == Mode::Shared => {
                st.held.insert(k, (mode, n + 1));
            }
            Some(_) => {
                // Granted only because this session already holds `k` for
                // another local guard (the key under another name): undo.
                let (session, _) = st.open.as_mut().expect("open");
                let q = sqlx::query_scalar::<_, bool>(sql::unlock(mode))
                    .bind(k)
                    .fetch_one(session.conn());
                if let Err(e) = unlock_answer(q).await {
                    st.kill();
                    return Ok(Err(e.into()));
                }
                return Ok(Ok(None));
            }
        }
        Ok(Ok(Some((
            k,
            OnSlot {
                mux: self.clone(),
                slot,
                life,
            },
        ))))
    }

    /// Unlocks `k` on the session `on` names: `Ok(false)` if that session
    /// is gone (its locks went with it) or did not hold `k`. A failed or
    /// unanswered unlock closes the session. Not cancel safe on its own:
    /// run it in a spawned task.
    pub(crate) async fn unlock(
        &self,
        on: &OnSlot,
        k: i64,
        mode: Mode,
    ) -> std::result::Result<bool, sqlx::Error> {
        let mut st = self.slots[on.slot].lock().await;
        let Some((session, life)) = st.open.as_mut() else {
            return Ok(false);
        };
        if !Arc::ptr_eq(life, &on.life) {
            return Ok(false);
        }
        let q = sqlx::query_scalar::<_, bool>(sql::unlock(mode))
            .bind(k)
            .fetch_one(session.conn());
        match unlock_answer(q).await {
            Ok(held) => {
                if let Some((_, n)) = st.held.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        st.held.remove(&k);
                    }
                }
                Ok(held)
            }
            Err(e) => {
                st.kill();
                Err(e)
            }
        }
    }
}

impl Life {
    /// Resolves when this session is known dead: closed by pglock after a
    /// failure, or found gone (`pg_stat_activity`, server restart) by a
    /// checker shared by all its guards, or unreachable for two checks in a
    /// row.
    pub(crate) async fn dead(self: &Arc<Self>, db: &Arc<Db>) {
        let mut rx = self.dead.subscribe();
        if !self.checking.swap(true, Ordering::AcqRel) {
            tokio::spawn(check(self.clone(), db.clone()));
        }
        let _ = rx.wait_for(|d| *d).await;
    }
}

/// Checks a shared session for life while somebody waits in `lost()`.
async fn check(life: Arc<Life>, db: Arc<Db>) {
    let mut failures = 0;
    loop {
        tokio::time::sleep(LIFE_POLL).await;
        if *life.dead.borrow() {
            return;
        }
        if life.dead.receiver_count() == 0 {
            life.checking.store(false, Ordering::Release);
            // A lost() that subscribed meanwhile saw `checking` set.
            if life.dead.receiver_count() == 0 || life.checking.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        let id = life.id;
        let alive = async {
            let row = db
                .fetch_one(Repeat::Safe, sql::SESSION_ALIVE, |q| {
                    q.bind(id.pid).bind(id.started)
                })
                .await?;
            Ok::<bool, Error>(row.try_get(0)?)
        };
        let alive = match tokio::time::timeout(LIFE_POLL * 2, alive).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", LIFE_POLL * 2)),
        };
        match alive {
            Ok(true) => failures = 0,
            Ok(false) => break,
            Err(e) => {
                failures += 1;
                tracing::warn!(pid = id.pid, error = %e, "cannot check shared advisory session");
                if failures >= 2 {
                    break;
                }
            }
        }
    }
    life.dead.send_replace(true);
}
