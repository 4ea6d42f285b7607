//! A waiter whose look loses its connection mid-statement (its backend
//! terminated, as a failover or restart does) looks again until its timeout
//! instead of failing, and never makes a second holder.

mod support;

use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

/// Terminates the waiter's acquire statement once it is blocked in flight;
/// returns the terminated pid, `None` if no look blocked within 10 s.
async fn terminate_blocked_look(pool: &sqlx::PgPool, app: &str, not: &[i32]) -> Option<i32> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let pid = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event_type = 'Lock' AND query LIKE '%SKIP LOCKED%' \
             AND NOT (pid = ANY($2)) LIMIT 1",
        )
        .bind(app)
        .bind(not)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(pid) = pid {
            break pid;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(done, "terminated the look's backend {pid}");
    Some(pid)
}

#[tokio::test]
async fn a_waiter_rides_over_its_look_losing_the_connection() {
    let db = support::db().await;
    let holder = db
        .locks
        .lease("ride")
        .ttl(Duration::from_secs(2))
        .try_acquire()
        .await
        .unwrap()
        .expect("free");
    let rider = support::locks_with_app(&db.pool, &db.schema, "rider", 2);
    let waiter = tokio::spawn(async move {
        rider
            .lease("ride")
            .timeout(Duration::from_secs(60))
            .acquire()
            .await
    });
    // Its first looks found the lease held and it sleeps until the expiry;
    // its next look (at the holder's expiry) blocks on the table, in flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let mut blocker = PgConnection::connect(&support::cluster::shared_url())
        .await
        .unwrap();
    blocker.execute("BEGIN").await.unwrap();
    blocker
        .execute(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE {}.leases IN ACCESS EXCLUSIVE MODE",
            db.schema
        )))
        .await
        .unwrap();
    // Three looks killed mid-statement: a look on a reused connection is
    // repeated once on a new one (`Db`), so at least one of the errors
    // reaches the waiting loop, which must look again, not fail.
    let mut killed = Vec::new();
    for _ in 0..3 {
        match terminate_blocked_look(&db.pool, "rider", &killed).await {
            Some(pid) => killed.push(pid),
            None if waiter.is_finished() => {
                panic!("the waiter gave up after {killed:?}: {:?}", waiter.await)
            }
            None => panic!("no look in flight after {killed:?}"),
        }
    }
    assert!(
        !waiter.is_finished(),
        "the waiter gave up: {:?}",
        waiter.await
    );
    blocker.execute("ROLLBACK").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("the waiter got the lease once the table was free")
        .unwrap()
        .expect("acquired after its looks lost their connections");
    assert!(got.token() > holder.token());
    // One holder: the expired first holder cannot renew or release.
    assert!(holder.renew().await.is_err());
    assert!(holder.release().await.is_err());
    let owners: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.leases WHERE name = 'ride' AND owner IS NOT NULL \
         AND expires_at > clock_timestamp()",
        db.schema
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(owners, 1);
    got.renew().await.unwrap();
    got.release().await.unwrap();
}
