//! Leader election: campaign, resign, leader, observe; and three candidate
//! processes (`pglock elect`) whose leader is SIGKILLed.
#![cfg(feature = "cli")]

mod support;

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use pglock::{Error, Leader};
use support::{TestDb, db};
use tokio::time::Instant;

/// Next leader from an observer, within `secs`.
async fn next_leader(
    stream: &mut (impl futures::Stream<Item = pglock::Result<Leader>> + Unpin),
    secs: u64,
) -> Leader {
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("no new leader in time")
        .expect("observe never ends")
        .expect("observe failed")
}

#[tokio::test]
async fn observers_see_each_leader_once_in_token_order_late_ones_the_current_first() {
    let t = db().await;
    let election = t.locks.election("coord").ttl(Duration::from_secs(5));
    assert_eq!(election.leader().await.unwrap(), None);
    let mut early = Box::pin(election.observe());

    let a = election.campaign("a").await.unwrap();
    let seen = next_leader(&mut early, 5).await;
    assert_eq!((seen.value.as_str(), seen.token), ("a", a.token()));
    assert_eq!(election.leader().await.unwrap().unwrap().token, a.token());

    // A second candidate waits while "a" leads.
    let other = t.other("other");
    let b_campaign = tokio::spawn(async move {
        other
            .election("coord")
            .ttl(Duration::from_secs(5))
            .campaign("b")
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "b must wait while a leads");
    let a_token = a.token();
    a.resign().await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), b_campaign)
        .await
        .expect("b leads after a resigned")
        .unwrap()
        .unwrap();
    assert!(b.token() > a_token);
    let seen = next_leader(&mut early, 5).await;
    assert_eq!((seen.value.as_str(), seen.token), ("b", b.token()));

    // A late observer starts with the current leader.
    let mut late = Box::pin(election.observe());
    let first = next_leader(&mut late, 5).await;
    assert_eq!(first.token, b.token());

    // The leadership fences like its lease.
    let mut tx = t.pool.begin().await.unwrap();
    b.fence(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    b.resign().await.unwrap();
    assert_eq!(election.leader().await.unwrap(), None);
    // Nothing older is ever shown again.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), early.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_bad_election_name_is_refused_before_any_sql() {
    let t = db().await;
    let err = t.locks.election("").campaign("v").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "election name",
                ..
            }
        ),
        "{err:?}"
    );
    let err = t
        .locks
        .election("e")
        .ttl(Duration::ZERO)
        .campaign("v")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { field: "ttl", .. }),
        "{err:?}"
    );
}

/// `pglock elect` as a candidate: its command appends `TOKEN PID` to `log`.
fn candidate(
    t: &TestDb,
    election: &str,
    value: &str,
    log: &std::path::Path,
) -> tokio::process::Child {
    let script = format!(
        "echo \"$PGLOCK_TOKEN $$ $PGLOCK_VALUE\" >> '{}'; exec sleep 600",
        log.display()
    );
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pglock"))
        .env_remove("DATABASE_URL")
        .env_remove("PGLOCK_SCHEMA")
        .env_remove("PGLOCK_HOLDER")
        .args(["--database-url", &support::cluster::shared_url()])
        .args(["--schema", &t.schema, "--holder", value])
        .args([
            "elect", election, "--value", value, "--ttl", "2s", "--", "sh", "-c", &script,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start pglock elect")
}

/// (token, pid, value) of each command started, in order.
fn started(log: &std::path::Path) -> Vec<(i64, i32, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_candidate_processes_the_leader_killed_exactly_one_takes_over() {
    let t = db().await;
    let dir = std::env::temp_dir().join(format!("pglock-elect-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("started");
    let election = t.locks.election("trainer-coordinator");
    let mut observer = Box::pin(election.observe());

    let mut candidates: Vec<(String, tokio::process::Child)> = ["c1", "c2", "c3"]
        .iter()
        .map(|v| (v.to_string(), candidate(&t, "trainer-coordinator", v, &log)))
        .collect();
    let first = next_leader(&mut observer, 20).await;
    support::eventually(5, "the leader's command started", || async {
        started(&log).len() == 1
    })
    .await;
    let runs = started(&log);
    assert_eq!(
        (runs[0].0, runs[0].2.as_str()),
        (first.token, first.value.as_str())
    );

    // SIGKILL the leader's pglock: it can tell nobody; its command dies
    // with it (parent-death signal), the lease expires after its TTL.
    let idx = candidates
        .iter()
        .position(|(v, _)| *v == first.value)
        .unwrap();
    let (_, mut leader) = candidates.remove(idx);
    let killed_at = Instant::now();
    signal(leader.id().unwrap(), "-KILL");
    leader.wait().await.unwrap();

    let second = next_leader(&mut observer, 20).await;
    let failover = killed_at.elapsed();
    assert!(second.token > first.token, "{second:?} after {first:?}");
    assert_ne!(second.value, first.value);
    assert!(!alive(runs[0].1), "the dead leader's command still runs");
    support::eventually(5, "the new leader's command started", || async {
        started(&log).len() == 2
    })
    .await;
    let runs = started(&log);
    assert_eq!(
        (runs[1].0, runs[1].2.as_str()),
        (second.token, second.value.as_str())
    );

    // Exactly one new leader: a while later, still the same one, and no
    // third command started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        election.leader().await.unwrap().map(|l| l.token),
        Some(second.token)
    );
    assert_eq!(started(&log).len(), 2);
    // A late observer starts with the current leader.
    let mut late = Box::pin(election.observe());
    assert_eq!(next_leader(&mut late, 5).await.token, second.token);
    // The CLI sees it too.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pglock"))
        .env_remove("DATABASE_URL")
        .args(["--database-url", &support::cluster::shared_url()])
        .args(["--schema", &t.schema, "leader", "trainer-coordinator"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        line,
        format!("{}\t{}\t{}\n", second.token, second.value, second.value)
    );
    println!(
        "election failover (ttl 2s, SIGKILL to the new leader seen by an observer): {:.0} ms",
        failover.as_secs_f64() * 1000.0
    );

    // The others stop cleanly on SIGTERM: the leader's command gets it and
    // the election is released.
    for (_, c) in &candidates {
        signal(c.id().unwrap(), "-TERM");
    }
    for (_, c) in candidates {
        tokio::time::timeout(Duration::from_secs(10), c.wait_with_output())
            .await
            .expect("candidate exits on SIGTERM")
            .unwrap();
    }
    assert_eq!(election.leader().await.unwrap(), None);
    let _ = std::fs::remove_dir_all(&dir);
}
