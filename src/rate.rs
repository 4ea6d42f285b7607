//! A token-bucket rate limiter shared by every process on the database.
//!
//! `rate_limiter(name, n, per)` allows `n` acquisitions per `per`, with
//! bursts of up to `n`. The bucket is one row, refilled by the database
//! clock; each attempt is one statement that either takes a token or says
//! how long until the next one, and [`RateLimiter::acquire`] sleeps exactly
//! that long.

use std::time::Duration;

use sqlx::Row;

use crate::db::Repeat;
use crate::error::{Error, Result};
use crate::key::{validate_count, validate_name};
use crate::lease::LeaseRequest;
use crate::locks::Locks;
use crate::wait::{validate_timeout, within};

/// A shared token bucket; see [`Locks::rate_limiter`].
#[derive(Debug, Clone)]
#[must_use = "a RateLimiter does nothing until acquire() or try_acquire() is called"]
pub struct RateLimiter {
    locks: Locks,
    name: String,
    n: u32,
    per: Duration,
    timeout: Option<Duration>,
}

impl Locks {
    /// A rate limiter named `name`: at most `n` acquisitions per `per`,
    /// across every process, with bursts of up to `n`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// use std::time::Duration;
    /// let limit = locks.rate_limiter("embeddings-api", 600, Duration::from_secs(60));
    /// limit.acquire().await?; // then call the API
    /// # Ok(()) }
    /// ```
    pub fn rate_limiter(&self, name: impl Into<String>, n: u32, per: Duration) -> RateLimiter {
        RateLimiter {
            locks: self.clone(),
            name: name.into(),
            n,
            per,
            timeout: None,
        }
    }
}

impl RateLimiter {
    /// Largest `n` of a rate limiter.
    pub const MAX_RATE: u32 = 1_000_000;

    /// Give up waiting with [`Error::Timeout`] after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn validate(&self) -> Result<()> {
        validate_name("rate limiter name", &self.name)?;
        validate_count("rate", "n ", self.n, RateLimiter::MAX_RATE)?;
        if self.per.is_zero() || self.per > LeaseRequest::MAX_TTL {
            return Err(Error::invalid(
                "period",
                format!("must be above zero and at most 30 days, got {:?}", self.per),
            ));
        }
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
        }
        Ok(())
    }

    /// Takes a token if one is there now. `Ok(false)` if not.
    ///
    /// # Cancel safety
    ///
    /// One statement: dropped after it was sent, a token may have been
    /// taken.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an empty name, `n` of 0 or a zero
    /// period; [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn try_acquire(&self) -> Result<bool> {
        self.validate()?;
        Ok(self.attempt().await?.is_none())
    }

    /// Takes a token, sleeping as long as the server says the next one
    /// needs.
    ///
    /// # Cancel safety
    ///
    /// As [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`]; otherwise as [`try_acquire`](Self::try_acquire).
    pub async fn acquire(&self) -> Result<()> {
        self.validate()?;
        let what = || format!("a token of rate limiter {:?}", self.name);
        within(self.timeout, what, async {
            while let Some(wait) = self.attempt().await? {
                tokio::time::sleep(wait).await;
            }
            Ok(())
        })
        .await
    }

    /// `None` when a token was taken, else how long until the next one.
    async fn attempt(&self) -> Result<Option<Duration>> {
        let db = self.locks.db();
        let row = db
            .fetch_one(Repeat::Never, &db.sql.rate_take, |q| {
                q.bind(&self.name)
                    .bind(self.n as f64)
                    .bind(self.per.as_secs_f64())
            })
            .await?;
        if row.try_get::<bool, _>("taken")? {
            return Ok(None);
        }
        let wait: f64 = row.try_get("wait_s")?;
        Ok(Some(Duration::from_secs_f64(wait.max(0.0))))
    }
}
