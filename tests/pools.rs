//! Lease pools, semaphores and rate limiters against a real PostgreSQL.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pglock::{Error, Locks};
use serde_json::json;
use sqlx::Row;
use support::{TestDb, db};

fn pool_name() -> String {
    format!("pool-{}", uuid::Uuid::new_v4())
}

async fn exec(t: &TestDb, sql: String) {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&t.pool)
        .await
        .unwrap();
}

/// A new pool of `items` items named `shard-<i>`.
async fn pool_of(t: &TestDb, items: usize) -> String {
    let name = pool_name();
    t.locks
        .lease_pool(&name)
        .add((0..items).map(|i| format!("shard-{i}")))
        .await
        .unwrap();
    name
}

/// A claim that must find an item now.
async fn claim_now(locks: &Locks, pool: &str) -> pglock::PoolLease {
    let item = locks.lease_pool(pool).claim().try_acquire().await.unwrap();
    item.expect("a claimable item")
}

/// Makes pool item `item`'s lease expired, as if its holder died.
async fn expire(t: &TestDb, pool: &str, item: &str) {
    let sql = format!(
        "UPDATE \"{}\".leases SET expires_at = clock_timestamp() - interval '1 s' \
          WHERE pool = '{pool}' AND name = '{item}'",
        t.schema
    );
    exec(t, sql).await;
}

#[tokio::test]
async fn pool_semaphore_and_rate_limiter_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let t = db().await;
    send(&t.locks.lease_pool("p").claim().acquire());
    send(&t.locks.lease_pool("p").claim().try_acquire());
    send(&t.locks.lease_pool("p").add(["a"]));
    send(&t.locks.semaphore("s", 2).acquire());
    let limiter = t.locks.rate_limiter("r", 1, Duration::from_secs(1));
    send(&limiter.acquire());
}

#[tokio::test]
async fn every_item_is_completed_exactly_once_by_competing_workers() {
    let t = db().await;
    let name = pool_name();
    exec(
        &t,
        format!(
            "CREATE TABLE \"{}\".results (item text, token bigint)",
            t.schema
        ),
    )
    .await;
    let items: Vec<String> = (0..600).map(|i| format!("item-{i:04}")).collect();
    // Items arrive in three batches while the workers run.
    let pool = t.locks.lease_pool(&name);
    assert_eq!(pool.add(items[..200].to_vec()).await.unwrap(), 200);
    let mut workers = Vec::new();
    for w in 0..6 {
        let locks = t.other(&format!("w{w}"));
        let (name, table, db) = (
            name.clone(),
            format!("\"{}\".results", t.schema),
            t.pool.clone(),
        );
        workers.push(tokio::spawn(async move {
            let pool = locks.lease_pool(&name);
            let mut n = 0;
            let mut idle = 0;
            loop {
                let Some(lease) = pool
                    .claim()
                    .ttl(Duration::from_secs(60))
                    .try_acquire()
                    .await
                    .unwrap()
                else {
                    // Drained for now; more items may still come.
                    idle += 1;
                    if idle > 200 {
                        return n;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                idle = 0;
                let mut tx = db.begin().await.unwrap();
                lease.fence(&mut tx).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {table} VALUES ($1, $2)"
                )))
                .bind(lease.name())
                .bind(lease.token())
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
                lease.complete().await.unwrap();
                n += 1;
            }
        }));
    }
    assert_eq!(pool.add(items[200..400].to_vec()).await.unwrap(), 200);
    assert_eq!(
        pool.add(items.clone()).await.unwrap(),
        200,
        "only the last 200 are new"
    );
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert_eq!(total, 600);
    let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT item, token FROM \"{}\".results",
        t.schema
    )))
    .fetch_all(&t.pool)
    .await
    .unwrap();
    let distinct: HashSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(rows.len(), 600);
    assert_eq!(distinct.len(), 600, "an item was completed twice");
    let status = pool.status().await.unwrap();
    assert_eq!(
        (status.total, status.free, status.held, status.done),
        (600, 0, 0, 600)
    );
    // The claims moved the free floor up past the first items (where the
    // adds left it): later claims skip the dead entries.
    let (floor, first): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT free_floor, (SELECT min(seq) FROM \"{0}\".leases WHERE pool = $1)
           FROM \"{0}\".pools WHERE name = $1",
        t.schema
    )))
    .bind(&name)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert!(floor > first, "floor {floor} never raised above {first}");
    // Done items are never handed out again, and the pool says it is drained.
    assert!(pool.claim().try_acquire().await.unwrap().is_none());
    let err = pool.claim().acquire().await.unwrap_err();
    assert!(matches!(err, Error::PoolDrained { .. }), "{err}");
}

