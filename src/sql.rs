//! Every SQL statement pglock sends, one named constant each, with why it
//! looks the way it does. Statements on pglock's tables are templates: the
//! quoted schema replaces `{schema}` once, when a [`Locks`](crate::Locks) is
//! built (see `Statements`).
//!
//! The advisory lock statements, which name no table, are in
//! [`advisory`]; the lease statements in [`lease`], the pool statements in
//! [`pool`].

mod admin;
pub(crate) mod advisory;
mod lease;
mod pool;

use admin::{LEASE_GC, MIGRATIONS_APPLIED};

use lease::{
    ANNOUNCE, ITEM_ABANDON, ITEM_COMPLETE, ITEM_RELEASE, LEASE_ABANDON, LEASE_ACQUIRE, LEASE_FENCE,
    LEASE_FORCE_RELEASE, LEASE_GET, LEASE_HANDOFF, LEASE_LIST, LEASE_RELEASE,
    LEASE_RELEASE_REQUESTED, LEASE_RENEW, LEASE_REQUEST_RELEASE, LEASE_SET_DATA, SET_FENCE,
    WAIT_MARK, WAIT_UNMARK,
};
use pool::{
    EXPIRED, FREE, POOL_ADD, POOL_CLAIM, POOL_ITEMS, POOL_RAISE, POOL_STATUS, POOL_WAIT, RETRIED,
    STICKY,
};

/// The NOTIFY channel of every pglock schema on a database. Payloads are
/// `<schema>:<name>`; a waiter on `<name>` wakes, looks at the row, and goes
/// back to sleep if there is nothing for it.
pub(crate) const CHANNEL: &str = "pglock";

/// Take one token from a bucket of capacity `$2` refilled at `$2` per `$3`
/// seconds, by the database clock, in one statement. A new bucket starts
/// full. `taken` says whether a token was taken; otherwise `wait_s` is how
/// long until the next one. The row lock serializes concurrent takers, and
/// `greatest` keeps the refill time from going backwards when one of them
/// waited for another.
const RATE_TAKE: &str = "\
WITH now AS (SELECT clock_timestamp() AS t)
INSERT INTO {s}.rate_limits AS r (name, tokens, refilled_at)
SELECT $1, $2 - 1, t FROM now
ON CONFLICT (name) DO UPDATE SET
    tokens = CASE
        WHEN least($2, r.tokens + greatest(0, extract(epoch FROM (SELECT t FROM now) - r.refilled_at)) * $2 / $3) >= 1
        THEN least($2, r.tokens + greatest(0, extract(epoch FROM (SELECT t FROM now) - r.refilled_at)) * $2 / $3) - 1
        ELSE least($2, r.tokens + greatest(0, extract(epoch FROM (SELECT t FROM now) - r.refilled_at)) * $2 / $3)
    END,
    last_taken = least($2, r.tokens + greatest(0, extract(epoch FROM (SELECT t FROM now) - r.refilled_at)) * $2 / $3) >= 1,
    refilled_at = greatest(r.refilled_at, (SELECT t FROM now))
RETURNING r.last_taken AS taken,
          CASE WHEN r.last_taken THEN 0 ELSE (1 - r.tokens) * $3 / $2 END::float8 AS wait_s";

/// The statements on pglock's tables, with the schema filled in once.
/// Reachable only with the unstable `internals` feature, for pglock's own
/// tests and benchmarks (which time the same SQL sent raw).
#[derive(Debug)]
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub struct Statements {
    pub lease_acquire: String,
    pub lease_renew: String,
    pub lease_set_data: String,
    pub lease_release: String,
    pub lease_handoff: String,
    pub item_release: String,
    pub item_complete: String,
    pub lease_fence: String,
    pub set_fence: String,
    pub announce: String,
    pub lease_abandon: String,
    pub item_abandon: String,
    pub lease_request_release: String,
    pub lease_release_requested: String,
    pub lease_force_release: String,
    pub lease_list: String,
    pub lease_get: String,
    pub pool_add: String,
    pub pool_claim: String,
    pub pool_claim_retry: String,
    pub pool_claim_plain: String,
    pub pool_claim_plain_retry: String,
    pub pool_takeover: String,
    pub pool_takeover_retry: String,
    pub pool_wait: String,
    pub pool_raise: String,
    pub pool_status: String,
    pub pool_items: String,
    pub rate_take: String,
    pub migrations_applied: String,
    pub lease_gc: String,
    pub wait_mark: String,
    pub wait_unmark: String,
}

