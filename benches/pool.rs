//! Claim+complete throughput of a lease pool of 1,000,000 items, all free
//! and then 99.99% claimed or done with the table full of dead rows, next to
//! the raw-SQL floor (a plain `FOR UPDATE SKIP LOCKED` claim over one
//! index) in the same run.
//!
//! `cargo bench --bench pool` (uses `DATABASE_URL`, or a throwaway local
//! PostgreSQL). `PGLOCK_BENCH_SECS` sets the seconds per all-free case
//! (default 3), `PGLOCK_BENCH_ITEMS` the pool size (default 1,000,000).
//! Autovacuum is switched off for the table, so dead rows stay.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use pglock::Locks;
use sqlx::PgConnection;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Mutex;

const SCHEMA: &str = "bench_pool";
const POOL: &str = "shards";
const WORKERS: usize = 4;
const FREE_LEFT: usize = 100;

/// The raw floor: claim the first free item over the free-items index.
const RAW_CLAIM: &str = "\
UPDATE bench_pool.leases AS l
   SET token = nextval('bench_pool.fencing_tokens'), owner = $2, holder = 'raw',
       acquired_at = clock_timestamp(), expires_at = clock_timestamp() + interval '60 s'
  FROM (SELECT pool, name FROM bench_pool.leases
         WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done
         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) f
 WHERE l.pool = f.pool AND l.name = f.name
RETURNING l.name, l.token";

const RAW_COMPLETE: &str = "\
UPDATE bench_pool.leases SET done = true, owner = NULL, expires_at = NULL
 WHERE pool = $1 AND name = $2 AND token = $3 AND owner = $4";

struct Stats {
    ops: usize,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            ops: 0,
            elapsed: Duration::ZERO,
            lat: Vec::new(),
        }
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&mut self, name: &str) {
        self.lat.sort();
        let pct = |p: f64| common::percentile_ms(&self.lat, p);
        println!(
            "{name:<52} {:>8.0} claims/s   p50 {:>7.3} ms   p99 {:>8.3} ms   ({} claims)",
            self.rate(),
            pct(0.5),
            pct(0.99),
            self.ops
        );
    }
}

type Conns = Vec<Arc<Mutex<PgConnection>>>;

/// One claim+complete cycle by worker `w`; false when nothing was free.
async fn cycle(raw: Option<&Conns>, locks: &[Locks], w: usize) -> bool {
    match raw {
        Some(conns) => {
            let mut c = conns[w].lock().await;
            let owner = uuid::Uuid::new_v4();
            let row: Option<(String, i64)> = sqlx::query_as(RAW_CLAIM)
                .bind(POOL)
                .bind(owner)
                .fetch_optional(&mut *c)
                .await
                .unwrap();
            let Some((name, token)) = row else {
                return false;
            };
            sqlx::query(RAW_COMPLETE)
                .bind(POOL)
                .bind(&name)
                .bind(token)
                .bind(owner)
                .execute(&mut *c)
                .await
                .unwrap();
            true
        }
        None => match locks[w]
            .lease_pool(POOL)
            .claim()
            .ttl(Duration::from_secs(60))
            .try_acquire()
            .await
            .unwrap()
        {
            Some(lease) => {
                lease.complete().await.unwrap();
                true
            }
            None => false,
        },
    }
}

