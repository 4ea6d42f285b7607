//! Maintenance statements: garbage collection of free lease rows and the
//! schema's applied migrations.

/// The versions and checksums of the migrations applied to the schema.
/// -- why: an up-to-date schema makes `migrate` a no-op that needs no CREATE
/// privilege, so that a least-privilege role can run `pglock migrate && …`.
/// A missing table (or no right to read it) is an error, and migrate then
/// goes the full way.
pub(crate) const MIGRATIONS_APPLIED: &str =
    "SELECT version, checksum FROM {s}._pglock_migrations WHERE success";
