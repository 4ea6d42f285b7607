//! Keep-alive of 10,000 leases: renewal statements per second, server CPU
//! (all server processes, from /proc, over a window with nothing else
//! running) per tick and as a share of one core, the renewal's execution
//! time from pg_stat_statements, and the client's peak RSS per lease.
//!
//! The client is a child process (`--worker keepalive`) so its RSS is its
//! own. Raw floor: the renew statement for 10,000 leases sent raw, and the
//! CPU its backend spent on it.

use std::time::{Duration, Instant};

use futures::FutureExt;
use pglock::Locks;
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::stats::Record;
use crate::{Ctx, exec, q};

const SCHEMA: &str = "bench_keepalive";
const LEASES: usize = 10_000;
/// The default TTL (30 s): renewals every 10 s. The CPU per tick does not
/// depend on the TTL; its share of a core scales with 1/TTL.
const TTL_MS: u64 = 30_000;
const CASE: &str = "keep-alive 10k leases";

fn rss_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `--worker keepalive URL SECS`: takes the leases, keeps them alive,
/// prints `ready`, waits SECS, prints `done BASE_KIB PEAK_KIB LOST`.
pub async fn worker(args: &[String]) {
    let (url, secs): (&str, u64) = (&args[0], args[1].parse().unwrap());
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap();
    let locks = Locks::builder(pool)
        .schema(SCHEMA)
        .holder("ka")
        .build()
        .unwrap();
    // Warm up the connections before the baseline.
    locks
        .lease("warm")
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    let base = rss_kib("VmRSS:");
    let mut leases = Vec::with_capacity(LEASES);
    let mut tasks = Vec::new();
    for part in 0..16 {
        let locks = locks.clone();
        tasks.push(tokio::spawn(async move {
            let mut v = Vec::new();
            for i in (part..LEASES).step_by(16) {
                let l = locks
                    .lease(format!("ka-{i:05}"))
                    .ttl(Duration::from_millis(TTL_MS))
                    .try_acquire()
                    .await
                    .unwrap()
                    .unwrap();
                v.push(l.keep_alive());
            }
            v
        }));
    }
    for t in tasks {
        leases.extend(t.await.unwrap());
    }
    // Let the first renewals settle into shared ticks before measuring.
    tokio::time::sleep(Duration::from_millis(TTL_MS)).await;
    println!("ready");
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let lost = leases
        .iter()
        .filter(|l| l.lost().now_or_never().is_some())
        .count();
    println!("done {base} {} {lost}", rss_kib("VmHWM:"));
    for l in leases {
        l.orphan();
    }
}

/// Seconds of CPU used so far by every server process we can see.
pub async fn server_cpu(ctx: &Ctx, tck: f64) -> f64 {
    let pids: Vec<i32> = sqlx::query_scalar("SELECT pid FROM pg_stat_activity")
        .fetch_all(&ctx.pool)
        .await
        .unwrap();
    pids.iter().map(|p| proc_cpu(*p, tck)).sum()
}

pub fn proc_cpu(pid: i32, tck: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command: state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tck
}

pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Calls and total execution ms of the renew statement so far.
async fn renew_stats(ctx: &Ctx) -> (f64, f64) {
    sqlx::query_as::<_, (f64, f64)>(
        "SELECT coalesce(sum(calls), 0)::float8, coalesce(sum(total_exec_time), 0)::float8 \
           FROM pg_stat_statements WHERE query LIKE '%unnest($1::text[], $2::text[]%'",
    )
    .fetch_one(&ctx.pool)
    .await
    .unwrap()
}

