//! Lock-delay: an expired lease or pool item stays with nobody for its
//! delay; a released one is never delayed. Expiry is made with an UPDATE of
//! `expires_at` (no sleeping out TTLs). And the server refuses a TTL that is
//! not above zero.

mod support;

use std::time::Duration;

use pglock::Error;
use sqlx::Row;
use support::{db, expire};

const DELAY: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn an_expired_lease_is_delayed_then_free() {
    let t = db().await;
    let name = unique("delay");
    let first = t
        .locks
        .lease(&name)
        .lock_delay(DELAY)
        .acquire()
        .await
        .unwrap();
    let token = first.token();
    first.orphan();
    expire(&t, "", &name, Duration::from_millis(1)).await;

    let other = t.other("successor");
    assert!(other.lease(&name).try_acquire().await.unwrap().is_none());
    let err = other
        .lease(&name)
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    let info = t.locks.lease_info(&name).await.unwrap().unwrap();
    assert!(!info.held);
    let until = info.delayed_until.expect("delayed_until while delayed");
    let left = until - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(50) && left <= chrono::Duration::seconds(61),
        "{left:?}"
    );

    // The acquire statement tells a waiter how long the delay still runs.
    let row = sqlx::query(sqlx::AssertSqlSafe(
        t.locks.__statements().lease_acquire.clone(),
    ))
    .bind(&name)
    .bind(uuid::Uuid::new_v4())
    .bind("raw")
    .bind(30_000i64)
    .bind(None::<serde_json::Value>)
    .bind(None::<i64>)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert!(!row.get::<bool, _>("acquired"));
    let wait_ms: f64 = row.get("wait_ms");
    assert!(wait_ms > 50_000.0 && wait_ms <= 60_000.0, "{wait_ms}");

    // Once the delay is over, the next holder gets it, with a greater token.
    expire(&t, "", &name, DELAY + Duration::from_millis(1)).await;
    let next = other.lease(&name).try_acquire().await.unwrap().unwrap();
    assert!(next.token() > token);
    let info = t.locks.lease_info(&name).await.unwrap().unwrap();
    assert!(info.held && info.delayed_until.is_none());
    next.release().await.unwrap();
}

#[tokio::test]
async fn a_released_lease_is_never_delayed() {
    let t = db().await;
    let name = unique("delay");
    let first = t
        .locks
        .lease(&name)
        .lock_delay(DELAY)
        .acquire()
        .await
        .unwrap();
    first.release().await.unwrap();
    let info = t.locks.lease_info(&name).await.unwrap().unwrap();
    assert!(info.delayed_until.is_none());
    let next = t
        .other("successor")
        .lease(&name)
        .try_acquire()
        .await
        .unwrap();
    assert!(next.is_some(), "a released lease is free at once");
    next.unwrap().release().await.unwrap();

    // Without a lock-delay an expired lease is free at once.
    let plain = t.locks.lease(&name).acquire().await.unwrap();
    plain.orphan();
    expire(&t, "", &name, Duration::from_millis(1)).await;
    let next = t
        .other("successor")
        .lease(&name)
        .try_acquire()
        .await
        .unwrap();
    assert!(next.is_some(), "no delay by default");
    next.unwrap().release().await.unwrap();
}

