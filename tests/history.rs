//! A history checker: workers do fenced read-modify-write increments under
//! one lease and finish pool items, while a chaos task terminates backends,
//! resets connections and cuts the network. Every fenced commit is recorded
//! by the database; afterwards the history must show no lost or duplicated
//! increment, tokens that never go backwards, and every item done exactly
//! once. Bounded: `PGLOCK_HISTORY_SECS` seconds (default 20).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pglock::{Error, Locks};
use sqlx::postgres::PgPoolOptions;
use support::cluster::Cluster;
use support::proxy::Proxy;
use tokio::time::Instant;

const WORKERS: usize = 4;
const ITEMS: usize = 3000;

#[derive(Default)]
struct Counts {
    increments: AtomicUsize,
    items: AtomicUsize,
    lost: AtomicUsize,
    terminated: AtomicUsize,
    resets: AtomicUsize,
    cuts: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_history_stays_linear_under_faults() {
    let secs: u64 = std::env::var("PGLOCK_HISTORY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let cluster = Cluster::start_tcp();
    let direct = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster.tcp_url())
        .await
        .unwrap();
    Locks::builder(direct.clone())
        .schema("h")
        .build()
        .unwrap()
        .migrate()
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE h.counter (id int PRIMARY KEY, value bigint NOT NULL);
         INSERT INTO h.counter VALUES (1, 0);
         CREATE TABLE h.log (value bigint NOT NULL, token bigint NOT NULL);
         CREATE TABLE h.item_log (item text NOT NULL, token bigint NOT NULL);",
    )
    .execute(&direct)
    .await
    .unwrap();
    let items: Vec<String> = (0..ITEMS).map(|i| format!("item-{i:04}")).collect();
    Locks::builder(direct.clone())
        .schema("h")
        .build()
        .unwrap()
        .lease_pool("items")
        .add(items)
        .await
        .unwrap();

    // One proxy per worker: a cut pauses one holder while the others go on.
    let mut proxies = Vec::new();
    for _ in 0..WORKERS {
        proxies.push(Proxy::start(cluster.port.unwrap()).await);
    }
    let proxies = Arc::new(proxies);
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let url = format!("{}?application_name=hist-{w}", proxies[w].url());
        let db = PgPoolOptions::new()
            .max_connections(3)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy(&url)
            .unwrap();
        let locks = Locks::builder(db.clone())
            .schema("h")
            .holder(format!("w{w}"))
            .build()
            .unwrap();
        tasks.push(tokio::spawn(worker(locks, db, counts.clone(), deadline)));
    }
    tasks.push(tokio::spawn(chaos(
        direct.clone(),
        proxies.clone(),
        counts.clone(),
        deadline,
    )));
    for t in tasks {
        t.await.unwrap();
    }

    // The history, as the database recorded it.
    let log: Vec<(i64, i64)> =
        sqlx::query_as("SELECT value, token FROM h.log ORDER BY value, token")
            .fetch_all(&direct)
            .await
            .unwrap();
    let counter: i64 = sqlx::query_scalar("SELECT value FROM h.counter")
        .fetch_one(&direct)
        .await
        .unwrap();
    // Each value 1..=counter written exactly once: no lost, no duplicated increment.
    let mut seen = vec![0u32; counter as usize + 1];
    for (value, _) in &log {
        seen[*value as usize] += 1;
    }
    let duplicated: Vec<usize> = (1..seen.len()).filter(|v| seen[*v] > 1).take(10).collect();
    let missing: Vec<usize> = (1..seen.len()).filter(|v| seen[*v] == 0).take(10).collect();
    assert!(
        duplicated.is_empty() && missing.is_empty() && log.len() as i64 == counter,
        "{} increments logged for a counter of {counter}; values written twice: {duplicated:?}; never written: {missing:?}",
        log.len()
    );
    for pair in log.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "a token went backwards: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let holders = log.windows(2).filter(|p| p[0].1 != p[1].1).count() + 1;

    let per_item: Vec<(String, i64)> =
        sqlx::query_as("SELECT item, count(*) FROM h.item_log GROUP BY item")
            .fetch_all(&direct)
            .await
            .unwrap();
    assert!(
        per_item.iter().all(|(_, n)| *n == 1),
        "an item was done twice: {:?}",
        per_item.iter().filter(|r| r.1 > 1).collect::<Vec<_>>()
    );
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM h.leases WHERE pool = 'items' AND done")
            .fetch_one(&direct)
            .await
            .unwrap();
    assert_eq!(
        done as usize,
        per_item.len(),
        "done items and fenced item writes differ"
    );

    let c = |a: &AtomicUsize| a.load(Ordering::SeqCst);
    println!(
        "history: {} increments under {holders} successive holders, {} items done exactly once; \
         faults: {} backends terminated, {} connection resets, {} network cuts; {} leases lost and recovered",
        counter,
        per_item.len(),
        c(&counts.terminated),
        c(&counts.resets),
        c(&counts.cuts),
        c(&counts.lost),
    );
    // Enough happened to mean something.
    assert!(counter >= 50, "only {counter} increments");
    assert!(per_item.len() >= 20, "only {} items", per_item.len());
    assert!(holders >= 3, "the lease never changed hands under faults");
    assert!(
        c(&counts.terminated) >= 3 && c(&counts.resets) >= 3 && c(&counts.cuts) >= 3,
        "too few faults"
    );
    cluster.stop();
}

