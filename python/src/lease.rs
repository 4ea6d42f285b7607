//! `pglock.LeaseRequest` and the held-lease classes `pglock.Lease`,
//! `pglock.PoolLease` (a pool item) and `pglock.Permit` (a semaphore
//! permit), which share one surface: accessors, `renew`, `set_data`,
//! `fence`, `lost`, `wait_lost`, `release`, and `with` blocks.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pglock::LeaseRef;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::convert;
use crate::errors::{LeaseLost, foreign, invalid, to_py};
use crate::handle::Locks;
use crate::held::{Held, Kind};
use crate::request::{Entered, Req, acquiring_methods};
use crate::runtime::{awaitable, in_context, runtime, wait};

/// A lease acquired from Rust, on its way to becoming a Python object. If
/// an asyncio caller was cancelled meanwhile it is dropped instead, inside
/// the runtime, which releases it.
pub(crate) struct Acquired(pub(crate) Held, pub(crate) FenceSql);

/// The fence statement of a lease's schema (`$1` pool, `$2` name, `$3` token).
pub(crate) type FenceSql = Arc<str>;

/// The fence statement of `locks`.
pub(crate) fn fence_sql(locks: &pglock::Locks) -> FenceSql {
    Arc::from(locks.fence_sql())
}

impl<'py> IntoPyObject<'py> for Acquired {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let kind = self.0.kind();
        let held = in_context(|| self.0.keep_alive());
        let base = Lease::new(held, self.1);
        Ok(match kind {
            Kind::Lease => Bound::new(py, base)?.into_any(),
            Kind::Item => {
                Bound::new(py, PyClassInitializer::from(base).add_subclass(PoolLease))?.into_any()
            }
            Kind::Permit => {
                Bound::new(py, PyClassInitializer::from(base).add_subclass(Permit))?.into_any()
            }
        })
    }
}

/// A request for the lease `name`: `acquire()`, `try_acquire()`, their
/// `a…` forms, or `with` / `async with` it.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct LeaseRequest {
    locks: Py<Locks>,
    name: String,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    lock_delay: Option<Duration>,
    data: Option<serde_json::Value>,
    holder: Option<String>,
    entered: Entered<Lease>,
}

/// The keyword arguments of `locks.lease(...)` after the name.
pub(crate) struct LeaseTerms<'a, 'py> {
    pub(crate) ttl: Option<&'a Bound<'py, PyAny>>,
    pub(crate) timeout: Option<&'a Bound<'py, PyAny>>,
    pub(crate) lock_delay: Option<&'a Bound<'py, PyAny>>,
    pub(crate) data: Option<&'a Bound<'py, PyAny>>,
    pub(crate) holder: Option<&'a Bound<'py, PyAny>>,
}

impl LeaseRequest {
    pub(crate) fn new(
        locks: Py<Locks>,
        name: &Bound<'_, PyAny>,
        terms: LeaseTerms<'_, '_>,
    ) -> PyResult<LeaseRequest> {
        Ok(LeaseRequest {
            locks,
            name: convert::string("lease name", name)?,
            ttl: convert::opt_seconds("ttl", terms.ttl)?,
            timeout: convert::opt_seconds("timeout", terms.timeout)?,
            lock_delay: convert::opt_delay("lock_delay", terms.lock_delay)?,
            data: match terms.data {
                Some(d) if !d.is_none() => Some(convert::to_json("data", d)?),
                _ => None,
            },
            holder: convert::opt_string("holder", terms.holder)?,
            entered: Entered::new(),
        })
    }

    fn req(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<(Req, FenceSql)> {
        let locks = self.locks.bind(py).get().handle()?;
        let mut r = locks.lease(self.name.clone());
        if let Some(t) = self.ttl {
            r = r.ttl(t);
        }
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            r = r.timeout(t);
        }
        if let Some(d) = self.lock_delay {
            r = r.lock_delay(d);
        }
        if let Some(d) = &self.data {
            r = r.data(d.clone());
        }
        if let Some(h) = &self.holder {
            r = r.holder(h.clone());
        }
        Ok((Req::Lease(r), fence_sql(&locks)))
    }
}

