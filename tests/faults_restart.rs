//! PostgreSQL restarted under pglock (`pg_ctl restart -m fast` and
//! `-m immediate`), on a cluster of this test binary's own.

mod support;

use std::time::Duration;

use pglock::{Error, Locks};
use sqlx::postgres::PgPoolOptions;
use support::cluster::Cluster;

#[tokio::test]
async fn leases_tokens_and_waiters_survive_restarts_and_advisory_holders_hear_of_it() {
    let cluster = Cluster::start();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&cluster.url())
        .await
        .unwrap();
    let locks = Locks::builder(pool.clone())
        .schema("r")
        .holder("a")
        .build()
        .unwrap();
    let other = Locks::builder(pool.clone())
        .schema("r")
        .holder("b")
        .build()
        .unwrap();
    locks.migrate().await.unwrap();

    let mut last_token = 0;
    for mode in ["fast", "immediate", "fast"] {
        let ttl = Duration::from_secs(8);
        let lease = locks
            .lease("kept")
            .ttl(ttl)
            .timeout(Duration::from_secs(20))
            .acquire()
            .await
            .unwrap()
            .keep_alive();
        assert!(
            lease.token() > last_token,
            "token {} after {last_token}",
            lease.token()
        );
        let guard = locks.advisory("session-lock").lock().await.unwrap();
        let held = locks
            .lease("waited-for")
            .ttl(Duration::from_secs(600))
            .try_acquire()
            .await
            .unwrap()
            .unwrap();
        let waiter = tokio::spawn({
            let other = other.clone();
            async move {
                other
                    .lease("waited-for")
                    .timeout(Duration::from_secs(60))
                    .acquire()
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        cluster.restart(mode);

        // The advisory lock died with its session, and the holder is told.
        tokio::time::timeout(Duration::from_secs(15), guard.lost())
            .await
            .expect("advisory lost()");
        assert!(matches!(guard.release().await, Err(Error::LockLost { .. })));
        // The lease row survived; keep-alive reconnected without help.
        lease.renew().await.unwrap();
        assert!(lease.remaining() > Duration::ZERO);
        // The waiter is still waiting and wakes on the release (LISTEN reconnected).
        assert!(!waiter.is_finished());
        held.release().await.unwrap();
        let got = waiter
            .await
            .unwrap()
            .expect("waiter wakes after the restart");
        assert!(got.token() > lease.token());
        last_token = got.token();
        got.release().await.unwrap();
        lease.release().await.unwrap();
        // Fresh advisory sessions work again.
        locks
            .advisory("session-lock")
            .try_lock()
            .await
            .unwrap()
            .expect("free")
            .release()
            .await
            .unwrap();
    }
    cluster.stop();
}
