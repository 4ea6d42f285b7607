//! A held lease: its shared state, the cloneable [`LeaseRef`] and the owning
//! [`Lease`].

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use super::{local_ttl, validate_data};
use crate::Locks;
use crate::error::{Error, FENCE_FAILED, Result, sqlstate};
use crate::session::on_statement_conn;
use crate::wait::{lease_topic, payload, pool_topic};

/// State shared by a lease, its [`LeaseRef`]s and the keep-alive task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// '' for a plain lease, else the pool of this item.
    pub(crate) pool: String,
    pub(crate) name: String,
    pub(crate) token: i64,
    pub(crate) owner: Uuid,
    pub(crate) holder: String,
    pub(crate) ttl: Duration,
    data: Mutex<Option<Value>>,
    state: watch::Sender<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// Local deadline: send time of the last successful renewal + ttl.
    deadline: Instant,
    /// When the keep-alive task should renew next.
    next_renewal: Instant,
    expires_at: DateTime<Utc>,
    lost: bool,
    release_requested: bool,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pool: String,
        name: String,
        token: i64,
        owner: Uuid,
        holder: String,
        ttl: Duration,
        sent: Instant,
        expires_at: DateTime<Utc>,
        data: Option<Value>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            pool,
            name,
            token,
            owner,
            holder,
            ttl,
            data: Mutex::new(data),
            state: watch::Sender::new(State {
                deadline: sent + local_ttl(ttl),
                next_renewal: sent + ttl / 3,
                expires_at,
                lost: false,
                release_requested: false,
            }),
        })
    }

    pub(crate) fn is_lost(&self) -> bool {
        let s = *self.state.borrow();
        s.lost || Instant::now() >= s.deadline
    }

    /// Time left before the local deadline; zero once lost.
    pub(crate) fn remaining(&self) -> Duration {
        let s = *self.state.borrow();
        if s.lost {
            return Duration::ZERO;
        }
        s.deadline.saturating_duration_since(Instant::now())
    }

    pub(crate) fn next_renewal(&self) -> Instant {
        self.state.borrow().next_renewal
    }

    pub(crate) fn renewed(&self, sent: Instant, expires_at: DateTime<Utc>, requested: bool) {
        self.state.send_if_modified(|s| {
            if s.lost {
                return false;
            }
            s.deadline = sent + local_ttl(self.ttl);
            s.next_renewal = sent + self.ttl / 3;
            s.expires_at = expires_at;
            s.release_requested |= requested;
            true
        });
    }

    pub(crate) fn renewal_failed(&self, retry_at: Instant) {
        self.state.send_modify(|s| s.next_renewal = retry_at);
    }

    pub(crate) fn mark_lost(&self, why: &str) {
        let newly = self
            .state
            .send_if_modified(|s| !std::mem::replace(&mut s.lost, true));
        if newly {
            tracing::warn!(name = %self.name, token = self.token, why, "lease lost");
        }
    }

    fn lost_error(&self) -> Error {
        Error::LeaseLost {
            name: self.name.clone(),
            token: self.token,
        }
    }

    /// `Err(LeaseLost)` once the lease is known lost or past its deadline.
    fn check(&self) -> Result<()> {
        if self.is_lost() {
            self.mark_lost("local deadline passed");
            return Err(self.lost_error());
        }
        Ok(())
    }
}

/// A handle on a held lease that can be cloned into tasks; it is what
/// [`LeaseRequest::run`](crate::LeaseRequest::run) hands to its work. A [`Lease`] derefs to one.
#[derive(Clone)]
pub struct LeaseRef {
    pub(crate) locks: Locks,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseRef")
            .field("name", &self.shared.name)
            .field("token", &self.shared.token)
            .field("holder", &self.shared.holder)
            .finish_non_exhaustive()
    }
}

impl LeaseRef {
    /// The lease name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool this lease is an item of, or `None` for a plain lease.
    pub fn pool(&self) -> Option<&str> {
        Some(self.shared.pool.as_str()).filter(|p| !p.is_empty())
    }

    /// The fencing token: greater than every token issued before it.
    pub fn token(&self) -> i64 {
        self.shared.token
    }

    /// The holder label recorded in the lease row.
    pub fn holder(&self) -> &str {
        &self.shared.holder
    }

