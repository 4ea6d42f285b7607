//! Shared by the benchmarks: the database and the raw-SQL floor's
//! connections, and latency percentiles.

#[path = "../../tests/support/cluster.rs"]
mod cluster;

use std::time::Duration;

use sqlx::{Connection, PgConnection};

pub use cluster::shared_url;

/// The `p` percentile of sorted latencies, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default().as_secs_f64() * 1000.0
}

/// A plain connection for the raw-SQL floor, with the durability pglock's own
/// connections use (`synchronous_commit = on`), so both sides pay the same
/// commit.
pub async fn raw_connection(url: &str) -> PgConnection {
    let mut c = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql("SET synchronous_commit = on")
        .execute(&mut c)
        .await
        .unwrap();
    c
}
