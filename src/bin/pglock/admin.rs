//! The commands for operators: `migrate`, `pool add`, `pool status`, `ls`,
//! `release --force`, `request-release`.

use std::io::Read;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use pglock::{AdvisoryLockInfo, LeaseInfo};
use serde_json::{Value, json};

use crate::Ctx;
use crate::cli::TargetArgs;
use crate::duration::human_signed;
use crate::report::{EXIT_FAILURE, Failure, print, table, truncate};

/// Items per `add` statement: a million-line file goes in bounded
/// statements.
const ADD_BATCH: usize = 10_000;

/// Widest the DATA column of a table gets.
const DATA_WIDTH: usize = 40;

pub(crate) async fn migrate(ctx: &Ctx) -> Result<u8, Failure> {
    ctx.locks.migrate().await?;
    ctx.ui.info(format_args!(
        "schema {:?} is installed (version {})",
        ctx.locks.schema(),
        pglock::latest_version()
    ));
    Ok(0)
}

/// Reads the items of `pool add --from-file`: one a line, trimmed, empty
/// lines skipped; `-` is standard input.
pub(crate) fn read_items(path: &Path) -> Result<Vec<String>, Failure> {
    let mut text = String::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text))
    };
    let shown = if path == Path::new("-") {
        "standard input".to_owned()
    } else {
        format!("{:?}", path.display().to_string())
    };
    read.map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot read items from {shown}: {e}")))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Adds `items` in order (the order claims hand them out), each once.
pub(crate) async fn pool_add(ctx: &Ctx, pool: &str, items: Vec<String>) -> Result<u8, Failure> {
    let mut seen = std::collections::HashSet::new();
    let items: Vec<String> = items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect();
    if items.is_empty() {
        return Err(Failure::usage(
            "no items to add: the file has only empty lines",
        ));
    }
    let handle = ctx.locks.lease_pool(pool);
    let mut added = 0;
    for batch in items.chunks(ADD_BATCH) {
        added += handle.add(batch.iter().cloned()).await?;
    }
    let already = (items.len() as u64).saturating_sub(added);
    ctx.ui.info(format_args!(
        "added {added} new item(s) to pool {pool:?} ({already} already there)"
    ));
    Ok(0)
}

pub(crate) async fn pool_status(
    ctx: &Ctx,
    pool: &str,
    with_items: bool,
    as_json: bool,
) -> Result<u8, Failure> {
    let handle = ctx.locks.lease_pool(pool);
    let s = handle.status().await?;
    let items = if with_items {
        handle.items().await?
    } else {
        Vec::new()
    };
    if as_json {
        let mut doc = json!({
            "pool": pool,
            "total": s.total,
            "free": s.free,
            "held": s.held,
            "done": s.done,
        });
        if with_items {
            doc["items"] = items
                .iter()
                .map(|i| {
                    json!({
                        "name": i.name,
                        "state": item_state(i),
                        "holder": i.holder,
                        "token": i.token,
                        "expires_at": i.expires_at.map(rfc3339),
                        "data": i.data,
                    })
                })
                .collect();
        }
        print(doc);
        return Ok(0);
    }
    print(format_args!(
        "pool {pool:?}: {} item(s): {} free, {} held, {} done",
        s.total, s.free, s.held, s.done
    ));
    if with_items && !items.is_empty() {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| {
                vec![
                    i.name.clone(),
                    item_state(i).to_owned(),
                    i.holder.clone().unwrap_or_else(|| "-".into()),
                    token_text(i.token),
                    data_text(i.data.as_ref()),
                ]
            })
            .collect();
        print(table(&["ITEM", "STATE", "HOLDER", "TOKEN", "DATA"], &rows));
    }
    Ok(0)
}

fn item_state(i: &pglock::PoolItem) -> &'static str {
    match (i.done, i.held) {
        (true, _) => "done",
        (false, true) => "held",
        (false, false) => "free",
    }
}

