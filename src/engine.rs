//! Checks that the server pglock talks to can keep its promises: a primary
//! (not a standby in recovery), whose advisory locks exclude, and, when it
//! has replicas, whose commits wait for one (so a failover keeps every
//! acquisition and token).
//!
//! Engines that speak PostgreSQL's protocol do not all lock: CockroachDB's
//! session advisory lock functions always succeed, some YugabyteDB versions
//! pretend. A hot standby takes advisory locks that exclude nothing on the
//! primary.

use sqlx::{Connection, PgConnection};

/// The error for a connection that reached a standby: never used, so that
/// a lock or lease is only ever taken on the primary.
pub(crate) fn standby_refused() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "the server is a standby (pg_is_in_recovery() is true); pglock only uses a primary: \
         route its connections to the primary (e.g. HAProxy checking Patroni's GET /primary, \
         or target_session_attrs=read-write)",
    ))
}

/// A random advisory key for the exclusion check, so concurrent `migrate`
/// calls do not see each other's check.
fn check_key() -> i64 {
    (uuid::Uuid::new_v4().as_u128() as i64) & 0x7fff_ffff_ffff_ffff
}

/// Run by `Locks::migrate` on its connection `first`: the same advisory key
/// from a second session must be refused while `first` holds it; then
/// warns if the server has replicas but commits wait for none.
///
/// Three round trips on `first`, two on a second connection opened with
/// `options`; only at migrate time.
pub(crate) async fn check(
    first: &mut PgConnection,
    options: &sqlx::postgres::PgConnectOptions,
) -> crate::Result<()> {
    let key = check_key();
    let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *first)
        .await?;
    let mut second = PgConnection::connect_with(options).await?;
    let also: Result<bool, sqlx::Error> =
        sqlx::query_scalar("SELECT pg_try_advisory_lock($1) AND pg_advisory_unlock($1)")
            .bind(key)
            .fetch_one(&mut second)
            .await;
    let _ = second.close().await;
    let _: Option<bool> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_optional(&mut *first)
        .await?;
    if !held || also? {
        return Err(crate::Error::invalid(
            "database",
            "advisory locks do not exclude on this server (one session's \
             pg_try_advisory_lock did not stop another's): it is not PostgreSQL, or not one \
             that locks (CockroachDB, some YugabyteDB versions); pglock refuses to run on it",
        ));
    }
    let (sync_names, replicas): (String, i64) = sqlx::query_as(
        "SELECT current_setting('synchronous_standby_names'), \
         (SELECT count(*) FROM pg_stat_replication)",
    )
    .fetch_one(&mut *first)
    .await?;
    if replicas > 0 && sync_names.trim().is_empty() {
        tracing::warn!(
            replicas,
            "the server replicates asynchronously (synchronous_standby_names is empty): a \
             failover can lose acquisitions, hand a lease to a second holder and reissue \
             fencing tokens; use synchronous replication (Patroni: synchronous_mode: true)"
        );
    }
    Ok(())
}
