//! pglock's exceptions, and the one mapping from [`pglock::Error`] to them.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    pglock,
    Error,
    PyException,
    "Base class of every pglock error."
);
create_exception!(
    pglock,
    Timeout,
    Error,
    "The lock or lease was not obtained within the timeout."
);
create_exception!(
    pglock,
    LeaseLost,
    Error,
    "The lease (or advisory lock) is no longer held by this owner."
);
create_exception!(
    pglock,
    InvalidInput,
    Error,
    "An argument broke a rule; nothing was sent to the database."
);
create_exception!(
    pglock,
    PoolDrained,
    Error,
    "Every item of the pool is done (or the pool is empty): waiting could never end."
);
create_exception!(
    pglock,
    DatabaseError,
    Error,
    "The database reported an error, the connection failed, or the schema is not migrated."
);

/// The Python exception for a pglock error, with the crate's message.
pub(crate) fn to_py(e: pglock::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        pglock::Error::Timeout { .. } => Timeout::new_err(msg),
        pglock::Error::LeaseLost { .. } | pglock::Error::LockLost { .. } => LeaseLost::new_err(msg),
        pglock::Error::InvalidInput { .. } => InvalidInput::new_err(msg),
        pglock::Error::PoolDrained { .. } => PoolDrained::new_err(msg),
        _ => DatabaseError::new_err(msg),
    }
}

/// `InvalidInput` for a Python-side check, worded like the crate's.
pub(crate) fn invalid(field: &str, rule: impl std::fmt::Display) -> PyErr {
    InvalidInput::new_err(format!("invalid {field}: {rule}"))
}

/// `Error` for a handle used in a process it does not belong to (a forked
/// child using what its parent held).
pub(crate) fn foreign(what: &str) -> PyErr {
    Error::new_err(format!(
        "{what} belongs to the parent process (pid changed since it was acquired, e.g. after \
         fork); the parent still holds it: acquire your own in this process"
    ))
}

/// Registers the exception classes on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("Error", py.get_type::<Error>())?;
    m.add("Timeout", py.get_type::<Timeout>())?;
    m.add("LeaseLost", py.get_type::<LeaseLost>())?;
    m.add("InvalidInput", py.get_type::<InvalidInput>())?;
    m.add("PoolDrained", py.get_type::<PoolDrained>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    Ok(())
}
