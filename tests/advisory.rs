//! Session and transaction advisory locks against a real PostgreSQL.

mod support;

use std::time::Duration;

use pglock::{AdvisoryGuard, Error, Locks};
use sqlx::Connection;
use support::{advisory_rows, assert_released, db, poll_then_drop, text_key};

fn unique_key() -> String {
    format!("key-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn guards_and_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn assert_send<T: Send + Sync>() {}
    assert_send::<AdvisoryGuard>();
    assert_send::<Locks>();
    let locks = Locks::new(
        sqlx::PgPool::connect_lazy("postgres://x@127.0.0.1:1/x").unwrap_or_else(|_| unreachable!()),
    );
    is_send(&locks.advisory("k").lock());
    is_send(&locks.advisory("k").try_lock());
}

#[tokio::test]
async fn exclusive_lock_excludes_other_holders() {
    let t = db().await;
    let key = unique_key();
    let g = t.locks.advisory(&key).lock().await.unwrap();
    let other = t.other("b");
    assert!(other.advisory(&key).try_lock().await.unwrap().is_none());
    assert!(
        other
            .advisory(&key)
            .shared()
            .try_lock()
            .await
            .unwrap()
            .is_none()
    );
    // The same handle is excluded too: each guard is its own session.
    assert!(t.locks.advisory(&key).try_lock().await.unwrap().is_none());
    g.release().await.unwrap();
    let g2 = other
        .advisory(&key)
        .try_lock()
        .await
        .unwrap()
        .expect("free after release");
    g2.release().await.unwrap();
}

#[tokio::test]
async fn shared_locks_coexist_and_exclude_exclusive() {
    let t = db().await;
    let key = unique_key();
    let a = t.locks.advisory(&key).shared().lock().await.unwrap();
    let b = t
        .locks
        .advisory(&key)
        .shared()
        .try_lock()
        .await
        .unwrap()
        .expect("shared + shared");
    assert!(t.locks.advisory(&key).try_lock().await.unwrap().is_none());
    a.release().await.unwrap();
    assert!(t.locks.advisory(&key).try_lock().await.unwrap().is_none());
    b.release().await.unwrap();
    t.locks
        .advisory(&key)
        .try_lock()
        .await
        .unwrap()
        .expect("free")
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn string_keys_are_hashtextextended_and_exclude_plain_sql() {
    let t = db().await;
    // Wire-stable: the mapping of strings to keys never changes.
    assert_eq!(text_key(&t.pool, "ckpt/run-42").await, -8823199534297203464);

    let key = unique_key();
    let mut raw = sqlx::PgConnection::connect(&support::cluster::shared_url())
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .execute(&mut raw)
        .await
        .unwrap();
    assert!(t.locks.advisory(&key).try_lock().await.unwrap().is_none());
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
        .bind(&key)
        .execute(&mut raw)
        .await
        .unwrap();

    let g = t.locks.advisory(&key).lock().await.unwrap();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&key)
        .fetch_one(&mut raw)
        .await
        .unwrap();
    assert!(!got, "plain SQL must not get a lock pglock holds");
    let rows = advisory_rows(&t.pool, text_key(&t.pool, &key).await).await;
    assert_eq!(rows, vec![(g.pid(), true, "ExclusiveLock".to_owned())]);
    g.release().await.unwrap();
}

#[tokio::test]
async fn integer_keys_are_used_as_is() {
    let t = db().await;
    let key: i64 = -(rand_i64().abs()) - 1; // negative keys use the sign bit of classid
    let g = t.locks.advisory(key).lock().await.unwrap();
    assert_eq!(advisory_rows(&t.pool, key).await.len(), 1);
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert!(!got);
    g.release().await.unwrap();
    assert!(advisory_rows(&t.pool, key).await.is_empty());
}

fn rand_i64() -> i64 {
    let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
    (hi ^ lo) as i64
}

#[tokio::test]
async fn lock_waits_in_the_server_and_gets_the_lock_on_release() {
    let t = db().await;
    let key = unique_key();
    let g = t.locks.advisory(&key).lock().await.unwrap();
    let other = t.other("b");
    let waiter = tokio::spawn({
        let key = key.clone();
        async move { other.advisory(&key).lock().await }
    });
    // The waiter shows in pg_locks as a session waiting in the server.
    let k = text_key(&t.pool, &key).await;
    loop {
        if advisory_rows(&t.pool, k).await.iter().any(|r| !r.1) {
            break;
        }
        tokio::task::yield_now().await;
    }
    g.release().await.unwrap();
    let g2 = waiter.await.unwrap().unwrap();
    assert_eq!(
        advisory_rows(&t.pool, k).await,
        vec![(g2.pid(), true, "ExclusiveLock".into())]
    );
    g2.release().await.unwrap();
}

#[tokio::test]
async fn timeout_gives_timeout_error_and_leaves_nothing_held() {
    let t = db().await;
    let key = unique_key();
    let g = t.locks.advisory(&key).lock().await.unwrap();
    let err = t
        .other("b")
        .advisory(&key)
        .timeout(Duration::from_millis(200))
        .lock()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&key), "{err}");
    g.release().await.unwrap();
    assert_released(&t.pool, text_key(&t.pool, &key).await, 5).await;
}

