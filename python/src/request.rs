//! What the request classes share: [`Req`], the crate request a
//! `LeaseRequest`, `Claim` or `Semaphore` turns into, the
//! [`acquiring_methods!`] that give them `acquire`, `try_acquire`, their
//! `a…` forms and `with` / `async with`, and [`Entered`], the stack of what
//! `with` blocks took.

use std::sync::Mutex;

use pyo3::prelude::*;

use crate::errors::Error;
use crate::held::Held;

/// A crate request that yields a lease, a pool item or a permit.
pub(crate) enum Req {
    Lease(pglock::LeaseRequest),
    Claim(pglock::Claim),
    Permit(pglock::Semaphore),
}

impl Req {
    pub(crate) async fn acquire(self) -> pglock::Result<Held> {
        match self {
            Req::Lease(r) => r.acquire().await.map(Held::Lease),
            Req::Claim(c) => c.acquire().await.map(Held::Item),
            Req::Permit(s) => s.acquire().await.map(Held::Permit),
        }
    }

    pub(crate) async fn try_acquire(self) -> pglock::Result<Option<Held>> {
        match self {
            Req::Lease(r) => Ok(r.try_acquire().await?.map(Held::Lease)),
            Req::Claim(c) => Ok(c.try_acquire().await?.map(Held::Item)),
            Req::Permit(s) => Ok(s.try_acquire().await?.map(Held::Permit)),
        }
    }
}

/// What `with` / `async with` blocks on one request object took, innermost
/// last.
pub(crate) struct Entered<T>(Mutex<Vec<Py<T>>>);

impl<T> Entered<T> {
    pub(crate) fn new() -> Entered<T> {
        Entered(Mutex::new(Vec::new()))
    }

    pub(crate) fn push(&self, v: Py<T>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }

    pub(crate) fn pop(&self) -> PyResult<Py<T>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or_else(|| Error::new_err("__exit__ without __enter__"))
    }
}

/// `acquire`, `try_acquire`, their `a…` forms and `with`/`async with`
/// ([`entering_methods!`]) for a class with `fn req(&self, py, timeout) ->
/// PyResult<(Req, FenceSql)>` and an `entered: Entered<Lease>`; further
/// methods of the class go in braces after its name.
macro_rules! acquiring_methods {
    ($ty:ty { $($extra:tt)* }) => {
        $crate::request::entering_methods!($ty, acquire, $crate::lease::Lease, "request_enter", {
            /// Waits (up to `timeout` seconds, else `Timeout`).
            #[pyo3(signature = (*, timeout = None))]
            fn acquire<'py>(
                &self,
                py: Python<'py>,
                timeout: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let (r, fence) = self.req(py, timeout)?;
                let lease = $crate::runtime::wait(py, async move {
                    r.acquire().await.map_err($crate::errors::to_py)
                })?;
                $crate::lease::Acquired(lease, fence).into_pyobject(py)
            }

            /// The lease or item if one is free now, else `None`.
            fn try_acquire<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
                let (r, fence) = self.req(py, None)?;
                let lease = $crate::runtime::wait(py, async move {
                    r.try_acquire().await.map_err($crate::errors::to_py)
                })?;
                lease
                    .map(|l| $crate::lease::Acquired(l, fence).into_pyobject(py))
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
                $crate::runtime::awaitable(py, async move {
                    r.acquire()
                        .await
                        .map(|l| $crate::lease::Acquired(l, fence))
                        .map_err($crate::errors::to_py)
                })
            }

            /// `await x.atry_acquire()`.
            fn atry_acquire<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let (r, fence) = self.req(py, None)?;
                $crate::runtime::awaitable(py, async move {
                    r.try_acquire()
                        .await
                        .map(|l| l.map(|l| $crate::lease::Acquired(l, fence)))
                        .map_err($crate::errors::to_py)
                })
            }

            $($extra)*
        });
    };
}
pub(crate) use acquiring_methods;

/// `with` / `async with` on a request class: `__enter__` calls
/// `self.$take(py, None)` and remembers what it took (a `$held`) in
/// `self.entered`; `__exit__` / `__aexit__` hand it to `$held`'s own;
/// `__aenter__` is `pglock._aio.$aenter`. The class's other methods go in
/// the braces (one `#[pymethods]` block per class).
macro_rules! entering_methods {
    ($ty:ty, $take:ident, $held:ty, $aenter:literal, { $($extra:tt)* }) => {
        #[pymethods]
        impl $ty {
            fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
                let taken = self.$take(py, None)?.into_any();
                self.entered.push(taken.cast::<$held>()?.clone().unbind());
                Ok(taken)
            }

            #[pyo3(signature = (*exc))]
            fn __exit__(
                &self,
                py: Python<'_>,
                exc: &Bound<'_, pyo3::types::PyTuple>,
            ) -> PyResult<bool> {
                <$held>::__exit__(self.entered.pop()?.bind(py), exc)
            }

            fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
                slf.py().import("pglock._aio")?.call_method1($aenter, (slf,))
            }

            #[pyo3(signature = (*exc))]
            fn __aexit__<'py>(
                &self,
                py: Python<'py>,
                exc: &Bound<'py, pyo3::types::PyTuple>,
            ) -> PyResult<Bound<'py, PyAny>> {
                <$held>::__aexit__(self.entered.pop()?.bind(py), exc)
            }

            /// Internal: remembers what `async with` took.
            fn _push(&self, taken: Py<$held>) {
                self.entered.push(taken);
            }

            $($extra)*
        }
    };
}
pub(crate) use entering_methods;
