//! What a held lease is — its identity — and what its holder knows about it
//! — its state: the local deadline, the next renewal, whether it is lost.
//! The owned types ([`handle`](super::handle)) and the keep-alive task
//! ([`keepalive`](super::keepalive)) share it.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::Error;
use crate::metrics::{self, Kind};

/// What kind of lease a row is, and of what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A plain lease.
    Lease,
    /// An item of a lease pool.
    Item { pool: String },
    /// A permit of a semaphore.
    Permit { semaphore: String },
}

impl Scope {
    /// The `kind` label of its metrics.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Scope::Lease => Kind::Lease,
            Scope::Item { .. } => Kind::PoolItem,
            Scope::Permit { .. } => Kind::Permit,
        }
    }

    /// The `pool` column: `''` for a plain lease.
    pub(crate) fn pool_column(&self) -> &str {
        match self {
            Scope::Lease => "",
            Scope::Item { pool } => pool,
            Scope::Permit { semaphore } => semaphore,
        }
    }

    /// The pool or semaphore, for a claimed lease.
    pub(crate) fn pool(&self) -> Option<&str> {
        Some(self.pool_column()).filter(|p| !p.is_empty())
    }

    /// The topic whose waiters a release of `name` wakes: the lease's own
    /// waiters, or the pool's claimers (`\x1f<pool>`).
    pub(crate) fn free_topic(&self, name: &str) -> String {
        match self.pool() {
            None => name.to_owned(),
            Some(pool) => format!("\u{1f}{pool}"),
        }
    }

    /// The topic of one lease's holder (release requests): its name, or for
    /// a claimed lease `\x1f<pool>\x1f<item>`.
    pub(crate) fn holder_topic(&self, name: &str) -> String {
        match self.pool() {
            None => name.to_owned(),
            Some(pool) => format!("\u{1f}{pool}\u{1f}{name}"),
        }
    }
}

/// Which lease row, taken by whom: the scope, the name, the fencing token
/// and the owner id that acquire generated.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) scope: Scope,
    pub(crate) name: String,
    pub(crate) token: i64,
    pub(crate) owner: Uuid,
}

/// State shared by a lease, its handles and the keep-alive task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: Identity,
    pub(crate) holder: String,
    pub(crate) ttl: Duration,
    pub(crate) data: Mutex<Option<Value>>,
    pub(crate) state: StateCell,
    /// When the acquire that took it was sent: the start of its hold time.
    pub(crate) taken_at: Instant,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct State {
    /// Local deadline: send time of the last successful renewal + 90% ttl.
    pub(crate) deadline: Instant,
    /// When the keep-alive task should renew next.
    pub(crate) next_renewal: Instant,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) lost: bool,
    pub(crate) release_requested: bool,
}

/// A lease's [`State`], and a wake-up for whoever waits for it to change
/// (`lost()`, `release_requested()`). A `tokio::sync::watch` channel does
/// the same, but allocates about 400 bytes per lease (it keeps eight
/// notifiers); this is a mutex and one `Notify` inside the lease's own
/// allocation.
#[derive(Debug)]
pub(crate) struct StateCell {
    state: Mutex<State>,
    changed: Notify,
}

impl StateCell {
    pub(crate) fn new(state: State) -> StateCell {
        StateCell {
            state: Mutex::new(state),
            changed: Notify::new(),
        }
    }

    /// The state now.
    pub(crate) fn get(&self) -> State {
        *self.state.lock().unwrap()
    }

    /// Applies `f`; if it says it changed the state, wakes every
    /// [`changed`](Self::changed) future. Returns what `f` said.
    pub(crate) fn modify(&self, f: impl FnOnce(&mut State) -> bool) -> bool {
        let modified = f(&mut self.state.lock().unwrap());
        if modified {
            self.changed.notify_waiters();
        }
        modified
    }

    /// Resolves at the first change after this call (the future counts
    /// from when it is created, not from when it is first polled): create
    /// it, then read the state, and no change between them is missed.
    pub(crate) fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }
}

/// The holder's share of a TTL: 90%, counted from before the request was
/// sent. Its deadline therefore passes at least a tenth of the TTL before the
/// server's expiry, even with the client's clock running fast.
pub(crate) fn local_ttl(ttl: Duration) -> Duration {
    ttl - ttl / 10
}

impl Shared {
    /// A lease taken with a request sent at `sent`.
    pub(crate) fn new(
        id: Identity,
        holder: String,
        ttl: Duration,
        sent: Instant,
        expires_at: DateTime<Utc>,
        data: Option<Value>,
    ) -> Shared {
        Shared {
            id,
            holder,
            ttl,
            data: Mutex::new(data),
            taken_at: sent,
            state: StateCell::new(State {
                deadline: sent + local_ttl(ttl),
                next_renewal: sent + ttl / 3,
                expires_at,
                lost: false,
                release_requested: false,
            }),
        }
    }

    pub(crate) fn is_lost(&self) -> bool {
        let s = self.state.get();
        s.lost || Instant::now() >= s.deadline
    }

    /// Time left before the local deadline; zero once lost.
    pub(crate) fn remaining(&self) -> Duration {
        let s = self.state.get();
        if s.lost {
            return Duration::ZERO;
        }
        s.deadline.saturating_duration_since(Instant::now())
    }

    pub(crate) fn next_renewal(&self) -> Instant {
        self.state.get().next_renewal
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant, expires_at: DateTime<Utc>, requested: bool) {
        self.state.modify(|s| {
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
        self.state.modify(|s| {
            s.next_renewal = retry_at;
            true
        });
    }

    pub(crate) fn mark_lost(&self, why: &str) {
        let newly = self.state.modify(|s| !std::mem::replace(&mut s.lost, true));
        if newly {
            tracing::warn!(name = %self.id.name, token = self.id.token, why, "lease lost");
            metrics::lost(self.id.scope.kind());
        }
    }

    /// Marks a released lease so its handles report it gone, without a
    /// warning.
    pub(crate) fn mark_lost_quiet(&self) {
        self.state.modify(|s| !std::mem::replace(&mut s.lost, true));
    }

    pub(crate) fn lost_error(&self) -> Error {
        Error::LeaseLost {
            name: self.id.name.clone(),
            token: self.id.token,
        }
    }

    /// `Err(LeaseLost)` once the lease is known lost or past its deadline.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.is_lost() {
            self.mark_lost("local deadline passed");
            return Err(self.lost_error());
        }
        Ok(())
    }
}
