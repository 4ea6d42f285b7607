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

use crate::db::Db;
use crate::error::Result;
use crate::session::Pooler;

static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Name of pglock's own migrations table, inside its schema.
pub const MIGRATIONS_TABLE: &str = "_pglock_migrations";

/// The newest schema version this build of pglock knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

pub(crate) async fn run(db: &Db) -> Result<()> {
    let options = match &db.session_options {
        Some(o) => o.clone(),
        // sqlx's migrator holds a session advisory lock across statements.
        None if db.pooler == Pooler::TransactionMode => {
            return Err(crate::error::Error::invalid(
                "migrate",
                "migrate needs a session (it holds a session advisory lock); behind a \
                 transaction-mode pooler give LocksBuilder::session_options(..) a direct or \
                 session-mode connection, or migrate through a direct pool",
            ));
        }
        None => (*db.pool.connect_options()).clone(),
    };
    let mut conn = PgConnection::connect_with(&options).await?;
    let result = async {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET search_path TO {}",
            db.quoted_schema
        )))
        .await?;
        let mut migrator = Migrator::with_migrations(MIGRATIONS.iter().cloned().collect());
        migrator.create_schema(db.quoted_schema.clone());
        migrator.dangerous_set_table_name(format!("{}.{MIGRATIONS_TABLE}", db.quoted_schema));
        migrator.run_direct(None, &mut conn, false).await?;
        Ok(())
    }
    .await;
    let _ = conn.close().await;
    result
}
