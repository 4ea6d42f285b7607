//! `pglock elect` (run a command while leading an election) and `pglock
//! leader` (who leads, once or as it changes).

use futures_util::StreamExt;
use serde_json::json;

use crate::Ctx;
use crate::child::Signals;
use crate::cli::ElectArgs;
use crate::exec::lease_env;
use crate::held::Held;
use crate::report::{EXIT_NOT_OBTAINED, Failure, print};
use crate::run::run_under;
use crate::waiting::{Target, Waited, interrupted, wait_for};

/// Runs `pglock elect`: campaign, run the command while leading, resign
/// when it exits.
pub(crate) async fn elect(
    ctx: &Ctx,
    args: &ElectArgs,
    signals: &mut Signals,
) -> Result<u8, Failure> {
    let election = ctx.locks.election(args.name.as_str()).ttl(args.ttl);
    let value = args
        .value
        .clone()
        .unwrap_or_else(|| ctx.locks.holder().to_owned());
    let target = Target::Lease(election.lease_name());
    let leadership = match wait_for(ctx, &target, signals, election.campaign(value.as_str())).await
    {
        Waited::Done(r) => r?,
        Waited::Interrupted(sig) => return Err(interrupted(&target, sig)),
    };
    ctx.ui.detail(format_args!(
        "leading election {:?} (token {}, value {value:?})",
        args.name,
        leadership.token()
    ));
    let lease = Held::from(leadership.into_lease());
    let mut env = lease_env(ctx, &lease);
    env.push(("PGLOCK_ELECTION", args.name.clone()));
    env.push(("PGLOCK_VALUE", value));
    run_under(ctx, lease, &args.run, &env, signals).await
}

/// Runs `pglock leader`: prints `TOKEN<TAB>VALUE<TAB>HOLDER` (or JSON) for
/// the current leader; with `watch`, one line per new leader until stopped.
pub(crate) async fn leader(
    ctx: &Ctx,
    name: &str,
    watch: bool,
    as_json: bool,
) -> Result<u8, Failure> {
    let election = ctx.locks.election(name);
    let show = |l: &pglock::Leader| {
        if as_json {
            print(json!({
                "election": name,
                "token": l.token,
                "value": l.value,
                "holder": l.holder,
                "expires_at": l.expires_at.to_rfc3339(),
            }))
        } else {
            print(format_args!(
                "{}\t{}\t{}",
                l.token,
                l.value,
                l.holder.as_deref().unwrap_or("")
            ))
        }
    };
    if !watch {
        return match election.leader().await? {
            Some(l) => {
                show(&l);
                Ok(0)
            }
            None => Err(Failure::new(
                EXIT_NOT_OBTAINED,
                format!("nobody leads election {name:?} now"),
            )),
        };
    }
    let mut leaders = std::pin::pin!(election.observe());
    while let Some(l) = leaders.next().await {
        match l {
            Ok(l) => show(&l),
            Err(e @ (pglock::Error::InvalidInput { .. } | pglock::Error::NotMigrated { .. })) => {
                return Err(e.into());
            }
            Err(e) => ctx.ui.info(format_args!(
                "cannot see the leader now: {e}; looking again"
            )),
        }
    }
    Ok(0)
}
