//! Inputs reach SQL only as bind parameters or validated identifiers, and a
//! least-privilege role runs every operation but `migrate` (which, for it,
//! succeeds only when the schema is already up to date).

mod support;

use std::time::Duration;

use pglock::{Error, Locks};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use support::db;

const NASTY: &[&str] = &[
    "'; DROP TABLE canary; --",
    "\"; DROP SCHEMA public CASCADE; --",
    "$$; DELETE FROM canary; $$",
    "x' OR '1'='1",
    "\\'; TRUNCATE canary; --",
    "名前/ünïcödé \u{1f}sep",
    "%s %n {s} $1",
];

#[tokio::test]
async fn injection_attempts_through_every_string_parameter_change_nothing_else() {
    let t = db().await;
    let canary = format!("\"{}\".canary", t.schema);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {canary} (v int); INSERT INTO {canary} VALUES (1), (2)"
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    let locks = &t.locks;
    for (i, s) in NASTY.iter().enumerate() {
        let s = s.to_string();
        // Leases: name, holder, data.
        let lease = locks
            .lease(s.clone())
            .holder(s.clone())
            .data(json!({ s.clone(): s.clone() }))
            .try_acquire()
            .await
            .unwrap()
            .expect("free");
        assert_eq!(lease.name(), s);
        lease.set_data(json!([s.clone()])).await.unwrap();
        let mut tx = t.pool.begin().await.unwrap();
        lease.fence(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
        assert!(
            locks
                .leases()
                .await
                .unwrap()
                .iter()
                .any(|l| l.name == s && l.holder.as_deref() == Some(&*s))
        );
        assert_eq!(
            locks.request_release(&s).await.unwrap(),
            Some(lease.token())
        );
        lease.release().await.unwrap();
        assert_eq!(locks.force_release(&s).await.unwrap(), None);
        // Pools: pool and item names, holder.
        let pool = locks.lease_pool(s.clone());
        assert_eq!(pool.add([s.clone(), format!("{s}-{i}")]).await.unwrap(), 2);
        let item = pool
            .claim()
            .holder(s.clone())
            .try_acquire()
            .await
            .unwrap()
            .expect("an item");
        assert_eq!(item.pool(), Some(&*s));
        item.complete().await.unwrap();
        assert_eq!(pool.status().await.unwrap().done, 1);
        assert_eq!(pool.items().await.unwrap().len(), 2);
        assert_eq!(pool.force_release(&s).await.unwrap(), None);
        assert_eq!(pool.request_release(&s).await.unwrap(), None);
        // Semaphores, rate limiters, advisory keys.
        let permit = locks
            .semaphore(format!("sem {s}"), 2)
            .try_acquire()
            .await
            .unwrap()
            .expect("permit");
        permit.release().await.unwrap();
        assert!(
            locks
                .rate_limiter(s.clone(), 3, Duration::from_secs(1))
                .try_acquire()
                .await
                .unwrap()
        );
        let guard = locks
            .advisory(s.clone())
            .try_lock()
            .await
            .unwrap()
            .expect("advisory");
        guard.release().await.unwrap();
        let mut tx = t.pool.begin().await.unwrap();
        locks.advisory(s.clone()).lock_xact(&mut tx).await.unwrap();
        tx.commit().await.unwrap();
    }
    // Schema names are identifiers or nothing.
    for s in NASTY {
        let err = Locks::builder(t.pool.clone())
            .schema(*s)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidInput {
                    field: "schema",
                    ..
                }
            ),
            "{err}"
        );
    }
    let rows: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT v FROM {canary} ORDER BY v"
    )))
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(rows, vec![1, 2], "the canary table changed");
    let public: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'")
            .fetch_one(&t.pool)
            .await
            .unwrap();
    assert_eq!(public, 1);
}

/// The grants the README documents for an application role.
fn grants(schema: &str, role: &str) -> Vec<String> {
    vec![
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA \"{schema}\" TO {role}"),
        format!("GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO {role}"),
        format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA \"{schema}\" TO {role}"),
    ]
}

#[tokio::test]
async fn a_least_privilege_role_runs_every_operation_but_migrate() {
    let t = db().await;
    let role = format!("app_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw' NOSUPERUSER NOCREATEDB"
    )))
    .execute(&t.pool)
    .await
    .unwrap();
    for g in grants(&t.schema, &role) {
        sqlx::query(sqlx::AssertSqlSafe(g))
            .execute(&t.pool)
            .await
            .unwrap();
    }
    let options = (*t.pool.connect_options())
        .clone()
        .username(&role)
        .password("pw");
    let app_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let locks = Locks::builder(app_pool.clone())
        .schema(t.schema.clone())
        .holder("app")
        .build()
        .unwrap();

    let lease = locks
        .lease("shard-1")
        .ttl(Duration::from_secs(5))
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .keep_alive();
    lease.renew().await.unwrap();
    lease.set_data(json!({"step": 1})).await.unwrap();
    let mut tx = app_pool.begin().await.unwrap();
    lease.fence(&mut tx).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        locks.request_release("shard-1").await.unwrap(),
        Some(lease.token())
    );
    assert!(!locks.leases().await.unwrap().is_empty());
    lease.release().await.unwrap();
    locks
        .lease("shard-1")
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .orphan();
    assert!(locks.force_release("shard-1").await.unwrap().is_some());

    let pool = locks.lease_pool("trials");
    pool.add(["a", "b"]).await.unwrap();
    pool.claim()
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .complete()
        .await
        .unwrap();
    pool.claim()
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    assert_eq!(pool.status().await.unwrap().done, 1);
    locks
        .semaphore("gpu", 2)
        .try_acquire()
        .await
        .unwrap()
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(
        locks
            .rate_limiter("api", 5, Duration::from_secs(1))
            .try_acquire()
            .await
            .unwrap()
    );
    locks
        .advisory("k")
        .lock()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    // The schema is already at the latest version: migrate by this role is
    // a no-op success (an entrypoint `pglock migrate && …` works for it).
    locks
        .migrate()
        .await
        .expect("an up-to-date schema needs no DDL");

    // No DDL: migrate is refused.
    let other_schema = format!("x_{}", uuid::Uuid::new_v4().simple());
    let err = Locks::builder(app_pool.clone())
        .schema(other_schema)
        .build()
        .unwrap()
        .migrate()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Migrate(_) | Error::Database(_)),
        "{err}"
    );
    app_pool.close().await;
    drop(locks);
}
