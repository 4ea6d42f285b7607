//! `pglock.LeasePool`, its `Claim`s and `claims()` iterator,
//! `pglock.Semaphore`, and the plain records `PoolStatus`, `PoolItem`,
//! `LeaseInfo`.

use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::{PyStopAsyncIteration, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::convert;
use crate::errors::{PoolDrained, to_py};
use crate::held::Held;
use crate::lease::{Acquired, FenceSql, Lease, fence_sql, raised};
use crate::locks::Locks;
use crate::runtime::{awaitable, wait};

/// A crate request that yields a pool item or a permit.
pub(crate) enum Req {
    Claim(pglock::Claim),
    Permit(pglock::Semaphore),
}

impl Req {
    pub(crate) async fn acquire(self) -> pglock::Result<Held> {
        match self {
            Req::Claim(c) => c.acquire().await.map(Held::Item),
            Req::Permit(s) => s.acquire().await.map(Held::Permit),
        }
    }

    pub(crate) async fn try_acquire(self) -> pglock::Result<Option<Held>> {
        match self {
            Req::Claim(c) => Ok(c.try_acquire().await?.map(Held::Item)),
            Req::Permit(s) => Ok(s.try_acquire().await?.map(Held::Permit)),
        }
    }
}

/// `acquire`, `try_acquire`, their `a…` forms and `with`/`async with` for a
/// class with `fn req(&self, py, timeout) -> PyResult<(Req, FenceSql)>` and an
/// `entered` stack.
macro_rules! acquiring_methods {
    ($ty:ty) => {
        #[pymethods]
        impl $ty {
            /// Waits for a free item (up to `timeout` seconds, else `Timeout`).
            #[pyo3(signature = (*, timeout = None))]
            fn acquire<'py>(
                &self,
                py: Python<'py>,
                timeout: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let (r, fence) = self.req(py, timeout)?;
                let lease = wait(py, async move { r.acquire().await.map_err(to_py) })?;
                Acquired(lease, fence).into_pyobject(py)
            }

            /// A free item now, else `None`.
            fn try_acquire<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
                let (r, fence) = self.req(py, None)?;
                let lease = wait(py, async move { r.try_acquire().await.map_err(to_py) })?;
                lease
                    .map(|l| Acquired(l, fence).into_pyobject(py))
                    .transpose()
            }

            /// `await x.aacquire()`; cancelling it leaves nothing held.
            #[pyo3(signature = (*, timeout = None))]
            fn aacquire<'py>(
                &self,
                py: Python<'py>,
                timeout: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let (r, fence) = self.req(py, timeout)?;
                awaitable(py, async move {
                    r.acquire().await.map(|l| Acquired(l, fence)).map_err(to_py)
                })
            }

            /// `await x.atry_acquire()`.
            fn atry_acquire<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let (r, fence) = self.req(py, None)?;
                awaitable(py, async move {
                    r.try_acquire()
                        .await
                        .map(|l| l.map(|l| Acquired(l, fence)))
                        .map_err(to_py)
                })
            }

            fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let lease = self.acquire(py, None)?;
                self._push(lease.cast::<Lease>()?.clone().unbind());
                Ok(lease)
            }

            #[pyo3(signature = (*exc))]
            fn __exit__(&self, py: Python<'_>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
                let lease = self._pop()?;
                Lease::exit(lease.bind(py), raised(exc)?)
            }

            fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
                slf.py()
                    .import("pglock._aio")?
                    .call_method1("request_enter", (slf,))
            }

            #[pyo3(signature = (*exc))]
            fn __aexit__<'py>(
                &self,
                py: Python<'py>,
                exc: &Bound<'py, PyTuple>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let lease = self._pop()?;
                Lease::aexit(lease.bind(py), raised(exc)?)
            }

            /// Internal: remembers a lease taken by `async with`.
            fn _push(&self, lease: Py<Lease>) {
                self.entered.lock().unwrap().push(lease);
            }

            fn _pop(&self) -> PyResult<Py<Lease>> {
                self.entered
                    .lock()
                    .unwrap()
                    .pop()
                    .ok_or_else(|| crate::errors::Error::new_err("__exit__ without __enter__"))
            }
        }
    };
}

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
    ) -> PyResult<Claim> {
        Ok(Claim {
            locks: self.locks.clone_ref(py),
            pool: self.name.clone(),
            ttl: convert::opt_seconds("ttl", ttl)?,
            timeout: convert::opt_seconds("timeout", timeout)?,
            holder: match holder {
                Some(h) if !h.is_none() => Some(convert::string("holder", h)?),
                _ => None,
            },
            entered: Mutex::new(Vec::new()),
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
    #[pyo3(signature = (*, ttl = None, timeout = None, holder = None))]
    fn claim(
        &self,
        py: Python<'_>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Claim> {
        self.new_claim(py, ttl, timeout, holder)
    }

    /// Claims items one after another until the pool is drained (every item
    /// done): `for item in pool.claims(ttl=60): with item: ...`. Also an
    /// async iterator.
    #[pyo3(signature = (*, ttl = None, timeout = None, holder = None))]
    fn claims(
        &self,
        py: Python<'_>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Claims> {
        Ok(Claims {
            claim: self.new_claim(py, ttl, timeout, holder)?,
        })
    }

    /// Counts of items: total, free, held, done.
    fn status(&self, py: Python<'_>) -> PyResult<PoolStatus> {
        let pool = self.pool(py)?;
        let s = wait(py, async move { pool.status().await.map_err(to_py) })?;
        Ok(PoolStatus {
            total: s.total,
            free: s.free,
            held: s.held,
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
    holder: Option<String>,
    entered: Mutex<Vec<Py<Lease>>>,
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
        if let Some(h) = &self.holder {
            c = c.holder(h.clone());
        }
        Ok((Req::Claim(c), fence_sql(&locks)))
    }
}

acquiring_methods!(Claim);

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
    entered: Mutex<Vec<Py<Lease>>>,
}

impl Semaphore {
    pub(crate) fn new(
        locks: Py<Locks>,
        name: &Bound<'_, PyAny>,
        permits: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Semaphore> {
        Ok(Semaphore {
            locks,
            name: convert::string("semaphore name", name)?,
            permits: convert::count("permits", permits)?,
            ttl: convert::opt_seconds("ttl", ttl)?,
            timeout: convert::opt_seconds("timeout", timeout)?,
            entered: Mutex::new(Vec::new()),
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
        Ok((Req::Permit(s), fence_sql(&locks)))
    }
}

acquiring_methods!(Semaphore);

/// Counts of a pool's items.
#[pyclass(module = "pglock", frozen, get_all)]
pub(crate) struct PoolStatus {
    total: u64,
    free: u64,
    held: u64,
    done: u64,
}

#[pymethods]
impl PoolStatus {
    fn __repr__(&self) -> String {
        format!(
            "PoolStatus(total={}, free={}, held={}, done={})",
            self.total, self.free, self.held, self.done
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
    data: Py<PyAny>,
    release_requested: bool,
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
            release_requested: r.release_requested,
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
