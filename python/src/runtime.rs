//! The one tokio runtime of a process, blocking waits that stay
//! interruptible, and the bridge to asyncio.
//!
//! Fork safety: a forked child has none of the parent's threads, so the
//! parent's runtime (and every connection on it) is unusable there. The
//! runtime is therefore kept per process id: the first use in a child builds
//! a fresh one, and the parent's is leaked, never dropped (dropping it would
//! wait for threads that do not exist, and closing its connections could
//! write to sockets the parent still uses).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;
use pyo3_async_runtimes::generic::{ContextExt, JoinError, Runtime as GenericRuntime};

/// How long a blocking wait runs before it looks for signals (Ctrl-C).
const SIGNAL_SLICE: Duration = Duration::from_millis(50);

/// How long the only thread in [`wait`] yields its CPU in a loop before it
/// sleeps: a few round trips to a server on the same host. An answer within
/// that time reaches a thread that is still running, instead of one the
/// kernel must wake first (measured on a 2-core virtual machine: advisory
/// lock+unlock from one thread went from about 6,100 to 7,400 per second).
/// With more than one thread waiting, each sleeps at once: they would only
/// take CPU time from each other and from the server.
const SPIN: Duration = Duration::from_micros(150);

/// How many threads are in [`wait`] now.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// Counts its thread in [`WAITING`] while it lives.
struct Waiting;

impl Waiting {
    fn enter() -> Waiting {
        WAITING.fetch_add(1, Ordering::Relaxed);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Slot {
    pid: u32,
    runtime: tokio::runtime::Runtime,
}

/// The current process's runtime. Slots come from `Box::leak` and are never
/// freed, so a pointer loaded from here stays valid for the process's life.
static CURRENT: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

/// The tokio runtime of this process, built on first use (again in a forked
/// child).
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    let pid = std::process::id();
    loop {
        let ptr = CURRENT.load(Ordering::Acquire);
        // SAFETY: every non-null pointer stored in CURRENT comes from
        // Box::leak and is never freed or mutated afterwards.
        if let Some(slot) = unsafe { ptr.as_ref() }
            && slot.pid == pid
        {
            return &slot.runtime;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pglock-rt")
            .enable_all()
            .build()
            .expect("pglock: cannot start its tokio runtime");
        let fresh = Box::into_raw(Box::new(Slot { pid, runtime }));
        match CURRENT.compare_exchange(ptr, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // The old slot (a parent's, after fork) is leaked on purpose.
            Ok(_) => {}
            Err(_) => {
                // Another thread installed one first: use that.
                // SAFETY: `fresh` was never shared.
                let lost = unsafe { Box::from_raw(fresh) };
                lost.runtime.shutdown_background();
            }
        }
    }
}

/// Runs `fut` to completion with the GIL released, in slices of
/// [`SIGNAL_SLICE`] that check for signals between them: Ctrl-C raises
/// `KeyboardInterrupt` within one slice and drops the future (pglock's
/// futures are cancel safe, so nothing stays held).
///
/// The future is polled on the calling thread, inside the runtime's context
/// (its sockets and timers register with the runtime, whose worker threads
/// drive them). Between polls the thread waits for the waker: it yields its
/// CPU for up to [`SPIN`] if it is the only waiting thread, then sleeps in
/// [`std::thread::park_timeout`] until the waker or the slice's end. The
/// slice needs no tokio timer, which `block_on(timeout(..))` would register
/// and cancel on every call.
pub(crate) fn wait<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    let rt = runtime();
    // Anything dropped here (the future, a value it left) drops inside the
    // runtime, so a lease's drop can still spawn its release.
    let _context = rt.enter();
    let _waiting = Waiting::enter();
    let wake = Arc::new(ThreadWake {
        woken: AtomicBool::new(false),
        thread: std::thread::current(),
    });
    let waker = Waker::from(wake.clone());
    let mut fut = std::pin::pin!(fut);
    loop {
        let slice = py.detach(|| {
            let mut cx = Context::from_waker(&waker);
            let end = Instant::now() + SIGNAL_SLICE;
            loop {
                if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                    return Some(out);
                }
                // Wait until the waker runs or the slice ends; a wake that
                // came during the poll is already in `woken`.
                let pending = Instant::now();
                while !wake.woken.swap(false, Ordering::Acquire) {
                    let now = Instant::now();
                    if now >= end {
                        return None;
                    }
                    if now - pending < SPIN && WAITING.load(Ordering::Relaxed) == 1 {
                        std::thread::yield_now();
                    } else {
                        std::thread::park_timeout(end - now);
                    }
                }
            }
        });
        match slice {
            Some(out) => return out,
            None => py.check_signals()?,
        }
    }
}

/// The waker of [`wait`]: marks the future as ready to poll and unparks the
/// waiting thread.
struct ThreadWake {
    woken: AtomicBool,
    thread: std::thread::Thread,
}

impl Wake for ThreadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

/// Runs `f` (no await in it) inside the runtime's context, e.g. to drop a
/// lease so its release is spawned.
pub(crate) fn in_context<T>(f: impl FnOnce() -> T) -> T {
    let _context = runtime().enter();
    f()
}

/// An asyncio awaitable for `fut`, run on the runtime. Cancelling the
/// awaitable drops the future.
pub(crate) fn awaitable<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<Rt, _, _>(py, fut)
}

/// [`runtime`] as a pyo3-async-runtimes runtime.
pub(crate) struct Rt;

tokio::task_local! {
    static TASK_LOCALS: std::cell::OnceCell<TaskLocals>;
}

/// A tokio join error for pyo3-async-runtimes.
pub(crate) struct RtJoinError(tokio::task::JoinError);

impl JoinError for RtJoinError {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }
    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        self.0.into_panic()
    }
}

/// A tokio join handle whose error is [`RtJoinError`].
pub(crate) struct RtJoinHandle(tokio::task::JoinHandle<()>);

impl Future for RtJoinHandle {
    type Output = Result<(), RtJoinError>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(RtJoinError))
    }
}

impl GenericRuntime for Rt {
    type JoinError = RtJoinError;
    type JoinHandle = RtJoinHandle;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        RtJoinHandle(runtime().spawn(fut))
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        RtJoinHandle(runtime().spawn_blocking(f))
    }
}

impl ContextExt for Rt {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|c| c.get().cloned())
            .unwrap_or_default()
    }
}