/// Runs claim+complete cycles with `WORKERS` tasks until `until`, or until
/// `budget` claims were made (or nothing is free); adds them to `stats`.
async fn run(
    raw: Option<Arc<Conns>>,
    locks: Arc<Vec<Locks>>,
    until: Instant,
    budget: usize,
    stats: &mut Stats,
) {
    let start = Instant::now();
    let left = Arc::new(AtomicUsize::new(budget));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (raw, locks, left) = (raw.clone(), locks.clone(), left.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let take = || {
                left.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            };
            while Instant::now() < until && take() {
                let s = Instant::now();
                if !cycle(raw.as_deref(), &locks, w).await {
                    break;
                }
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    for t in tasks {
        let lat = t.await.unwrap();
        stats.ops += lat.len();
        stats.lat.extend(lat);
    }
    stats.elapsed += start.elapsed();
}

async fn exec(db: &sqlx::PgPool, sql: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(db)
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("PGLOCK_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let items: usize = std::env::var("PGLOCK_BENCH_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let url = common::shared_url();
    let db = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap();
    exec(&db, &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")).await;
    let locks: Vec<Locks> = (0..WORKERS)
        .map(|w| {
            Locks::builder(db.clone())
                .schema(SCHEMA)
                .holder(format!("w{w}"))
                .build()
                .unwrap()
        })
        .collect();
    locks[0].migrate().await.unwrap();
    exec(
        &db,
        &format!("ALTER TABLE {SCHEMA}.leases SET (autovacuum_enabled = off)"),
    )
    .await;
    let locks = Arc::new(locks);
    let mut raw_conns = Vec::new();
    for _ in 0..WORKERS {
        raw_conns.push(Arc::new(Mutex::new(common::raw_connection(&url).await)));
    }
    let raw = Arc::new(raw_conns);

    let setup = Instant::now();
    let pool = locks[0].lease_pool(POOL);
    for start in (0..items).step_by(100_000) {
        let batch: Vec<String> = (start..(start + 100_000).min(items))
            .map(|i| format!("item-{i:07}"))
            .collect();
        pool.add(batch).await.unwrap();
    }
    exec(&db, &format!("VACUUM ANALYZE {SCHEMA}.leases")).await;
    println!(
        "pool of {items} items ready in {:.1}s; {WORKERS} workers, claim+complete\n",
        setup.elapsed().as_secs_f64()
    );

    // All free. The raw floor first, then VACUUM so pglock starts clean too.
    let mut raw_free = Stats::new();
    run(
        Some(raw.clone()),
        locks.clone(),
        Instant::now() + Duration::from_secs(secs),
        usize::MAX,
        &mut raw_free,
    )
    .await;
    raw_free.print("all free, raw SKIP LOCKED claim + complete");
    exec(&db, &format!("VACUUM {SCHEMA}.leases")).await;
    let mut ours_free = Stats::new();
    run(
        None,
        locks.clone(),
        Instant::now() + Duration::from_secs(secs),
        usize::MAX,
        &mut ours_free,
    )
    .await;
    ours_free.print("all free, pglock claim + complete");

    // 99.99% claimed or done: complete all but FREE_LEFT + held items in
    // one bulk UPDATE (a million dead rows, no VACUUM), hold some.
    let bulk = Instant::now();
    exec(
        &db,
        &format!(
            "UPDATE {SCHEMA}.leases SET done = true WHERE pool = '{POOL}' AND NOT done AND name NOT IN \
             (SELECT name FROM {SCHEMA}.leases WHERE pool = '{POOL}' AND NOT done ORDER BY seq DESC LIMIT {})",
            FREE_LEFT + 400
        ),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(
            locks[0]
                .lease_pool(POOL)
                .claim()
                .ttl(Duration::from_secs(600))
                .try_acquire()
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let status = pool.status().await.unwrap();
    println!(
        "\nnow {} done, {} held, {} free of {} ({:.2}% claimed or done; bulk update {:.1}s, no VACUUM)",
        status.done,
        status.held,
        status.free,
        status.total,
        100.0 * (status.done + status.held) as f64 / status.total as f64,
        bulk.elapsed().as_secs_f64()
    );

    // Rounds: claim+complete the FREE_LEFT free items, then add FREE_LEFT
    // new ones (untimed), so the pool stays 99.99% claimed or done.
    let rounds = 20;
    let mut raw_busy = Stats::new();
    let mut ours_busy = Stats::new();
    let mut next = items;
    for r in 0..rounds * 2 {
        let (which, stats) = if r % 2 == 0 {
            (Some(raw.clone()), &mut raw_busy)
        } else {
            (None, &mut ours_busy)
        };
        run(
            which,
            locks.clone(),
            Instant::now() + Duration::from_secs(60),
            FREE_LEFT,
            stats,
        )
        .await;
        let batch: Vec<String> = (next..next + FREE_LEFT)
            .map(|i| format!("item-{i:07}"))
            .collect();
        next += FREE_LEFT;
        pool.add(batch).await.unwrap();
    }
    raw_busy.print("99.99% claimed/done, raw SKIP LOCKED claim + complete");
    ours_busy.print("99.99% claimed/done, pglock claim + complete");
    println!(
        "\npglock at 99.99% / pglock all free: {:.2}x   (raw: {:.2}x)",
        ours_busy.rate() / ours_free.rate(),
        raw_busy.rate() / raw_free.rate()
    );
    for l in held {
        l.orphan();
    }
}
