//! Leader election that others can watch, on a lease.
//!
//! An election `NAME` is the plain lease `election/NAME`: the leader is
//! whoever holds it, its fencing token orders leaders (a later leader always
//! has a greater token), and its JSON payload is the leader's value (a JSON
//! string). Candidates wait for the lease as any waiter does; a leader that
//! dies leaves it to expire after its TTL, and one of the waiting candidates
//! takes it then.
//!
//! ```no_run
//! # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
//! use futures_util::StreamExt;
//! let election = locks.election("trainer-coordinator");
//! // A worker that wants to lead:
//! let leadership = election.campaign("10.0.0.7:29500").await?;
//! // … lead, writing with leadership.fence(&mut *tx) …
//! leadership.resign().await?;
//!
//! // Every worker that needs to know:
//! let mut leaders = std::pin::pin!(election.observe());
//! while let Some(leader) = leaders.next().await {
//!     let leader = leader?;
//!     println!("leader {} (token {})", leader.value, leader.token);
//! }
//! # Ok(()) }
//! ```
//!
//! # What observers see
//!
//! [`Election::observe`] yields the leader there is when it starts, then
//! each later leader once, in increasing token order, never one older than
//! one it has shown. It looks again when a NOTIFY says the election changed
//! (a new leader announces itself, a resignation is a release) and at the
//! latest every 2 seconds or at the leader's expiry (the poll fallback: an
//! expiry sends no NOTIFY). A leader that came and went between two looks
//! is skipped; an observer learns that a leader is gone only from the next
//! one (or from [`Election::leader`] returning `None`).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_core::Stream;
use serde_json::Value;

use crate::Locks;
use crate::db::Repeat;
use crate::error::Result;
use crate::key::validate_name;
use crate::lease::{Lease, LeaseRef, LeaseRequest, validate_ttl};
use crate::wait::{MAX_WAIT, Topic, jitter, payload};

/// The prefix of an election's lease name: election `NAME` is the lease
/// `election/NAME`.
pub const ELECTION_PREFIX: &str = "election/";

impl Locks {
    /// The election `name`: campaign to lead it, see who leads, watch the
    /// leaders change. Its lease is `election/<name>`.
    pub fn election(&self, name: impl Into<String>) -> Election {
        Election {
            locks: self.clone(),
            name: name.into(),
            ttl: LeaseRequest::DEFAULT_TTL,
        }
    }
}

/// An election; see [`Locks::election`].
#[derive(Debug, Clone)]
#[must_use = "an Election does nothing until campaign(), leader() or observe() is called"]
pub struct Election {
    locks: Locks,
    name: String,
    ttl: Duration,
}

/// Who leads an election.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The value the leader campaigned with.
    pub value: String,
    /// The fencing token of its leadership: greater than every earlier
    /// leader's.
    pub token: i64,
    /// The holder label of the leader.
    pub holder: Option<String>,
    /// When its lease expires unless renewed (database clock).
    pub expires_at: DateTime<Utc>,
}

impl Election {
    /// The TTL of a leadership (default 30 s; 100 ms to 30 days): how long
    /// a dead leader keeps the election before another candidate takes it
    /// over. A leadership is renewed every third of it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease behind the election: `election/<name>`.
    pub fn lease_name(&self) -> String {
        format!("{ELECTION_PREFIX}{}", self.name)
    }

    fn validate(&self) -> Result<()> {
        validate_name("election name", &self.name)?;
        validate_name("election lease name", &self.lease_name())?;
        Ok(())
    }

    /// Waits until this candidate leads, then returns its leadership, kept
    /// alive in the background. Observers are told at once (NOTIFY).
    ///
    /// # Cancel safety
    ///
    /// As [`LeaseRequest::acquire`](crate::LeaseRequest::acquire): dropped
    /// while waiting, nothing is held; dropped while the statement runs, a
    /// leadership taken is given back or left to expire.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad name, value (at most 64 KiB) or
    /// TTL, before any SQL; [`Error::NotMigrated`](crate::Error::NotMigrated); [`Error::Database`](crate::Error::Database).
    pub async fn campaign(&self, value: impl Into<String>) -> Result<Leadership> {
        self.validate()?;
        validate_ttl(self.ttl)?;
        let value = value.into();
        let lease = self
            .locks
            .lease(self.lease_name())
            .ttl(self.ttl)
            .data(Value::String(value.clone()))
            .acquire()
            .await?
            .keep_alive();
        if let Err(e) = announce(&self.locks, &self.lease_name()).await {
            // Observers still see it at their next poll.
            tracing::warn!(election = %self.name, error = %e, "cannot announce the new leader");
        }
        tracing::debug!(election = %self.name, token = lease.token(), "elected");
        Ok(Leadership { lease, value })
    }

