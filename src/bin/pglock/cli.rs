//! The command line, as clap reads it: every command, flag and help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration;
use crate::exec_args::{EXEC_HELP, ExecArgs, RunArgs};

/// The heading of the options every command takes.
const GLOBAL: &str = "Global options";

const EXAMPLES: &str = "\
Examples:
  export DATABASE_URL=postgres://app:secret@db.internal:5432/app
  pglock migrate
  pglock exec --lease nightly-report -- ./report.sh
  pglock exec --advisory ckpt/run-42 --timeout 5m -- python save_checkpoint.py
  pglock pool add shards shard-000 shard-001 shard-002
  pglock exec --pool shards --all -- python train.py --shard {}
  pglock ls

Exit codes: the command's own status, or 2 bad arguments, 70 lock lost while
the command ran, 71 the command ended but its lease could not be released (it
may still be held until its TTL), 75 lock not obtained, 126/127 command not
runnable/not found, 128+N pglock interrupted by signal N while waiting, 1 any
other error.";

/// Run any command under a PostgreSQL lock, lease or pool item, and see or
/// repair who holds what.
#[derive(Debug, Parser)]
#[command(name = "pglock", version, after_help = EXAMPLES)]
pub(crate) struct Cli {
    /// PostgreSQL connection URL, e.g. postgres://user:password@host:5432/db.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        global = true,
        help_heading = GLOBAL
    )]
    pub(crate) database_url: Option<String>,

    /// The database URL leads through a transaction-mode pooler (PgBouncer
    /// pool_mode=transaction): pglock then keeps nothing on a server
    /// session between transactions. Advisory locks, waking waiters by
    /// LISTEN and migrate need --session-url; without it, advisory locks
    /// and migrate are refused and waiters poll.
    #[arg(
        long,
        env = "PGLOCK_TRANSACTION_POOLER",
        value_parser = clap::builder::BoolishValueParser::new(),
        global = true,
        help_heading = GLOBAL
    )]
    pub(crate) transaction_pooler: bool,

    /// A URL for what needs a real server session (advisory locks, LISTEN,
    /// migrate): the server itself or a session-mode pooler, same database
    /// as --database-url. Mostly with --transaction-pooler.
    #[arg(
        long,
        env = "PGLOCK_SESSION_URL",
        hide_env_values = true,
        global = true,
        help_heading = GLOBAL
    )]
    pub(crate) session_url: Option<String>,

    /// Schema of pglock's tables.
    #[arg(
        long,
        env = "PGLOCK_SCHEMA",
        default_value = pglock::Locks::DEFAULT_SCHEMA,
        global = true,
        help_heading = GLOBAL
    )]
    pub(crate) schema: String,

    /// Holder label recorded with leases and pool items; a restarted worker
    /// with the same label gets its own pool item back first [default:
    /// hostname:pid]
    #[arg(long, env = "PGLOCK_HOLDER", global = true, help_heading = GLOBAL)]
    pub(crate) holder: Option<String>,

    /// Let `migrate` accept a server that replicates asynchronously (it
    /// warns instead of refusing): a failover there can lose acquisitions
    #[arg(
        long,
        env = "PGLOCK_ALLOW_ASYNC_REPLICATION",
        global = true,
        help_heading = GLOBAL
    )]
    pub(crate) allow_async_replication: bool,

    /// Print nothing but errors and the output asked for.
    #[arg(
        short,
        long,
        global = true,
        conflicts_with = "verbose",
        help_heading = GLOBAL
    )]
    pub(crate) quiet: bool,

    /// Say what happens: acquisitions, releases, signals, exit statuses.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub(crate) verbose: bool,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Install or upgrade pglock's schema (idempotent).
    #[command(after_help = "Example:\n  pglock --database-url postgres://localhost/app migrate")]
    Migrate,

    /// Run a command while holding a lease, an advisory lock or a pool item.
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),

    /// Fill a pool with items, or see how far it is.
    #[command(subcommand, after_help = POOL_HELP)]
    Pool(PoolCommand),

    /// List leases, held pool items and advisory locks.
    #[command(
        after_help = "Examples:\n  pglock ls\n  pglock ls --json | jq '.leases[] | select(.held)'"
    )]
    Ls {
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },

    /// Release a lease (or pool item) whoever holds it.
    #[command(
        after_help = "Examples:\n  pglock release --force nightly-report\n  pglock release --force --pool shards shard-017"
    )]
    Release(ReleaseArgs),

    /// Delete the rows of free (released or expired) plain leases unchanged
    /// for --older-than; pool items and semaphore permits stay.
    #[command(after_help = "Examples:\n  pglock gc\n  pglock gc --older-than 1h")]
    Gc {
        /// Only rows free and unchanged for at least this long.
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = duration::parse)]
        older_than: Duration,
    },

    /// Ask the holder of a lease (or pool item) to let go: a holder running
    /// under `pglock exec` sends its command SIGTERM.
    #[command(
        after_help = "Examples:\n  pglock request-release nightly-report\n  pglock request-release --pool shards shard-017"
    )]
    RequestRelease(TargetArgs),

    /// Campaign in election NAME and run a command while leading it.
    #[command(after_help = ELECT_HELP)]
    Elect(ElectArgs),

    /// Show who leads election NAME (exit 75 if nobody does), or with
    /// --watch one line per new leader.
    #[command(
        after_help = "Output: TOKEN<TAB>VALUE<TAB>HOLDER, one line per leader.\n\nExamples:\n  pglock leader trainer-coordinator\n  pglock leader trainer-coordinator --watch --json"
    )]
    Leader {
        /// The election.
        name: String,
        /// Keep watching: print each new leader once, in token order, until
        /// stopped.
        #[arg(long)]
        watch: bool,
        /// Print JSON (one document per line with --watch).
        #[arg(long)]
        json: bool,
    },
}