acquiring_methods!(LeaseRequest {
    /// `await request.run(fn)`: acquires, awaits `fn(lease)`, releases. If
    /// the lease is lost first, the work is cancelled and `LeaseLost` raised.
    fn run<'py>(slf: &Bound<'py, Self>, work: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("pglock._aio")?
            .call_method1("run", (slf, work))
    }

    /// The lease name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __repr__(&self) -> String {
        format!("<pglock.LeaseRequest {:?}>", self.name)
    }
});

/// `pglock._fence.<how>(fenced, conn)`: a fence (`"fence"`) or its
/// awaitable (`"afence"`) on the caller's own connection.
pub(crate) fn fence_via<'py>(
    fenced: &Bound<'py, PyAny>,
    conn: &Bound<'py, PyAny>,
    how: &str,
) -> PyResult<Bound<'py, PyAny>> {
    fenced
        .py()
        .import("pglock._fence")?
        .call_method1(how, (fenced, conn))
}

/// `__aenter__` of a held thing: an awaitable that gives `slf` back.
pub(crate) fn ready<'py, T>(slf: &Bound<'py, T>) -> PyResult<Bound<'py, PyAny>> {
    let this = slf.clone().into_any().unbind();
    awaitable(slf.py(), async move { Ok(this) })
}

/// Whether `__exit__`'s arguments carry an exception.
pub(crate) fn raised(exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
    Ok(match exc.len() {
        0 => false,
        _ => !exc.get_item(0)?.is_none(),
    })
}

/// A held lease, kept alive by the Rust core until released. Garbage
/// collection of an unreleased lease releases it.
#[pyclass(module = "pglock", frozen, subclass)]
pub(crate) struct Lease {
    /// Never dropped in a process other than `pid` (forked child).
    handle: ManuallyDrop<LeaseRef>,
    kind: Kind,
    fence_sql: FenceSql,
    held: Mutex<Option<Held>>,
    pid: u32,
    /// Released or completed by us: no longer "lost".
    finished: AtomicBool,
    /// A fence on the caller's connection found the lease gone.
    refused: AtomicBool,
    /// The `release_requested` watcher, started on first look.
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let held = self
            .held
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if self.pid != std::process::id() {
            // A forked child's copy of the parent's lease: the parent holds
            // it; touching its connections from here would break them.
            std::mem::forget(held);
            std::mem::forget(watcher);
            return;
        }
        // SAFETY: `handle` is not used after this, in Drop.
        let handle = unsafe { ManuallyDrop::take(&mut self.handle) };
        in_context(move || {
            if let Some(task) = watcher {
                task.abort();
            }
            // Dropping the crate's lease spawns its release.
            drop(held);
            drop(handle);
        });
    }
}

impl Lease {
    pub(crate) fn new(held: Held, fence_sql: FenceSql) -> Lease {
        Lease {
            fence_sql,
            handle: ManuallyDrop::new(held.handle()),
            kind: held.kind(),
            held: Mutex::new(Some(held)),
            pid: std::process::id(),
            finished: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            watcher: Mutex::new(None),
        }
    }

    fn what(&self) -> String {
        match self.kind {
            Kind::Lease => format!("lease {:?}", self.handle.name()),
            Kind::Item => format!(
                "pool item {:?} of {:?}",
                self.handle.name(),
                self.handle.pool().unwrap_or("")
            ),
            Kind::Permit => format!("permit of semaphore {:?}", self.handle.pool().unwrap_or("")),
        }
    }

    /// The handle, if this process holds the lease.
    pub(crate) fn handle(&self) -> PyResult<LeaseRef> {
        if self.pid != std::process::id() {
            return Err(foreign(&self.what()));
        }
        Ok((*self.handle).clone())
    }

    fn lost_err(&self) -> PyErr {
        LeaseLost::new_err(
            pglock::Error::LeaseLost {
                name: self.handle.name().to_owned(),
                token: self.handle.token(),
            }
            .to_string(),
        )
    }

    pub(crate) fn is_lost(&self) -> bool {
        !self.finished.load(Ordering::Acquire)
            && (self.refused.load(Ordering::Acquire) || self.handle.is_lost())
    }

