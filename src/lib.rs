#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod advisory;
mod error;
mod key;
mod locks;
mod migrate;
mod sql;

pub use advisory::{Advisory, AdvisoryGuard};
pub use error::{Error, Result};
pub use key::{AdvisoryKey, MAX_NAME_BYTES};
pub use locks::{Locks, LocksBuilder, DEFAULT_MAX_SESSIONS, DEFAULT_SCHEMA};
pub use migrate::{latest_version, MIGRATIONS_TABLE};
