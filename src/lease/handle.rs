//! [`LeaseRef`]: the cloneable surface every kind of held lease shares
//! (read, renew, fence, set data, lost, release requested). The owned
//! kinds are in [`owned`](super::owned).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Connection, PgConnection, Row};
use tokio::time::Instant;
use uuid::Uuid;

use super::Lease;
use super::handoff::Offer;
use super::keepalive::renew_batch;
use super::state::{Scope, Shared};
use crate::db::{Db, Q, Repeat};
use crate::error::{Error, FENCE_FAILED, Result, sqlstate};
use crate::key::validate_data;
use crate::locks::Locks;
use crate::metrics;
use crate::wait::{Look, payload, until_done};

/// A handle on a held lease, pool item or permit that can be cloned into
/// tasks; it is what [`LeaseRequest::run`](crate::LeaseRequest::run) hands
/// to its work. [`Lease`](crate::Lease), [`PoolLease`](crate::PoolLease)
/// and [`Permit`](crate::Permit) deref to one.
#[derive(Clone)]
pub struct LeaseRef {
    pub(super) locks: Locks,
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for LeaseRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseRef")
            .field("name", &self.shared.id.name)
            .field("pool", &self.pool())
            .field("token", &self.shared.id.token)
            .field("holder", &self.shared.holder)
            .finish_non_exhaustive()
    }
}

impl LeaseRef {
    pub(super) fn db(&self) -> &Arc<Db> {
        self.locks.db()
    }

    /// The lease name (for a pool item, the item's; for a permit,
    /// `permit-<n>`).
    pub fn name(&self) -> &str {
        &self.shared.id.name
    }

    /// The pool or semaphore this lease was claimed from, or `None` for a
    /// plain lease.
    pub fn pool(&self) -> Option<&str> {
        self.shared.id.scope.pool()
    }

    /// The fencing token: greater than every token issued before it.
    pub fn token(&self) -> i64 {
        self.shared.id.token
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
        self.shared.state.get().expires_at
    }

    /// Time left before the holder's own (conservative) deadline; zero once
    /// lost.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// Whether the lease is known lost, or its local deadline has passed:
    /// the non-waiting form of [`lost`](Self::lost). Once true it stays
    /// true.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// Whether a release request has been seen (by its NOTIFY, while
    /// [`release_requested`](Self::release_requested) waited, or by a
    /// renewal): the non-waiting form of that wait. Sends no SQL.
    pub fn is_release_requested(&self) -> bool {
        self.shared.state.get().release_requested
    }

    /// The JSON payload: as found at acquire time, or as last set.
    pub fn data(&self) -> Option<Value> {
        self.shared.data.lock().unwrap().clone()
    }

