//! Release -> waiter wake-up latency with 1, 10 and 100 waiters on one
//! name: from the holder sending its release to the first waiter holding
//! the lease.
//!
//! pglock: waiters blocked in `acquire()` on one `Locks` (one LISTEN
//! connection). Raw floor: one LISTEN connection per waiter that, on the
//! release's NOTIFY, sends the acquire statement; the first to get it wins.
//! The first [`WARMUP`] rounds of each side are not counted: they open
//! connections and prepare statements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglock::Locks;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::cases::{raw_acquire, raw_release};
use crate::stats::Record;
use crate::{Ctx, exec};

const SCHEMA: &str = "bench_wakeup";
const CASE: &str = "wake-up release->acquired";
const WARMUP: usize = 2;

pub async fn run(ctx: &mut Ctx) {
    exec(
        &ctx.pool,
        &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
    )
    .await;
    let locks = Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .holder("holder")
        .build()
        .unwrap();
    locks.migrate().await.unwrap();
    for (waiters, rounds) in [(1, 40), (10, 25), (100, 12)] {
        let rounds = if ctx.quick { rounds } else { rounds * 4 };
        raw(ctx, &locks, waiters, rounds).await;
        ours(ctx, &locks, waiters, rounds).await;
    }
}

fn record(imp: &str, waiters: usize, lat: Vec<Duration>) -> Record {
    let mut r = Record::from_lat(CASE, imp, waiters, lat, Duration::from_secs(1));
    r.ops_s = 0.0;
    r
}

async fn raw(ctx: &mut Ctx, locks: &Locks, waiters: usize, rounds: usize) {
    let sql = locks.__statements();
    // The floor's release always notifies (its waiters do not mark
    // themselves): pglock's release with a bare pg_notify.
    let rel = &sql.lease_release;
    let rel = format!(
        "{}RETURNING pg_notify('pglock', $5)::text",
        &rel[..rel.rfind("RETURNING").expect("a RETURNING clause")]
    );
    let acq = Arc::new(sql.lease_acquire.clone());
    let (names, _) = broadcast::channel::<String>(rounds + 1);
    let (won_tx, mut won) = mpsc::unbounded_channel::<Instant>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::new();
    for _ in 0..waiters {
        let mut listener = PgListener::connect(&ctx.url).await.unwrap();
        listener.listen("pglock").await.unwrap();
        let (mut names, won_tx, done_tx, acq) = (
            names.subscribe(),
            won_tx.clone(),
            done_tx.clone(),
            acq.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while let Ok(name) = names.recv().await {
                let payload = format!("{SCHEMA}:{name}");
                loop {
                    let n = listener.recv().await.unwrap();
                    if n.payload() != payload {
                        continue;
                    }
                    let (ok, _) =
                        raw_acquire(&mut listener, &acq, &name, Uuid::new_v4(), 60_000).await;
                    if ok {
                        won_tx.send(Instant::now()).unwrap();
                    }
                    break;
                }
                done_tx.send(()).unwrap();
            }
        }));
    }
    let mut holder = ctx.raw_connection().await;
    let mut lat = Vec::new();
    for i in 0..rounds + WARMUP {
        let name = format!("raw-{waiters}-{i}");
        let owner = Uuid::new_v4();
        let (ok, token) = raw_acquire(&mut holder, &acq, &name, owner, 60_000).await;
        assert!(ok);
        names.send(name.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = Instant::now();
        raw_release(&mut holder, &rel, SCHEMA, &name, token, owner).await;
        let at = won.recv().await.unwrap();
        if i >= WARMUP {
            lat.push(at.saturating_duration_since(s));
        }
        for _ in 0..waiters {
            done.recv().await.unwrap();
        }
    }
    drop(names);
    for t in tasks {
        t.await.unwrap();
    }
    ctx.push(record("raw", waiters, lat));
}

async fn ours(ctx: &mut Ctx, locks: &Locks, waiters: usize, rounds: usize) {
    let other = Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .holder("waiter")
        .build()
        .unwrap();
    let mut lat = Vec::new();
    for i in 0..rounds + WARMUP {
        let name = format!("ours-{waiters}-{i}");
        let held = locks
            .lease(&name)
            .ttl(Duration::from_secs(60))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        let (won_tx, mut won) = mpsc::unbounded_channel::<Instant>();
        let mut tasks = Vec::new();
        for _ in 0..waiters {
            let (other, name, won_tx) = (other.clone(), name.clone(), won_tx.clone());
            tasks.push(tokio::spawn(async move {
                let l = other.lease(&name).acquire().await.unwrap();
                won_tx.send(Instant::now()).unwrap();
                l
            }));
        }
        // Let every waiter look once and go to sleep on its subscription.
        tokio::time::sleep(Duration::from_millis(10 + waiters as u64)).await;
        let s = Instant::now();
        held.release().await.unwrap();
        let at = won.recv().await.unwrap();
        if i >= WARMUP {
            lat.push(at.saturating_duration_since(s));
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            if let Ok(l) = t.await {
                l.release().await.unwrap();
            }
        }
    }
    ctx.push(record("pglock", waiters, lat));
}
