//! Compile-time checks, without a database: guards, leases and the futures
//! that acquire them are `Send` (they cross `tokio::spawn`), and the handles
//! are `Send + Sync` (tokio's `fn bounds()` pattern). Nothing here runs
//! against a server: the futures are built, never polled.

use pglock::{
    Advisory, AdvisoryGuard, Claim, Error, Lease, LeasePool, LeaseRef, LeaseRequest, Locks, Permit,
    PoolLease, RateLimiter, Semaphore,
};

fn send<T: Send>(_: &T) {}
fn send_sync<T: Send + Sync>() {}

#[allow(dead_code)]
fn bounds(locks: Locks, lease: Lease, item: PoolLease) {
    send_sync::<Locks>();
    send_sync::<Lease>();
    send_sync::<PoolLease>();
    send_sync::<Permit>();
    send_sync::<LeaseRef>();
    send_sync::<AdvisoryGuard>();
    send_sync::<Advisory>();
    send_sync::<LeaseRequest>();
    send_sync::<LeasePool>();
    send_sync::<Claim>();
    send_sync::<Semaphore>();
    send_sync::<RateLimiter>();
    send_sync::<Error>();

    send(&locks.lease("x").acquire());
    send(&locks.lease("x").try_acquire());
    send(&locks.lease("x").run(|l| async move { l.token() }));
    send(&locks.advisory("x").lock());
    send(&locks.advisory("x").try_lock());
    send(&locks.lease_pool("p").claim().acquire());
    send(&locks.lease_pool("p").claim().try_acquire());
    let sem = locks.semaphore("s", 2);
    send(&sem.acquire());
    send(&sem.try_acquire());
    let limit = locks.rate_limiter("r", 1, std::time::Duration::from_secs(1));
    send(&limit.acquire());
    send(&lease.renew());
    send(&lease.lost());
    send(&lease.release_requested());
    send(&lease.release());
    send(&item.complete());
}

#[test]
fn guards_leases_and_their_futures_are_send() {
    // The checks above are made by the compiler; this test names them.
    let _ = bounds;
}
