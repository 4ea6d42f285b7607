//! Waking waiters: one LISTEN connection per [`Locks`](crate::Locks), shared
//! by every task that waits for a lease or a pool item.
//!
//! Release, force-release and request-release send
//! `NOTIFY pglock, '<schema>:<name>'` in the same statement as the change;
//! release and force-release only when a waiter has marked itself in
//! `<schema>.waiters` ([`Mark`]), since every NOTIFY serializes commits on
//! the server. The hub's task receives it and wakes the waiters of that
//! name (and only them). A waiter ([`until_done`]) subscribes after its
//! first look fails, then makes sure its topic is marked, and re-arms its
//! wake-up before every later look, so a release between a look and the
//! sleep that follows is never missed. The waiters of one topic in one
//! `Locks` share one mark ([`MarkState`]); the last to stop waiting (done,
//! timed out or cancelled) removes it, in a task, from `Drop`; a mark whose
//! removal was lost ages out after [`MARK_TTL`]. The connection is opened
//! on first need, beside the caller's pool, and reopened if it drops; after a
//! reconnect every waiter is woken once, since notifications sent while the
//! connection was down are lost.
//!
//! Behind a transaction-mode pooler without a session connection
//! ([`LocksBuilder::session_options`](crate::LocksBuilder::session_options))
//! there is no hub task: LISTEN would not work there. Topics are then never
//! notified, and waiters wake at their own deadlines (the holder's expiry,
//! at most `MAX_WAIT`), which every wait loop has anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tracing::Instrument;

use crate::db::{Db, Repeat};
use crate::error::{Error, Result};
use crate::metrics::{self, Kind};

pub(crate) mod hub;

pub(crate) use hub::{Hub, Topic};

/// The payload that wakes the waiters of `topic` in `schema`.
pub(crate) fn payload(schema: &str, topic: &str) -> String {
    format!("{schema}:{topic}")
}

/// Longest a waiter sleeps between looks: a safety net for a wake-up lost
/// with a silently dead LISTEN connection (or a pooler that drops NOTIFY).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(2);

/// How long a waiter whose look lost its connection waits before it looks
/// again (a failover takes seconds; a restart less).
const RECONNECT_WAIT: Duration = Duration::from_millis(250);

/// Whether `e` says the server went away or cannot be reached now (a dead
/// connection, a refused connect, a standby where the primary was), not
/// that the statement failed: a waiter looks again.
fn connection_lost(e: &Error) -> bool {
    match e {
        Error::Database(e) => {
            crate::session::is_dead(e)
                || matches!(e, sqlx::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::ConnectionRefused)
        }
        _ => false,
    }
}

/// How long a waiter's mark counts without renewal: a waiter that died
/// costs releases of its topic a NOTIFY nobody hears for at most this long.
pub(crate) const MARK_TTL: Duration = Duration::from_secs(20);

/// A waiter renews its mark once it is this old (it wakes for it if
/// nothing else wakes it first).
const MARK_RENEW: Duration = Duration::from_secs(8);

/// The state of one topic's mark in this process (kept in its [`Topic`]):
/// every waiter of the topic in one `Locks` shares one mark, so a hot
/// lease's waiters write it once and renew it every [`MARK_RENEW`], not
/// twice per wait (each write is a commit).
#[derive(Debug, Default)]
pub(crate) struct MarkState {
    /// The mark's waiter id: nil until it is first written, and a new one
    /// after each removal (so a removal still in flight never takes away
    /// the mark written after it).
    waiter: uuid::Uuid,
    /// When the mark was last written (by the client clock: renewed well
    /// before the server would let it age out).
    at: Option<Instant>,
    /// A write was sent under `waiter` (it may have committed even if its
    /// answer never came): removed when the last waiter leaves.
    sent: bool,
    /// The waiters sharing the mark.
    waiting: usize,
    /// Those of them that have looked once more after the mark was
    /// written, and so are in their topic's wake-up queue with the mark in
    /// place (for pglock's own tests: [`Hub::queued`]).
    pub(crate) queued: usize,
}

impl MarkState {
    /// Whether the mark is written and not yet due for renewal.
    fn live(&self) -> bool {
        self.at.is_some_and(|t| t.elapsed() < MARK_RENEW)
    }
}

/// One waiter's share of its topic's mark in `<schema>.waiters`: while
/// any share lives, releases of the topic send their NOTIFY. When the last
/// share is dropped, the mark is removed (in a task).
pub(crate) struct Mark {
    db: Arc<Db>,
    topic: Arc<Topic>,
    payload: String,
    /// Counted in [`MarkState::queued`].
    queued: bool,
}

