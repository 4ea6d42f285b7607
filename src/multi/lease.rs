//! Sets of leases: taken one by one in name order, fenced in one statement.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::time::Instant;

use super::validate_size;
use crate::Locks;
use crate::error::{Error, FENCE_FAILED, Result, sqlstate};
use crate::key::validate_name;
use crate::lease::{Lease, LeaseRequest, validate_ttl};
use crate::wait::validate_timeout;

impl Locks {
    /// Leases on every name of `names`, taken all or none, in ascending
    /// order of the names' UTF-8 bytes (`ORDER BY name COLLATE "C"`),
    /// duplicates once. Every caller taking sets this way never deadlocks
    /// with another.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(locks: pglock::Locks, pool: sqlx::PgPool) -> Result<(), pglock::Error> {
    /// let set = locks.lease_all(["shard-1", "shard-7"]).acquire().await?;
    /// let mut tx = pool.begin().await?;
    /// set.fence(&mut *tx).await?; // every token, one statement
    /// // … fenced writes …
    /// tx.commit().await?;
    /// set.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn lease_all<I, N>(&self, names: I) -> LeaseAll
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        LeaseAll {
            locks: self.clone(),
            names: names.into_iter().map(Into::into).collect(),
            ttl: LeaseRequest::DEFAULT_TTL,
            timeout: None,
        }
    }
}

/// A request for a set of leases; see [`Locks::lease_all`].
#[derive(Debug, Clone)]
#[must_use = "a LeaseAll does nothing until acquire() is called"]
pub struct LeaseAll {
    locks: Locks,
    names: Vec<String>,
    ttl: Duration,
    timeout: Option<Duration>,
}

impl LeaseAll {
    /// The TTL of every lease of the set (default 30 s; 100 ms to 30 days).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Give up with [`Error::Timeout`] after `timeout` for the whole set.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Takes every lease, in ascending byte order of the names, each kept
    /// alive from the moment it is taken (so the first ones do not expire
    /// while the set waits for the last), and returns them as one set.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense of [`LeaseRequest::acquire`](crate::LeaseRequest::acquire):
    /// leases already taken are released in the background when the future
    /// is dropped; one whose acquire statement was in flight is given back
    /// by its owner id, or left to expire after its TTL.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the [`timeout`](Self::timeout) ran out (the
    /// leases taken so far are released); [`Error::InvalidInput`] for no
    /// names, more than [`MAX_SET_SIZE`](crate::MAX_SET_SIZE), a bad name, TTL or timeout (before
    /// any SQL); [`Error::NotMigrated`]; [`Error::Database`].
    pub async fn acquire(self) -> Result<LeaseSet> {
        validate_size("lease names", self.names.len())?;
        for n in &self.names {
            validate_name("lease name", n)?;
        }
        validate_ttl(self.ttl)?;
        if let Some(t) = self.timeout {
            validate_timeout(t)?;
        }
        let mut names = self.names.clone();
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        names.dedup();
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut leases: Vec<Lease> = Vec::with_capacity(names.len());
        for name in &names {
            let mut request = self.locks.lease(name.as_str()).ttl(self.ttl);
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out());
                }
                request = request.timeout(left);
            }
            match request.acquire().await {
                Ok(lease) => leases.push(lease.keep_alive()),
                // `leases` drops here: each is released in the background.
                Err(Error::Timeout { .. }) => return Err(self.timed_out()),
                Err(e) => return Err(e),
            }
        }
        Ok(LeaseSet {
            locks: self.locks,
            leases,
        })
    }

    fn timed_out(&self) -> Error {
        Error::Timeout {
            what: format!("leases {:?}", self.names),
            waited: self.timeout.unwrap_or_default(),
        }
    }
}

/// A held set of leases, each kept alive. Dropping it releases them all in
/// the background.
#[must_use = "dropping the set releases every lease"]
#[derive(Debug)]
pub struct LeaseSet {
    locks: Locks,
    /// In acquisition order: ascending name bytes.
    leases: Vec<Lease>,
}

impl LeaseSet {
    /// The leases, in the order they were taken.
    pub fn leases(&self) -> &[Lease] {
        &self.leases
    }

    /// The fencing tokens, in the order of [`leases`](Self::leases).
    pub fn tokens(&self) -> Vec<i64> {
        self.leases.iter().map(|l| l.token()).collect()
    }

    /// Resolves when any lease of the set is lost.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lost(&self) {
        let all = self.leases.iter().map(|l| Box::pin(l.lost()));
        futures_util::future::select_all(all).await;
    }

    /// Checks, inside the caller's transaction and in **one** statement,
    /// that every token still holds its lease, and locks every lease row
    /// until the transaction ends, as [`LeaseRef::fence`](crate::LeaseRef::fence)
    /// does for one. Call it as `set.fence(&mut *tx)`.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] naming a lease that is no longer held by its
    /// token (the transaction is then aborted: roll it back);
    /// [`Error::InvalidInput`] outside a transaction; [`Error::Database`].
    pub async fn fence(&self, conn: &mut PgConnection) -> Result<()> {
        if !conn.is_in_transaction() {
            return Err(Error::invalid(
                "conn",
                "fence needs a connection inside a transaction begun with sqlx \
                 (pool.begin() or conn.begin(), then call it with &mut *tx)",
            ));
        }
        for l in &self.leases {
            if l.remaining().is_zero() {
                return Err(Error::LeaseLost {
                    name: l.name().to_owned(),
                    token: l.token(),
                });
            }
        }
        let names: Vec<&str> = self.leases.iter().map(|l| l.name()).collect();
        match fence_all(&self.locks, conn, &names, &self.tokens()).await {
            Ok(()) => Ok(()),
            Err(e) if sqlstate(&e).as_deref() == Some(FENCE_FAILED) => {
                // The function names the token that failed.
                let message = e
                    .as_database_error()
                    .map(|d| d.message().to_owned())
                    .unwrap_or_default();
                let lost = self
                    .leases
                    .iter()
                    .find(|l| message.ends_with(&format!("not held by token {}", l.token())))
                    .unwrap_or(&self.leases[0]);
                Err(Error::LeaseLost {
                    name: lost.name().to_owned(),
                    token: lost.token(),
                })
            }
            Err(e) => Err(Error::from_db(e, self.locks.schema())),
        }
    }

    /// Releases every lease now.
    ///
    /// # Errors
    ///
    /// The first error of the releases ([`Error::LeaseLost`] for a lease no
    /// longer ours, [`Error::Database`]); every release is attempted.
    pub async fn release(self) -> Result<()> {
        let results =
            futures_util::future::join_all(self.leases.into_iter().map(Lease::release)).await;
        results.into_iter().collect::<Result<Vec<()>>>().map(drop)
    }

    /// The leases, for handling one by one.
    pub fn into_leases(self) -> Vec<Lease> {
        self.leases
    }
}

/// The fence of a set: one statement, the same function a single fence
/// calls.
async fn fence_all(
    locks: &Locks,
    conn: &mut PgConnection,
    names: &[&str],
    tokens: &[i64],
) -> std::result::Result<(), sqlx::Error> {
    let db = locks.db();
    db.query(&db.sql.set_fence)
        .bind(names)
        .bind(tokens)
        .execute(conn)
        .await
        .map(drop)
}
