//! `pglock.Advisory` (a request for a session advisory lock),
//! `pglock.AdvisoryAll` (a request for a set of them, all or none),
//! `pglock.AdvisoryGuard` (a held lock) and `pglock.AdvisorySet` (a held
//! set, an `AdvisoryGuard` with its keys).

use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyInt, PyList, PyString, PyTuple};

use crate::convert;
use crate::errors::{foreign, invalid, to_py};
use crate::handle::Locks;
use crate::lease::{raised, ready};
use crate::request::{Entered, entering_methods};
use crate::runtime::{awaitable, in_context, wait};

/// What a request locks: one key, or a set.
enum Pending {
    One(pglock::Advisory),
    Set(pglock::AdvisoryAll),
}

impl Pending {
    async fn lock(self) -> pglock::Result<Guard> {
        match self {
            Pending::One(a) => a.lock().await.map(Guard::One),
            Pending::Set(a) => a.lock().await.map(Guard::Set),
        }
    }
}

/// A held lock or set.
enum Guard {
    One(pglock::AdvisoryGuard),
    Set(pglock::AdvisorySet),
}

impl Guard {
    async fn release(self) -> pglock::Result<()> {
        match self {
            Guard::One(g) => g.release().await,
            Guard::Set(g) => g.release().await,
        }
    }
}

/// A guard on its way to Python; dropped inside the runtime (which
/// releases the lock) if an asyncio caller was cancelled meanwhile.
struct Locked(Guard, Vec<String>);

impl<'py> IntoPyObject<'py> for Locked {
    type Target = AdvisoryGuard;
    type Output = Bound<'py, AdvisoryGuard>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, AdvisoryGuard>> {
        let (shared, server_pid, set) = match &self.0 {
            Guard::One(g) => (g.is_shared(), g.pid(), None),
            Guard::Set(g) => (
                false,
                g.pid(),
                Some(AdvisorySet {
                    keys: self.1.clone(),
                    numeric: g.numeric_keys().to_vec(),
                }),
            ),
        };
        let base = AdvisoryGuard {
            key: self.1.join(", "),
            shared,
            server_pid,
            pid: std::process::id(),
            guard: Mutex::new(Some(self.0)),
        };
        match set {
            None => Bound::new(py, base),
            Some(set) => {
                Ok(Bound::new(py, PyClassInitializer::from(base).add_subclass(set))?.into_super())
            }
        }
    }
}

/// An advisory key: a `str`, or an `int` in 64-bit signed range.
fn key_of(key: &Bound<'_, PyAny>) -> PyResult<(pglock::AdvisoryKey, String)> {
    if key.is_instance_of::<PyString>() {
        let s = convert::string("key", key)?;
        Ok((pglock::AdvisoryKey::from(s.clone()), s))
    } else if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
        let n: i64 = key
            .extract()
            .map_err(|_| invalid("key", "an int key must fit in 64 bits (signed)"))?;
        Ok((pglock::AdvisoryKey::from(n), n.to_string()))
    } else {
        Err(invalid("key", "must be a str or an int"))
    }
}

/// `lock`, `alock` and `with` / `async with` for a class with
/// `fn pending(&self, py, timeout) -> PyResult<(Pending, Vec<String>)>` and an
/// `entered: Entered<AdvisoryGuard>`; further methods go in the braces.
macro_rules! locking_methods {
    ($ty:ty { $($extra:tt)* }) => {
        entering_methods!($ty, lock, AdvisoryGuard, "advisory_enter", {
            /// Waits for the lock (up to `timeout` seconds, else `Timeout`).
            #[pyo3(signature = (*, timeout = None))]
            fn lock<'py>(
                &self,
                py: Python<'py>,
                timeout: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, AdvisoryGuard>> {
                let (p, key) = self.pending(py, timeout)?;
                let g = wait(py, async move { p.lock().await.map_err(to_py) })?;
                Locked(g, key).into_pyobject(py)
            }

            /// `await x.alock()`; cancelling it leaves nothing held.
            #[pyo3(signature = (*, timeout = None))]
            fn alock<'py>(
                &self,
                py: Python<'py>,
                timeout: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let (p, key) = self.pending(py, timeout)?;
                awaitable(py, async move {
                    p.lock().await.map(|g| Locked(g, key)).map_err(to_py)
                })
            }

            $($extra)*
        });
    };
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
    entered: Entered<AdvisoryGuard>,
}