    /// The current leader, or `None` if nobody leads now (by the database
    /// clock).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for a bad name; [`Error::NotMigrated`](crate::Error::NotMigrated);
    /// [`Error::Database`](crate::Error::Database).
    pub async fn leader(&self) -> Result<Option<Leader>> {
        self.validate()?;
        Ok(current_leader(&self.locks, &self.lease_name())
            .await?
            .map(|(l, _)| l))
    }

    /// A stream of leaders: the current one first (if any), then each new
    /// leader once, in increasing token order (see the module docs for what
    /// an observer can miss). It never ends; drop it to stop watching. An
    /// error (the database unreachable) is yielded as `Err`, and the stream
    /// goes on looking a second later.
    pub fn observe(&self) -> impl Stream<Item = Result<Leader>> + Send + 'static {
        let state = Observer {
            election: self.clone(),
            last_token: 0,
            topic: None,
            failed: false,
        };
        futures_util::stream::unfold(state, |mut o| async move {
            let next = o.next().await;
            Some((next, o))
        })
    }
}

struct Observer {
    election: Election,
    /// The token of the last leader yielded.
    last_token: i64,
    topic: Option<Arc<Topic>>,
    failed: bool,
}

impl Observer {
    async fn next(&mut self) -> Result<Leader> {
        let e = &self.election;
        e.validate()?;
        let lease = e.lease_name();
        if std::mem::take(&mut self.failed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        loop {
            if self.topic.is_none() {
                let topic = e.locks.db().hub.subscribe(&lease).await;
                self.topic = Some(topic.inspect_err(|_| self.failed = true)?);
            }
            let topic = self.topic.clone().expect("subscribed");
            let notified = topic.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let look = current_leader(&e.locks, &lease)
                .await
                .inspect_err(|_| self.failed = true)?;
            let wait = match look {
                Some((leader, _)) if leader.token > self.last_token => {
                    self.last_token = leader.token;
                    return Ok(leader);
                }
                Some((_, left)) => left,
                None => MAX_WAIT,
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait.min(MAX_WAIT) + jitter()) => {}
            }
        }
    }
}

/// A held leadership, renewed in the background. Derefs to [`LeaseRef`] for
/// `token`, `fence`, `lost` and the rest.
///
/// Dropping it resigns in a spawned task.
#[must_use = "dropping the leadership resigns"]
pub struct Leadership {
    lease: Lease,
    value: String,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .field("value", &self.value)
            .finish()
    }
}

impl Deref for Leadership {
    type Target = LeaseRef;

    fn deref(&self) -> &LeaseRef {
        &self.lease
    }
}

impl Leadership {
    /// The value this leader campaigned with.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Steps down now: the lease is released, waiting candidates and
    /// observers are woken.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if the leadership was already lost;
    /// [`Error::Database`](crate::Error::Database).
    pub async fn resign(self) -> Result<()> {
        self.lease.release().await
    }

    /// The lease underneath (kept alive), e.g. to run a command under it.
    pub fn into_lease(self) -> Lease {
        self.lease
    }
}

/// The leader, if the election's lease is held by the database clock, and
/// how long until its expiry: the lease's row, by the statement `lease_info`
/// reads.
async fn current_leader(locks: &Locks, lease: &str) -> Result<Option<(Leader, Duration)>> {
    let Some(info) = locks.lease_holder(lease).await? else {
        return Ok(None);
    };
    let value = match info.data {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let left = info
        .expires_in
        .and_then(|d| d.to_std().ok())
        .unwrap_or_default();
    let Some(expires_at) = info.expires_at else {
        return Ok(None);
    };
    Ok(Some((
        Leader {
            value,
            token: info.token,
            holder: info.holder,
            expires_at,
        },
        left,
    )))
}

/// Wakes the observers (and waiting candidates) of `lease`.
async fn announce(locks: &Locks, lease: &str) -> Result<()> {
    let db = locks.db();
    let message = payload(&db.schema, lease);
    db.fetch_all(Repeat::Safe, &db.sql.announce, |q| q.bind(message.clone()))
        .await?;
    Ok(())
}
