//! Fenced leases against a real PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pglock::{Error, Lease, LeaseRef, Locks};
use serde_json::json;
use support::{TestDb, db};

const LONG: Duration = Duration::from_secs(60);

fn name() -> String {
    format!("lease-{}", uuid::Uuid::new_v4())
}

/// Moves the lease's expiry into the past by the database clock: what
/// waiting out the TTL would do, without the wait.
async fn expire(t: &TestDb, name: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".leases SET expires_at = clock_timestamp() - interval '1 second' WHERE name = $1",
        t.schema
    )))
    .bind(name)
    .execute(&t.pool)
    .await
    .unwrap();
}

async fn create_results(t: &TestDb) -> String {
    let table = format!("\"{}\".results", t.schema);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (id serial PRIMARY KEY, token bigint NOT NULL, committed_at timestamptz DEFAULT clock_timestamp())"
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    table
}

async fn fenced_insert(t: &TestDb, table: &str, lease: &LeaseRef) -> Result<(), Error> {
    let mut tx = t.pool.begin().await?;
    lease.fence(&mut tx).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (token) VALUES ($1)"
    )))
    .bind(lease.token())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

#[tokio::test]
async fn leases_and_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Lease>();
    send_sync::<LeaseRef>();
    let t = db().await;
    send(&t.locks.lease("x").acquire());
    send(&t.locks.lease("x").try_acquire());
    send(&t.locks.lease("x").run(|l| async move { l.token() }));
}

#[tokio::test]
async fn a_held_lease_excludes_others_until_released() {
    let t = db().await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let b = t.other("b");
    assert!(b.lease(&n).try_acquire().await.unwrap().is_none());
    assert!(t.locks.lease(&n).try_acquire().await.unwrap().is_none());
    assert_eq!(a.name(), n);
    assert_eq!(a.holder(), "test");
    a.release().await.unwrap();
    let l = b
        .lease(&n)
        .try_acquire()
        .await
        .unwrap()
        .expect("free after release");
    assert_eq!(l.holder(), "b");
    l.release().await.unwrap();
}

#[tokio::test]
async fn tokens_increase_across_release_expiry_takeover_and_deletion() {
    let t = db().await;
    let n = name();
    let mut last = 0;
    let mut next = |token: i64| {
        assert!(token > last, "token {token} not above {last}");
        last = token;
    };
    let l = t.locks.lease(&n).try_acquire().await.unwrap().unwrap();
    next(l.token());
    l.release().await.unwrap();

    let l = t.locks.lease(&n).try_acquire().await.unwrap().unwrap();
    next(l.token());
    expire(&t, &n).await;
    let taken = t
        .other("b")
        .lease(&n)
        .try_acquire()
        .await
        .unwrap()
        .expect("expired lease is free");
    next(taken.token());
    l.orphan();

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM \"{}\".leases",
        t.schema
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    taken.orphan();
    let fresh = t.locks.lease(&n).try_acquire().await.unwrap().unwrap();
    next(fresh.token());
    fresh.release().await.unwrap();
}

#[tokio::test]
async fn expiry_is_decided_by_the_database_and_the_old_holder_loses() {
    let t = db().await;
    let table = create_results(&t).await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    fenced_insert(&t, &table, &a).await.unwrap();
    expire(&t, &n).await;
    // Expired but not taken over: the old holder can neither renew nor fence.
    assert!(matches!(a.renew().await, Err(Error::LeaseLost { .. })));
    let b = t
        .other("b")
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let err = fenced_insert(&t, &table, &a).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseLost { ref name, .. } if *name == n),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("token {}", a.token())),
        "{err}"
    );
    fenced_insert(&t, &table, &b).await.unwrap();
    let tokens: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT token FROM {table} ORDER BY id"
    )))
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(tokens, vec![a.token(), b.token()]);
    // The old holder cannot release the new holder's lease.
    assert!(matches!(a.release().await, Err(Error::LeaseLost { .. })));
    assert!(t.locks.lease(&n).try_acquire().await.unwrap().is_none());
    b.release().await.unwrap();
}

