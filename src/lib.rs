#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod admin;
mod advisory;
mod engine;
mod error;
mod keepalive;
mod key;
mod lease;
mod locks;
mod migrate;
mod pool;
mod rate;
mod session;
mod sql;
mod wait;

pub use admin::LeaseInfo;
pub use advisory::{Advisory, AdvisoryGuard};
pub use error::{Error, Result};
pub use key::{AdvisoryKey, MAX_NAME_BYTES};
pub use lease::{DEFAULT_TTL, Lease, LeaseRef, LeaseRequest, MAX_DATA_BYTES, MAX_TTL, MIN_TTL};
pub use locks::{
    DEFAULT_MAX_SESSIONS, DEFAULT_SCHEMA, DEFAULT_STATEMENT_CONNECTIONS, Locks, LocksBuilder,
};
pub use migrate::{MIGRATIONS_TABLE, latest_version};
pub use pool::{Claim, LeasePool, MAX_PERMITS, PoolItem, PoolStatus, Semaphore};
pub use rate::{MAX_RATE, RateLimiter};
