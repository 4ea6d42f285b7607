//! pglock on a real Patroni HA cluster (tests/support/patroni.rs: etcd, two
//! Patroni nodes, HAProxy routing to `GET /primary`), through failovers.
//! pglock connects only through HAProxy, as an application would.
//!
//! `PGLOCK_HA=short` (the default, about 3-4 minutes): one fault of each
//! kind. `PGLOCK_HA=long`: `PGLOCK_HA_ROUNDS` rounds (default 5) of all
//! three faults, run as
//! `PGLOCK_HA=long PGLOCK_HA_ROUNDS=5 cargo test --all-features --test failover -- --nocapture`.
//! `PGLOCK_HA=off` skips them (CI runs them in a step of their own).
//!
//! The clusters are heavy (etcd, two Patroni daemons, two PostgreSQL), so the
//! tests of this file run one at a time.

#[path = "support/patroni.rs"]
mod patroni;
mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patroni::Ha;
use pglock::{Error, Locks};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::Instant;

/// Leases the workers increment counters under.
const LEASES: i64 = 3;
/// Pool items the workers finish, each exactly once.
const ITEMS: usize = 20_000;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn mode() -> String {
    std::env::var("PGLOCK_HA").unwrap_or_else(|_| "short".into())
}

fn rounds() -> usize {
    match mode().as_str() {
        "long" => std::env::var("PGLOCK_HA_ROUNDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
        _ => 1,
    }
}

/// Whether to run: tools present and not `PGLOCK_HA=off`.
fn enabled(what: &str) -> bool {
    if mode() == "off" {
        println!("SKIPPED {what}: PGLOCK_HA=off");
        return false;
    }
    patroni::tools_present(what)
}

fn pool_on(url: &str, max: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(url)
        .unwrap()
}

/// A pool through HAProxy that retries until the primary answers; the
/// schema migrated (accepting asynchronous replication on the asynchronous
/// cluster: its refusal is checked in its own test).
async fn setup_schema(ha: &Ha, schema: &str) -> PgPool {
    let pool = pool_on(&ha.url(), 4);
    let locks = Locks::builder(pool.clone())
        .schema(schema)
        .allow_async_replication(!ha.synchronous)
        .build()
        .unwrap();
    locks.migrate().await.expect("migrate through HAProxy");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {schema}.counter (id bigint PRIMARY KEY, value bigint NOT NULL);
         INSERT INTO {schema}.counter SELECT g, 0 FROM generate_series(0, {last}) g;
         CREATE TABLE {schema}.log (lease bigint NOT NULL, value bigint NOT NULL, token bigint NOT NULL);
         CREATE TABLE {schema}.item_log (item text NOT NULL, token bigint NOT NULL);",
        last = LEASES - 1
    )))
    .execute(&pool)
    .await
    .unwrap();
    let items: Vec<String> = (0..ITEMS).map(|i| format!("item-{i:05}")).collect();
    locks.lease_pool("items").add(items).await.unwrap();
    pool
}

// ---------------------------------------------------------------------------
// The worker process: this test binary re-executed with PGLOCK_HA_WORKER set.