#[tokio::test]
async fn fence_holds_off_a_takeover_until_the_fenced_transaction_ends() {
    let t = db().await;
    let table = create_results(&t).await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(Duration::from_millis(100))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let mut tx = t.pool.begin().await.unwrap();
    a.fence(&mut tx).await.unwrap();
    // The holder pauses past its TTL, inside the fenced transaction.
    loop {
        let expired: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT expires_at <= clock_timestamp() FROM \"{}\".leases WHERE name = $1",
            t.schema
        )))
        .bind(&n)
        .fetch_one(&t.pool)
        .await
        .unwrap();
        if expired {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Expired, yet nobody can take it over while the fenced transaction is open.
    let b = t.other("b");
    assert!(b.lease(&n).try_acquire().await.unwrap().is_none());
    let taker = tokio::spawn({
        let n = n.clone();
        async move { b.lease(&n).ttl(LONG).acquire().await }
    });
    assert!(
        t.other("c")
            .lease(&n)
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (token) VALUES ($1)"
    )))
    .bind(a.token())
    .execute(&mut *tx)
    .await
    .unwrap();
    assert!(!taker.is_finished());
    tx.commit().await.unwrap();
    let b_lease = taker.await.unwrap().unwrap();
    assert!(b_lease.token() > a.token());
    fenced_insert(&t, &table, &b_lease).await.unwrap();
    let tokens: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT token FROM {table} ORDER BY committed_at"
    )))
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(
        tokens,
        vec![a.token(), b_lease.token()],
        "fenced writes commit in token order"
    );
    b_lease.release().await.unwrap();
}

#[tokio::test]
async fn fence_function_is_callable_from_plain_sql_inside_a_transaction() {
    let t = db().await;
    let n = name();
    let l = t.locks.lease(&n).try_acquire().await.unwrap().unwrap();
    let call = format!("SELECT \"{}\".fence($1, $2)::text", t.schema);
    let mut tx = t.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(call.clone()))
        .bind(&n)
        .bind(l.token())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = t.pool.begin().await.unwrap();
    let err = sqlx::query(sqlx::AssertSqlSafe(call.clone()))
        .bind(&n)
        .bind(l.token() - 1)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    let db = err.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("PGL01"));
    assert!(db.message().contains(&n), "{}", db.message());
    tx.rollback().await.unwrap();
    // Outside a transaction the row lock would protect nothing: refused.
    let mut conn = t.pool.acquire().await.unwrap();
    let err = l.fence(&mut conn).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "conn", .. }),
        "{err}"
    );
    l.release().await.unwrap();
}

#[tokio::test]
async fn fence_sql_is_the_statement_fence_runs_for_any_connection() {
    let t = db().await;
    let n = name();
    let l = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let sql = t.locks.fence_sql();
    assert_eq!(
        sql,
        format!("SELECT \"{}\".fence($1, $2, $3)::text", t.schema)
    );
    let (pool, n2) = (&t.pool, &n);
    let run = |token: i64| {
        let n = n2.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let r = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .bind("")
                .bind(n)
                .bind(token)
                .execute(&mut *tx)
                .await;
            tx.rollback().await.unwrap();
            r
        }
    };
    run(l.token()).await.unwrap();
    let err = run(l.token() - 1).await.unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("PGL01")
    );
    let token = l.token();
    l.release().await.unwrap();
    let err = run(token).await.unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("PGL01"),
        "released: the token no longer fences"
    );
}

