//! Metrics through the [`metrics`](https://docs.rs/metrics) facade, and the
//! `tracing` span of every acquiring operation. Both cost next to nothing
//! when unused: without a recorder installed, each metric is one check of
//! the global recorder (a no-op); without a subscriber, a span is disabled.
//!
//! | metric | type | labels | what |
//! | --- | --- | --- | --- |
//! | `pglock_acquisitions_total` | counter | `kind` | leases, items, permits and advisory locks taken |
//! | `pglock_contended_total` | counter | `kind` | acquires (or `try_` acquires) that found it held |
//! | `pglock_wait_seconds` | histogram | `kind` | time from the first look to the taking, for each acquisition |
//! | `pglock_hold_seconds` | histogram | `kind` | time from the taking to the release (or complete) |
//! | `pglock_lost_total` | counter | `kind` | leases found lost while held |
//! | `pglock_renew_failures_total` | counter | | leases whose renewal statement failed |
//! | `pglock_give_backs_total` | counter | | takings given back because their caller was gone |
//! | `pglock_notifies_total` | counter | | release statements that sent a NOTIFY (someone was waiting) |
//! | `pglock_handoffs_total` | counter | | releases that handed a lease straight to a waiter of the same `Locks` |
//!
//! `kind` is `lease`, `pool_item`, `permit` or `advisory`. The span of an
//! acquire is `pglock.acquire` (`pglock.try_acquire` for one look) with the
//! fields `kind`, `name`, `token` (once taken), `waited` (seconds) and
//! `outcome` (`acquired`, `held`, `timeout`, `error`).

use std::time::Duration;

use ::metrics::{counter, histogram};

/// Acquisitions.
pub const ACQUISITIONS: &str = "pglock_acquisitions_total";
/// Acquires that found the lock held.
pub const CONTENDED: &str = "pglock_contended_total";
/// Wait before each acquisition.
pub const WAIT_SECONDS: &str = "pglock_wait_seconds";
/// Hold time of each released lease.
pub const HOLD_SECONDS: &str = "pglock_hold_seconds";
/// Leases lost while held.
pub const LOST: &str = "pglock_lost_total";
/// Leases whose renewal failed.
pub const RENEW_FAILURES: &str = "pglock_renew_failures_total";
/// Takings given back for a caller that was gone.
pub const GIVE_BACKS: &str = "pglock_give_backs_total";
/// Release statements that sent a NOTIFY (a waiter had marked itself).
pub const NOTIFIES: &str = "pglock_notifies_total";

/// Releases that handed the lease to a waiter of the same `Locks`.
pub const HANDOFFS: &str = "pglock_handoffs_total";

/// What was taken: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Lease,
    PoolItem,
    Permit,
    Advisory,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Lease => "lease",
            Kind::PoolItem => "pool_item",
            Kind::Permit => "permit",
            Kind::Advisory => "advisory",
        }
    }
}

/// The span of one acquire (`wait`) or one look (`try_acquire`).
pub(crate) fn acquire_span(kind: Kind, name: &str, wait: bool) -> tracing::Span {
    let empty = tracing::field::Empty;
    if wait {
        tracing::debug_span!(
            "pglock.acquire",
            kind = kind.as_str(),
            name,
            token = empty,
            waited = empty,
            outcome = empty
        )
    } else {
        tracing::debug_span!(
            "pglock.try_acquire",
            kind = kind.as_str(),
            name,
            token = empty,
            waited = empty,
            outcome = empty
        )
    }
}

/// Records the end of an acquire in its span (the current one).
pub(crate) fn outcome(waited: Duration, outcome: &'static str) {
    let span = tracing::Span::current();
    span.record("waited", waited.as_secs_f64());
    span.record("outcome", outcome);
}

/// Records the token taken in the current acquire span.
pub(crate) fn token(token: i64) {
    tracing::Span::current().record("token", token);
}

/// One acquisition, after `waited`.
pub(crate) fn acquired(kind: Kind, waited: Duration) {
    counter!(ACQUISITIONS, "kind" => kind.as_str()).increment(1);
    histogram!(WAIT_SECONDS, "kind" => kind.as_str()).record(waited.as_secs_f64());
}

/// One acquire found it held.
pub(crate) fn contended(kind: Kind) {
    counter!(CONTENDED, "kind" => kind.as_str()).increment(1);
}

/// One release (or complete) of what was held for `held`.
pub(crate) fn released(kind: Kind, held: Duration) {
    histogram!(HOLD_SECONDS, "kind" => kind.as_str()).record(held.as_secs_f64());
}

/// One lease lost while held.
pub(crate) fn lost(kind: Kind) {
    counter!(LOST, "kind" => kind.as_str()).increment(1);
}

/// A renewal of `leases` leases failed.
pub(crate) fn renew_failed(leases: usize) {
    counter!(RENEW_FAILURES).increment(leases as u64);
}

/// An abandoned taking was given back.
pub(crate) fn gave_back() {
    counter!(GIVE_BACKS).increment(1);
}

/// A release statement sent a NOTIFY.
pub(crate) fn notify_sent() {
    counter!(NOTIFIES).increment(1);
}

/// A release handed its lease to a waiter.
pub(crate) fn handed_off() {
    counter!(HANDOFFS).increment(1);
}

/// What an uncontended `try_acquire()` and its `release()` record, in the
/// same order and with the same labels: for the benchmark that shows their
/// cost with no recorder and no subscriber installed. Unstable, behind the
/// `internals` feature.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub fn __record_one_acquire_release() {
    use tracing::Instrument;
    let span = acquire_span(Kind::Lease, "bench", false);
    let fut = async {
        token(1);
        acquired(Kind::Lease, Duration::ZERO);
        outcome(Duration::ZERO, "acquired");
    }
    .instrument(span);
    // The instrumented future is ready at its first poll.
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    let _ = fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker));
    released(Kind::Lease, Duration::ZERO);
    notify_sent();
}
