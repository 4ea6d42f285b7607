//! pglock against the raw-SQL floor, in the same run.
//!
//! `cargo bench --bench locks` (uses `DATABASE_URL`, or a throwaway local
//! PostgreSQL). `PGLOCK_BENCH_SECS` sets the seconds per case (default 3).
//!
//! Cases, each printed as ops/s with p50/p99 latency of one op:
//! - advisory lock+unlock, 1 task and 8 tasks on distinct keys: pglock
//!   (`lock()` + `release()`) vs raw `pg_advisory_lock`/`pg_advisory_unlock`
//!   on dedicated connections;
//! - lease acquire+release, and renew: pglock vs the same statements sent
//!   raw on dedicated connections;
//! - release → waiter wake-up: pglock's `acquire()` waiter vs a raw
//!   LISTEN connection receiving the release's NOTIFY.

mod common;

use std::time::{Duration, Instant};

use pglock::Locks;
use sqlx::PgConnection;
use sqlx::postgres::{PgListener, PgPoolOptions};

struct Stats {
    name: String,
    ops: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Stats {
    fn print(&mut self) {
        self.lat.sort();
        let pct = |p: f64| common::percentile_ms(&self.lat, p);
        println!(
            "{:<44} {:>9.0} ops/s   p50 {:>7.3} ms   p99 {:>7.3} ms",
            self.name,
            self.ops as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
    }
}

/// Runs `op` in `tasks` concurrent loops for `secs`; `op(task, i)`.
async fn measure<F, Fut>(name: &str, tasks: usize, dur: Duration, op: F) -> Stats
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let end = start + dur;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while Instant::now() < end {
                let s = Instant::now();
                op(t, i).await;
                lat.push(s.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    Stats {
        name: name.to_owned(),
        ops: lat.len(),
        elapsed: start.elapsed(),
        lat,
    }
}

async fn raw_conns(url: &str, n: usize) -> Vec<std::sync::Arc<tokio::sync::Mutex<PgConnection>>> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(std::sync::Arc::new(tokio::sync::Mutex::new(
            common::raw_connection(url).await,
        )));
    }
    v
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("PGLOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dur = Duration::from_secs(secs);
    let url = common::shared_url();
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .unwrap();
    let schema = "bench_locks";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&pool)
    .await
    .unwrap();
    let locks = Locks::builder(pool.clone()).schema(schema).build().unwrap();
    locks.migrate().await.unwrap();
    println!("pglock benchmark, {secs}s per case\n");

    for tasks in [1, 8] {
        let conns = raw_conns(&url, tasks).await;
        let mut raw = measure(
            &format!("advisory raw lock+unlock, {tasks} task(s)"),
            tasks,
            dur,
            move |t, _| {
                let c = conns[t].clone();
                async move {
                    let mut c = c.lock().await;
                    sqlx::query("SELECT pg_advisory_lock($1)")
                        .bind(t as i64)
                        .execute(&mut *c)
                        .await
                        .unwrap();
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(t as i64)
                        .execute(&mut *c)
                        .await
                        .unwrap();
                }
            },
        )
        .await;
        raw.print();
        let l = locks.clone();
        let mut ours = measure(
            &format!("advisory pglock lock+release, {tasks} task(s)"),
            tasks,
            dur,
            move |t, _| {
                let l = l.clone();
                async move {
                    let g = l
                        .advisory(t as i64)
                        .lock()
                        .await
                        .unwrap_or_else(|e| panic!("lock: {e}"));
                    g.release().await.unwrap_or_else(|e| panic!("release: {e}"));
                }
            },
        )
        .await;
        ours.print();
    }

    // Leases: the same statements, raw on dedicated connections.
    let sql = locks.__statements();
    for tasks in [1, 8] {
        let conns = raw_conns(&url, tasks).await;
        let (acq, rel) = (sql.lease_acquire.clone(), sql.lease_release.clone());
        raw_lease_cycle(
            &format!("lease raw acquire+release, {tasks} task(s)"),
            tasks,
            dur,
            conns,
            acq,
            rel,
        )
        .await
        .print();
        let l = locks.clone();
        measure(
            &format!("lease pglock try_acquire+release, {tasks} task(s)"),
            tasks,
            dur,
            move |t, _| {
                let l = l.clone();
                async move {
                    let lease = l
                        .lease(format!("ours-{t}"))
                        .try_acquire()
                        .await
                        .unwrap()
                        .unwrap();
                    lease.release().await.unwrap();
                }
            },
        )
        .await
        .print();
    }

    // Renew: one lease, renewed in a loop.
    let conns = raw_conns(&url, 1).await;
    let lease = locks
        .lease("renew-ours")
        .ttl(Duration::from_secs(60))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let raw_lease = locks
        .lease("renew-raw")
        .ttl(Duration::from_secs(60))
        .try_acquire()
        .await
        .unwrap()
        .unwrap();
    let (renew, name, token) = (
        sql.lease_renew.clone(),
        raw_lease.name().to_owned(),
        raw_lease.token(),
    );
    let owner: uuid::Uuid = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT owner FROM {schema}.leases WHERE name = $1"
    )))
    .bind(&name)
    .fetch_one(&pool)
    .await
    .unwrap();
    measure("lease raw renew, 1 task", 1, dur, move |_, _| {
        let (c, renew, name) = (conns[0].clone(), renew.clone(), name.clone());
        async move {
            let mut c = c.lock().await;
            let n: Vec<(i64, chrono::DateTime<chrono::Utc>, bool)> =
                sqlx::query_as(sqlx::AssertSqlSafe(renew))
                    .bind(vec![""])
                    .bind(vec![name])
                    .bind(vec![token])
                    .bind(vec![owner])
                    .bind(vec![60_000i64])
                    .fetch_all(&mut *c)
                    .await
                    .unwrap();
            assert_eq!(n.len(), 1);
        }
    })
    .await
    .print();
    let handle = lease.handle();
    measure("lease pglock renew, 1 task", 1, dur, move |_, _| {
        let h = handle.clone();
        async move { h.renew().await.unwrap() }
    })
    .await
    .print();
    lease.release().await.unwrap();
    raw_lease.release().await.unwrap();

    wake_up(&url, &locks, dur).await;
}

