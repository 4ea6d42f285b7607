//! Hot hand-off: one lease, 32 waiters in 2 processes (16 tasks each), each
//! acquiring, holding it, releasing, and queueing again; once with no hold
//! (the same work per hand-off as the 1-task floor's acquire+release, so
//! the ratio is the hand-off's own cost) and once with a 1 ms hold (a
//! holder that does something: tokio's timer makes it 1-2 ms).
//!
//! Reported: hand-offs per second; the hand-off gap (from one holder's
//! release being sent to the next holder having the lease, i.e. the wait
//! beyond the holder's hold time) as p50/p99/max; each waiter's whole wait
//! (queueing included) p99/max; and the fewest and most acquisitions of one
//! waiter (starvation shows as a minimum near zero). The floor is the 1-task
//! acquire+release rate of the same run (target: >= 0.7x).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pglock::Locks;
use sqlx::postgres::PgPoolOptions;

use crate::stats::Record;
use crate::{Ctx, exec};

const SCHEMA: &str = "bench_handoff";
const NAME: &str = "hot";
const HOLDS: [Duration; 2] = [Duration::ZERO, Duration::from_millis(1)];
const PER_PROCESS: usize = 16;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// One acquisition: (waiter, wait started, acquired, release sent), in
/// wall-clock microseconds (comparable across the two processes).
type Event = (usize, u64, u64, u64);

async fn hammer(
    url: &str,
    proc_id: usize,
    hold: Duration,
    (start_us, end_us): (u64, u64),
) -> Vec<Event> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap();
    let locks = Locks::builder(pool)
        .schema(SCHEMA)
        .holder(format!("proc-{proc_id}"))
        .build()
        .unwrap();
    let wait = start_us.saturating_sub(now_us());
    tokio::time::sleep(Duration::from_micros(wait)).await;
    let mut tasks = Vec::new();
    for t in 0..PER_PROCESS {
        let locks = locks.clone();
        let waiter = proc_id * PER_PROCESS + t;
        tasks.push(tokio::spawn(async move {
            let mut ev = Vec::new();
            while now_us() < end_us {
                let t0 = now_us();
                let lease = locks
                    .lease(NAME)
                    .ttl(Duration::from_secs(10))
                    .timeout(Duration::from_secs(60))
                    .acquire()
                    .await
                    .unwrap_or_else(|e| panic!("waiter {waiter}: {e}"));
                let t1 = now_us();
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                let t2 = now_us();
                lease.release().await.unwrap();
                ev.push((waiter, t0, t1, t2));
            }
            ev
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The second process: `--worker handoff URL HOLD_US START_US END_US`;
/// prints one event per line.
pub async fn worker(args: &[String]) {
    let url = &args[0];
    let hold = Duration::from_micros(args[1].parse().unwrap());
    let window = (args[2].parse().unwrap(), args[3].parse().unwrap());
    for (w, a, b, c) in hammer(url, 1, hold, window).await {
        println!("{w} {a} {b} {c}");
    }
}

pub async fn run(ctx: &mut Ctx) {
    for hold in HOLDS {
        phase(ctx, hold).await;
    }
}

async fn phase(ctx: &mut Ctx, hold: Duration) {
    exec(
        &ctx.pool,
        &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
    )
    .await;
    Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .build()
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let secs = ctx.secs.mul_f64(2.0);
    let start = now_us() + 2_000_000;
    let end = start + secs.as_micros() as u64;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--worker",
            "handoff",
            &ctx.url,
            &hold.as_micros().to_string(),
            &start.to_string(),
            &end.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the second hand-off process");
    let mut ev = hammer(&ctx.url, 0, hold, (start, end)).await;
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "hand-off worker failed");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        ev.push((v[0] as usize, v[1], v[2], v[3]));
    }
    ev.sort_by_key(|e| e.2);
    // Exclusion check while we are here: no two holds overlap.
    for w in ev.windows(2) {
        assert!(
            w[1].2 >= w[0].3,
            "two holders at once: {:?} {:?}",
            w[0],
            w[1]
        );
    }
    let in_window = ev.iter().filter(|e| e.2 <= end).count();
    let gaps: Vec<Duration> = ev
        .windows(2)
        .map(|w| Duration::from_micros(w[1].2 - w[0].3))
        .collect();
    let mut waits: Vec<Duration> = ev
        .iter()
        .map(|e| Duration::from_micros(e.2 - e.1))
        .collect();
    waits.sort();
    let mut per = vec![0usize; 2 * PER_PROCESS];
    for e in ev.iter().filter(|e| e.2 <= end) {
        per[e.0] += 1;
    }
    let elapsed = Duration::from_micros(end - start);
    let case = if hold.is_zero() {
        "hot hand-off gap, no hold (32 waiters, 2 procs)"
    } else {
        "hot hand-off gap, 1 ms hold (32 waiters, 2 procs)"
    };
    let mut r = Record::from_lat(case, "pglock", 2 * PER_PROCESS, gaps, elapsed);
    r.ops_s = in_window as f64 / elapsed.as_secs_f64();
    r.n = in_window;
    let wait_p99 = crate::stats::percentile_ms(&waits, 0.99);
    let wait_max = waits.last().map_or(0.0, crate::stats::ms);
    let floor = |imp: &str| {
        ctx.out
            .iter()
            .rfind(|x| x.case == "lease acquire+release" && x.imp == imp && x.tasks == 1)
            .map(|x| x.ops_s)
    };
    let mut r = r
        .extra("hold_ms", crate::stats::ms(&hold))
        .extra("wait_p99_ms", wait_p99)
        .extra("wait_max_ms", wait_max)
        .extra("min_per_waiter", *per.iter().min().unwrap() as f64)
        .extra("max_per_waiter", *per.iter().max().unwrap() as f64);
    if let Some(f) = floor("pglock") {
        let x = r.ops_s / f;
        r = r.extra("x_pglock_1task", x);
    }
    if let Some(f) = floor("raw") {
        let x = r.ops_s / f;
        r = r.extra("x_raw_1task", x);
    }
    ctx.push(r);
}