impl Advisory {
    pub(crate) fn new(
        locks: Py<Locks>,
        key: &Bound<'_, PyAny>,
        shared: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Advisory> {
        let (key, key_text) = key_of(key)?;
        Ok(Advisory {
            locks,
            key,
            key_text,
            shared,
            timeout: convert::opt_seconds("timeout", timeout)?,
            entered: Entered::new(),
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

    fn pending(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Pending, Vec<String>)> {
        Ok((
            Pending::One(self.request(py, timeout)?),
            vec![self.key_text.clone()],
        ))
    }
}

locking_methods!(Advisory {
    /// The lock if it is free now, else `None`.
    fn try_lock<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, AdvisoryGuard>>> {
        let a = self.request(py, None)?;
        let key = vec![self.key_text.clone()];
        let g = wait(py, async move { a.try_lock().await.map_err(to_py) })?;
        g.map(|g| Locked(Guard::One(g), key).into_pyobject(py))
            .transpose()
    }

    /// `await advisory.atry_lock()`.
    fn atry_lock<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let a = self.request(py, None)?;
        let key = vec![self.key_text.clone()];
        awaitable(py, async move {
            a.try_lock()
                .await
                .map(|g| g.map(|g| Locked(Guard::One(g), key)))
                .map_err(to_py)
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "<pglock.Advisory {:?}{}>",
            self.key_text,
            if self.shared { " shared" } else { "" }
        )
    }
});

/// A request for exclusive advisory locks on a set of keys, taken all or
/// none in ascending numeric key order on one session: `lock()`,
/// `alock()`, or `with` / `async with` it.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct AdvisoryAll {
    locks: Py<Locks>,
    keys: Vec<pglock::AdvisoryKey>,
    key_texts: Vec<String>,
    timeout: Option<Duration>,
    entered: Entered<AdvisoryGuard>,
}

impl AdvisoryAll {
    pub(crate) fn new(
        locks: Py<Locks>,
        keys: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<AdvisoryAll> {
        let (keys, key_texts): (Vec<_>, Vec<_>) = members("advisory keys", keys)?
            .iter()
            .map(key_of)
            .collect::<PyResult<Vec<_>>>()?
            .into_iter()
            .unzip();
        Ok(AdvisoryAll {
            locks,
            keys,
            key_texts,
            timeout: convert::opt_seconds("timeout", timeout)?,
            entered: Entered::new(),
        })
    }

    fn pending(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(Pending, Vec<String>)> {
        let mut a = self
            .locks
            .bind(py)
            .get()
            .handle()?
            .advisory_all(self.keys.clone());
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            a = a.timeout(t);
        }
        Ok((Pending::Set(a), self.key_texts.clone()))
    }
}

locking_methods!(AdvisoryAll {
    /// The keys as given (int keys as their decimal text).
    #[getter]
    fn keys(&self) -> Vec<String> {
        self.key_texts.clone()
    }

    fn __repr__(&self) -> String {
        format!("<pglock.AdvisoryAll {:?}>", self.key_texts)
    }
});

/// The members of a set argument (a list, tuple or other iterable, not a
/// `str`): at least one, at most `MAX_SET_SIZE`.
pub(crate) fn members<'py>(field: &str, v: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if v.is_instance_of::<PyString>() || v.is_instance_of::<PyBytes>() {
        return Err(invalid(
            field,
            "must be an iterable of members, not one str",
        ));
    }
    let items = v
        .try_iter()
        .map_err(|_| invalid(field, "must be an iterable (a list or tuple)"))?
        .collect::<PyResult<Vec<_>>>()?;
    if items.is_empty() {
        return Err(invalid(field, "must name at least one member"));
    }
    if items.len() > pglock::MAX_SET_SIZE {
        return Err(invalid(
            field,
            format!(
                "must have at most {} members, got {}",
                pglock::MAX_SET_SIZE,
                items.len()
            ),
        ));
    }
    Ok(items)
}

/// A held advisory lock; garbage collection releases it.
#[pyclass(module = "pglock", frozen, subclass)]
pub(crate) struct AdvisoryGuard {
    key: String,
    shared: bool,
    server_pid: i32,
    pid: u32,
    guard: Mutex<Option<Guard>>,
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
    fn take(&self) -> PyResult<Option<Guard>> {
        if self.pid != std::process::id() {
            return Err(foreign(&format!("advisory lock {:?}", self.key)));
        }
        Ok(self.guard.lock().unwrap().take())
    }
}

#[pymethods]
impl AdvisoryGuard {
    /// The key as given (an int key as its decimal text; a set's keys
    /// joined with ", ").
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
    pub(crate) fn __exit__(slf: &Bound<'_, Self>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let raised = raised(exc)?;
        let result = slf.get().release(slf.py());
        match result {
            Err(e) if !raised => Err(e),
            _ => Ok(false),
        }
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        ready(slf)
    }

    #[pyo3(signature = (*exc))]
    pub(crate) fn __aexit__<'py>(
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

/// A held set of advisory locks on one session (from `advisory_all`):
/// released all at once.
#[pyclass(module = "pglock", frozen, extends = AdvisoryGuard)]
pub(crate) struct AdvisorySet {
    keys: Vec<String>,
    numeric: Vec<i64>,
}

#[pymethods]
impl AdvisorySet {
    /// The keys, as the caller gave them.
    #[getter]
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, &self.keys)
    }

    /// The numeric keys held, ascending (the order they were taken), each once.
    #[getter]
    fn numeric_keys(&self) -> Vec<i64> {
        self.numeric.clone()
    }
}
