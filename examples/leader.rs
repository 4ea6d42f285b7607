//! Leader election with a kept-alive, fenced lease.
//!
//! Three workers compete for the lease "leader". The leader writes a fenced
//! row every 100 ms. Each leader "crashes" after a few writes: it stops
//! renewing and goes silent without releasing, as a killed process would.
//! The next worker takes over within one TTL, and every leader's writes carry
//! a greater fencing token than the last one's.
//!
//! Runs with no setup: it uses `DATABASE_URL` if set, or starts a throwaway
//! PostgreSQL. `cargo run --example leader`

mod common;

use std::time::{Duration, Instant};

use pglock::Locks;

const TTL: Duration = Duration::from_secs(1);
const TERMS: usize = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "leader_example";
    let (pool, _) = common::fresh_schema(schema).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {schema}.log (id bigserial PRIMARY KEY, worker text, token bigint, at timestamptz DEFAULT clock_timestamp())"
    )))
    .execute(&pool)
    .await?;

    let started = Instant::now();
    let (crashed_tx, mut crashed_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for w in 0..3 {
        let locks = Locks::builder(pool.clone())
            .schema(schema)
            .holder(format!("worker-{w}"))
            .build()?;
        let (pool, crashed) = (pool.clone(), crashed_tx.clone());
        workers.push(tokio::spawn(async move {
            worker(w, locks, pool, crashed).await
        }));
    }
    drop(crashed_tx);

    // Each crash hands leadership to the next worker; stop after TERMS terms.
    let mut handovers = Vec::new();
    for _ in 0..TERMS {
        let (who, at): (String, Instant) = crashed_rx.recv().await.expect("a leader crashes");
        handovers.push((who, at));
    }
    for w in workers {
        w.abort();
    }

    let rows: Vec<(String, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT worker, token, at FROM {schema}.log ORDER BY id"
        )))
        .fetch_all(&pool)
        .await?;
    let mut terms: Vec<(String, i64, usize)> = Vec::new();
    for (worker, token, _) in &rows {
        match terms.last_mut() {
            Some((w, t, n)) if w == worker && *t == *token => *n += 1,
            _ => terms.push((worker.clone(), *token, 1)),
        }
    }
    println!("{:<10} {:>8} {:>7}", "leader", "token", "writes");
    for (w, t, n) in &terms {
        println!("{w:<10} {t:>8} {n:>7}");
    }
    let increasing = rows.windows(2).all(|p| p[0].1 <= p[1].1);
    let gaps: Vec<f64> = rows
        .windows(2)
        .filter(|p| p[0].1 != p[1].1)
        .map(|p| (p[1].2 - p[0].2).num_milliseconds() as f64 / 1000.0)
        .collect();
    println!(
        "\n{} terms in {:.1}s; hand-over gaps (s): {:?}",
        terms.len(),
        started.elapsed().as_secs_f64(),
        gaps
    );
    println!("tokens never decrease in commit order: {increasing}");
    assert!(increasing, "fenced writes out of token order");
    assert!(terms.len() >= TERMS, "expected {TERMS} leaders");
    assert!(
        gaps.iter().all(|g| *g <= TTL.as_secs_f64() + 0.5),
        "a hand-over took longer than one TTL (+0.5 s): {gaps:?}"
    );
    Ok(())
}

/// Campaigns for leadership; while leader, writes a fenced row every 100 ms
/// and "crashes" after eight writes.
async fn worker(
    w: usize,
    locks: Locks,
    pool: sqlx::PgPool,
    crashed: tokio::sync::mpsc::UnboundedSender<(String, Instant)>,
) -> Result<(), pglock::Error> {
    loop {
        let lease = locks.lease("leader").ttl(TTL).acquire().await?.keep_alive();
        println!("worker-{w} leads with token {}", lease.token());
        for _ in 0..8 {
            let mut tx = pool.begin().await?;
            lease.fence(&mut tx).await?;
            sqlx::query("INSERT INTO leader_example.log (worker, token) VALUES ($1, $2)")
                .bind(format!("worker-{w}"))
                .bind(lease.token())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("worker-{w} crashes (stops renewing, never releases)");
        lease.orphan();
        let _ = crashed.send((format!("worker-{w}"), Instant::now()));
        // A crashed process does not come back at once.
        tokio::time::sleep(TTL * 3).await;
    }
}