#[tokio::test]
async fn dropped_guard_releases_promptly() {
    let t = db().await;
    let key = unique_key();
    let g = t.locks.advisory(&key).lock().await.unwrap();
    drop(g);
    // Acquired by the server as soon as the spawned unlock runs.
    let g2 = t
        .other("b")
        .advisory(&key)
        .timeout(Duration::from_secs(1))
        .lock()
        .await
        .unwrap();
    g2.release().await.unwrap();
}

#[tokio::test]
async fn sessions_are_reused_and_never_hold_a_lock_when_idle() {
    let t = db().await;
    let locks = Locks::builder(t.pool.clone())
        .schema(t.schema.clone())
        .max_sessions(2)
        .build()
        .unwrap();
    let keys: Vec<String> = (0..20).map(|_| unique_key()).collect();
    for (i, key) in keys.iter().enumerate() {
        let g = locks.advisory(key).lock().await.unwrap();
        if i % 2 == 0 {
            drop(g);
        } else {
            g.release().await.unwrap();
        }
    }
    // With two sessions, all twenty cycles ran on reused sessions; whatever
    // is idle in pglock's sessions holds no advisory lock.
    for key in &keys {
        assert_released(&t.pool, text_key(&t.pool, key).await, 5).await;
    }
}

#[tokio::test]
async fn holding_locks_does_not_use_the_callers_pool() {
    let t = db().await;
    let small = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&support::cluster::shared_url())
        .await
        .unwrap();
    let locks = Locks::builder(small.clone())
        .schema(t.schema.clone())
        .build()
        .unwrap();
    let a = locks.advisory(unique_key()).lock().await.unwrap();
    let b = locks.advisory(unique_key()).lock().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&small)
        .await
        .unwrap();
    assert_eq!(one, 1);
    a.release().await.unwrap();
    b.release().await.unwrap();
}

#[tokio::test]
async fn max_sessions_bounds_held_locks() {
    let t = db().await;
    let locks = Locks::builder(t.pool.clone())
        .schema(t.schema.clone())
        .max_sessions(1)
        .build()
        .unwrap();
    let a = locks.advisory(unique_key()).lock().await.unwrap();
    let err = locks
        .advisory(unique_key())
        .timeout(Duration::from_millis(100))
        .lock()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    a.release().await.unwrap();
    locks
        .advisory(unique_key())
        .lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn cancelled_lock_leaves_nothing_held() {
    let t = db().await;
    let key = unique_key();
    let k = text_key(&t.pool, &key).await;
    let other = t.other("b");
    // Contended: the lock request reaches the server and waits there.
    for i in 0..12 {
        let holder = t.locks.advisory(&key).lock().await.unwrap();
        let out = poll_then_drop(other.advisory(&key).lock(), i).await;
        assert!(out.is_none(), "lock() cannot succeed while held");
        holder.release().await.unwrap();
        assert_released(&t.pool, k, 5).await;
    }
    // Uncontended: the future may complete; dropped at every point before.
    for i in 0..12 {
        if let Some(guard) = poll_then_drop(other.advisory(&key).lock(), i).await {
            guard.unwrap().release().await.unwrap()
        }
        assert_released(&t.pool, k, 5).await;
    }
    // And the lock is usable afterwards.
    other
        .advisory(&key)
        .try_lock()
        .await
        .unwrap()
        .expect("free")
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn lost_resolves_when_the_session_is_terminated() {
    let t = db().await;
    let key = unique_key();
    let g = t.locks.advisory(&key).lock().await.unwrap();
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(g.pid())
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert!(terminated);
    tokio::time::timeout(Duration::from_secs(10), g.lost())
        .await
        .expect("lost() resolves");
    let err = g.release().await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err}");
    // Another holder can take it.
    t.locks
        .advisory(&key)
        .try_lock()
        .await
        .unwrap()
        .expect("free")
        .release()
        .await
        .unwrap();
}

#[tokio::test]
async fn lost_stays_pending_while_the_lock_is_held() {
    let t = db().await;
    let g = t.locks.advisory(unique_key()).lock().await.unwrap();
    let pending = tokio::time::timeout(Duration::from_millis(1200), g.lost()).await;
    assert!(pending.is_err(), "lost() resolved while the lock was held");
    g.release().await.unwrap();
}

#[tokio::test]
async fn guard_derefs_to_its_session() {
    let t = db().await;
    let mut g = t.locks.advisory(unique_key()).lock().await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *g)
        .await
        .unwrap();
    assert_eq!(pid, g.pid());
    g.release().await.unwrap();
}

