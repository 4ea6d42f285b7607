//! `pglock exec`: run a command under a lease, an advisory lock, or a pool
//! item (one, or `--all` of them).

use chrono::SecondsFormat;
use pglock::{Error, LeaseRef};

use crate::held::Held;

use crate::Ctx;
use crate::child::{self, Signals, Watch};
use crate::exec_args::ExecArgs;
use crate::report::{EXIT_LOST, Failure};
use crate::run::{RELEASE_TIMEOUT, end_lease, lost, run_under, supervise_lease};
use crate::waiting::{Target, Waited, interrupted, wait_for};

/// Runs `pglock exec`; returns the exit code.
pub(crate) async fn exec(ctx: &Ctx, args: &ExecArgs, signals: &mut Signals) -> Result<u8, Failure> {
    if let Some(name) = &args.lease {
        exec_lease(ctx, name, args, signals).await
    } else if let Some(key) = &args.advisory {
        exec_advisory(ctx, key, args, signals).await
    } else if let Some(pool) = &args.pool {
        exec_pool(ctx, pool, args, signals).await
    } else {
        unreachable!("clap requires one of --lease, --advisory, --pool")
    }
}

async fn exec_lease(
    ctx: &Ctx,
    name: &str,
    args: &ExecArgs,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let target = Target::Lease(name.to_owned());
    let mut request = ctx.locks.lease(name).ttl(args.ttl);
    if let Some(data) = &args.data {
        request = request.data(data.clone());
    }
    let lease = if args.no_wait {
        // Even one attempt yields to a signal: nothing is held yet.
        match wait_for(ctx, &target, signals, request.try_acquire()).await {
            Waited::Done(r) => match r? {
                Some(lease) => lease,
                None => return Err(target.not_obtained(ctx, "--no-wait").await),
            },
            Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
        }
    } else {
        if let Some(t) = args.timeout {
            request = request.timeout(t);
        }
        match wait_for(ctx, &target, signals, request.acquire()).await {
            Waited::Done(Ok(lease)) => lease,
            Waited::Done(Err(e)) => return Err(not_obtained_or(ctx, &target, args, e).await),
            Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
        }
    };
    let lease = Held::from(lease.keep_alive());
    ctx.ui.detail(format_args!(
        "acquired {target} (token {}, ttl {})",
        lease.token(),
        crate::duration::human(args.ttl)
    ));
    let env = lease_env(ctx, &lease);
    run_under(ctx, lease, &args.run, &env, signals).await
}

async fn exec_advisory(
    ctx: &Ctx,
    key: &str,
    args: &ExecArgs,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let target = Target::Advisory {
        key: key.to_owned(),
        shared: args.shared,
    };
    let mut request = ctx.locks.advisory(key);
    if args.shared {
        request = request.shared();
    }
    let guard = if args.no_wait {
        match wait_for(ctx, &target, signals, request.try_lock()).await {
            Waited::Done(r) => match r? {
                Some(guard) => guard,
                None => return Err(target.not_obtained(ctx, "--no-wait").await),
            },
            Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
        }
    } else {
        if let Some(t) = args.timeout {
            request = request.timeout(t);
        }
        match wait_for(ctx, &target, signals, request.lock()).await {
            Waited::Done(Ok(guard)) => guard,
            Waited::Done(Err(e)) => return Err(not_obtained_or(ctx, &target, args, e).await),
            Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
        }
    };
    ctx.ui.detail(format_args!(
        "acquired {target} (session pid {})",
        guard.pid()
    ));
    let env = [("PGLOCK_KEY", key.to_owned())];
    let watch = Watch {
        lost: guard.lost(),
        release_requested: std::future::pending(),
        grace: args.run.grace,
    };
    let finished = child::run(&args.run.command, &env, watch, signals, ctx.ui).await;
    let pid = guard.pid();
    let released = tokio::time::timeout(RELEASE_TIMEOUT, guard.release()).await;
    let finished = finished?;
    if finished.lost {
        return Err(lost(
            &target.to_string(),
            &format!("its session (pid {pid}) ended or no longer holds it"),
            &finished,
            args.run.grace,
        ));
    }
    match released {
        Ok(Ok(())) => ctx.ui.detail(format_args!("released {target}")),
        // The session no longer held the lock when the command ended.
        Ok(Err(Error::LockLost { .. })) => {
            return Err(Failure::new(
                EXIT_LOST,
                format!(
                    "the command finished, but {target} was lost before it ended: its session (pid {pid}) no longer held it"
                ),
            ));
        }
        Ok(Err(e)) => ctx.ui.detail(format_args!("release: {e}")),
        Err(_) => ctx
            .ui
            .detail("release did not answer in time; its session is closed"),
    }
    Ok(finished.code)
}

