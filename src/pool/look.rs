//! A claim's looks: the claim statement, the takeover after it when
//! nothing was free, and why nothing was claimed; waiting between looks.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use tokio::time::Instant;
use uuid::Uuid;

use super::floor;
use crate::db::{Db, Pick, Repeat};
use crate::error::{Error, Result};
use crate::lease::Terms;
use crate::lease::state::{Scope, Shared};
use crate::locks::Locks;
use crate::wait::{self, Look, payload};

/// Claims an item of `scope`'s pool now, if one is free; a drained pool is
/// `None` too.
pub(crate) async fn try_claim(
    locks: &Locks,
    scope: &Scope,
    terms: &Terms,
    max_slot: Option<i32>,
) -> Result<Option<Shared>> {
    let look = async {
        match claim_look(locks, scope, terms, max_slot).await {
            Ok(Look::Done(s)) => Ok(Some(s)),
            Ok(Look::Again(_) | Look::WhenWoken) | Err(Error::PoolDrained { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    wait::try_once((scope.kind(), scope.pool_column()), look).await
}

/// Waits for an item of `scope`'s pool and claims it.
pub(crate) async fn claim(
    locks: &Locks,
    scope: &Scope,
    terms: &Terms,
    max_slot: Option<i32>,
) -> Result<Shared> {
    let pool = scope.pool_column();
    let what = || format!("an item of pool {pool:?}");
    let topic = scope.free_topic("");
    let look = || claim_look(locks, scope, terms, max_slot);
    let kind = (scope.kind(), pool);
    let looks = (look, std::future::pending);
    wait::acquire(locks.db(), kind, &topic, terms.timeout, what, looks).await
}

/// One look: an item, how long until one may be free, or
/// [`Error::PoolDrained`]. `max_slot` limits a semaphore's claims to the
/// permits below it.
async fn claim_look(
    locks: &Locks,
    scope: &Scope,
    terms: &Terms,
    max_slot: Option<i32>,
) -> Result<Look<Shared>> {
    let db = locks.db();
    let args = Arc::new(ClaimArgs {
        pool: scope.pool_column().to_owned(),
        owner: Uuid::new_v4(),
        holder: terms.holder(locks),
        ttl_ms: terms.ttl_ms(),
        max_slot,
        delay_ms: terms.delay_ms(),
        wake: payload(&db.schema, &scope.free_topic("")),
    });
    let sent = Instant::now();
    // The sticky probe: never for a semaphore (its permits are all alike),
    // and for a pool not while this handle knows it has nothing to resume
    // there (see `resume`).
    let (pool, holder) = (&args.pool, &args.holder);
    let resume = locks.resume();
    let epoch = resume.epoch();
    let sticky = matches!(scope, Scope::Item { .. }) && !resume.may_skip(pool, holder);
    let forms: (Pick, Pick) = if sticky {
        (|s| &s.pool_claim, |s| &s.pool_claim_retry)
    } else {
        (|s| &s.pool_claim_plain, |s| &s.pool_claim_plain_retry)
    };
    let mut row = send_claim(db, forms, &args).await?;
    if sticky && !matches!(&row, Some(r) if r.try_get::<bool, _>("resumed")?) {
        resume.found_nothing(pool, holder, epoch);
    }
    if row.is_none() {
        // Nothing free: take over an expired item, in a statement of its
        // own so that the claim's plan stays small.
        let forms: (Pick, Pick) = (|s| &s.pool_takeover, |s| &s.pool_takeover_retry);
        row = send_claim(db, forms, &args).await?;
    }
    if let Some(row) = row {
        if row.try_get::<Option<bool>, _>("raise")? == Some(true) {
            floor::raise(db, pool);
        }
        let name = row.try_get("name")?;
        let holder = holder.clone();
        let shared = Shared::taken(&row, scope.clone(), name, args.owner, holder, terms, sent)?;
        return Ok(Look::Done(shared));
    }
    // Nothing claimed: ask why, in a statement of its own (a later snapshot
    // than the claim's, so a free item it finds may also be one freed since:
    // either way, look again soon).
    let row = db
        .fetch_one(Repeat::Safe, &db.sql.pool_wait, |q| {
            q.bind(pool).bind(max_slot)
        })
        .await?;
    if !row.try_get::<bool, _>("pool_exists")? {
        return Err(Error::PoolNotFound { pool: pool.clone() });
    }
    let any_held: bool = row.try_get("any_held")?;
    let free_found: bool = row.try_get("free_found")?;
    if !any_held && !free_found {
        return Err(Error::PoolDrained { pool: pool.clone() });
    }
    if free_found {
        // A concurrent claim holds a free item's row lock (it either takes
        // it or rolls back), or an item was freed since the claim's look.
        // Look again shortly.
        return Ok(Look::Again(Duration::from_millis(10)));
    }
    let ms: Option<f64> = row.try_get("wait_ms")?;
    Ok(Look::Again(ms.map_or(Duration::from_millis(100), |ms| {
        Duration::from_secs_f64(ms / 1000.0)
    })))
}

/// The parameters of one look's claim statements.
struct ClaimArgs {
    pool: String,
    /// Fresh for each look: the claim and the takeover after it share it.
    owner: Uuid,
    holder: String,
    ttl_ms: i64,
    max_slot: Option<i32>,
    delay_ms: Option<i64>,
    /// The pool's wake-up payload, for the give-back.
    wake: String,
}

/// Sends one form of the claim (`claim`, repeated as `again`) through
/// [`Db::take`]: if the caller goes away first, or the outcome is unknown,
/// what it took for `args.owner` is given back, after it.
async fn send_claim(
    db: &Arc<Db>,
    (claim, again): (Pick, Pick),
    args: &Arc<ClaimArgs>,
) -> Result<Option<sqlx::postgres::PgRow>> {
    let (a, u) = (args.clone(), args.clone());
    db.take(
        claim,
        Repeat::As(again),
        move |q| {
            q.bind(&a.pool)
                .bind(a.owner)
                .bind(&a.holder)
                .bind(a.ttl_ms)
                .bind(a.max_slot)
                .bind(a.delay_ms)
        },
        |s| &s.item_abandon,
        move |q| q.bind(&u.pool).bind(&u.holder).bind(u.owner).bind(&u.wake),
    )
    .await
}
