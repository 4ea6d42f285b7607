//! Pool claim+complete at 1,000,000 items (`--items`), 8 workers, beside a
//! plain `FOR UPDATE SKIP LOCKED` claim over the free-items index:
//! 1. all free (the sides in turns);
//! 2. 99.99% claimed or done, the table full of dead rows (autovacuum off,
//!    no VACUUM): rounds that claim+complete the 100 free items, then add
//!    100 new ones (untimed);
//! 3. the same while `VACUUM` of the table runs in a loop beside it.
//!
//! Targets: pglock >= 0.9x the plain claim when all free, and >= 0.8x the
//! plain all-free rate in 2 and 3 (`x_raw_free` in the extras).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use pglock::Locks;
use sqlx::PgConnection;
use tokio::sync::Mutex;

use crate::keepalive::{clock_ticks, proc_cpu, server_cpu};
use crate::stats::Record;
use crate::{Ctx, exec, q};

const SCHEMA: &str = "bench_bigpool";
const POOL: &str = "shards";
const WORKERS: usize = 8;
const FREE_LEFT: usize = 100;
const HELD: usize = 400;
/// Turns of each side in the all-free phase.
const SLICES: u32 = 5;

/// The floor: claim the first free item over the free-items index.
fn raw_claim() -> String {
    format!(
        "UPDATE {SCHEMA}.leases AS l
            SET token = nextval('{SCHEMA}.fencing_tokens'), owner = $2, holder = 'raw',
                acquired_at = clock_timestamp(), expires_at = clock_timestamp() + interval '60 s'
           FROM (SELECT pool, name FROM {SCHEMA}.leases
                  WHERE pool = $1 AND pool <> '' AND owner IS NULL AND NOT done
                  ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) f
          WHERE l.pool = f.pool AND l.name = f.name
         RETURNING l.name, l.token"
    )
}

fn raw_complete() -> String {
    format!(
        "UPDATE {SCHEMA}.leases SET done = true, owner = NULL, expires_at = NULL
          WHERE pool = $1 AND name = $2 AND token = $3 AND owner = $4"
    )
}

type Conns = Arc<Vec<Mutex<PgConnection>>>;

/// One claim+complete by worker `w`; false when nothing was free.
async fn cycle(raw: Option<&Conns>, locks: &Locks, w: usize) -> bool {
    match raw {
        Some(conns) => {
            let mut c = conns[w].lock().await;
            let owner = uuid::Uuid::new_v4();
            let row: Option<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(raw_claim()))
                .bind(POOL)
                .bind(owner)
                .fetch_optional(&mut *c)
                .await
                .unwrap();
            let Some((name, token)) = row else {
                return false;
            };
            q(&raw_complete())
                .bind(POOL)
                .bind(&name)
                .bind(token)
                .bind(owner)
                .execute(&mut *c)
                .await
                .unwrap();
            true
        }
        None => match locks
            .lease_pool(POOL)
            .claim()
            .holder(format!("w{w}"))
            .ttl(Duration::from_secs(60))
            .try_acquire()
            .await
            .unwrap()
        {
            Some(item) => {
                item.complete().await.unwrap();
                true
            }
            None => false,
        },
    }
}

#[derive(Default)]
struct Acc {
    lat: Vec<Duration>,
    elapsed: Duration,
}

/// CPU seconds used so far by this process and by the server's processes.
async fn cpu(ctx: &Ctx, tck: f64) -> (f64, f64) {
    let client = proc_cpu(std::process::id() as i32, tck);
    (client, server_cpu(ctx, tck).await)
}

/// A record's extras for the CPU one operation cost, in microseconds, on
/// either side: where a gap to the floor is spent.
fn cpu_per_op(r: Record, (client, server): (f64, f64), ops: usize) -> Record {
    let per = |d: f64| d * 1e6 / ops.max(1) as f64;
    r.extra("client_cpu_us_per_op", per(client))
        .extra("server_cpu_us_per_op", per(server))
}

/// Claim+complete with `WORKERS` tasks until `until`, `budget` claims, or
/// nothing free.
async fn run_phase(
    raw: Option<Conns>,
    locks: &Locks,
    until: Instant,
    budget: usize,
    acc: &mut Acc,
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
                if !cycle(raw.as_ref(), &locks, w).await {
                    break;
                }
                lat.push(s.elapsed());
            }
            lat
        }));
    }
    for t in tasks {
        acc.lat.extend(t.await.unwrap());
    }
    acc.elapsed += start.elapsed();
}

