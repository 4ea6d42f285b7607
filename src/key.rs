//! Names, keys and the rules they follow.
//!
//! # Advisory keys
//!
//! PostgreSQL advisory locks live in a 64-bit key space. pglock accepts an
//! [`i64`] as is, and maps a string to that space **in the server** with
//! `hashtextextended(key, 0)`, so any `psql` session, Python job or shell
//! script can take the same lock:
//!
//! ```sql
//! SELECT pg_advisory_lock(hashtextextended('ckpt/run-42', 0));
//! ```
//!
//! The mapping is wire-stable: pglock pins it with a test that compares the
//! server's answer for known strings with fixed values, for example
//! `hashtextextended('ckpt/run-42', 0) = -8823199534297203464`.
//!
//! # Names
//!
//! Lease, pool and item names are non-empty UTF-8 strings of at most 1 KiB
//! without NUL bytes. Schema names are identifiers: an ASCII letter or `_`,
//! then letters, digits, `_` or `$`, at most 63 bytes; pglock always quotes
//! them.

use std::fmt;

use crate::error::{Error, Result};
use crate::sql::advisory::KeyKind;

/// Longest accepted lease, pool, item or advisory key name, in bytes
/// ([`Locks::MAX_NAME_BYTES`](crate::Locks::MAX_NAME_BYTES)).
pub(crate) const MAX_NAME_BYTES: usize = 1024;

/// A key in the advisory lock space: a raw `i64`, or a string that the
/// server hashes with `hashtextextended(key, 0)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AdvisoryKey {
    /// A raw 64-bit key, passed to `pg_advisory_lock(bigint)` unchanged.
    Int(i64),
    /// A string key, locked as `pg_advisory_lock(hashtextextended(key, 0))`.
    Text(String),
}

impl AdvisoryKey {
    pub(crate) fn validate(&self) -> Result<()> {
        match self {
            AdvisoryKey::Int(_) => Ok(()),
            AdvisoryKey::Text(s) => validate_name("advisory key", s),
        }
    }

    /// How the key travels to the server.
    pub(crate) fn kind(&self) -> KeyKind {
        match self {
            AdvisoryKey::Int(_) => KeyKind::Int,
            AdvisoryKey::Text(_) => KeyKind::Text,
        }
    }

    /// Binds the key as `$1`: `int8` for an integer key, `text` for a
    /// string key (the statement hashes it).
    pub(crate) fn bind<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            AdvisoryKey::Int(k) => query.bind(*k),
            AdvisoryKey::Text(s) => query.bind(s.clone()),
        }
    }
}

impl fmt::Display for AdvisoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdvisoryKey::Int(k) => write!(f, "{k}"),
            AdvisoryKey::Text(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<i64> for AdvisoryKey {
    fn from(k: i64) -> Self {
        AdvisoryKey::Int(k)
    }
}

impl From<&str> for AdvisoryKey {
    fn from(s: &str) -> Self {
        AdvisoryKey::Text(s.to_owned())
    }
}

impl From<String> for AdvisoryKey {
    fn from(s: String) -> Self {
        AdvisoryKey::Text(s)
    }
}

impl From<&String> for AdvisoryKey {
    fn from(s: &String) -> Self {
        AdvisoryKey::Text(s.clone())
    }
}

/// Checks a lease, pool, item or key name.
pub(crate) fn validate_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes, got {}", name.len()),
        ));
    }
    if name.contains('\0') {
        return Err(Error::invalid(field, "must not contain NUL bytes"));
    }
    Ok(())
}

/// Largest accepted JSON payload of a lease, serialized
/// ([`LeaseRequest::MAX_DATA_BYTES`](crate::LeaseRequest::MAX_DATA_BYTES)).
pub(crate) const MAX_DATA_BYTES: usize = 64 * 1024;

/// Checks a lease's JSON payload.
pub(crate) fn validate_data(data: &serde_json::Value) -> Result<()> {
    let len = serde_json::to_vec(data)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if len > MAX_DATA_BYTES {
        return Err(Error::invalid(
            "data",
            format!("JSON must be at most {MAX_DATA_BYTES} bytes, got {len}"),
        ));
    }
    Ok(())
}

/// Checks that `value` of `field` lies in `1..=max`.
pub(crate) fn validate_count(field: &'static str, what: &str, value: u32, max: u32) -> Result<()> {
    if !(1..=max).contains(&value) {
        return Err(Error::invalid(
            field,
            format!("{what}must be between 1 and {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Checks a schema name and returns it quoted for SQL.
pub(crate) fn quote_schema(schema: &str) -> Result<String> {
    const FIELD: &str = "schema";
    let mut chars = schema.chars();
    let Some(first) = chars.next() else {
        return Err(Error::invalid(FIELD, "must not be empty"));
    };
    if schema.len() > 63 {
        return Err(Error::invalid(
            FIELD,
            format!("must be at most 63 bytes, got {}", schema.len()),
        ));
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(Error::invalid(
            FIELD,
            format!("{schema:?} must start with an ASCII letter or '_'"),
        ));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
        return Err(Error::invalid(
            FIELD,
            format!("{schema:?} may hold only ASCII letters, digits, '_' and '$'"),
        ));
    }
    if schema.starts_with("pg_") {
        return Err(Error::invalid(
            FIELD,
            format!("{schema:?} must not start with \"pg_\""),
        ));
    }
    // The rules above leave nothing to escape; quoting keeps the case.
    Ok(format!("\"{schema}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_rules() {
        assert_eq!(quote_schema("jobs_locks").unwrap(), "\"jobs_locks\"");
        assert_eq!(quote_schema("Jobs$1").unwrap(), "\"Jobs$1\"");
        for bad in [
            "",
            "1abc",
            "a b",
            "a\"b",
            "a;drop",
            "pg_x",
            &"a".repeat(64),
            "é",
        ] {
            assert!(
                matches!(
                    quote_schema(bad),
                    Err(Error::InvalidInput {
                        field: "schema",
                        ..
                    })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn name_rules() {
        assert!(validate_name("lease name", "shard-17").is_ok());
        assert!(validate_name("lease name", &"x".repeat(1024)).is_ok());
        for bad in ["", "a\0b", &"x".repeat(1025)] {
            let err = validate_name("lease name", bad).unwrap_err();
            assert!(err.to_string().starts_with("invalid lease name: "), "{err}");
        }
    }
}
