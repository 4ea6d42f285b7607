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

/// An owned lease of one kind (kept alive once [`Held::keep_alive`] ran).
#[derive(Debug)]
pub(crate) enum Held {
    Lease(pglock::Lease),
    Item(pglock::PoolLease),
    Permit(pglock::Permit),
}

impl Held {
    /// Starts keep-alive (needs the runtime context).
    pub(crate) fn keep_alive(self) -> Held {
        match self {
            Held::Lease(l) => Held::Lease(l.keep_alive()),
            Held::Item(l) => Held::Item(l.keep_alive()),
            Held::Permit(l) => Held::Permit(l.keep_alive()),
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
            Held::Lease(l) => l.handle(),
            Held::Item(l) => l.handle(),
            Held::Permit(l) => l.handle(),
        }
    }

    pub(crate) async fn release(self) -> pglock::Result<()> {
        match self {
            Held::Lease(l) => l.release().await,
            Held::Item(l) => l.release().await,
            Held::Permit(l) => l.release().await,
        }
    }

    /// Completes a pool item; `Err(self)` for other kinds.
    pub(crate) fn into_item(self) -> Result<pglock::PoolLease, Held> {
        match self {
            Held::Item(l) => Ok(l),
            other => Err(other),
        }
    }
}
