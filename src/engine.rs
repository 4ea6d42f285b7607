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

use crate::sql::{ENGINE_LOCK, ENGINE_LOCK_OTHER, ENGINE_UNLOCK, REPLICATION};

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
/// refuses a server that has standbys but whose commits wait for none
/// (asynchronous replication: a failover can lose acquisitions), or only
/// warns with `allow_async` ([`LocksBuilder::allow_async_replication`]).
///
/// Four round trips on `first`, two on a second connection opened with
/// `options`; only at migrate time.
///
/// [`LocksBuilder::allow_async_replication`]: crate::LocksBuilder::allow_async_replication
pub(crate) async fn check(
    first: &mut PgConnection,
    options: &sqlx::postgres::PgConnectOptions,
    allow_async: bool,
) -> crate::Result<()> {
    let key = check_key();
    let held: bool = sqlx::query_scalar(ENGINE_LOCK)
        .bind(key)
        .fetch_one(&mut *first)
        .await?;
    let mut second = PgConnection::connect_with(options).await?;
    let also: Result<bool, sqlx::Error> = sqlx::query_scalar(ENGINE_LOCK_OTHER)
        .bind(key)
        .fetch_one(&mut second)
        .await;
    let _ = second.close().await;
    let _: Option<bool> = sqlx::query_scalar(ENGINE_UNLOCK)
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
    let (sync_names, sync_commit, standbys): (String, String, i64) =
        sqlx::query_as(REPLICATION).fetch_one(&mut *first).await?;
    let Some(why) = not_replicated(&sync_names, &sync_commit, standbys) else {
        return Ok(());
    };
    if allow_async {
        tracing::warn!(
            standbys,
            "{why}: a failover can lose acquisitions, hand a lease to a second holder and \
             reissue fencing tokens (allowed by LocksBuilder::allow_async_replication)"
        );
        return Ok(());
    }
    Err(crate::Error::invalid(
        "allow_async_replication",
        format!(
            "{why}: a failover can lose acquisitions, hand a lease to a second holder and \
             reissue fencing tokens; use synchronous replication (Patroni: synchronous_mode: \
             true), or accept the risk with LocksBuilder::allow_async_replication(true) \
             (CLI: --allow-async-replication)"
        ),
    ))
}

/// Why commits on a server with `standbys` streaming standbys do not wait
/// for one, if they do not: no synchronous standby named, or pglock's
/// sessions commit with `synchronous_commit` below `on`.
fn not_replicated(sync_names: &str, sync_commit: &str, standbys: i64) -> Option<String> {
    if standbys == 0 {
        None
    } else if sync_names.trim().is_empty() {
        Some(format!(
            "the server has {standbys} standby(s) but synchronous_standby_names is empty \
             (asynchronous replication)"
        ))
    } else if !matches!(sync_commit, "on" | "remote_apply") {
        Some(format!(
            "the server has {standbys} standby(s) but pglock's sessions commit with \
             synchronous_commit = {sync_commit}, which does not wait for a standby's flush"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::not_replicated;

    #[test]
    fn replication_is_checked_only_with_standbys() {
        assert_eq!(not_replicated("", "on", 0), None);
        assert_eq!(not_replicated("\"node2\"", "on", 1), None);
        assert_eq!(not_replicated("*", "remote_apply", 2), None);
        assert!(
            not_replicated(" ", "on", 1)
                .unwrap()
                .contains("synchronous_standby_names")
        );
        assert!(not_replicated("*", "local", 1).unwrap().contains("= local"));
        assert!(not_replicated("*", "remote_write", 1).is_some());
    }
}