/// Entry point of a worker process (does nothing in a normal test run): fenced
/// increments under leases `l0..l2` and finished pool items, through
/// HAProxy, until the file `stop` appears in `PGLOCK_HA_DIR`. Each commit the
/// database acknowledged is appended to `acked-<id>` (`L lease value token`,
/// `I item token`); the parent checks the database kept every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_process() {
    let Ok(id) = std::env::var("PGLOCK_HA_WORKER") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("PGLOCK_HA_DIR").unwrap());
    let url = std::env::var("PGLOCK_HA_URL").unwrap();
    let schema = std::env::var("PGLOCK_HA_SCHEMA").unwrap();
    let pool = pool_on(&url, 4);
    let locks = Locks::builder(pool.clone())
        .schema(schema.clone())
        .holder(format!("w{id}"))
        .build()
        .unwrap();
    let mut acked = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("acked-{id}")))
        .unwrap();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut i: i64 = id.parse::<i64>().unwrap();
    while !dir.join("stop").exists() {
        i += 1;
        let k = i % LEASES;
        let step = if i % 2 == 0 {
            increment(&locks, &pool, &schema, k)
                .await
                .map(|(v, t)| format!("L {k} {v} {t}"))
        } else {
            finish_item(&locks, &pool, &schema).await.map(|done| {
                done.map(|(item, t)| format!("I {item} {t}"))
                    .unwrap_or_default()
            })
        };
        match step {
            Ok(line) => {
                ok += 1;
                if !line.is_empty() {
                    writeln!(acked, "{line}").unwrap();
                }
            }
            Err(_) => {
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    std::fs::write(dir.join(format!("summary-{id}")), format!("{ok} {failed}")).unwrap();
}

/// One fenced read-modify-write under lease `l{k}`: (value, token).
async fn increment(
    locks: &Locks,
    pool: &PgPool,
    schema: &str,
    k: i64,
) -> Result<(i64, i64), Error> {
    let lease = locks
        .lease(format!("l{k}"))
        .ttl(Duration::from_secs(10))
        .timeout(Duration::from_secs(3))
        .acquire()
        .await?;
    let mut tx = pool.begin().await?;
    lease.fence(&mut tx).await?;
    let value: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.counter SET value = value + 1 WHERE id = $1 RETURNING value"
    )))
    .bind(k)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.log (lease, value, token) VALUES ($1, $2, $3)"
    )))
    .bind(k)
    .bind(value)
    .bind(lease.token())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let token = lease.token();
    // A release that fails (the connection died) leaves the TTL to free it.
    let _ = lease.release().await;
    Ok((value, token))
}

/// Claims a free pool item and finishes it with a fenced write, in one
/// transaction: (item, token), or None if none was free.
async fn finish_item(
    locks: &Locks,
    pool: &PgPool,
    schema: &str,
) -> Result<Option<(String, i64)>, Error> {
    let Some(item) = locks
        .lease_pool("items")
        .claim()
        .ttl(Duration::from_secs(10))
        .try_acquire()
        .await?
    else {
        return Ok(None);
    };
    let name = item.name().to_string();
    let token = item.token();
    let mut tx = pool.begin().await?;
    item.fence(&mut tx).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {schema}.item_log (item, token) VALUES ($1, $2)"
    )))
    .bind(&name)
    .bind(token)
    .execute(&mut *tx)
    .await?;
    item.complete_in(&mut tx).await?;
    tx.commit().await?;
    Ok(Some((name, token)))
}

fn spawn_worker(id: usize, ha: &Ha, schema: &str, dir: &Path) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "worker_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PGLOCK_HA_WORKER", id.to_string())
        .env("PGLOCK_HA_DIR", dir)
        .env("PGLOCK_HA_URL", ha.url())
        .env("PGLOCK_HA_SCHEMA", schema)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Faults and the history check.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// SIGKILL of the primary's Patroni, postmaster and backends.
    Kill,
    /// `patronictl switchover --force`.
    Switchover,
    /// The primary's Patroni cannot reach etcd.
    Partition,
}

/// Injects `fault`; returns the time from the fault to the first write
/// through HAProxy on the new primary, once the cluster is whole again.
async fn inject(ha: &mut Ha, fault: Fault) -> Duration {
    let old = ha.primary().expect("a primary before the fault");
    let start = Instant::now();
    match fault {
        Fault::Kill => ha.kill_node(old),
        Fault::Switchover => ha.switchover(),
        Fault::Partition => ha.cut_from_etcd(old),
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let new = loop {
        let p = ha.wait_primary(Duration::from_secs(90)).await;
        if p != old {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?}: node {old} stays primary"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = start.elapsed();
    assert_ne!(new, old);
    match fault {
        Fault::Kill => ha.replace_node(old),
        Fault::Partition => ha.heal_etcd(old),
        Fault::Switchover => {}
    }
    ha.wait_healthy(Duration::from_secs(120)).await;
    took
}

async fn log_rows(pool: &PgPool, schema: &str) -> i64 {
    for _ in 0..100 {
        if let Ok(n) = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {schema}.log) + (SELECT count(*) FROM {schema}.item_log)"
        )))
        .fetch_one(pool)
        .await
        {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot count the log through HAProxy");
}

