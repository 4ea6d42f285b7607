//! Sets of advisory locks: one statement on one session.

use std::fmt;
use std::time::Duration;

use sqlx::Row;
use tokio::time::Instant;

use super::validate_size;
use crate::Locks;
use crate::advisory::unlock_answer;
use crate::error::{Error, LOCK_NOT_AVAILABLE, Result, sqlstate};
use crate::key::AdvisoryKey;
use crate::session::Session;
use crate::sql::advisory::{LOCK_ALL, UNLOCK_ALL};
use crate::wait::validate_timeout;

/// Longest accepted timeout for an advisory set: PostgreSQL's `lock_timeout`
/// is an `int` of milliseconds.
const MAX_ADVISORY_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

impl Locks {
    /// Exclusive session advisory locks on every key of `keys`, taken all
    /// or none, in ascending numeric key order (`hashtextextended(key, 0)` for a
    /// string, the integer itself otherwise; keys with the same number are
    /// one lock, taken once), on **one** session: a set costs one session and
    /// one round trip however many keys it has.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let guards = locks.advisory_all(["mem/a", "mem/b"]).lock().await?;
    /// drop(guards); // releases both
    /// # Ok(()) }
    /// ```
    pub fn advisory_all<I, K>(&self, keys: I) -> AdvisoryAll
    where
        I: IntoIterator<Item = K>,
        K: Into<AdvisoryKey>,
    {
        AdvisoryAll {
            locks: self.clone(),
            keys: keys.into_iter().map(Into::into).collect(),
            timeout: None,
        }
    }
}

/// A request for a set of advisory locks; see [`Locks::advisory_all`].
#[derive(Debug, Clone)]
#[must_use = "an AdvisoryAll does nothing until lock() is called"]
pub struct AdvisoryAll {
    locks: Locks,
    keys: Vec<AdvisoryKey>,
    timeout: Option<Duration>,
}

impl AdvisoryAll {
    /// Give up with [`Error::Timeout`] after `timeout` for the whole set
    /// (counted from the call, including the wait for a free session).
    /// Must be above zero and at most 24 days.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn validate(&self) -> Result<()> {
        validate_size("advisory keys", self.keys.len())?;
        for k in &self.keys {
            k.validate()?;
        }
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
            if t > MAX_ADVISORY_TIMEOUT {
                return Err(Error::invalid(
                    "timeout",
                    format!(
                        "must be at most {MAX_ADVISORY_TIMEOUT:?} (lock_timeout's limit), got {t:?}"
                    ),
                ));
            }
        }
        if !self.locks.db().has_sessions() {
            return Err(Error::invalid(
                "advisory",
                "session advisory locks need a session; behind a transaction-mode pooler \
                 give LocksBuilder::session_options(..) a direct or session-mode connection",
            ));
        }
        Ok(())
    }

    fn what(&self) -> String {
        let keys: Vec<String> = self.keys.iter().map(ToString::to_string).collect();
        format!("advisory locks [{}]", keys.join(", "))
    }

    /// Waits until every key is locked and returns one guard for all.
    ///
    /// One statement on one session: the server locks the keys in
    /// ascending numeric order, each under a `lock_timeout` of what is left
    /// of the timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped at any point, nothing stays
    /// held. A session that had sent the lock statement is closed, and the
    /// server drops whatever it held or was about to be granted (a waiting
    /// session notices within 250 ms).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the [`timeout`](Self::timeout) ran out (the
    /// keys taken so far are dropped with the session);
    /// [`Error::InvalidInput`] for no keys, more than [`MAX_SET_SIZE`](crate::MAX_SET_SIZE), a
    /// bad key or timeout, or behind a transaction-mode pooler without
    /// [`session_options`](crate::LocksBuilder::session_options) (before
    /// any SQL runs); [`Error::Database`] when the server or the connection
    /// fails (nothing is held then either).
    pub async fn lock(self) -> Result<AdvisorySet> {
        self.validate()?;
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let timed_out = || Error::Timeout {
            what: self.what(),
            waited: self.timeout.unwrap_or_default(),
        };
        let (texts, ints) = split_keys(&self.keys);
        let locked = lock_set(&self.locks, &texts, &ints, deadline);
        let result = match deadline {
            None => locked.await,
            // The server gives up first (its lock_timeout is what is left);
            // this only bounds the wait for a free session.
            Some(d) => match tokio::time::timeout_at(d + Duration::from_secs(1), locked).await {
                Ok(r) => r,
                Err(_) => return Err(timed_out()),
            },
        };
        match result {
            Ok(Some((session, numeric))) => {
                tracing::debug!(
                    keys = numeric.len(),
                    pid = session.id.pid,
                    "advisory set acquired"
                );
                Ok(AdvisorySet {
                    session: Some(session),
                    keys: self.keys,
                    numeric,
                })
            }
            Ok(None) => Err(timed_out()),
            Err(e) => Err(e),
        }
    }
}

