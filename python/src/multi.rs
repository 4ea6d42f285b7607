//! `pglock.LeaseAll` (a request for a set of leases, all or none) and
//! `pglock.LeaseSet` (the held set: every lease kept alive, one fence for
//! all of them).

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::advisory::members;
use crate::convert;
use crate::errors::{foreign, invalid, to_py};
use crate::handle::Locks;
use crate::held::Held;
use crate::lease::{Acquired, FenceSql, Lease, fence_sql, fence_via, raised, ready, within};
use crate::request::{Entered, entering_methods};
use crate::runtime::{awaitable, in_context, wait};

/// The fence of a set (`$1` names, `$2` tokens): the crate's one-statement
/// set fence, `SELECT <schema>.fence(u.n, u.t)::text FROM unnest(…)`,
/// built from the single fence statement of the same schema.
fn set_fence_sql(single: &str) -> PyResult<String> {
    const ONE: &str = ".fence($1, $2, $3)::text";
    let Some(schema_end) = single.find(ONE) else {
        return Err(crate::errors::Error::new_err(format!(
            "pglock: unexpected fence statement {single:?}"
        )));
    };
    Ok(format!(
        "{}.fence(u.n, u.t)::text FROM unnest($1::text[], $2::int8[]) AS u(n, t)",
        &single[..schema_end]
    ))
}

/// A set of leases on its way to Python (see [`Acquired`]).
struct AcquiredSet(Vec<pglock::Lease>, FenceSql);

impl<'py> IntoPyObject<'py> for AcquiredSet {
    type Target = LeaseSet;
    type Output = Bound<'py, LeaseSet>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, LeaseSet>> {
        let set_fence = set_fence_sql(&self.1)?;
        let fence = self.1;
        let leases = in_context(|| {
            self.0
                .into_iter()
                .map(|l| {
                    let obj = Acquired(Held::Lease(l), fence.clone()).into_pyobject(py)?;
                    Ok(obj.cast_into::<Lease>()?.unbind())
                })
                .collect::<PyResult<Vec<_>>>()
        })?;
        Bound::new(
            py,
            LeaseSet {
                leases,
                set_fence,
                pid: std::process::id(),
            },
        )
    }
}

/// A request for leases on every name of a set, taken all or none in
/// ascending byte order of the names (duplicates once): `acquire()`,
/// `aacquire()`, or `with` / `async with` it.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct LeaseAll {
    locks: Py<Locks>,
    names: Vec<String>,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    entered: Entered<LeaseSet>,
}

impl LeaseAll {
    pub(crate) fn new(
        locks: Py<Locks>,
        names: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<LeaseAll> {
        let names = members("lease names", names)?
            .iter()
            .map(|n| convert::string("lease name", n))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(LeaseAll {
            locks,
            names,
            ttl: convert::opt_seconds("ttl", ttl)?,
            timeout: convert::opt_seconds("timeout", timeout)?,
            entered: Entered::new(),
        })
    }

    fn req(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(pglock::LeaseAll, FenceSql)> {
        let locks = self.locks.bind(py).get().handle()?;
        let mut r = locks.lease_all(self.names.clone());
        if let Some(t) = self.ttl {
            r = r.ttl(t);
        }
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            r = r.timeout(t);
        }
        Ok((r, fence_sql(&locks)))
    }
}

entering_methods!(LeaseAll, acquire, LeaseSet, "request_enter", {
    /// Waits for every lease (up to `timeout` seconds for the whole set,
    /// else `Timeout`, with nothing held).
    #[pyo3(signature = (*, timeout = None))]
    fn acquire<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, LeaseSet>> {
        let (r, fence) = self.req(py, timeout)?;
        let set = wait(py, async move { r.acquire().await.map_err(to_py) })?;
        AcquiredSet(set.into_leases(), fence).into_pyobject(py)
    }

    /// `await request.aacquire()`; cancelling it leaves nothing held.
    #[pyo3(signature = (*, timeout = None))]
    fn aacquire<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (r, fence) = self.req(py, timeout)?;
        awaitable(py, async move {
            r.acquire()
                .await
                .map(|s| AcquiredSet(s.into_leases(), fence))
                .map_err(to_py)
        })
    }

    /// The names as given.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn __repr__(&self) -> String {
        format!("<pglock.LeaseAll {:?}>", self.names)
    }
});

