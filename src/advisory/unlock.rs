//! Waiting for an unlock's answer, for guards on their own sessions, on
//! shared sessions and in sets alike.

use std::time::Duration;

/// Longest wait for an unlock's answer (a query the caller left running on
/// the session delays it); then the session is closed instead.
pub(crate) const UNLOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// The answer of an unlock statement, or an I/O error (the session is then
/// closed) if none came within [`UNLOCK_TIMEOUT`].
pub(crate) async fn unlock_answer(
    query: impl std::future::Future<Output = std::result::Result<bool, sqlx::Error>>,
) -> std::result::Result<bool, sqlx::Error> {
    match tokio::time::timeout(UNLOCK_TIMEOUT, query).await {
        Ok(held) => held,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer to the unlock within {UNLOCK_TIMEOUT:?}"),
        ))),
    }
}
