//! The native part of the `pglock` Python package: a thin PyO3 layer over
//! the pglock crate. One file per Python class; errors are mapped in
//! `errors.rs`; every wait runs on the one runtime of `runtime.rs` with the
//! GIL released.

mod advisory;
mod convert;
mod election;
mod errors;
mod handle;
mod held;
mod lease;
mod locks;
mod multi;
mod pool;
mod rate;
mod request;
mod runtime;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<handle::Locks>()?;
    m.add_class::<advisory::Advisory>()?;
    m.add_class::<advisory::AdvisoryGuard>()?;
    m.add_class::<advisory::AdvisoryAll>()?;
    m.add_class::<advisory::AdvisorySet>()?;
    m.add_class::<multi::LeaseAll>()?;
    m.add_class::<multi::LeaseSet>()?;
    m.add_class::<election::Election>()?;
    m.add_class::<election::Leadership>()?;
    m.add_class::<election::Leader>()?;
    m.add_class::<election::Observer>()?;
    m.add_class::<lease::LeaseRequest>()?;
    m.add_class::<lease::Lease>()?;
    m.add_class::<lease::PoolLease>()?;
    m.add_class::<lease::Permit>()?;
    m.add_class::<pool::LeasePool>()?;
    m.add_class::<pool::Claim>()?;
    m.add_class::<pool::Claims>()?;
    m.add_class::<pool::Semaphore>()?;
    m.add_class::<pool::PoolStatus>()?;
    m.add_class::<pool::PoolItem>()?;
    m.add_class::<pool::LeaseInfo>()?;
    m.add_class::<rate::RateLimiter>()?;
    m.add("MAX_NAME_BYTES", pglock::Locks::MAX_NAME_BYTES)?;
    m.add("MAX_SET_SIZE", pglock::MAX_SET_SIZE)?;
    m.add("ELECTION_PREFIX", pglock::ELECTION_PREFIX)?;
    m.add("DEFAULT_SCHEMA", pglock::Locks::DEFAULT_SCHEMA)?;
    Ok(())
}
