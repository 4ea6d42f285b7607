//! The arguments of `pglock exec`, and the parser of its `--data`.

use std::time::Duration;

use clap::{ArgGroup, Args};
use serde_json::Value;

use crate::duration;

pub(crate) const EXEC_HELP: &str = "\
The command gets, in its environment:
  --lease:     PGLOCK_NAME, PGLOCK_TOKEN (fencing token), PGLOCK_DEADLINE
               (lease expiry by the database clock at start, RFC 3339), PGLOCK_SCHEMA
  --advisory:  PGLOCK_KEY
  --pool:      PGLOCK_POOL, PGLOCK_ITEM (also substituted for {} in the command),
               PGLOCK_NAME, PGLOCK_TOKEN, PGLOCK_DEADLINE, PGLOCK_SCHEMA
The lease is renewed while the command runs and released when it exits. If it
is lost, the command gets SIGTERM, then SIGKILL after --grace, and pglock exits
with 70. A release request (pglock request-release) sends the command SIGTERM.
A pool item is done when its command exits 0; a command stopped early should
exit non-zero to give its item back.
SIGINT, SIGTERM and SIGHUP sent to pglock are passed on to the command.

Examples:
  pglock exec --lease nightly-report --ttl 1m -- ./report.sh
  pglock exec --lease leader --no-wait -- ./lead.sh || echo \"someone else leads\"
  pglock exec --advisory ckpt/run-42 --timeout 5m -- python save_checkpoint.py
  pglock exec --pool shards --all -- python train.py --shard {}";

#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["lease", "advisory", "pool"])
))]
pub(crate) struct ExecArgs {
    /// Hold the lease NAME: a claim with a fencing token, renewed while the
    /// command runs.
    #[arg(long, value_name = "NAME")]
    pub(crate) lease: Option<String>,

    /// Hold the session advisory lock KEY (a string, hashed by the server
    /// with hashtextextended(KEY, 0), as psql can do).
    #[arg(long, value_name = "KEY")]
    pub(crate) advisory: Option<String>,

    /// Claim any free item of POOL; it is completed when the command exits
    /// 0, released otherwise.
    #[arg(long, value_name = "POOL")]
    pub(crate) pool: Option<String>,

    /// Print pglock's metrics (acquisitions, contention, wait and hold
    /// time, lost leases, renew failures, give-backs, NOTIFYs) to stderr
    /// when the command ends.
    #[arg(long)]
    pub(crate) stats: bool,

    /// With --pool: claim and run items one after the other until the pool
    /// is drained; stop at the first command that fails, or after a signal.
    #[arg(long, requires = "pool")]
    pub(crate) all: bool,

    /// With --advisory: take the lock in shared mode (excludes only
    /// exclusive holders).
    #[arg(long, requires = "advisory")]
    pub(crate) shared: bool,

    /// Lease TTL: how long the lease outlives pglock if pglock dies. It is
    /// renewed every third of it.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = duration::parse,
        conflicts_with = "advisory"
    )]
    pub(crate) ttl: Duration,

    /// Give up (exit 75) after waiting this long [default: wait forever].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub(crate) timeout: Option<Duration>,

    /// Do not wait: exit 75 at once if the lock is held.
    #[arg(long, conflicts_with = "timeout")]
    pub(crate) no_wait: bool,

    /// With --lease: a JSON payload stored with the lease, visible to all
    /// (pglock ls).
    #[arg(long, value_name = "JSON", value_parser = JsonParser, requires = "lease")]
    pub(crate) data: Option<Value>,

    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// What `exec` and `elect` share: the command, and how it is stopped.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// After a lost lock or leadership, how long the command has between
    /// SIGTERM and SIGKILL.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = duration::parse
    )]
    pub(crate) grace: Duration,

    /// When the command has ended, how long pglock keeps retrying a release
    /// that fails (database down, failover) before it gives up with exit 71:
    /// the lease may then still be held until its TTL runs out.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        value_parser = duration::parse
    )]
    pub(crate) release_timeout: Duration,

    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<String>,
}

/// Reads `--data`. Unlike clap's own message, a refusal quotes only the
/// start of the value: a 100 KB argument is not echoed back whole.
#[derive(Debug, Clone, Copy)]
struct JsonParser;

/// How much of a refused `--data` value the message quotes.
const QUOTED_VALUE_CHARS: usize = 60;

impl clap::builder::TypedValueParser for JsonParser {
    type Value = Value;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Value, clap::Error> {
        let arg = arg.map_or_else(|| "--data".to_owned(), ToString::to_string);
        let refuse = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{arg}': {why}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| refuse("not valid UTF-8".to_owned()))?;
        serde_json::from_str(text).map_err(|e| {
            refuse(format!(
                "not valid JSON ({e}) in {:?}; e.g. '{{\"step\": 1200}}'",
                crate::report::truncate(text, QUOTED_VALUE_CHARS)
            ))
        })
    }
}