#[tokio::test]
async fn the_holders_own_renewals_and_release_pass_its_fence() {
    let t = db().await;
    let n = name();
    let l = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .keep_alive();
    let mut tx = t.pool.begin().await.unwrap();
    l.fence(&mut tx).await.unwrap();
    let limit = Duration::from_secs(5);
    tokio::time::timeout(limit, l.set_data(json!({"step": 5})))
        .await
        .expect("set_data is not blocked by the fence")
        .unwrap();
    tokio::time::timeout(limit, l.renew())
        .await
        .expect("renew is not blocked by the fence")
        .unwrap();
    // A takeover still waits for the fenced transaction (it skips the row).
    expire(&t, &n).await;
    assert!(
        t.other("b")
            .lease(&n)
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    tx.commit().await.unwrap();
    let b = t
        .other("b")
        .lease(&n)
        .try_acquire()
        .await
        .unwrap()
        .expect("free once the fence ended");
    b.release().await.unwrap();
}

#[tokio::test]
async fn only_the_owner_id_can_renew_release_or_set_data() {
    let t = db().await;
    let n = name();
    let l = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    // pglock's own statements, sent with the right token but another owner
    // id (tokens are sequential, so guessable; owner ids are not), change
    // nothing.
    let sql = t.locks.__statements();
    let stranger = uuid::Uuid::new_v4();
    let payload = format!("{}:{n}", t.schema);
    let run = |q: &str| sqlx::query(sqlx::AssertSqlSafe(q.to_owned()));
    let pool = &t.pool;
    let renewed = run(&sql.lease_renew)
        .bind(vec![""])
        .bind(vec![n.as_str()])
        .bind(vec![l.token()])
        .bind(vec![stranger])
        .bind(vec![60_000i64])
        .execute(pool)
        .await
        .unwrap();
    let data = run(&sql.lease_set_data)
        .bind("")
        .bind(&n)
        .bind(l.token())
        .bind(stranger)
        .bind(json!({"stolen": true}))
        .bind(60_000i64)
        .execute(pool)
        .await
        .unwrap();
    let released = run(&sql.lease_release)
        .bind("")
        .bind(&n)
        .bind(l.token())
        .bind(stranger)
        .bind(&payload)
        .execute(pool)
        .await
        .unwrap();
    for (what, r) in [
        ("renew", renewed),
        ("set data", data),
        ("release", released),
    ] {
        assert_eq!(r.rows_affected(), 0, "{what} acted without the owner id");
    }
    assert!(
        t.other("b")
            .lease(&n)
            .try_acquire()
            .await
            .unwrap()
            .is_none(),
        "still held"
    );
    l.renew().await.unwrap();
    l.set_data(json!({"step": 1})).await.unwrap();
    l.release().await.unwrap();
}

#[tokio::test]
async fn fence_uses_the_statement_clock_not_the_transaction_start() {
    let t = db().await;
    let n = name();
    let l = t
        .locks
        .lease(&n)
        .ttl(Duration::from_millis(200))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    // A transaction that starts while the lease is valid...
    let mut tx = t.pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    // ...and goes on past the expiry (by the database clock).
    let expired = format!(
        "SELECT expires_at <= clock_timestamp() FROM \"{}\".leases WHERE name = $1",
        t.schema
    );
    support::eventually(5, "the lease expires", || async {
        sqlx::query_scalar::<_, bool>(sqlx::AssertSqlSafe(expired.clone()))
            .bind(&n)
            .fetch_one(&t.pool)
            .await
            .unwrap()
    })
    .await;
    // The lease's own deadline (90% of the TTL) has passed too; check the
    // server's verdict through the SQL function, as another language would.
    let call = format!("SELECT \"{}\".fence($1, $2)::text", t.schema);
    let err = sqlx::query(sqlx::AssertSqlSafe(call))
        .bind(&n)
        .bind(l.token())
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("PGL01"),
        "{err}"
    );
}

#[tokio::test]
async fn keep_alive_holds_a_lease_over_many_ttls() {
    let t = db().await;
    let n = name();
    let ttl = Duration::from_millis(300);
    let l = t
        .locks
        .lease(&n)
        .ttl(ttl)
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .keep_alive();
    let other = t.other("b");
    let end = tokio::time::Instant::now() + ttl * 8;
    while tokio::time::Instant::now() < end {
        assert!(other.lease(&n).try_acquire().await.unwrap().is_none());
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
        leases.push(
            t.locks
                .lease(name())
                .ttl(ttl)
                .try_acquire()
                .await
                .unwrap()
                .unwrap()
                .keep_alive(),
        );
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
    let l = t
        .locks
        .lease(&n)
        .ttl(Duration::from_millis(300))
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
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
    let l = t
        .locks
        .lease(name())
        .ttl(Duration::from_millis(200))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let before = tokio::time::Instant::now();
    l.lost().await;
    // The local deadline counts from before the request was sent.
    assert!(before.elapsed() <= Duration::from_millis(200));
    assert!(matches!(l.renew().await, Err(Error::LeaseLost { .. })));
}

#[tokio::test]
async fn a_waiter_wakes_on_release_not_on_expiry() {
    let t = db().await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(Duration::from_secs(600))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let waiter = tokio::spawn({
        let b = t.other("b");
        let n = n.clone();
        // Far shorter than the holder's TTL: only a NOTIFY can wake it in time.
        async move { b.lease(&n).timeout(Duration::from_secs(20)).acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    a.release().await.unwrap();
    let b = waiter.await.unwrap().expect("woken by the release");
    b.release().await.unwrap();
}

#[tokio::test]
async fn a_waiter_takes_over_at_the_holders_expiry() {
    let t = db().await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(Duration::from_millis(400))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let b = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap();
    assert!(b.token() > a.token());
    a.orphan();
    b.release().await.unwrap();
}

#[tokio::test]
async fn acquire_times_out_with_timeout_error() {
    let t = db().await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let err = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_millis(200))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&n));
    a.release().await.unwrap();
}

#[tokio::test]
async fn exclusion_holds_under_contention_with_increasing_tokens() {
    let t = db().await;
    let table = create_results(&t).await;
    let n = name();
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let locks = t.other(&format!("w{w}"));
        let (n, inside, table, pool) = (n.clone(), inside.clone(), table.clone(), t.pool.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let l = locks
                    .lease(&n)
                    .ttl(LONG)
                    .timeout(Duration::from_secs(60))
                    .acquire()
                    .await
                    .unwrap();
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let mut tx = pool.begin().await.unwrap();
                l.fence(&mut tx).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} (token) VALUES ($1)"
                )))
                .bind(l.token())
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                inside.store(false, Ordering::SeqCst);
                l.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let tokens: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT token FROM {table} ORDER BY id"
    )))
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(tokens.len(), 60);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not increasing in commit order: {tokens:?}"
    );
}

