//! `pglock`: run any command under a PostgreSQL lock, lease or pool item,
//! and see or repair who holds what. Unix only. It only calls the library:
//! what it shows about holders comes from `Locks::lease_info`,
//! `Locks::advisory_holders` and `Locks::advisory_locks`.
//!
//! # Commands
//!
//! | command | what it does |
//! | --- | --- |
//! | `pglock migrate` | install or upgrade the schema (idempotent) |
//! | `pglock exec --lease NAME [--ttl 30s] [--timeout D \| --no-wait] [--data JSON] -- CMD…` | acquire the lease, renew it while `CMD` runs, release it when `CMD` exits |
//! | `pglock exec --advisory KEY [--shared] [--timeout D \| --no-wait] -- CMD…` | the same under a session advisory lock |
//! | `pglock exec --pool POOL [--all] -- CMD… {}` | claim any free item, run `CMD` with `{}` replaced by it, complete the item if `CMD` exits 0, release it otherwise; `--all` repeats until the pool is drained |
//! | `pglock pool add POOL ITEMS… \| --from-file F` | add items (`-` reads stdin) |
//! | `pglock pool status POOL [--items] [--json]` | counts: free, held, done |
//! | `pglock ls [--json]` | leases, held pool items, and advisory locks held in the database |
//! | `pglock release --force [--pool P] NAME` | release a lease or item whoever holds it |
//! | `pglock request-release [--pool P] NAME` | ask its holder to let go |
//! | `pglock elect NAME [--value V] [--ttl 30s] -- CMD…` | campaign in election NAME, run `CMD` while leading it (as `exec --lease election/NAME`), resign when it exits |
//! | `pglock leader NAME [--watch] [--json]` | who leads NAME (`TOKEN<TAB>VALUE<TAB>HOLDER`; exit 75 if nobody); `--watch`: one line per new leader, in token order |
//!
//! Global flags: `--database-url` (or `DATABASE_URL`), `--schema` (or
//! `PGLOCK_SCHEMA`, default `pglock`), `--holder` (or `PGLOCK_HOLDER`,
//! default `hostname:pid`), `--quiet`, `--verbose`. Durations are written
//! `500ms`, `30s`, `5m`, `2h`, `1d` or `1h30m`.
//!
//! # The command under `exec`
//!
//! It inherits pglock's standard streams and environment, plus
//! `PGLOCK_NAME`, `PGLOCK_TOKEN` (the fencing token), `PGLOCK_DEADLINE`
//! (the lease's expiry by the database clock when the command started, RFC
//! 3339: when the lease would end if pglock died then) and `PGLOCK_SCHEMA`
//! for a lease; `PGLOCK_KEY` for an advisory lock; and for a pool item
//! `PGLOCK_POOL`, `PGLOCK_ITEM` and the lease variables (`PGLOCK_NAME` is
//! the item).
//!
//! - The lease is renewed every third of its TTL. If it is lost (renewal
//!   refused or not answered before the holder's deadline, or an advisory
//!   lock's session ended), the command gets SIGTERM, then SIGKILL after
//!   `--grace` (default 10s), and pglock exits 70 with the reason.
//! - `pglock request-release NAME` sends the command SIGTERM, once; the
//!   lease stays held until the command exits.
//! - SIGINT, SIGTERM and SIGHUP sent to pglock are passed on to the
//!   command; the lease is held until the command exits, then released.
//!   Ctrl-C on a terminal already reaches the command (it is in pglock's
//!   foreground process group), so pglock does not pass that SIGINT on
//!   again. While pglock is still waiting, these signals stop the wait.
//! - If pglock itself is killed with SIGKILL, it can tell nobody. On Linux
//!   the kernel then kills the command too (`PR_SET_PDEATHSIG`): it cannot
//!   run on while the lease expires and a next holder starts. That covers
//!   the command pglock started, not processes the command starts in the
//!   background (a shell script's helpers): make the command `exec` its
//!   last program, or have it stop its own children. On other platforms the
//!   command runs on until it ends by itself; supervisors should signal the
//!   whole process group there.
//!
//! A pool item counts as done when its command exits 0: a command stopped
//! early (SIGTERM on a release request or a signal) should exit non-zero,
//! so that its item goes back to the pool. `exec --pool --all` stops at the
//! first command that fails, its item released for another try (by another
//! worker, or this one later), and exits with that command's status; after
//! a signal it stops once the current command has exited. It exits 0 when
//! the pool is drained, or, with `--no-wait`, when no item is free.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | the command's | `exec`: the command ran and exited (128 + N if a signal N ended it) |
//! | 0 | success |
//! | 1 | any other error: database unreachable or refusing, schema not migrated, unreadable file |
//! | 2 | bad arguments or invalid input (clap's usage errors, bad names, TTLs, URLs) |
//! | 70 | the lock was lost while the command ran; the command was stopped |
//! | 71 | the command ended, but its lease could not be released (retried for `--release-timeout`, default 30s) or its pool item completed: it may still be held until its TTL runs out |
//! | 75 | not obtained: held (`--no-wait`), `--timeout` ran out, or a drained pool without `--all` |
//! | 126 / 127 | the command could not be run / was not found |
//! | 128 + N | pglock was stopped by signal N while waiting; nothing is held |
//!
//! A command's own status can collide with these numbers; scripts that need
//! to tell them apart should have the command avoid 70, 71, 75 and 126–127.
//!
//! While waiting on a terminal, pglock draws a status line on stderr (what
//! it waits for, who holds it, time left on the holder's lease, time
//! waited); it is silent when stderr is not a terminal. Errors are one
//! sentence on stderr, with the fix.

