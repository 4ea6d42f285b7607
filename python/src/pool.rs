//! `pglock.LeasePool`, its `Claim`s and `claims()` iterator,
//! `pglock.Semaphore`, and the plain records `PoolStatus`, `PoolItem`,
//! `LeaseInfo`.

use std::time::Duration;

use pyo3::exceptions::{PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::convert;
use crate::errors::{PoolDrained, to_py};
use crate::handle::Locks;
use crate::lease::{Acquired, FenceSql, Lease, fence_sql};
use crate::request::{Entered, Req, acquiring_methods};
use crate::runtime::{awaitable, wait};

/// A named set of items to claim.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct LeasePool {
    locks: Py<Locks>,
    name: String,
}

impl LeasePool {
    pub(crate) fn new(locks: Py<Locks>, name: String) -> LeasePool {
        LeasePool { locks, name }
    }

    fn pool(&self, py: Python<'_>) -> PyResult<pglock::LeasePool> {
        Ok(self
            .locks
            .bind(py)
            .get()
            .handle()?
            .lease_pool(self.name.clone()))
    }

    fn new_claim(
        &self,
        py: Python<'_>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
        lock_delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Claim> {
        Ok(Claim {
            locks: self.locks.clone_ref(py),
            pool: self.name.clone(),
            ttl: convert::opt_seconds("ttl", ttl)?,
            timeout: convert::opt_seconds("timeout", timeout)?,
            lock_delay: convert::opt_delay("lock_delay", lock_delay)?,
            holder: convert::opt_string("holder", holder)?,
            entered: Entered::new(),
        })
    }
}

#[pymethods]
impl LeasePool {
    /// The pool's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Adds items (idempotent); returns how many were new.
    fn add(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<u64> {
        if items.is_instance_of::<pyo3::types::PyString>() {
            return Err(crate::errors::invalid(
                "items",
                "must be an iterable of str, not one str",
            ));
        }
        let names = items
            .try_iter()
            .map_err(|_| crate::errors::invalid("items", "must be an iterable of str"))?
            .map(|i| convert::string("item name", &i?))
            .collect::<PyResult<Vec<_>>>()?;
        let pool = self.pool(py)?;
        wait(py, async move { pool.add(names).await.map_err(to_py) })
    }

    /// A claim of any free item.
    #[pyo3(signature = (*, ttl = None, timeout = None, holder = None, lock_delay = None))]
    fn claim(
        &self,
        py: Python<'_>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
        lock_delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Claim> {
        self.new_claim(py, ttl, timeout, holder, lock_delay)
    }

    /// Claims items one after another until the pool is drained (every item
    /// done): `for item in pool.claims(ttl=60): with item: ...`. Also an
    /// async iterator.
    #[pyo3(signature = (*, ttl = None, timeout = None, holder = None, lock_delay = None))]
    fn claims(
        &self,
        py: Python<'_>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
        lock_delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Claims> {
        Ok(Claims {
            claim: self.new_claim(py, ttl, timeout, holder, lock_delay)?,
        })
    }

    /// Counts of items: total, free, held, delayed, done.
    fn status(&self, py: Python<'_>) -> PyResult<PoolStatus> {
        let pool = self.pool(py)?;
        let s = wait(py, async move { pool.status().await.map_err(to_py) })?;
        Ok(PoolStatus {
            total: s.total,
            free: s.free,
            held: s.held,
            delayed: s.delayed,
            done: s.done,
        })
    }

    /// Every item with its state.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let pool = self.pool(py)?;
        let items = wait(py, async move { pool.items().await.map_err(to_py) })?;
        let out = items
            .into_iter()
            .map(|i| {
                Ok(PoolItem {
                    data: convert::from_json(py, i.data.as_ref())?,
                    expires_at: convert::opt_datetime(py, i.expires_at)?,
                    name: i.name,
                    token: i.token,
                    holder: i.holder,
                    held: i.held,
                    done: i.done,
                    data_token: i.data_token,
                    data_holder: i.data_holder,
                    delayed_until: convert::opt_datetime(py, i.delayed_until)?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, out)
    }

    /// Releases `item` whoever holds it; returns the token released.
    fn force_release(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
        let item = convert::string("item name", item)?;
        let pool = self.pool(py)?;
        wait(
            py,
            async move { pool.force_release(&item).await.map_err(to_py) },
        )
    }

    /// Asks the holder of `item` to let go; returns its token.
    fn request_release(&self, py: Python<'_>, item: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
        let item = convert::string("item name", item)?;
        let pool = self.pool(py)?;
        wait(py, async move {
            pool.request_release(&item).await.map_err(to_py)
        })
    }

    fn __repr__(&self) -> String {
        format!("<pglock.LeasePool {:?}>", self.name)
    }
}

/// A claim of any free item of a pool.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Claim {
    locks: Py<Locks>,
    pool: String,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    lock_delay: Option<Duration>,
    holder: Option<String>,
    entered: Entered<Lease>,
}

impl Claim {
    fn req(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<(Req, FenceSql)> {
        let locks = self.locks.bind(py).get().handle()?;
        let mut c = locks.lease_pool(self.pool.clone()).claim();
        if let Some(t) = self.ttl {
            c = c.ttl(t);
        }
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            c = c.timeout(t);
        }
        if let Some(d) = self.lock_delay {
            c = c.lock_delay(d);
        }
        if let Some(h) = &self.holder {
            c = c.holder(h.clone());
        }
        Ok((Req::Claim(c), fence_sql(&locks)))
    }
}

acquiring_methods!(Claim {});

/// Iterator of claims until the pool is drained.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Claims {
    claim: Claim,
}

#[pymethods]
impl Claims {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self.claim.acquire(py, None) {
            Err(e) if e.is_instance_of::<PoolDrained>(py) => Err(PyStopIteration::new_err(())),
            other => other,
        }
    }

    fn __aiter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (r, fence) = self.claim.req(py, None)?;
        awaitable(py, async move {
            match r.acquire().await {
                Ok(l) => Ok(Acquired(l, fence)),
                Err(pglock::Error::PoolDrained { .. }) => Err(PyStopAsyncIteration::new_err(())),
                Err(e) => Err(to_py(e)),
            }
        })
    }
}

/// At most `permits` holders at a time, across every process.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Semaphore {
    locks: Py<Locks>,
    name: String,
    permits: u32,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    lock_delay: Option<Duration>,
    entered: Entered<Lease>,
}

impl Semaphore {
    pub(crate) fn new(
        locks: Py<Locks>,
        name: &Bound<'_, PyAny>,
        permits: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        lock_delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Semaphore> {
        Ok(Semaphore {
            locks,
            name: convert::string("semaphore name", name)?,
            permits: convert::count("permits", permits)?,
            ttl: convert::opt_seconds("ttl", ttl)?,
            timeout: convert::opt_seconds("timeout", timeout)?,
            lock_delay: convert::opt_delay("lock_delay", lock_delay)?,
            entered: Entered::new(),
        })
    }

    fn req(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<(Req, FenceSql)> {
        let locks = self.locks.bind(py).get().handle()?;
        let mut s = locks.semaphore(self.name.clone(), self.permits);
        if let Some(t) = self.ttl {
            s = s.ttl(t);
        }
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            s = s.timeout(t);
        }
        if let Some(d) = self.lock_delay {
            s = s.lock_delay(d);
        }
        Ok((Req::Permit(s), fence_sql(&locks)))
    }
}

acquiring_methods!(Semaphore {});

/// Counts of a pool's items.
#[pyclass(module = "pglock", frozen, get_all)]
pub(crate) struct PoolStatus {
    total: u64,
    free: u64,
    held: u64,
    delayed: u64,
    done: u64,
}

#[pymethods]
impl PoolStatus {
    fn __repr__(&self) -> String {
        format!(
            "PoolStatus(total={}, free={}, held={}, delayed={}, done={})",
            self.total, self.free, self.held, self.delayed, self.done
        )
    }
}

/// One item of a pool.
#[pyclass(module = "pglock", frozen, get_all)]
pub(crate) struct PoolItem {
    name: String,
    token: i64,
    holder: Option<String>,
    held: bool,
    done: bool,
    expires_at: Py<PyAny>,
    data: Py<PyAny>,
    /// Token of the claim that wrote `data` (it carries from claim to claim).
    data_token: Option<i64>,
    /// Holder label of the claim that wrote `data`.
    data_holder: Option<String>,
    /// Set while the item's lease expired and its lock-delay is not over:
    /// nobody can claim it before this time.
    delayed_until: Py<PyAny>,
}

#[pymethods]
impl PoolItem {
    fn __repr__(&self) -> String {
        format!(
            "PoolItem(name={:?}, token={}, held={}, done={})",
            self.name, self.token, self.held, self.done
        )
    }
}

/// One lease row, from `locks.leases()`.
#[pyclass(module = "pglock", frozen, get_all)]
pub(crate) struct LeaseInfo {
    pool: Option<String>,
    name: String,
    token: i64,
    holder: Option<String>,
    held: bool,
    acquired_at: Py<PyAny>,
    expires_at: Py<PyAny>,
    /// Seconds until expiry by the database clock (negative once expired).
    expires_in: Option<f64>,
    /// The payload; an acquire without data keeps the previous holder's.
    data: Py<PyAny>,
    /// Token of the acquisition that wrote `data`: `token` when the latest
    /// holder wrote it, smaller when a previous holder did.
    data_token: Option<i64>,
    /// Holder label of the acquisition that wrote `data`.
    data_holder: Option<String>,
    release_requested: bool,
    /// Until when a lock-delay keeps the expired lease from the next holder.
    delayed_until: Py<PyAny>,
}

impl LeaseInfo {
    pub(crate) fn from_row(py: Python<'_>, r: &pglock::LeaseInfo) -> PyResult<LeaseInfo> {
        Ok(LeaseInfo {
            pool: r.pool.clone(),
            name: r.name.clone(),
            token: r.token,
            holder: r.holder.clone(),
            held: r.held,
            acquired_at: convert::opt_datetime(py, r.acquired_at)?,
            expires_at: convert::opt_datetime(py, r.expires_at)?,
            expires_in: r
                .expires_in
                .map(|d| d.num_microseconds().map_or(f64::NAN, |us| us as f64 / 1e6)),
            data: convert::from_json(py, r.data.as_ref())?,
            data_token: r.data_token,
            data_holder: r.data_holder.clone(),
            release_requested: r.release_requested,
            delayed_until: convert::opt_datetime(py, r.delayed_until)?,
        })
    }
}

#[pymethods]
impl LeaseInfo {
    fn __repr__(&self) -> String {
        format!(
            "LeaseInfo(pool={:?}, name={:?}, token={}, holder={:?}, held={})",
            self.pool, self.name, self.token, self.holder, self.held
        )
    }
}
