//! Many advisory locks, few connections: lock+unlock throughput at 1, 8 and
//! 32 tasks while 10,000 advisory locks are held by the same process.
//!
//! Raw floor: one session holds the 10,000 keys (a session can hold any
//! number), the timed lock+unlock runs on dedicated connections. pglock
//! (today one session per held lock): take up to 10,000 guards, bounded in
//! time and by the server's `max_connections`; what it managed to hold, how
//! long it took, and the error that stopped it are reported, then the
//! throughput is measured with what is held. pglock multiplexed
//! (`advisory_sessions(4)`): all 10,000 on 4 shared sessions, then the
//! same timed loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pglock::Locks;
use tokio::sync::Mutex;

use crate::cases::TASKS;
use crate::stats::{Record, run_loops};
use crate::{Ctx, exec, q};

const SCHEMA: &str = "bench_many";
const HELD: i64 = 10_000;
const CASE: &str = "advisory lock+unlock, 10k held";

async fn connections(ctx: &Ctx) -> f64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .fetch_one(&ctx.pool)
    .await
    .unwrap() as f64
}

pub async fn run(ctx: &mut Ctx) {
    exec(
        &ctx.pool,
        &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
    )
    .await;
    // Raw: one session holds them all.
    let mut holder = ctx.raw_connection().await;
    let t = Instant::now();
    q("SELECT count(pg_advisory_lock(k)) FROM generate_series(1, $1) k")
        .bind(HELD)
        .execute(&mut holder)
        .await
        .unwrap();
    let raw_hold_s = t.elapsed().as_secs_f64();
    for tasks in TASKS {
        let mut conns = Vec::new();
        for _ in 0..tasks {
            conns.push(Mutex::new(ctx.raw_connection().await));
        }
        let conns = Arc::new(conns);
        let (lat, el) = run_loops(tasks, ctx.secs, move |t, _| {
            let c = conns.clone();
            async move {
                let mut c = c[t].lock().await;
                let k = 100_000 + t as i64;
                q("SELECT pg_advisory_lock($1)")
                    .bind(k)
                    .execute(&mut *c)
                    .await
                    .unwrap();
                q("SELECT pg_advisory_unlock($1)")
                    .bind(k)
                    .execute(&mut *c)
                    .await
                    .unwrap();
            }
        })
        .await;
        let r = Record::from_lat(CASE, "raw", tasks, lat, el)
            .extra("held", HELD as f64)
            .extra("hold_all_s", raw_hold_s)
            .extra("holding_sessions", 1.0);
        ctx.push(r);
    }
    q("SELECT pg_advisory_unlock_all()")
        .execute(&mut holder)
        .await
        .unwrap();
    drop(holder);

    multiplexed(ctx).await;

    // pglock: one guard per key, 16 at a time, until 10,000, an error, or
    // the time budget.
    let locks = Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .max_sessions(HELD as u32)
        .build()
        .unwrap();
    let budget = Duration::from_secs(if ctx.quick { 20 } else { 60 });
    let t = Instant::now();
    let mut guards = Vec::new();
    let mut error = None;
    'outer: while (guards.len() as i64) < HELD && t.elapsed() < budget {
        let mut batch = Vec::new();
        for i in 0..16.min(HELD - guards.len() as i64) {
            let key = 1 + guards.len() as i64 + i;
            let l = locks.clone();
            batch.push(tokio::spawn(async move {
                l.advisory(key).timeout(Duration::from_secs(5)).lock().await
            }));
        }
        for b in batch {
            match b.await.unwrap() {
                Ok(g) => guards.push(g),
                Err(e) => {
                    error.get_or_insert(e.to_string());
                }
            }
        }
        if error.is_some() {
            break 'outer;
        }
    }
    let hold_s = t.elapsed().as_secs_f64();
    let held = guards.len();
    let sessions = connections(ctx).await;
    println!(
        "  pglock held {held} of {HELD} advisory locks on {sessions} server sessions in {hold_s:.1}s{}",
        error
            .as_deref()
            .map_or(String::new(), |e| format!("; stopped by: {e}"))
    );
    // Leave room for the timed loops' own sessions.
    let spare = guards.len().saturating_sub(48);
    guards.truncate(spare);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for tasks in TASKS {
        let l = locks.clone();
        let (lat, el) = run_loops(tasks, ctx.secs, move |t, _| {
            let l = l.clone();
            async move {
                let g = l.advisory(100_000 + t as i64).lock().await.unwrap();
                g.release().await.unwrap();
            }
        })
        .await;
        let mut r = Record::from_lat(CASE, "pglock", tasks, lat, el)
            .extra("held", guards.len() as f64)
            .extra("hold_all_s", hold_s)
            .extra("holding_sessions", held as f64)
            .extra("server_client_sessions", sessions);
        if let Some(e) = &error {
            r = r.note(format!("held {held} of {HELD}: {e}"));
        } else if (held as i64) < HELD {
            r = r.note(format!(
                "held {held} of {HELD} within {}s",
                budget.as_secs()
            ));
        }
        ctx.push(r);
    }
    drop(guards);
    drop(locks);
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `advisory_sessions(4)`: the 10,000 locks on 4 shared sessions, then
/// lock+unlock of other keys (free: they go onto the shared sessions too).
async fn multiplexed(ctx: &mut Ctx) {
    // Raw floor of a shared session: pg_try_advisory_lock + unlock on the
    // connection that itself holds 2,500 locks (a quarter of them, as each
    // of 4 shared sessions does). Every statement's commit walks the
    // session's local lock table, so its cost grows with what it holds.
    let mut conn = ctx.raw_connection().await;
    q("SELECT count(pg_advisory_lock(k)) FROM generate_series(1, 2500) k")
        .execute(&mut conn)
        .await
        .unwrap();
    let conn = Arc::new(Mutex::new(conn));
    let c = conn.clone();
    let (lat, el) = run_loops(1, ctx.secs, move |_, _| {
        let c = c.clone();
        async move {
            let mut c = c.lock().await;
            q("SELECT pg_try_advisory_lock(100000)")
                .execute(&mut *c)
                .await
                .unwrap();
            q("SELECT pg_advisory_unlock(100000)")
                .execute(&mut *c)
                .await
                .unwrap();
        }
    })
    .await;
    ctx.push(
        Record::from_lat(CASE, "raw, on a session holding 2,500", 1, lat, el)
            .extra("held", 2500.0)
            .extra("holding_sessions", 1.0),
    );
    let mut conn = Arc::try_unwrap(conn).ok().unwrap().into_inner();
    q("SELECT pg_advisory_unlock_all()")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let locks = Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .advisory_sessions(4)
        .build()
        .unwrap();
    let before = connections(ctx).await;
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in 0..16 {
        let l = locks.clone();
        tasks.push(tokio::spawn(async move {
            let mut guards = Vec::new();
            let mut k = 1 + chunk;
            while k <= HELD {
                guards.push(l.advisory(k).try_lock().await.unwrap().expect("free"));
                k += 16;
            }
            guards
        }));
    }
    let mut guards = Vec::new();
    for t in tasks {
        guards.extend(t.await.unwrap());
    }
    let hold_s = t.elapsed().as_secs_f64();
    let sessions = connections(ctx).await - before;
    println!(
        "  pglock (advisory_sessions(4)) held {} advisory locks on {sessions} more server sessions in {hold_s:.1}s",
        guards.len()
    );
    for tasks in TASKS {
        let l = locks.clone();
        let (lat, el) = run_loops(tasks, ctx.secs, move |t, _| {
            let l = l.clone();
            async move {
                let g = l.advisory(100_000 + t as i64).lock().await.unwrap();
                g.release().await.unwrap();
            }
        })
        .await;
        ctx.push(
            Record::from_lat(CASE, "pglock, 4 shared sessions", tasks, lat, el)
                .extra("held", guards.len() as f64)
                .extra("hold_all_s", hold_s)
                .extra("holding_sessions", 4.0)
                .extra("server_client_sessions", sessions),
        );
    }
    let t = Instant::now();
    drop(guards);
    // Unlocks run in spawned tasks: wait until the server shows none.
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid <= $1 AND classid = 0",
        )
        .bind(HELD)
        .fetch_one(&ctx.pool)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("  released 10,000 in {:.1}s", t.elapsed().as_secs_f64());
    drop(locks);
    tokio::time::sleep(Duration::from_millis(300)).await;
}
