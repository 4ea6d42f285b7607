//! Distributed locks, fenced leases, lease pools, semaphores and rate
//! limiters on PostgreSQL.
//!
//! Everything starts from one [`Locks`] handle on your `sqlx::PgPool`
//! (cheap to clone; clones share everything). [`Locks::migrate`] installs
//! the schema, idempotently. Then pick the primitive by what you need:
//!
//! | you need | use | you get |
//! | --- | --- | --- |
//! | a short critical section (seconds), held while your process runs | [`Locks::advisory`] → [`Advisory::lock`] | [`AdvisoryGuard`]: a session advisory lock, the session is yours meanwhile |
//! | a claim that outlives connections (minutes to days), with a fencing token | [`Locks::lease`] → [`LeaseRequest::acquire`] | [`Lease`] |
//! | any free item of a set — shards, trials, GPU slots — each done once | [`Locks::lease_pool`] → [`LeasePool::claim`] → [`Claim::acquire`] | a pool item ([`PoolLease`]): a lease that can also be completed |
//! | at most N holders at a time | [`Locks::semaphore`] → [`Semaphore::acquire`] | a permit ([`Permit`]): a lease that can only be released |
//! | at most N acquisitions per period | [`Locks::rate_limiter`] → [`RateLimiter::acquire`] | nothing to release |
//!
//! An advisory lock is cheapest (one round trip each way, nothing written),
//! but it lives in one database session: it ends with that session, and
//! there is no token to fence writes made elsewhere. A lease is a row with
//! an expiry by the database clock and a token from one sequence; it
//! survives reconnects and lets every writer check, inside its own
//! transaction, that it still holds the lease.
//!
//! ```no_run
//! # async fn f(pool: sqlx::PgPool) -> Result<(), pglock::Error> {
//! use std::time::Duration;
//! let locks = pglock::Locks::builder(pool.clone()).holder("gpu-07").build()?;
//! locks.migrate().await?;
//!
//! // A short critical section.
//! let guard = locks.advisory("ckpt/run-42").timeout(Duration::from_secs(5)).lock().await?;
//! // … write the checkpoint …
//! guard.release().await?;
//!
//! // A long claim, kept alive in the background, with a fenced write.
//! let lease = locks.lease("shard-17").ttl(Duration::from_secs(30)).acquire().await?.keep_alive();
//! let mut tx = pool.begin().await?;
//! lease.fence(&mut *tx).await?;
//! // … writes that carry lease.token() …
//! tx.commit().await?;
//! lease.release().await?;
//!
//! // Every trial of a sweep done exactly once, by whichever worker is free.
//! let trials = locks.lease_pool("sweep-42");
//! trials.add(["lr=1e-3", "lr=3e-4"]).await?;
//! loop {
//!     let trial = match trials.claim().acquire().await {
//!         Ok(trial) => trial.keep_alive(),
//!         Err(pglock::Error::PoolDrained { .. }) => break, // every trial is done
//!         Err(e) => return Err(e),
//!     };
//!     // … train trial.name(), report progress with trial.set_data(json) …
//!     trial.complete().await?;
//! }
//!
//! // At most 4 calls in flight and 600 a minute, across every process.
//! locks.rate_limiter("embeddings-api", 600, Duration::from_secs(60)).acquire().await?;
//! let permit = locks.semaphore("embeddings-api", 4).acquire().await?;
//! // … call the API …
//! permit.release().await?;
//! # Ok(()) }
//! ```
//!
//! # One surface for every lease
//!
//! A plain lease, a pool item and a permit share one surface ([`LeaseRef`],
//! which each derefs to): [`token`](LeaseRef::token),
//! [`renew`](LeaseRef::renew), [`fence`](LeaseRef::fence),
//! [`set_data`](LeaseRef::set_data) (a JSON payload visible to all —
//! progress for whoever takes over), [`lost`](LeaseRef::lost),
//! [`remaining`](LeaseRef::remaining),
//! [`release_requested`](LeaseRef::release_requested); and on the owned
//! value [`keep_alive`](Lease::keep_alive) (background renewal, one
//! statement per tick for every lease of a `Locks`),
//! [`release`](Lease::release) and [`orphan`](Lease::orphan) (let it
//! expire). Only a pool item can be completed ([`PoolLease::complete`],
//! [`PoolLease::complete_in`] inside your transaction). For work that must stop
//! when its lease is lost, [`LeaseRequest::run`] acquires, keeps alive,
//! drops the work on loss and releases.
//!
//! # Decisions worth knowing
//!
//! - Contention is not an error: `try_lock()` and `try_acquire()` return
//!   `Ok(None)` when somebody else holds it. Every fallible call returns
//!   `Result<_, `[`Error`]`>`; match on [`Error::Timeout`],
//!   [`Error::LeaseLost`], [`Error::InvalidInput`], [`Error::PoolDrained`]
//!   and [`Error::Database`].
//! - A dropped [`AdvisoryGuard`] or [`Lease`] is released at once in a
//!   spawned task; [`Lease::orphan`] leaves a lease to expire instead (a
//!   crash-like hand-over).
//! - [`lost()`](LeaseRef::lost) resolves at the holder's local deadline:
//!   90% of the TTL after the last successful renewal was *sent*, so it
//!   passes before the server gives the lease away.
//!   [`remaining()`](LeaseRef::remaining) is the time to that deadline.
//! - A claim prefers an item released by, or expired under, the same holder
//!   label (*sticky resume*); then the oldest free item; then the item
//!   that expired first. A handle whose claim found nothing of its own to
//!   resume skips that look in its claims of the pool for a second, unless
//!   it releases, drops or orphans an item there: an item of its label
//!   that expires meanwhile is resumed within a second. [`Claim::acquire`] returns [`Error::PoolDrained`] when
//!   nothing is free or held — every item is done — instead of waiting
//!   forever.
//! - Release is idempotent and does not report a lease that merely lapsed;
//!   `renew()` and `fence()` do.
//! - A released lease goes straight to the task of the same [`Locks`] that
//!   has waited longest for it (*hand-off*: one statement, no NOTIFY), at
//!   most three times in a row; the next release wakes every process's
//!   waiters. Waiters of one `Locks` are served in the order they queued.
//! - Data outlives its holder, for plain leases as for pool items: an
//!   acquire without [`data`](LeaseRequest::data) keeps the payload the
//!   previous holder left, so a worker that takes over `shard-17` resumes
//!   from the step its dead predecessor recorded. To start clean, acquire
//!   with data. Whose data it is stays visible:
//!   [`LeaseInfo::data_token`] and [`LeaseInfo::data_holder`] name the
//!   acquisition that wrote it (`pglock ls` shows it in `DATA BY`), and a
//!   token other than [`LeaseInfo::token`] means a previous holder wrote it.
//! - Semaphores and pools share one namespace; every process should use the
//!   same permit count (a new count takes effect with a process's next
//!   acquire).
//!
//! # Connections
//!
//! pglock opens a few connections of its own beside your pool (see
//! [`Locks`]); behind PgBouncer in transaction mode, declare it with
//! [`LocksBuilder::transaction_pooler`].
//!
//! By default each held [`AdvisoryGuard`] is a server session of its own,
//! which it lends to the critical section (`&mut *guard`). To hold
//! thousands of advisory locks, multiplex them onto a few shared sessions
//! with [`LocksBuilder::advisory_sessions`]: tasks of the process then
//! exclude each other in the client, a lock held by another process is
//! waited for on a session of its own, drop, cancel and `lost()` keep their
//! contract, and guards lend no session.
//!
//! # Beyond Rust
//!
//! Other languages join the same locks through the SQL protocol
//! (`PROTOCOL.md` in the repository: every statement verbatim, with its
//! parameters and the client-side rules) or the `<schema>.fence(name,
//! token)` SQL function. The `pglock` command (feature `cli`, guide in
//! `docs/cli.md`) runs any program under a lease, an advisory lock or a
//! pool item. Operations — PgBouncer, grants, failover — are in
//! `docs/operations.md`; the README has the guarantees and performance
//! figures.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod admin;
mod advisory;
mod db;
mod election;
mod engine;
mod error;
mod key;
mod lease;
mod locks;
pub mod metrics;
mod migrate;
mod multi;
mod pool;
mod rate;
mod semaphore;
mod session;
mod sql;
mod wait;

