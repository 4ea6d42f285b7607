//! Running a command under a held lease or pool item, and letting go of it
//! afterwards: shared by `exec` and `elect`.

use std::time::Duration;

use pglock::{Error, LeaseRef};

use crate::Ctx;
use crate::child::{self, Finished, Signals, Watch};
use crate::exec_args::RunArgs;
use crate::held::Held;
use crate::report::{EXIT_LOST, EXIT_MAY_BE_HELD, Failure};
use crate::waiting::lease_loss;

/// Longest pglock waits for the last renewal check and for a pool item's
/// complete on its way out (a release retries for `--release-timeout`).
pub(crate) const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `run`'s command while `lease` is held, then ends the lease
/// (released, or reported lost): the exit code for pglock.
pub(crate) async fn run_under(
    ctx: &Ctx,
    lease: Held,
    run: &RunArgs,
    env: &[(&str, String)],
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let finished = supervise_lease(ctx, &lease, &run.command, env, run.grace, signals).await;
    Ok(
        end_lease(ctx, lease, finished, run.grace, run.release_timeout)
            .await?
            .code,
    )
}

/// Runs the command while `lease` is kept alive, stopping it if the lease
/// is lost and asking it to stop when a release is requested.
pub(crate) async fn supervise_lease(
    ctx: &Ctx,
    lease: &LeaseRef,
    argv: &[String],
    env: &[(&str, String)],
    grace: Duration,
    signals: &mut Signals,
) -> Result<Finished, Failure> {
    let watch = Watch {
        lost: lease.lost(),
        release_requested: lease.release_requested(),
        grace,
    };
    child::run(argv, env, watch, signals, ctx.ui).await
}

/// Lets go of `lease` after its command: completes a pool item whose
/// command exited 0, releases it otherwise. A lost lease becomes exit 70; a
/// release still failing after `--release-timeout` (or a complete that
/// failed), exit 71.
pub(crate) async fn end_lease(
    ctx: &Ctx,
    lease: Held,
    finished: Result<Finished, Failure>,
    grace: Duration,
    release_timeout: Duration,
) -> Result<Finished, Failure> {
    let what = match lease.pool() {
        Some(pool) => format!("item {:?} of pool {pool:?}", lease.name()),
        None => format!("lease {:?}", lease.name()),
    };
    let (pool, name, token) = (
        lease.pool().unwrap_or_default().to_owned(),
        lease.name().to_owned(),
        lease.token(),
    );
    let complete = lease.pool().is_some() && matches!(&finished, Ok(f) if f.code == 0 && !f.lost);
    // Was the lease still ours when the command ended? A loss just before
    // its exit (after the last renewal) would otherwise pass unnoticed:
    // release does not report a lapsed lease. (complete does.)
    let held_to_the_end = if complete || !matches!(&finished, Ok(f) if !f.lost) {
        Ok(())
    } else {
        match tokio::time::timeout(RELEASE_TIMEOUT, lease.renew()).await {
            Ok(Err(Error::LeaseLost { .. })) => Err(()),
            _ => Ok(()),
        }
    };
    let left = lease.remaining();
    let done = if complete {
        tokio::time::timeout(RELEASE_TIMEOUT, lease.complete())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: format!("completing {what}"),
                    waited: RELEASE_TIMEOUT,
                })
            })
    } else {
        lease.release_within(release_timeout).await
    };
    let finished = finished?;
    if finished.lost {
        let why = lease_loss(ctx, &pool, &name, token).await;
        return Err(lost(
            &format!("{what} (token {token})"),
            &why,
            &finished,
            grace,
        ));
    }
    if held_to_the_end.is_err() {
        let why = lease_loss(ctx, &pool, &name, token).await;
        return Err(Failure::new(
            EXIT_LOST,
            format!(
                "the command finished, but {what} (token {token}) was lost before it ended: {why}"
            ),
        ));
    }
    match done {
        Ok(()) if complete => ctx.ui.detail(format_args!("completed {what}")),
        Ok(()) => ctx.ui.detail(format_args!("released {what}")),
        Err(Error::LeaseLost { .. }) if complete => {
            let why = lease_loss(ctx, &pool, &name, token).await;
            return Err(Failure::new(
                EXIT_LOST,
                format!(
                    "the command succeeded, but {what} (token {token}) was lost before it could be completed: {why}; it will be run again"
                ),
            ));
        }
        // No longer ours: it expired, or an attempt cut short committed.
        Err(e @ Error::LeaseLost { .. }) => ctx.ui.detail(format_args!("release of {what}: {e}")),
        Err(e) => {
            let (did, then) = if complete {
                ("completed", "; then it is claimed and run again".to_owned())
            } else {
                (
                    "released",
                    format!(
                        "; `pglock release --force {}` frees it sooner",
                        if pool.is_empty() {
                            name.clone()
                        } else {
                            format!("--pool {pool} {name}")
                        }
                    ),
                )
            };
            let tried = if complete {
                String::new()
            } else {
                format!(" within {}", crate::duration::human(release_timeout))
            };
            return Err(Failure::new(
                EXIT_MAY_BE_HELD,
                format!(
                    "the command exited ({}), but {what} (token {token}) could not be {did}{tried}: {e}; \
                     it may still be held until its TTL runs out (in {}){then}",
                    finished.code,
                    crate::duration::human(left)
                ),
            ));
        }
    }
    Ok(finished)
}

/// The reason for exit 70.
pub(crate) fn lost(what: &str, why: &str, finished: &Finished, grace: Duration) -> Failure {
    let stopped = if finished.killed {
        format!(
            "SIGTERM, then SIGKILL after {}",
            crate::duration::human(grace)
        )
    } else {
        "SIGTERM".to_owned()
    };
    Failure::new(
        EXIT_LOST,
        format!(
            "{what} was lost while the command ran: {why}; the command was stopped with {stopped}"
        ),
    )
}
