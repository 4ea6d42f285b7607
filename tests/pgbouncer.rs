//! pglock behind Debian's PgBouncer (1.18), on a cluster of this test
//! binary's own: transaction mode with `transaction_pooler(true)` (with and
//! without `session_options`), and session mode with the default builder.

mod support;

use std::time::{Duration, Instant};

use pglock::{Error, Locks};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use support::cluster::Cluster;
use support::pgbouncer::PgBouncer;

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap()
}

/// Runs `f` within `secs`, so a hang fails the test instead of stalling it.
async fn bounded<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {secs} s"))
}

/// Leases (acquire, renew, fence, keep-alive, a woken waiter, release),
/// pools, semaphores and rate limiters through `locks`; `wake_within` bounds
/// how long a waiter takes to notice a release. `other` is a second handle
/// (another process) on the same schema; `app` a pool for the caller's own
/// transactions.
async fn leases_pools_semaphores_rates(
    locks: &Locks,
    other: &Locks,
    app: &PgPool,
    wake_within: Duration,
    tag: &str,
) {
    let name = |n: &str| format!("{tag}-{n}");
    // Acquire, renew, fence inside a transaction, keep alive.
    let lease = locks
        .lease(name("job"))
        .ttl(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    let token = lease.token();
    lease.renew().await.unwrap();
    let mut tx = app.begin().await.unwrap();
    lease.fence(&mut tx).await.unwrap();
    sqlx::query("SELECT 1")
        .persistent(false)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let lease = lease.keep_alive();
    // Past the TTL, the keep-alive has renewed it: nobody else gets it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        other
            .lease(name("job"))
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );

    // A waiter is woken after the release.
    let waiter = {
        let other = other.clone();
        let job = name("job");
        tokio::spawn(async move {
            let lease = other
                .lease(job)
                .timeout(Duration::from_secs(20))
                .acquire()
                .await
                .unwrap();
            (Instant::now(), lease)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let released = Instant::now();
    lease.release().await.unwrap();
    let (woke, next) = bounded(20, "waiter", waiter).await.unwrap();
    let took = woke - released;
    assert!(took < wake_within, "waiter took {took:?} after the release");
    assert!(next.token() > token);
    next.release().await.unwrap();

    // A pool: add, claim, complete, status.
    let jobs = locks.lease_pool(name("batch"));
    assert_eq!(jobs.add(["a", "b", "c"]).await.unwrap(), 3);
    let item = jobs.claim().acquire().await.unwrap();
    let second = jobs.claim().try_acquire().await.unwrap().unwrap();
    assert_ne!(item.name(), second.name());
    item.complete().await.unwrap();
    second.release().await.unwrap();
    let status = jobs.status().await.unwrap();
    assert_eq!((status.total, status.done, status.held), (3, 1, 0));

    // A semaphore of two.
    let p1 = locks.semaphore(name("sem"), 2).acquire().await.unwrap();
    let p2 = other.semaphore(name("sem"), 2).acquire().await.unwrap();
    assert!(
        locks
            .semaphore(name("sem"), 2)
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    p1.release().await.unwrap();
    let p3 = locks
        .semaphore(name("sem"), 2)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    p2.release().await.unwrap();
    p3.release().await.unwrap();

    // A rate limiter of two per minute, shared by both handles.
    let rate = locks.rate_limiter(name("api"), 2, Duration::from_secs(60));
    let rate2 = other.rate_limiter(name("api"), 2, Duration::from_secs(60));
    assert!(rate.try_acquire().await.unwrap());
    assert!(rate2.try_acquire().await.unwrap());
    assert!(!rate.try_acquire().await.unwrap());
}

/// Session advisory locks through `locks`: exclusion and release.
async fn advisory_excludes(locks: &Locks, other: &Locks) {
    let guard = locks.advisory("adv").lock().await.unwrap();
    assert!(other.advisory("adv").try_lock().await.unwrap().is_none());
    guard.release().await.unwrap();
    let again = other.advisory("adv").try_lock().await.unwrap().unwrap();
    again.release().await.unwrap();
}

#[tokio::test]
async fn transaction_mode_with_transaction_pooler() {
    let Some(bin) = support::require_tool("pgbouncer", "pgbouncer") else {
        return;
    };
    let cluster = Cluster::start_tcp();
    let bouncer = PgBouncer::start(&bin, cluster.port.unwrap(), "transaction");
    let direct = pool(&cluster.tcp_url()).await;
    let through = pool(&bouncer.url()).await;
    let builder = |holder: &str| {
        Locks::builder(through.clone())
            .transaction_pooler(true)
            .holder(holder)
    };
    let locks = builder("one").build().unwrap();
    let other = builder("two").build().unwrap();

    // migrate needs a session: refused without session_options.
    match locks.migrate().await {
        Err(Error::InvalidInput { rule, .. }) => assert!(rule.contains("session_options")),
        other => panic!("migrate behind a transaction pooler: {other:?}"),
    }
    Locks::new(direct.clone()).migrate().await.unwrap();

    // No LISTEN through the pooler: waiters wake by looking again within
    // MAX_WAIT (2 s) plus jitter.
    bounded(
        60,
        "leases, pools",
        leases_pools_semaphores_rates(&locks, &other, &through, Duration::from_secs(4), "poll"),
    )
    .await;

    // Session advisory locks are refused before any SQL runs.
    for result in [
        locks.advisory("adv").lock().await.map(|_| ()),
        locks.advisory("adv").try_lock().await.map(|_| ()),
    ] {
        match result {
            Err(Error::InvalidInput { rule, .. }) => {
                assert!(
                    rule.contains("session advisory locks need a session"),
                    "{rule}"
                );
                assert!(rule.contains("lock_xact"), "{rule}");
                assert!(rule.contains("LocksBuilder::session_options"), "{rule}");
            }
            other => panic!("advisory lock behind a transaction pooler: {other:?}"),
        }
    }

    // Transaction advisory locks work inside the caller's transaction.
    let mut tx = through.begin().await.unwrap();
    locks.advisory("xact").lock_xact(&mut tx).await.unwrap();
    let mut tx2 = through.begin().await.unwrap();
    assert!(
        !other
            .advisory("xact")
            .try_lock_xact(&mut tx2)
            .await
            .unwrap()
    );
    tx2.rollback().await.unwrap();
    tx.commit().await.unwrap();
    let mut tx2 = through.begin().await.unwrap();
    assert!(
        other
            .advisory("xact")
            .try_lock_xact(&mut tx2)
            .await
            .unwrap()
    );
    tx2.commit().await.unwrap();

    // With session_options on the server itself: advisory locks work, and
    // waiters get NOTIFY.
    let session: PgConnectOptions = cluster.tcp_url().parse().unwrap();
    let with_session = |holder: &str| {
        builder(holder)
            .session_options(session.clone())
            .build()
            .unwrap()
    };
    let (s1, s2) = (with_session("s1"), with_session("s2"));
    bounded(30, "advisory", advisory_excludes(&s1, &s2)).await;
    bounded(
        60,
        "leases, pools with session_options",
        leases_pools_semaphores_rates(&s1, &s2, &through, Duration::from_secs(1), "notify"),
    )
    .await;
    // pglock left no session state on PgBouncer's server connections (in
    // transaction mode nothing resets them between clients): the test
    // cluster runs with synchronous_commit = off, which pglock raises to on
    // only inside its own transactions.
    for _ in 0..10 {
        // The simple query protocol: one message, one server connection.
        // (An unnamed prepared statement outside a transaction takes two
        // round trips, and PgBouncer may switch server connections between
        // them.)
        let row = sqlx::raw_sql("SELECT current_setting('synchronous_commit')")
            .fetch_one(&through)
            .await
            .unwrap();
        let setting: String = sqlx::Row::try_get(&row, 0).unwrap();
        assert_eq!(setting, "off");
    }
    drop(bouncer);
}

#[tokio::test]
async fn session_mode_with_the_default_builder() {
    let Some(bin) = support::require_tool("pgbouncer", "pgbouncer") else {
        return;
    };
    let cluster = Cluster::start_tcp();
    let bouncer = PgBouncer::start(&bin, cluster.port.unwrap(), "session");
    let through = pool(&bouncer.url()).await;
    let locks = Locks::builder(through.clone())
        .holder("one")
        .build()
        .unwrap();
    let other = Locks::builder(through.clone())
        .holder("two")
        .build()
        .unwrap();
    bounded(60, "migrate", locks.migrate()).await.unwrap();
    bounded(30, "advisory", advisory_excludes(&locks, &other)).await;
    // NOTIFY wake-ups: well under the 2 s poll.
    bounded(
        60,
        "leases, pools",
        leases_pools_semaphores_rates(&locks, &other, &through, Duration::from_secs(1), "session"),
    )
    .await;
    drop(bouncer);
}

#[tokio::test]
async fn an_undeclared_transaction_pooler_is_refused() {
    let Some(bin) = support::require_tool("pgbouncer", "pgbouncer") else {
        return;
    };
    let cluster = Cluster::start_tcp();
    let bouncer = PgBouncer::start(&bin, cluster.port.unwrap(), "transaction");
    let direct = pool(&cluster.tcp_url()).await;
    Locks::new(direct.clone()).migrate().await.unwrap();
    let through = pool(&bouncer.url()).await;
    // Not declared: the first statement connection shows two client
    // connections sharing one server session, and nothing runs.
    let locks = Locks::new(through.clone());
    for result in [
        locks.lease("job").try_acquire().await.map(|_| ()),
        locks.advisory("adv").try_lock().await.map(|_| ()),
    ] {
        match result {
            Err(Error::InvalidInput { field, rule }) => {
                assert_eq!(field, "transaction_pooler");
                assert!(rule.contains("transaction_pooler(true)"), "{rule}");
            }
            other => panic!("an undeclared transaction pooler: {other:?}"),
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM pglock.leases")
        .fetch_one(&direct)
        .await
        .unwrap();
    assert_eq!(rows, 0, "nothing was written through the undeclared pooler");
    // Declared, the same pooler works.
    let declared = Locks::builder(through.clone())
        .transaction_pooler(true)
        .build()
        .unwrap();
    let lease = declared.lease("job").try_acquire().await.unwrap().unwrap();
    lease.release().await.unwrap();
}
