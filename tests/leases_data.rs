//! A lease's data (visible, kept for the next holder, listed) and what a lease
//! request refuses: bad input before any SQL, an unmigrated schema; against a
//! real PostgreSQL.

mod support;

use std::time::Duration;

use pglock::{Error, Locks};
use serde_json::json;
use support::db;
use support::lease::{held, name};

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
    let b = held(&t.other("b"), &n).await;
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

#[tokio::test]
async fn gc_deletes_only_free_plain_leases_and_tokens_keep_rising() {
    let t = db().await;
    let (freed, held, recent) = (name(), name(), name());
    let a = t.locks.lease(&freed).acquire().await.unwrap();
    let mut before = vec![a.token()];
    a.release().await.unwrap();
    let b = t
        .locks
        .lease(&held)
        .ttl(Duration::from_secs(600))
        .acquire()
        .await
        .unwrap();
    before.push(b.token());
    let pool = t.locks.lease_pool("gc-pool");
    pool.add(["done", "free"]).await.unwrap();
    let item = pool.claim().try_acquire().await.unwrap().unwrap();
    before.push(item.token());
    item.complete().await.unwrap();
    let permit = t.locks.semaphore("gc-sem", 2).acquire().await.unwrap();
    before.push(permit.token());
    permit.release().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = t.locks.lease(&recent).acquire().await.unwrap();
    before.push(c.token());
    c.release().await.unwrap();

    // `recent` changed within the last 200 ms: kept; `freed` did not: gone.
    assert_eq!(t.locks.gc(Duration::from_millis(200)).await.unwrap(), 1);
    assert!(t.locks.lease_info(&freed).await.unwrap().is_none());
    assert!(t.locks.lease_info(&recent).await.unwrap().is_some());
    assert!(t.locks.lease_info(&held).await.unwrap().unwrap().held);
    // Pool items (the done one too) and permits stay.
    let status = pool.status().await.unwrap();
    assert_eq!((status.total, status.done, status.free), (2, 1, 1));
    let sem_rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".leases WHERE pool <> '' AND pool <> 'gc-pool'",
        t.schema
    )))
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(sem_rows, 2, "the semaphore keeps both permits");
    assert_eq!(t.locks.gc(Duration::ZERO).await.unwrap(), 1, "now `recent`");

    let again = t.locks.lease(&freed).acquire().await.unwrap();
    let max_before = before.iter().copied().max().unwrap();
    assert!(
        again.token() > max_before,
        "{} > {max_before}",
        again.token()
    );
    again.release().await.unwrap();
    b.release().await.unwrap();
}
