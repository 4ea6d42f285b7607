//! A hyperparameter sweep run by competing workers — pglock's main example.
//!
//! 1. Registers a sweep: a grid of learning rate × batch size × seed (24
//!    trials) as the items of a lease pool.
//! 2. Starts four workers. Each claims any free trial, "trains" on a small
//!    synthetic objective (a few steps, reporting progress in the lease
//!    data), writes its result with a fenced insert, and completes the trial.
//! 3. One worker is killed mid-trial: it stops renewing and never releases.
//!    Its trial comes back after the TTL and another worker finishes it.
//! 4. Prints a leaderboard and checks that every trial has exactly one result.
//!
//! Runs with no setup: `cargo run --example hpo_sweep` uses `DATABASE_URL`
//! if set, or starts a throwaway PostgreSQL.

mod common;

use std::time::Duration;

use pglock::{Error, LeaseRef, Locks};
use serde_json::json;
use sqlx::PgPool;

const SCHEMA: &str = "hpo_example";
const SWEEP: &str = "sweep-2026-11";
const TTL: Duration = Duration::from_secs(1);
const WORKERS: usize = 4;
/// This worker is killed during its second trial.
const DOOMED: usize = 2;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (db, locks) = common::fresh_schema(SCHEMA).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {SCHEMA}.results (trial text NOT NULL, loss float8 NOT NULL, worker text NOT NULL, token bigint NOT NULL)"
    )))
    .execute(&db)
    .await?;

    // 1. The sweep: 4 learning rates x 3 batch sizes x 2 seeds.
    let mut trials = Vec::new();
    for lr in ["1e-4", "3e-4", "1e-3", "3e-3"] {
        for bs in [32, 64, 128] {
            for seed in [0, 1] {
                trials.push(format!("lr={lr},bs={bs},seed={seed}"));
            }
        }
    }
    let sweep = locks.lease_pool(SWEEP);
    let added = sweep.add(trials.clone()).await?;
    println!("registered {added} trials in pool {SWEEP:?}");

    // 2. Workers, each with its own handle as a separate process would have.
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let locks = Locks::builder(db.clone())
            .schema(SCHEMA)
            .holder(format!("worker-{w}"))
            .build()?;
        let db = db.clone();
        handles.push(tokio::spawn(async move { worker(w, locks, db).await }));
    }
    for h in handles {
        let (w, outcome) = h.await?;
        match outcome {
            Ok(Some(n)) => println!("worker-{w} finished: {n} trials, the sweep is drained"),
            Ok(None) => println!("worker-{w} was killed"),
            Err(e) => println!("worker-{w} failed: {e}"),
        }
    }

    // 4. Leaderboard and the exactly-once check.
    let rows: Vec<(String, f64, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT trial, loss, worker, token FROM {SCHEMA}.results ORDER BY loss"
    )))
    .fetch_all(&db)
    .await?;
    println!("\nleaderboard (top 5 of {}):", rows.len());
    println!(
        "  {:<26} {:>8}  {:<9} {:>6}",
        "trial", "loss", "worker", "token"
    );
    for (trial, loss, worker, token) in rows.iter().take(5) {
        println!("  {trial:<26} {loss:>8.4}  {worker:<9} {token:>6}");
    }
    let status = sweep.status().await?;
    println!(
        "\npool status: {} total, {} done, {} held, {} free",
        status.total, status.done, status.held, status.free
    );
    let mut per_trial = std::collections::HashMap::new();
    for (trial, ..) in &rows {
        *per_trial.entry(trial.clone()).or_insert(0) += 1;
    }
    let exactly_once = trials.iter().all(|t| per_trial.get(t) == Some(&1));
    println!("every trial has exactly one result: {exactly_once}");
    assert!(
        exactly_once,
        "some trial has no result or several: {per_trial:?}"
    );
    assert_eq!(status.done as usize, trials.len());
    Ok(())
}

/// Claims trials until the sweep is drained. Returns the worker number and
/// how many trials it completed (`None` if it was killed).
async fn worker(w: usize, locks: Locks, db: PgPool) -> (usize, Result<Option<usize>, Error>) {
    let sweep = locks.lease_pool(SWEEP);
    let mut done = 0;
    loop {
        let trial = match sweep.claim().ttl(TTL).acquire().await {
            Ok(lease) => lease.keep_alive(),
            Err(Error::PoolDrained { .. }) => return (w, Ok(Some(done))),
            Err(e) => return (w, Err(e)),
        };
        if let Some(progress) = trial.data() {
            println!(
                "worker-{w} resumes {} (token {}) after a crash: found {progress}",
                trial.name(),
                trial.token()
            );
        }
        if w == DOOMED && done == 1 {
            // 3. Killed mid-trial: no more renewals, no release.
            println!(
                "worker-{w} is killed while training {} (token {})",
                trial.name(),
                trial.token()
            );
            let _ = trial
                .set_data(json!({"step": 2, "note": "worker-2 died here"}))
                .await;
            trial.orphan();
            return (w, Ok(None));
        }
        // Train unless the lease is lost; a lost trial is left to others.
        let outcome = tokio::select! {
            biased;
            _ = trial.lost() => Err(Error::LeaseLost { name: trial.name().into(), token: trial.token() }),
            r = train(&trial) => r,
        };
        if let Err(e) = outcome {
            return (w, Err(e));
        }
        let loss = objective(trial.name());
        if let Err(e) = record(&db, &trial, w, loss).await {
            return (w, Err(e));
        }
        if let Err(e) = trial.complete().await {
            return (w, Err(e));
        }
        done += 1;
    }
}

/// A few "epochs", each reported in the lease data (visible to everyone,
/// and to whoever takes the trial over).
async fn train(trial: &LeaseRef) -> Result<(), Error> {
    let steps = 3 + (hash(trial.name()) % 4) as u32;
    for step in 1..=steps {
        let jitter = hash(&format!("{}:{step}", trial.name())) % 60;
        tokio::time::sleep(Duration::from_millis(20 + jitter)).await;
        trial.set_data(json!({"step": step, "of": steps})).await?;
    }
    Ok(())
}

/// The fenced write: only the current holder of the trial can commit it.
async fn record(db: &PgPool, trial: &LeaseRef, w: usize, loss: f64) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    trial.fence(&mut tx).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {SCHEMA}.results (trial, loss, worker, token) VALUES ($1, $2, $3, $4)"
    )))
    .bind(trial.name())
    .bind(loss)
    .bind(format!("worker-{w}"))
    .bind(trial.token())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A synthetic validation loss: best near lr=1e-3, bs=64, plus seed noise.
fn objective(trial: &str) -> f64 {
    let field = |k: &str| {
        trial
            .split(',')
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let (lr, bs, seed) = (field("lr="), field("bs="), field("seed="));
    let noise = (hash(&format!("{trial}:{seed}")) % 1000) as f64 / 1000.0 * 0.05;
    0.2 + (lr.log10() + 3.0).powi(2) * 0.1 + (bs.log2() - 6.0).powi(2) * 0.05 + noise
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}
