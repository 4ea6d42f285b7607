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

/// Widest a name (pool, lease, item, holder) gets in a table; `--json`
/// shows it whole.
const NAME_WIDTH: usize = 64;

pub(crate) async fn migrate(ctx: &Ctx) -> Result<u8, Failure> {
    ctx.locks.migrate().await?;
    ctx.ui.info(format_args!(
        "schema {:?} is installed (version {})",
        ctx.locks.schema(),
        pglock::latest_version()
    ));
    Ok(0)
}

/// `pglock gc`: prints how many rows went.
pub(crate) async fn gc(ctx: &Ctx, older_than: std::time::Duration) -> Result<u8, Failure> {
    let n = ctx.locks.gc(older_than).await?;
    println!("deleted {n} free lease rows");
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
/// Surrounding whitespace is trimmed and empty items skipped, for arguments
/// as for lines of a file: an item name that differs from another only by
/// invisible spaces would be a trap.
pub(crate) async fn pool_add(ctx: &Ctx, pool: &str, items: Vec<String>) -> Result<u8, Failure> {
    let mut seen = std::collections::HashSet::new();
    let items: Vec<String> = items
        .iter()
        .map(|i| i.trim())
        .filter(|i| !i.is_empty() && seen.insert(i.to_owned()))
        .map(str::to_owned)
        .collect();
    if items.is_empty() {
        return Err(Failure::usage(
            "no items to add: only empty names (or empty lines) were given",
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
            "delayed": s.delayed,
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
                        "data_token": i.data_token,
                        "data_holder": i.data_holder,
                        "delayed_until": i.delayed_until.map(rfc3339),
                    })
                })
                .collect();
        }
        print(doc);
        return Ok(0);
    }
    let delayed = match s.delayed {
        0 => String::new(),
        n => format!(", {n} delayed"),
    };
    print(format_args!(
        "pool {pool:?}: {} item(s): {} free, {} held{delayed}, {} done",
        s.total, s.free, s.held, s.done
    ));
    if with_items && !items.is_empty() {
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|i| {
                vec![
                    name_text(&i.name),
                    item_state(i).to_owned(),
                    i.holder.as_deref().map_or_else(|| "-".into(), name_text),
                    token_text(i.token),
                    data_text(i.data.as_ref()),
                    data_by_text(
                        i.data.as_ref(),
                        i.token,
                        i.data_token,
                        i.data_holder.as_deref(),
                    ),
                ]
            })
            .collect();
        print(table(
            &["ITEM", "STATE", "HOLDER", "TOKEN", "DATA", "DATA BY"],
            &rows,
        ));
    }
    Ok(0)
}

fn item_state(i: &pglock::PoolItem) -> &'static str {
    match (i.done, i.held, i.delayed_until.is_some()) {
        (true, _, _) => "done",
        (false, true, _) => "held",
        (false, false, true) => "delayed",
        (false, false, false) => "free",
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
                    l.pool.as_deref().map_or_else(|| "-".into(), name_text),
                    name_text(&l.name),
                    state_text(l).to_owned(),
                    l.holder.as_deref().map_or_else(|| "-".into(), name_text),
                    token_text(l.token),
                    expires_text(l),
                    if l.release_requested { "yes" } else { "-" }.to_owned(),
                    data_text(l.data.as_ref()),
                    data_by_text(
                        l.data.as_ref(),
                        l.token,
                        l.data_token,
                        l.data_holder.as_deref(),
                    ),
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
                "DATA BY",
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
                        name_text(&a.application_name)
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
        "data_token": l.data_token,
        "data_holder": l.data_holder,
        "release_requested": l.release_requested,
        "delayed_until": l.delayed_until.map(rfc3339),
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

/// `held`, `delayed` (expired, its lock-delay not yet over: nobody can
/// take it yet) or `free`.
fn state_text(l: &LeaseInfo) -> &'static str {
    if l.held {
        "held"
    } else if l.delayed_until.is_some() {
        "delayed"
    } else {
        "free"
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

/// A name for a table cell: shortened (the table escapes it).
fn name_text(name: &str) -> String {
    truncate(name, NAME_WIDTH)
}

/// Whose data it is: `latest holder` when the latest acquisition wrote it,
/// `token N (holder)` when an earlier one did, `?` when it was written
/// before pglock recorded the writer (schema version 2 or older).
fn data_by_text(
    data: Option<&Value>,
    token: i64,
    data_token: Option<i64>,
    data_holder: Option<&str>,
) -> String {
    match (data, data_token) {
        (None, _) => "-".to_owned(),
        (Some(_), None) => "?".to_owned(),
        (Some(_), Some(t)) if t == token => "latest holder".to_owned(),
        (Some(_), Some(t)) => match data_holder {
            Some(h) => format!("token {t} ({})", name_text(h)),
            None => format!("token {t}"),
        },
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
