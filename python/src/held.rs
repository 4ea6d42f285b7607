//! The one place that knows the crate's lease kinds. A Python `Lease`,
//! `PoolLease` or `Permit` owns a [`Held`]; everything else in the binding
//! goes through the shared [`pglock::LeaseRef`] surface.

use pglock::LeaseRef;

/// Which Python class a held lease becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `locks.lease(name)`: a `pglock.Lease`.
    Lease,
    /// A pool item: a `pglock.PoolLease` (can be completed).
    Item,
    /// A semaphore permit: a `pglock.Permit`.
    Permit,
}

/// An owned, kept-alive lease of one kind.
#[derive(Debug)]
pub(crate) enum Held {
    Lease(pglock::Lease),
    Item(pglock::Lease),
    Permit(pglock::Lease),
}

impl Held {
    /// Starts keep-alive (needs the runtime context) and wraps the lease.
    pub(crate) fn new(kind: Kind, lease: pglock::Lease) -> Held {
        let lease = lease.keep_alive();
        match kind {
            Kind::Lease => Held::Lease(lease),
            Kind::Item => Held::Item(lease),
            Kind::Permit => Held::Permit(lease),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Held::Lease(_) => Kind::Lease,
            Held::Item(_) => Kind::Item,
            Held::Permit(_) => Kind::Permit,
        }
    }

    pub(crate) fn handle(&self) -> LeaseRef {
        match self {
            Held::Lease(l) | Held::Item(l) | Held::Permit(l) => l.handle(),
        }
    }

    pub(crate) async fn release(self) -> pglock::Result<()> {
        match self {
            Held::Lease(l) | Held::Item(l) | Held::Permit(l) => l.release().await,
        }
    }

    /// Completes a pool item; `Err(self)` for other kinds.
    pub(crate) fn into_item(self) -> Result<pglock::Lease, Held> {
        match self {
            Held::Item(l) => Ok(l),
            other => Err(other),
        }
    }
}
