//! The `pglock.Locks` type: its connect options and the crate handle of
//! the current process (built anew in a forked child). Its Python methods
//! are in `locks.rs`.

use std::sync::Mutex;

use pyo3::prelude::*;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::errors::to_py;
use crate::runtime::in_context;

/// Handle on pglock in one database; cheap to share across threads.
///
/// A forked child that uses its parent's `Locks` gets fresh connections of
/// its own on first use; what the parent holds stays the parent's.
#[pyclass(module = "pglock", frozen)]
pub(crate) struct Locks {
    pub(crate) options: PgConnectOptions,
    pub(crate) schema: String,
    pub(crate) holder: Option<String>,
    pub(crate) max_sessions: Option<u32>,
    pub(crate) statement_connections: Option<u32>,
    /// The crate handle, with the process id that built it. In a forked
    /// child the parent's is forgotten, never dropped (its connections
    /// belong to the parent). Only locked with the GIL held, so never held
    /// across a fork.
    pub(crate) current: Mutex<Option<(u32, pglock::Locks)>>,
}

impl Locks {
    pub(crate) fn build(
        options: &PgConnectOptions,
        schema: &str,
        holder: Option<&str>,
        max_sessions: Option<u32>,
        statement_connections: Option<u32>,
    ) -> PyResult<pglock::Locks> {
        in_context(|| {
            // pglock only reads the pool's connect options; it opens its own
            // connections beside it.
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options.clone());
            let mut b = pglock::Locks::builder(pool).schema(schema);
            if let Some(h) = holder {
                b = b.holder(h);
            }
            if let Some(n) = max_sessions {
                b = b.max_sessions(n);
            }
            if let Some(n) = statement_connections {
                b = b.statement_connections(n);
            }
            b.build().map_err(to_py)
        })
    }

    /// The crate handle of this process (built anew after a fork).
    pub(crate) fn handle(&self) -> PyResult<pglock::Locks> {
        let pid = std::process::id();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match &*cur {
            Some((p, locks)) if *p == pid => return Ok(locks.clone()),
            _ => {}
        }
        if let Some(parents) = cur.take() {
            // Its connections belong to the parent: never close them here.
            std::mem::forget(parents);
        }
        let locks = Locks::build(
            &self.options,
            &self.schema,
            self.holder.as_deref(),
            self.max_sessions,
            self.statement_connections,
        )?;
        *cur = Some((pid, locks.clone()));
        Ok(locks)
    }
}

impl Drop for Locks {
    fn drop(&mut self) {
        let cur = self.current.get_mut().unwrap_or_else(|e| e.into_inner());
        match cur.take() {
            Some((pid, locks)) if pid == std::process::id() => in_context(|| drop(locks)),
            Some(parents) => std::mem::forget(parents),
            None => {}
        }
    }
}
