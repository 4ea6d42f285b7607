//! Keep-alive and loss: a kept-alive lease outlives many TTLs with one renewal
//! statement for all, `lost()` resolves when it should, and `run` and drop give
//! the lease back; against a real PostgreSQL.

mod support;

use std::time::Duration;

use pglock::Error;
use support::db;
use support::lease::{held, held_for, name, refused};

#[tokio::test]
async fn keep_alive_holds_a_lease_over_many_ttls() {
    let t = db().await;
    let n = name();
    // Renewals come every third of the TTL and must land before 90% of it:
    // a 1 s TTL leaves them 600 ms of slack on a loaded machine.
    let ttl = Duration::from_secs(1);
    let l = held_for(&t.locks, &n, ttl).await.keep_alive();
    let other = t.other("b");
    let end = tokio::time::Instant::now() + ttl * 5;
    while tokio::time::Instant::now() < end {
        assert!(refused(&other, &n).await);
        assert!(l.remaining() > Duration::ZERO);
        tokio::time::sleep(ttl / 4).await;
    }
    l.renew().await.unwrap();
    l.release().await.unwrap();
}

#[tokio::test]
async fn keep_alive_renews_all_leases_with_one_statement() {
    let t = db().await;
    let ttl = Duration::from_millis(600);
    let mut leases = Vec::new();
    for _ in 0..40 {
        leases.push(held_for(&t.locks, &name(), ttl).await.keep_alive());
    }
    // Rows written by one statement share its transaction id (xmin).
    let distinct = |schema: String, pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(DISTINCT xmin::text) FROM \"{schema}\".leases"
        )))
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 3).await;
        if distinct(t.schema.clone(), t.pool.clone()).await == 1 {
            break;
        }
        assert!(
            started.elapsed() < ttl * 10,
            "the 40 leases were never renewed by one statement"
        );
    }
    for l in leases {
        l.release().await.unwrap();
    }
}

#[tokio::test]
async fn lost_resolves_on_force_release_and_renew_says_lease_lost() {
    let t = db().await;
    let n = name();
    let l = held_for(&t.locks, &n, Duration::from_millis(300))
        .await
        .keep_alive();
    assert!(!l.is_lost());
    assert_eq!(
        t.other("ops").force_release(&n).await.unwrap(),
        Some(l.token())
    );
    tokio::time::timeout(Duration::from_secs(10), l.lost())
        .await
        .expect("lost() resolves");
    assert!(l.is_lost());
    assert!(matches!(l.renew().await, Err(Error::LeaseLost { .. })));
    let mut tx = t.pool.begin().await.unwrap();
    assert!(matches!(
        l.fence(&mut tx).await,
        Err(Error::LeaseLost { .. })
    ));
    assert_eq!(l.remaining(), Duration::ZERO);
}

#[tokio::test]
async fn lost_resolves_at_the_local_deadline_without_renewal() {
    let t = db().await;
    let l = held_for(&t.locks, &name(), Duration::from_millis(200)).await;
    let before = tokio::time::Instant::now();
    l.lost().await;
    // The local deadline counts from before the request was sent.
    assert!(before.elapsed() <= Duration::from_millis(200));
    assert!(matches!(l.renew().await, Err(Error::LeaseLost { .. })));
}

#[tokio::test]
async fn run_releases_after_the_work() {
    let t = db().await;
    let n = name();
    let token = t
        .locks
        .lease(&n)
        .run(|l| async move { l.token() })
        .await
        .unwrap();
    let next = t
        .locks
        .lease(&n)
        .try_acquire()
        .await
        .unwrap()
        .expect("released after run()");
    assert!(next.token() > token);
    next.release().await.unwrap();
}

#[tokio::test]
async fn run_stops_the_work_when_the_lease_is_lost() {
    let t = db().await;
    let n = name();
    let ops = t.other("ops");
    let result = t
        .locks
        .lease(&n)
        .ttl(Duration::from_millis(300))
        .run(|l| async move {
            ops.force_release(l.name()).await.unwrap();
            std::future::pending::<()>().await;
        })
        .await;
    assert!(matches!(result, Err(Error::LeaseLost { .. })), "{result:?}");
}

#[tokio::test]
async fn dropped_lease_is_released_and_orphaned_lease_is_not() {
    let t = db().await;
    let n = name();
    drop(held(&t.locks, &n).await);
    let b = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    b.orphan();
    assert!(refused(&t.locks, &n).await);
}

#[tokio::test]
async fn a_shorter_lease_taken_later_is_renewed_in_time() {
    // The renewal task sleeps until the first lease is due. A lease taken
    // later with a shorter TTL is due before that, and must wake it; one
    // due later (the usual case) need not.
    let t = db().await;
    let long = held_for(&t.locks, &name(), Duration::from_secs(30))
        .await
        .keep_alive();
    let later = held_for(&t.locks, &name(), Duration::from_secs(30))
        .await
        .keep_alive();
    // Let the task settle into its sleep (until the first 30 s lease is due).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ttl = Duration::from_secs(1);
    let n = name();
    let short = held_for(&t.locks, &n, ttl).await.keep_alive();
    let other = t.other("b");
    let end = tokio::time::Instant::now() + ttl * 4;
    while tokio::time::Instant::now() < end {
        assert!(refused(&other, &n).await, "the short lease was not renewed");
        assert!(short.remaining() > Duration::ZERO);
        tokio::time::sleep(ttl / 4).await;
    }
    for l in [short, long, later] {
        l.release().await.unwrap();
    }
}
