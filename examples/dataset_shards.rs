//! Workers process dataset shards, checkpointing into the lease data; one
//! restarts and resumes its own shard where it left off (sticky resume).
//!
//! `cargo run --example dataset_shards` (uses `DATABASE_URL`, or a throwaway
//! PostgreSQL).

mod common;

use std::time::Duration;

use pglock::{Error, Locks};
use serde_json::json;

const SCHEMA: &str = "shards_example";
const POOL: &str = "imagenet-train";
const RECORDS: u64 = 20;
const TTL: Duration = Duration::from_millis(800);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (db, locks) = common::fresh_schema(SCHEMA).await?;
    locks
        .lease_pool(POOL)
        .add((0..12).map(|i| format!("shard-{i:03}")))
        .await?;

    let mut workers = Vec::new();
    for w in 0..3 {
        let handle = Locks::builder(db.clone())
            .schema(SCHEMA)
            .holder(format!("worker-{w}"))
            .build()?;
        workers.push(tokio::spawn(worker(w, handle, w == 1)));
    }
    let mut processed = 0;
    for w in workers {
        processed += w.await??;
    }
    let status = locks.lease_pool(POOL).status().await?;
    println!(
        "\n{processed} records processed; pool: {} of {} shards done",
        status.done, status.total
    );
    assert_eq!(status.done, 12);
    assert_eq!(
        processed,
        12 * RECORDS,
        "every record processed exactly once"
    );
    Ok(())
}

/// Processes shards until the pool is drained; with `crash`, dies once in
/// the middle of its first shard and comes back (same label) after a TTL.
async fn worker(w: usize, locks: Locks, mut crash: bool) -> Result<u64, Error> {
    let pool = locks.lease_pool(POOL);
    let mut processed = 0;
    loop {
        let shard = match pool.claim().ttl(TTL).acquire().await {
            Ok(l) => l.keep_alive(),
            Err(Error::PoolDrained { .. }) => return Ok(processed),
            Err(e) => return Err(e),
        };
        let start = shard.data().and_then(|d| d["offset"].as_u64()).unwrap_or(0);
        if start > 0 {
            println!(
                "worker-{w} resumes {} at record {start} (token {})",
                shard.name(),
                shard.token()
            );
        }
        let mut crashed = false;
        for offset in start..RECORDS {
            tokio::time::sleep(Duration::from_millis(15)).await; // process one record
            processed += 1;
            shard.set_data(json!({"offset": offset + 1})).await?; // checkpoint
            if crash && offset == 4 {
                crashed = true;
                break;
            }
        }
        if crashed {
            println!(
                "worker-{w} crashes in {} after 5 records (checkpoint saved)",
                shard.name()
            );
            shard.orphan();
            // The process restarts; by then its lease has expired.
            tokio::time::sleep(TTL + Duration::from_millis(200)).await;
            println!("worker-{w} restarts");
            crash = false;
            continue;
        }
        shard.complete().await?;
    }
}
