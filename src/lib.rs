#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod admin;
mod advisory;
mod db;
mod error;
mod key;
mod lease;
mod locks;
mod migrate;
mod pool;
mod rate;
mod semaphore;
mod session;
mod sql;
mod wait;

pub use admin::LeaseInfo;
pub use advisory::{Advisory, AdvisoryGuard, AdvisoryLockInfo};
pub use error::{Error, Result};
pub use key::AdvisoryKey;
pub use lease::{Lease, LeaseRef, LeaseRequest, Permit, PoolLease};
pub use locks::{Locks, LocksBuilder};
pub use migrate::{MIGRATIONS_TABLE, latest_version};
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