// One narrowly scoped exception, in child.rs: the parent-death signal.
#![deny(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

// The crate root is src/bin/pglock.rs: its modules live in src/bin/pglock/.
#[path = "pglock/admin.rs"]
mod admin;
#[path = "pglock/child.rs"]
mod child;
#[path = "pglock/cli.rs"]
mod cli;
#[path = "pglock/duration.rs"]
mod duration;
#[path = "pglock/elect.rs"]
mod elect;
#[path = "pglock/exec.rs"]
mod exec;
#[path = "pglock/exec_args.rs"]
mod exec_args;
#[path = "pglock/held.rs"]
mod held;
#[path = "pglock/report.rs"]
mod report;
#[path = "pglock/run.rs"]
mod run;
#[path = "pglock/stats.rs"]
mod stats;
#[path = "pglock/waiting.rs"]
mod waiting;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use pglock::Locks;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::child::Signals;
use crate::cli::{Cli, Command, PoolCommand};
use crate::report::{EXIT_FAILURE, Failure, Ui};

/// Longest wait for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every command works with.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) locks: Locks,
    /// The pool `locks` was built on (pglock's own connections live beside
    /// it), closed at exit.
    pub(crate) pool: PgPool,
    pub(crate) ui: Ui,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui::new(cli.quiet, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ui.error(format_args!("cannot start: {e}"));
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async {
        match run(cli, ui).await {
            Ok(code) => code,
            Err(f) => {
                ui.clear_status();
                ui.failure(&f);
                f.code
            }
        }
    });
    // Background tasks (renewals, LISTEN) have nothing left to do.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

async fn run(cli: Cli, ui: Ui) -> Result<u8, Failure> {
    // Caught before anything is held, by `exec` only: it must not die of
    // them while it holds something. The other commands hold nothing, and
    // Ctrl-C ends them as usual.
    let mut signals = match cli.command {
        Command::Exec(_) | Command::Elect(_) => Some(
            Signals::catch()
                .map_err(|e| Failure::new(EXIT_FAILURE, format!("cannot catch signals: {e}")))?,
        ),
        _ => None,
    };
    // Read before connecting: a bad file fails without a database round trip.
    let items = match &cli.command {
        Command::Pool(PoolCommand::Add {
            items, from_file, ..
        }) => match from_file {
            Some(path) => admin::read_items(path)?,
            None => items.clone(),
        },
        _ => Vec::new(),
    };
    // A signal while connecting stops pglock before anything is held
    // (rather than reaching the command later).
    let ctx = match signals.as_mut() {
        Some(signals) => tokio::select! {
            ctx = connect(&cli, ui) => ctx?,
            sig = signals.recv() => {
                return Err(Failure::new(
                    sig.exit_code(),
                    format!("stopped by SIG{} while connecting; nothing is held", sig.name()),
                ));
            }
        },
        None => connect(&cli, ui).await?,
    };
    let result = match &cli.command {
        Command::Migrate => admin::migrate(&ctx).await,
        Command::Exec(args) => {
            let signals = signals.as_mut().expect("caught for exec");
            let stats = args.stats.then(stats::Stats::install).flatten();
            let out = exec::exec(&ctx, args, signals).await;
            if let Some(s) = stats {
                s.print();
            }
            out
        }
        Command::Pool(PoolCommand::Add { pool, .. }) => admin::pool_add(&ctx, pool, items).await,
        Command::Pool(PoolCommand::Status { pool, items, json }) => {
            admin::pool_status(&ctx, pool, *items, *json).await
        }
        Command::Ls { json } => admin::ls(&ctx, *json).await,
        Command::Gc { older_than } => admin::gc(&ctx, *older_than).await,
        Command::Release(args) => admin::release(&ctx, args.force, &args.target).await,
        Command::RequestRelease(target) => admin::request_release(&ctx, target).await,
        Command::Elect(args) => {
            let signals = signals.as_mut().expect("caught for elect");
            elect::elect(&ctx, args, signals).await
        }
        Command::Leader { name, watch, json } => elect::leader(&ctx, name, *watch, *json).await,
    };
    ctx.pool.close().await;
    result
}