/// Waits until the workers committed `n` more writes: the workload goes on
/// (after a fault: resumed by itself, nobody restarted anything).
async fn progress(pool: &PgPool, schema: &str, n: i64, within: Duration, what: &str) {
    let from = log_rows(pool, schema).await;
    let deadline = Instant::now() + within;
    while log_rows(pool, schema).await < from + n {
        assert!(
            Instant::now() < deadline,
            "no progress within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Default)]
struct Violations {
    /// Counter != number of log rows, or a value logged twice / never.
    counter: Vec<String>,
    /// Tokens not strictly increasing in commit order of a lease.
    order: Vec<String>,
    /// One token issued for two acquisitions.
    reused_tokens: Vec<i64>,
    /// Pool items finished twice.
    twice: Vec<String>,
    /// Commits the database acknowledged and no longer has.
    lost: Vec<String>,
}

impl Violations {
    fn total(&self) -> usize {
        self.counter.len()
            + self.order.len()
            + self.reused_tokens.len()
            + self.twice.len()
            + self.lost.len()
    }
}

async fn check_history(pool: &PgPool, schema: &str, dir: &Path) -> (Violations, usize) {
    let mut v = Violations::default();
    let log: Vec<(i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT lease, value, token FROM {schema}.log ORDER BY lease, value, token"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let counters: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, value FROM {schema}.counter ORDER BY id"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    let items: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT item, token FROM {schema}.item_log"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    for (k, counter) in counters {
        let rows: Vec<&(i64, i64, i64)> = log.iter().filter(|r| r.0 == k).collect();
        let values: Vec<i64> = rows.iter().map(|r| r.1).collect();
        if values != (1..=counter).collect::<Vec<_>>() {
            v.counter.push(format!(
                "lease l{k}: counter {counter}, {} log rows",
                values.len()
            ));
        }
        // The counter row serializes the increments: value order is commit order.
        for w in rows.windows(2) {
            if w[1].2 <= w[0].2 {
                v.order.push(format!(
                    "lease l{k}: value {} token {} after value {} token {}",
                    w[1].1, w[1].2, w[0].1, w[0].2
                ));
            }
        }
    }
    let mut tokens = HashSet::new();
    let mut by_item: HashMap<&str, usize> = HashMap::new();
    for (item, token) in &items {
        *by_item.entry(item).or_default() += 1;
        if !tokens.insert(*token) {
            v.reused_tokens.push(*token);
        }
    }
    for (_, _, token) in &log {
        // One acquisition per increment: a token seen twice was issued twice.
        if !tokens.insert(*token) {
            v.reused_tokens.push(*token);
        }
    }
    v.twice = by_item
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, _)| i.to_string())
        .collect();
    let logged: HashSet<(i64, i64, i64)> = log.iter().copied().collect();
    let finished: HashSet<(String, i64)> = items.iter().cloned().collect();
    let mut acked = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if !entry.file_name().to_string_lossy().starts_with("acked-") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
            acked += 1;
            let f: Vec<&str> = line.split(' ').collect();
            let kept = match f[0] {
                "L" => logged.contains(&(
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )),
                _ => finished.contains(&(f[1].to_string(), f[2].parse().unwrap())),
            };
            if !kept {
                v.lost.push(line.to_string());
            }
        }
    }
    (v, acked)
}

