//! Hand-off: a release gives a plain lease straight to a task of the same
//! [`Locks`](crate::Locks) that waits for it, in one statement
//! (`LEASE_HANDOFF`): one commit and no NOTIFY, where a release and the
//! waiter's acquire cost two commits and a NOTIFY's round trip.
//!
//! A waiter in [`LeaseRequest::acquire`](crate::LeaseRequest::acquire)
//! queues an [`Offer`] (its terms, and a slot for the lease) after its first
//! look fails; the offers of one name form a FIFO line. A release of that
//! name takes the first live offer ([`Queues::next`]), runs the hand-off in
//! a task of its own (so the waiter gets its lease even if the releasing
//! caller goes away mid-statement) and puts the lease in the offer's slot.
//! The waiter finds it at its next look, without SQL. A waiter that is gone
//! by then drops the offer, and with it the lease, which releases it.
//!
//! Fairness: waiters of other processes cannot be seen from here, so one
//! name is handed on at most [`STREAK`] times in a row; the next release
//! is an ordinary one, which wakes every process's waiters by NOTIFY.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use serde_json::Value;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::Terms;
use super::owned::Lease;

/// Most hand-offs of one name in a row before an ordinary release.
pub(crate) const STREAK: u32 = 3;

/// The lines of waiting offers of one `Locks`, by lease name.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    lines: Mutex<HashMap<String, Line>>,
}

#[derive(Debug, Default)]
struct Line {
    /// Oldest first; an entry whose waiter is gone is skipped and dropped.
    offers: VecDeque<Weak<Offer>>,
    /// Hand-offs of this name in a row.
    streak: u32,
}

impl Queues {
    /// The offer a release of `name` should hand the lease to, if any: the
    /// oldest live one, unless the name was handed on [`STREAK`] times in a
    /// row (then `None`, and the streak starts again).
    pub(crate) fn next(&self, name: &str) -> Option<Arc<Offer>> {
        let mut lines = self.lines.lock().unwrap();
        let line = lines.get_mut(name)?;
        if line.streak >= STREAK {
            line.streak = 0;
            return None;
        }
        while let Some(weak) = line.offers.pop_front() {
            if let Some(offer) = weak.upgrade() {
                line.streak += 1;
                return Some(offer);
            }
        }
        lines.remove(name);
        None
    }

    /// Puts back an offer that [`next`](Self::next) returned but that did
    /// not get the lease: it keeps its place, first in line.
    pub(crate) fn put_back(&self, offer: &Arc<Offer>) {
        let mut lines = self.lines.lock().unwrap();
        let line = lines.entry(offer.name.clone()).or_default();
        line.streak = 0;
        line.offers.push_front(Arc::downgrade(offer));
    }

    fn join(&self, offer: &Arc<Offer>) {
        let mut lines = self.lines.lock().unwrap();
        let line = lines.entry(offer.name.clone()).or_default();
        line.offers.push_back(Arc::downgrade(offer));
    }

    /// Drops the entries of `name` whose waiters are gone.
    fn forget(&self, name: &str) {
        let mut lines = self.lines.lock().unwrap();
        if let Some(line) = lines.get_mut(name) {
            line.offers.retain(|w| w.strong_count() > 0);
            if line.offers.is_empty() {
                lines.remove(name);
            }
        }
    }
}

/// One waiter's standing offer to take a lease handed to it: its terms,
/// and the slot the lease arrives in.
#[derive(Debug)]
pub(crate) struct Offer {
    pub(crate) name: String,
    pub(crate) holder: String,
    pub(crate) terms: Terms,
    pub(crate) data: Option<Value>,
    queues: Weak<Queues>,
    slot: Mutex<Option<Lease>>,
    arrived: Notify,
}

impl Offer {
    /// A waiter's offer, at the end of its name's line.
    pub(crate) fn queued(
        queues: &Arc<Queues>,
        name: String,
        holder: String,
        terms: Terms,
        data: Option<Value>,
    ) -> Arc<Offer> {
        let offer = Arc::new(Offer {
            name,
            holder,
            terms,
            data,
            queues: Arc::downgrade(queues),
            slot: Mutex::new(None),
            arrived: Notify::new(),
        });
        queues.join(&offer);
        offer
    }

    /// The lease handed to this waiter, if one arrived.
    pub(crate) fn take(&self) -> Option<Lease> {
        self.slot.lock().unwrap().take()
    }

    /// Resolves once a lease has arrived (at once if one arrived since the
    /// last call).
    pub(crate) fn arrived(&self) -> Notified<'_> {
        self.arrived.notified()
    }

    /// Hands `lease` to the waiter. If the waiter is gone (the caller holds
    /// the only reference), the lease is dropped here, which releases it.
    pub(crate) fn deliver(self: &Arc<Self>, lease: Lease) {
        if Arc::strong_count(self) == 1 {
            crate::metrics::gave_back();
            drop(lease);
            return;
        }
        *self.slot.lock().unwrap() = Some(lease);
        self.arrived.notify_one();
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        // A lease that arrived after its waiter stopped looking is released
        // by its own drop (in a task, inside a runtime).
        if self.slot.get_mut().unwrap().take().is_some() {
            crate::metrics::gave_back();
        }
        if let Some(q) = self.queues.upgrade() {
            q.forget(&self.name);
        }
    }
}