#[tokio::test]
async fn transaction_locks_exclude_and_end_with_the_transaction() {
    let t = db().await;
    let key = unique_key();
    let mut tx1 = t.pool.begin().await.unwrap();
    t.locks.advisory(&key).lock_xact(&mut tx1).await.unwrap();
    let mut tx2 = t.pool.begin().await.unwrap();
    assert!(
        !t.locks
            .advisory(&key)
            .try_lock_xact(&mut tx2)
            .await
            .unwrap()
    );
    // A session lock is excluded by the transaction lock too.
    assert!(t.locks.advisory(&key).try_lock().await.unwrap().is_none());
    tx1.commit().await.unwrap();
    assert!(
        t.locks
            .advisory(&key)
            .try_lock_xact(&mut tx2)
            .await
            .unwrap()
    );
    tx2.rollback().await.unwrap();
    assert_released(&t.pool, text_key(&t.pool, &key).await, 5).await;
}

#[tokio::test]
async fn timed_transaction_lock_restores_lock_timeout() {
    let t = db().await;
    let key = unique_key();
    let mut tx = t.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '7s'")
        .execute(&mut *tx)
        .await
        .unwrap();
    t.locks
        .advisory(&key)
        .timeout(Duration::from_millis(300))
        .lock_xact(&mut tx)
        .await
        .unwrap();
    let lt: String = sqlx::query_scalar("SELECT current_setting('lock_timeout')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(lt, "7s");

    let mut tx2 = t.pool.begin().await.unwrap();
    let err = t
        .locks
        .advisory(&key)
        .timeout(Duration::from_millis(100))
        .lock_xact(&mut tx2)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    tx2.rollback().await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_before_any_sql() {
    // No server listens there: reaching SQL would give Error::Database.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let locks = Locks::new(pool);
    let long = "k".repeat(1025);
    let cases: Vec<(&str, pglock::Advisory, &str)> = vec![
        ("empty", locks.advisory(""), "advisory key"),
        ("nul", locks.advisory("a\0b"), "advisory key"),
        ("long", locks.advisory(long.as_str()), "advisory key"),
        (
            "zero timeout",
            locks.advisory("k").timeout(Duration::ZERO),
            "timeout",
        ),
        (
            "huge timeout",
            locks.advisory("k").timeout(Duration::from_secs(90 * 86400)),
            "timeout",
        ),
    ];
    for (what, adv, field) in cases {
        for err in [
            adv.clone().lock().await.unwrap_err(),
            adv.try_lock().await.unwrap_err(),
        ] {
            match err {
                Error::InvalidInput { field: f, ref rule } => {
                    assert_eq!(f, field, "{what}: {err}");
                    assert!(!rule.is_empty());
                }
                other => panic!("{what}: expected InvalidInput, got {other}"),
            }
        }
    }
}

#[tokio::test]
async fn builder_refuses_bad_schema_names() {
    let pool = sqlx::PgPool::connect_lazy("postgres://nobody@127.0.0.1:1/none").unwrap();
    for bad in ["", "a-b", "x\"; DROP TABLE y; --", "9lives", "pg_catalog"] {
        let err = Locks::builder(pool.clone())
            .schema(bad)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::InvalidInput {
                    field: "schema",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
    let err = Locks::builder(pool).max_sessions(0).build().unwrap_err();
    assert!(err.to_string().contains("max_sessions"), "{err}");
}
