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

use crate::sql::{BACKEND_PID, ENGINE_LOCK, ENGINE_LOCK_OTHER, ENGINE_UNLOCK, REPLICATION};

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

/// The error for connect options that lead through a transaction-mode
/// pooler that was not declared: pglock's session state (its settings,
/// advisory locks, LISTEN) would land on server connections the pooler
/// hands to other clients.
#[derive(Debug)]
pub(crate) struct UndeclaredPooler;

impl std::fmt::Display for UndeclaredPooler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "these connect options lead through a transaction-mode pooler (two client \
             connections shared one server session): declare it with \
             LocksBuilder::transaction_pooler(true) (CLI: --transaction-pooler), and give \
             LocksBuilder::session_options a direct or session-mode address for advisory \
             locks, LISTEN and migrate",
        )
    }
}

impl std::error::Error for UndeclaredPooler {}

/// Refuses connect options that lead through a transaction-mode pooler
/// (PgBouncer `pool_mode=transaction`) when none was declared. `first` is
/// a new connection; a second one is opened with `options`. Two client
/// connections that report the same backend pid, or one whose pid changes
/// between two statements, share server sessions: a pooler in transaction
/// (or statement) mode. A direct server or a session-mode pooler gives
/// each client connection its own. Run once per set of pglock's
/// connections, before any session state is set; three round trips and one
/// short-lived connection.
pub(crate) async fn refuse_undeclared_pooler(
    first: &mut PgConnection,
    options: &sqlx::postgres::PgConnectOptions,
) -> Result<(), sqlx::Error> {
    use sqlx::Row;
    async fn pid(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::raw_sql(BACKEND_PID).fetch_one(conn).await?.try_get(0)
    }
    let before = pid(first).await?;
    let mut second = PgConnection::connect_with(options).await?;
    let other = pid(&mut second).await;
    let _ = second.close().await;
    let after = pid(first).await?;
    if other? == before || after != before {
        return Err(sqlx::Error::Configuration(Box::new(UndeclaredPooler)));
    }
    Ok(())
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
