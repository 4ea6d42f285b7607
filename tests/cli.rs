//! The `pglock` binary, run as users run it, against a real PostgreSQL.
#![cfg(feature = "cli")]

#[path = "support/cli.rs"]
mod cli_support;
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cli_support::*;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::{db, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lease_runs_are_serialized_with_increasing_tokens() {
    let t = db().await;
    let dir = scratch();
    let log = dir.join("log");
    let name = unique("report");
    // Each run logs its start and its end; overlapping runs would interleave.
    let script = format!(
        "echo \"start $PGLOCK_TOKEN\" >> {log}; sleep 0.3; echo \"end $PGLOCK_TOKEN\" >> {log}",
        log = log.display()
    );
    let runs: Vec<_> = (0..3)
        .map(|_| spawn(&t, &["exec", "--lease", &name, "--", "sh", "-c", &script]))
        .collect();
    for run in runs {
        let out = finish(run).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let lines: Vec<String> = read(&log).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut last_token = 0;
    for pair in lines.chunks(2) {
        let start: i64 = pair[0].strip_prefix("start ").unwrap().parse().unwrap();
        assert_eq!(
            pair[1],
            format!("end {start}"),
            "runs overlapped: {lines:?}"
        );
        assert!(start > last_token, "tokens must increase: {lines:?}");
        last_token = start;
    }
    assert!(!held(&t, &name).await, "every run released the lease");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_outliving_its_lost_lease_is_stopped() {
    let t = db().await;
    let dir = scratch();
    let pids = dir.join("pids");
    let name = unique("train");
    // The command ignores SIGTERM and starts a helper: both must be killed.
    let script = format!(
        "trap '' TERM; sleep 30 & echo \"$$ $!\" > {}; wait",
        pids.display()
    );
    let run = spawn(
        &t,
        &[
            "exec", "--lease", &name, "--ttl", "1s", "--grace", "300ms", "--", "sh", "-c", &script,
        ],
    );
    eventually(10, "the command started", || async {
        read(&pids).contains(' ')
    })
    .await;
    assert!(t.locks.force_release(&name).await.unwrap().is_some());

    let started = tokio::time::Instant::now();
    let out = finish(run).await;
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "pglock took {:?} to stop the command",
        started.elapsed()
    );
    let err = stderr(&out);
    assert!(err.contains(&format!("lease {name:?}")), "{err}");
    assert!(
        err.contains("lost") && err.contains("released by someone else"),
        "{err}"
    );
    assert!(err.contains("SIGKILL"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for pid in read(&pids).split_whitespace() {
        assert!(!process_alive(pid), "process {pid} outlived the lease");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_advisory_lock_stops_the_command() {
    let t = db().await;
    let key = unique("ckpt");
    let run = spawn(
        &t,
        &[
            "exec",
            "--advisory",
            &key,
            "--grace",
            "1s",
            "--",
            "sleep",
            "30",
        ],
    );
    let hashed = support::text_key(&t.pool, &key).await;
    eventually(10, "the lock is held", || async {
        !support::advisory_rows(&t.pool, hashed).await.is_empty()
    })
    .await;
    let (pid, _, _) = support::advisory_rows(&t.pool, hashed).await[0].clone();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&t.pool)
        .await
        .unwrap();
    let out = finish(run).await;
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("advisory lock {key:?} was lost")),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_status_is_passed_through() {
    let t = db().await;
    let name = unique("job");
    pglock(&t)
        .args(["exec", "--lease", &name, "--", "sh", "-c", "exit 7"])
        .assert()
        .code(7);
    assert!(!held(&t, &name).await, "released after a failure too");
    pglock(&t)
        .args(["exec", "--lease", &name, "--", "sh", "-c", "kill -KILL $$"])
        .assert()
        .code(128 + 9);
    let out = pglock(&t)
        .args([
            "exec",
            "--lease",
            &name,
            "--",
            "sh",
            "-c",
            "echo \"$PGLOCK_NAME $PGLOCK_TOKEN $PGLOCK_DEADLINE\"",
        ])
        .assert()
        .code(0)
        .get_output()
        .clone();
    let printed = String::from_utf8_lossy(&out.stdout);
    let env: Vec<&str> = printed.split_whitespace().collect();
    assert_eq!(env.len(), 3, "{printed}");
    assert_eq!(env[0], name);
    assert!(env[1].parse::<i64>().is_ok_and(|t| t > 0), "{printed}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(env[2]).is_ok(),
        "{printed}"
    );
    pglock(&t)
        .args([
            "exec",
            "--advisory",
            &name,
            "--",
            "sh",
            "-c",
            "echo \"key=$PGLOCK_KEY\"",
        ])
        .assert()
        .code(0)
        .stdout(format!("key={name}\n"));
    let out = pglock(&t)
        .args(["exec", "--lease", &name, "--", "no-such-command-pglock"])
        .assert()
        .code(127)
        .get_output()
        .clone();
    assert!(
        stderr(&out).contains("command not found"),
        "{}",
        stderr(&out)
    );
    assert!(!held(&t, &name).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_obtained_exits_75_naming_the_holder() {
    let t = db().await;
    let dir = scratch();
    let ran = dir.join("ran");
    let touch = format!("touch {}", ran.display());
    let name = unique("leader");
    let holder = t.other("gpu-07");
    let lease = holder.lease(&name).acquire().await.unwrap();

    for wait in [&["--no-wait"][..], &["--timeout", "300ms"][..]] {
        let mut args = vec!["exec", "--lease", &name];
        args.extend_from_slice(wait);
        args.extend_from_slice(&["--", "sh", "-c", &touch]);
        let out = pglock(&t)
            .args(&args)
            .assert()
            .code(75)
            .get_output()
            .clone();
        let err = stderr(&out);
        assert!(
            err.contains("gpu-07") && err.contains(&format!("token {}", lease.token())),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    assert!(!ran.exists(), "the command must not run without the lease");
    // --quiet silences the reason; the code still tells.
    pglock(&t)
        .args([
            "--quiet",
            "exec",
            "--lease",
            &name,
            "--no-wait",
            "--",
            "true",
        ])
        .assert()
        .code(75)
        .stderr("");
    lease.release().await.unwrap();

    let key = unique("ckpt");
    let guard = t.locks.advisory(key.as_str()).lock().await.unwrap();
    let out = pglock(&t)
        .args([
            "exec",
            "--advisory",
            &key,
            "--no-wait",
            "--",
            "sh",
            "-c",
            &touch,
        ])
        .assert()
        .code(75)
        .get_output()
        .clone();
    assert!(
        stderr(&out).contains(&format!("pid {}", guard.pid())),
        "{}",
        stderr(&out)
    );
    assert!(!ran.exists());
    guard.release().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_all_from_three_processes_completes_every_item_once() {
    let t = db().await;
    let dir = scratch();
    let done = dir.join("done");
    let pool = unique("shards");
    let items: Vec<String> = (0..12).map(|i| format!("shard-{i:03}")).collect();
    // Half from the arguments, half from a file (with a blank line).
    let mut args = vec!["pool", "add", &pool];
    args.extend(items[..6].iter().map(String::as_str));
    pglock(&t).args(&args).assert().success();
    let file = dir.join("items");
    std::fs::write(&file, format!("{}\n\n", items[6..].join("\n"))).unwrap();
    pglock(&t)
        .args(["pool", "add", &pool, "--from-file"])
        .arg(&file)
        .assert()
        .success();

    let script = format!(
        "test \"$PGLOCK_ITEM\" = {{}} && echo {{}} >> {}; sleep 0.05",
        done.display()
    );
    let workers: Vec<_> = (0..3)
        .map(|_| {
            spawn(
                &t,
                &["exec", "--pool", &pool, "--all", "--", "sh", "-c", &script],
            )
        })
        .collect();
    for worker in workers {
        let out = finish(worker).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mut seen: Vec<String> = read(&done).lines().map(str::to_owned).collect();
    seen.sort();
    assert_eq!(seen, items, "every item exactly once");

    let status: Value =
        serde_json::from_str(&stdout_ok(&t, &["pool", "status", &pool, "--json"])).unwrap();
    assert_eq!(
        status,
        json!({"pool": pool, "total": 12, "free": 0, "held": 0, "delayed": 0, "done": 12})
    );
    // Drained: a single claim has nothing to run.
    pglock(&t)
        .args(["exec", "--pool", &pool, "--", "true"])
        .assert()
        .code(75);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_command_puts_its_item_back_and_stops_the_worker() {
    let t = db().await;
    let pool = unique("trials");
    pglock(&t)
        .args(["pool", "add", &pool, "a", "b"])
        .assert()
        .success();
    pglock(&t)
        .args([
            "exec",
            "--pool",
            &pool,
            "--all",
            "--",
            "sh",
            "-c",
            "test {} = a",
        ])
        .assert()
        .code(1);
    let status = t.locks.lease_pool(pool.as_str()).status().await.unwrap();
    assert_eq!((status.done, status.free, status.held), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_json_shows_what_is_held() {
    let t = db().await;
    let name = unique("memory-store");
    let lease = t
        .other("agent-3")
        .lease(&name)
        .data(json!({"step": 1200}))
        .acquire()
        .await
        .unwrap();
    let key = unique("ckpt");
    let guard = t.locks.advisory(key.as_str()).lock().await.unwrap();

    let out = pglock(&t)
        .args(["ls", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let doc: Value = serde_json::from_slice(&out.stdout).expect("ls --json prints JSON");
    let leases = doc["leases"].as_array().unwrap();
    let row = leases
        .iter()
        .find(|l| l["name"] == name.as_str())
        .expect("the lease is listed");
    assert_eq!(row["held"], true);
    assert_eq!(row["holder"], "agent-3");
    assert_eq!(row["token"], lease.token());
    assert_eq!(row["data"], json!({"step": 1200}));
    assert_eq!(row["release_requested"], false);
    assert!(row["expires_in_ms"].as_i64().unwrap() > 0);

    let hashed = support::text_key(&t.pool, &key).await;
    let advisory = doc["advisory_locks"].as_array().unwrap();
    let lock = advisory
        .iter()
        .find(|a| a["pid"] == guard.pid())
        .expect("the advisory lock is listed");
    assert_eq!(lock["key"], hashed);
    assert_eq!(lock["mode"], "exclusive");

    // The table names the same things.
    let out = pglock(&t).arg("ls").assert().success().get_output().clone();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&name) && table.contains("agent-3"),
        "{table}"
    );
    assert!(table.contains(&hashed.to_string()), "{table}");
    guard.release().await.unwrap();
    lease.release().await.unwrap();
}

/// `ls` says whose data a lease carries: a previous holder's is named with
/// its token, so it is not taken for the current holder's.
#[tokio::test]
async fn ls_names_a_previous_holders_data() {
    let t = db().await;
    let name = unique("shard");
    let first = t.other("gpu-7").lease(&name).data(json!({"step": 1800}));
    let first = first.acquire().await.unwrap();
    let first_token = first.token();
    first.release().await.unwrap();
    let now = t.other("gpu-2").lease(&name).acquire().await.unwrap();

    let (table, line) = ls_line(&t, &name);
    assert!(
        line.contains(&format!("token {first_token} (gpu-7)")),
        "{table}"
    );
    let header = table
        .lines()
        .find(|l| l.contains("DATA BY"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(header.contains("HOLDER"), "{table}");
    let row = ls_json_row(&t, &name);
    assert_eq!(row["holder"], "gpu-2");
    assert_eq!(row["token"], now.token());
    assert_eq!(row["data_token"], first_token);
    assert_eq!(row["data_holder"], "gpu-7");
    now.release().await.unwrap();
}

#[tokio::test]
async fn ls_shows_an_expired_lease_in_its_lock_delay_as_delayed() {
    let t = db().await;
    let name = unique("gpu-claim");
    let lease = t
        .locks
        .lease(&name)
        .lock_delay(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    lease.orphan();
    // Its holder stopped renewing a moment ago (no sleeping out the TTL).
    support::expire(&t, "", &name, Duration::from_millis(1)).await;

    let (table, line) = ls_line(&t, &name);
    assert!(line.contains("delayed"), "{table}");
    let row = ls_json_row(&t, &name);
    assert_eq!(row["held"], false);
    assert!(row["delayed_until"].is_string(), "{row}");
    t.locks.force_release(&name).await.unwrap();
}

#[tokio::test]
async fn pool_status_shows_an_expired_item_in_its_lock_delay_as_delayed() {
    let t = db().await;
    let pool = unique("shards");
    t.locks.lease_pool(&pool).add(["s0", "s1"]).await.unwrap();
    let item = t
        .locks
        .lease_pool(&pool)
        .claim()
        .lock_delay(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    let name = item.name().to_owned();
    item.orphan();
    support::expire(&t, &pool, &name, Duration::from_millis(1)).await;

    let doc: Value = serde_json::from_str(&stdout_ok(
        &t,
        &["pool", "status", &pool, "--items", "--json"],
    ))
    .unwrap();
    assert_eq!(doc["delayed"], 1, "{doc}");
    let states: Vec<(String, String, bool)> = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["name"].as_str().unwrap().to_owned(),
                i["state"].as_str().unwrap().to_owned(),
                i["delayed_until"].is_string(),
            )
        })
        .collect();
    let other = if name == "s0" { "s1" } else { "s0" };
    let mut want = vec![
        (name.clone(), "delayed".to_owned(), true),
        (other.to_owned(), "free".to_owned(), false),
    ];
    want.sort();
    let mut states = states;
    states.sort();
    assert_eq!(states, want);
    let table = stdout_ok(&t, &["pool", "status", &pool, "--items"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(name.as_str()))
        .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
    assert!(line.contains("delayed"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_are_passed_on_and_the_lease_released() {
    let t = db().await;
    let dir = scratch();
    let ready = dir.join("ready");
    let name = unique("job");
    let script = format!(
        "trap 'echo got-term > {ready}; exit 5' TERM; echo up > {ready}; sleep 30 & wait",
        ready = ready.display()
    );
    let run = spawn(&t, &["exec", "--lease", &name, "--", "sh", "-c", &script]);
    eventually(10, "the command started", || async {
        read(&ready) == "up\n"
    })
    .await;
    let pid = run.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = finish(run).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_eq!(read(&ready), "got-term\n");
    assert!(!held(&t, &name).await, "released on the way out");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_while_waiting_stops_the_wait_and_holds_nothing() {
    let t = db().await;
    let name = unique("busy");
    let lease = t
        .other("someone-else")
        .lease(&name)
        .acquire()
        .await
        .unwrap();
    // --verbose says when it starts waiting: the signal then finds it waiting.
    let mut run = spawn(&t, &["--verbose", "exec", "--lease", &name, "--", "true"]);
    let mut err = tokio::io::BufReader::new(run.stderr.take().unwrap());
    let mut said = String::new();
    tokio::time::timeout(RUN_LIMIT, async {
        use tokio::io::AsyncBufReadExt;
        while !said.contains("waiting for") {
            if err.read_line(&mut said).await.unwrap() == 0 {
                break;
            }
        }
    })
    .await
    .expect("pglock said it waits");
    assert!(said.contains("someone-else"), "{said}");
    let pid = run.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(RUN_LIMIT, run.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut err, &mut rest)
        .await
        .unwrap();
    assert!(rest.contains("stopped by SIGTERM while waiting"), "{rest}");
    // The holder still holds it; pglock took nothing.
    let leases = t.locks.leases().await.unwrap();
    let row = leases.iter().find(|l| l.name == name).unwrap();
    assert!(row.held && row.token == lease.token());
    lease.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_release_asks_the_command_to_stop() {
    let t = db().await;
    let dir = scratch();
    let ready = dir.join("ready");
    let name = unique("trial");
    let script = format!(
        "trap 'exit 0' TERM; echo up > {}; sleep 30 & wait",
        ready.display()
    );
    let run = spawn(&t, &["exec", "--lease", &name, "--", "sh", "-c", &script]);
    eventually(10, "the command started", || async {
        read(&ready) == "up\n"
    })
    .await;
    let out = pglock(&t)
        .args(["request-release", &name])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(
        stderr(&out).contains("asked the holder"),
        "{}",
        stderr(&out)
    );
    let out = finish(run).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("release requested"),
        "{}",
        stderr(&out)
    );
    assert!(!held(&t, &name).await);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_release_frees_a_held_lease() {
    let t = db().await;
    let name = unique("stuck");
    let lease = t
        .other("crashed-worker")
        .lease(&name)
        .acquire()
        .await
        .unwrap();
    let out = pglock(&t)
        .args(["release", "--force", &name])
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(
        stderr(&out).contains(&format!("token {}", lease.token())),
        "{}",
        stderr(&out)
    );
    assert!(!held(&t, &name).await);
    lease.orphan();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_lost_just_before_the_command_ends_is_reported() {
    let t = db().await;
    let name = unique("late-loss");
    let dir = scratch();
    let flag = dir.join("started");
    // A long TTL: no renewal happens before the command ends, so only the
    // check at the end can notice the force-release.
    let script = format!("touch {}; sleep 1", flag.display());
    let child = spawn(
        &t,
        &[
            "exec", "--lease", &name, "--ttl", "60s", "--", "sh", "-c", &script,
        ],
    );
    eventually(20, "the command starts", || async { flag.exists() }).await;
    assert!(t.locks.force_release(&name).await.unwrap().is_some());
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(70), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lost before it ended"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2_with_a_clear_message() {
    let t = db().await;
    let cases: &[(&[&str], &str)] = &[
        (&["exec", "--", "true"], "--lease"),
        (&["exec", "--lease", "x"], "COMMAND"),
        (
            &["exec", "--lease", "x", "--ttl", "5", "--", "true"],
            "has no unit",
        ),
        (
            &["exec", "--lease", "x", "--ttl", "5min", "--", "true"],
            "unknown unit",
        ),
        (
            &[
                "exec",
                "--lease",
                "x",
                "--no-wait",
                "--timeout",
                "1s",
                "--",
                "true",
            ],
            "cannot be used with",
        ),
        (
            &["exec", "--lease", "x", "--data", "{bad", "--", "true"],
            "not valid JSON",
        ),
        (
            &["exec", "--lease", "x", "--ttl", "10ms", "--", "true"],
            "invalid ttl",
        ),
        (
            &["exec", "--advisory", "k", "--ttl", "1s", "--", "true"],
            "cannot be used with",
        ),
        (&["release", "x"], "--force"),
        (&["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, says) in cases {
        let out = pglock(&t).args(*args).assert().code(2).get_output().clone();
        let err = stderr(&out);
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let urls: &[(&[&str], &str)] = &[
        (&[], "set DATABASE_URL or pass --database-url"),
        (&["--database-url", "not a url"], "invalid database URL"),
    ];
    for (url, says) in urls {
        let mut cmd = assert_cmd::Command::cargo_bin("pglock").unwrap();
        let out = isolate(cmd.env_remove("DATABASE_URL"))
            .args(*url)
            .arg("ls")
            .assert()
            .code(2)
            .get_output()
            .clone();
        assert!(stderr(&out).contains(says), "{url:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_schema_is_reported_with_the_fix() {
    let t = db().await;
    let schema = format!("{}_new", t.schema);
    let run = |args: &[&str]| {
        let mut cmd = assert_cmd::Command::cargo_bin("pglock").unwrap();
        isolate(cmd.env_remove("DATABASE_URL"))
            .args(["--database-url", &support::cluster::shared_url()])
            .args(["--schema", &schema])
            .args(args)
            .timeout(RUN_LIMIT);
        cmd.assert()
    };
    let out = run(&["ls"]).code(1).get_output().clone();
    let err = stderr(&out);
    assert!(
        err.contains("not installed") && err.contains("migrate"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    run(&["migrate"]).success();
    run(&["migrate"]).success();
    run(&["ls", "--json"]).success();
}

#[test]
fn help_has_examples() {
    for sub in [
        &[][..],
        &["exec"],
        &["pool"],
        &["pool", "add"],
        &["pool", "status"],
        &["ls"],
        &["release"],
        &["request-release"],
        &["migrate"],
    ] {
        let mut cmd = assert_cmd::Command::cargo_bin("pglock").unwrap();
        let out = cmd
            .args(sub)
            .arg("--help")
            .assert()
            .success()
            .get_output()
            .clone();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("Example"),
            "{sub:?} --help has no example:\n{help}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_pglock_takes_its_command_with_it() {
    let t = db().await;
    let dir = scratch();
    let pid_file = dir.join("pid");
    let name = unique("k9");
    // The command replaces the shell (exec), so that its pid is the child's.
    let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
    let mut run = spawn(
        &t,
        &[
            "exec", "--lease", &name, "--ttl", "1h", "--", "sh", "-c", &script,
        ],
    );
    eventually(10, "the command started", || async {
        read(&pid_file).ends_with('\n')
    })
    .await;
    let pid = read(&pid_file).trim().to_owned();
    assert!(process_alive(&pid));
    run.start_kill().unwrap(); // SIGKILL: pglock can tell nobody
    let _ = run.wait().await;
    eventually(5, "the command died with pglock", || async {
        !process_alive(&pid)
    })
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A command that waits for `go` (a file) and exits 0, after writing
/// `started`: the test stops the server in between.
fn wait_for_go(dir: &Path) -> String {
    format!(
        "touch {started}; while [ ! -e {go} ]; do sleep 0.05; done; exit 0",
        started = dir.join("started").display(),
        go = dir.join("go").display()
    )
}

async fn server_down_when_the_command_ends(cluster: &Cluster, dir: &Path) {
    eventually(10, "the command started", || async {
        dir.join("started").exists()
    })
    .await;
    cluster.stop();
    std::fs::write(dir.join("go"), "").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_keeps_failing_exits_71_saying_the_lease_may_be_held() {
    let cluster = Cluster::start_tcp();
    let url = cluster.tcp_url();
    let schema = "relfail";
    pglock_at(&url, schema).arg("migrate").assert().success();
    let dir = scratch();
    let script = wait_for_go(&dir);
    let run = spawn_at(
        &url,
        schema,
        &[
            "exec",
            "--lease",
            "relfail",
            "--ttl",
            "1h",
            "--release-timeout",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    server_down_when_the_command_ends(&cluster, &dir).await;
    let out = finish(run).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(71), "{err}");
    assert!(
        err.contains("lease \"relfail\"") && err.contains("may still be held"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_fails_at_exit_is_retried_until_the_server_is_back() {
    let cluster = Cluster::start_tcp();
    let url = cluster.tcp_url();
    let schema = "relretry";
    pglock_at(&url, schema).arg("migrate").assert().success();
    let dir = scratch();
    let script = wait_for_go(&dir);
    let run = spawn_at(
        &url,
        schema,
        &[
            "exec",
            "--lease",
            "relretry",
            "--ttl",
            "1h",
            "--release-timeout",
            "25s",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    server_down_when_the_command_ends(&cluster, &dir).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_again();
    let out = finish(run).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ls = pglock_at(&url, schema)
        .args(["ls", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let doc: Value = serde_json::from_slice(&ls).unwrap();
    assert_eq!(doc["leases"][0]["name"], "relretry");
    assert_eq!(
        doc["leases"][0]["held"], false,
        "released after the restart"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_escapes_control_characters_and_shortens_long_names() {
    let t = db().await;
    let nasty = "esc\u{1b}[31mRED\u{1b}]0;title\u{7}\nline2\ttab\u{9b}c1";
    let long = format!("long-{}", "x".repeat(200));
    for name in [nasty, long.as_str()] {
        let lease = t
            .locks
            .lease(name)
            .data(json!({"note": "a\u{1b}[2Jb"}))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        lease.orphan();
    }
    let out = pglock(&t).arg("ls").assert().success().get_output().clone();
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        !text
            .chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{9b}'),
        "control characters reach the terminal: {text:?}"
    );
    assert!(
        text.contains(r"esc\x1b[31mRED\x1b]0;title\x07\nline2\ttab"),
        "{text}"
    );
    assert!(
        !text.contains(&long),
        "a 205-character name is shortened: {text}"
    );
    assert!(text.contains("long-xxx"), "{text}");
    let lease_lines = text.lines().take_while(|l| !l.is_empty()).count();
    assert_eq!(lease_lines, 3, "one line per lease: {text}");
    // JSON stays exact.
    let out = pglock(&t)
        .args(["ls", "--json"])
        .assert()
        .success()
        .get_output()
        .clone();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = doc["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&nasty) && names.contains(&long.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_input_defects_are_refused_up_front() {
    let t = db().await;
    // A URL of another database is a bad URL, not an unreachable server.
    for url in ["mysql://root@127.0.0.1:3306/app", "redis://localhost"] {
        let mut cmd = assert_cmd::Command::cargo_bin("pglock").unwrap();
        let out = isolate(cmd.env_remove("DATABASE_URL"))
            .args(["--database-url", url, "ls"])
            .timeout(RUN_LIMIT)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let err = stderr(&out);
        assert!(
            err.contains("invalid database URL") && err.contains("postgres://"),
            "{url}: {err}"
        );
    }
    // A NUL in the data is refused by pglock, before the server sees it.
    let name = unique("nul");
    let out = pglock(&t)
        .args([
            "exec",
            "--lease",
            &name,
            "--data",
            r#"{"a":"\u0000"}"#,
            "--",
            "true",
        ])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = stderr(&out);
    assert!(err.contains("invalid data") && err.contains("NUL"), "{err}");
    assert!(!held(&t, &name).await);
    assert!(t.locks.leases().await.unwrap().is_empty(), "no SQL ran");
    // A bad 100 KB JSON argument is not echoed back whole.
    let huge = format!("{{\"a\": \"{}\"", "y".repeat(100_000));
    let out = pglock(&t)
        .args(["exec", "--lease", "x", "--data", &huge, "--", "true"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let err = stderr(&out);
    assert!(err.contains("not valid JSON"), "{err}");
    assert!(err.len() < 2000, "{} bytes of error", err.len());
    // Item names: surrounding whitespace is trimmed from arguments as from
    // a file.
    let dir = scratch();
    let file = dir.join("items");
    std::fs::write(&file, "  a  \n\t b\r\n\n").unwrap();
    pglock(&t)
        .args(["pool", "add", "ws", " a", "b ", "c"])
        .assert()
        .success();
    pglock(&t)
        .args(["pool", "add", "ws", "--from-file", file.to_str().unwrap()])
        .assert()
        .success();
    let mut items: Vec<String> = t
        .locks
        .lease_pool("ws")
        .items()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    items.sort();
    assert_eq!(items, ["a", "b", "c"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_transaction_pooler_with_its_flags() {
    let Some(bin) = support::require_tool("pgbouncer", "pgbouncer") else {
        return;
    };
    let cluster = Cluster::start_tcp();
    let bouncer = support::pgbouncer::PgBouncer::start(&bin, cluster.port.unwrap(), "transaction");
    let through = bouncer.url();
    let direct = cluster.tcp_url();
    let schema = "viapooler";
    let flags = |cmd: &mut assert_cmd::Command| {
        cmd.args(["--transaction-pooler", "--session-url", &direct]);
    };
    let mut migrate = pglock_at(&through, schema);
    flags(&mut migrate);
    migrate.arg("migrate").assert().success();
    // Concurrent runs through the pooler, serialized, all clean.
    let dir = scratch();
    let log = dir.join("log");
    let script = format!(
        "echo \"start $PGLOCK_TOKEN\" >> {log}; sleep 0.2; echo \"end $PGLOCK_TOKEN\" >> {log}",
        log = log.display()
    );
    let runs: Vec<_> = (0..4)
        .map(|i| {
            let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pglock"));
            cmd.env_remove("DATABASE_URL")
                .env_remove("PGLOCK_SCHEMA")
                .env_remove("PGLOCK_HOLDER")
                .env("DATABASE_URL", &through)
                .env("PGLOCK_SCHEMA", schema)
                // The environment variables work as the flags do.
                .env("PGLOCK_TRANSACTION_POOLER", "true")
                .env("PGLOCK_SESSION_URL", &direct)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if i % 2 == 0 {
                cmd.args(["exec", "--lease", "report", "--", "sh", "-c", &script]);
            } else {
                cmd.args([
                    "exec",
                    "--advisory",
                    "report",
                    "--",
                    "sh",
                    "-c",
                    "sleep 0.1",
                ]);
            }
            cmd.spawn().unwrap()
        })
        .collect();
    for run in runs {
        let out = finish(run).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stderr(&out), "", "nothing to report");
    }
    let lines: Vec<String> = read(&log).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].starts_with("start") && lines[1].starts_with("end"));
    let mut ls = pglock_at(&through, schema);
    flags(&mut ls);
    ls.arg("ls").assert().success();
    // Nothing pglock set leaked into the pooler's server connections.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&through)
        .await
        .unwrap();
    for _ in 0..5 {
        let v: String = sqlx::query_scalar("SHOW client_connection_check_interval")
            .persistent(false)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(v, "0", "a session setting leaked through the pooler");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unknown_pool_exits_1_saying_pool_add_creates_it() {
    let t = db().await;
    let pool = unique("no-such-pool");
    for args in [
        vec!["exec", "--pool", &pool, "--", "true"],
        vec!["exec", "--pool", &pool, "--all", "--", "true"],
        vec!["pool", "status", &pool],
    ] {
        let out = pglock(&t).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("no pool named {pool:?}")) && err.contains("pglock pool add"),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test]
async fn gc_deletes_free_lease_rows() {
    let t = db().await;
    let name = unique("gc");
    pglock(&t)
        .args(["exec", "--lease", &name, "--", "true"])
        .assert()
        .success();
    pglock(&t)
        .args(["gc", "--older-than", "1h"])
        .assert()
        .success()
        .stdout("deleted 0 free lease rows\n");
    assert!(t.locks.lease_info(&name).await.unwrap().is_some());
    pglock(&t)
        .args(["gc", "--older-than", "0s"])
        .assert()
        .success()
        .stdout("deleted 1 free lease rows\n");
    assert!(t.locks.lease_info(&name).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_stats_prints_the_metrics() {
    let t = db().await;
    let name = unique("stats");
    let out = pglock(&t)
        .args(["exec", "--stats", "--lease", &name, "--", "true"])
        .assert()
        .code(0);
    let err = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(
        err.contains("pglock_acquisitions_total{kind=lease} 1"),
        "{err}"
    );
    assert!(
        err.contains("pglock_hold_seconds{kind=lease} count=1"),
        "{err}"
    );
    // Nobody waited for the lease, so its release sent no NOTIFY.
    assert!(!err.contains("pglock_notifies_total"), "{err}");
}
