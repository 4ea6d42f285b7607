//! The few statements the command line sends itself, to tell people who
//! holds what. Everything that takes, renews or releases goes through the
//! library. `{s}` stands for the quoted schema.

/// Who holds a lease (or pool item) now, and for how long still, by the
/// database clock. -- why: the "not obtained" message and the live status
/// line name the holder; the library only says that it is held.
pub(crate) const LEASE_HOLDER: &str = "\
SELECT holder, token,
       (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::int8 AS expires_in_ms
  FROM {s}.leases
 WHERE pool = $1 AND name = $2 AND owner IS NOT NULL AND expires_at > clock_timestamp()";

/// What became of a lease after it was lost. -- why: "lost" alone does not
/// tell an operator whether it was force-released, taken over or expired.
pub(crate) const LEASE_NOW: &str = "\
SELECT token, holder, owner IS NULL AS released,
       owner IS NOT NULL AND expires_at > clock_timestamp() AS held
  FROM {s}.leases
 WHERE pool = $1 AND name = $2";

/// Sessions holding a string advisory key (granted only, this database).
/// -- why: the "not obtained" message and the status line name them.
/// `since` is the session's last state change: for a session idling on its
/// lock, about when it took it.
pub(crate) const ADVISORY_HOLDERS: &str = "\
SELECT l.pid, coalesce(a.application_name, '') AS application_name,
       l.mode = 'ShareLock' AS shared,
       (extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.backend_start)) * 1000)::int8
           AS held_for_ms
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended($1, 0)
 ORDER BY l.pid";

/// Every advisory lock held in this database, for `pglock ls`. -- why: the
/// library keeps no registry of advisory locks; `pg_locks` is the truth, and
/// shows the locks of psql sessions and other languages too. A one-`bigint`
/// key (`objsubid = 1`) is rebuilt from its two halves; a two-`int4` key is
/// shown as its pair.
pub(crate) const ADVISORY_HELD: &str = "\
SELECT l.pid, coalesce(a.application_name, '') AS application_name,
       l.mode = 'ShareLock' AS shared,
       CASE WHEN l.objsubid = 1 THEN (l.classid::int8 << 32) | l.objid::int8 END AS key,
       l.classid::int8 AS key_high, l.objid::int8 AS key_low,
       coalesce(a.state_change, a.backend_start) AS since,
       (extract(epoch FROM clock_timestamp() - coalesce(a.state_change, a.backend_start)) * 1000)::int8
           AS held_for_ms
  FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
 ORDER BY since NULLS LAST, l.pid";

/// Fills in the schema, quoted. The library has already checked that it is
/// a plain identifier; quotes are doubled all the same.
pub(crate) fn with_schema(template: &str, schema: &str) -> String {
    template.replace("{s}", &format!("\"{}\"", schema.replace('"', "\"\"")))
}
