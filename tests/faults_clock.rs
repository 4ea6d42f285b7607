//! Skewed client clocks: worker processes run under `faketime` an hour ahead
//! and an hour behind; leases still expire and hand over by the database
//! clock. The workers are this test binary itself, re-run with
//! `PGLOCK_CLOCK_WORKER` set. Needs the `faketime` command (Debian package
//! `faketime`; skipped with a note when it is missing, except in CI, where
//! `.ci/run` installs it).

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pglock::Locks;
use sqlx::postgres::PgPoolOptions;

const LEASE: &str = "skewed";

/// Run as a worker process: take the lease (waiting for it), write one
/// fenced row, then exit without releasing (a crash): the next worker must
/// take over after the TTL by the database clock, whatever its own clock says.
#[tokio::test]
async fn clock_worker() {
    let Ok(role) = std::env::var("PGLOCK_CLOCK_WORKER") else {
        return;
    };
    let url = std::env::var("PGLOCK_CLOCK_URL").unwrap();
    let schema = std::env::var("PGLOCK_CLOCK_SCHEMA").unwrap();
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let locks = Locks::builder(db.clone())
        .schema(schema.clone())
        .holder(role.clone())
        .build()
        .unwrap();
    let lease = locks
        .lease(LEASE)
        .ttl(Duration::from_millis(1500))
        .timeout(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    lease.fence(&mut tx).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".writes (worker, token, local_time) VALUES ($1, $2, $3)"
    )))
    .bind(&role)
    .bind(lease.token())
    .bind(chrono::Utc::now())
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    lease.orphan();
}

#[tokio::test]
async fn leases_hand_over_by_the_database_clock_under_skewed_client_clocks() {
    if std::env::var("PGLOCK_CLOCK_WORKER").is_ok() {
        return;
    }
    let Some(faketime) = support::require_tool("faketime", "faketime") else {
        return;
    };
    let t = support::db().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{}\".writes (worker text, token bigint, local_time timestamptz, at timestamptz DEFAULT clock_timestamp())",
        t.schema
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    let exe = std::env::current_exe().unwrap();
    let url = support::cluster::shared_url();
    let started = Instant::now();
    // Two workers an hour apart, twice, one after the other.
    for (i, skew) in ["+1h", "-1h", "+1h", "-1h"].iter().enumerate() {
        let status = Command::new(&faketime)
            .args(["-f", skew])
            .arg(&exe)
            .args(["--exact", "clock_worker", "--nocapture"])
            .env("PGLOCK_CLOCK_WORKER", format!("w{i}{skew}"))
            .env("PGLOCK_CLOCK_URL", &url)
            .env("PGLOCK_CLOCK_SCHEMA", &t.schema)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "worker {i} ({skew}) failed");
    }
    let rows: Vec<(String, i64, chrono::DateTime<chrono::Utc>, Option<f64>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT worker, token, local_time, \
                extract(epoch FROM at - lag(at) OVER (ORDER BY at))::float8 \
           FROM \"{}\".writes ORDER BY at",
            t.schema
        )))
        .fetch_all(&t.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(
        rows.windows(2).all(|w| w[0].1 < w[1].1),
        "tokens increase: {rows:?}"
    );
    // The workers' clocks really were an hour off...
    let now = chrono::Utc::now();
    assert!(
        (rows[0].2 - now).num_minutes() > 50,
        "worker clock not skewed: {rows:?}"
    );
    assert!(
        (now - rows[1].2).num_minutes() > 50,
        "worker clock not skewed: {rows:?}"
    );
    // ...yet each crashed lease was taken over after its 1.5 s TTL by the
    // database clock: not at once, not an hour later.
    for (worker, _, _, gap) in &rows[1..] {
        let gap = gap.expect("a previous write");
        assert!(
            (1.4..15.0).contains(&gap),
            "{worker} took over {gap:.2}s after the previous write"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}