/// The acquire and release statements, sent raw: two round trips.
async fn raw_lease_cycle(
    name: &str,
    tasks: usize,
    dur: Duration,
    conns: Vec<std::sync::Arc<tokio::sync::Mutex<PgConnection>>>,
    acq: String,
    rel: String,
) -> Stats {
    measure(name, tasks, dur, move |t, _| {
        let (c, acq, rel) = (conns[t].clone(), acq.clone(), rel.clone());
        async move {
            let mut c = c.lock().await;
            let name = format!("raw-{t}");
            let owner = uuid::Uuid::new_v4();
            let (acquired, token): (bool, i64) = sqlx::query_as(sqlx::AssertSqlSafe(acq))
                .bind(&name)
                .bind(owner)
                .bind("bench")
                .bind(30_000i64)
                .bind(None::<serde_json::Value>)
                .bind(None::<i64>) // no lock-delay
                .fetch_one(&mut *c)
                .await
                .unwrap();
            assert!(acquired);
            sqlx::query(sqlx::AssertSqlSafe(rel))
                .bind("")
                .bind(&name)
                .bind(token)
                .bind(owner)
                .bind(format!("bench:{name}"))
                .fetch_one(&mut *c)
                .await
                .unwrap();
        }
    })
    .await
}

/// Release → waiter wake-up latency: from the holder sending its release to
/// the waiter holding the lease. Raw: a LISTEN connection that, on the
/// release's NOTIFY, sends the acquire statement. pglock: a task blocked in
/// `acquire()`.
async fn wake_up(url: &str, locks: &Locks, dur: Duration) {
    let rounds = (dur.as_millis() / 10).clamp(50, 500) as usize;
    let sql = locks.__statements();
    let mut listener = PgListener::connect(url).await.unwrap();
    listener.listen("pglock").await.unwrap();
    let mut holder = common::raw_connection(url).await;
    let mut lat = Vec::new();
    for i in 0..rounds {
        let name = format!("raw-wake-{i}");
        let owner = uuid::Uuid::new_v4();
        let (_, token): (bool, i64) =
            sqlx::query_as(sqlx::AssertSqlSafe(sql.lease_acquire.clone()))
                .bind(&name)
                .bind(owner)
                .bind("bench")
                .bind(60_000i64)
                .bind(None::<serde_json::Value>)
                .bind(None::<i64>) // no lock-delay
                .fetch_one(&mut holder)
                .await
                .unwrap();
        let s = Instant::now();
        // Always notifies (the raw waiter does not mark itself).
        let rel = &sql.lease_release;
        let rel = format!(
            "{}RETURNING pg_notify('pglock', $5)::text",
            &rel[..rel.rfind("RETURNING").expect("a RETURNING clause")]
        );
        sqlx::query(sqlx::AssertSqlSafe(rel))
            .bind("")
            .bind(&name)
            .bind(token)
            .bind(owner)
            .bind(format!("{}:{name}", locks.schema()))
            .fetch_one(&mut holder)
            .await
            .unwrap();
        listener.recv().await.unwrap();
        // The waiter's acquire, on the listening connection itself.
        let (ok, _): (bool, i64) = sqlx::query_as(sqlx::AssertSqlSafe(sql.lease_acquire.clone()))
            .bind(&name)
            .bind(uuid::Uuid::new_v4())
            .bind("bench")
            .bind(60_000i64)
            .bind(None::<serde_json::Value>)
            .bind(None::<i64>) // no lock-delay
            .fetch_one(&mut listener)
            .await
            .unwrap();
        assert!(ok);
        lat.push(s.elapsed());
    }
    let elapsed: Duration = lat.iter().sum();
    Stats {
        name: "wake-up raw release→NOTIFY→acquire".into(),
        ops: rounds,
        elapsed,
        lat,
    }
    .print();

    let mut lat = Vec::new();
    let other = Locks::builder(locks.pool().clone())
        .schema(locks.schema())
        .holder("waiter")
        .build()
        .unwrap();
    for i in 0..rounds {
        let name = format!("wake-{i}");
        let held = locks
            .lease(&name)
            .ttl(Duration::from_secs(60))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        let waiter = tokio::spawn({
            let (other, name) = (other.clone(), name.clone());
            async move {
                let l = other.lease(&name).acquire().await.unwrap();
                let at = Instant::now();
                l.release().await.unwrap();
                at
            }
        });
        // Let the waiter try once and go to sleep on its subscription.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = Instant::now();
        held.release().await.unwrap();
        let woke = waiter.await.unwrap();
        lat.push(woke.saturating_duration_since(s));
    }
    let elapsed: Duration = lat.iter().sum();
    Stats {
        name: "wake-up pglock release→waiter acquired".into(),
        ops: rounds,
        elapsed,
        lat,
    }
    .print();
}