impl Mark {
    fn new(db: &Arc<Db>, topic: &Arc<Topic>, name: &str) -> Mark {
        topic.mark.lock().unwrap().waiting += 1;
        Mark {
            db: db.clone(),
            topic: topic.clone(),
            payload: payload(&db.schema, name),
            queued: false,
        }
    }

    /// Counts this waiter as queued: it looked after the mark was written.
    fn looked(&mut self) {
        if !self.queued {
            self.queued = true;
            self.topic.mark.lock().unwrap().queued += 1;
        }
    }

    /// Whether the mark is written and not yet due for renewal.
    fn live(&self) -> bool {
        self.topic.mark.lock().unwrap().live()
    }

    /// Writes (or renews) the mark, in one statement, unless another
    /// waiter of the topic just did.
    async fn write(&mut self) -> Result<()> {
        let _one = self.topic.mark_write.lock().await;
        let waiter = {
            let mut m = self.topic.mark.lock().unwrap();
            if m.live() {
                return Ok(());
            }
            if m.waiter.is_nil() {
                m.waiter = uuid::Uuid::new_v4();
            }
            m.sent = true;
            m.waiter
        };
        let sent = Instant::now();
        let ttl_ms = MARK_TTL.as_millis() as i64;
        let p = self.payload.clone();
        self.db
            .fetch_optional(Repeat::Safe, &self.db.sql.wait_mark, move |q| {
                q.bind(p.clone()).bind(waiter).bind(ttl_ms)
            })
            .await?;
        // `waiter` is still the mark's id: it changes only once no share is
        // left, and this one lives.
        self.topic.mark.lock().unwrap().at = Some(sent);
        Ok(())
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        let gone = {
            let mut m = self.topic.mark.lock().unwrap();
            m.waiting -= 1;
            m.queued -= usize::from(self.queued);
            if m.waiting > 0 {
                return;
            }
            let gone = m.sent.then_some(m.waiter);
            *m = MarkState::default();
            gone
        };
        let Some(waiter) = gone else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, p) = (self.db.clone(), std::mem::take(&mut self.payload));
        rt.spawn(async move {
            let gone = db
                .fetch_all(Repeat::Safe, &db.sql.wait_unmark, move |q| {
                    q.bind(p.clone()).bind(waiter)
                })
                .await;
            if let Err(e) = gone {
                tracing::debug!(error = %e, "could not remove a waiter's mark; it ages out");
            }
        });
    }
}

/// What one look at the database found.
pub(crate) enum Look<T> {
    /// Got it.
    Done(T),
    /// Not now: look again after this long (at most [`MAX_WAIT`]), or when
    /// woken.
    Again(Duration),
    /// Not now: look again when woken (or after [`MAX_WAIT`] when there is
    /// no LISTEN to wake us).
    WhenWoken,
}

/// The acquire skeleton every waiting primitive shares: looks with `look`
/// until it is done ([`until_done`]; it also looks again whenever
/// `local()` resolves), giving up with [`Error::Timeout`] after `timeout`.
/// The caller has validated its input before. Each acquire runs in a
/// `pglock.acquire` span and is counted ([`crate::metrics`]).
pub(crate) async fn acquire<T, F, Fut, L, LFut>(
    db: &Arc<Db>,
    (kind, name): (Kind, &str),
    topic: &str,
    timeout: Option<Duration>,
    what: impl FnOnce() -> String,
    (mut look, local): (F, L),
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Look<T>>>,
    L: FnMut() -> LFut,
    LFut: std::future::Future<Output = ()>,
{
    let looks = std::sync::atomic::AtomicU32::new(0);
    let counted = || {
        if looks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            metrics::contended(kind);
        }
        look()
    };
    let wait = within(
        timeout,
        what,
        until_done(&db.hub, Some(db), topic, counted, local),
    );
    observe((kind, name), wait).await
}

/// Awaits the acquire `wait` in a `pglock.acquire` span and counts it
/// ([`crate::metrics`]).
pub(crate) async fn observe<T>(
    (kind, name): (Kind, &str),
    wait: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let started = Instant::now();
    async {
        let out = wait.await;
        let waited = started.elapsed();
        match &out {
            Ok(_) => {
                metrics::acquired(kind, waited);
                metrics::outcome(waited, "acquired");
            }
            Err(Error::Timeout { .. }) => metrics::outcome(waited, "timeout"),
            Err(_) => metrics::outcome(waited, "error"),
        }
        out
    }
    .instrument(metrics::acquire_span(kind, name, true))
    .await
}

