//! Shared test setup: a real PostgreSQL (see `cluster.rs`) and a fresh schema
//! per test, so tests run in parallel without touching each other.
#![allow(dead_code)]

pub mod cluster;
pub mod lease;
pub mod pgbouncer;
pub mod proxy;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// A test's own schema on the shared server, migrated.
pub struct TestDb {
    pub pool: PgPool,
    pub locks: pglock::Locks,
    pub schema: String,
}

impl TestDb {
    /// Another handle on the same schema, as a second process would have.
    pub fn other(&self, holder: &str) -> pglock::Locks {
        pglock::Locks::builder(self.pool.clone())
            .schema(self.schema.clone())
            .holder(holder)
            .build()
            .unwrap()
    }
}

pub async fn pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(20)
        .connect(&cluster::shared_url())
        .await
        .expect("connect to the test database")
}

/// A fresh schema, migrated, and a `Locks` on it.
pub async fn db() -> TestDb {
    let pool = pool().await;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let locks = pglock::Locks::builder(pool.clone())
        .schema(schema.clone())
        .holder("test")
        .build()
        .unwrap();
    locks.migrate().await.expect("migrate");
    TestDb {
        pool,
        locks,
        schema,
    }
}

/// Advisory locks on `key` (granted or waiting) as `pg_locks` shows them:
/// (pid, granted, mode).
pub async fn advisory_rows(pool: &PgPool, key: i64) -> Vec<(i32, bool, String)> {
    sqlx::query_as(
        "SELECT pid, granted, mode FROM pg_locks WHERE locktype = 'advisory' \
         AND objsubid = 1 AND ((classid::int8 << 32) | objid::int8) = $1",
    )
    .bind(key)
    .fetch_all(pool)
    .await
    .unwrap()
}

pub async fn text_key(pool: &PgPool, key: &str) -> i64 {
    sqlx::query_scalar("SELECT hashtextextended($1, 0)")
        .bind(key)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until `pg_locks` shows nothing for `key`; panics after `secs`.
/// Sessions pglock closes end asynchronously on the server, so "nothing
/// held" is a state to reach, bounded in time.
pub async fn assert_released(pool: &PgPool, key: i64, secs: u64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let rows = advisory_rows(pool, key).await;
        if rows.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "advisory key {key} still in pg_locks after {secs}s: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A `Locks` on `schema` whose connections carry `application_name = app`,
/// so a test can find (and terminate) exactly its sessions.
pub fn locks_with_app(
    pool: &PgPool,
    schema: &str,
    app: &str,
    statement_connections: u32,
) -> pglock::Locks {
    let options = (*pool.connect_options()).clone().application_name(app);
    let tagged = PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy_with(options);
    pglock::Locks::builder(tagged)
        .schema(schema)
        .holder(app)
        .statement_connections(statement_connections)
        .build()
        .unwrap()
}

/// Terminates every session whose application_name is `app`; returns how many.
pub async fn terminate_app(pool: &PgPool, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Polls `f` until it returns true; panics after `secs` with `what`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `fut` `polls` times, letting the runtime run in between, then drops
/// it. Returns its output if it finished first.
pub async fn poll_then_drop<F: std::future::Future>(fut: F, polls: usize) -> Option<F::Output> {
    use std::task::Poll;
    let mut fut = std::pin::pin!(fut);
    for _ in 0..polls {
        let out = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        if out.is_some() {
            return out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    None
}

/// The absolute path of the external tool `tool` (looked up on `PATH`,
/// then in `/usr/sbin` and `/sbin`, where Debian puts daemons that are not
/// on a user's `PATH`), or `None` when it is not installed: the test then
/// prints `SKIPPED <test>: <tool> not installed (apt-get install <package>)`
/// and should return.
///
/// Where everything must run (`PGLOCK_REQUIRE_TOOLS=1`, set by `.ci/run`,
/// or `CI=true`) a missing tool panics instead. `PGLOCK_TEST_HIDE_TOOLS`
/// (comma-separated tool names) makes this helper treat those tools as
/// missing, to check the skipping without uninstalling anything.
///
/// The path is absolute so that a tool started through `runuser -u
/// postgres` is not looked up on root's `PATH` (whose directories the
/// postgres user may not enter: execvp then fails with "Permission
/// denied" rather than "not found").
pub fn require_tool(tool: &str, package: &str) -> Option<std::path::PathBuf> {
    let hidden = std::env::var("PGLOCK_TEST_HIDE_TOOLS").unwrap_or_default();
    let found = if hidden.split(',').any(|h| h.trim() == tool) {
        None
    } else {
        find_tool(tool)
    };
    if found.is_none() {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        let required = std::env::var("PGLOCK_REQUIRE_TOOLS").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| v == "true");
        let line = format!("{test}: {tool} not installed (apt-get install {package})");
        if required {
            panic!("{line}; PGLOCK_REQUIRE_TOOLS=1 or CI=true: nothing may be skipped");
        }
        // Past the test harness's capture, so that it shows in a plain run.
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "SKIPPED {line}");
    }
    found
}

fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Moves the expiry of the held `pool`/`name` (`""` for a plain lease) to
/// `ago` before now by the database clock, as if its holder had stopped
/// renewing then (no sleeping out a TTL).
pub async fn expire(t: &TestDb, pool: &str, name: &str, ago: std::time::Duration) {
    let n = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{}\".leases SET expires_at = clock_timestamp() - $3 * interval '1 ms' \
         WHERE pool = $1 AND name = $2 AND owner IS NOT NULL",
        t.schema
    )))
    .bind(pool)
    .bind(name)
    .bind(ago.as_millis() as i64)
    .execute(&t.pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1, "one held row {pool}/{name}");
}
