//! The free floor of a pool: every free item has `seq >= free_floor`, so
//! claims scan the free index from there and never walk the entries of
//! items claimed before. A claim whose item lay more than 32 above the
//! floor asks for a raise, which runs here, off the claim's path.

use std::sync::Arc;

use crate::db::{Db, Repeat};

/// Raises `pool`'s free floor in a task of its own, unless a raise of this
/// handle is already under way for it. Best effort: the floor only spares
/// claims the walk over items claimed before, so an error is logged and
/// the next claim far above the floor tries again.
pub(super) fn raise(db: &Arc<Db>, pool: &str) {
    /// Marks the raise ended however its task ends (done, failed, or
    /// dropped with its runtime).
    struct Raising(Arc<Db>, String);
    impl Drop for Raising {
        fn drop(&mut self) {
            self.0.raising.lock().expect("not poisoned").remove(&self.1);
        }
    }
    if !db
        .raising
        .lock()
        .expect("not poisoned")
        .insert(pool.to_owned())
    {
        return;
    }
    let raising = Raising(db.clone(), pool.to_owned());
    tokio::spawn(async move {
        let Raising(db, pool) = &raising;
        let out = db
            .fetch_optional(Repeat::Safe, &db.sql.pool_raise, |q| q.bind(pool))
            .await;
        if let Err(e) = out {
            tracing::debug!(pool = %pool, error = %e, "could not raise the pool's free floor");
        }
    });
}