/// Runs the two-process workload through `faults` on `ha`; returns the
/// violations, the failover times and the acknowledged commit count.
async fn workload_through(
    ha: &mut Ha,
    faults: &[Fault],
) -> (Violations, Vec<(Fault, Duration)>, usize) {
    let schema = format!("ha_{}", uuid::Uuid::new_v4().simple());
    let pool = setup_schema(ha, &schema).await;
    let dir =
        std::env::temp_dir().join(format!("pglock-ha-work-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut workers: Vec<_> = (0..2).map(|i| spawn_worker(i, ha, &schema, &dir)).collect();
    progress(&pool, &schema, 50, Duration::from_secs(60), "workers start").await;
    let mut times = Vec::new();
    for fault in faults {
        let took = inject(ha, *fault).await;
        println!("{fault:?}: new primary writable through HAProxy after {took:?}");
        times.push((*fault, took));
        progress(
            &pool,
            &schema,
            50,
            Duration::from_secs(60),
            &format!("workload resumes after {fault:?}"),
        )
        .await;
    }
    std::fs::write(dir.join("stop"), "").unwrap();
    for w in &mut workers {
        let status = tokio::time::timeout(Duration::from_secs(60), w.wait())
            .await
            .expect("worker stops")
            .unwrap();
        assert!(status.success(), "worker process failed: {status}");
    }
    for i in 0..2 {
        let s = std::fs::read_to_string(dir.join(format!("summary-{i}"))).unwrap_or_default();
        println!("worker {i}: ok/failed steps {s}");
    }
    let (v, acked) = check_history(&pool, &schema, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    (v, times, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_history_holds_across_kill_switchover_and_partition() {
    if !enabled("fenced_history_holds_across_kill_switchover_and_partition") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut ha = Ha::start(true).await;
    let mut faults = Vec::new();
    for _ in 0..rounds() {
        faults.extend([Fault::Kill, Fault::Switchover, Fault::Partition]);
    }
    let (v, times, acked) = workload_through(&mut ha, &faults).await;
    println!(
        "synchronous: {} faults, {acked} acknowledged commits, {} violations: {v:?}",
        times.len(),
        v.total()
    );
    assert!(acked > 0);
    assert_eq!(v.total(), 0, "violations across failover: {v:#?}");
}

/// What a holder sees when the primary dies under it, and how pglock comes
/// back on the new primary with nobody restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_hear_of_the_failover_and_pglock_comes_back() {
    if !enabled("holders_hear_of_the_failover_and_pglock_comes_back") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut ha = Ha::start(true).await;
    let schema = format!("hb_{}", uuid::Uuid::new_v4().simple());
    let pool = setup_schema(&ha, &schema).await;
    let url = ha.url();
    let handle = |holder: &str| {
        Locks::builder(pool_on(&url, 4))
            .schema(schema.clone())
            .holder(holder)
            .build()
            .unwrap()
    };
    let (a, b, c) = (handle("a"), handle("b"), handle("c"));

    // Before the fault: a lease kept alive, an advisory guard, a lease
    // someone else waits for.
    let kept = a
        .lease("kept")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap()
        .keep_alive();
    let kept_token = kept.token();
    let guard = a.advisory("ckpt").lock().await.unwrap();
    let busy = b
        .lease("busy")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap()
        .keep_alive();
    let waiter = tokio::spawn(async move {
        c.lease("busy")
            .ttl(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
            .acquire()
            .await
            .map(|l| l.token())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the waiter waits");

    let old = ha.primary().unwrap();
    let killed = Instant::now();
    ha.kill_node(old);
    ha.wait_primary(Duration::from_secs(90)).await;
    println!("kill -> writable primary: {:?}", killed.elapsed());

    // The advisory lock lived in the dead primary's session: reported lost.
    tokio::time::timeout(Duration::from_secs(20), guard.lost())
        .await
        .expect("the advisory guard reports lost() after the primary died");
    println!("kill -> advisory lost(): {:?}", killed.elapsed());

    // The kept lease was replicated synchronously: it survived, and its
    // keep-alive resumes on the new primary by itself.
    let expires = |pool: PgPool, schema: String| async move {
        sqlx::query_as::<_, (i64, chrono::DateTime<chrono::Utc>)>(sqlx::AssertSqlSafe(format!(
            "SELECT token, expires_at FROM {schema}.leases WHERE name = 'kept'"
        )))
        .fetch_one(&pool)
        .await
    };
    let (token, first) = loop {
        if let Ok(row) = expires(pool.clone(), schema.clone()).await {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(token, kept_token, "the kept lease survived the failover");
    support::eventually(30, "keep-alive renews on the new primary", || {
        let (pool, schema) = (pool.clone(), schema.clone());
        async move { matches!(expires(pool, schema).await, Ok((_, e)) if e > first) }
    })
    .await;
    assert!(
        futures::FutureExt::now_or_never(kept.lost()).is_none(),
        "a surviving lease is not reported lost"
    );
    kept.renew().await.expect("the surviving lease renews");
    let mut tx = pool.begin().await.unwrap();
    kept.fence(&mut tx).await.expect("and fences");
    tx.commit().await.unwrap();

    // The waiter's looks and its LISTEN connection died with the primary:
    // it looked again on the new primary (never an error, never the lease
    // while "busy" was held), and a release there reaches it.
    let busy_token = busy.token();
    assert!(
        !waiter.is_finished(),
        "the waiter returned during the failover: {:?}",
        waiter.await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "a waiter waits while busy is held");
    busy.release().await.expect("release on the new primary");
    let got = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the waiter is woken after the failover")
        .unwrap()
        .expect("the waiter gets the lease");
    assert!(got > busy_token);

    // New locks of every kind work through HAProxy without a restart.
    let g = a
        .advisory("ckpt")
        .try_lock()
        .await
        .unwrap()
        .expect("free again");
    g.release().await.unwrap();
    kept.release().await.unwrap();

    // A connection that lands on a standby is not used.
    ha.replace_node(old);
    let primary = ha.wait_healthy(Duration::from_secs(120)).await;
    let standby = Locks::builder(pool_on(&ha.nodes[1 - primary].url(), 2))
        .schema(schema.clone())
        .holder("on-standby")
        .build()
        .unwrap();
    assert!(
        standby.lease("s").try_acquire().await.is_err(),
        "a lease acquired on a standby"
    );
    assert!(
        standby.advisory("s").try_lock().await.is_err(),
        "an advisory lock taken on a standby (it excludes nothing on the primary)"
    );
}

/// With `synchronous_mode: false` the standby may miss what the primary
/// acknowledged. Made certain here: the standby's WAL receiver is stopped,
/// the primary grants leases, then dies; the standby is promoted without
/// them. The new primary knows nothing of the granted lease and hands out
/// tokens the old one already gave. pglock cannot prevent that; what it
/// must do is report the loss to the holder (renew and fence fail with
/// `LeaseLost`, `lost()` resolves), never let a fenced write of the old
/// holder through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asynchronous_replication_loses_acquisitions_and_pglock_reports_it() {
    if !enabled("asynchronous_replication_loses_acquisitions_and_pglock_reports_it") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut ha = Ha::start(false).await;
    let schema = format!("ha_{}", uuid::Uuid::new_v4().simple());
    // migrate() refuses a server with a standby that commits do not wait
    // for, unless told to accept it.
    let probe = pool_on(&ha.url(), 1);
    support::eventually(30, "the standby streams from the primary", || {
        let probe = probe.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            )
            .fetch_one(&probe)
            .await
            .is_ok_and(|n| n > 0)
        }
    })
    .await;
    let refused = Locks::builder(probe.clone())
        .schema(schema.clone())
        .build()
        .unwrap()
        .migrate()
        .await
        .expect_err("migrate refuses asynchronous replication");
    assert!(
        matches!(&refused, Error::InvalidInput { field, .. } if *field == "allow_async_replication"),
        "{refused:?}"
    );
    println!("async: migrate refused: {refused}");
    probe.close().await;
    let pool = setup_schema(&ha, &schema).await;
    let locks = Locks::builder(pool_on(&ha.url(), 4))
        .schema(schema.clone())
        .holder("old")
        .build()
        .unwrap();
    let primary = ha.primary().unwrap();
    let standby = 1 - primary;
    let direct = pool_on(&ha.nodes[standby].url(), 1);
    // Everything so far is on the standby.
    support::eventually(30, "the standby replays the schema", || {
        let (direct, schema) = (direct.clone(), schema.clone());
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {schema}.counter"
            )))
            .fetch_one(&direct)
            .await
            .is_ok_and(|n| n == LEASES)
        }
    })
    .await;
    let receiver: i32 = sqlx::query_scalar("SELECT pid FROM pg_stat_wal_receiver")
        .fetch_one(&direct)
        .await
        .unwrap();
    direct.close().await;
    patroni::signal(receiver as u32, "-STOP");

    // The primary grants: 100 acquisitions (more than the 32 sequence values
    // PostgreSQL logs ahead), then a lease that stays held.
    let mut old_max = 0;
    for _ in 0..100 {
        let l = locks.lease("burst").acquire().await.unwrap();
        old_max = old_max.max(l.token());
        l.release().await.unwrap();
    }
    let held = locks
        .lease("held")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap()
        .keep_alive();
    old_max = old_max.max(held.token());

    // The primary dies; the standby loses what it had not received.
    ha.kill_node(primary);
    patroni::signal(receiver as u32, "-KILL");
    let took = Instant::now();
    let new = ha.wait_primary(Duration::from_secs(120)).await;
    assert_eq!(new, standby);
    println!("async: new primary after {:?}", took.elapsed());

    let next = Locks::builder(pool_on(&ha.url(), 2))
        .schema(schema.clone())
        .holder("new")
        .build()
        .unwrap();
    let second = next
        .lease("held")
        .try_acquire()
        .await
        .unwrap()
        .expect("the new primary never saw the held lease");
    println!(
        "async: old primary granted tokens up to {old_max} (\"held\": {}); the new primary grants \"held\" again with token {}",
        held.token(),
        second.token()
    );
    assert!(
        second.token() <= old_max,
        "the new primary reissues a token the old one handed out"
    );

    // The old holder is told, and its fenced write cannot pass.
    let err = held.renew().await.expect_err("the old holder renews");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    tokio::time::timeout(Duration::from_secs(30), held.lost())
        .await
        .expect("the old holder's lost() resolves");
    let mut tx = pool.begin().await.unwrap();
    let err = held
        .fence(&mut tx)
        .await
        .expect_err("the old holder fences");
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    drop(tx);
    second.release().await.unwrap();

    // The same two-process workload through a kill (long runs only):
    // what else is lost.
    if mode() == "long" {
        ha.replace_node(primary);
        ha.wait_healthy(Duration::from_secs(120)).await;
        let (v, times, acked) = workload_through(&mut ha, &[Fault::Kill, Fault::Switchover]).await;
        println!(
            "asynchronous workload: {} faults, {acked} acknowledged commits, {} violations: {v:?}",
            times.len(),
            v.total()
        );
    }
}

/// Figures for docs/operations.md, not a test of anything (timings belong in
/// benchmarks): acquire+release through HAProxy vs direct, how many of 1,000
/// kept-alive leases survive a switchover, and the time from a SIGKILL of
/// the primary to the first successful acquire through HAProxy. Run with
/// `cargo test --all-features --test failover -- --ignored --nocapture failover_figures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn failover_figures() {
    if !enabled("failover_figures") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().await;
    let mut ha = Ha::start(true).await;
    let schema = format!("hf_{}", uuid::Uuid::new_v4().simple());
    let pool = setup_schema(&ha, &schema).await;
    let on = |url: String, holder: &str| {
        Locks::builder(pool_on(&url, 8))
            .schema(schema.clone())
            .holder(holder)
            .build()
            .unwrap()
    };

    // Throughput: 8 tasks acquiring and releasing their own lease.
    let primary = ha.primary().unwrap();
    for (what, url) in [
        ("through HAProxy", ha.url()),
        ("direct", ha.nodes[primary].url()),
    ] {
        let locks = on(url, "bench");
        let secs = 5.0;
        let until = Instant::now() + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let locks = locks.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    let l = locks.lease(format!("tp-{t}")).acquire().await.unwrap();
                    l.release().await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        println!(
            "figure: acquire+release {what}: {:.0}/s (8 tasks, {secs} s)",
            total as f64 / secs
        );
    }

    // 1,000 kept-alive leases (TTL 30 s) through a switchover.
    let keeper = on(ha.url(), "keeper");
    let mut kept = Vec::new();
    for i in 0..1000 {
        kept.push(
            keeper
                .lease(format!("k-{i}"))
                .ttl(Duration::from_secs(30))
                .acquire()
                .await
                .unwrap()
                .keep_alive(),
        );
    }
    let start = Instant::now();
    ha.switchover();
    ha.wait_healthy(Duration::from_secs(120)).await;
    println!(
        "figure: switchover -> healthy cluster: {:?}",
        start.elapsed()
    );
    // Past one TTL after the switchover: every lease either renewed or lost.
    tokio::time::sleep(Duration::from_secs(35).saturating_sub(start.elapsed())).await;
    let mut alive = 0;
    for l in &kept {
        if futures::FutureExt::now_or_never(l.lost()).is_none() && l.renew().await.is_ok() {
            alive += 1;
        }
    }
    println!("figure: kept-alive leases surviving a switchover: {alive} of 1000");
    drop(kept);

    // SIGKILL of the primary -> first acquire through HAProxy.
    let prober = on(ha.url(), "prober");
    let old = ha.primary().unwrap();
    let killed = Instant::now();
    ha.kill_node(old);
    let mut i = 0;
    loop {
        i += 1;
        let got = tokio::time::timeout(
            Duration::from_secs(2),
            prober.lease(format!("probe-{i}")).try_acquire(),
        )
        .await;
        if let Ok(Ok(Some(l))) = got {
            println!(
                "figure: SIGKILL of the primary -> first acquire through HAProxy: {:?}",
                killed.elapsed()
            );
            let _ = l.release().await;
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "no acquire after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(pool);
}
