//! Setup shared by the examples: the database (`DATABASE_URL`, or a
//! throwaway PostgreSQL started for the run) and a fresh, migrated schema.

#[path = "../../tests/support/cluster.rs"]
mod cluster;

use pglock::Locks;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A pool on the example database, and a `Locks` on `schema`, emptied and
/// migrated.
pub async fn fresh_schema(schema: &str) -> Result<(PgPool, Locks), Box<dyn std::error::Error>> {
    let db = PgPoolOptions::new()
        .max_connections(8)
        .connect(&cluster::shared_url())
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&db)
    .await?;
    let locks = Locks::builder(db.clone()).schema(schema).build()?;
    locks.migrate().await?;
    Ok((db, locks))
}

/// The URL of the example database, for worker processes to connect to
/// (the throwaway server lives as long as the process that started it).
#[allow(dead_code)] // only some examples start worker processes
pub fn database_url() -> String {
    cluster::shared_url()
}