    /// The lease's TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// The server's expiry time as of the last acquire or renewal (database
    /// clock).
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.shared.state.borrow().expires_at
    }

    /// Time left before the holder's own (conservative) deadline; zero once
    /// lost.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// The JSON payload: as found at acquire time, or as last set.
    pub fn data(&self) -> Option<Value> {
        self.shared.data.lock().unwrap().clone()
    }

    /// Renews the lease now for another TTL.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] if the lease is no longer ours (expired, taken
    /// over, force-released) or its local deadline has passed;
    /// [`Error::Database`] if the server could not be asked (the lease may
    /// still be ours until the deadline).
    pub async fn renew(&self) -> Result<()> {
        self.shared.check()?;
        let inner = &self.locks.inner;
        crate::keepalive::renew_batch(
            &inner.sessions,
            &inner.sql.lease_renew,
            std::slice::from_ref(&self.shared),
        )
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        self.shared.check()
    }

    /// Replaces the JSON payload (at most 64 KiB) and renews the lease with
    /// it, in one statement: progress for whoever takes over next.
    ///
    /// # Errors
    ///
    /// As [`renew`](Self::renew); [`Error::InvalidInput`] for oversized data.
    pub async fn set_data(&self, data: Value) -> Result<()> {
        validate_data(&data)?;
        self.shared.check()?;
        let inner = &self.locks.inner;
        let s = &self.shared;
        let sent = Instant::now();
        let row = on_statement_conn!(inner.sessions, |c| inner
            .query(sqlx::AssertSqlSafe(inner.sql.lease_set_data.as_str()))
            .bind(&s.pool)
            .bind(&s.name)
            .bind(s.token)
            .bind(s.owner)
            .bind(&data)
            .bind(s.ttl.as_millis() as i64)
            .fetch_optional(c))
        .await
        .map_err(|e| Error::from_db(e, &inner.schema))?;
        match row {
            Some(row) => {
                s.renewed(sent, row.try_get(0)?, row.try_get(1)?);
                *s.data.lock().unwrap() = Some(data);
                Ok(())
            }
            None => {
                s.mark_lost("set_data found the lease gone");
                Err(s.lost_error())
            }
        }
    }

    /// Checks, inside the caller's transaction, that this token still holds
    /// the lease by the database's statement clock, and locks the lease row
    /// until the transaction ends: no newer holder can take the lease over
    /// before this transaction's writes commit or roll back. Call it as
    /// `lease.fence(&mut *tx)` before the fenced writes.
    ///
    /// Runs `SELECT <schema>.fence(name, token)`, the same function a
    /// writer in another language can call. On failure that statement has
    /// raised, so the transaction is aborted: roll it back.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] if the token no longer holds the lease, or the
    /// local deadline has passed; [`Error::Database`].
    pub async fn fence(&self, conn: &mut PgConnection) -> Result<()> {
        if !conn.is_in_transaction() {
            return Err(Error::invalid(
                "conn",
                "fence needs a connection inside a transaction begun with sqlx \
                 (pool.begin() or conn.begin(), then call it with &mut *tx); \
                 in autocommit mode the row lock would end with the statement",
            ));
        }
        self.shared.check()?;
        let inner = &self.locks.inner;
        let result = inner
            .query(sqlx::AssertSqlSafe(inner.sql.lease_fence.as_str()))
            .bind(&self.shared.pool)
            .bind(&self.shared.name)
            .bind(self.shared.token)
            .execute(conn)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if sqlstate(&e).as_deref() == Some(FENCE_FAILED) => {
                self.shared.mark_lost("fence check failed");
                Err(self.shared.lost_error())
            }

            Err(e) => Err(Error::from_db(e, &inner.schema)),
        }
    }

    /// Resolves when the lease is lost: a renewal found it gone, or the
    /// local deadline passed without a successful renewal. Through expiry,
    /// the lease cannot pass to someone else before this resolves (the
    /// deadline comes at 90% of the TTL, counted from before the renewal was
    /// sent); an operator's `force_release` is seen at the next renewal.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) {
        let mut rx = self.shared.state.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if s.lost {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(s.deadline) => {
                    if self.shared.state.borrow().deadline <= Instant::now() {
                        self.shared.mark_lost("local deadline passed without renewal");
                        return;
                    }
                }
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Resolves when somebody has asked the holder to let go
    /// ([`Locks::request_release`]): checkpoint, then release.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn release_requested(&self) {
        let inner = &self.locks.inner;
        let mut rx = self.shared.state.subscribe();
        let topic = loop {
            match inner
                .hub
                .subscribe(&lease_topic(&self.shared.pool, &self.shared.name))
                .await
            {
                Ok(t) => break t,
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        loop {
            if rx.borrow_and_update().release_requested {
                return;
            }
            let notified = topic.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let requested = on_statement_conn!(inner.sessions, |c| inner
                .query_scalar::<bool>(sqlx::AssertSqlSafe(
                    inner.sql.lease_release_requested.as_str(),
                ))
                .bind(&self.shared.pool)
                .bind(&self.shared.name)
                .bind(self.shared.token)
                .fetch_optional(c))
            .await;
            if let Ok(Some(true)) = requested {
                self.shared
                    .state
                    .send_modify(|s| s.release_requested = true);
                return;
            }
            // Without LISTEN (transaction pooler), look again now and then.
            let poll = async {
                if inner.hub.listens() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(crate::wait::MAX_WAIT).await
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = rx.changed() => {}
                _ = poll => {}
            }
        }
    }
}

/// A held lease. Derefs to [`LeaseRef`] for its accessors, `renew`,
/// `fence`, `set_data`, `lost` and `release_requested`.
///
/// Dropping it releases it in a spawned task; [`release`](Self::release)
/// does it now and reports, [`orphan`](Self::orphan) lets it expire.
#[must_use = "dropping the lease releases it"]
pub struct Lease {
    handle: LeaseRef,
    kept_alive: bool,
    done: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("name", &self.handle.shared.name)
            .field("token", &self.handle.shared.token)
            .field("kept_alive", &self.kept_alive)
            .finish_non_exhaustive()
    }
}

