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
use support::lease::{LONG, held_for, name, waited};
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
    notified_since(t, l).await;
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
    // The release notified, and nothing else did. (An older form of
    // `drain` left its own sentinel unread, so this NOTIFY once seemed to
    // arrive after a later sentinel.)
    let woke = format!("\u{1f}s-{n}");
    assert_eq!(notified_since(&t, &mut l).await, [woke]);
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

/// Every notification of this test's schema sent since the last call (or
/// since the LISTEN), except sentinels: sends a sentinel of its own and
/// reads up to it (notifications arrive in commit order).
async fn notified_since(t: &TestDb, l: &mut PgListener) -> Vec<String> {
    let prefix = format!("{}:", t.schema);
    let mine = format!("sentinel-{}", uuid::Uuid::new_v4());
    sqlx::query("SELECT pg_notify('pglock', $1)")
        .bind(format!("{prefix}{mine}"))
        .execute(&t.pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), l.recv())
            .await
            .expect("the sentinel arrives")
            .unwrap();
        match n.payload().strip_prefix(&prefix) {
            Some(p) if p == mine => return seen,
            Some(p) if p.starts_with("sentinel") => {}
            Some(p) => seen.push(p.to_owned()),
            None => {}
        }
    }
}

type Got = tokio::sync::mpsc::UnboundedSender<(usize, i64)>;

/// A schema with a LISTEN on it, a lease `n` that `t.locks` holds (`a`),
/// and the channel waiters report on (`tx`, `rx`).
type Scene = (
    TestDb,
    PgListener,
    String,
    pglock::Lease,
    Got,
    tokio::sync::mpsc::UnboundedReceiver<(usize, i64)>,
);

async fn scene() -> Scene {
    let t = db().await;
    let l = listener(&t).await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (t, l, n, a, tx, rx)
}
type Kept = tokio::sync::oneshot::Receiver<pglock::Lease>;

