//! `pglock.Locks`'s methods: connecting, migrating, and making every
//! request. The type and its per-process crate handle are in `handle.rs`.

use std::str::FromStr;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::PyList;
use sqlx::postgres::PgConnectOptions;

use crate::advisory::{Advisory, AdvisoryAll};
use crate::convert;
use crate::election::Election;
use crate::errors::{invalid, to_py};
use crate::handle::Locks;
use crate::lease::{LeaseRequest, LeaseTerms};
use crate::multi::LeaseAll;
use crate::pool::{LeaseInfo, LeasePool, Semaphore};
use crate::rate::RateLimiter;
use crate::runtime::{awaitable, wait};

#[pymethods]
impl Locks {
    /// pglock.connect(url, schema="pglock", holder=None, ...)
    #[new]
    #[pyo3(signature = (url, *, schema = None, holder = None, max_sessions = None, statement_connections = None))]
    fn new(
        url: &Bound<'_, PyAny>,
        schema: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
        max_sessions: Option<&Bound<'_, PyAny>>,
        statement_connections: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Locks> {
        let url = convert::string("url", url)?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(
                "url",
                "must start with postgres:// or postgresql://",
            ));
        }
        let options = PgConnectOptions::from_str(&url)
            .map_err(|e| invalid("url", format!("is not a PostgreSQL URL: {e}")))?;
        let schema = match schema {
            Some(s) if !s.is_none() => convert::string("schema", s)?,
            _ => pglock::Locks::DEFAULT_SCHEMA.to_owned(),
        };
        let holder = convert::opt_string("holder", holder)?;
        let opt_count = |field: &str, v: Option<&Bound<'_, PyAny>>| -> PyResult<Option<u32>> {
            match v {
                Some(v) if !v.is_none() => convert::count(field, v).map(Some),
                _ => Ok(None),
            }
        };
        let max_sessions = opt_count("max_sessions", max_sessions)?;
        let statement_connections = opt_count("statement_connections", statement_connections)?;
        // Built now so that a bad schema or holder is refused here.
        let built = Locks::build(
            &options,
            &schema,
            holder.as_deref(),
            max_sessions,
            statement_connections,
        )?;
        Ok(Locks {
            options,
            schema,
            holder,
            max_sessions,
            statement_connections,
            current: Mutex::new(Some((std::process::id(), built))),
        })
    }

    /// The schema of pglock's tables.
    #[getter]
    fn schema(&self) -> PyResult<String> {
        Ok(self.handle()?.schema().to_owned())
    }

    /// The holder label written into lease rows.
    #[getter]
    fn holder(&self) -> PyResult<String> {
        Ok(self.handle()?.holder().to_owned())
    }

    /// Installs or upgrades pglock's schema; idempotent.
    fn migrate(&self, py: Python<'_>) -> PyResult<()> {
        let locks = self.handle()?;
        wait(py, async move { locks.migrate().await.map_err(to_py) })
    }

    /// `await locks.amigrate()`.
    fn amigrate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let locks = self.handle()?;
        awaitable(py, async move { locks.migrate().await.map_err(to_py) })
    }

    /// A session advisory lock on `key` (str or int).
    #[pyo3(signature = (key, *, shared = false, timeout = None))]
    fn advisory(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        shared: bool,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Advisory> {
        Advisory::new(slf.clone().unbind(), key, shared, timeout)
    }

    /// A lease request for `name`.
    #[pyo3(signature = (name, *, ttl = None, timeout = None, data = None, holder = None, lock_delay = None))]
    fn lease(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        data: Option<&Bound<'_, PyAny>>,
        holder: Option<&Bound<'_, PyAny>>,
        lock_delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<LeaseRequest> {
        let terms = LeaseTerms {
            ttl,
            timeout,
            lock_delay,
            data,
            holder,
        };
        LeaseRequest::new(slf.clone().unbind(), name, terms)
    }

    /// Exclusive advisory locks on every key of `keys`, all or none, in
    /// ascending numeric key order (the crate's `advisory_all`).
    #[pyo3(signature = (keys, *, timeout = None))]
    fn advisory_all(
        slf: &Bound<'_, Self>,
        keys: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<AdvisoryAll> {
        AdvisoryAll::new(slf.clone().unbind(), keys, timeout)
    }

    /// Leases on every name of `names`, all or none, in ascending byte
    /// order of the names (the crate's `lease_all`).
    #[pyo3(signature = (names, *, ttl = None, timeout = None))]
    fn lease_all(
        slf: &Bound<'_, Self>,
        names: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<LeaseAll> {
        LeaseAll::new(slf.clone().unbind(), names, ttl, timeout)
    }

    /// The election `name` (its lease is `election/<name>`).
    #[pyo3(signature = (name, *, ttl = None))]
    fn election(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Election> {
        Election::new(slf.clone().unbind(), name, ttl)
    }

    /// The lease pool `name`.
    fn lease_pool(slf: &Bound<'_, Self>, name: &Bound<'_, PyAny>) -> PyResult<LeasePool> {
        Ok(LeasePool::new(
            slf.clone().unbind(),
            convert::string("pool name", name)?,
        ))
    }

    /// A semaphore of `permits` permits.
    #[pyo3(signature = (name, permits, *, ttl = None, timeout = None, lock_delay = None))]
    fn semaphore(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        permits: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        lock_delay: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Semaphore> {
        Semaphore::new(
            slf.clone().unbind(),
            name,
            permits,
            ttl,
            timeout,
            lock_delay,
        )
    }

    /// A shared token bucket: at most `n` acquisitions per `per` seconds.
    #[pyo3(signature = (name, n, *, per, timeout = None))]
    fn rate_limiter(
        slf: &Bound<'_, Self>,
        name: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
        per: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RateLimiter> {
        RateLimiter::new(slf.clone().unbind(), name, n, per, timeout)
    }

    /// Every plain lease, and every held pool item.
    fn leases<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let locks = self.handle()?;
        let rows = wait(py, async move { locks.leases().await.map_err(to_py) })?;
        let out = rows
            .iter()
            .map(|r| LeaseInfo::from_row(py, r))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, out)
    }

    /// Releases lease `name` whoever holds it; returns the token released.
    fn force_release(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
        let name = convert::string("lease name", name)?;
        let locks = self.handle()?;
        wait(py, async move {
            locks.force_release(&name).await.map_err(to_py)
        })
    }

    /// Asks the holder of lease `name` to let go; returns its token.
    fn request_release(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
        let name = convert::string("lease name", name)?;
        let locks = self.handle()?;
        wait(py, async move {
            locks.request_release(&name).await.map_err(to_py)
        })
    }

    fn __repr__(&self) -> PyResult<String> {
        let l = self.handle()?;
        Ok(format!(
            "<pglock.Locks schema={:?} holder={:?}>",
            l.schema(),
            l.holder()
        ))
    }
}