/// Checks the options, then opens the first connection, so that a bad URL
/// or an unreachable server is reported before anything else.
async fn connect(cli: &Cli, ui: Ui) -> Result<Ctx, Failure> {
    let Some(url) = cli.database_url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(Failure::usage(
            "no database given: set DATABASE_URL or pass --database-url \
             postgres://user:password@host:5432/database",
        ));
    };
    let options = connect_options(url)?;
    let session_options = match cli.session_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => Some(connect_options(url).map_err(|f| {
            Failure {
                message: f
                    .message
                    .replace("database URL", "--session-url (PGLOCK_SESSION_URL)"),
                ..f
            }
        })?),
        None => None,
    };
    let build = |pool: PgPool, session: Option<PgConnectOptions>| {
        let mut builder = Locks::builder(pool)
            .schema(cli.schema.as_str())
            .transaction_pooler(cli.transaction_pooler)
            .allow_async_replication(cli.allow_async_replication);
        if let Some(holder) = &cli.holder {
            builder = builder.holder(holder.as_str());
        }
        if let Some(session) = session {
            builder = builder.session_options(session);
        }
        builder.build().map_err(Failure::from_lib)
    };
    // Sessions carry the holder label, so that `pglock ls` (and
    // pg_stat_activity) tell whose advisory locks they are.
    let probe = build(
        PgPoolOptions::new().connect_lazy_with(options.clone()),
        None,
    )?;
    let label = format!("pglock {}", probe.holder());
    let labelled = |o: PgConnectOptions| {
        if o.get_application_name().is_none() {
            o.application_name(&label)
        } else {
            o
        }
    };
    let options = labelled(options);
    let session_options = session_options.map(labelled);
    let connect_options = options.clone();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .min_connections(0)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options);
    let locks = build(pool.clone(), session_options)?;
    // One plain connection first: the pool would retry a refused connection
    // until its timeout, where this reports it at once.
    let first = tokio::time::timeout(
        CONNECT_TIMEOUT,
        PgConnection::connect_with(&connect_options),
    )
    .await
    .map_err(|_| Failure::from_sqlx(sqlx::Error::PoolTimedOut))?
    .map_err(Failure::from_sqlx)?;
    let _ = first.close().await;
    ui.detail(format_args!(
        "connected; schema {:?}, holder {:?}",
        locks.schema(),
        locks.holder()
    ));
    Ok(Ctx { locks, pool, ui })
}

/// Parses a PostgreSQL URL. Another database's URL (`mysql://…`) is a bad
/// URL (exit 2), not a server that cannot be reached.
fn connect_options(url: &str) -> Result<PgConnectOptions, Failure> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("postgres" | "postgresql")) {
        let what = match &scheme {
            Some(s) => format!("scheme {s:?} is not PostgreSQL's"),
            None => "no postgres:// scheme".to_owned(),
        };
        return Err(Failure::usage(format!(
            "invalid database URL ({what}); expected postgres://user:password@host:5432/database"
        )));
    }
    PgConnectOptions::from_str(url).map_err(Failure::from_sqlx)
}
