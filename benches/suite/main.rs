//! pglock's benchmark suite: every case of issue 11 beside its raw-SQL floor,
//! in the same run, on a throwaway cluster with production durability
//! (`fsync=on`, `synchronous_commit=on`, `full_page_writes=on`) and then on
//! one with the fast test settings (`fsync=off`).
//!
//! ```text
//! cargo bench --bench suite -- --quick     # a few minutes, one run per case
//! cargo bench --bench suite                # medians of 3 runs, longer cases
//! cargo bench --bench suite -- --runs 5 --secs 5 --only lease,claim --durability production
//! ```
//!
//! Options: `--quick`; `--runs N` (runs per case, the median is reported);
//! `--secs S` (seconds per throughput case); `--only a,b` (cases whose name
//! contains one of these: lease, renew, claim, semaphore, advisory, handoff,
//! bigpool, wakeup, many-advisory, keepalive, metrics); `--durability
//! production|fast|both`; `--items N` (size of the big pool, default
//! 1,000,000; 200,000 with `--quick`); `--no-charts`.
//!
//! With `DATABASE_URL` set, that server is used once, labelled by its own
//! `fsync` setting. Prints ops/s and p50/p99/max per case; writes
//! `target/bench/suite.json` (every run and the medians) and charts into
//! `docs/bench/` (throughput vs tasks, latency percentiles; PNG and SVG).

#[path = "../../tests/support/cluster.rs"]
mod cluster;

mod bigpool;
mod cases;
mod chart;
mod handoff;
mod keepalive;
mod many;
mod overhead;
mod stats;
mod wakeup;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::postgres::{PgArguments, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use stats::Record;

/// What one pass of the suite needs: the server, the settings, the results.
pub struct Ctx {
    pub url: String,
    pub pool: PgPool,
    pub durability: String,
    pub quick: bool,
    pub secs: Duration,
    pub items: usize,
    only: Vec<String>,
    pub out: Vec<Record>,
}

impl Ctx {
    pub fn wants(&self, case: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == case)
    }

    /// Prints and keeps a record.
    pub fn push(&mut self, mut r: Record) {
        r.durability = self.durability.clone();
        r.print();
        self.out.push(r);
    }

    /// A plain connection for the raw floor, with pglock's own session
    /// durability (`synchronous_commit = on`).
    pub async fn raw_connection(&self) -> PgConnection {
        let mut c = PgConnection::connect(&self.url).await.unwrap();
        sqlx::raw_sql("SET synchronous_commit = on")
            .execute(&mut c)
            .await
            .unwrap();
        c
    }
}

/// A query of a runtime string (the statements come from pglock or from the
/// bench itself, never from input).
pub fn q<'q>(sql: &str) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
}

pub async fn exec(db: &PgPool, sql: &str) {
    q(sql)
        .execute(db)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

struct Args {
    quick: bool,
    runs: usize,
    secs: Option<f64>,
    only: Vec<String>,
    durability: Vec<&'static str>,
    items: Option<usize>,
    charts: bool,
}

fn args() -> Args {
    let mut a = Args {
        quick: false,
        runs: 0,
        secs: None,
        only: Vec::new(),
        durability: vec!["production", "fast"],
        items: None,
        charts: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" => {}
            "--quick" => a.quick = true,
            "--no-charts" => a.charts = false,
            "--runs" => a.runs = val().parse().expect("--runs N"),
            "--secs" => a.secs = Some(val().parse().expect("--secs S")),
            "--items" => a.items = Some(val().parse().expect("--items N")),
            "--only" => a.only = val().split(',').map(str::to_owned).collect(),
            "--durability" => {
                a.durability = match val().as_str() {
                    "production" => vec!["production"],
                    "fast" => vec!["fast"],
                    "both" => vec!["production", "fast"],
                    v => panic!("--durability production|fast|both, got {v}"),
                }
            }
            other => panic!("unknown option {other} (see benches/suite/main.rs)"),
        }
    }
    if a.runs == 0 {
        a.runs = if a.quick { 1 } else { 3 };
    }
    a
}