pub(crate) async fn ls(ctx: &Ctx, as_json: bool) -> Result<u8, Failure> {
    let leases = ctx.locks.leases().await?;
    let advisory = ctx.locks.advisory_locks().await?;
    if as_json {
        let doc = json!({
            "schema": ctx.locks.schema(),
            "leases": leases.iter().map(lease_json).collect::<Vec<_>>(),
            "advisory_locks": advisory.iter().map(advisory_json).collect::<Vec<_>>(),
        });
        print(doc);
        return Ok(0);
    }
    if leases.is_empty() {
        print(format_args!("no leases in schema {:?}", ctx.locks.schema()));
    } else {
        let rows: Vec<Vec<String>> = leases
            .iter()
            .map(|l| {
                vec![
                    l.pool.clone().unwrap_or_else(|| "-".into()),
                    l.name.clone(),
                    if l.held { "held" } else { "free" }.to_owned(),
                    l.holder.clone().unwrap_or_else(|| "-".into()),
                    token_text(l.token),
                    expires_text(l),
                    if l.release_requested { "yes" } else { "-" }.to_owned(),
                    data_text(l.data.as_ref()),
                ]
            })
            .collect();
        print(table(
            &[
                "POOL",
                "NAME",
                "STATE",
                "HOLDER",
                "TOKEN",
                "EXPIRES IN",
                "RELEASE REQUESTED",
                "DATA",
            ],
            &rows,
        ));
    }
    print("");
    if advisory.is_empty() {
        print("no advisory locks held in this database");
    } else {
        let rows: Vec<Vec<String>> = advisory
            .iter()
            .map(|a| {
                vec![
                    key_text(a),
                    if a.shared { "shared" } else { "exclusive" }.to_owned(),
                    a.pid.to_string(),
                    if a.application_name.is_empty() {
                        "-".to_owned()
                    } else {
                        a.application_name.clone()
                    },
                    a.held_for
                        .map_or_else(|| "-".into(), |d| human_signed(d.num_milliseconds())),
                ]
            })
            .collect();
        print(table(
            &["ADVISORY KEY", "MODE", "PID", "APPLICATION", "FOR"],
            &rows,
        ));
    }
    Ok(0)
}

fn lease_json(l: &LeaseInfo) -> Value {
    json!({
        "pool": l.pool,
        "name": l.name,
        "held": l.held,
        "holder": l.holder,
        "token": l.token,
        "acquired_at": l.acquired_at.map(rfc3339),
        "expires_at": l.expires_at.map(rfc3339),
        "expires_in_ms": l.expires_in.map(|d| d.num_milliseconds()),
        "data": l.data,
        "release_requested": l.release_requested,
    })
}

fn advisory_json(a: &AdvisoryLockInfo) -> Value {
    json!({
        "key": a.key,
        "key_pair": if a.key.is_none() { json!([a.key_pair.0, a.key_pair.1]) } else { Value::Null },
        "mode": if a.shared { "shared" } else { "exclusive" },
        "pid": a.pid,
        "application_name": a.application_name,
        "since": a.since.map(rfc3339),
    })
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn token_text(token: i64) -> String {
    if token == 0 {
        "-".to_owned()
    } else {
        token.to_string()
    }
}

fn expires_text(l: &LeaseInfo) -> String {
    l.expires_in
        .map_or_else(|| "-".to_owned(), |d| human_signed(d.num_milliseconds()))
}

fn key_text(a: &AdvisoryLockInfo) -> String {
    match a.key {
        Some(k) => k.to_string(),
        None => format!("({}, {})", a.key_pair.0, a.key_pair.1),
    }
}

fn data_text(data: Option<&Value>) -> String {
    data.map_or_else(|| "-".to_owned(), |d| truncate(&d.to_string(), DATA_WIDTH))
}

pub(crate) async fn release(ctx: &Ctx, force: bool, target: &TargetArgs) -> Result<u8, Failure> {
    let what = describe(target);
    if !force {
        return Err(Failure::usage(format!(
            "releasing {what} takes it from whoever holds it; add --force to do so \
             (pglock exec releases its own leases when its command exits)"
        )));
    }
    let released = match &target.pool {
        Some(pool) => {
            ctx.locks
                .lease_pool(pool)
                .force_release(&target.name)
                .await?
        }
        None => ctx.locks.force_release(&target.name).await?,
    };
    match released {
        Some(token) => ctx.ui.info(format_args!(
            "released {what} (token {token}); its holder learns it at its next renewal"
        )),
        None => ctx
            .ui
            .info(format_args!("{what} was not held; nothing to release")),
    }
    Ok(0)
}

pub(crate) async fn request_release(ctx: &Ctx, target: &TargetArgs) -> Result<u8, Failure> {
    let what = describe(target);
    let token = match &target.pool {
        Some(pool) => {
            ctx.locks
                .lease_pool(pool)
                .request_release(&target.name)
                .await?
        }
        None => ctx.locks.request_release(&target.name).await?,
    };
    match token {
        Some(token) => ctx.ui.info(format_args!(
            "asked the holder of {what} (token {token}) to release it"
        )),
        None => ctx
            .ui
            .info(format_args!("{what} is not held; nobody to ask")),
    }
    Ok(0)
}

fn describe(target: &TargetArgs) -> String {
    match &target.pool {
        Some(pool) => format!("item {:?} of pool {pool:?}", target.name),
        None => format!("lease {:?}", target.name),
    }
}
