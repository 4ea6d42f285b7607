//! What `exec` holds while its command runs: a plain lease or a pool item.

use std::ops::Deref;

use pglock::{Lease, LeaseRef, PoolLease};

/// A held lease of either kind `exec` takes.
#[derive(Debug)]
pub(crate) enum Held {
    Lease(Lease),
    Item(PoolLease),
}

impl From<Lease> for Held {
    fn from(l: Lease) -> Self {
        Held::Lease(l)
    }
}

impl From<PoolLease> for Held {
    fn from(l: PoolLease) -> Self {
        Held::Item(l)
    }
}

impl Deref for Held {
    type Target = LeaseRef;

    fn deref(&self) -> &LeaseRef {
        match self {
            Held::Lease(l) => l,
            Held::Item(l) => l,
        }
    }
}

impl Held {
    pub(crate) async fn release(self) -> pglock::Result<()> {
        match self {
            Held::Lease(l) => l.release().await,
            Held::Item(l) => l.release().await,
        }
    }

    /// Completes a pool item; a plain lease is released.
    pub(crate) async fn complete(self) -> pglock::Result<()> {
        match self {
            Held::Lease(l) => l.release().await,
            Held::Item(l) => l.complete().await,
        }
    }
}
