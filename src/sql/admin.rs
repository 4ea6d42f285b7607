//! Maintenance statements: garbage collection of free lease rows and the
//! schema's applied migrations.

/// Delete plain lease rows that are free (released or expired) and have not
/// changed for `$1` milliseconds. -- why: a lease row outlives its holder so
/// that the next acquire finds it; a service that leases per-job names
/// leaves one row per job behind. Only plain leases (`pool = ''`): a pool's
/// item rows are its membership (done items included: they must not be
/// claimed again) and a semaphore's permits are its rows. Deleting a row
/// loses no fencing: tokens come from one sequence, so the next acquire of
/// the name still gets a greater token. `SKIP LOCKED`: a row that an
/// acquire or a fenced transaction is touching now is left for next time.
pub(crate) const LEASE_GC: &str = "\
WITH old AS (
    SELECT pool, name FROM {s}.leases
     WHERE pool = '' AND (owner IS NULL OR expires_at <= clock_timestamp())
       AND greatest(updated_at, expires_at) < clock_timestamp() - $1 * interval '1 millisecond'
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {s}.leases l USING old
     WHERE l.pool = old.pool AND l.name = old.name
    RETURNING 1
), aged AS (
    DELETE FROM {s}.waiters WHERE until < clock_timestamp()
)
SELECT count(*) FROM gone";

/// The versions and checksums of the migrations applied to the schema.
/// -- why: an up-to-date schema makes `migrate` a no-op that needs no CREATE
/// privilege, so that a least-privilege role can run `pglock migrate && …`.
/// A missing table (or no right to read it) is an error, and migrate then
/// goes the full way.
pub(crate) const MIGRATIONS_APPLIED: &str =
    "SELECT version, checksum FROM {s}._pglock_migrations WHERE success";
