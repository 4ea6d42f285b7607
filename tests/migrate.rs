//! Installing the schema.

mod support;

use pglock::Locks;

#[tokio::test]
async fn concurrent_migrations_all_succeed_and_use_their_own_table() {
    let pool = support::pool().await;
    let schema = format!("m_{}", uuid::Uuid::new_v4().simple());
    let runs = (0..4).map(|_| {
        let locks = Locks::builder(pool.clone())
            .schema(schema.clone())
            .build()
            .unwrap();
        tokio::spawn(async move { locks.migrate().await })
    });
    for r in futures::future::join_all(runs).await {
        r.unwrap().unwrap();
    }
    // Again: idempotent.
    Locks::builder(pool.clone())
        .schema(schema.clone())
        .build()
        .unwrap()
        .migrate()
        .await
        .unwrap();

    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".{} ORDER BY version",
        pglock::MIGRATIONS_TABLE
    )))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions.last().copied(), Some(pglock::latest_version()));
    let sqlx_table: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        sqlx_table, None,
        "pglock must not touch the application's migrations table"
    );
}

#[tokio::test]
async fn schema_names_keep_their_case() {
    let pool = support::pool().await;
    let schema = format!("Mixed_{}", uuid::Uuid::new_v4().simple());
    Locks::builder(pool.clone())
        .schema(schema.clone())
        .build()
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(found, 1);
}
