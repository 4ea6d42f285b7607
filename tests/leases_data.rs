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

/// Data outlives its holder (resume progress), and the listing says whose
/// it is: the token and holder of the acquisition that wrote it.
#[tokio::test]
async fn the_listing_names_the_acquisition_that_wrote_the_data() {
    let t = db().await;
    let n = name();
    let listed = |locks: Locks, n: String| async move {
        locks
            .leases()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.name == n)
            .unwrap()
    };
    let a = t
        .other("gpu-7")
        .lease(&n)
        .data(json!({"gpu": 7}))
        .try_acquire();
    let a = a.await.unwrap().unwrap();
    let row = listed(t.locks.clone(), n.clone()).await;
    assert_eq!(
        (row.data_token, row.data_holder.as_deref()),
        (Some(a.token()), Some("gpu-7"))
    );
    let a_token = a.token();
    a.release().await.unwrap();

    // Taken without data: the payload is the previous holder's, and says so.
    let b = held(&t.other("gpu-2"), &n).await;
    assert_eq!(b.data(), Some(json!({"gpu": 7})));
    let row = listed(t.locks.clone(), n.clone()).await;
    assert_eq!(row.token, b.token());
    assert_eq!(row.holder.as_deref(), Some("gpu-2"));
    assert_eq!(
        (row.data_token, row.data_holder.as_deref()),
        (Some(a_token), Some("gpu-7"))
    );

    // Written by this holder: now it is the latest acquisition's.
    b.set_data(json!({"gpu": 2})).await.unwrap();
    let row = listed(t.locks.clone(), n.clone()).await;
    assert_eq!(
        (row.data_token, row.data_holder.as_deref()),
        (Some(b.token()), Some("gpu-2"))
    );
    b.release().await.unwrap();

    // Acquired with data after a takeover of an expired holder: its own.
    let c = held(&t.other("gpu-3"), &n).await;
    c.orphan();
    support::expire(&t, "", &n, Duration::from_millis(1)).await;
    let d = t
        .other("gpu-4")
        .lease(&n)
        .data(json!({"fresh": true}))
        .try_acquire();
    let d = d.await.unwrap().expect("an expired lease is taken over");
    let row = listed(t.locks.clone(), n.clone()).await;
    assert_eq!(row.data, Some(json!({"fresh": true})));
    assert_eq!(
        (row.data_token, row.data_holder.as_deref()),
        (Some(d.token()), Some("gpu-4"))
    );
    d.release().await.unwrap();
}

/// A pool item's progress carries from claim to claim, with its writer.
#[tokio::test]
async fn a_pool_items_data_names_the_claim_that_wrote_it() {
    let t = db().await;
    let pool = t.locks.lease_pool(name());
    pool.add(["trial-1"]).await.unwrap();
    let first = t
        .other("worker-0")
        .lease_pool(pool.name())
        .claim()
        .try_acquire();
    let first = first.await.unwrap().unwrap();
    first.set_data(json!({"step": 3})).await.unwrap();
    let first_token = first.token();
    first.release().await.unwrap();
    let second = t
        .other("worker-1")
        .lease_pool(pool.name())
        .claim()
        .try_acquire();
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.data(), Some(json!({"step": 3})));
    let items = pool.items().await.unwrap();
    let item = items.iter().find(|i| i.name == "trial-1").unwrap();
    assert_eq!(item.token, second.token());
    assert_eq!(
        (item.data_token, item.data_holder.as_deref()),
        (Some(first_token), Some("worker-0"))
    );
    second.release().await.unwrap();
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
