//! Reentrancy, decided: pglock's locks and leases are not reentrant. A
//! second `lock()` of a key this process already holds waits for the first
//! guard like any other holder (tasks of one process exclude each other),
//! so in the task that holds the guard it can only time out: use
//! `try_lock` or a `timeout` there. Transaction locks follow PostgreSQL:
//! taken twice in one transaction, they are held (the count goes up).

mod support;

use std::time::Duration;

use pglock::Error;
use support::{assert_released, db, text_key};

#[tokio::test]
async fn a_second_lock_in_the_holding_task_waits_for_the_first_and_times_out() {
    let t = db().await;
    let first = t.locks.advisory("re/a").lock().await.unwrap();
    assert!(t.locks.advisory("re/a").try_lock().await.unwrap().is_none());
    let err = t
        .locks
        .advisory("re/a")
        .timeout(Duration::from_millis(200))
        .lock()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    // The same key as a number is the same lock.
    let k = text_key(&t.pool, "re/a").await;
    assert!(t.locks.advisory(k).try_lock().await.unwrap().is_none());
    first.release().await.unwrap();
    let again = t.locks.advisory("re/a").try_lock().await.unwrap();
    assert!(again.is_some());
    drop(again);
    assert_released(&t.pool, k, 5).await;
}

#[tokio::test]
async fn another_task_of_the_same_process_waits_for_the_holder() {
    let t = db().await;
    let first = t.locks.advisory("re/b").lock().await.unwrap();
    let locks = t.locks.clone();
    let second = tokio::spawn(async move { locks.advisory("re/b").lock().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "excluded while the first guard is held"
    );
    first.release().await.unwrap();
    let guard = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("granted after the release")
        .unwrap()
        .unwrap();
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_transaction_lock_taken_twice_in_one_transaction_is_held_once_more() {
    let t = db().await;
    let mut tx = t.pool.begin().await.unwrap();
    t.locks.advisory("re/c").lock_xact(&mut tx).await.unwrap();
    t.locks
        .advisory("re/c")
        .timeout(Duration::from_millis(200))
        .lock_xact(&mut tx)
        .await
        .unwrap();
    let other = t.other("other");
    assert!(other.advisory("re/c").try_lock().await.unwrap().is_none());
    tx.commit().await.unwrap();
    assert_released(&t.pool, text_key(&t.pool, "re/c").await, 5).await;
}

#[tokio::test]
async fn a_lease_held_by_this_process_is_not_given_to_it_again() {
    let t = db().await;
    let lease = t.locks.lease("re/lease").acquire().await.unwrap();
    assert!(
        t.locks
            .lease("re/lease")
            .try_acquire()
            .await
            .unwrap()
            .is_none()
    );
    let err = t
        .locks
        .lease("re/lease")
        .timeout(Duration::from_millis(200))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    lease.release().await.unwrap();
}