async fn worker(locks: Locks, db: sqlx::PgPool, counts: Arc<Counts>, deadline: Instant) {
    let pool = locks.lease_pool("items");
    while Instant::now() < deadline {
        // Increments under the one lease.
        let lease = match locks
            .lease("counter")
            .ttl(Duration::from_millis(800))
            .timeout(Duration::from_secs(2))
            .acquire()
            .await
        {
            Ok(l) => l.keep_alive(),
            Err(_) => continue,
        };
        for _ in 0..5 {
            match increment(&db, &lease).await {
                Ok(()) => {
                    counts.increments.fetch_add(1, Ordering::SeqCst);
                }
                Err(Error::LeaseLost { .. }) => {
                    counts.lost.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), lease.release()).await;
        // One pool item, written and completed in one transaction.
        let claim = pool
            .claim()
            .ttl(Duration::from_millis(800))
            .timeout(Duration::from_secs(2));
        if let Ok(item) = claim.acquire().await {
            let item = item.keep_alive();
            let done = async {
                let mut tx = db.begin().await?;
                item.fence(&mut tx).await?;
                sqlx::query("INSERT INTO h.item_log VALUES ($1, $2)")
                    .bind(item.name())
                    .bind(item.token())
                    .execute(&mut *tx)
                    .await?;
                item.complete_in(&mut tx).await?;
                tx.commit().await?;
                Ok::<_, Error>(())
            };
            if tokio::time::timeout(Duration::from_secs(3), done)
                .await
                .is_ok_and(|r| r.is_ok())
            {
                counts.items.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// A fenced read-modify-write: read the counter, write counter + 1 and log
/// (value, token). Without the fence two holders would lose increments.
async fn increment(db: &sqlx::PgPool, lease: &pglock::Lease) -> Result<(), Error> {
    let step = async {
        let mut tx = db.begin().await?;
        lease.fence(&mut tx).await?;
        let v: i64 = sqlx::query_scalar("SELECT value FROM h.counter WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("UPDATE h.counter SET value = $1 WHERE id = 1")
            .bind(v + 1)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO h.log VALUES ($1, $2)")
            .bind(v + 1)
            .bind(lease.token())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(3), step).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: "increment".into(),
            waited: Duration::from_secs(3),
        }),
    }
}

/// Mixes faults until the deadline, each on one worker: terminated
/// backends, reset connections, network cuts of 300–1100 ms (longer than
/// the 800 ms TTL: the cut holder is paused past its lease).
async fn chaos(
    direct: sqlx::PgPool,
    proxies: Arc<Vec<Proxy>>,
    counts: Arc<Counts>,
    deadline: Instant,
) {
    let mut n: u64 = 0;
    while Instant::now() < deadline {
        n += 1;
        let pause = 150 + (n * 7919 % 250);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let victim = (n * 31 % WORKERS as u64) as usize;
        let proxy = &proxies[victim];
        match n % 3 {
            0 => {
                let _: Option<i64> = sqlx::query_scalar(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE application_name = $1",
                )
                .bind(format!("hist-{victim}"))
                .fetch_optional(&direct)
                .await
                .ok()
                .flatten();
                counts.terminated.fetch_add(1, Ordering::SeqCst);
            }
            1 => {
                proxy.reset();
                counts.resets.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                proxy.cut();
                tokio::time::sleep(Duration::from_millis(300 + (n * 104729 % 800))).await;
                proxy.heal();
                counts.cuts.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
