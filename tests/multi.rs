//! Sets of advisory locks and leases: all or none, canonical order, no
//! deadlock between overlapping sets, nothing held after a failure.

mod support;

use std::time::Duration;

use pglock::{AdvisoryKey, Error, Locks};
use support::{assert_released, db, poll_then_drop, text_key};
use tokio::time::Instant;

#[tokio::test]
async fn an_advisory_set_excludes_every_key_and_drop_releases_all() {
    let t = db().await;
    let other = t.other("other");
    let set = t
        .locks
        .advisory_all(["mem/a", "mem/b", "mem/c"])
        .lock()
        .await
        .unwrap();
    assert_eq!(set.numeric_keys().len(), 3);
    for k in ["mem/a", "mem/b", "mem/c"] {
        assert!(
            other.advisory(k).try_lock().await.unwrap().is_none(),
            "{k} not excluded"
        );
    }
    // All three on one session.
    let pid = set.pid();
    for k in ["mem/a", "mem/b", "mem/c"] {
        let rows = support::advisory_rows(&t.pool, text_key(&t.pool, k).await).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, pid);
    }
    drop(set);
    for k in ["mem/a", "mem/b", "mem/c"] {
        assert_released(&t.pool, text_key(&t.pool, k).await, 5).await;
    }
    let again = other.advisory_all(["mem/c", "mem/a"]).lock().await.unwrap();
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_set_is_taken_in_ascending_numeric_key_order_each_key_once() {
    let t = db().await;
    let x = text_key(&t.pool, "x").await;
    let set = t
        .locks
        .advisory_all([
            AdvisoryKey::from("x"),
            AdvisoryKey::from("y"),
            AdvisoryKey::from("x"),
            AdvisoryKey::Int(x), // the same lock as "x"
            AdvisoryKey::Int(7),
        ])
        .lock()
        .await
        .unwrap();
    let mut expected = vec![x, text_key(&t.pool, "y").await, 7];
    expected.sort_unstable();
    assert_eq!(set.numeric_keys(), expected.as_slice());
    set.release().await.unwrap();
    assert_released(&t.pool, x, 5).await;
}

#[tokio::test]
async fn a_timed_out_set_leaves_nothing_held() {
    let t = db().await;
    let other = t.other("other");
    let held = other.advisory("set/b").lock().await.unwrap();
    let started = Instant::now();
    let err = t
        .locks
        .advisory_all(["set/a", "set/b", "set/c"])
        .timeout(Duration::from_millis(300))
        .lock()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    for k in ["set/a", "set/c"] {
        assert_released(&t.pool, text_key(&t.pool, k).await, 5).await;
    }
    held.release().await.unwrap();
    assert_released(&t.pool, text_key(&t.pool, "set/b").await, 5).await;
}

#[tokio::test]
async fn a_cancelled_set_leaves_nothing_held() {
    let t = db().await;
    let other = t.other("other");
    let keys: Vec<i64> =
        futures::future::join_all(["c/a", "c/b", "c/c", "c/d"].map(|k| text_key(&t.pool, k))).await;
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    // The highest key is held elsewhere: the set takes the others first, then waits.
    let blocker = other.advisory(sorted[3]).lock().await.unwrap();
    for polls in 0..30 {
        let out = poll_then_drop(
            t.locks.advisory_all(["c/a", "c/b", "c/c", "c/d"]).lock(),
            polls,
        )
        .await;
        assert!(out.is_none(), "the set cannot complete while a key is held");
        for k in &sorted[..3] {
            assert_released(&t.pool, *k, 5).await;
        }
    }
    blocker.release().await.unwrap();
    for k in &sorted {
        assert_released(&t.pool, *k, 5).await;
    }
}

