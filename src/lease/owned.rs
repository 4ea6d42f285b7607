//! The owned kinds of lease — [`Lease`], [`PoolLease`], [`Permit`] — one
//! type per kind, each derefs to the [`LeaseRef`] surface they share. Only
//! a [`PoolLease`] can be completed; `complete` on the others does not
//! compile.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use sqlx::PgConnection;

use super::handle::{LeaseRef, in_transaction};
use super::state::Shared;
use crate::error::Result;
use crate::locks::Locks;

/// What the owned kinds share: the handle, and whether it is kept alive or
/// already done with. Dropped without `release`, `complete` or `orphan`, it
/// releases the lease in a spawned task.
struct Owned {
    handle: LeaseRef,
    kept_alive: bool,
    done: bool,
}

impl Owned {
    fn new(locks: Locks, shared: Shared) -> Owned {
        Owned {
            handle: LeaseRef {
                locks,
                shared: Arc::new(shared),
            },
            kept_alive: false,
            done: false,
        }
    }

    fn keep_alive(&mut self) {
        if !self.kept_alive {
            let h = &self.handle;
            h.locks.keepalive().add(&h.shared, h.db());
            self.kept_alive = true;
        }
    }

    /// Done with the lease: no renewal, no release on drop.
    fn finish(&mut self) -> LeaseRef {
        self.done = true;
        if self.kept_alive {
            self.handle
                .locks
                .keepalive()
                .remove(self.handle.shared.id.token);
        }
        self.handle.clone()
    }

    fn fmt(&self, kind: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(kind)
            .field("name", &self.handle.shared.id.name)
            .field("pool", &self.handle.pool())
            .field("token", &self.handle.shared.id.token)
            .field("kept_alive", &self.kept_alive)
            .finish_non_exhaustive()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let handle = self.finish();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = handle.release().await {
                    tracing::debug!(name = %handle.name(), error = %e, "release on drop failed");
                }
            });
        }
    }
}

/// Declares one owned kind of lease with the surface all kinds share.
macro_rules! owned_lease {
    ($(#[$doc:meta])* $kind:ident) => {
        $(#[$doc])*
        ///
        /// Derefs to [`LeaseRef`] for its accessors, `renew`, `fence`,
        /// `set_data`, `lost` and `release_requested`. Dropping it releases
        /// it in a spawned task; [`release`](Self::release) does it now and
        /// reports, [`orphan`](Self::orphan) lets it expire.
        #[must_use = "dropping it releases it"]
        pub struct $kind {
            owned: Owned,
        }

        impl fmt::Debug for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.owned.fmt(stringify!($kind), f)
            }
        }

        impl std::ops::Deref for $kind {
            type Target = LeaseRef;

            fn deref(&self) -> &LeaseRef {
                &self.owned.handle
            }
        }

        impl $kind {
            pub(crate) fn new(locks: Locks, shared: Shared) -> $kind {
                $kind {
                    owned: Owned::new(locks, shared),
                }
            }

            /// A cloneable handle on it, for other tasks.
            pub fn handle(&self) -> LeaseRef {
                self.owned.handle.clone()
            }

            /// Renews it in the background (every third of its TTL,
            /// together with every other lease of this `Locks`, in one
            /// statement) until it is released, dropped or lost.
            pub fn keep_alive(mut self) -> $kind {
                self.owned.keep_alive();
                self
            }

            /// Releases it now, waking whoever waits for it.
            ///
            /// # Errors
            ///
            /// [`Error::LeaseLost`](crate::Error::LeaseLost) if it was no longer ours (taken over or
            /// force-released); [`Error::Database`](crate::Error::Database).
            pub async fn release(mut self) -> Result<()> {
                self.owned.finish().release().await
            }

            /// Releases it like [`release`](Self::release), retrying while
            /// the database fails or cannot be reached (a restart, a
            /// failover), for up to `within` in all: for a caller that must
            /// know whether it still stands (`pglock exec` on its way out).
            ///
            /// An attempt cut short by the connection may have committed all
            /// the same: the next one then finds it no longer ours and
            /// returns [`Error::LeaseLost`](crate::Error::LeaseLost), as it
            /// does for a lease that expired meanwhile.
            ///
            /// # Errors
            ///
            /// [`Error::LeaseLost`](crate::Error::LeaseLost) as for
            /// `release`; after `within`, the last
            /// [`Error::Database`](crate::Error::Database), or
            /// [`Error::Timeout`](crate::Error::Timeout) if no attempt
            /// answered.
            pub async fn release_within(mut self, within: std::time::Duration) -> Result<()> {
                self.owned.finish().release_retrying(within).await
            }

            /// Stops renewing and forgets it without releasing it: it stays
            /// held until its TTL runs out (crash-like hand-over).
            pub fn orphan(mut self) {
                self.owned.finish().may_be_resumed();
            }
        }
    };
}

owned_lease! {
    /// A held plain lease, from [`LeaseRequest`](crate::LeaseRequest).
    ///
    /// It cannot be completed (only pool items can):
    ///
    /// ```compile_fail
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let lease = locks.lease("shard-17").acquire().await?;
    /// lease.complete().await?; // no method `complete` on `Lease`
    /// # Ok(()) }
    /// ```
    Lease
}

owned_lease! {
    /// A claimed item of a [`LeasePool`](crate::LeasePool): a lease that
    /// can also be [completed](Self::complete) for good.
    PoolLease
}

owned_lease! {
    /// A held permit of a [`Semaphore`](crate::Semaphore). It can only be
    /// released: completing it would shrink the semaphore for good, so that
    /// does not compile:
    ///
    /// ```compile_fail
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let permit = locks.semaphore("embeddings-api", 4).acquire().await?;
    /// permit.complete().await?; // no method `complete` on `Permit`
    /// # Ok(()) }
    /// ```
    Permit
}

impl Lease {
    /// Runs `work` with a handle on this (kept-alive) lease, dropping it at
    /// its next await point once the lease is lost; releases the lease
    /// after.
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

impl PoolLease {
    /// Marks the item done for good: it is never claimed again. Sends no
    /// NOTIFY (a completion frees nothing to claim).
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if the item was no longer ours;
    /// [`Error::Database`](crate::Error::Database).
    pub async fn complete(mut self) -> Result<()> {
        let handle = self.owned.finish();
        let out = handle.finish(&handle.db().sql.item_complete, false).await;
        if out.is_err() {
            handle.may_be_resumed();
        }
        out
    }

    /// Marks the item done for good inside the caller's transaction,
    /// together with the fenced writes that finish it: they commit, or roll
    /// back, as one. Call it as `item.complete_in(&mut *tx)` before
    /// `tx.commit()`. If the transaction rolls back, the item stays held
    /// until its TTL runs out (renewal stops here) and is then claimed again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a connection outside a transaction;
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if the item was no longer ours;
    /// [`Error::Database`](crate::Error::Database).
    pub async fn complete_in(mut self, conn: &mut PgConnection) -> Result<()> {
        in_transaction(conn, "complete_in")?;
        let handle = self.owned.finish();
        // Whether it completes is up to the caller's commit.
        handle.may_be_resumed();
        let (db, s) = (handle.db(), &handle.shared);
        let row = handle
            .bind_row(db.query(&db.sql.item_complete))
            .bind(s.id.owner)
            .fetch_optional(conn)
            .await
            .map_err(|e| db.error(e))?;
        s.mark_lost_quiet();
        row.map(|_| ()).ok_or_else(|| s.lost_error())
    }
}
