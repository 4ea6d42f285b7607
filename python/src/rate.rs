//! `pglock.RateLimiter`: a shared token bucket.

use std::time::Duration;

use pyo3::prelude::*;

use crate::convert;
use crate::errors::to_py;
use crate::handle::Locks;
use crate::runtime::{awaitable, wait};

/// At most `n` acquisitions per `per` seconds, across every process.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct RateLimiter {
    locks: Py<Locks>,
    name: String,
    n: u32,
    per: Duration,
    timeout: Option<Duration>,
}

impl RateLimiter {
    pub(crate) fn new(
        locks: Py<Locks>,
        name: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
        per: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<RateLimiter> {
        Ok(RateLimiter {
            locks,
            name: convert::string("rate limiter name", name)?,
            n: convert::count("n", n)?,
            per: convert::seconds("per", per)?,
            timeout: convert::opt_seconds("timeout", timeout)?,
        })
    }

    fn limiter(
        &self,
        py: Python<'_>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<pglock::RateLimiter> {
        let mut r =
            self.locks
                .bind(py)
                .get()
                .handle()?
                .rate_limiter(self.name.clone(), self.n, self.per);
        if let Some(t) = convert::opt_seconds("timeout", timeout)?.or(self.timeout) {
            r = r.timeout(t);
        }
        Ok(r)
    }
}

#[pymethods]
impl RateLimiter {
    /// Waits for a token (up to `timeout` seconds, else `Timeout`).
    #[pyo3(signature = (*, timeout = None))]
    fn acquire(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let r = self.limiter(py, timeout)?;
        wait(py, async move { r.acquire().await.map_err(to_py) })
    }

    /// Takes a token if one is there now; False otherwise.
    fn try_acquire(&self, py: Python<'_>) -> PyResult<bool> {
        let r = self.limiter(py, None)?;
        wait(py, async move { r.try_acquire().await.map_err(to_py) })
    }

    /// `await limiter.aacquire()`.
    #[pyo3(signature = (*, timeout = None))]
    fn aacquire<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let r = self.limiter(py, timeout)?;
        awaitable(py, async move { r.acquire().await.map_err(to_py) })
    }

    /// `await limiter.atry_acquire()`.
    fn atry_acquire<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let r = self.limiter(py, None)?;
        awaitable(py, async move { r.try_acquire().await.map_err(to_py) })
    }

    fn __repr__(&self) -> String {
        format!(
            "<pglock.RateLimiter {:?} {} per {}s>",
            self.name,
            self.n,
            self.per.as_secs_f64()
        )
    }
}