#[tokio::test]
async fn bad_sets_are_refused_before_any_sql() {
    let t = db().await;
    let none: [&str; 0] = [];
    let err = t.locks.advisory_all(none).lock().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "advisory keys",
                ..
            }
        ),
        "{err:?}"
    );
    let err = t.locks.advisory_all(["a", ""]).lock().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "advisory key",
                ..
            }
        ),
        "{err:?}"
    );
    let err = t.locks.lease_all(none).acquire().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "lease names",
                ..
            }
        ),
        "{err:?}"
    );
    let err = t
        .locks
        .lease_all(["a"])
        .ttl(Duration::ZERO)
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "ttl", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_lease_set_fences_every_token_in_one_statement() {
    let t = db().await;
    let set = t
        .locks
        .lease_all(["shard-7", "shard-1", "shard-7"])
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let names: Vec<&str> = set.leases().iter().map(|l| l.name()).collect();
    assert_eq!(names, ["shard-1", "shard-7"]);
    let tokens = set.tokens();
    assert!(tokens[0] < tokens[1], "taken in name order: {tokens:?}");

    let mut tx = t.pool.begin().await.unwrap();
    set.fence(&mut tx).await.unwrap();
    tx.commit().await.unwrap();

    assert!(t.locks.force_release("shard-7").await.unwrap().is_some());
    let mut tx = t.pool.begin().await.unwrap();
    let err = set.fence(&mut tx).await.unwrap_err();
    match err {
        Error::LeaseLost { name, token } => {
            assert_eq!(name, "shard-7");
            assert_eq!(token, tokens[1]);
        }
        other => panic!("{other:?}"),
    }
    tx.rollback().await.unwrap();
    let _ = set.release().await;
}

#[tokio::test]
async fn a_timed_out_lease_set_releases_what_it_took() {
    let t = db().await;
    let other = t.other("other");
    let held = other.lease("l-2").acquire().await.unwrap();
    let err = t
        .locks
        .lease_all(["l-1", "l-2", "l-3"])
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // l-1 was taken first and is given back (in the background).
    support::eventually(5, "l-1 released", || async {
        match other.lease("l-1").try_acquire().await.unwrap() {
            Some(l) => {
                l.release().await.unwrap();
                true
            }
            None => false,
        }
    })
    .await;
    assert!(other.lease("l-3").try_acquire().await.unwrap().is_some());
    held.release().await.unwrap();
}

/// How long the stress run lasts, in each process.
const STRESS_SECS: u64 = 5;
/// Tasks per process.
const STRESS_TASKS: usize = 8;
/// Keys `stress/0` … `stress/9`.
const STRESS_KEYS: u32 = 10;

/// Many tasks in two OS processes lock random overlapping subsets of 10
/// keys for a bounded time. Each holder bumps a counter per key in a shared
/// table and must see 1 (nobody else holds that key); a set that cannot be
/// taken within 20 s counts as a deadlock. Afterwards nothing is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_overlapping_sets_in_two_processes_exclude_and_never_deadlock() {
    let t = db().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {s}.stress_holders (k int PRIMARY KEY, n int NOT NULL DEFAULT 0); \
         INSERT INTO {s}.stress_holders (k) SELECT generate_series(0, {last})",
        s = t.schema,
        last = STRESS_KEYS - 1
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stress_worker",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("DATABASE_URL", support::cluster::shared_url())
        .env("PGLOCK_STRESS_SCHEMA", &t.schema)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mine = stress(&t.locks, &t.pool, &t.schema).await;
    let out = child.wait_with_output().await.unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stress child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("STRESS ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no STRESS line from the child: {stdout}"));
    let theirs = Outcome::parse(line);
    let total = mine.acquisitions + theirs.acquisitions;
    println!(
        "multi-acquire stress: 2 processes x {STRESS_TASKS} tasks, {STRESS_KEYS} keys, {:.1}s: \
         {total} sets ({} + {}), {:.0} sets/s, max wait {} ms (here) / {} ms (child), 0 deadlocks",
        elapsed.as_secs_f64(),
        mine.acquisitions,
        theirs.acquisitions,
        total as f64 / elapsed.as_secs_f64(),
        mine.max_wait_ms,
        theirs.max_wait_ms,
    );
    assert!(mine.acquisitions > 0 && theirs.acquisitions > 0);
    for k in 0..STRESS_KEYS {
        assert_released(&t.pool, text_key(&t.pool, &format!("stress/{k}")).await, 5).await;
    }
    let busy: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.stress_holders WHERE n <> 0",
        t.schema
    )))
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(busy, 0);
}