#[tokio::test]
async fn an_expired_pool_item_is_delayed_a_released_one_is_not() {
    let t = db().await;
    let pool_name = unique("delay-pool");
    let pool = t.locks.lease_pool(&pool_name);
    pool.add(["only"]).await.unwrap();

    let item = pool.claim().lock_delay(DELAY).acquire().await.unwrap();
    item.release().await.unwrap();
    let other = t.other("successor");
    let again = other.lease_pool(&pool_name).claim().try_acquire().await;
    let again = again.unwrap().expect("a released item is free at once");

    // Claimed with a delay by "successor" and expired: another holder waits.
    again.release().await.unwrap();
    let item = other
        .lease_pool(&pool_name)
        .claim()
        .lock_delay(DELAY)
        .acquire()
        .await
        .unwrap();
    item.orphan();
    expire(&t, &pool_name, "only", Duration::from_millis(1)).await;
    let third = t.other("third");
    assert!(
        third
            .lease_pool(&pool_name)
            .claim()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    // The sticky holder waits the delay out too: its dead process may be
    // the one whose writes are in flight.
    assert!(
        other
            .lease_pool(&pool_name)
            .claim()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    let claimed = sqlx::query(sqlx::AssertSqlSafe(
        t.locks.__statements().pool_takeover.clone(),
    ))
    .bind(&pool_name)
    .bind(uuid::Uuid::new_v4())
    .bind("raw")
    .bind(30_000i64)
    .bind(None::<i32>)
    .bind(None::<i64>)
    .fetch_optional(&t.pool)
    .await
    .unwrap();
    assert!(claimed.is_none());
    let row = sqlx::query(sqlx::AssertSqlSafe(
        t.locks.__statements().pool_wait.clone(),
    ))
    .bind(&pool_name)
    .bind(None::<i32>)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let wait_ms: f64 = row.get("wait_ms");
    assert!(wait_ms > 50_000.0 && wait_ms <= 60_000.0, "{wait_ms}");
    let listed = t.locks.leases().await.unwrap();
    let row = listed
        .iter()
        .find(|l| l.pool.as_deref() == Some(pool_name.as_str()))
        .expect("the expired item is listed");
    assert!(!row.held && row.delayed_until.is_some(), "{row:?}");
    let status = t.locks.lease_pool(&pool_name).status().await.unwrap();
    assert_eq!(
        (status.free, status.held, status.delayed),
        (0, 0, 1),
        "a delayed item is neither free nor held: {status:?}"
    );
    let items = t.locks.lease_pool(&pool_name).items().await.unwrap();
    let until = items[0].delayed_until.expect("delayed_until while delayed");
    assert!(!items[0].held && !items[0].done, "{:?}", items[0]);
    assert_eq!(Some(until), row.delayed_until, "items and leases agree");

    expire(&t, &pool_name, "only", DELAY + Duration::from_millis(1)).await;
    let status = t.locks.lease_pool(&pool_name).status().await.unwrap();
    assert_eq!((status.free, status.delayed), (1, 0), "{status:?}");
    let items = t.locks.lease_pool(&pool_name).items().await.unwrap();
    assert!(items[0].delayed_until.is_none(), "{:?}", items[0]);
    let taken = third.lease_pool(&pool_name).claim().try_acquire().await;
    let taken = taken.unwrap().expect("free once the delay is over");
    taken.release().await.unwrap();
}

#[tokio::test]
async fn a_bad_lock_delay_is_refused_before_any_sql() {
    let t = db().await;
    let err = t
        .locks
        .lease("x")
        .lock_delay(Duration::from_secs(31 * 24 * 3600))
        .try_acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, .. } if *field == "lock_delay"),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_server_refuses_a_ttl_not_above_zero() {
    let t = db().await;
    let ttl = |ms: Option<i64>| {
        let sql = format!("SELECT \"{}\".ttl($1)::text", t.schema);
        let pool = t.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .bind(ms)
                .fetch_one(&pool)
                .await
        }
    };
    assert_eq!(ttl(Some(1500)).await.unwrap(), "00:00:01.5");
    for bad in [Some(0), Some(-1000), None] {
        let err = ttl(bad).await.unwrap_err();
        let code = err.as_database_error().and_then(|d| d.code()).unwrap();
        assert_eq!(code, "22023", "{bad:?}: {err}");
    }

    // Every statement that takes a TTL goes through it: a raw acquire with
    // a negative TTL takes nothing.
    let name = unique("neg-ttl");
    let err = sqlx::query(sqlx::AssertSqlSafe(
        t.locks.__statements().lease_acquire.clone(),
    ))
    .bind(&name)
    .bind(uuid::Uuid::new_v4())
    .bind("raw")
    .bind(-5000i64)
    .bind(None::<serde_json::Value>)
    .bind(None::<i64>)
    .fetch_one(&t.pool)
    .await
    .unwrap_err();
    let code = err.as_database_error().and_then(|d| d.code()).unwrap();
    assert_eq!(code, "22023", "{err}");
    assert!(t.locks.lease_info(&name).await.unwrap().is_none());

    // A renewal and a set-data of a held row (taken raw, to know its owner).
    let owner = uuid::Uuid::new_v4();
    let row = sqlx::query(sqlx::AssertSqlSafe(
        t.locks.__statements().lease_acquire.clone(),
    ))
    .bind(&name)
    .bind(owner)
    .bind("raw")
    .bind(30_000i64)
    .bind(None::<serde_json::Value>)
    .bind(None::<i64>)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert!(row.get::<bool, _>("acquired"));
    let token: i64 = row.get("token");
    for (what, sql) in [
        ("renew", t.locks.__statements().lease_renew.clone()),
        ("set data", t.locks.__statements().lease_set_data.clone()),
    ] {
        let q = sqlx::query(sqlx::AssertSqlSafe(sql));
        let q = if what == "renew" {
            q.bind(vec![String::new()])
                .bind(vec![name.clone()])
                .bind(vec![token])
                .bind(vec![owner])
                .bind(vec![0i64])
        } else {
            q.bind("")
                .bind(&name)
                .bind(token)
                .bind(owner)
                .bind(serde_json::json!(1))
                .bind(-1i64)
        };
        let err = q.fetch_all(&t.pool).await.unwrap_err();
        let code = err.as_database_error().and_then(|d| d.code()).unwrap();
        assert_eq!(code, "22023", "{what}: {err}");
    }
    assert_eq!(t.locks.force_release(&name).await.unwrap(), Some(token));
}