    /// Takes the owned lease out, for release or complete.
    pub(crate) fn take(&self) -> PyResult<Option<Held>> {
        self.handle()?;
        Ok(self.held.lock().unwrap().take())
    }

    fn stop_watcher(&self) {
        if let Some(task) = self.watcher.lock().unwrap().take() {
            task.abort();
        }
    }

    pub(crate) fn finished(&self) {
        self.finished.store(true, Ordering::Release);
        self.stop_watcher();
    }

    /// `__exit__`: releases; raises `LeaseLost` if the lease was lost while
    /// the block ran (unless the block raised).
    pub(crate) fn exit(slf: &Bound<'_, Lease>, raised: bool) -> PyResult<bool> {
        let me = slf.get();
        let was_lost = me.is_lost();
        let Some(held) = me.take()? else {
            return Ok(false);
        };
        let result = wait(slf.py(), async move { held.release().await.map_err(to_py) });
        me.exit_outcome(slf.py(), raised, was_lost, result)
    }

    /// `__aexit__`, as [`exit`](Self::exit).
    pub(crate) fn aexit<'py>(slf: &Bound<'py, Lease>, raised: bool) -> PyResult<Bound<'py, PyAny>> {
        let me = slf.get();
        let was_lost = me.is_lost();
        let held = me.take()?;
        let this = slf.clone().unbind();
        awaitable(slf.py(), async move {
            let result = match held {
                Some(h) => h.release().await.map_err(to_py),
                None => return Ok(false),
            };
            Python::attach(|py| this.get().exit_outcome(py, raised, was_lost, result))
        })
    }

    pub(crate) fn exit_outcome(
        &self,
        py: Python<'_>,
        raised: bool,
        was_lost: bool,
        result: PyResult<()>,
    ) -> PyResult<bool> {
        let released = result.is_ok();
        if released {
            self.finished();
        } else {
            self.stop_watcher();
        }
        if raised {
            return Ok(false);
        }
        if was_lost {
            return Err(self.lost_err());
        }
        match result {
            Ok(()) => Ok(false),
            Err(e) if e.is_instance_of::<LeaseLost>(py) => Err(self.lost_err()),
            Err(e) => Err(e),
        }
    }
}

#[pymethods]
impl Lease {
    /// The lease (or pool item) name.
    #[getter]
    pub(crate) fn name(&self) -> &str {
        self.handle.name()
    }

    /// The pool of a pool item or permit, else `None`.
    #[getter]
    fn pool(&self) -> Option<&str> {
        self.handle.pool()
    }

    /// The fencing token: greater than every token issued before it.
    #[getter]
    pub(crate) fn token(&self) -> i64 {
        self.handle.token()
    }

    /// The holder label recorded in the lease row.
    #[getter]
    fn holder(&self) -> &str {
        self.handle.holder()
    }

    /// The TTL in seconds.
    #[getter]
    fn ttl(&self) -> f64 {
        self.handle.ttl().as_secs_f64()
    }

    /// The server's expiry as of the last acquire or renewal (database clock).
    #[getter]
    fn expires_at(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        convert::datetime(py, self.handle.expires_at())
    }

