//! Semaphores: at most N holders at a time, across every process.
//!
//! A semaphore is a pool of N permit rows (`permit-0` … `permit-<N-1>`);
//! acquiring one is a claim, so a [`Permit`] expires if its holder dies, can
//! be kept alive and fenced like any lease, and is woken by NOTIFY when
//! another permit is released. A permit can only be released: it is never
//! completed (that would shrink the semaphore for good). Its claim has no
//! sticky resume: the permits are all alike, so a holder gets whichever is
//! free first.

use crate::error::Result;
use crate::key::{validate_count, validate_name};
use crate::lease::state::Scope;
use crate::lease::{Permit, Terms, terms_setters};
use crate::locks::Locks;
use crate::pool::{add_items, claim, try_claim};

/// A semaphore of N permits; see [`Locks::semaphore`]. A reusable handle,
/// like [`RateLimiter`](crate::RateLimiter): each
/// [`acquire`](Self::acquire) takes one more permit.
#[derive(Debug, Clone)]
#[must_use = "a Semaphore does nothing until acquire() or try_acquire() is called"]
pub struct Semaphore {
    locks: Locks,
    name: String,
    permits: u32,
    terms: Terms,
}

impl Locks {
    /// A semaphore: at most `permits` holders at a time. A permit is a
    /// [`Permit`], so it expires if its holder dies and can be kept alive.
    ///
    /// Every process should use the same count; changing it takes effect
    /// for each process with its next acquire with the new count (permits
    /// are added as needed, and permits at or above the count are no longer
    /// handed out). Pools and semaphores share one namespace.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks) -> Result<(), pglock::Error> {
    /// let permit = locks.semaphore("embeddings-api", 4).acquire().await?;
    /// // … at most 4 of these run at once, across every process …
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn semaphore(&self, name: impl Into<String>, permits: u32) -> Semaphore {
        Semaphore {
            locks: self.clone(),
            name: name.into(),
            permits,
            terms: Terms::default(),
        }
    }
}

impl Semaphore {
    /// Most permits a semaphore may have.
    pub const MAX_PERMITS: u32 = 10_000;

    terms_setters!();

    fn validate(&self) -> Result<()> {
        validate_name("pool name", &self.name)?;
        validate_count("permits", "", self.permits, Semaphore::MAX_PERMITS)?;
        self.terms.validate()
    }

    /// Makes sure permits `0..permits` exist: once per process and count.
    async fn ensure(&self) -> Result<Scope> {
        let key = (self.name.clone(), self.permits);
        if !self.locks.semaphores().lock().unwrap().contains(&key) {
            let names: Vec<String> = (0..self.permits).map(|i| format!("permit-{i}")).collect();
            let slots: Vec<Option<i32>> = (0..self.permits as i32).map(Some).collect();
            add_items(self.locks.db(), &self.name, "semaphore", &names, &slots).await?;
            self.locks.semaphores().lock().unwrap().insert(key);
        }
        Ok(Scope::Permit {
            semaphore: self.name.clone(),
        })
    }

    /// Takes a permit if one is free now; `Ok(None)` if all are held.
    ///
    /// # Cancel safety
    ///
    /// As [`Claim::try_acquire`](crate::Claim::try_acquire): nothing stays
    /// held.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`](crate::Error::InvalidInput) for permits outside 1..=10000 or a bad name
    /// or TTL; [`Error::NotMigrated`](crate::Error::NotMigrated); [`Error::Database`](crate::Error::Database).
    pub async fn try_acquire(&self) -> Result<Option<Permit>> {
        self.validate()?;
        let scope = self.ensure().await?;
        let got = try_claim(&self.locks, &scope, &self.terms, Some(self.permits as i32)).await?;
        Ok(got.map(|s| Permit::new(self.locks.clone(), s)))
    }

    /// Waits for a permit and takes it.
    ///
    /// # Cancel safety
    ///
    /// As [`Claim::acquire`](crate::Claim::acquire): nothing stays held.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`](crate::Error::Timeout); otherwise as [`try_acquire`](Self::try_acquire).
    pub async fn acquire(&self) -> Result<Permit> {
        self.validate()?;
        let scope = self.ensure().await?;
        let s = claim(&self.locks, &scope, &self.terms, Some(self.permits as i32)).await?;
        Ok(Permit::new(self.locks.clone(), s))
    }
}