impl Deref for Lease {
    type Target = LeaseRef;

    fn deref(&self) -> &LeaseRef {
        &self.handle
    }
}

impl Lease {
    pub(crate) fn new(locks: Locks, shared: Arc<Shared>) -> Lease {
        Lease {
            handle: LeaseRef { locks, shared },
            kept_alive: false,
            done: false,
        }
    }

    /// A cloneable handle on this lease, for other tasks.
    pub fn handle(&self) -> LeaseRef {
        self.handle.clone()
    }

    /// Renews the lease in the background (every third of its TTL, together
    /// with every other lease of this `Locks`, in one statement) until it is
    /// released, dropped or lost.
    pub fn keep_alive(mut self) -> Lease {
        if !self.kept_alive {
            let inner = &self.handle.locks.inner;
            inner
                .keepalive
                .add(&self.handle.shared, &inner.sessions, &inner.sql.lease_renew);
            self.kept_alive = true;
        }
        self
    }

    /// Releases the lease now, waking waiters.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] if it was no longer ours (taken over or
    /// force-released); [`Error::Database`].
    pub async fn release(mut self) -> Result<()> {
        self.done = true;
        self.stop_keep_alive();
        release(&self.handle).await
    }

    /// Releases the lease like [`release`](Self::release), retrying while
    /// the database fails or cannot be reached (a restart, a failover), for
    /// up to `within` in all: for a caller that must know whether the lease
    /// is still standing (`pglock exec` on its way out).
    ///
    /// An attempt cut short by the connection may have committed all the
    /// same: the next one then finds the lease no longer ours and returns
    /// [`Error::LeaseLost`], as it does for a lease that expired meanwhile.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] as for `release`; after `within`, the last
    /// [`Error::Database`], or [`Error::Timeout`] if no attempt answered.
    pub async fn release_within(mut self, within: Duration) -> Result<()> {
        self.done = true;
        self.stop_keep_alive();
        let what = format!("release of lease {:?}", self.name());
        retry_within(within, what, || release(&self.handle)).await
    }

    /// Marks a pool item done for good: it is never claimed again. Wakes the
    /// pool's waiters.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a plain lease (only pool items can be
    /// completed; release it instead); [`Error::LeaseLost`] if the item was
    /// no longer ours; [`Error::Database`].
    pub async fn complete(mut self) -> Result<()> {
        if self.handle.shared.pool.is_empty() {
            return Err(Error::invalid(
                "lease",
                format!(
                    "{:?} is a plain lease; only pool items can be completed",
                    self.name()
                ),
            ));
        }
        self.done = true;
        self.stop_keep_alive();
        finish(
            &self.handle,
            &self.handle.locks.inner.sql.item_complete,
            false,
        )
        .await
    }

    /// Marks a pool item done for good inside the caller's transaction,
    /// together with the fenced writes that finish it: they commit, or roll
    /// back, as one. Call it as `lease.complete_in(&mut *tx)` before
    /// `tx.commit()`. If the transaction rolls back, the item stays held
    /// until its TTL runs out (renewal stops here) and is then claimed again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a plain lease or a connection outside a
    /// transaction; [`Error::LeaseLost`] if the item was no longer ours;
    /// [`Error::Database`].
    pub async fn complete_in(mut self, conn: &mut PgConnection) -> Result<()> {
        if self.handle.shared.pool.is_empty() {
            return Err(Error::invalid(
                "lease",
                format!(
                    "{:?} is a plain lease; only pool items can be completed",
                    self.name()
                ),
            ));
        }
        if !conn.is_in_transaction() {
            return Err(Error::invalid(
                "conn",
                "complete_in needs a connection inside a transaction begun with sqlx \
                 (pool.begin() or conn.begin(), then call it with &mut *tx)",
            ));
        }
        self.done = true;
        self.stop_keep_alive();
        let inner = &self.handle.locks.inner;
        let s = &self.handle.shared;
        let row = finish_query(&inner.sql.item_complete, s, None, !inner.transaction_pooler)
            .fetch_optional(conn)
            .await
            .map_err(|e| Error::from_db(e, &inner.schema))?;
        s.mark_lost_quiet();
        match row {
            Some(_) => Ok(()),
            None => Err(s.lost_error()),
        }
    }

