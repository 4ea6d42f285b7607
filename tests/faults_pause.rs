//! A holder paused past its TTL (SIGSTOP/SIGCONT on a real `pglock exec`
//! process): the next holder takes over after the TTL by the database
//! clock, and the paused worker's fenced write is refused when it resumes.
#![cfg(feature = "cli")]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{db, eventually};

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_paused_holders_fenced_write_is_refused_after_the_takeover() {
    let t = db().await;
    let url = support::cluster::shared_url();
    let schema = &t.schema;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".writes (token bigint)"
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("pglock-pause-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The worker: says it started, waits for "go", then writes with its
    // fencing token inside a transaction, as a script in any language would.
    let script = format!(
        "touch started; while [ ! -e go ]; do sleep 0.02; done; \
         psql \"$URL\" -q -v ON_ERROR_STOP=1 -c \"BEGIN; SELECT \\\"{schema}\\\".fence('paused', $PGLOCK_TOKEN); \
         INSERT INTO \\\"{schema}\\\".writes VALUES ($PGLOCK_TOKEN); COMMIT;\" 2>psql.err; echo $? > rc"
    );
    let mut holder = tokio::process::Command::new(env!("CARGO_BIN_EXE_pglock"))
        .args([
            "--database-url",
            &url,
            "--schema",
            schema,
            "exec",
            "--lease",
            "paused",
            "--ttl",
            "1s",
            "--grace",
            "1s",
        ])
        .args(["--", "sh", "-c", &script])
        .current_dir(&dir)
        .env("URL", &url)
        .env_remove("DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eventually(20, "the worker starts", || async {
        dir.join("started").exists()
    })
    .await;
    let old_token = t
        .locks
        .leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name == "paused")
        .unwrap()
        .token;

    // The holder process pauses (a GC pause, a stopped VM): no renewals.
    signal(holder.id().unwrap(), "-STOP");
    let next = t
        .other("next")
        .lease("paused")
        .ttl(Duration::from_secs(60))
        .timeout(Duration::from_secs(20))
        .acquire()
        .await
        .expect("taken over after the TTL");
    assert!(next.token() > old_token);

    // The worker writes with its old token: refused.
    std::fs::write(dir.join("go"), "").unwrap();
    eventually(20, "the worker's write returns", || async {
        dir.join("rc").exists()
    })
    .await;
    let rc = std::fs::read_to_string(dir.join("rc")).unwrap();
    assert_ne!(rc.trim(), "0", "the paused worker's fenced write committed");
    let err = std::fs::read_to_string(dir.join("psql.err")).unwrap();
    assert!(err.contains("is not held by token"), "{err}");
    let written: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".writes"
    )))
    .fetch_one(&t.pool)
    .await
    .unwrap();
    assert_eq!(written, 0);

    // Resumed, pglock sees it lost the lease and exits 70; the new holder
    // keeps it.
    signal(holder.id().unwrap(), "-CONT");
    let status = tokio::time::timeout(Duration::from_secs(20), holder.wait())
        .await
        .expect("pglock exits")
        .unwrap();
    assert_eq!(status.code(), Some(70), "pglock's exit status");
    next.renew().await.expect("the new holder still holds it");
    next.release().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