#[tokio::test]
async fn an_added_item_is_claimable_whatever_the_floor_was() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    pool.add(["first"]).await.unwrap();
    // A floor far above every item (as a concurrent raise could leave it):
    // an add must bring it back down to the new items.
    exec(
        &t,
        format!(
            "UPDATE \"{}\".pools SET free_floor = 9000000000000 WHERE name = '{name}'",
            t.schema
        ),
    )
    .await;
    pool.add(["second"]).await.unwrap();
    let version: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".pools WHERE name = $1",
        t.schema
    )))
    .bind(&name)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(version, 1, "an add to an existing pool changes its version");
    let got = pool
        .claim()
        .try_acquire()
        .await
        .unwrap()
        .expect("the new item is claimable");
    assert_eq!(got.name(), "second");
    got.complete().await.unwrap();
}

#[tokio::test]
async fn a_crashed_claimers_item_returns_after_its_ttl() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    pool.add(["only"]).await.unwrap();
    let crashed = t
        .other("crashed")
        .lease_pool(&name)
        .claim()
        .ttl(Duration::from_millis(300))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    crashed.orphan();
    let other = t.other("next");
    assert!(
        other
            .lease_pool(&name)
            .claim()
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    // Waits for the expiry (read from the row), then takes it over.
    let next = other
        .lease_pool(&name)
        .claim()
        .timeout(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    assert_eq!(next.name(), "only");
    assert_eq!(next.pool(), Some(name.as_str()));
    next.complete().await.unwrap();
}

#[tokio::test]
async fn sticky_resume_gives_a_holder_its_own_item_back_with_its_progress() {
    let t = db().await;
    let name = pool_of(&t, 5).await;
    let w1 = t.other("worker-1");
    let w2 = t.other("worker-2");
    let first = claim_now(&w1, &name).await;
    let mine = first.name().to_owned();
    first.set_data(json!({"step": 700})).await.unwrap();
    // worker-1 "crashes": its lease is left to expire.
    first.orphan();
    expire(&t, &name, &mine).await;
    // Another worker prefers a fresh item to worker-1's expired one.
    let other = claim_now(&w2, &name).await;
    assert_ne!(other.name(), mine);
    // The restarted worker-1 gets its own shard back, with its progress.
    let resumed = claim_now(&w1, &name).await;
    assert_eq!(resumed.name(), mine);
    assert_eq!(resumed.data(), Some(json!({"step": 700})));
    // A released item goes back to its last holder first, too.
    let name2 = other.name().to_owned();
    other.release().await.unwrap();
    let again = claim_now(&w2, &name).await;
    assert_eq!(again.name(), name2);
    again.release().await.unwrap();
    resumed.release().await.unwrap();
}

#[tokio::test]
async fn pool_items_are_leases_with_fencing() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    pool.add(["a"]).await.unwrap();
    let l1 = pool.claim().try_acquire().await.unwrap().unwrap();
    let t1 = l1.token();
    l1.renew().await.unwrap();
    let l1 = l1.keep_alive();
    assert!(pool.claim().try_acquire().await.unwrap().is_none());
    l1.release().await.unwrap();
    let l2 = pool.claim().try_acquire().await.unwrap().unwrap();
    assert!(l2.token() > t1);
    // An old token cannot fence; the current one can.
    let call = format!("SELECT \"{}\".fence($1, $2, $3)::text", t.schema);
    let err = sqlx::query(sqlx::AssertSqlSafe(call.clone()))
        .bind(&name)
        .bind("a")
        .bind(t1)
        .execute(&t.pool)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("PGL01")
    );
    let mut tx = t.pool.begin().await.unwrap();
    l2.fence(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    let listed = t.locks.leases().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|l| l.pool.as_deref() == Some(name.as_str()) && l.name == "a" && l.held)
    );
    assert_eq!(pool.force_release("a").await.unwrap(), Some(l2.token()));
    assert!(matches!(l2.renew().await, Err(Error::LeaseLost { .. })));
    // Plain leases and permits cannot be completed: that no longer
    // compiles (see the compile_fail examples on `Lease` and `Permit`).
}