/// A held set of leases, each kept alive by the Rust core. Leaving its
/// `with` block (or `release()`) releases them all; garbage collection
/// releases them too.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct LeaseSet {
    /// In the order taken: ascending name bytes.
    leases: Vec<Py<Lease>>,
    set_fence: String,
    pid: u32,
}

/// The owned leases taken out of a set for release, with whether each was
/// lost before.
type Taken = Vec<(Py<Lease>, bool, Option<Held>)>;

/// The leases of a set with whether each was lost before its release.
type Was = Vec<(Py<Lease>, bool)>;

/// The set fence's SQL and its parameters: names and tokens.
type SetFence = (String, (Vec<String>, Vec<i64>));

impl LeaseSet {
    fn take_all(&self, py: Python<'_>) -> PyResult<Taken> {
        self.leases
            .iter()
            .map(|l| {
                let me = l.get();
                let was_lost = me.is_lost();
                Ok((l.clone_ref(py), was_lost, me.take()?))
            })
            .collect()
    }

    async fn release_all(taken: Vec<Option<Held>>) -> Vec<Option<PyResult<()>>> {
        futures_util::future::join_all(taken.into_iter().map(|h| async move {
            match h {
                Some(h) => Some(h.release().await.map_err(to_py)),
                None => None,
            }
        }))
        .await
    }

    /// Each lease's outcome as its own `__exit__` would give it; the first
    /// error wins.
    fn outcome(
        py: Python<'_>,
        raised: bool,
        leases: Was,
        results: Vec<Option<PyResult<()>>>,
    ) -> PyResult<bool> {
        let mut first = None;
        for ((l, was_lost), r) in leases.into_iter().zip(results) {
            let Some(r) = r else { continue };
            if let Err(e) = l.get().exit_outcome(py, raised, was_lost, r) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(false), Err)
    }

    /// After `release`: each released lease is finished; the first error.
    fn released(leases: Was, results: Vec<Option<PyResult<()>>>) -> PyResult<()> {
        let mut first = None;
        for ((l, _), r) in leases.into_iter().zip(results) {
            if r.is_some() {
                l.get().finished();
            }
            if let Some(Err(e)) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn split(taken: Taken) -> (Was, Vec<Option<Held>>) {
        taken.into_iter().map(|(l, lost, h)| ((l, lost), h)).unzip()
    }

    fn check_pid(&self) -> PyResult<()> {
        if self.pid != std::process::id() {
            return Err(foreign("lease set"));
        }
        Ok(())
    }
}

#[pymethods]
impl LeaseSet {
    /// The leases, in the order they were taken (ascending name bytes).
    #[getter]
    fn leases<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.leases.iter().map(|l| l.clone_ref(py)))
    }

