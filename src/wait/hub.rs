//! The shared LISTEN connection of a [`Locks`](crate::Locks) and its topics:
//! the hub task receives `NOTIFY pglock` and wakes the waiters of the named
//! topic (see the parent module for the protocol).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::{Notify, watch};

use crate::error::{Error, Result};
use crate::sql::CHANNEL;

/// The shared LISTEN connection of one `Locks`.
#[derive(Debug)]
pub(crate) struct Hub {
    state: Arc<HubState>,
    /// Dropped with the hub; the listening task then ends.
    _shutdown: watch::Sender<()>,
    shutdown_rx: watch::Receiver<()>,
    /// The listening task, restarted if it ended (its runtime went away).
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// `None` when LISTEN cannot work (transaction-mode pooler).
    listen_pool: Option<PgPool>,
}

#[derive(Debug)]
struct HubState {
    schema: String,
    topics: Mutex<HashMap<String, Weak<Topic>>>,
    /// Count of successful (re)connects; 0 until the first LISTEN is in place.
    connected: watch::Sender<u64>,
}

/// What one name's waiters wait on.
#[derive(Debug, Default)]
pub(crate) struct Topic {
    /// Every NOTIFY wakes all of these: holders waiting for a release
    /// request, election observers.
    pub(crate) notify: Notify,
    /// Acquirers (lease, claim, permit): every NOTIFY wakes one of them,
    /// the longest registered (tokio's `notify_one` is FIFO), so a release
    /// sends one waiter of this process to look instead of all (a dropped
    /// waiter passes its wake-up on to the next).
    pub(crate) one: Notify,
    /// This process's mark for the topic's acquirers, shared by all of
    /// them (see [`crate::wait`]): written by the first, renewed by
    /// whichever looks when it is due, removed when the last one leaves.
    pub(crate) mark: std::sync::Mutex<crate::wait::MarkState>,
    /// One mark write at a time: the waiters that find the mark due queue
    /// here, and all but the first find it written.
    pub(crate) mark_write: tokio::sync::Mutex<()>,
}

impl Hub {
    /// A hub that listens with `listen_options`, or never (`None`).
    pub(crate) fn new(schema: String, listen_options: Option<PgConnectOptions>) -> Hub {
        // PgListener needs a sqlx pool: a private one, for that connection only.
        let listen_pool = listen_options.map(|o| {
            PgPoolOptions::new()
                .max_connections(2)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy_with(o)
        });
        let (tx, rx) = watch::channel(());
        Hub {
            state: Arc::new(HubState {
                schema,
                topics: Mutex::new(HashMap::new()),
                connected: watch::channel(0).0,
            }),
            _shutdown: tx,
            shutdown_rx: rx,
            task: Mutex::new(None),
            listen_pool,
        }
    }

    /// Whether wake-ups come by NOTIFY; if not, waiters must poll.
    pub(crate) fn listens(&self) -> bool {
        self.listen_pool.is_some()
    }

    /// Subscribes to wake-ups for `name`, once the LISTEN is in place
    /// (at once, and never woken, when there is no LISTEN).
    pub(crate) async fn subscribe(&self, name: &str) -> Result<Arc<Topic>> {
        let topic = {
            let mut topics = self.state.topics.lock().unwrap();
            match topics.get(name).and_then(Weak::upgrade) {
                Some(t) => t,
                None => {
                    let t = Arc::new(Topic::default());
                    topics.insert(name.to_owned(), Arc::downgrade(&t));
                    if topics.len() > 64 && topics.len().is_power_of_two() {
                        topics.retain(|_, w| w.strong_count() > 0);
                    }
                    t
                }
            }
        };
        let Some(listen_pool) = &self.listen_pool else {
            return Ok(topic);
        };
        {
            let mut task = self.task.lock().unwrap();
            if task.as_ref().is_none_or(|t| t.is_finished()) {
                let state = self.state.clone();
                let listen_pool = listen_pool.clone();
                let shutdown = self.shutdown_rx.clone();
                // Waiters wait for this task's own first LISTEN.
                self.state.connected.send_replace(0);
                *task = Some(tokio::spawn(listen(state, listen_pool, shutdown)));
            }
        }
        let mut connected = self.state.connected.subscribe();
        connected
            .wait_for(|n| *n > 0)
            .await
            .map_err(|_| Error::Database(sqlx::Error::PoolClosed))?;
        Ok(topic)
    }
}

impl Hub {
    /// How many waiters of `topic` (a NOTIFY topic: a lease's name, a
    /// pool's `\u{1f}<pool>`) are queued with their mark in place (see
    /// [`MarkState::queued`](crate::wait::MarkState)).
    #[cfg(feature = "internals")]
    pub(crate) fn queued(&self, topic: &str) -> usize {
        let topic = self
            .state
            .topics
            .lock()
            .unwrap()
            .get(topic)
            .and_then(Weak::upgrade);
        topic.map_or(0, |t| t.mark.lock().unwrap().queued)
    }
}

impl HubState {
    fn wake(&self, name: &str) {
        let topic = self
            .topics
            .lock()
            .unwrap()
            .get(name)
            .and_then(Weak::upgrade);
        if let Some(t) = topic {
            t.notify.notify_waiters();
            t.one.notify_one();
        }
    }

    fn wake_all(&self) {
        let topics: Vec<Arc<Topic>> = self
            .topics
            .lock()
            .unwrap()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for t in topics {
            t.notify.notify_waiters();
            t.one.notify_waiters();
        }
    }
}

async fn listen(state: Arc<HubState>, listen_pool: PgPool, mut shutdown: watch::Receiver<()>) {
    let prefix = format!("{}:", state.schema);
    let mut backoff = Duration::from_millis(50);
    loop {
        let connect = async {
            let mut l = PgListener::connect_with(&listen_pool).await?;
            l.ignore_pool_close_event(true);
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = connect => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "pglock LISTEN connection failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        backoff = Duration::from_millis(50);
        state.connected.send_modify(|n| *n += 1);
        state.wake_all();
        loop {
            let next = tokio::select! {
                n = listener.try_recv() => n,
                _ = shutdown.changed() => return,
            };
            match next {
                Ok(Some(n)) => {
                    if let Some(name) = n.payload().strip_prefix(&prefix) {
                        state.wake(name);
                    }
                }
                // Connection lost: notifications may have been missed.
                // try_recv reconnects and re-LISTENs on the next call.
                Ok(None) => {
                    state.connected.send_modify(|n| *n += 1);
                    state.wake_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pglock LISTEN connection lost; reconnecting");
                    state.wake_all();
                    break;
                }
            }
        }
    }
}