/// A permit can only be released: whatever its holder does with it —
/// release, drop, orphan and expiry, keep-alive, force-release — the
/// semaphore keeps all its permits. (A `complete()` on a permit used to
/// mark it done for good, and the semaphore shrank forever.)
#[tokio::test]
async fn a_semaphore_keeps_every_permit_whatever_its_holders_do() {
    let t = db().await;
    let name = pool_name();
    let sem = t.locks.semaphore(&name, 3).ttl(Duration::from_secs(60));
    // The permit that is orphaned expires soon.
    let short = sem.clone().ttl(Duration::from_millis(300));
    let status = || async { t.locks.lease_pool(&name).status().await.unwrap() };
    for round in 0..3 {
        let a = sem.acquire().await.unwrap();
        let b = sem.acquire().await.unwrap().keep_alive();
        let c = short.acquire().await.unwrap();
        assert!(
            sem.try_acquire().await.unwrap().is_none(),
            "round {round}: a 4th permit"
        );
        a.release().await.unwrap();
        drop(b);
        c.orphan();
        // The orphaned permit comes back when it expires.
        let all: Vec<_> = futures::future::try_join_all((0..3).map(|_| sem.acquire()))
            .await
            .unwrap();
        let s = status().await;
        assert_eq!((s.total, s.held, s.done), (3, 3, 0), "round {round}: {s:?}");
        let forced = all[0].name().to_owned();
        t.locks
            .lease_pool(&name)
            .force_release(&forced)
            .await
            .unwrap();
        for p in all {
            let _ = p.release().await;
        }
        let s = status().await;
        assert_eq!((s.total, s.free, s.done), (3, 3, 0), "round {round}: {s:?}");
    }
}

