//! Running the real `pglock` binary in tests: against the shared test
//! database ([`pglock`], [`spawn`]) or a test's own cluster ([`pglock_at`],
//! [`spawn_at`]), with none of the environment variables pglock reads, and
//! the small helpers the CLI tests share. Included by the test files that
//! run the binary (`#[path = "support/cli.rs"] mod cli_support;`), since it
//! needs the binary's path.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::support::TestDb;
use crate::support::cluster;

/// Longest any one pglock run may take in these tests.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// `pglock` with this test's database and schema, and none of the
/// environment variables pglock reads.
pub fn pglock(t: &TestDb) -> assert_cmd::Command {
    pglock_at(&cluster::shared_url(), &t.schema)
}

pub fn isolate(cmd: &mut assert_cmd::Command) -> &mut assert_cmd::Command {
    cmd.env_remove("PGLOCK_SCHEMA").env_remove("PGLOCK_HOLDER")
}

/// The same, started in the background with its output captured.
pub fn spawn(t: &TestDb, args: &[&str]) -> tokio::process::Child {
    spawn_at(&cluster::shared_url(), &t.schema, args)
}

/// Waits for a background pglock, at most [`RUN_LIMIT`].
pub async fn finish(child: tokio::process::Child) -> Output {
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("pglock did not exit in time")
        .expect("wait for pglock")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh directory for a test's files.
pub fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pglock-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub async fn held(t: &TestDb, name: &str) -> bool {
    t.locks
        .leases()
        .await
        .unwrap()
        .iter()
        .any(|l| l.pool.is_none() && l.name == name && l.held)
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does
/// not).
pub fn process_alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state != Some("Z") && state != Some("X")
}

/// `pglock` with `url` (a test's own cluster) and the given schema.
pub fn pglock_at(url: &str, schema: &str) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("pglock").unwrap();
    isolate(cmd.env_remove("DATABASE_URL"))
        .env_remove("PGLOCK_TRANSACTION_POOLER")
        .env_remove("PGLOCK_SESSION_URL")
        .args(["--database-url", url])
        .args(["--schema", schema])
        .timeout(RUN_LIMIT);
    cmd
}

/// The same in the background, output captured.
pub fn spawn_at(url: &str, schema: &str, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pglock"))
        .env_remove("DATABASE_URL")
        .env_remove("PGLOCK_SCHEMA")
        .env_remove("PGLOCK_HOLDER")
        .env_remove("PGLOCK_TRANSACTION_POOLER")
        .env_remove("PGLOCK_SESSION_URL")
        .args(["--database-url", url])
        .args(["--schema", schema])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pglock")
}

/// Runs `pglock ARGS` (with `t`'s database and schema), asserts it
/// succeeded, and returns what it printed.
pub fn stdout_ok(t: &TestDb, args: &[&str]) -> String {
    let out = pglock(t).args(args).assert().success().get_output().clone();
    String::from_utf8(out.stdout).expect("pglock prints UTF-8")
}

/// `pglock ls`: its table and the line that lists lease `name`.
pub fn ls_line(t: &TestDb, name: &str) -> (String, String) {
    let table = stdout_ok(t, &["ls"]);
    let line = table
        .lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("the lease is listed:\n{table}"))
        .to_owned();
    (table, line)
}

/// `pglock ls --json`: the row of lease `name`.
pub fn ls_json_row(t: &TestDb, name: &str) -> serde_json::Value {
    let doc: serde_json::Value =
        serde_json::from_str(&stdout_ok(t, &["ls", "--json"])).expect("ls --json prints JSON");
    doc["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .expect("the lease is listed")
        .clone()
}