pub async fn run(ctx: &mut Ctx) {
    exec(
        &ctx.pool,
        &format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
    )
    .await;
    exec(
        &ctx.pool,
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
    )
    .await;
    let locks = Locks::builder(ctx.pool.clone())
        .schema(SCHEMA)
        .build()
        .unwrap();
    locks.migrate().await.unwrap();
    let tck = clock_ticks();
    // At least three ticks (one every TTL/3) in the window.
    let window = if ctx.quick { 35 } else { 60 };

    // Raw floor: 10,000 leases renewed by one statement, a few times.
    let mut c = ctx.raw_connection().await;
    let owners: Vec<Uuid> = (0..LEASES).map(|_| Uuid::new_v4()).collect();
    let names: Vec<String> = (0..LEASES).map(|i| format!("raw-{i:05}")).collect();
    let tokens: Vec<i64> = q(&format!(
        "INSERT INTO {SCHEMA}.leases (pool, name, token, owner, holder, acquired_at, expires_at)
         SELECT '', n, nextval('{SCHEMA}.fencing_tokens'), o, 'raw', clock_timestamp(),
                clock_timestamp() + interval '10 min'
           FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS u(n, o, i) ORDER BY i
         RETURNING token"
    ))
    .bind(&names)
    .bind(&owners)
    .fetch_all(&mut c)
    .await
    .unwrap()
    .iter()
    .map(|r| sqlx::Row::get(r, 0))
    .collect();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let renew = locks.__statements().lease_renew.clone();
    let pools = vec![""; LEASES];
    let ttls = vec![TTL_MS as i64; LEASES];
    let mut lat = Vec::new();
    let cpu0 = proc_cpu(pid, tck);
    let rounds = if ctx.quick { 5 } else { 15 };
    for _ in 0..rounds {
        let s = Instant::now();
        let n = q(&renew)
            .bind(&pools)
            .bind(&names)
            .bind(&tokens)
            .bind(&owners)
            .bind(&ttls)
            .fetch_all(&mut c)
            .await
            .unwrap()
            .len();
        assert_eq!(n, LEASES);
        lat.push(s.elapsed());
    }
    let raw_cpu_ms = (proc_cpu(pid, tck) - cpu0) * 1000.0 / rounds as f64;
    let total: Duration = lat.iter().sum();
    let r = Record::from_lat(CASE, "raw", LEASES, lat, total)
        .extra("server_cpu_ms_per_tick", raw_cpu_ms)
        .note("ops/s = renew statements of 10k back to back; latency = one statement");
    ctx.push(r);
    drop(c);

    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--worker", "keepalive", &ctx.url, &window.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the keep-alive client");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let t0 = Instant::now();
    let line = lines
        .next_line()
        .await
        .unwrap()
        .expect("keep-alive client died");
    assert_eq!(line, "ready");
    let setup_s = t0.elapsed().as_secs_f64();
    let (cpu_a, (calls_a, exec_a)) = (server_cpu(ctx, tck).await, renew_stats(ctx).await);
    let w0 = Instant::now();
    let line = lines
        .next_line()
        .await
        .unwrap()
        .expect("keep-alive client died");
    let (cpu_b, (calls_b, exec_b)) = (server_cpu(ctx, tck).await, renew_stats(ctx).await);
    let secs = w0.elapsed().as_secs_f64();
    assert!(child.wait().await.unwrap().success());
    let v: Vec<f64> = line
        .split(' ')
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let (base, peak, lost) = (v[0], v[1], v[2]);
    let ticks = calls_b - calls_a;
    let cpu = cpu_b - cpu_a;
    let mut r = Record::new(CASE, "pglock", LEASES);
    r.ops_s = ticks / secs;
    r.n = ticks as usize;
    if ticks > 0.0 {
        r.p50_ms = (exec_b - exec_a) / ticks;
    }
    let r = r
        .extra("statements_per_s", ticks / secs)
        .extra("expected_per_s", 1000.0 / (TTL_MS as f64 / 3.0))
        .extra("server_cpu_pct_of_core", 100.0 * cpu / secs)
        .extra("server_cpu_ms_per_tick", if ticks > 0.0 { cpu * 1000.0 / ticks } else { f64::NAN })
        .extra("client_rss_bytes_per_lease", (peak - base) * 1024.0 / LEASES as f64 - 8.0)
        .extra("client_peak_rss_mib", peak / 1024.0)
        .extra("lost", lost)
        .extra("setup_s", setup_s)
        .note("ops/s = renew statements per second; p50 = mean exec ms per statement (pg_stat_statements)");
    ctx.push(r);
    let _ = lines;
}