impl Statements {
    pub(crate) fn new(quoted_schema: &str) -> Self {
        let s = |template: &str| template.replace("{s}", quoted_schema);
        let claim = |probes: &[&str]| POOL_CLAIM.replace("{probes}", &probes.concat());
        Statements {
            lease_acquire: s(LEASE_ACQUIRE),
            lease_renew: s(LEASE_RENEW),
            lease_set_data: s(LEASE_SET_DATA),
            lease_release: s(LEASE_RELEASE),
            lease_handoff: s(LEASE_HANDOFF),
            item_release: s(ITEM_RELEASE),
            item_complete: s(ITEM_COMPLETE),
            lease_fence: s(LEASE_FENCE),
            set_fence: s(SET_FENCE),
            announce: s(ANNOUNCE),
            lease_abandon: s(LEASE_ABANDON),
            item_abandon: s(ITEM_ABANDON),
            lease_request_release: s(LEASE_REQUEST_RELEASE),
            lease_release_requested: s(LEASE_RELEASE_REQUESTED),
            lease_force_release: s(LEASE_FORCE_RELEASE),
            lease_list: s(LEASE_LIST),
            lease_get: s(LEASE_GET),
            pool_add: s(POOL_ADD),
            pool_claim: s(&claim(&[STICKY, FREE])),
            pool_claim_retry: s(&claim(&[RETRIED, STICKY, FREE])),
            pool_claim_plain: s(&claim(&[FREE])),
            pool_claim_plain_retry: s(&claim(&[RETRIED, FREE])),
            pool_takeover: s(&claim(&[EXPIRED])),
            pool_takeover_retry: s(&claim(&[RETRIED, EXPIRED])),
            pool_wait: s(POOL_WAIT),
            pool_raise: s(POOL_RAISE),
            pool_status: s(POOL_STATUS),
            pool_items: s(POOL_ITEMS),
            rate_take: s(RATE_TAKE),
            migrations_applied: s(MIGRATIONS_APPLIED),
            lease_gc: s(LEASE_GC),
            wait_mark: s(WAIT_MARK),
            wait_unmark: s(WAIT_UNMARK),
        }
    }
}

/// Which server session answers: two client connections that get the same
/// one, or one whose answer changes, lead through a transaction-mode pooler
/// (`engine::refuse_undeclared_pooler`).
pub(crate) const BACKEND_PID: &str = "SELECT pg_backend_pid()";

/// `migrate`'s engine check, first session: take a random advisory key.
pub(crate) const ENGINE_LOCK: &str = "SELECT pg_try_advisory_lock($1)";

/// `migrate`'s engine check, second session: the key held by the first must
/// be refused here (given back at once if an engine grants it anyway).
pub(crate) const ENGINE_LOCK_OTHER: &str =
    "SELECT pg_try_advisory_lock($1) AND pg_advisory_unlock($1)";

/// `migrate`'s engine check, first session: give the key back.
pub(crate) const ENGINE_UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// `migrate`'s replication check, one round trip: the standbys streaming
/// from this server (physical walsenders: a logical subscriber or a base
/// backup loses no acquisition in a failover; rows without `state`, as a
/// role without `pg_read_all_stats` sees them, count), whether commits wait
/// for one, and the `synchronous_commit` pglock's sessions run with (they
/// raise `off` to `on`).
pub(crate) const REPLICATION: &str = "\
SELECT current_setting('synchronous_standby_names') AS sync_names,
       CASE current_setting('synchronous_commit') WHEN 'off' THEN 'on'
            ELSE current_setting('synchronous_commit') END AS sync_commit,
       (SELECT count(*) FROM pg_stat_replication r
         WHERE r.state IS DISTINCT FROM 'backup'
           AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s
                            WHERE s.active_pid = r.pid AND s.slot_type = 'logical')) AS standbys";

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOL.md documents every statement for other languages, as a
    /// template over `{schema}`: it must show each exactly as pglock sends
    /// it, and no other statement between its `sql:begin`/`sql:end` markers.
    #[test]
    fn protocol_documents_every_statement_verbatim() {
        let doc = include_str!("../PROTOCOL.md");
        let st = Statements::new("{schema}");
        let statements = [
            ("acquire", &st.lease_acquire),
            ("renew", &st.lease_renew),
            ("set data", &st.lease_set_data),
            ("release", &st.lease_release),
            ("hand-off", &st.lease_handoff),
            ("fence", &st.lease_fence),
            ("set fence", &st.set_fence),
            ("announce", &st.announce),
            ("request release", &st.lease_request_release),
            ("release requested", &st.lease_release_requested),
            ("force release", &st.lease_force_release),
            ("list", &st.lease_list),
            ("item release", &st.item_release),
            ("abandon", &st.lease_abandon),
            ("item abandon", &st.item_abandon),
            ("item complete", &st.item_complete),
            ("pool add", &st.pool_add),
            ("pool claim", &st.pool_claim),
            ("pool claim retry", &st.pool_claim_retry),
            ("plain claim", &st.pool_claim_plain),
            ("plain claim retry", &st.pool_claim_plain_retry),
            ("takeover", &st.pool_takeover),
            ("takeover retry", &st.pool_takeover_retry),
            ("pool wait", &st.pool_wait),
            ("pool raise", &st.pool_raise),
            ("pool status", &st.pool_status),
            ("pool items", &st.pool_items),
            ("rate take", &st.rate_take),
            ("gc", &st.lease_gc),
            ("wait mark", &st.wait_mark),
            ("wait unmark", &st.wait_unmark),
        ];
        for (name, sql) in statements {
            assert!(
                doc.contains(sql.as_str()),
                "PROTOCOL.md lacks the {name} statement:\n{sql}"
            );
        }
        let begin = doc.find("<!-- sql:begin -->").expect("sql:begin marker");
        let end = doc.find("<!-- sql:end -->").expect("sql:end marker");
        let shown: Vec<&str> = doc[begin..end]
            .split("```sql\n")
            .skip(1)
            .map(|b| {
                b.split("```")
                    .next()
                    .unwrap()
                    .trim_end()
                    .trim_end_matches(';')
            })
            .collect();
        for block in &shown {
            assert!(
                statements.iter().any(|(_, sql)| sql.as_str() == *block),
                "PROTOCOL.md shows a statement pglock does not send:\n{block}"
            );
        }
        assert_eq!(shown.len(), statements.len(), "one block per statement");
    }
}
