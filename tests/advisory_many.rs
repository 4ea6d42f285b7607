//! Many advisory locks on a few shared sessions
//! (`LocksBuilder::advisory_sessions`), against a real PostgreSQL.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pglock::{Error, Locks};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use support::{advisory_rows, assert_released, eventually, poll_then_drop, pool, text_key};

/// A handle whose connections carry `application_name = app`, with `n`
/// shared advisory sessions.
fn mux_locks(pool: &PgPool, app: &str, n: u32) -> Locks {
    let options = (*pool.connect_options()).clone().application_name(app);
    let tagged = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options);
    Locks::builder(tagged)
        .schema(format!("s_{}", app.replace('-', "_")))
        .advisory_sessions(n)
        .build()
        .unwrap()
}

/// `key` is held elsewhere as `locks` sees it: `try_lock` gets nothing and
/// a `lock` with a 200 ms timeout times out.
async fn assert_excluded(locks: &Locks, key: i64) {
    assert!(locks.advisory(key).try_lock().await.unwrap().is_none());
    let err = locks
        .advisory(key)
        .timeout(Duration::from_millis(200))
        .lock()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

fn app() -> String {
    format!("mux-{}", uuid::Uuid::new_v4().simple())
}

/// A key range of this test's own on the shared server.
fn base() -> i64 {
    (uuid::Uuid::new_v4().as_u128() as i64 & 0x0fff_ffff) << 20
}

/// Advisory locks held by sessions of `app`: (locks, distinct sessions).
async fn held_by_app(pool: &PgPool, app: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT l.pid) FROM pg_locks l \
         JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn sessions_of_app(pool: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn ten_thousand_locks_are_held_on_at_most_four_sessions_and_all_released_after_drop() {
    let pool = pool().await;
    let app = app();
    let locks = mux_locks(&pool, &app, 4);
    let base = base();
    let t0 = std::time::Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..40i64 {
        let l = locks.clone();
        tasks.push(tokio::spawn(async move {
            let mut guards = Vec::new();
            for i in 0..250i64 {
                let key = base + chunk * 250 + i;
                // Half with try_lock, half with lock of a free key: both go
                // onto the shared sessions.
                let g = if i % 2 == 0 {
                    l.advisory(key).try_lock().await.unwrap().expect("free key")
                } else {
                    l.advisory(key).lock().await.unwrap()
                };
                guards.push(g);
            }
            guards
        }));
    }
    let mut guards = Vec::new();
    for t in tasks {
        guards.extend(t.await.unwrap());
    }
    assert_eq!(guards.len(), 10_000);
    let (held, sessions) = held_by_app(&pool, &app).await;
    assert_eq!(held, 10_000, "every lock granted in pg_locks");
    assert!(sessions <= 4, "held on {sessions} sessions");
    let open = sessions_of_app(&pool, &app).await;
    assert!(open <= 4, "{open} server sessions of this handle");
    // Each is still exclusive against another process.
    let other = Locks::new(pool.clone());
    for k in [base, base + 4_999, base + 9_999] {
        assert!(other.advisory(k).try_lock().await.unwrap().is_none());
    }
    println!("10,000 taken in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    drop(guards);
    eventually(60, "all 10,000 unlocked", || async {
        held_by_app(&pool, &app).await.0 == 0
    })
    .await;
    println!("10,000 released in {:?}", t0.elapsed());
    // The shared sessions stay open for reuse, and are closed with the
    // handle.
    drop(locks);
    eventually(10, "shared sessions closed with the handle", || async {
        sessions_of_app(&pool, &app).await == 0
    })
    .await;
}

#[tokio::test]
async fn tasks_of_one_process_exclude_each_other_on_a_multiplexed_key() {
    let pool = pool().await;
    let locks = mux_locks(&pool, &app(), 2);
    let key = base();
    let first = locks.advisory(key).lock().await.unwrap();
    assert_excluded(&locks, key).await;
    let l = locks.clone();
    let second = tokio::spawn(async move { l.advisory(key).lock().await });
    first.release().await.unwrap();
    let second = second.await.unwrap().unwrap();
    assert_eq!(advisory_rows(&pool, key).await.len(), 1);
    second.release().await.unwrap();
    assert_released(&pool, key, 5).await;

    // A read-modify-write under the lock, from 8 tasks: no update is lost.
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (l, c) = (locks.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let g = if i % 2 == 0 {
                    l.advisory(key).lock().await.unwrap()
                } else {
                    loop {
                        if let Some(g) = l.advisory(key).try_lock().await.unwrap() {
                            break g;
                        }
                        tokio::task::yield_now().await;
                    }
                };
                let v = c.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                c.store(v + 1, Ordering::SeqCst);
                if i % 3 == 0 {
                    drop(g);
                } else {
                    g.release().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 160);
    assert_released(&pool, key, 5).await;
}

#[tokio::test]
async fn a_key_named_as_text_and_as_its_hash_is_still_exclusive_in_one_process() {
    let pool = pool().await;
    // One shared session: both names land on it.
    let locks = mux_locks(&pool, &app(), 1);
    let name = format!("alias-{}", uuid::Uuid::new_v4());
    let numeric = text_key(&pool, &name).await;
    let g = locks.advisory(&name).try_lock().await.unwrap().unwrap();
    assert_excluded(&locks, numeric).await;
    g.release().await.unwrap();
    assert_released(&pool, numeric, 5).await;
    let g = locks.advisory(numeric).try_lock().await.unwrap().unwrap();
    g.release().await.unwrap();
    assert_released(&pool, numeric, 5).await;
}

#[tokio::test]
async fn shared_holders_of_one_process_share_and_exclude_exclusive() {
    let pool = pool().await;
    let locks = mux_locks(&pool, &app(), 2);
    let key = base();
    let a = locks.advisory(key).shared().lock().await.unwrap();
    let b = locks
        .advisory(key)
        .shared()
        .try_lock()
        .await
        .unwrap()
        .unwrap();
    assert!(a.is_shared() && b.is_shared());
    assert!(locks.advisory(key).try_lock().await.unwrap().is_none());
    let other = Locks::new(pool.clone());
    assert!(other.advisory(key).try_lock().await.unwrap().is_none());
    let c = other
        .advisory(key)
        .shared()
        .try_lock()
        .await
        .unwrap()
        .unwrap();
    drop(c);
    a.release().await.unwrap();
    // Still held shared by `b` on the server.
    assert!(other.advisory(key).try_lock().await.unwrap().is_none());
    b.release().await.unwrap();
    assert_released(&pool, key, 5).await;
    let x = locks.advisory(key).try_lock().await.unwrap().unwrap();
    x.release().await.unwrap();
}

#[tokio::test]
async fn another_process_is_excluded_and_a_blocked_lock_waits_on_a_dedicated_session() {
    let pool = pool().await;
    let app = app();
    let locks = mux_locks(&pool, &app, 2);
    let other = Locks::new(pool.clone());
    let key = base();
    let g = locks.advisory(key).lock().await.unwrap();
    assert_excluded(&other, key).await;
    g.release().await.unwrap();
    let theirs = other.advisory(key).lock().await.unwrap();
    // Held by the other process: try_lock says so, lock waits in the server.
    assert!(locks.advisory(key).try_lock().await.unwrap().is_none());
    let l = locks.clone();
    let waiter = tokio::spawn(async move { l.advisory(key).lock().await });
    eventually(5, "the waiter waits in pg_locks", || async {
        advisory_rows(&pool, key).await.iter().any(|r| !r.1)
    })
    .await;
    // A second local task queues in the process, not in the server.
    let l = locks.clone();
    let local_waiter = tokio::spawn(async move { l.advisory(key).lock().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(advisory_rows(&pool, key).await.len(), 2);
    theirs.release().await.unwrap();
    let mine = waiter.await.unwrap().unwrap();
    let rows = advisory_rows(&pool, key).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].1);
    assert!(other.advisory(key).try_lock().await.unwrap().is_none());
    drop(mine);
    let next = local_waiter.await.unwrap().unwrap();
    next.release().await.unwrap();
    assert_released(&pool, key, 5).await;
}

#[tokio::test]
async fn killing_a_shared_session_makes_lost_resolve_for_every_guard_on_it() {
    let pool = pool().await;
    let app = app();
    let locks = mux_locks(&pool, &app, 2);
    let base = base();
    let mut guards = Vec::new();
    for i in 0..60 {
        guards.push(locks.advisory(base + i).try_lock().await.unwrap().unwrap());
    }
    let victim = guards[0].pid();
    let (on_victim, others): (Vec<_>, Vec<_>) = guards.into_iter().partition(|g| g.pid() == victim);
    assert!(
        !on_victim.is_empty() && !others.is_empty(),
        "both sessions used"
    );
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(victim)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(killed);
    let all_lost = futures::future::join_all(on_victim.iter().map(|g| g.lost()));
    tokio::time::timeout(Duration::from_secs(10), all_lost)
        .await
        .expect("lost() resolves for every guard on the killed session");
    // The other session's locks are still held.
    let (held, sessions) = held_by_app(&pool, &app).await;
    assert_eq!((held, sessions), (others.len() as i64, 1));
    // New keys are taken at once, those of the dead session on a new one
    // (the chance that 20 keys all go to the survivor is 2^-20).
    let survivor = others[0].pid();
    let mut fresh = Vec::new();
    for i in 100..120 {
        fresh.push(locks.advisory(base + i).try_lock().await.unwrap().unwrap());
    }
    assert!(fresh.iter().all(|g| g.pid() != victim));
    assert!(
        fresh.iter().any(|g| g.pid() != survivor),
        "a new shared session"
    );
    drop(fresh);
    for g in on_victim {
        let err = g.release().await.unwrap_err();
        assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    }
    // The keys of the dead session are free, and taken again on a new one.
    let g = locks.advisory(base).try_lock().await.unwrap().unwrap();
    assert_ne!(g.pid(), victim);
    g.release().await.unwrap();
    for g in others {
        g.release().await.unwrap();
    }
    eventually(5, "nothing held", || async {
        held_by_app(&pool, &app).await.0 == 0
    })
    .await;
}

#[tokio::test]
async fn a_cancelled_acquire_leaves_nothing_held() {
    let pool = pool().await;
    let app = app();
    let locks = mux_locks(&pool, &app, 2);
    let base = base();
    for polls in 0..30 {
        let key = base + polls as i64;
        let got = poll_then_drop(locks.advisory(key).lock(), polls).await;
        drop(got);
        let got = poll_then_drop(locks.advisory(key).try_lock(), polls).await;
        drop(got);
        // Also cancelled while waiting in the process for a local holder.
        let holder = locks.advisory(key).lock().await.unwrap();
        let got = poll_then_drop(locks.advisory(key).lock(), polls).await;
        assert!(got.is_none(), "cannot get a held key");
        holder.release().await.unwrap();
        assert_released(&pool, key, 5).await;
        let g = locks.advisory(key).try_lock().await.unwrap();
        assert!(g.is_some(), "free again after cancel at poll {polls}");
        drop(g);
        assert_released(&pool, key, 5).await;
    }
    eventually(5, "nothing held", || async {
        held_by_app(&pool, &app).await.0 == 0
    })
    .await;
}

#[tokio::test]
async fn a_multiplexed_guard_lends_no_session() {
    let pool = pool().await;
    let locks = mux_locks(&pool, &app(), 1);
    let key = base();
    let g = locks.advisory(key).try_lock().await.unwrap().unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = &*g;
    }));
    assert!(panicked.is_err());
    g.release().await.unwrap();
    assert_released(&pool, key, 5).await;
}

#[tokio::test]
async fn advisory_sessions_is_checked() {
    let pool = pool().await;
    for (n, max) in [(16, 16), (65, 100)] {
        let err = Locks::builder(pool.clone())
            .max_sessions(max)
            .advisory_sessions(n)
            .build()
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput { field, .. } if *field == "advisory_sessions"),
            "{err:?}"
        );
    }
    assert!(
        Locks::builder(pool)
            .max_sessions(16)
            .advisory_sessions(15)
            .build()
            .is_ok()
    );
}