/// String keys and integer keys, apart: the statement hashes the strings.
fn split_keys(keys: &[AdvisoryKey]) -> (Vec<String>, Vec<i64>) {
    let mut texts = Vec::new();
    let mut ints = Vec::new();
    for k in keys {
        match k {
            AdvisoryKey::Text(s) => texts.push(s.clone()),
            AdvisoryKey::Int(i) => ints.push(*i),
        }
    }
    (texts, ints)
}

/// Takes a lock session (within `deadline`) and locks the set on it.
/// `Ok(None)`: no session came free in time, or the server's
/// `lock_timeout` ran out. On an error or a drop the
/// session stays marked in flight and is closed, dropping what it held.
async fn lock_set(
    locks: &Locks,
    texts: &[String],
    ints: &[i64],
    deadline: Option<Instant>,
) -> Result<Option<(Session, Vec<i64>)>> {
    let db = locks.db();
    let get = db.lock_session();
    let mut session = match deadline {
        None => get.await?,
        Some(d) => match tokio::time::timeout_at(d, get).await {
            Ok(s) => s?,
            Err(_) => return Ok(None),
        },
    };
    session.in_flight = true;
    let left = deadline.map(|d| {
        d.saturating_duration_since(Instant::now())
            .as_millis()
            .max(1) as i64
    });
    let rows = match db
        .query(LOCK_ALL)
        .bind(texts)
        .bind(ints)
        .bind(left)
        .fetch_all(session.conn())
        .await
    {
        Ok(rows) => rows,
        Err(e) if sqlstate(&e).as_deref() == Some(LOCK_NOT_AVAILABLE) => return Ok(None),
        Err(e) => return Err(db.error(e)),
    };
    let numeric = rows
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    session.in_flight = false;
    Ok(Some((session, numeric)))
}

/// Unlocks every key of a set; the session goes back for reuse only if it
/// held them all.
async fn unlock_set(
    mut session: Session,
    numeric: Vec<i64>,
) -> std::result::Result<bool, sqlx::Error> {
    session.in_flight = true;
    let query = sqlx::query_scalar::<_, bool>(UNLOCK_ALL)
        .bind(&numeric)
        .fetch_one(session.conn());
    let held = unlock_answer(query).await?;
    session.in_flight = !held;
    Ok(held)
}

/// A held set of advisory locks, all on one session.
///
/// Dropping it releases every key at once, in a spawned task;
/// [`release`](Self::release) does it now and reports.
#[must_use = "dropping the guard releases every lock of the set"]
pub struct AdvisorySet {
    session: Option<Session>,
    keys: Vec<AdvisoryKey>,
    /// The numeric keys, ascending, each once.
    numeric: Vec<i64>,
}

impl fmt::Debug for AdvisorySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdvisorySet")
            .field("keys", &self.keys)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl AdvisorySet {
    /// The keys, as the caller gave them.
    pub fn keys(&self) -> &[AdvisoryKey] {
        &self.keys
    }

    /// The numeric keys held, in the order they were taken (ascending), each
    /// once.
    pub fn numeric_keys(&self) -> &[i64] {
        &self.numeric
    }

    /// The server process id of the session holding the set.
    pub fn pid(&self) -> i32 {
        self.session.as_ref().map_or(0, |s| s.id.pid)
    }

    /// Releases every lock of the set now.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] if the session no longer held every key (it
    /// died); [`Error::Database`] if the server refused. Either way nothing
    /// stays held: the session is closed unless the unlock succeeded.
    pub async fn release(mut self) -> Result<()> {
        let session = self.session.take().expect("held until released");
        let pid = session.id.pid;
        let lost = |keys: &[AdvisoryKey]| Error::LockLost {
            key: keys
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            pid,
        };
        match unlock_set(session, std::mem::take(&mut self.numeric)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(lost(&self.keys)),
            Err(e) if e.as_database_error().is_some() => Err(e.into()),
            Err(_) => Err(lost(&self.keys)),
        }
    }
}

impl Drop for AdvisorySet {
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else {
            return;
        };
        // In flight until the unlock succeeds: dropped without a runtime to
        // unlock it, the session is closed (dropping its locks), not reused.
        session.in_flight = true;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let numeric = std::mem::take(&mut self.numeric);
        rt.spawn(async move {
            let unlocked = unlock_set(session, numeric).await;
            if let Err(e) = unlocked {
                tracing::warn!(error = %e, "unlock of an advisory set on drop failed; session closed");
            }
        });
    }
}