#[tokio::test]
async fn a_waiting_claimer_wakes_when_an_item_is_released() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    pool.add(["x"]).await.unwrap();
    let held = pool
        .claim()
        .ttl(Duration::from_secs(600))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let waiter = tokio::spawn({
        let other = t.other("b");
        let name = name.clone();
        async move {
            other
                .lease_pool(&name)
                .claim()
                .timeout(Duration::from_secs(20))
                .acquire()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    held.release().await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(got.name(), "x");
    // Completing the last item tells a waiter the pool is drained.
    let waiter = tokio::spawn({
        let other = t.other("c");
        let name = name.clone();
        async move {
            other
                .lease_pool(&name)
                .claim()
                .timeout(Duration::from_secs(20))
                .acquire()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    got.complete().await.unwrap();
    let err = waiter.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::PoolDrained { .. }), "{err}");
}

#[tokio::test]
async fn an_empty_pool_is_drained() {
    let t = db().await;
    let pool = t.locks.lease_pool(pool_name());
    assert_eq!(pool.add(Vec::<String>::new()).await.unwrap(), 0);
    let err = pool.claim().acquire().await.unwrap_err();
    assert!(matches!(err, Error::PoolDrained { .. }), "{err}");
    assert_eq!(pool.status().await.unwrap().total, 0);
}

#[tokio::test]
async fn a_pool_never_added_to_is_not_found_not_drained() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    let not_found = |e: Error| match e {
        Error::PoolNotFound { pool } => assert_eq!(pool, name),
        e => panic!("expected PoolNotFound, got {e:?}"),
    };
    not_found(pool.claim().acquire().await.unwrap_err());
    not_found(pool.claim().try_acquire().await.unwrap_err());
    not_found(pool.status().await.unwrap_err());
    // Once an item was added, the same name is a pool like any other.
    pool.add(["a"]).await.unwrap();
    let item = pool
        .claim()
        .try_acquire()
        .await
        .unwrap()
        .expect("a is free");
    item.complete().await.unwrap();
    let err = pool.claim().acquire().await.unwrap_err();
    assert!(matches!(err, Error::PoolDrained { .. }), "{err}");
}

#[tokio::test]
async fn an_item_an_earlier_process_of_the_label_left_to_expire_is_resumed() {
    let t = db().await;
    let name = pool_of(&t, 200).await;
    // The running worker completes what it claims, so it has nothing to
    // resume and leaves the sticky probe out for a while.
    let running = t.other("worker-1");
    claim_now(&running, &name).await.complete().await.unwrap();
    // An earlier process of the same label left an item to expire.
    let left = claim_now(&t.other("worker-1"), &name).await;
    let mine = left.name().to_owned();
    left.orphan();
    expire(&t, &name, &mine).await;
    // The running worker gets it back once the skip is over (nobody else
    // takes an expired item while free ones remain).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = claim_now(&running, &name).await;
        let resumed = got.name() == mine;
        got.complete().await.unwrap();
        if resumed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired item of the label was never resumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn claims_use_index_paths_not_scans() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    pool.add((0..20_000).map(|i| format!("i{i}")))
        .await
        .unwrap();
    // Half of them completed by holder `w` and 200 released by it, as
    // after a long run of one worker: its sticky probe expects many rows and
    // must still walk the index, not plan a bitmap scan.
    exec(
        &t,
        format!(
            "UPDATE \"{}\".leases SET holder = 'w', done = seq % 100 <> 0 \
              WHERE pool = '{name}' AND seq % 2 = 0",
            t.schema
        ),
    )
    .await;
    // Every item has a slot below 64, as every permit of a 64-permit
    // semaphore does, for the semaphore's claim.
    exec(
        &t,
        format!(
            "UPDATE \"{}\".leases SET slot = seq % 64 WHERE pool = '{name}'",
            t.schema
        ),
    )
    .await;
    exec(&t, format!("ANALYZE \"{}\".leases", t.schema)).await;
    let st = t.locks.__statements();
    let mut conn = t.pool.acquire().await.unwrap();
    // Each form of the claim: its label, statement, `$5`, and its probes
    // in order. The plain claim (a semaphore's, or a pool's with nothing
    // to resume) has no sticky probe; the takeover only the expired one.
    let claims = [
        ("claim", &st.pool_claim, "NULL", &["sticky", "free"][..]),
        (
            "retry",
            &st.pool_claim_retry,
            "NULL",
            &["retried", "sticky", "free"],
        ),
        ("plain", &st.pool_claim_plain, "64", &["free"]),
        (
            "plain_retry",
            &st.pool_claim_plain_retry,
            "64",
            &["retried", "free"],
        ),
        ("takeover", &st.pool_takeover, "NULL", &["expired"]),
        (
            "takeover_retry",
            &st.pool_takeover_retry,
            "NULL",
            &["retried", "expired"],
        ),
    ];
    for (label, sql, _, _) in &claims {
        exec_on(&mut conn, format!("PREPARE {label} AS {sql}")).await;
    }
    for (label, sql) in [("wait", &st.pool_wait), ("raise", &st.pool_raise)] {
        exec_on(&mut conn, format!("PREPARE {label} AS {sql}")).await;
    }
    let owner = uuid::Uuid::new_v4();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        exec_on(&mut conn, format!("SET plan_cache_mode = {mode}")).await;
        let explain = async |conn: &mut sqlx::PgConnection, call: String| {
            let plan: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN (COSTS OFF) {call}")))
                    .fetch_all(conn)
                    .await
                    .unwrap();
            plan.join("\n")
        };
        let wait = explain(&mut conn, format!("EXECUTE wait('{name}', NULL)")).await;
        let raise = explain(&mut conn, format!("EXECUTE raise('{name}')")).await;
        let mut plans = vec![("wait", wait.clone()), ("raise", raise.clone())];
        for (label, _, slots, probes) in &claims {
            let call = format!("EXECUTE {label}('{name}', '{owner}', 'w', 30000, {slots}, NULL)");
            let plan = explain(&mut conn, call).await;
            plans.push((label, plan.clone()));
            // The probes run in order under one LIMIT 1 (an Append stops at
            // the first that yields a row), and the item is updated by its
            // key.
            let order: Vec<usize> = probes
                .iter()
                .map(|p| {
                    plan.find(&format!("Subquery Scan on {p}\n"))
                        .unwrap_or_else(|| panic!("{mode}: {label}: no probe {p}:\n{plan}"))
                })
                .collect();
            assert!(
                order.is_sorted(),
                "{mode}: {label}: probes out of order:\n{plan}"
            );
            // `pick` runs once, as a CTE, whatever join the UPDATE gets: as
            // a subquery that the join re-runs per row of the pool, one
            // claim took several items.
            assert!(
                plan.contains("CTE pick"),
                "{mode}: {label}: the probes are not one materialized pick:\n{plan}"
            );
            if probes.len() > 1 {
                let append = plan.find("->  Append").expect("an Append of the probes");
                assert!(
                    plan[..append].contains("->  Limit"),
                    "{mode}: {label}: the probes are not under one LIMIT:\n{plan}"
                );
            }
            // The floor is read once, for the free scan and for `raise`.
            let free = probes.contains(&"free");
            assert_eq!(
                plan.matches(" on pools").count(),
                usize::from(free),
                "{mode}: {label}: the pools row is read other than once for the free scan:\n{plan}"
            );
            assert!(
                plan.contains("Index Scan using leases_pkey on leases l"),
                "{mode}: {label}: the claimed row is not updated by its key:\n{plan}"
            );
            // The holder probes walk the holder's range of leases_sticky in
            // a plain index scan: a bitmap scan never marks the dead index
            // entries it passes, so it would read every item the holder
            // completed since the last VACUUM, on every claim.
            assert_eq!(
                plan.matches("Index Scan using leases_sticky").count(),
                probes
                    .iter()
                    .filter(|p| ["retried", "sticky"].contains(p))
                    .count(),
                "{mode}: {label}: the holder probes are not plain scans of leases_sticky:\n{plan}"
            );
            let (index, other) = if free {
                ("leases_free", "leases_held")
            } else {
                ("leases_held", "leases_free")
            };
            assert!(
                plan.contains(&format!("Index Scan using {index}")),
                "{mode}: {label}: does not use {index}:\n{plan}"
            );
            // The claim leaves expired items to the takeover, and the
            // takeover's scan of held items is bounded by the time.
            assert!(
                !plan.contains(other),
                "{mode}: {label}: uses {other}:\n{plan}"
            );
            if !free {
                assert!(
                    plan.lines()
                        .any(|l| l.contains("Index Cond") && l.contains("expires_at <= now()")),
                    "{mode}: {label}: the scan of held items is not bounded:\n{plan}"
                );
            }
        }
        for (label, plan) in &plans {
            assert!(
                !plan.contains("Seq Scan on leases"),
                "{mode}: the {label} statement scans the table:\n{plan}"
            );
            assert!(
                !plan.contains("Bitmap") && !plan.contains("Sort"),
                "{mode}: the {label} statement sorts or runs a bitmap scan:\n{plan}"
            );
        }
        for index in ["leases_free", "leases_held"] {
            assert!(
                wait.contains(&format!("using {index}")),
                "{mode}: the wait statement does not use {index}:\n{wait}"
            );
        }
        assert!(
            raise.contains("using leases_free"),
            "{mode}: the raise does not walk leases_free:\n{raise}"
        );
    }
    exec_on(&mut conn, "DEALLOCATE ALL".into()).await;
}

async fn exec_on(conn: &mut sqlx::PgConnection, sql: String) {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_semaphore_never_exceeds_its_permits_and_reaches_them() {
    let t = db().await;
    let name = format!("sem-{}", uuid::Uuid::new_v4());
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..10 {
        let locks = t.other(&format!("agent-{w}"));
        let (name, inside, peak) = (name.clone(), inside.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..6 {
                let permit = locks
                    .semaphore(&name, 3)
                    .timeout(Duration::from_secs(30))
                    .acquire()
                    .await
                    .unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    // Never more than 3 at once. (Whether the timed loop above ever had all
    // 3 inside at once depends on the machine's load, so reaching the count
    // is asserted deterministically below: 5 held at once with 5 permits.)
    let peak = peak.load(Ordering::SeqCst);
    assert!((1..=3).contains(&peak), "peak concurrency {peak}");
    // Growing the count adds permits.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            t.locks
                .semaphore(&name, 5)
                .try_acquire()
                .await
                .unwrap()
                .expect("5 permits"),
        );
    }
    assert!(
        t.locks
            .semaphore(&name, 5)
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    // With the old count, no permit is free: permits 3 and 4 do not count.
    for p in held.drain(3..) {
        p.release().await.unwrap();
    }
    assert!(
        t.locks
            .semaphore(&name, 3)
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    for p in held {
        p.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_semaphore_permit_of_a_dead_holder_expires() {
    let t = db().await;
    let name = format!("sem-{}", uuid::Uuid::new_v4());
    let p = t
        .locks
        .semaphore(&name, 1)
        .ttl(Duration::from_millis(300))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    p.orphan();
    let next = t
        .other("b")
        .semaphore(&name, 1)
        .timeout(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    next.release().await.unwrap();
}

#[tokio::test]
async fn a_rate_limiter_holds_its_rate_across_processes() {
    let t = db().await;
    let name = format!("rate-{}", uuid::Uuid::new_v4());
    let (n, per) = (20u32, Duration::from_secs(1));
    let rate = f64::from(n) / per.as_secs_f64();
    // Every handle's connection is open before the clock starts.
    let handles: Vec<Locks> = (0..4).map(|w| t.other(&format!("p{w}"))).collect();
    for locks in &handles {
        assert!(
            locks
                .rate_limiter("warm-up", 100, per)
                .try_acquire()
                .await
                .unwrap()
        );
    }
    // A fresh bucket holds its burst of n, all of it at once.
    let limiter = t.locks.rate_limiter(&name, n, per);
    let (mut burst, asked) = (0, std::time::Instant::now());
    while limiter.try_acquire().await.unwrap() {
        burst += 1;
    }
    // At most what was refilled while it was asked (a shorter time by the
    // database clock than by ours) came on top.
    let most = f64::from(n) + rate * asked.elapsed().as_secs_f64();
    assert!(
        burst >= n && f64::from(burst) <= most,
        "a fresh bucket gave {burst} tokens at once, its burst is {n} (at most {most:.2} then)"
    );
    // Then empty it at a known database time: from here every token the
    // four handles take was refilled at n per `per`, and none overflows
    // the burst (that would take `per` with nobody asking).
    let bucket = format!("\"{}\".rate_limits", t.schema);
    let started: f64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE {bucket} SET tokens = 0, refilled_at = clock_timestamp() \
          WHERE name = $1 RETURNING extract(epoch FROM refilled_at)::float8"
    )))
    .bind(&name)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let window = Duration::from_millis(1500);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for locks in handles {
        let (name, taken) = (name.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let limiter = locks.rate_limiter(&name, n, per);
            // Never cancelled mid-statement: each token taken is counted.
            while start.elapsed() < window {
                limiter.acquire().await.unwrap();
                taken.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let (left, last): (f64, f64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT tokens, extract(epoch FROM refilled_at)::float8 FROM {bucket} WHERE name = $1"
    )))
    .bind(&name)
    .fetch_one(&t.pool)
    .await
    .unwrap();
    let got = taken.load(Ordering::SeqCst) as f64;
    let refilled = rate * (last - started);
    // Each task's last take was answered after the window ended.
    assert!(
        last - started > 1.0,
        "the run lasted {:.3} s by the database clock",
        last - started
    );
    // What was refilled by the database clock is what was taken, plus the
    // fraction of a token left: no more (the rate holds), no less (no
    // token is lost).
    assert!(
        (got + left - refilled).abs() < 1e-3,
        "took {got} tokens with {left:.3} left, {refilled:.3} were refilled"
    );
    assert!(left >= 0.0, "{left} tokens left");
}

#[tokio::test]
async fn bad_input_is_refused_before_any_sql() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/none")
        .unwrap();
    let locks = Locks::new(pool);
    let field = |e: Error| match e {
        Error::InvalidInput { field, .. } => field,
        other => panic!("expected InvalidInput, got {other}"),
    };
    assert_eq!(
        field(locks.lease_pool("").add(["a"]).await.unwrap_err()),
        "pool name"
    );
    assert_eq!(
        field(locks.lease_pool("p\0").status().await.unwrap_err()),
        "pool name"
    );
    assert_eq!(
        field(locks.lease_pool("p").add(["ok", ""]).await.unwrap_err()),
        "item name"
    );
    assert_eq!(
        field(
            locks
                .lease_pool("p")
                .add(["x".repeat(1025)])
                .await
                .unwrap_err()
        ),
        "item name"
    );
    assert_eq!(
        field(
            locks
                .lease_pool("")
                .claim()
                .try_acquire()
                .await
                .unwrap_err()
        ),
        "pool name"
    );
    assert_eq!(
        field(
            locks
                .lease_pool("p")
                .claim()
                .ttl(Duration::ZERO)
                .acquire()
                .await
                .unwrap_err()
        ),
        "ttl"
    );
    assert_eq!(
        field(
            locks
                .lease_pool("p")
                .claim()
                .timeout(Duration::ZERO)
                .acquire()
                .await
                .unwrap_err()
        ),
        "timeout"
    );
    assert_eq!(
        field(locks.semaphore("s", 0).acquire().await.unwrap_err()),
        "permits"
    );
    assert_eq!(
        field(
            locks
                .semaphore("s", 10_001)
                .try_acquire()
                .await
                .unwrap_err()
        ),
        "permits"
    );
    assert_eq!(
        field(locks.semaphore("", 2).try_acquire().await.unwrap_err()),
        "pool name"
    );
    assert_eq!(
        field(
            locks
                .rate_limiter("r", 0, Duration::from_secs(1))
                .acquire()
                .await
                .unwrap_err()
        ),
        "rate"
    );
    assert_eq!(
        field(
            locks
                .rate_limiter("r", 5, Duration::ZERO)
                .try_acquire()
                .await
                .unwrap_err()
        ),
        "period"
    );
    assert_eq!(
        field(
            locks
                .rate_limiter("", 5, Duration::from_secs(1))
                .try_acquire()
                .await
                .unwrap_err()
        ),
        "rate limiter name"
    );
}

/// The claim statement, sent raw: `Some((item, token, raise))`.
async fn raw_claim(
    c: &mut sqlx::PgConnection,
    sql: &str,
    pool: &str,
    owner: uuid::Uuid,
) -> Option<(String, i64, Option<bool>)> {
    let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(pool)
        .bind(owner)
        .bind("w")
        .bind(30_000i64)
        .bind(None::<i32>)
        .bind(None::<i64>)
        .fetch_optional(c)
        .await
        .unwrap()?;
    Some((row.get("name"), row.get("token"), row.get("raise")))
}

#[tokio::test]
async fn a_repeated_claim_takes_back_its_own_item_and_a_first_one_never_does() {
    let t = db().await;
    let name = pool_name();
    t.locks
        .lease_pool(&name)
        .add(["a", "b", "c"])
        .await
        .unwrap();
    let st = t.locks.__statements();
    let mut c = t.pool.acquire().await.unwrap();
    let owner = uuid::Uuid::new_v4();
    let (first, token, _) = raw_claim(&mut c, &st.pool_claim, &name, owner)
        .await
        .unwrap();
    // The answer was lost; the repeat, with the same owner, gets the same
    // item under a new token, and nothing else.
    let (again, newer, _) = raw_claim(&mut c, &st.pool_claim_retry, &name, owner)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert!(newer > token, "{newer} after {token}");
    let held: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".leases WHERE pool = $1 AND owner = $2",
        t.schema
    )))
    .bind(&name)
    .bind(owner)
    .fetch_one(&mut *c)
    .await
    .unwrap();
    assert_eq!(held, 1, "the repeat took a second item");
    // Which is why a first claim must not look for its owner: a fresh owner
    // never holds anything, and the plain statement takes another item.
    let (other, _, _) = raw_claim(&mut c, &st.pool_claim, &name, owner)
        .await
        .unwrap();
    assert_ne!(other, first);
}

#[tokio::test]
async fn a_claim_far_above_the_floor_asks_for_a_raise_that_spares_in_flight_claims() {
    let t = db().await;
    let name = pool_name();
    let pool = t.locks.lease_pool(&name);
    pool.add((0..100).map(|i| format!("i{i:03}")))
        .await
        .unwrap();
    let st = t.locks.__statements();
    let floor = async || -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT free_floor - (SELECT min(seq) FROM \"{0}\".leases WHERE pool = $1)
               FROM \"{0}\".pools WHERE name = $1",
            t.schema
        )))
        .bind(&name)
        .fetch_one(&t.pool)
        .await
        .unwrap()
    };
    // An in-flight claim holds the first item's row lock and may roll back.
    let mut inflight = t.pool.begin().await.unwrap();
    let (held, _, _) = raw_claim(&mut inflight, &st.pool_claim, &name, uuid::Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(held, "i000");
    // 33 more claims: the first 32 lie within 32 of the floor, the 33rd
    // asks for a raise.
    let mut c = t.pool.acquire().await.unwrap();
    let mut asks = Vec::new();
    for _ in 0..33 {
        let (_, _, raise) = raw_claim(&mut c, &st.pool_claim, &name, uuid::Uuid::new_v4())
            .await
            .unwrap();
        asks.push(raise == Some(true));
    }
    assert_eq!(asks.iter().filter(|a| **a).count(), 1, "{asks:?}");
    assert!(asks[32], "{asks:?}");
    // The raise stops at the in-flight claim's item: it may come back.
    let raised = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(st.pool_raise.clone()))
        .bind(&name)
        .fetch_optional(&mut *c)
        .await
        .unwrap();
    assert_eq!(raised, None, "raised past an in-flight claim");
    assert_eq!(floor().await, 0);
    inflight.rollback().await.unwrap();
    // It came back free, and a raise still may not pass it.
    let raised = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(st.pool_raise.clone()))
        .bind(&name)
        .fetch_optional(&mut *c)
        .await
        .unwrap();
    assert_eq!(raised, None);
    // Claimed for good, the items below go behind the floor.
    let (first, _, _) = raw_claim(&mut c, &st.pool_claim, &name, uuid::Uuid::new_v4())
        .await
        .unwrap();
    assert_eq!(first, "i000");
    let raised = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(st.pool_raise.clone()))
        .bind(&name)
        .fetch_optional(&mut *c)
        .await
        .unwrap();
    assert!(raised.is_some(), "no raise with 34 items claimed below");
    assert_eq!(floor().await, 34, "the floor is the lowest free item");
    // Through the crate, the raise is sent in the background: the 34th
    // claim from here lies 33 above the floor and moves it past itself.
    let mut items = Vec::new();
    for _ in 0..34 {
        items.push(pool.claim().try_acquire().await.unwrap().unwrap());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while floor().await != 68 {
        assert!(
            std::time::Instant::now() < deadline,
            "floor {} ",
            floor().await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_claim_takes_one_item_however_hot_a_small_pool_is() {
    // 8 connections claim and release the permits of a semaphore of 64 as
    // fast as they can, with the statements the crate sends: every claim
    // takes exactly one permit, and when all are released none is held.
    let t = db().await;
    let name = format!("sem-{}", uuid::Uuid::new_v4());
    let permit = t.locks.semaphore(&name, 64).try_acquire().await.unwrap();
    permit.expect("a free permit").release().await.unwrap();
    // Beside a big pool, and with statistics, the small pool gets the plans
    // that scan its rows and join them with the probes' pick.
    t.locks
        .lease_pool(pool_name())
        .add((0..20_000).map(|i| format!("i{i}")))
        .await
        .unwrap();
    exec(&t, format!("ANALYZE \"{}\".leases", t.schema)).await;
    let st = t.locks.__statements();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (pool, name) = (t.pool.clone(), name.clone());
        // Half with the semaphore's claim, half with a pool's (a small
        // pool's claims get the same plans).
        let claim = match w % 2 {
            0 => st.pool_claim_plain.clone(),
            _ => st.pool_claim.clone(),
        };
        let release = st.item_release.clone();
        // The wake payload of a pool's waiters (PROTOCOL.md): the schema,
        // then the pool's topic, its name after a 0x1f.
        let topic = format!("{}:\u{1f}{name}", t.schema);
        workers.push(tokio::spawn(async move {
            let mut c = pool.acquire().await.unwrap();
            for _ in 0..250 {
                let owner = uuid::Uuid::new_v4();
                let rows: Vec<sqlx::postgres::PgRow> =
                    sqlx::query(sqlx::AssertSqlSafe(claim.clone()))
                        .bind(&name)
                        .bind(owner)
                        .bind(format!("w{w}"))
                        .bind(30_000i64)
                        .bind(Some(64i32))
                        .bind(None::<i64>)
                        .fetch_all(&mut *c)
                        .await
                        .unwrap();
                assert_eq!(rows.len(), 1, "one claim took {} permits", rows.len());
                let (item, token): (String, i64) = (rows[0].get("name"), rows[0].get("token"));
                sqlx::query(sqlx::AssertSqlSafe(release.clone()))
                    .bind(&name)
                    .bind(&item)
                    .bind(token)
                    .bind(owner)
                    .bind(&topic)
                    .execute(&mut *c)
                    .await
                    .unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    // A semaphore's permits are the items of a pool of the same name.
    let status = t.locks.lease_pool(&name).status().await.unwrap();
    assert_eq!((status.held, status.free), (0, 64), "{status:?}");
}
