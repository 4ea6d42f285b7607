//! The metrics move: with a recorder installed, acquire, contention,
//! release, a lost lease, a give-back and a hand-off are each counted.

mod support;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pglock::metrics as m;
use support::{db, eventually};

/// What the recorder saw: counters as they stand, histograms as sample
/// counts summed over every snapshot (a snapshot drains histograms).
struct Seen {
    snap: Snapshotter,
    samples: Mutex<HashMap<(String, String), u64>>,
}

impl Seen {
    /// The counter `name` (with `kind` if given), or the number of samples
    /// of the histogram `name`, so far.
    fn read(&self, name: &str, kind: Option<&str>) -> u64 {
        let mut samples = self.samples.lock().unwrap();
        let mut counted = 0;
        for (key, _, _, value) in self.snap.snapshot().into_vec() {
            let key = key.key();
            let k = key
                .labels()
                .find(|l| l.key() == "kind")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let id = (key.name().to_owned(), k.clone());
            match value {
                DebugValue::Histogram(v) => *samples.entry(id).or_default() += v.len() as u64,
                DebugValue::Counter(n) if key.name() == name && kind.is_none_or(|x| x == k) => {
                    counted += n
                }
                _ => {}
            }
        }
        let sampled: u64 = samples
            .iter()
            .filter(|((n, k), _)| n == name && kind.is_none_or(|x| x == k))
            .map(|(_, c)| c)
            .sum();
        counted + sampled
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_for_acquire_contention_release_lost_give_back_and_hand_off() {
    let recorder = DebuggingRecorder::new();
    let seen = Seen {
        snap: recorder.snapshotter(),
        samples: Mutex::default(),
    };
    recorder
        .install()
        .expect("the only recorder of this test binary");
    let t = db().await;
    let other = t.other("b");
    let ttl = Duration::from_secs(60);

    // Acquire, then a try_acquire that finds it held, then a waiter.
    let lease = t.locks.lease("m1").ttl(ttl).acquire().await.unwrap();
    assert_eq!(seen.read(m::ACQUISITIONS, Some("lease")), 1);
    assert!(other.lease("m1").try_acquire().await.unwrap().is_none());
    assert_eq!(seen.read(m::CONTENDED, Some("lease")), 1);
    let waiter = tokio::spawn({
        let other = other.clone();
        async move { other.lease("m1").ttl(ttl).acquire().await.unwrap() }
    });
    eventually(10, "the waiter found it held", || async {
        seen.read(m::CONTENDED, Some("lease")) == 2
    })
    .await;
    lease.release().await.unwrap();
    assert_eq!(seen.read(m::HOLD_SECONDS, Some("lease")), 1);
    assert_eq!(seen.read(m::NOTIFIES, None), 1);
    let second = waiter.await.unwrap();
    assert_eq!(seen.read(m::ACQUISITIONS, Some("lease")), 2);
    assert_eq!(seen.read(m::WAIT_SECONDS, Some("lease")), 2);

    // Lost: force-released behind the holder's back.
    assert_eq!(seen.read(m::LOST, Some("lease")), 0);
    t.locks.force_release("m1").await.unwrap();
    assert!(second.renew().await.is_err());
    assert_eq!(seen.read(m::LOST, Some("lease")), 1);
    drop(second);

    // Give-back: the acquire statement waits behind a table lock, its
    // caller gives up meanwhile, and what it then takes is given back.
    let mut tx = t.pool.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE \"{}\".leases IN ACCESS EXCLUSIVE MODE",
        t.schema
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let acquire = other.lease("m2").ttl(ttl).acquire();
    let (schema, pool) = (t.schema.clone(), t.pool.clone());
    let blocked = async move {
        eventually(10, "the acquire waits for the table lock", || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT l.granted AND c.relname = 'leases' AND n.nspname = $1)",
            )
            .bind(&schema)
            .fetch_one(&pool)
            .await
            .unwrap()
        })
        .await;
    };
    tokio::select! {
        _ = acquire => panic!("acquired through an exclusive table lock"),
        _ = blocked => {}
    }
    tx.commit().await.unwrap();
    eventually(10, "the abandoned acquire was given back", || async {
        seen.read(m::GIVE_BACKS, None) == 1
    })
    .await;
    assert!(t.locks.lease("m2").try_acquire().await.unwrap().is_some());

    // Hand-off: a waiter of the same Locks gets the lease from the
    // release itself, which sends no NOTIFY.
    let (notifies, contended) = (
        seen.read(m::NOTIFIES, None),
        seen.read(m::CONTENDED, Some("lease")),
    );
    let lease = t.locks.lease("m3").ttl(ttl).acquire().await.unwrap();
    let waiter = tokio::spawn({
        let locks = t.locks.clone();
        async move { locks.lease("m3").ttl(ttl).acquire().await.unwrap() }
    });
    eventually(10, "the waiter found it held", || async {
        seen.read(m::CONTENDED, Some("lease")) == contended + 1
    })
    .await;
    assert_eq!(seen.read(m::HANDOFFS, None), 0);
    lease.release().await.unwrap();
    assert_eq!(seen.read(m::HANDOFFS, None), 1);
    assert_eq!(seen.read(m::NOTIFIES, None), notifies);
    waiter.await.unwrap().release().await.unwrap();
}
