//! `pglock.Advisory` (a request for a session advisory lock) and
//! `pglock.AdvisoryGuard` (the held lock).

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyInt, PyString, PyTuple};

use crate::convert;
use crate::errors::{foreign, invalid, to_py};
use crate::lease::raised;
use crate::locks::Locks;
use crate::runtime::{awaitable, in_context, wait};

/// A guard on its way to Python; dropped inside the runtime (which
/// releases the lock) if an asyncio caller was cancelled meanwhile.
struct Locked(pglock::AdvisoryGuard, String);

impl<'py> IntoPyObject<'py> for Locked {
    type Target = AdvisoryGuard;
    type Output = Bound<'py, AdvisoryGuard>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, AdvisoryGuard>> {
        Bound::new(
            py,
            AdvisoryGuard {
                key: self.1,
                shared: self.0.is_shared(),
                server_pid: self.0.pid(),
                pid: std::process::id(),
                guard: Mutex::new(Some(self.0)),
            },
        )
    }
}

/// A request for a session advisory lock: `lock()`, `try_lock()`, their
/// `a…` forms, or `with` / `async with` it.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Advisory {
    locks: Py<Locks>,
    key: pglock::AdvisoryKey,
    key_text: String,
    shared: bool,
    timeout: Option<Duration>,
    entered: Mutex<Vec<Py<AdvisoryGuard>>>,
}

impl Advisory {
    pub(crate) fn new(
        locks: Py<Locks>,
        key: &Bound<'_, PyAny>,
        shared: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Advisory> {
        let (key, key_text) = if key.is_instance_of::<PyString>() {
            let s = convert::string("key", key)?;
            (pglock::AdvisoryKey::from(s.clone()), s)
        } else if key.is_instance_of::<PyInt>() && !key.is_instance_of::<pyo3::types::PyBool>() {
            let n: i64 = key
                .extract()
                .map_err(|_| invalid("key", "an int key must fit in 64 bits (signed)"))?;
            (pglock::AdvisoryKey::from(n), n.to_string())
        } else {
            return Err(invalid("key", "must be a str or an int"));
        };
        Ok(Advisory {
            locks,
            key,
            key_text,
            shared,
            timeout: convert::opt_seconds("timeout", timeout)?,
            entered: Mutex::new(Vec::new()),
        })
    }

    fn request(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<pglock::Advisory> {
        let mut a = self
            .locks
            .bind(py)
            .get()
            .handle()?
            .advisory(self.key.clone());
        if self.shared {
            a = a.shared();
        }
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            a = a.timeout(t);
        }
        Ok(a)
    }
}

#[pymethods]
impl Advisory {
    /// Waits for the lock (up to `timeout` seconds, else `Timeout`).
    #[pyo3(signature = (*, timeout = None))]
    fn lock<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, AdvisoryGuard>> {
        let a = self.request(py, timeout)?;
        let key = self.key_text.clone();
        let g = wait(py, async move { a.lock().await.map_err(to_py) })?;
        Locked(g, key).into_pyobject(py)
    }

    /// The lock if it is free now, else `None`.
    fn try_lock<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, AdvisoryGuard>>> {
        let a = self.request(py, None)?;
        let key = self.key_text.clone();
        let g = wait(py, async move { a.try_lock().await.map_err(to_py) })?;
        g.map(|g| Locked(g, key).into_pyobject(py)).transpose()
    }

    /// `await advisory.alock()`; cancelling it leaves nothing held.
    #[pyo3(signature = (*, timeout = None))]
    fn alock<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let a = self.request(py, timeout)?;
        let key = self.key_text.clone();
        awaitable(py, async move {
            a.lock().await.map(|g| Locked(g, key)).map_err(to_py)
        })
    }