pub use admin::LeaseInfo;
pub use advisory::{Advisory, AdvisoryGuard, AdvisoryLockInfo};
pub use election::{ELECTION_PREFIX, Election, Leader, Leadership};
pub use error::{Error, Result};
pub use key::AdvisoryKey;
pub use lease::{Lease, LeaseRef, LeaseRequest, Permit, PoolLease};
pub use locks::{Locks, LocksBuilder};
pub use migrate::{MIGRATIONS_TABLE, latest_version};
pub use multi::{AdvisoryAll, AdvisorySet, LeaseAll, LeaseSet, MAX_SET_SIZE};
pub use pool::{Claim, LeasePool, PoolItem, PoolStatus};
pub use rate::RateLimiter;
pub use semaphore::Semaphore;

/// Deprecated: [`Locks::DEFAULT_SCHEMA`].
#[deprecated(note = "use Locks::DEFAULT_SCHEMA")]
pub const DEFAULT_SCHEMA: &str = Locks::DEFAULT_SCHEMA;
/// Deprecated: [`Locks::DEFAULT_MAX_SESSIONS`].
#[deprecated(note = "use Locks::DEFAULT_MAX_SESSIONS")]
pub const DEFAULT_MAX_SESSIONS: u32 = Locks::DEFAULT_MAX_SESSIONS;
/// Deprecated: [`Locks::DEFAULT_STATEMENT_CONNECTIONS`].
#[deprecated(note = "use Locks::DEFAULT_STATEMENT_CONNECTIONS")]
pub const DEFAULT_STATEMENT_CONNECTIONS: u32 = Locks::DEFAULT_STATEMENT_CONNECTIONS;
/// Deprecated: [`Locks::MAX_NAME_BYTES`].
#[deprecated(note = "use Locks::MAX_NAME_BYTES")]
pub const MAX_NAME_BYTES: usize = Locks::MAX_NAME_BYTES;
/// Deprecated: [`LeaseRequest::DEFAULT_TTL`].
#[deprecated(note = "use LeaseRequest::DEFAULT_TTL")]
pub const DEFAULT_TTL: std::time::Duration = LeaseRequest::DEFAULT_TTL;
/// Deprecated: [`LeaseRequest::MIN_TTL`].
#[deprecated(note = "use LeaseRequest::MIN_TTL")]
pub const MIN_TTL: std::time::Duration = LeaseRequest::MIN_TTL;
/// Deprecated: [`LeaseRequest::MAX_TTL`].
#[deprecated(note = "use LeaseRequest::MAX_TTL")]
pub const MAX_TTL: std::time::Duration = LeaseRequest::MAX_TTL;
/// Deprecated: [`LeaseRequest::MAX_DATA_BYTES`].
#[deprecated(note = "use LeaseRequest::MAX_DATA_BYTES")]
pub const MAX_DATA_BYTES: usize = LeaseRequest::MAX_DATA_BYTES;
/// Deprecated: [`Semaphore::MAX_PERMITS`].
#[deprecated(note = "use Semaphore::MAX_PERMITS")]
pub const MAX_PERMITS: u32 = Semaphore::MAX_PERMITS;
/// Deprecated: [`RateLimiter::MAX_RATE`].
#[deprecated(note = "use RateLimiter::MAX_RATE")]
pub const MAX_RATE: u32 = RateLimiter::MAX_RATE;

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
