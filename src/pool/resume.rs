//! When a pool claim may leave out its sticky probe. The probe (an item
//! released by, or expired under, the claimer's holder label) is an index
//! descent of its own on every claim, and nearly always finds nothing: a
//! worker that completes what it claims has nothing to resume. So after a
//! claim whose probe found nothing, this handle leaves the probe out of its
//! claims of that pool under that label for [`SKIP_FOR`], unless it
//! releases, drops or orphans an item of the pool meanwhile.
//!
//! What the skip can delay, never lose: an item that a previous process of
//! the same label left to expire, or that this handle lost, is resumed by a
//! claim at most [`SKIP_FOR`] after it became claimable. Others take an
//! expired item only when nothing is free (the expired probe comes last).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a claim that found nothing to resume lets later claims of the
/// same pool and label skip the probe.
pub(crate) const SKIP_FOR: Duration = Duration::from_secs(1);

/// Entries beyond which the stale ones are dropped (one per pool and label
/// claimed from in the last [`SKIP_FOR`]).
const PRUNE_ABOVE: usize = 256;

/// Per pool and holder label, until when claims may skip the sticky probe.
#[derive(Debug, Default)]
pub(crate) struct Resume {
    skip_until: Mutex<HashMap<String, HashMap<String, Instant>>>,
    /// Bumped by every [`forget`](Self::forget): a claim whose statement
    /// was sent before an item was released must not record "nothing to
    /// resume", since its probe may have looked before the release.
    forgets: AtomicU64,
}

impl Resume {
    /// The value to hand to [`found_nothing`](Self::found_nothing) after
    /// a claim sent from now on.
    pub(crate) fn epoch(&self) -> u64 {
        self.forgets.load(Ordering::Acquire)
    }

    /// Whether a claim of `pool` under `holder` may leave the probe out.
    pub(crate) fn may_skip(&self, pool: &str, holder: &str) -> bool {
        let map = self.skip_until.lock().expect("not poisoned");
        map.get(pool)
            .and_then(|m| m.get(holder))
            .is_some_and(|until| Instant::now() < *until)
    }

    /// A claim sent at `epoch` ran the probe and it found nothing.
    pub(crate) fn found_nothing(&self, pool: &str, holder: &str, epoch: u64) {
        let mut map = self.skip_until.lock().expect("not poisoned");
        if self.forgets.load(Ordering::Acquire) != epoch {
            return;
        }
        let now = Instant::now();
        if map.values().map(HashMap::len).sum::<usize>() >= PRUNE_ABOVE {
            map.retain(|_, m| {
                m.retain(|_, until| now < *until);
                !m.is_empty()
            });
        }
        map.entry(pool.to_owned())
            .or_default()
            .insert(holder.to_owned(), now + SKIP_FOR);
    }

    /// An item of `pool` last held under `holder` may be there to resume
    /// (released, dropped, orphaned, or completed with an unknown outcome):
    /// the next claim runs the probe.
    pub(crate) fn forget(&self, pool: &str, holder: &str) {
        let mut map = self.skip_until.lock().expect("not poisoned");
        self.forgets.fetch_add(1, Ordering::AcqRel);
        if let Some(m) = map.get_mut(pool) {
            m.remove(holder);
            if m.is_empty() {
                map.remove(pool);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_found_nothing_is_skipped_until_an_item_may_be_back() {
        let r = Resume::default();
        assert!(!r.may_skip("p", "w1"), "nothing known: probe");
        r.found_nothing("p", "w1", r.epoch());
        assert!(r.may_skip("p", "w1"));
        assert!(!r.may_skip("p", "w2"), "another label");
        assert!(!r.may_skip("q", "w1"), "another pool");
        r.forget("p", "w1");
        assert!(!r.may_skip("p", "w1"), "released: probe again");
    }

    #[test]
    fn a_claim_sent_before_a_release_does_not_start_the_skip() {
        let r = Resume::default();
        let sent = r.epoch();
        r.forget("p", "w1");
        r.found_nothing("p", "w1", sent);
        assert!(!r.may_skip("p", "w1"));
        r.found_nothing("p", "w1", r.epoch());
        assert!(r.may_skip("p", "w1"));
    }

    #[test]
    fn stale_entries_are_dropped() {
        let r = Resume::default();
        for i in 0..PRUNE_ABOVE {
            r.found_nothing(&format!("p{i}"), "w", r.epoch());
        }
        // Make them all stale, then one more: the stale ones go.
        for m in r.skip_until.lock().unwrap().values_mut() {
            for until in m.values_mut() {
                *until = Instant::now();
            }
        }
        r.found_nothing("last", "w", r.epoch());
        let map = r.skip_until.lock().unwrap();
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("last"));
    }
}