/// Starts a throwaway cluster with the given durability, with
/// pg_stat_statements loaded (the keep-alive case reads it).
async fn start_cluster(durability: &str) -> (cluster::Cluster, String) {
    let c = tokio::task::block_in_place(cluster::Cluster::start);
    let url = c.url();
    let settings = match durability {
        "production" => "fsync = on\nsynchronous_commit = on\nfull_page_writes = on",
        _ => "fsync = off\nsynchronous_commit = off\nfull_page_writes = off",
    };
    let mut conn = PgConnection::connect(&url).await.unwrap();
    for line in settings.lines().chain([
        "shared_preload_libraries = 'pg_stat_statements'",
        "max_connections = 400",
        "max_locks_per_transaction = 128",
    ]) {
        let (k, v) = line.split_once(" = ").unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER SYSTEM SET {k} = {v}")))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    tokio::task::block_in_place(|| c.restart("fast"));
    (c, url)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("--worker") {
        return worker().await;
    }
    let a = args();
    let started = Instant::now();
    let mut all = Vec::new();
    let mut settings = Vec::new();
    let passes: Vec<(Option<&str>, Option<String>)> = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => vec![(None, Some(url))],
        _ => a.durability.iter().map(|d| (Some(*d), None)).collect(),
    };
    for (durability, url) in passes {
        let (cluster, url) = match (durability, url) {
            (Some(d), _) => {
                let (c, u) = start_cluster(d).await;
                (Some(c), u)
            }
            (None, Some(u)) => (None, u),
            _ => unreachable!(),
        };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await
            .unwrap();
        let show = |s: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {s}")))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        let (fsync, sc, version) = (
            show("fsync").await,
            show("synchronous_commit").await,
            show("server_version").await,
        );
        let label = durability.map_or_else(
            || if fsync == "on" { "production" } else { "fast" }.to_owned(),
            str::to_owned,
        );
        println!(
            "\n=== {label}: PostgreSQL {version}, fsync={fsync}, synchronous_commit={sc}; {} ===",
            machine()
        );
        settings.push(json!({"durability": label, "fsync": fsync, "synchronous_commit": sc, "server_version": version}));
        let mut ctx = Ctx {
            url,
            pool,
            durability: label,
            quick: a.quick,
            secs: Duration::from_secs_f64(a.secs.unwrap_or(if a.quick { 1.5 } else { 5.0 })),
            items: a.items.unwrap_or(if a.quick { 200_000 } else { 1_000_000 }),
            only: a.only.clone(),
            out: Vec::new(),
        };
        for run in 0..a.runs {
            if a.runs > 1 {
                println!("--- run {} of {}", run + 1, a.runs);
            }
            cases::all(&mut ctx).await;
            if ctx.wants("handoff") {
                handoff::run(&mut ctx).await;
            }
            if ctx.wants("wakeup") {
                wakeup::run(&mut ctx).await;
            }
            if ctx.wants("many-advisory") {
                many::run(&mut ctx).await;
            }
            if ctx.wants("keepalive") {
                keepalive::run(&mut ctx).await;
            }
            if ctx.wants("bigpool") {
                bigpool::run(&mut ctx).await;
            }
            if ctx.wants("metrics") {
                overhead::run(&mut ctx);
            }
        }
        ctx.pool.close().await;
        if let Some(c) = cluster {
            c.stop();
        }
        all.extend(ctx.out);
    }
    let medians = stats::medians(&all);
    println!("\n=== medians of {} run(s) ===", a.runs);
    let mut last = "";
    for r in &medians {
        if r.durability != last {
            println!("[{}]", r.durability);
            last = &r.durability;
        }
        r.print();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let doc = json!({
        "machine": machine(),
        "quick": a.quick,
        "runs": a.runs,
        "settings": settings,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        "medians": medians.iter().map(Record::to_json).collect::<Vec<_>>(),
        "all": all.iter().map(Record::to_json).collect::<Vec<_>>(),
    });
    let file = dir.join("suite.json");
    std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nwrote {}", file.display());
    if a.charts {
        let docs = root.join("docs/bench");
        std::fs::create_dir_all(&docs).unwrap();
        for f in chart::draw(&medians, &docs, &machine()) {
            println!("wrote {}", f.display());
        }
    }
    println!("suite took {:.0}s", started.elapsed().as_secs_f64());
}

/// Child-process modes (the hand-off's second process, the keep-alive
/// client whose RSS is measured alone).
async fn worker() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    match args[0].as_str() {
        "handoff" => handoff::worker(&args[1..]).await,
        "keepalive" => keepalive::worker(&args[1..]).await,
        w => panic!("unknown worker {w}"),
    }
}

/// CPU model and count, for the charts and the JSON.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{n} x {cpu}, loopback")
}