    /// `await advisory.atry_lock()`.
    fn atry_lock<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = self.request(py, None)?;
        let key = self.key_text.clone();
        awaitable(py, async move {
            a.try_lock()
                .await
                .map(|g| g.map(|g| Locked(g, key)))
                .map_err(to_py)
        })
    }

    fn __enter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, AdvisoryGuard>> {
        let g = self.lock(py, None)?;
        self._push(g.clone().unbind());
        Ok(g)
    }

    #[pyo3(signature = (*exc))]
    fn __exit__(&self, py: Python<'_>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let g = self._pop()?;
        AdvisoryGuard::__exit__(g.bind(py), exc)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("pglock._aio")?
            .call_method1("advisory_enter", (slf,))
    }

    #[pyo3(signature = (*exc))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let g = self._pop()?;
        AdvisoryGuard::__aexit__(g.bind(py), exc)
    }

    /// Internal: remembers a guard taken by `async with`.
    fn _push(&self, g: Py<AdvisoryGuard>) {
        self.entered.lock().unwrap().push(g);
    }

    fn _pop(&self) -> PyResult<Py<AdvisoryGuard>> {
        self.entered
            .lock()
            .unwrap()
            .pop()
            .ok_or_else(|| crate::errors::Error::new_err("__exit__ without __enter__"))
    }

    fn __repr__(&self) -> String {
        format!(
            "<pglock.Advisory {:?}{}>",
            self.key_text,
            if self.shared { " shared" } else { "" }
        )
    }
}

/// A held advisory lock; garbage collection releases it.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct AdvisoryGuard {
    key: String,
    shared: bool,
    server_pid: i32,
    pid: u32,
    guard: Mutex<Option<pglock::AdvisoryGuard>>,
}

impl Drop for AdvisoryGuard {
    fn drop(&mut self) {
        let g = self
            .guard
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if self.pid != std::process::id() {
            // The parent's session: never touch it from a forked child.
            std::mem::forget(g);
            return;
        }
        in_context(move || drop(g));
    }
}

impl AdvisoryGuard {
    fn take(&self) -> PyResult<Option<pglock::AdvisoryGuard>> {
        if self.pid != std::process::id() {
            return Err(foreign(&format!("advisory lock {:?}", self.key)));
        }
        Ok(self.guard.lock().unwrap().take())
    }
}

#[pymethods]
impl AdvisoryGuard {
    /// The key as given (an int key as its decimal text).
    #[getter]
    fn key(&self) -> &str {
        &self.key
    }

    /// Whether the lock is held in shared mode.
    #[getter]
    fn shared(&self) -> bool {
        self.shared
    }

    /// The server process id of the session holding the lock.
    #[getter]
    fn pid(&self) -> i32 {
        self.server_pid
    }

    /// Whether this guard still holds (has not released) the lock.
    fn locked(&self) -> bool {
        self.guard.lock().unwrap().is_some()
    }

    /// Releases now; `LeaseLost` if the session no longer held the lock.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        match self.take()? {
            Some(g) => wait(py, async move { g.release().await.map_err(to_py) }),
            None => Ok(()),
        }
    }

    /// `await guard.arelease()`.
    fn arelease<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let g = self.take()?;
        awaitable(py, async move {
            match g {
                Some(g) => g.release().await.map_err(to_py),
                None => Ok(()),
            }
        })
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*exc))]
    fn __exit__(slf: &Bound<'_, Self>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let raised = raised(exc)?;
        let result = slf.get().release(slf.py());
        match result {
            Err(e) if !raised => Err(e),
            _ => Ok(false),
        }
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let this = slf.clone().unbind();
        awaitable(slf.py(), async move { Ok(this) })
    }

    #[pyo3(signature = (*exc))]
    fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let raised = raised(exc)?;
        let g = slf.get().take()?;
        awaitable(slf.py(), async move {
            let result = match g {
                Some(g) => g.release().await.map_err(to_py),
                None => Ok(()),
            };
            match result {
                Err(e) if !raised => Err(e),
                _ => Ok(false),
            }
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<pglock.AdvisoryGuard {:?}{} pid={}{}>",
            self.key,
            if self.shared { " shared" } else { "" },
            self.server_pid,
            if self.locked() { "" } else { " released" }
        )
    }
}
