//! Several locks or leases at once: all or none, in one canonical order.
//!
//! Two callers that take overlapping sets one by one in their own order can
//! deadlock (A holds `a` and waits for `b`, B holds `b` and waits for `a`).
//! [`Locks::advisory_all`] and [`Locks::lease_all`] take every member in
//! one order that every caller shares, so waits never form a cycle:
//!
//! - **advisory keys** by their numeric key, ascending: for a string key
//!   `hashtextextended(key, 0)`, for an integer key the integer itself.
//!   Keys that hash to the same number are one lock and taken once.
//! - **lease names** by their UTF-8 bytes, ascending (what `ORDER BY name
//!   COLLATE "C"` gives in SQL). Duplicates are taken once.
//!
//! Another program joining the protocol must take its sets in the same
//! order. One [`timeout`](AdvisoryAll::timeout) covers the whole set. A
//! set that times out, fails or is cancelled leaves nothing held.
//!
//! ```no_run
//! # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
//! use std::time::Duration;
//! let guards = locks
//!     .advisory_all(["mem/a", "mem/b", "mem/c"])
//!     .timeout(Duration::from_secs(5))
//!     .lock()
//!     .await?;
//! // … update the three memory shards …
//! guards.release().await?;
//! # Ok(()) }
//! ```

mod advisory;
mod lease;

pub use advisory::{AdvisoryAll, AdvisorySet};
pub use lease::{LeaseAll, LeaseSet};

use crate::error::{Error, Result};

/// Most members of one set.
pub const MAX_SET_SIZE: usize = 1000;

pub(crate) fn validate_size(field: &'static str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(field, "must name at least one member"));
    }
    if n > MAX_SET_SIZE {
        return Err(Error::invalid(
            field,
            format!("must have at most {MAX_SET_SIZE} members, got {n}"),
        ));
    }
    Ok(())
}
