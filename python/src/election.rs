//! `pglock.Election` (campaign, leader, observe), `pglock.Leadership` (a
//! held leadership: a `Lease` with the value campaigned with),
//! `pglock.Leader` (who leads) and `pglock.Observer` (the stream of
//! leaders, an iterator and an async iterator).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use pyo3::exceptions::PyStopAsyncIteration;
use pyo3::prelude::*;

use crate::convert;
use crate::errors::{foreign, to_py};
use crate::handle::Locks;
use crate::held::Held;
use crate::lease::{FenceSql, Lease, fence_sql};
use crate::runtime::{awaitable, in_context, wait};

/// An election: `campaign(value)` to lead it, `leader()` to see who leads,
/// `observe()` to watch leaders change. Its lease is `election/<name>`.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Election {
    locks: Py<Locks>,
    name: String,
    ttl: Option<Duration>,
}

impl Election {
    pub(crate) fn new(
        locks: Py<Locks>,
        name: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Election> {
        Ok(Election {
            locks,
            name: convert::string("election name", name)?,
            ttl: convert::opt_seconds("ttl", ttl)?,
        })
    }

    fn election(&self, py: Python<'_>) -> PyResult<(pglock::Election, FenceSql)> {
        let locks = self.locks.bind(py).get().handle()?;
        let mut e = locks.election(self.name.clone());
        if let Some(t) = self.ttl {
            e = e.ttl(t);
        }
        Ok((e, fence_sql(&locks)))
    }
}

/// A leadership on its way to Python (see `lease::Acquired`).
struct Elected(pglock::Leadership, FenceSql);

impl<'py> IntoPyObject<'py> for Elected {
    type Target = Leadership;
    type Output = Bound<'py, Leadership>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, Leadership>> {
        let value = self.0.value().to_owned();
        let held = in_context(|| Held::Lease(self.0.into_lease()).keep_alive());
        let base = Lease::new(held, self.1);
        Bound::new(
            py,
            PyClassInitializer::from(base).add_subclass(Leadership { value }),
        )
    }
}

fn value_of(value: &Bound<'_, PyAny>) -> PyResult<String> {
    convert::string("value", value)
}

#[pymethods]
impl Election {
    /// The election's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// The lease behind the election: `election/<name>`.
    #[getter]
    fn lease_name(&self) -> String {
        format!("{}{}", pglock::ELECTION_PREFIX, self.name)
    }

    /// Waits until this candidate leads, then returns its leadership, kept
    /// alive by the Rust core (a `Lease`: `token`, `fence`, `lost`, `with`).
    /// Observers are told at once.
    #[pyo3(signature = (value = None))]
    fn campaign<'py>(
        &self,
        py: Python<'py>,
        value: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, Leadership>> {
        let value = value.map(value_of).transpose()?.unwrap_or_default();
        let (e, fence) = self.election(py)?;
        let l = wait(py, async move { e.campaign(value).await.map_err(to_py) })?;
        Elected(l, fence).into_pyobject(py)
    }

    /// `await election.acampaign(value)`; cancelling it leaves nothing held.
    #[pyo3(signature = (value = None))]
    fn acampaign<'py>(
        &self,
        py: Python<'py>,
        value: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = value.map(value_of).transpose()?.unwrap_or_default();
        let (e, fence) = self.election(py)?;
        awaitable(py, async move {
            e.campaign(value)
                .await
                .map(|l| Elected(l, fence))
                .map_err(to_py)
        })
    }

    /// The current leader, or `None` if nobody leads now (database clock).
    fn leader(&self, py: Python<'_>) -> PyResult<Option<Leader>> {
        let (e, _) = self.election(py)?;
        let l = wait(py, async move { e.leader().await.map_err(to_py) })?;
        l.map(|l| Leader::from_crate(py, l)).transpose()
    }

    /// `await election.aleader()`.
    fn aleader<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (e, _) = self.election(py)?;
        awaitable(py, async move {
            let l = e.leader().await.map_err(to_py)?;
            Python::attach(|py| l.map(|l| Leader::from_crate(py, l)).transpose())
        })
    }

    /// The leaders as they change: the current one first (if any), then
    /// each new leader once, in increasing token order. An iterator
    /// (`for leader in election.observe()`) and an async iterator; it never
    /// ends, leave the loop to stop watching.
    fn observe(&self, py: Python<'_>) -> PyResult<Observer> {
        let (e, _) = self.election(py)?;
        Ok(Observer {
            stream: Arc::new(tokio::sync::Mutex::new(Box::pin(e.observe()))),
            pid: std::process::id(),
        })
    }

    fn __repr__(&self) -> String {
        format!("<pglock.Election {:?}>", self.name)
    }
}