    /// Stops renewing and forgets the lease without releasing it: it stays
    /// held until its TTL runs out (crash-like hand-over).
    pub fn orphan(mut self) {
        self.done = true;
        self.stop_keep_alive();
    }

    fn stop_keep_alive(&mut self) {
        if self.kept_alive {
            self.handle
                .locks
                .inner
                .keepalive
                .remove(self.handle.shared.token);
        }
    }

    pub(crate) async fn run_work<F, Fut, T>(self, work: F) -> Result<T>
    where
        F: FnOnce(LeaseRef) -> Fut,
        Fut: Future<Output = T>,
    {
        let handle = self.handle();
        let outcome = tokio::select! {
            biased;
            _ = handle.lost() => None,
            out = work(handle.clone()) => Some(out),
        };
        match outcome {
            Some(out) => {
                if let Err(e) = self.release().await {
                    tracing::warn!(name = %handle.name(), error = %e, "release after run() failed");
                }
                Ok(out)
            }
            None => {
                let err = handle.shared.lost_error();
                drop(self);
                Err(err)
            }
        }
    }
}

/// Releases (or, with `complete`, completes) the lease if still ours.
async fn release(h: &LeaseRef) -> Result<()> {
    let sql = &h.locks.inner.sql;
    let statement = if h.shared.pool.is_empty() {
        &sql.lease_release
    } else {
        &sql.item_release
    };
    finish(h, statement, true).await
}

/// Runs `attempt` until it returns anything but [`Error::Database`], or
/// until `within` has passed, pausing 100 ms, then up to 1 s, between
/// attempts.
async fn retry_within<F, Fut>(within: Duration, what: String, mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, attempt()).await {
            Ok(Err(Error::Database(e))) => last = Some(e),
            Ok(outcome) => return outcome,
            Err(_) => break,
        }
        if Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    Err(match last {
        Some(e) => Error::Database(e),
        None => Error::Timeout {
            what,
            waited: within,
        },
    })
}

/// Runs a release or complete statement (`$1` pool, `$2` name, `$3` token,
/// `$4` owner, and `$5` the NOTIFY payload when `notify`).
async fn finish(h: &LeaseRef, statement: &str, notify: bool) -> Result<()> {
    let inner = &h.locks.inner;
    let s = &h.shared;
    let payload = notify.then(|| s.wake_payload(&inner.schema));
    let row = on_statement_conn!(inner.sessions, |c| finish_query(
        statement,
        s,
        payload.as_deref(),
        !inner.transaction_pooler
    )
    .fetch_optional(c))
    .await
    .map_err(|e| Error::from_db(e, &inner.schema))?;
    s.mark_lost_quiet();
    match row {
        Some(_) => Ok(()),
        None => Err(s.lost_error()),
    }
}

fn finish_query<'q>(
    statement: &'q str,
    s: &'q Shared,
    payload: Option<&'q str>,
    persistent: bool,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let query = sqlx::query(sqlx::AssertSqlSafe(statement))
        .persistent(persistent)
        .bind(&s.pool)
        .bind(&s.name)
        .bind(s.token)
        .bind(s.owner);
    match payload {
        Some(p) => query.bind(p),
        None => query,
    }
}

impl Shared {
    /// The NOTIFY payload that wakes whoever waits for this lease to be
    /// free: its own waiters, or its pool's claimers.
    fn wake_payload(&self, schema: &str) -> String {
        if self.pool.is_empty() {
            payload(schema, &self.name)
        } else {
            payload(schema, &pool_topic(&self.pool))
        }
    }

    /// Marks a released lease so its handles report it gone, without a
    /// warning.
    fn mark_lost_quiet(&self) {
        self.state.send_modify(|s| s.lost = true);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.stop_keep_alive();
        let handle = self.handle.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = release(&handle).await {
                    tracing::debug!(name = %handle.name(), error = %e, "release on drop failed");
                }
            });
        }
    }
}