    /// Binds `$1` pool, `$2` name, `$3` token: the row this token holds.
    pub(super) fn bind_row(&self, q: Q) -> Q {
        let id = &self.shared.id;
        q.bind(id.scope.pool_column().to_owned())
            .bind(id.name.clone())
            .bind(id.token)
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
        renew_batch(self.db(), std::slice::from_ref(&self.shared)).await?;
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
        let s = &self.shared;
        s.check()?;
        let db = self.db();
        let sent = Instant::now();
        let ttl_ms = s.ttl.as_millis() as i64;
        let row = db
            .fetch_optional(Repeat::Safe, &db.sql.lease_set_data, |q| {
                self.bind_row(q).bind(s.id.owner).bind(&data).bind(ttl_ms)
            })
            .await?;
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
    /// Runs `SELECT <schema>.fence(pool, name, token)`, the same function a
    /// writer in another language can call. On failure that statement has
    /// raised, so the transaction is aborted: roll it back.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] if `conn` is not inside a transaction;
    /// [`Error::LeaseLost`] if the token no longer holds the lease, or the
    /// local deadline has passed; [`Error::Database`].
    pub async fn fence(&self, conn: &mut PgConnection) -> Result<()> {
        in_transaction(conn, "fence")?;
        self.shared.check()?;
        let db = self.db();
        match self
            .bind_row(db.query(&db.sql.lease_fence))
            .execute(conn)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if sqlstate(&e).as_deref() == Some(FENCE_FAILED) => {
                self.shared.mark_lost("fence check failed");
                Err(self.shared.lost_error())
            }
            Err(e) => Err(db.error(e)),
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
        loop {
            let changed = self.shared.state.changed();
            let s = self.shared.state.get();
            if s.lost {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(s.deadline) => {
                    if self.shared.state.get().deadline <= Instant::now() {
                        self.shared.mark_lost("local deadline passed without renewal");
                        return;
                    }
                }
                _ = changed => {}
            }
        }
    }

    /// Resolves when somebody has asked the holder to let go
    /// ([`Locks::request_release`]): checkpoint, then release. Woken by the
    /// request's NOTIFY, or by a renewal that saw the request.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn release_requested(&self) {
        let db = self.db();
        let s = &self.shared;
        let topic = s.id.scope.holder_topic(&s.id.name);
        let look = || async {
            if s.state.get().release_requested {
                return Ok(Look::Done(()));
            }
            let asked = db
                .fetch_optional(Repeat::Safe, &db.sql.lease_release_requested, |q| {
                    self.bind_row(q)
                })
                .await;
            if let Ok(Some(row)) = asked
                && row.try_get::<bool, _>(0).unwrap_or(false)
            {
                s.state
                    .modify(|st| !std::mem::replace(&mut st.release_requested, true));
                return Ok(Look::Done(()));
            }
            Ok(Look::WhenWoken)
        };
        let changed = || s.state.changed();
        // Only the LISTEN connection can fail here: try again shortly.
        while until_done(&db.hub, None, &topic, look, changed)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs the release (or complete) statement `sql` on this token and
    /// owner: `$4` owner, and `$5` the NOTIFY payload with `notify`.
    pub(super) async fn finish(&self, sql: &str, notify: bool) -> Result<()> {
        let db = self.db();
        let s = &self.shared;
        let wake = notify.then(|| payload(&db.schema, &s.id.scope.free_topic(&s.id.name)));
        let row = db
            .fetch_optional(Repeat::Safe, sql, |q| {
                let q = self.bind_row(q).bind(s.id.owner);
                match &wake {
                    Some(p) => q.bind(p.clone()),
                    None => q,
                }
            })
            .await?;
        s.mark_lost_quiet();
        if let Some(row) = &row {
            metrics::released(s.id.scope.kind(), s.taken_at.elapsed());
            if notify && row.try_get::<Option<bool>, _>(0).ok().flatten() == Some(true) {
                metrics::notify_sent();
            }
        }
        row.map(|_| ()).ok_or_else(|| s.lost_error())
    }

    /// Releases the lease if still ours, waking whoever waits for it; a
    /// plain lease that a task of the same `Locks` waits for is handed to
    /// it instead (see [`handoff`](super::handoff)).
    pub(super) async fn release(&self) -> Result<()> {
        let sql = &self.db().sql;
        match self.shared.id.scope {
            Scope::Lease => {
                let offer = (!self.is_release_requested())
                    .then(|| self.locks.handoffs().next(&self.shared.id.name))
                    .flatten();
                match offer {
                    Some(offer) => {
                        // In a task of its own: the waiter gets its lease
                        // even if this caller goes away mid-statement.
                        let me = self.clone();
                        tokio::spawn(async move { me.hand_off(offer).await })
                            .await
                            .unwrap_or(Err(Error::Database(sqlx::Error::WorkerCrashed)))
                    }
                    None => self.finish(&sql.lease_release, true).await,
                }
            }
            Scope::Item { .. } => {
                let out = self.finish(&sql.item_release, true).await;
                self.may_be_resumed();
                out
            }
            Scope::Permit { .. } => self.finish(&sql.item_release, true).await,
        }
    }

    /// A pool item that may be there to resume under its holder label
    /// (released, dropped, orphaned, or an outcome unknown): this handle's
    /// next claim of the pool runs its sticky probe.
    pub(super) fn may_be_resumed(&self) {
        if let Scope::Item { pool } = &self.shared.id.scope {
            self.locks.resume().forget(pool, &self.shared.holder);
        }
    }

    /// Frees this lease's name if `owner` holds it (a hand-off that may
    /// have committed for a waiter that cannot have it), waking its waiters.
    async fn give_back(&self, owner: Uuid) {
        let db = self.db();
        let name = self.shared.id.name.clone();
        let wake = payload(&db.schema, &name);
        let back = db
            .fetch_all(Repeat::Never, &db.sql.lease_abandon, |q| {
                q.bind(name.clone()).bind(owner).bind(wake.clone())
            })
            .await;
        if let Err(e) = back {
            tracing::warn!(error = %e, "could not give back a hand-off; it expires with its TTL");
        }
    }

    /// Hands the lease to `offer`'s waiter; if it cannot (the lease expired
    /// or is no longer ours, or the outcome is unknown), releases it as
    /// usual and puts the offer back first in line.
    async fn hand_off(&self, offer: Arc<Offer>) -> Result<()> {
        let db = self.db();
        let s = &self.shared;
        let owner = Uuid::new_v4();
        let terms = &offer.terms;
        let sent = Instant::now();
        let out = db
            .fetch_optional(Repeat::Safe, &db.sql.lease_handoff, |q| {
                q.bind(s.id.name.clone())
                    .bind(s.id.token)
                    .bind(s.id.owner)
                    .bind(owner)
                    .bind(offer.holder.clone())
                    .bind(terms.ttl_ms())
                    .bind(offer.data.clone())
                    .bind(terms.delay_ms())
            })
            .await;
        let row = match out {
            Ok(Some(row)) => row,
            Ok(None) => {
                self.locks.handoffs().put_back(&offer);
                return self.finish(&db.sql.lease_release, true).await;
            }
            Err(e) => {
                // It may have committed: give the waiter's taking back,
                // then release ours (if it is still ours).
                self.give_back(owner).await;
                self.locks.handoffs().put_back(&offer);
                return self.finish(&db.sql.lease_release, true).await.or(Err(e));
            }
        };
        s.mark_lost_quiet();
        metrics::released(s.id.scope.kind(), s.taken_at.elapsed());
        metrics::handed_off();
        let (name, holder) = (s.id.name.clone(), offer.holder.clone());
        match Shared::taken(&row, Scope::Lease, name, owner, holder, terms, sent) {
            Ok(taken) => offer.deliver(Lease::new(self.locks.clone(), taken)),
            Err(e) => {
                tracing::warn!(error = %e, "a hand-off's answer was unreadable; giving it back");
                self.give_back(owner).await;
                self.locks.handoffs().put_back(&offer);
            }
        }
        Ok(())
    }
}

impl LeaseRef {
    /// `release`, tried again after a database error
    /// until `within` has passed, pausing 100 ms, then up to 1 s, between
    /// attempts.
    pub(super) async fn release_retrying(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(100);
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, self.release()).await {
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
                what: format!("release of lease {:?}", self.name()),
                waited: within,
            },
        })
    }
}

pub(super) fn in_transaction(conn: &mut PgConnection, what: &str) -> Result<()> {
    if conn.is_in_transaction() {
        return Ok(());
    }
    Err(Error::invalid(
        "conn",
        format!(
            "{what} needs a connection inside a transaction begun with sqlx \
             (pool.begin() or conn.begin(), then call it with &mut *tx); \
             in autocommit mode the row lock would end with the statement"
        ),
    ))
}