    /// The JSON payload: as found at acquire, or as last set.
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        convert::from_json(py, self.handle.data().as_ref())
    }

    /// Seconds left before the holder's own (conservative) deadline; 0 once lost.
    fn remaining(&self) -> f64 {
        if self.finished.load(Ordering::Acquire) {
            return 0.0;
        }
        self.handle.remaining().as_secs_f64()
    }

    /// True once the lease is known lost (renewal failed, deadline passed,
    /// a fence refused).
    #[getter]
    fn lost(&self) -> bool {
        self.is_lost()
    }

    /// True once somebody asked the holder to let go (`locks.request_release`).
    #[getter]
    fn release_requested(&self) -> PyResult<bool> {
        let handle = self.handle()?;
        if handle.is_release_requested() {
            return Ok(true);
        }
        let mut w = self.watcher.lock().unwrap();
        if w.is_none() && !self.finished.load(Ordering::Acquire) {
            // Listens for the request's NOTIFY; the crate records what it sees.
            *w = Some(runtime().spawn(async move { handle.release_requested().await }));
        }
        Ok(false)
    }

    /// Waits until the lease is lost, at most `timeout` seconds; True if lost.
    #[pyo3(signature = (timeout = None))]
    fn wait_lost(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
        let fut = self.lost_future(timeout)?;
        wait(py, fut)
    }

    /// `await lease.await_lost(timeout)`: as `wait_lost`.
    #[pyo3(signature = (timeout = None))]
    fn await_lost<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = self.lost_future(timeout)?;
        awaitable(py, fut)
    }

    /// Waits until a release is requested, at most `timeout` seconds.
    #[pyo3(signature = (timeout = None))]
    fn wait_release_requested(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let t = convert::opt_seconds("timeout", timeout)?;
        let h = self.handle()?;
        wait(
            py,
            async move { Ok(within(t, h.release_requested()).await) },
        )
    }

    /// `await lease.await_release_requested(timeout)`.
    #[pyo3(signature = (timeout = None))]
    fn await_release_requested<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = convert::opt_seconds("timeout", timeout)?;
        let h = self.handle()?;
        awaitable(
            py,
            async move { Ok(within(t, h.release_requested()).await) },
        )
    }

    /// Renews now for another TTL; `LeaseLost` if no longer ours.
    fn renew(&self, py: Python<'_>) -> PyResult<()> {
        let fut = self.renew_future()?;
        wait(py, fut)
    }

    /// `await lease.arenew()`.
    fn arenew<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let fut = self.renew_future()?;
        awaitable(py, fut)
    }

    /// Replaces the JSON payload (≤ 64 KiB) and renews, in one statement.
    fn set_data(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let fut = self.set_data_future(data)?;
        wait(py, fut)
    }

    /// `await lease.aset_data(data)`.
    fn aset_data<'py>(
        &self,
        py: Python<'py>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let fut = self.set_data_future(data)?;
        awaitable(py, fut)
    }

    /// Checks on *your* connection, inside its transaction, that this token
    /// still holds the lease (`SELECT <schema>.fence(pool, name, token)`),
    /// and keeps any newer holder from committing before that transaction
    /// ends. Accepts a psycopg 3 connection or cursor, a psycopg2 connection
    /// or cursor, a SQLAlchemy `Connection` or `Session`.
    fn fence(slf: &Bound<'_, Self>, conn: &Bound<'_, PyAny>) -> PyResult<()> {
        fence_via(slf.as_any(), conn, "fence").map(drop)
    }

    /// `await lease.afence(conn)` for a psycopg `AsyncConnection` or `AsyncCursor`.
    fn afence<'py>(
        slf: &Bound<'py, Self>,
        conn: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        fence_via(slf.as_any(), conn, "afence")
    }

    /// Internal: the fence statement's SQL (`$1` pool, `$2` name, `$3`
    /// token) and parameters; `LeaseLost` if already known lost.
    pub(crate) fn _fence_statement(&self) -> PyResult<(String, (String, String, i64))> {
        let h = self.handle()?;
        if self.is_lost() || self.finished.load(Ordering::Acquire) {
            return Err(self.lost_err());
        }
        let sql = self.fence_sql.to_string();
        Ok((
            sql,
            (
                h.pool().unwrap_or("").to_owned(),
                h.name().to_owned(),
                h.token(),
            ),
        ))
    }

    /// Internal: a fence refused; marks the lease lost and returns the
    /// `LeaseLost` to raise.
    #[pyo3(signature = (message = None))]
    pub(crate) fn _fence_refused(&self, message: Option<&str>) -> PyResult<PyErr> {
        let _ = message;
        self.refused.store(true, Ordering::Release);
        // Let the core see it too (its renewal finds the lease gone and
        // wakes `lost()` waiters).
        let h = self.handle()?;
        runtime().spawn(async move {
            let _ = h.renew().await;
        });
        Ok(self.lost_err())
    }

    /// Releases the lease now; `LeaseLost` if it was no longer ours.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let Some(held) = self.take()? else {
            return Ok(());
        };
        let result = wait(py, async move { held.release().await.map_err(to_py) });
        self.finished();
        result
    }

    /// `await lease.arelease()`.
    fn arelease<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let held = slf.get().take()?;
        let this = slf.clone().unbind();
        awaitable(slf.py(), async move {
            let Some(held) = held else { return Ok(()) };
            let result = held.release().await.map_err(to_py);
            this.get().finished();
            result
        })
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*exc))]
    pub(crate) fn __exit__(slf: &Bound<'_, Self>, exc: &Bound<'_, PyTuple>) -> PyResult<bool> {
        Lease::exit(slf, raised(exc)?)
    }

    fn __aenter__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        ready(slf)
    }

    #[pyo3(signature = (*exc))]
    pub(crate) fn __aexit__<'py>(
        slf: &Bound<'py, Self>,
        exc: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Lease::aexit(slf, raised(exc)?)
    }

    fn __repr__(&self) -> String {
        format!(
            "<pglock.{} {} token={}{}>",
            match self.kind {
                Kind::Lease => "Lease",
                Kind::Item => "PoolLease",
                Kind::Permit => "Permit",
            },
            self.what(),
            self.handle.token(),
            if self.is_lost() { " lost" } else { "" }
        )
    }
}