const ELECT_HELP: &str = "\
The command runs while this candidate leads: the election's lease
(election/NAME) is renewed meanwhile and released when the command exits.
It gets the variables of exec --lease, plus PGLOCK_ELECTION and PGLOCK_VALUE.
If the leadership is lost, the command gets SIGTERM, then SIGKILL after
--grace, and pglock exits with 70. A dead leader's election passes to a
waiting candidate after --ttl.

Examples:
  pglock elect trainer-coordinator --value 10.0.0.7:29500 --ttl 10s -- ./coordinate.sh
  pglock leader trainer-coordinator --watch";

#[derive(Debug, Args)]
pub(crate) struct ElectArgs {
    /// The election.
    pub(crate) name: String,

    /// The value observers see for this leader [default: the holder label].
    #[arg(long, value_name = "VALUE")]
    pub(crate) value: Option<String>,

    /// Leadership TTL: how long the election stays with pglock if pglock
    /// dies. It is renewed every third of it.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration::parse)]
    pub(crate) ttl: Duration,

    #[command(flatten)]
    pub(crate) run: RunArgs,
}

const POOL_HELP: &str = "\
Examples:
  pglock pool add shards shard-000 shard-001 shard-002
  pglock pool status shards
  pglock exec --pool shards --all -- python train.py --shard {}";

#[derive(Debug, Subcommand)]
pub(crate) enum PoolCommand {
    /// Add items to a pool (idempotent: items already there are kept as
    /// they are).
    #[command(
        after_help = "Examples:\n  pglock pool add shards shard-000 shard-001 shard-002\n  seq -f 'trial-%03g' 1 500 | pglock pool add trials --from-file -"
    )]
    Add {
        /// The pool.
        pool: String,
        /// Items to add. Surrounding whitespace is trimmed, as from a
        /// file; empty items are skipped.
        #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
        items: Vec<String>,
        /// Read items from FILE, one a line (`-` reads standard input).
        /// Surrounding whitespace is trimmed; empty lines are skipped.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },

    /// Count a pool's items: free, held, done.
    #[command(
        after_help = "Examples:\n  pglock pool status shards\n  pglock pool status shards --items --json"
    )]
    Status {
        /// The pool.
        pool: String,
        /// Also list every item with its state and holder.
        #[arg(long)]
        items: bool,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    /// Release it even though another process holds it (required: pglock
    /// exec releases its own leases).
    #[arg(long)]
    pub(crate) force: bool,

    #[command(flatten)]
    pub(crate) target: TargetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct TargetArgs {
    /// The lease name, or the item name with --pool.
    pub(crate) name: String,

    /// NAME is an item of this pool.
    #[arg(long, value_name = "POOL")]
    pub(crate) pool: Option<String>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
