//! Every acquiring future dropped at any point leaves nothing held, and
//! connections in a bad state are never reused.

mod support;

use std::time::Duration;

use support::{TestDb, db, eventually, locks_with_app, poll_then_drop, terminate_app};

async fn lease_owner(t: &TestDb, pool: &str, name: &str) -> Option<uuid::Uuid> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT owner FROM \"{}\".leases WHERE pool = $1 AND name = $2",
        t.schema
    )))
    .bind(pool)
    .bind(name)
    .fetch_optional(&t.pool)
    .await
    .unwrap()
    .flatten()
}

#[tokio::test]
async fn a_cancelled_lease_acquire_leaves_nothing_held() {
    let t = db().await;
    let other = t.other("b");
    for contended in [false, true] {
        for i in 0..15 {
            let name = format!("c-{contended}-{i}");
            let holder = if contended {
                Some(
                    t.locks
                        .lease(&name)
                        .ttl(Duration::from_secs(60))
                        .try_acquire()
                        .await
                        .unwrap()
                        .unwrap(),
                )
            } else {
                None
            };
            let acquire = other.lease(&name).ttl(Duration::from_secs(60)).acquire();
            if let Some(lease) = poll_then_drop(acquire, i).await {
                lease.unwrap().release().await.unwrap();
            }
            if let Some(h) = holder {
                h.release().await.unwrap();
            }
            eventually(5, "the lease is free", || async {
                lease_owner(&t, "", &name).await.is_none()
            })
            .await;
        }
    }
}

#[tokio::test]
async fn a_cancelled_claim_leaves_nothing_held() {
    let t = db().await;
    let pool = t.locks.lease_pool("cancel");
    pool.add((0..20).map(|i| format!("item-{i}")))
        .await
        .unwrap();
    for i in 0..20 {
        let claim = pool.claim().ttl(Duration::from_secs(60)).acquire();
        if let Some(lease) = poll_then_drop(claim, i).await {
            lease.unwrap().release().await.unwrap();
        }
        eventually(5, "no item is held", || async {
            pool.status().await.unwrap().held == 0
        })
        .await;
    }
    assert_eq!(pool.status().await.unwrap().free, 20);
}

#[tokio::test]
async fn a_cancelled_semaphore_acquire_and_rate_limiter_leave_nothing_held() {
    let t = db().await;
    for i in 0..12 {
        let sem = t.locks.semaphore("cancel-sem", 2);
        let acquire = sem.acquire();
        if let Some(p) = poll_then_drop(acquire, i).await {
            p.unwrap().release().await.unwrap();
        }
        let sem = t.locks.lease_pool("cancel-sem");
        eventually(5, "no permit is held", || async {
            match sem.status().await {
                Ok(status) => status.held == 0,
                // Dropped before its first statement: no permit row exists.
                Err(pglock::Error::PoolNotFound { .. }) => true,
                Err(e) => panic!("status of the semaphore's permits: {e}"),
            }
        })
        .await;
    }
    // A rate limiter holds nothing: a cancelled acquire at most took a token.
    let limiter = t
        .locks
        .rate_limiter("cancel-rate", 5, Duration::from_secs(60));
    for i in 0..8 {
        let _ = poll_then_drop(limiter.acquire(), i).await;
    }
}

#[tokio::test]
async fn a_cancelled_advisory_release_leaves_nothing_held() {
    let t = db().await;
    for i in 0..10 {
        let key = format!("rel-{i}");
        let guard = t.locks.advisory(key.as_str()).lock().await.unwrap();
        let _ = poll_then_drop(guard.release(), i).await;
        let k = support::text_key(&t.pool, &key).await;
        support::assert_released(&t.pool, k, 5).await;
    }
}

#[tokio::test]
async fn a_dropped_guard_unlocks_even_with_a_query_left_running_on_it() {
    let t = db().await;
    let mut guard = t.locks.advisory("busy").lock().await.unwrap();
    let slow = sqlx::query("SELECT pg_sleep(30)").execute(&mut *guard);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), slow)
            .await
            .is_err()
    );
    drop(guard);
    let k = support::text_key(&t.pool, "busy").await;
    support::assert_released(&t.pool, k, 5).await;
}

#[tokio::test]
async fn a_session_left_in_a_transaction_is_not_reused() {
    let t = db().await;
    let app = format!("tx-{}", uuid::Uuid::new_v4().simple());
    let locks = locks_with_app(&t.pool, &t.schema, &app, 2);
    let mut guard = locks.advisory("tx-left").lock().await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut *guard).await.unwrap();
    guard.release().await.unwrap();
    let idle_in_tx = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
        )
        .bind(&app)
        .fetch_one(&t.pool)
        .await
        .unwrap()
            == 0
    };
    eventually(5, "the session left in a transaction is closed", idle_in_tx).await;
    // Lease statements never run inside it.
    let lease = locks
        .lease("after-tx")
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    lease.release().await.unwrap();
    assert!(
        t.locks
            .lease("after-tx")
            .try_acquire()
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn statements_survive_terminated_connections_with_one_statement_connection() {
    let t = db().await;
    let app = format!("one-{}", uuid::Uuid::new_v4().simple());
    let locks = locks_with_app(&t.pool, &t.schema, &app, 1);
    for round in 0..3 {
        let lease = locks
            .lease(format!("one-{round}"))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        assert!(terminate_app(&t.pool, &app).await >= 1);
        // The dead idle connection is replaced without waiting for a second
        // permit (there is none).
        tokio::time::timeout(Duration::from_secs(10), lease.release())
            .await
            .expect("no deadlock on the retry")
            .unwrap();
    }
}

#[tokio::test]
async fn transaction_scoped_locks_and_fences_refuse_autocommit() {
    let t = db().await;
    let mut conn = t.pool.acquire().await.unwrap();
    let err = t
        .locks
        .advisory("x")
        .lock_xact(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(err, pglock::Error::InvalidInput { field: "conn", .. }),
        "{err}"
    );
    let err = t
        .locks
        .advisory("x")
        .try_lock_xact(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(err, pglock::Error::InvalidInput { field: "conn", .. }),
        "{err}"
    );
}
