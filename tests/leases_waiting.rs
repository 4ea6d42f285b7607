//! Waiting: a waiter wakes on release (NOTIFY), takes over at expiry, times out
//! with `Error::Timeout`, and a holder hears a release request; against a real
//! PostgreSQL.

mod support;

use std::time::Duration;

use pglock::Error;
use support::db;
use support::lease::{LONG, held_for, name};

#[tokio::test]
async fn a_waiter_wakes_on_release_not_on_expiry() {
    let t = db().await;
    let n = name();
    let a = held_for(&t.locks, &n, Duration::from_secs(600)).await;
    let waiter = tokio::spawn({
        let b = t.other("b");
        let n = n.clone();
        // Far shorter than the holder's TTL: only a NOTIFY can wake it in time.
        async move { b.lease(&n).timeout(Duration::from_secs(20)).acquire().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    a.release().await.unwrap();
    let b = waiter.await.unwrap().expect("woken by the release");
    b.release().await.unwrap();
}

#[tokio::test]
async fn a_waiter_takes_over_at_the_holders_expiry() {
    let t = db().await;
    let n = name();
    let a = held_for(&t.locks, &n, Duration::from_millis(400)).await;
    let b = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap();
    assert!(b.token() > a.token());
    a.orphan();
    b.release().await.unwrap();
}

#[tokio::test]
async fn acquire_times_out_with_timeout_error() {
    let t = db().await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    let err = t
        .other("b")
        .lease(&n)
        .timeout(Duration::from_millis(200))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&n));
    a.release().await.unwrap();
}

#[tokio::test]
async fn request_release_reaches_the_holder() {
    let t = db().await;
    let n = name();
    let a = held_for(&t.locks, &n, LONG).await;
    let heard = tokio::spawn({
        let h = a.handle();
        async move { h.release_requested().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!heard.is_finished());
    assert!(!a.is_release_requested());
    assert_eq!(
        t.other("ops").request_release(&n).await.unwrap(),
        Some(a.token())
    );
    tokio::time::timeout(Duration::from_secs(10), heard)
        .await
        .expect("holder hears it")
        .unwrap();
    assert!(a.is_release_requested(), "the wait records what it heard");
    let rows = t.locks.leases().await.unwrap();
    assert!(rows.iter().any(|r| r.name == n && r.release_requested));
    a.release().await.unwrap();
    assert_eq!(
        t.locks.request_release(&n).await.unwrap(),
        None,
        "nobody holds it now"
    );
    // Asked before the holder listens: it still hears it.
    let b = held_for(&t.locks, &n, LONG).await;
    t.locks.request_release(&n).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), b.release_requested())
        .await
        .unwrap();
    b.release().await.unwrap();
}
