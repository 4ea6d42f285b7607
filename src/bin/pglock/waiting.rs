//! Waiting for a lock, for people: what pglock waits for, who holds it, a
//! live status line on a terminal, and the one-line reason when it gives
//! up.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::Ctx;
use crate::child::{Sig, Signals};
use crate::duration::{human, human_signed};
use crate::report::Failure;

/// No status line for a lock obtained within this long.
const QUIET_START: Duration = Duration::from_millis(300);
/// How often the status line asks who holds the lock.
const REFRESH: Duration = Duration::from_secs(1);
/// Longest wait for the answer to "who holds it".
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What pglock waits for.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Lease(String),
    Advisory { key: String, shared: bool },
    Pool(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Lease(name) => write!(f, "lease {name:?}"),
            Target::Advisory { key, shared: false } => write!(f, "advisory lock {key:?}"),
            Target::Advisory { key, shared: true } => write!(f, "shared advisory lock {key:?}"),
            Target::Pool(pool) => write!(f, "an item of pool {pool:?}"),
        }
    }
}

impl Target {
    /// Who holds it, in a few words (`held by "gpu-07:812" (token 17,
    /// expires in 12s)`); `None` if nobody does now.
    pub(crate) async fn holder(&self, ctx: &Ctx) -> Result<Option<String>, Failure> {
        match self {
            Target::Lease(name) => Ok(ctx.locks.lease_holder(name).await?.map(|l| held_by(&l))),
            Target::Advisory { key, .. } => advisory_holders(ctx, key).await,
            Target::Pool(pool) => {
                let s = ctx.locks.lease_pool(pool.as_str()).status().await?;
                Ok((s.free == 0)
                    .then(|| format!("none free: {} held, {} done of {}", s.held, s.done, s.total)))
            }
        }
    }

    /// [`holder`](Self::holder), bounded in time, never failing.
    async fn holder_text(&self, ctx: &Ctx) -> String {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.holder(ctx)).await {
            Ok(Ok(Some(who))) => who,
            Ok(Ok(None)) => "free again now; try again".to_owned(),
            Ok(Err(_)) | Err(_) => "holder unknown (the database did not say)".to_owned(),
        }
    }

    /// The one-line reason for exit 75: what was not obtained, why, and
    /// who holds it.
    pub(crate) async fn not_obtained(&self, ctx: &Ctx, why: &str) -> Failure {
        let who = self.holder_text(ctx).await;
        Failure::not_obtained(format!("{self} not obtained ({why}): {who}"))
    }
}

/// `held by "gpu-07:812" (token 17, expires in 12s)`.
fn held_by(l: &pglock::LeaseInfo) -> String {
    let ms = l.expires_in.map_or(0, |d| d.num_milliseconds());
    format!(
        "held by {:?} (token {}, expires in {})",
        l.holder.clone().unwrap_or_default(),
        l.token,
        human_signed(ms)
    )
}

async fn advisory_holders(ctx: &Ctx, key: &str) -> Result<Option<String>, Failure> {
    let holders = ctx.locks.advisory_holders(key).await?;
    let who: Vec<String> = holders
        .iter()
        .map(|h| {
            let mut s = format!("pid {}", h.pid);
            if !h.application_name.is_empty() {
                s.push_str(&format!(" ({:?})", h.application_name));
            }
            if let Some(d) = h.held_for {
                s.push_str(&format!(", for {}", human_signed(d.num_milliseconds())));
            }
            s
        })
        .collect();
    Ok(match who.len() {
        0 => None,
        1 => Some(format!("held by {}", who[0])),
        n => Some(format!(
            "held in shared mode by {n} sessions: {}",
            who.join("; ")
        )),
    })
}

/// The end of a wait.
pub(crate) enum Waited<T> {
    Done(pglock::Result<T>),
    Interrupted(Sig),
}

/// Awaits `acquire`, drawing the status line meanwhile, and stops waiting
/// (dropping `acquire`, which the library makes safe) on SIGINT, SIGTERM or
/// SIGHUP.
pub(crate) async fn wait_for<T>(
    ctx: &Ctx,
    target: &Target,
    signals: &mut Signals,
    acquire: impl Future<Output = pglock::Result<T>>,
) -> Waited<T> {
    let started = Instant::now();
    let waited = tokio::select! {
        r = acquire => Waited::Done(r),
        sig = signals.recv() => Waited::Interrupted(sig),
        never = show_status(ctx, target, started) => match never {},
    };
    ctx.ui.clear_status();
    waited
}

/// The reason for stopping on a signal while waiting.
pub(crate) fn interrupted(target: &Target, sig: Sig) -> Failure {
    Failure::new(
        sig.exit_code(),
        format!(
            "stopped by SIG{} while waiting for {target}; nothing is held",
            sig.name()
        ),
    )
}

/// On a terminal, a status line refreshed every second; with `--verbose`
/// elsewhere, one line. Never ends.
async fn show_status(ctx: &Ctx, target: &Target, started: Instant) -> std::convert::Infallible {
    let ui = ctx.ui;
    if ui.is_live() || ui.is_verbose() {
        tokio::time::sleep(QUIET_START).await;
        if ui.is_live() {
            loop {
                let who = target.holder_text(ctx).await;
                // The time waited first: a narrow terminal cuts the end.
                ui.status(&format!(
                    "pglock: waiting for {target} ({}): {who}",
                    human(started.elapsed())
                ));
                tokio::time::sleep(REFRESH).await;
            }
        }
        let who = target.holder_text(ctx).await;
        ui.detail(format_args!("waiting for {target}: {who}"));
    }
    std::future::pending().await
}

/// What became of a lease after it was lost, in a few words.
pub(crate) async fn lease_loss(ctx: &Ctx, pool: &str, name: &str, token: i64) -> String {
    let info = async {
        if pool.is_empty() {
            ctx.locks.lease_info(name).await
        } else {
            ctx.locks.lease_pool(pool).item_info(name).await
        }
    };
    let info = match tokio::time::timeout(LOOKUP_TIMEOUT, info).await {
        Ok(Ok(Some(info))) => info,
        Ok(Ok(None)) => return "its row was deleted".to_owned(),
        Ok(Err(_)) | Err(_) => {
            return "it could not be renewed: the database did not answer in time".to_owned();
        }
    };
    if info.token > token {
        let state = if info.held {
            "now held"
        } else {
            "then released"
        };
        format!(
            "it was taken over by {:?} (token {}, {state})",
            info.holder.unwrap_or_default(),
            info.token
        )
    } else if info.expires_at.is_none() {
        "it was released by someone else (pglock release --force?)".to_owned()
    } else {
        "it expired before it could be renewed".to_owned()
    }
}