/// One look of a `try_` acquire, in a `pglock.try_acquire` span and
/// counted ([`crate::metrics`]): `Ok(None)` when it is held.
pub(crate) async fn try_once<T>(
    (kind, name): (Kind, &str),
    look: impl std::future::Future<Output = Result<Option<T>>>,
) -> Result<Option<T>> {
    async {
        let out = look.await;
        let outcome = match &out {
            Ok(Some(_)) => {
                metrics::acquired(kind, Duration::ZERO);
                "acquired"
            }
            Ok(None) => {
                metrics::contended(kind);
                "held"
            }
            Err(_) => "error",
        };
        metrics::outcome(Duration::ZERO, outcome);
        out
    }
    .instrument(metrics::acquire_span(kind, name, false))
    .await
}

/// Looks with `attempt` until it is done, sleeping between looks until
/// `topic` is notified, `local()` resolves, or the time the last look asked
/// for (at most [`MAX_WAIT`], plus jitter) has passed. Subscribes only after
/// a first look failed, and looks once more right after subscribing, so a
/// wake-up sent between the two is never missed and an uncontended wait
/// starts no LISTEN connection. With `mark` (and a LISTEN), the waiter
/// marks itself ([`Mark`]) after subscribing and before its next look, so
/// that releases notify it; without, it is woken only by statements that
/// always notify (request-release). The first look's errors are returned;
/// after it, a look (or mark) that loses its connection (see
/// [`connection_lost`]) is repeated until the caller's timeout, so a waiter
/// rides over a failover.
pub(crate) async fn until_done<T, F, Fut, L, LFut>(
    hub: &Hub,
    mark: Option<&Arc<Db>>,
    topic_name: &str,
    mut attempt: F,
    mut local: L,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Look<T>>>,
    L: FnMut() -> LFut,
    LFut: std::future::Future<Output = ()>,
{
    if let Look::Done(v) = attempt().await? {
        return Ok(v);
    }
    let topic = hub.subscribe(topic_name).await?;
    let mut mark = mark
        .filter(|_| hub.listens())
        .map(|db| Mark::new(db, &topic, topic_name));
    let queue = if mark.is_some() {
        &topic.one
    } else {
        &topic.notify
    };
    // Registered before each look, so a wake-up sent during the look is
    // kept; renewed only once it fired, so that a waiter keeps its place
    // in `queue` (FIFO) across the looks its own timer sends.
    let mut notified = std::pin::pin!(queue.notified());
    notified.as_mut().enable();
    loop {
        let local = local();
        // Written before the look: see migrations/0004_waiters.sql.
        let marked = match &mut mark {
            Some(m) if !m.live() => match m.write().await {
                Ok(()) => true,
                Err(e) if connection_lost(&e) => false,
                Err(e) => return Err(e),
            },
            Some(_) => true,
            None => false,
        };
        let look = attempt().await;
        if let (Some(m), true, Ok(_)) = (&mut mark, marked, &look) {
            m.looked();
        }
        let sleep = match look {
            Ok(Look::Done(v)) => return Ok(v),
            Ok(Look::Again(d)) => Some(d.min(MAX_WAIT) + jitter()),
            Ok(Look::WhenWoken) if marked => Some(MARK_RENEW),
            Ok(Look::WhenWoken) if hub.listens() && mark.is_none() => None,
            Ok(Look::WhenWoken) => Some(MAX_WAIT + jitter()),
            // The server went away under a waiter (a failover, a restart,
            // a terminated backend): look again on a new connection. Safe:
            // every look takes with an owner id of its own, and a look
            // whose outcome is unknown is given back by that owner id
            // (`Db::take`), so it never frees what a later look took.
            Err(e) if connection_lost(&e) => {
                tracing::warn!(error = %e, "a waiter lost its connection; looking again");
                Some(RECONNECT_WAIT + jitter())
            }
            Err(e) => return Err(e),
        };
        let sleep = async {
            match sleep {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = notified.as_mut() => {
                notified.set(queue.notified());
                notified.as_mut().enable();
            }
            _ = local => {}
            _ = sleep => {}
        }
    }
}

/// Awaits `fut`, turning an elapsed `timeout` into [`Error::Timeout`] on
/// `what()`.
pub(crate) async fn within<T>(
    timeout: Option<Duration>,
    what: impl FnOnce() -> String,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match timeout {
        None => fut.await,
        Some(t) => tokio::time::timeout_at(Instant::now() + t, fut)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: what(),
                    waited: t,
                })
            }),
    }
}

/// Checks a wait's timeout.
pub(crate) fn validate_timeout(t: Duration) -> Result<()> {
    if t.is_zero() {
        return Err(Error::invalid("timeout", "must be above zero"));
    }
    Ok(())
}

/// 0–25 ms, so waiters woken at one expiry do not all arrive at once.
pub(crate) fn jitter() -> Duration {
    Duration::from_micros((uuid::Uuid::new_v4().as_u128() % 25_000) as u64)
}