#[tokio::test]
async fn request_release_reaches_the_holder() {
    let t = db().await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let heard = tokio::spawn({
        let h = a.handle();
        async move { h.release_requested().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!heard.is_finished());
    assert!(!a.is_release_requested());
    assert_eq!(
        t.other("ops").request_release(&n).await.unwrap(),
        Some(a.token())
    );
    tokio::time::timeout(Duration::from_secs(10), heard)
        .await
        .expect("holder hears it")
        .unwrap();
    assert!(a.is_release_requested(), "the wait records what it heard");
    let rows = t.locks.leases().await.unwrap();
    assert!(rows.iter().any(|r| r.name == n && r.release_requested));
    a.release().await.unwrap();
    assert_eq!(
        t.locks.request_release(&n).await.unwrap(),
        None,
        "nobody holds it now"
    );
    // Asked before the holder listens: it still hears it.
    let b = t
        .locks
        .lease(&n)
        .ttl(LONG)
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    t.locks.request_release(&n).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), b.release_requested())
        .await
        .unwrap();
    b.release().await.unwrap();
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
async fn data_is_visible_kept_for_the_next_holder_and_listed() {
    let t = db().await;
    let n = name();
    let a = t
        .locks
        .lease(&n)
        .data(json!({"step": 0}))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    a.set_data(json!({"step": 1800, "ckpt": "s3://b/1800"}))
        .await
        .unwrap();
    let listed = t.locks.leases().await.unwrap();
    let row = listed.iter().find(|r| r.name == n).unwrap();
    assert!(row.held);
    assert_eq!(row.token, a.token());
    assert_eq!(row.data, Some(json!({"step": 1800, "ckpt": "s3://b/1800"})));
    assert!(row.expires_in.unwrap() > chrono::Duration::zero());
    a.release().await.unwrap();
    let b = t.other("b").lease(&n).try_acquire().await.unwrap().unwrap();
    assert_eq!(b.data(), Some(json!({"step": 1800, "ckpt": "s3://b/1800"})));
    b.release().await.unwrap();
    let row = t
        .locks
        .leases()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.name == n)
        .unwrap();
    assert!(!row.held);
}

#[tokio::test]
async fn dropped_lease_is_released_and_orphaned_lease_is_not() {
    let t = db().await;
    let n = name();
    drop(t.locks.lease(&n).try_acquire().await.unwrap().unwrap());
    let b = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    b.orphan();
    assert!(t.locks.lease(&n).try_acquire().await.unwrap().is_none());
}

#[tokio::test]
async fn bad_input_is_refused_before_any_sql() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let locks = Locks::new(pool);
    let big = json!({ "blob": "x".repeat(70_000) });
    let cases = [
        (locks.lease(""), "lease name"),
        (locks.lease("a\0b"), "lease name"),
        (locks.lease("x".repeat(1025)), "lease name"),
        (locks.lease("ok").ttl(Duration::from_millis(99)), "ttl"),
        (
            locks.lease("ok").ttl(Duration::from_secs(31 * 86400)),
            "ttl",
        ),
        (locks.lease("ok").timeout(Duration::ZERO), "timeout"),
        (locks.lease("ok").holder(""), "holder"),
        (locks.lease("ok").data(big), "data"),
    ];
    for (req, field) in cases {
        for err in [
            req.clone().acquire().await.unwrap_err(),
            req.try_acquire().await.unwrap_err(),
        ] {
            assert!(
                matches!(err, Error::InvalidInput { field: f, .. } if f == field),
                "expected InvalidInput for {field}, got {err}"
            );
        }
    }
    for err in [
        locks.force_release("").await.unwrap_err(),
        locks.request_release("a\0").await.unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                Error::InvalidInput {
                    field: "lease name",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_unmigrated_schema_says_so() {
    let pool = support::pool().await;
    let locks = Locks::builder(pool)
        .schema("never_migrated_here")
        .build()
        .unwrap();
    let err = locks.lease("x").try_acquire().await.unwrap_err();
    assert!(matches!(err, Error::NotMigrated { .. }), "{err}");
    assert!(err.to_string().contains("migrate"), "{err}");
}