/// The second process of the stress test (run by it, not on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of random_overlapping_sets_in_two_processes_exclude_and_never_deadlock"]
async fn stress_worker() {
    let schema = std::env::var("PGLOCK_STRESS_SCHEMA").expect("run by the stress test");
    let pool = support::pool().await;
    let locks = Locks::builder(pool.clone())
        .schema(schema.clone())
        .holder("stress-child")
        .build()
        .unwrap();
    let o = stress(&locks, &pool, &schema).await;
    println!("STRESS {} {}", o.acquisitions, o.max_wait_ms);
}

struct Outcome {
    acquisitions: u64,
    max_wait_ms: u64,
}

impl Outcome {
    fn parse(line: &str) -> Outcome {
        let mut f = line.split_whitespace().map(|n| n.parse().unwrap());
        Outcome {
            acquisitions: f.next().unwrap(),
            max_wait_ms: f.next().unwrap(),
        }
    }
}

/// Runs [`STRESS_TASKS`] tasks for [`STRESS_SECS`]; panics on a violation
/// of exclusion, a deadlock (a set not taken within 20 s) or any error.
async fn stress(locks: &Locks, pool: &sqlx::PgPool, schema: &str) -> Outcome {
    let until = Instant::now() + Duration::from_secs(STRESS_SECS);
    let bump =
        format!("UPDATE {schema}.stress_holders SET n = n + 1 WHERE k = ANY($1) RETURNING k, n");
    let unbump = format!("UPDATE {schema}.stress_holders SET n = n - 1 WHERE k = ANY($1)");
    let tasks = (0..STRESS_TASKS).map(|_| {
        let (locks, pool, bump, unbump) =
            (locks.clone(), pool.clone(), bump.clone(), unbump.clone());
        tokio::spawn(async move {
            let (mut n, mut max_wait) = (0u64, Duration::ZERO);
            while Instant::now() < until {
                let subset = random_subset();
                let names: Vec<String> = subset.iter().map(|k| format!("stress/{k}")).collect();
                let asked = Instant::now();
                let set = match locks
                    .advisory_all(&names)
                    .timeout(Duration::from_secs(20))
                    .lock()
                    .await
                {
                    Ok(s) => s,
                    Err(e) => panic!("set {names:?} not taken (deadlock?): {e}"),
                };
                max_wait = max_wait.max(asked.elapsed());
                let rows: Vec<(i32, i32)> = sqlx::query_as(sqlx::AssertSqlSafe(bump.as_str()))
                    .bind(&subset)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                assert_eq!(rows.len(), subset.len());
                for (k, holders) in rows {
                    assert_eq!(holders, 1, "key stress/{k} held by {holders} at once");
                }
                tokio::task::yield_now().await;
                sqlx::query(sqlx::AssertSqlSafe(unbump.as_str()))
                    .bind(&subset)
                    .execute(&pool)
                    .await
                    .unwrap();
                set.release().await.unwrap();
                n += 1;
            }
            (n, max_wait)
        })
    });
    let results = futures::future::join_all(tasks).await;
    let mut o = Outcome {
        acquisitions: 0,
        max_wait_ms: 0,
    };
    for r in results {
        let (n, w) = r.expect("stress task panicked");
        o.acquisitions += n;
        o.max_wait_ms = o.max_wait_ms.max(w.as_millis() as u64);
    }
    o
}

/// 1 to 4 distinct keys out of [`STRESS_KEYS`], in random order (the set
/// sorts them itself).
fn random_subset() -> Vec<i32> {
    let r = uuid::Uuid::new_v4().as_u128();
    let size = 1 + (r % 4) as usize;
    let mut keys: Vec<i32> = Vec::new();
    let mut bits = r >> 8;
    while keys.len() < size {
        let k = (bits % STRESS_KEYS as u128) as i32;
        bits /= STRESS_KEYS as u128;
        if !keys.contains(&k) {
            keys.push(k);
        }
        if bits == 0 {
            bits = uuid::Uuid::new_v4().as_u128();
        }
    }
    keys
}