    /// The names, in the order taken.
    #[getter]
    fn names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self
            .leases
            .iter()
            .map(|l| l.bind(py).get().name().to_owned())
            .collect())
    }

    /// The fencing token of each name: `{name: token}`.
    #[getter]
    fn tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for l in &self.leases {
            let l = l.get();
            d.set_item(l.name(), l.token())?;
        }
        Ok(d)
    }

    /// True once any lease of the set is known lost.
    #[getter]
    fn lost(&self) -> bool {
        self.leases.iter().any(|l| l.get().is_lost())
    }

    /// Waits until any lease of the set is lost, at most `timeout` seconds;
    /// True if one was.
    #[pyo3(signature = (timeout = None))]
    fn wait_lost(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        if self.lost() {
            return Ok(true);
        }
        let t = convert::opt_seconds("timeout", timeout)?;
        let handles = self
            .leases
            .iter()
            .map(|l| l.get().handle())
            .collect::<PyResult<Vec<_>>>()?;
        wait(py, async move {
            let all = handles.iter().map(|h| Box::pin(h.lost()));
            Ok(within(t, async move {
                futures_util::future::select_all(all).await;
            })
            .await)
        })
    }

    /// Checks on *your* connection, inside its transaction and in one
    /// statement, that every token still holds its lease, and keeps any
    /// newer holder from committing before that transaction ends. Accepts
    /// what `Lease.fence` accepts; `LeaseLost` naming a lease that is gone.
    fn fence(slf: &Bound<'_, Self>, conn: &Bound<'_, PyAny>) -> PyResult<()> {
        fence_via(slf.as_any(), conn, "fence").map(drop)
    }

    /// `await set.afence(conn)` for a psycopg `AsyncConnection` or `AsyncCursor`.
    fn afence<'py>(
        slf: &Bound<'py, Self>,
        conn: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        fence_via(slf.as_any(), conn, "afence")
    }

    /// Internal: the set fence's SQL (`$1` names, `$2` tokens) and
    /// parameters; `LeaseLost` if a lease is already known lost.
    fn _fence_statement(&self, py: Python<'_>) -> PyResult<SetFence> {
        self.check_pid()?;
        let mut names = Vec::with_capacity(self.leases.len());
        let mut tokens = Vec::with_capacity(self.leases.len());
        for l in &self.leases {
            let (_, (_, name, token)) = l.bind(py).get()._fence_statement()?;
            names.push(name);
            tokens.push(token);
        }
        Ok((self.set_fence.clone(), (names, tokens)))
    }

    /// Internal: the set fence refused with `message` (naming the token
    /// that failed); marks that lease lost and returns its `LeaseLost`.
    #[pyo3(signature = (message = None))]
    fn _fence_refused(&self, message: Option<&str>) -> PyResult<PyErr> {
        let message = message.unwrap_or("");
        let lost = self
            .leases
            .iter()
            .find(|l| {
                let tail = format!("not held by token {}", l.get().token());
                message.lines().any(|line| line.trim_end().ends_with(&tail))
            })
            .or(self.leases.first())
            .ok_or_else(|| invalid("lease set", "is empty"))?;
        lost.get()._fence_refused(None)
    }

    /// Releases every lease now; the first error (`LeaseLost` for a lease
    /// no longer ours) after every release was tried.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.check_pid()?;
        let (leases, helds) = Self::split(self.take_all(py)?);
        let results = wait(py, async move { Ok(Self::release_all(helds).await) })?;
        Self::released(leases, results)
    }

    /// `await set.arelease()`.
    fn arelease<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.check_pid()?;
        let (leases, helds) = Self::split(self.take_all(py)?);
        awaitable(py, async move {
            let results = Self::release_all(helds).await;
            Self::released(leases, results)
        })
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Releases every lease; raises `LeaseLost` if one was lost while the
    /// block ran (unless the block raised).
    #[pyo3(signature = (*exc))]
    pub(crate) fn __exit__(slf: &Bound<'_, Self>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        let raised = raised(exc)?;
        let py = slf.py();
        let me = slf.get();
        me.check_pid()?;
        let (leases, helds) = Self::split(me.take_all(py)?);
        let results = wait(py, async move { Ok(Self::release_all(helds).await) })?;
        Self::outcome(py, raised, leases, results)
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
        let me = slf.get();
        me.check_pid()?;
        let (leases, helds) = Self::split(me.take_all(slf.py())?);
        awaitable(slf.py(), async move {
            let results = Self::release_all(helds).await;
            Python::attach(|py| Self::outcome(py, raised, leases, results))
        })
    }

    fn __len__(&self) -> usize {
        self.leases.len()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let tokens: Vec<String> = self
            .leases
            .iter()
            .map(|l| {
                let l = l.bind(py).get();
                format!("{}={}", l.name(), l.token())
            })
            .collect();
        Ok(format!(
            "<pglock.LeaseSet {}{}>",
            tokens.join(" "),
            if self.lost() { " lost" } else { "" }
        ))
    }
}
