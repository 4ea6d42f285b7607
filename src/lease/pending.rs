//! Giving back what an acquire took when its caller went away.

use uuid::Uuid;

use crate::Locks;
use crate::session::on_statement_conn;
use crate::wait::{payload, pool_topic};

/// An acquire or claim statement in flight. If its caller goes away before
/// reading the answer (cancelled, timed out, connection lost), the lease it
/// may have taken under this owner id is given back in a spawned task, so a
/// cancelled acquire leaves nothing held.
pub(crate) struct Pending {
    locks: Locks,
    undo: Option<Undo>,
}

enum Undo {
    Lease {
        name: String,
        owner: Uuid,
    },
    Item {
        pool: String,
        holder: String,
        owner: Uuid,
    },
}

impl Pending {
    pub(crate) fn lease(locks: &Locks, name: &str, owner: Uuid) -> Pending {
        Pending {
            locks: locks.clone(),
            undo: Some(Undo::Lease {
                name: name.to_owned(),
                owner,
            }),
        }
    }

    pub(crate) fn item(locks: &Locks, pool: &str, holder: &str, owner: Uuid) -> Pending {
        let undo = Undo::Item {
            pool: pool.to_owned(),
            holder: holder.to_owned(),
            owner,
        };
        Pending {
            locks: locks.clone(),
            undo: Some(undo),
        }
    }

    /// The answer was read: nothing to undo.
    pub(crate) fn disarm(mut self) {
        self.undo = None;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(undo) = self.undo.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let locks = self.locks.clone();
        rt.spawn(async move {
            let inner = &locks.inner;
            let done = match &undo {
                Undo::Lease { name, owner } => on_statement_conn!(once inner.sessions, |c| {
                    inner.query(sqlx::AssertSqlSafe(inner.sql.lease_abandon.as_str()))
                        .bind(name)
                        .bind(owner)
                        .bind(payload(&inner.schema, name))
                        .execute(c)
                })
                .await,
                Undo::Item { pool, holder, owner } => on_statement_conn!(once inner.sessions, |c| {
                    inner.query(sqlx::AssertSqlSafe(inner.sql.item_abandon.as_str()))
                        .bind(pool)
                        .bind(holder)
                        .bind(owner)
                        .bind(payload(&inner.schema, &pool_topic(pool)))
                        .execute(c)
                })
                .await,
            };
            match done {
                Ok(r) if r.rows_affected() > 0 => tracing::debug!("gave back a lease its caller abandoned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not give back an abandoned acquire; it expires with its TTL"),
            }
        });
    }
}