pub async fn run(ctx: &mut Ctx) {
    let items = ctx.items;
    exec(
        &ctx.pool,
        &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
    )
    .await;
    let locks = Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .holder("bench")
        .statement_connections(WORKERS as u32)
        .build()
        .unwrap();
    locks.migrate().await.unwrap();
    exec(
        &ctx.pool,
        &format!("ALTER TABLE {SCHEMA}.leases SET (autovacuum_enabled = off)"),
    )
    .await;
    let mut conns = Vec::new();
    for _ in 0..WORKERS {
        conns.push(Mutex::new(ctx.raw_connection().await));
    }
    let raw: Conns = Arc::new(conns);
    let setup = Instant::now();
    let pool = locks.lease_pool(POOL);
    for start in (0..items).step_by(100_000) {
        let batch: Vec<String> = (start..(start + 100_000).min(items))
            .map(|i| format!("item-{i:07}"))
            .collect();
        pool.add(batch).await.unwrap();
    }
    exec(&ctx.pool, &format!("VACUUM ANALYZE {SCHEMA}.leases")).await;
    println!(
        "  pool of {items} items ready in {:.1}s; {WORKERS} workers",
        setup.elapsed().as_secs_f64()
    );
    let case = |phase: &str| format!("pool {}k items, {phase}", items / 1000);

    // 1. All free: the sides in turns, SLICES each, so that drift of the
    // machine (checkpoints, the page cache) falls on both alike; VACUUM
    // (untimed) before each turn, so each starts on a clean table. Each
    // side's CPU is summed over its own turns.
    let tck = clock_ticks();
    let slices = if ctx.quick { 2 } else { SLICES };
    let slice = ctx.secs / slices;
    let (mut raw_free, mut ours_free) = (Acc::default(), Acc::default());
    let (mut raw_cpu, mut ours_cpu) = ((0.0, 0.0), (0.0, 0.0));
    for turn in 0..slices * 2 {
        exec(&ctx.pool, &format!("VACUUM {SCHEMA}.leases")).await;
        let (side, acc, used) = if turn % 2 == 0 {
            (Some(raw.clone()), &mut raw_free, &mut raw_cpu)
        } else {
            (None, &mut ours_free, &mut ours_cpu)
        };
        let c0 = cpu(ctx, tck).await;
        run_phase(side, &locks, Instant::now() + slice, usize::MAX, acc).await;
        let c1 = cpu(ctx, tck).await;
        *used = (used.0 + c1.0 - c0.0, used.1 + c1.1 - c0.1);
    }
    let free_rate = raw_free.lat.len() as f64 / raw_free.elapsed.as_secs_f64();
    let ours_rate = ours_free.lat.len() as f64 / ours_free.elapsed.as_secs_f64();
    let (raw_ops, ours_ops) = (raw_free.lat.len(), ours_free.lat.len());
    ctx.push(cpu_per_op(
        Record::from_lat(
            &case("all free"),
            "raw SKIP LOCKED",
            WORKERS,
            raw_free.lat,
            raw_free.elapsed,
        ),
        raw_cpu,
        raw_ops,
    ));
    ctx.push(cpu_per_op(
        Record::from_lat(
            &case("all free"),
            "pglock",
            WORKERS,
            ours_free.lat,
            ours_free.elapsed,
        )
        .extra("x_raw_free", ours_rate / free_rate),
        ours_cpu,
        ours_ops,
    ));

    // 2. 99.99% claimed or done: one bulk UPDATE completes all but
    // FREE_LEFT + HELD (a million dead rows, no VACUUM), then hold HELD.
    let bulk = Instant::now();
    exec(
        &ctx.pool,
        &format!(
            "UPDATE {SCHEMA}.leases SET done = true WHERE pool = '{POOL}' AND NOT done AND name NOT IN \
             (SELECT name FROM {SCHEMA}.leases WHERE pool = '{POOL}' AND NOT done ORDER BY seq DESC LIMIT {})",
            FREE_LEFT + HELD
        ),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..HELD {
        held.push(
            pool.claim()
                .ttl(Duration::from_secs(3600))
                .try_acquire()
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let status = pool.status().await.unwrap();
    println!(
        "  now {} done, {} held, {} free of {} ({:.3}% claimed or done; bulk update {:.1}s, no VACUUM)",
        status.done,
        status.held,
        status.free,
        status.total,
        100.0 * (status.done + status.held) as f64 / status.total as f64,
        bulk.elapsed().as_secs_f64()
    );
    let rounds = if ctx.quick { 6 } else { 20 };
    let mut next = items;
    for vacuum in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let vacuums = Arc::new(AtomicUsize::new(0));
        let vac = vacuum.then(|| {
            let (url, stop, vacuums) = (ctx.url.clone(), stop.clone(), vacuums.clone());
            tokio::spawn(async move {
                let mut c = <PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .unwrap();
                while !stop.load(SeqCst) {
                    q(&format!("VACUUM {SCHEMA}.leases"))
                        .execute(&mut c)
                        .await
                        .unwrap();
                    vacuums.fetch_add(1, SeqCst);
                }
            })
        });
        let (mut r_acc, mut o_acc) = (Acc::default(), Acc::default());
        for r in 0..rounds * 2 {
            let (side, acc) = if r % 2 == 0 {
                (Some(raw.clone()), &mut r_acc)
            } else {
                (None, &mut o_acc)
            };
            run_phase(
                side,
                &locks,
                Instant::now() + Duration::from_secs(60),
                FREE_LEFT,
                acc,
            )
            .await;
            let batch: Vec<String> = (next..next + FREE_LEFT)
                .map(|i| format!("item-{i:07}"))
                .collect();
            next += FREE_LEFT;
            pool.add(batch).await.unwrap();
        }
        stop.store(true, SeqCst);
        if let Some(v) = vac {
            v.await.unwrap();
        }
        // Claimed or done: all but the FREE_LEFT free items (99.99% of 1M).
        let pct = 100.0 - 100.0 * FREE_LEFT as f64 / items as f64;
        let phase = if vacuum {
            format!("{pct:.2}% claimed/done, VACUUM running")
        } else {
            format!("{pct:.2}% claimed/done, dead rows")
        };
        for (imp, acc) in [("raw SKIP LOCKED", r_acc), ("pglock", o_acc)] {
            let rate = acc.lat.len() as f64 / acc.elapsed.as_secs_f64();
            let mut rec = Record::from_lat(&case(&phase), imp, WORKERS, acc.lat, acc.elapsed)
                .extra("x_raw_free", rate / free_rate);
            if vacuum {
                rec = rec.extra("vacuums", vacuums.load(SeqCst) as f64);
            }
            ctx.push(rec);
        }
    }
    for l in held {
        l.orphan();
    }
}