/// Spawns waiter `i` of `t.locks` for `n`, and returns once it is queued.
/// Once it holds the lease, it sends its index and the token on `got`,
/// then it releases the lease, or with `keep` sends it on the returned
/// channel instead.
async fn queue_waiter(t: &TestDb, n: &str, i: usize, got: &Got, keep: bool) -> Option<Kept> {
    let queued = t.locks.__queued(n);
    let (kept_tx, kept) = match keep {
        true => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        }
        false => (None, None),
    };
    let (locks, name, got) = (t.locks.clone(), n.to_owned(), got.clone());
    tokio::spawn(async move {
        let l = waited(&locks, &name).await;
        got.send((i, l.token())).unwrap();
        match kept_tx {
            Some(kept) => kept.send(l).unwrap(),
            None => l.release().await.unwrap(),
        }
    });
    eventually(10, &format!("waiter {i} queued"), || async {
        t.locks.__queued(n) == queued + 1
    })
    .await;
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_hands_the_lease_to_a_waiter_of_the_same_locks_without_a_notify() {
    for _ in 0..20 {
        let (t, mut l, n, a, tx, mut rx) = scene().await;
        let kept = queue_waiter(&t, &n, 0, &tx, true).await.unwrap();
        let a_token = a.token();
        a.release().await.unwrap();
        let (_, token) = rx.recv().await.unwrap();
        assert!(token > a_token);
        let b = kept.await.unwrap();
        // The lease went from one holder to the next without being free:
        // nobody else could take it, and no NOTIFY was sent.
        assert_eq!(notified_since(&t, &mut l).await, Vec::<String>::new());
        let info = t.locks.lease_info(&n).await.unwrap().expect("a row");
        assert_eq!((info.token, info.held), (b.token(), true));
        assert!(support::lease::refused(&t.other("c"), &n).await);
        b.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_handed_on_at_most_three_times_in_a_row_then_released_to_everyone() {
    for _ in 0..10 {
        let (t, mut l, n, a, tx, mut rx) = scene().await;
        let mut kept = None;
        for i in 0..5 {
            kept = queue_waiter(&t, &n, i, &tx, i == 4).await;
        }
        let kept = kept.unwrap();
        a.release().await.unwrap();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(rx.recv().await.unwrap());
        }
        let order: Vec<usize> = got.iter().map(|g| g.0).collect();
        assert_eq!(order, [0, 1, 2, 3, 4], "in the order they queued");
        assert!(
            got.windows(2).all(|w| w[1].1 > w[0].1),
            "tokens rise: {got:?}"
        );
        let last = kept.await.unwrap();
        // a -> 0 -> 1 -> 2 were hand-offs; 2's release went to everyone
        // (waiter 3 woke by NOTIFY); 3 -> 4 was a hand-off again.
        assert_eq!(notified_since(&t, &mut l).await, [n.as_str()]);
        last.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requested_release_is_not_handed_to_a_waiter_of_the_same_locks() {
    let (t, mut l, n, a, tx, mut rx) = scene().await;
    let kept = queue_waiter(&t, &n, 0, &tx, true).await.unwrap();
    let asked = t.other("ops").request_release(&n).await.unwrap();
    assert_eq!(asked, Some(a.token()));
    a.release_requested().await;
    assert_eq!(
        notified_since(&t, &mut l).await,
        [n.as_str()],
        "the request"
    );
    a.release().await.unwrap();
    rx.recv().await.unwrap();
    let b = kept.await.unwrap();
    // An ordinary release: it woke every process's waiters.
    assert_eq!(
        notified_since(&t, &mut l).await,
        [n.as_str()],
        "the release"
    );
    b.release().await.unwrap();
}

#[tokio::test]
async fn a_lease_handed_to_a_waiter_that_is_gone_is_released() {
    for _ in 0..10 {
        let t = db().await;
        let n = name();
        let a = held_for(&t.locks, &n, LONG).await;
        let mut waiter = Box::pin(t.locks.lease(&n).ttl(LONG).acquire());
        while t.locks.__queued(&n) == 0 {
            tokio::select! {
                out = &mut waiter => panic!("the waiter got it while held: {out:?}"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        // One poll takes the waiter's offer and starts the hand-off in a
        // task (this runtime has one thread: the task has not run yet).
        let a_token = a.token();
        let mut release = Box::pin(a.release());
        assert!(futures::poll!(&mut release).is_pending());
        drop(waiter);
        release.await.unwrap();
        eventually(10, "the lease is free again", || async {
            let info = t.locks.lease_info(&n).await.unwrap().expect("a row");
            !info.held
        })
        .await;
        // It was handed on (a new token), then released for the gone waiter.
        let info = t.locks.lease_info(&n).await.unwrap().expect("a row");
        assert!(info.token > a_token, "{} after {a_token}", info.token);
        assert!(!support::lease::refused(&t.other("c"), &n).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_lost_its_lease_hands_nothing_on_and_the_waiter_keeps_its_place() {
    let (t, mut l, n, a, tx, mut rx) = scene().await;
    let kept = queue_waiter(&t, &n, 1, &tx, true).await.unwrap();
    let kept2 = queue_waiter(&t, &n, 2, &tx, true).await.unwrap();
    // Taken from `a` behind its back: the first waiter wakes and takes it.
    t.other("ops").force_release(&n).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().0, 1);
    let b1 = kept.await.unwrap();
    assert_eq!(
        notified_since(&t, &mut l).await,
        [n.as_str()],
        "the forced release"
    );
    // `a` no longer holds it: nothing is handed on, and it hears so.
    let err = a.release().await.unwrap_err();
    assert!(matches!(err, pglock::Error::LeaseLost { .. }), "{err}");
    assert!(support::lease::refused(&t.other("c"), &n).await);
    // The second waiter kept its place: the next release hands it on.
    let b1_token = b1.token();
    b1.release().await.unwrap();
    let (i, token) = rx.recv().await.unwrap();
    assert_eq!(i, 2);
    assert!(token > b1_token);
    let b2 = kept2.await.unwrap();
    assert_eq!(notified_since(&t, &mut l).await, Vec::<String>::new());
    b2.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_lease_shared_by_two_handles_is_held_by_one_at_a_time_in_token_order() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let t = db().await;
    let n = name();
    let handles = [t.other("p1"), t.other("p2")];
    let holding = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (p, locks) in handles.iter().enumerate() {
        for w in 0..4 {
            let (locks, n) = (locks.clone(), n.clone());
            let (holding, turns) = (holding.clone(), turns.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    let l = waited(&locks, &n).await;
                    assert_eq!(holding.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    turns.lock().unwrap().push((l.token(), p * 4 + w));
                    tokio::task::yield_now().await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    l.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let turns = turns.lock().unwrap();
    assert_eq!(turns.len(), 200);
    // Tokens rise in the order the holders held it.
    assert!(turns.windows(2).all(|w| w[1].0 > w[0].0), "{turns:?}");
}
