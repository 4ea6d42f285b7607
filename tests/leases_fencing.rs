//! Fencing: one holder at a time, tokens that only grow, and a fence that
//! keeps an expired holder's writes out, against a real PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pglock::{Error, LeaseRef};
use serde_json::json;
use support::lease::{LONG, held, held_for, name, refused, waited};
use support::{TestDb, db};

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
async fn a_held_lease_excludes_others_until_released() {
    let t = db().await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    let b = t.other("b");
    assert!(refused(&b, &n).await);
    assert!(refused(&t.locks, &n).await);
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
    let l = held(&t.locks, &n).await;
    next(l.token());
    l.release().await.unwrap();

    let l = held(&t.locks, &n).await;
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
    let fresh = held(&t.locks, &n).await;
    next(fresh.token());
    fresh.release().await.unwrap();
}

#[tokio::test]
async fn expiry_is_decided_by_the_database_and_the_old_holder_loses() {
    let t = db().await;
    let table = create_results(&t).await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    fenced_insert(&t, &table, &a).await.unwrap();
    expire(&t, &n).await;
    // Expired but not taken over: the old holder can neither renew nor fence.
    assert!(matches!(a.renew().await, Err(Error::LeaseLost { .. })));
    let b = held_for(&t.other("b"), &n, LONG).await;
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
    assert!(refused(&t.locks, &n).await);
    b.release().await.unwrap();
}

#[tokio::test]
async fn fence_holds_off_a_takeover_until_the_fenced_transaction_ends() {
    let t = db().await;
    let table = create_results(&t).await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    let mut tx = t.pool.begin().await.unwrap();
    a.fence(&mut tx).await.unwrap();
    // The holder pauses past its TTL, inside the fenced transaction: the
    // expiry moves into the past by the database clock (an UPDATE of
    // expires_at is not blocked by the fence's FOR KEY SHARE).
    expire(&t, &n).await;
    // Expired, yet nobody can take it over while the fenced transaction is open.
    let b = t.other("b");
    assert!(refused(&b, &n).await);
    let taker = tokio::spawn({
        let n = n.clone();
        async move { b.lease(&n).ttl(LONG).acquire().await }
    });
    assert!(refused(&t.other("c"), &n).await);
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
    let l = held(&t.locks, &n).await;
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
async fn the_holders_own_renewals_and_release_pass_its_fence() {
    let t = db().await;
    let n = name();
    let l = held_for(&t.locks, &n, LONG).await.keep_alive();
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
    assert!(refused(&t.other("b"), &n).await);
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
    let l = held_for(&t.locks, &n, LONG).await;
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
    assert!(refused(&t.other("b"), &n).await, "still held");
    l.renew().await.unwrap();
    l.set_data(json!({"step": 1})).await.unwrap();
    l.release().await.unwrap();
}

#[tokio::test]
async fn fence_uses_the_statement_clock_not_the_transaction_start() {
    let t = db().await;
    let n = name();
    let l = held_for(&t.locks, &n, Duration::from_millis(200)).await;
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
                let l = waited(&locks, &n).await;
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
