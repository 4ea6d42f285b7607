//! Agents share an expensive API: at most 4 calls in flight (a semaphore)
//! and at most 20 calls per second (a rate limiter), across every process.
//! Prints the concurrency and rate it observed.
//!
//! `cargo run --example api_limits` (uses `DATABASE_URL`, or a throwaway
//! PostgreSQL).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pglock::Locks;

const SCHEMA: &str = "api_example";
const PERMITS: u32 = 4;
const PER_SECOND: u32 = 20;
const AGENTS: usize = 8;
const CALLS: usize = 8;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (db, _) = common::fresh_schema(SCHEMA).await?;

    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut agents = Vec::new();
    for a in 0..AGENTS {
        let locks = Locks::builder(db.clone())
            .schema(SCHEMA)
            .holder(format!("agent-{a}"))
            .build()?;
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        agents.push(tokio::spawn(async move {
            let mut calls = Vec::new();
            for c in 0..CALLS {
                locks
                    .rate_limiter("embeddings-api/rate", PER_SECOND, Duration::from_secs(1))
                    .acquire()
                    .await?;
                let permit = locks
                    .semaphore("embeddings-api/slots", PERMITS)
                    .ttl(Duration::from_secs(10))
                    .acquire()
                    .await?;
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                calls.push(start.elapsed());
                // The "expensive call".
                tokio::time::sleep(Duration::from_millis(60 + (a * 7 + c * 13) as u64 % 80)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                permit.release().await?;
            }
            Ok::<_, pglock::Error>(calls)
        }));
    }
    let mut starts = Vec::new();
    for a in agents {
        starts.extend(a.await??);
    }
    starts.sort();
    let total = start.elapsed().as_secs_f64();
    // The busiest one-second window of call starts.
    let busiest = starts
        .iter()
        .map(|s| {
            starts
                .iter()
                .filter(|t| **t >= *s && **t < *s + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    println!("{} calls by {AGENTS} agents in {total:.2}s", starts.len());
    println!(
        "peak calls in flight: {} (limit {PERMITS})",
        peak.load(Ordering::SeqCst)
    );
    println!(
        "busiest 1 s window: {busiest} call starts (limit {PER_SECOND}/s, bursts up to {PER_SECOND})"
    );
    println!(
        "average rate after the first burst: {:.1}/s",
        (starts.len() as f64 - PER_SECOND as f64) / (total - 0.0).max(1e-9)
    );
    assert!(peak.load(Ordering::SeqCst) <= PERMITS as usize);
    assert!(busiest <= 2 * PER_SECOND as usize);
    Ok(())
}
