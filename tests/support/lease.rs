//! Lease helpers for the `leases_*` tests: a fresh name, and the acquire
//! chains that would otherwise take eight lines each.

use std::time::Duration;

use pglock::{Lease, Locks};

/// A TTL no test outlives.
pub const LONG: Duration = Duration::from_secs(60);

/// A lease name no other test uses.
pub fn name() -> String {
    format!("lease-{}", uuid::Uuid::new_v4())
}

/// `name` taken by `locks` with the default TTL; panics if it is not free.
pub async fn held(locks: &Locks, name: &str) -> Lease {
    locks
        .lease(name)
        .try_acquire()
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("lease {name} is not free"))
}

/// `name` taken by `locks` for `ttl`; panics if it is not free.
pub async fn held_for(locks: &Locks, name: &str, ttl: Duration) -> Lease {
    locks
        .lease(name)
        .ttl(ttl)
        .try_acquire()
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("lease {name} is not free"))
}

/// `name` taken by `locks` for [`LONG`], waiting up to a minute for it.
pub async fn waited(locks: &Locks, name: &str) -> Lease {
    locks
        .lease(name)
        .ttl(LONG)
        .timeout(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("lease {name}: {e}"))
}

/// Whether `locks` is refused `name` right now (someone else holds it).
pub async fn refused(locks: &Locks, name: &str) -> bool {
    locks.lease(name).try_acquire().await.unwrap().is_none()
}