/// A held leadership: a `Lease` on the election's lease, kept alive, with
/// the value campaigned with. `resign()` (or leaving its `with` block)
/// steps down; garbage collection resigns too.
#[pyclass(module = "pglock", frozen, extends = Lease)]
pub(crate) struct Leadership {
    value: String,
}

#[pymethods]
impl Leadership {
    /// The value this leader campaigned with.
    #[getter]
    fn value(&self) -> &str {
        &self.value
    }

    /// Steps down now (releases the lease); `LeaseLost` if already lost.
    fn resign(slf: &Bound<'_, Self>) -> PyResult<()> {
        slf.as_super().call_method0("release")?;
        Ok(())
    }

    /// `await leadership.aresign()`.
    fn aresign<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.as_super().call_method0("arelease")
    }
}

/// Who leads an election.
#[pyclass(module = "pglock", frozen, get_all)]
pub(crate) struct Leader {
    /// The value the leader campaigned with.
    value: String,
    /// The fencing token of its leadership: greater than every earlier one.
    token: i64,
    /// The leader's holder label.
    holder: Option<String>,
    /// When its lease expires unless renewed (database clock).
    expires_at: Py<PyAny>,
}

impl Leader {
    fn from_crate(py: Python<'_>, l: pglock::Leader) -> PyResult<Leader> {
        Ok(Leader {
            expires_at: convert::datetime(py, l.expires_at)?,
            value: l.value,
            token: l.token,
            holder: l.holder,
        })
    }
}

#[pymethods]
impl Leader {
    fn __repr__(&self) -> String {
        format!(
            "Leader(value={:?}, token={}, holder={:?})",
            self.value, self.token, self.holder
        )
    }
}

type Leaders = Pin<Box<dyn Stream<Item = pglock::Result<pglock::Leader>> + Send>>;

/// The leaders of an election as they change; see `Election.observe`.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Observer {
    /// Shared with a pending `next`: an interrupted wait (Ctrl-C, a
    /// cancelled task) leaves the stream and what it has seen intact.
    stream: Arc<tokio::sync::Mutex<Leaders>>,
    pid: u32,
}

impl Observer {
    fn next_future(
        &self,
        timeout: Option<Duration>,
    ) -> PyResult<impl Future<Output = Option<pglock::Result<pglock::Leader>>> + Send + 'static>
    {
        if self.pid != std::process::id() {
            return Err(foreign("election observer"));
        }
        let stream = self.stream.clone();
        Ok(async move {
            let next = async move { stream.lock().await.next().await };
            match timeout {
                Some(t) => tokio::time::timeout(t, next).await.ok().flatten(),
                None => next.await,
            }
        })
    }
}

#[pymethods]
impl Observer {
    /// The next leader, waiting at most `timeout` seconds (forever when
    /// `None`); `None` if none came in time.
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Leader>> {
        let fut = self.next_future(convert::opt_seconds("timeout", timeout)?)?;
        match wait(py, async move { Ok(fut.await) })? {
            Some(l) => Ok(Some(Leader::from_crate(py, l.map_err(to_py)?)?)),
            None => Ok(None),
        }
    }

    /// `await observer.anext(timeout)`: as `next`.
    #[pyo3(signature = (timeout = None))]
    fn anext<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = self.next_future(convert::opt_seconds("timeout", timeout)?)?;
        awaitable(py, async move {
            let l = fut.await.transpose().map_err(to_py)?;
            Python::attach(|py| l.map(|l| Leader::from_crate(py, l)).transpose())
        })
    }

    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Leader>> {
        self.next(py, None)
    }

    fn __aiter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let fut = self.next_future(None)?;
        awaitable(py, async move {
            match fut.await {
                Some(l) => {
                    let l = l.map_err(to_py)?;
                    Python::attach(|py| Leader::from_crate(py, l))
                }
                None => Err(PyStopAsyncIteration::new_err(())),
            }
        })
    }
}
