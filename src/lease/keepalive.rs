//! Background renewal: one task per [`Locks`](crate::Locks) renews every
//! lease kept alive through it, with **one statement per tick** however many
//! leases are due.
//!
//! A lease is due once a third of its TTL has passed since its last
//! successful renewal was sent; the task sleeps until the next lease is due,
//! then renews it together with every lease due within the next sixth of its
//! TTL, so leases settle into shared ticks.
//! When a renewal statement fails (connection lost, server restarting) the
//! task retries every `min(ttl/10, 1 s)`; meanwhile each lease's local
//! deadline keeps running, and [`lost()`](crate::LeaseRef::lost) resolves
//! when it passes — before the server can give the lease away. A lease
//! missing from a renewal's result is lost at once (taken over,
//! force-released).
//!
//! Renewals run on pglock's own connections beside your pool, so a busy
//! application pool cannot starve them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::Row;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::state::Shared;
use crate::db::{Db, Repeat};
use crate::error::Result;
use crate::metrics;

/// Longest one renewal attempt may take.
const RENEW_ATTEMPT: Duration = Duration::from_secs(5);

/// The keep-alive task of one `Locks` and the leases it renews.
#[derive(Debug, Default)]
pub(crate) struct KeepAlive {
    registry: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    leases: Mutex<RegistryState>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct RegistryState {
    by_token: HashMap<i64, Weak<Shared>>,
    running: bool,
    /// When the task, asleep, wakes next on its own (`None` while it works):
    /// a lease due no earlier needs no wake-up call.
    wakes_at: Option<Instant>,
}

impl KeepAlive {
    /// Starts renewing `lease` (starting the task if needed).
    pub(crate) fn add(&self, lease: &Arc<Shared>, db: &Arc<Db>) {
        let mut state = self.registry.leases.lock().unwrap();
        state.by_token.insert(lease.id.token, Arc::downgrade(lease));
        if !state.running {
            state.running = true;
            state.wakes_at = None;
            tokio::spawn(run(self.registry.clone(), db.clone()));
        }
        // Most leases are due after the one the task sleeps for (the same
        // TTL, taken later): waking it would only have it look and sleep
        // again, a cross-thread wake-up on every acquire.
        let sooner = state.wakes_at.is_none_or(|at| lease.next_renewal() < at);
        drop(state);
        if sooner {
            self.registry.changed.notify_one();
        }
    }

    /// Stops renewing the lease with `token`.
    pub(crate) fn remove(&self, token: i64) {
        self.registry.leases.lock().unwrap().by_token.remove(&token);
    }
}

async fn run(registry: Arc<Registry>, db: Arc<Db>) {
    // However this task ends (its runtime shutting down included), the next
    // keep_alive() starts a new one.
    struct Running(Arc<Registry>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.leases.lock().unwrap().running = false;
        }
    }
    let _running = Running(registry.clone());
    loop {
        let now = Instant::now();
        let (due, next_wake) = {
            let mut state = registry.leases.lock().unwrap();
            // Forget dropped and lost leases; keep the others at hand.
            let mut live = Vec::with_capacity(state.by_token.len());
            state.by_token.retain(|_, w| match w.upgrade() {
                Some(s) if !s.is_lost() => {
                    live.push(s);
                    true
                }
                _ => false,
            });
            if live.is_empty() {
                return;
            }
            let next = live.iter().map(|s| s.next_renewal()).min().unwrap_or(now);
            // Once one lease is due, renew with it every lease that would be
            // due within a sixth of its TTL: early renewal is always safe, and
            // leases acquired close together then share one statement.
            let due: Vec<Arc<Shared>> = if next <= now {
                live.iter()
                    .filter(|s| s.next_renewal() <= now + s.ttl / 6)
                    .cloned()
                    .collect()
            } else {
                Vec::new()
            };
            state.wakes_at = due.is_empty().then_some(next);
            (due, next)
        };
        if due.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(next_wake) => {}
                _ = registry.changed.notified() => {}
            }
            continue;
        }
        // A renewal that cannot finish before the first deadline is useless:
        // give up on it then (a cut network never answers) and retry.
        // Bounded by the longest deadline in the batch (a lease with less
        // time left is lost meanwhile anyway) and by RENEW_ATTEMPT: a
        // connection that hangs (half-open TCP) is given up and the next
        // attempt runs on a new one, long before a long TTL runs out.
        let limit = due
            .iter()
            .map(|s| s.remaining())
            .max()
            .unwrap_or_default()
            .min(RENEW_ATTEMPT)
            .max(Duration::from_millis(100));
        let outcome = match tokio::time::timeout(limit, renew_batch(&db, &due)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        if let Err(e) = outcome {
            let retry = due
                .iter()
                .map(|s| (s.ttl / 10).min(Duration::from_secs(1)))
                .min()
                .unwrap_or(Duration::from_secs(1));
            tracing::warn!(error = %e, leases = due.len(), ?retry, "lease renewal failed; retrying");
            for s in &due {
                s.renewal_failed(Instant::now() + retry);
            }
        }
    }
}

/// Renews `due` with one statement and records each outcome.
pub(crate) async fn renew_batch(db: &Db, due: &[Arc<Shared>]) -> Result<()> {
    let pools: Vec<String> = due
        .iter()
        .map(|s| s.id.scope.pool_column().to_owned())
        .collect();
    let names: Vec<String> = due.iter().map(|s| s.id.name.clone()).collect();
    let tokens: Vec<i64> = due.iter().map(|s| s.id.token).collect();
    let owners: Vec<uuid::Uuid> = due.iter().map(|s| s.id.owner).collect();
    let ttls: Vec<i64> = due.iter().map(|s| s.ttl.as_millis() as i64).collect();
    let sent = Instant::now();
    let rows = db
        .fetch_all(Repeat::Safe, &db.sql.lease_renew, |q| {
            q.bind(&pools)
                .bind(&names)
                .bind(&tokens)
                .bind(&owners)
                .bind(&ttls)
        })
        .await
        .inspect_err(|_| metrics::renew_failed(due.len()))?;
    let mut renewed: HashMap<i64, (chrono::DateTime<chrono::Utc>, bool)> = HashMap::new();
    for row in rows {
        renewed.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
    }
    for s in due {
        match renewed.get(&s.id.token) {
            Some((expires_at, requested)) => s.renewed(sent, *expires_at, *requested),
            None => s.mark_lost("not renewed: expired, taken over or force-released"),
        }
    }
    Ok(())
}