async fn exec_pool(
    ctx: &Ctx,
    pool: &str,
    args: &ExecArgs,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let target = Target::Pool(pool.to_owned());
    let items = ctx.locks.lease_pool(pool);
    let mut ran = 0u64;
    loop {
        let mut claim = items.claim().ttl(args.ttl);
        let claimed = if args.no_wait {
            // A signal that came while the last item's command ran stops
            // here, before the next claim.
            match wait_for(ctx, &target, signals, claim.try_acquire()).await {
                Waited::Done(r) => r,
                Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
            }
        } else {
            if let Some(t) = args.timeout {
                claim = claim.timeout(t);
            }
            match wait_for(ctx, &target, signals, claim.acquire()).await {
                Waited::Done(r) => r.map(Some),
                Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
            }
        };
        let lease = match claimed {
            Ok(Some(lease)) => lease,
            Ok(None) if args.all => {
                ctx.ui.info(format_args!(
                    "no item of pool {pool:?} is free now; ran {ran} item(s)"
                ));
                return Ok(0);
            }
            Ok(None) => return Err(target.not_obtained(ctx, "--no-wait").await),
            Err(Error::PoolDrained { .. }) if args.all => {
                ctx.ui
                    .info(format_args!("pool {pool:?} is drained; ran {ran} item(s)"));
                return Ok(0);
            }
            Err(e) => return Err(not_obtained_or(ctx, &target, args, e).await),
        };
        let lease = Held::from(lease.keep_alive());
        let item = lease.name().to_owned();
        ctx.ui.detail(format_args!(
            "claimed item {item:?} of pool {pool:?} (token {})",
            lease.token()
        ));
        let mut env = lease_env(ctx, &lease);
        env.push(("PGLOCK_POOL", pool.to_owned()));
        env.push(("PGLOCK_ITEM", item.clone()));
        let argv = child::substitute(&args.run.command, &item);
        let finished = supervise_lease(ctx, &lease, &argv, &env, args.run.grace, signals).await;
        let finished = end_lease(
            ctx,
            lease,
            finished,
            args.run.grace,
            args.run.release_timeout,
        )
        .await?;
        ran += 1;
        let code = finished.code;
        if code != 0 && args.all {
            ctx.ui.info(format_args!(
                "the command failed on item {item:?} (exit {code}); it is back in pool {pool:?} for another try; stopping"
            ));
        }
        if let Some(sig) = finished.interrupted.filter(|_| args.all && code == 0) {
            ctx.ui.info(format_args!(
                "stopping after item {item:?} on SIG{}; ran {ran} item(s)",
                sig.name()
            ));
        }
        if code != 0 || !args.all || finished.interrupted.is_some() {
            return Ok(code);
        }
    }
}

/// The environment of a command holding a lease (or pool item).
pub(crate) fn lease_env(ctx: &Ctx, lease: &LeaseRef) -> Vec<(&'static str, String)> {
    vec![
        ("PGLOCK_NAME", lease.name().to_owned()),
        ("PGLOCK_TOKEN", lease.token().to_string()),
        (
            "PGLOCK_DEADLINE",
            lease
                .expires_at()
                .to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
        ("PGLOCK_SCHEMA", ctx.locks.schema().to_owned()),
    ]
}

/// A failed wait: [`Error::Timeout`] becomes exit 75 naming the holder;
/// anything else (a drained pool: exit 75 too), its own failure.
async fn not_obtained_or(ctx: &Ctx, target: &Target, args: &ExecArgs, e: Error) -> Failure {
    match e {
        Error::Timeout { waited, .. } => {
            let why = format!(
                "waited {}",
                crate::duration::human(args.timeout.unwrap_or(waited))
            );
            target.not_obtained(ctx, &why).await
        }
        e => Failure::from_lib(e),
    }
}