impl Lease {
    fn lost_future(
        &self,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<impl Future<Output = PyResult<bool>> + Send + 'static> {
        let t = convert::opt_seconds("timeout", timeout)?;
        let h = self.handle()?;
        let already = self.is_lost();
        Ok(async move {
            if already {
                return Ok(true);
            }
            Ok(within(t, h.lost()).await)
        })
    }

    fn renew_future(&self) -> PyResult<impl Future<Output = PyResult<()>> + Send + 'static> {
        let h = self.handle()?;
        let lost =
            (self.is_lost() || self.finished.load(Ordering::Acquire)).then(|| self.lost_err());
        Ok(async move {
            if let Some(e) = lost {
                return Err(e);
            }
            h.renew().await.map_err(to_py)
        })
    }

    fn set_data_future(
        &self,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<impl Future<Output = PyResult<()>> + Send + 'static> {
        let data = convert::to_json("data", data)?;
        let h = self.handle()?;
        let lost =
            (self.is_lost() || self.finished.load(Ordering::Acquire)).then(|| self.lost_err());
        Ok(async move {
            if let Some(e) = lost {
                return Err(e);
            }
            h.set_data(data).await.map_err(to_py)
        })
    }
}

/// Whether `fut` finished within `t` (forever when `None`).
pub(crate) async fn within(t: Option<Duration>, fut: impl Future<Output = ()>) -> bool {
    match t {
        Some(t) => tokio::time::timeout(t, fut).await.is_ok(),
        None => {
            fut.await;
            true
        }
    }
}

/// A claimed pool item: a lease that can also be completed for good.
#[pyclass(module = "pglock", frozen, extends = Lease)]
pub(crate) struct PoolLease;

#[pymethods]
impl PoolLease {
    /// Marks the item done for good: it is never claimed again.
    fn complete(slf: &Bound<'_, Self>) -> PyResult<()> {
        let base = slf.as_super().get();
        let Some(item) = take_item(base)? else {
            return Err(base.lost_err());
        };
        let result = wait(
            slf.py(),
            async move { item.complete().await.map_err(to_py) },
        );
        base.finished();
        result
    }

    /// `await item.acomplete()`.
    fn acomplete<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let base = slf.as_super().get();
        let item = take_item(base)?;
        let lost = base.lost_err();
        let this = slf.as_super().clone().unbind();
        awaitable(slf.py(), async move {
            let Some(item) = item else { return Err(lost) };
            let result = item.complete().await.map_err(to_py);
            this.get().finished();
            result
        })
    }
}

fn take_item(base: &Lease) -> PyResult<Option<pglock::PoolLease>> {
    match base.take()? {
        None => Ok(None),
        Some(held) => match held.into_item() {
            Ok(item) => Ok(Some(item)),
            Err(other) => {
                *base.held.lock().unwrap() = Some(other);
                Err(invalid("lease", "only pool items can be completed"))
            }
        },
    }
}

/// A semaphore permit.
#[pyclass(module = "pglock", frozen, extends = Lease)]
pub(crate) struct Permit;
