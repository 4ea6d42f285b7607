//! Installing and upgrading pglock's schema.
//!
//! The SQL lives in `migrations/` at the root of the crate, one file per
//! version. The files use unqualified names and expect `search_path` to point
//! at the target schema, so a team that runs its own migration tool can apply
//! them as they are. [`Locks::migrate`](crate::Locks::migrate) does it for
//! you: it creates the schema, sets `search_path` on a connection of its own,
//! and records applied versions in `<schema>._pglock_migrations`, never in
//! the application's `_sqlx_migrations`. Concurrent migrations (two processes
//! starting at once) serialize on sqlx's migration advisory lock and both
//! succeed. Behind a transaction-mode pooler it runs on
//! [`LocksBuilder::session_options`](crate::LocksBuilder::session_options).

use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor, PgConnection};

use crate::error::Result;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name of pglock's own migrations table, inside its schema.
pub const MIGRATIONS_TABLE: &str = "_pglock_migrations";

/// The newest schema version this build of pglock knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// The versions and checksums of the migrations applied to a schema.
/// `{s}` stands for the quoted schema. -- why: an up-to-date schema makes
/// `migrate` a no-op that needs no CREATE privilege, so that a
/// least-privilege role can run `pglock migrate && …`. A missing table (or
/// no right to read it) is an error, and migrate then goes the full way.
const APPLIED: &str = "SELECT version, checksum FROM {s}._pglock_migrations WHERE success";

/// Whether every migration this build knows is applied, with the same
/// checksum: then there is nothing to do (and nothing that needs rights
/// beyond reading the migrations table).
async fn up_to_date(locks: &crate::Locks) -> bool {
    let inner = &locks.inner;
    let sql = APPLIED.replace("{s}", &inner.quoted_schema);
    let applied: Vec<(i64, Vec<u8>)> = match sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .persistent(!inner.transaction_pooler)
        .fetch_all(&inner.pool)
        .await
    {
        Ok(rows) => rows,
        Err(_) => return false,
    };
    MIGRATIONS.iter().all(|m| {
        applied
            .iter()
            .any(|(v, c)| *v == m.version && c[..] == m.checksum[..])
    })
}

pub(crate) async fn run(locks: &crate::Locks) -> Result<()> {
    let inner = &locks.inner;
    if up_to_date(locks).await {
        return Ok(());
    }
    let options = match &inner.session_options {
        Some(o) => o.clone(),
        // sqlx's migrator holds a session advisory lock across statements.
        None if inner.transaction_pooler => {
            return Err(crate::Error::invalid(
                "migrate",
                "migrate needs a session (it holds a session advisory lock); behind a \
                 transaction-mode pooler give LocksBuilder::session_options(..) a direct or \
                 session-mode connection, or migrate through a direct pool",
            ));
        }
        None => (*inner.pool.connect_options()).clone(),
    };
    let mut conn = PgConnection::connect_with(&options).await?;
    let result = async {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET search_path TO {}",
            inner.quoted_schema
        )))
        .await?;
        let mut migrator = Migrator::with_migrations(MIGRATIONS.iter().cloned().collect());
        migrator.create_schema(inner.quoted_schema.clone());
        migrator.dangerous_set_table_name(format!("{}.{MIGRATIONS_TABLE}", inner.quoted_schema));
        migrator.run_direct(None, &mut conn, false).await?;
        Ok(())
    }
    .await;
    let _ = conn.close().await;
    result
}
