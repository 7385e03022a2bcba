//! The built-in event loop, for applications that have none of their own — what libvirt calls
//! its default event implementation.
//!
//! [`MainLoop`] installs itself as the glue of any [`Source`] with
//! [`attach`](MainLoop::attach) and runs it: epoll on Linux, poll(2) elsewhere (selectable
//! with [`MainLoop::with_backend`]), the watches of one fd merged into one registration (C18),
//! level-triggered (C17), periodic timeouts in a heap restarted on enable (C9, C10), sources
//! with queued work dispatched (C16), and a [`LoopHandle`] to quit or wake it from any thread.

#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll;
mod fd_table;
mod poll;
mod poller;
mod timers;
mod waker;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use slab::Slab;

use crate::delivery::Delivery;
use crate::flags::WatchFlags;
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::source::Source;
use crate::status::DispatchStatus;
use crate::timeout::Timeout;
use crate::watch::Watch;

use fd_table::FdTable;
pub use poller::Backend;
use poller::{Poller, Ready};
use timers::TimerHeap;
use waker::Waker;

/// The poller token of the wakeup fd; watch registrations use slab keys, never this.
const WAKER: u64 = u64::MAX;

/// How many times one source is dispatched per iteration before the others get their turn.
const DISPATCH_BATCH: usize = 64;

/// An event loop for applications with none of their own: it runs any [`Source`] — a
/// connection, a server, your own producer — by being its watch and timeout glue.
///
/// `MainLoop` is `Send + Sync`: registrations may change from any thread (a producer's `send`
/// on a worker thread enables its write watch), and such changes wake the loop if it is
/// blocked. One thread runs it at a time, with [`run`](Self::run) or
/// [`run_once`](Self::run_once); handlers run on that thread with no lock held, so they may
/// call anything (C11).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use loopglue::main_loop::MainLoop;
/// use loopglue::testing::SocketPeer;
///
/// let main_loop = MainLoop::new()?;
/// let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
/// let peer = SocketPeer::new(ours, 4096)?;
/// main_loop.attach(Arc::new(peer.clone()))?;
/// std::io::Write::write_all(&mut &theirs, b"hello")?;
/// while peer.received_len() < 5 {
///     main_loop.run_once(Some(Duration::from_secs(5)))?;
/// }
/// assert_eq!(peer.received(), b"hello");
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct MainLoop {
    inner: Arc<Inner>,
}

/// A `Send + Sync` handle that quits or wakes a [`MainLoop`] from any thread.
#[derive(Clone)]
pub struct LoopHandle {
    inner: Weak<Inner>,
}

struct Inner {
    poller: Poller,
    waker: Waker,
    state: Mutex<State>,
    quit: AtomicBool,
    running: AtomicBool,
    /// Buffers reused across iterations; taken out while user code runs.
    scratch: Mutex<Scratch>,
}

#[derive(Default)]
struct State {
    fds: FdTable,
    timers: TimerHeap,
    sources: Slab<Attached>,
    /// Sources whose status turned `DataRemains`, to dispatch next iteration.
    dispatch: Vec<usize>,
    /// The runner is (about to be) blocked in the poller: changes must wake it.
    polling: bool,
}

/// An attached source, held strongly: attaching is what keeps it running, so a source wrapped
/// in a fresh `Arc` at the call (`attach(Arc::new(conn.clone()))`) stays alive. The loop's
/// glue holds the loop only weakly, so there is no cycle: dropping the loop drops its sources'
/// registrations, and `detach` releases a source.
struct Attached {
    source: Arc<dyn Source>,
    queued: bool,
}

#[derive(Default)]
struct Scratch {
    ready: Vec<Ready>,
    handle: Vec<(Watch, WatchFlags)>,
    due: Vec<Timeout>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Wakes the runner if it is blocked: called after every change, under the state lock, so
    /// that a change made between the runner's snapshot and its wait is never missed.
    fn nudge(&self, state: &State) {
        if state.polling {
            self.waker.wake();
        }
    }

    fn queue_dispatch(&self, key: usize) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(attached) = state.sources.get_mut(key) {
            if !attached.queued {
                attached.queued = true;
                state.dispatch.push(key);
            }
        }
        self.nudge(state);
    }
}

impl MainLoop {
    /// A loop on the default backend: epoll on Linux, poll(2) elsewhere.
    ///
    /// # Errors
    ///
    /// If the epoll instance or the wakeup eventfd cannot be created (fd limit reached).
    pub fn new() -> io::Result<MainLoop> {
        MainLoop::with_backend(Backend::default())
    }

    /// A loop on the given backend.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_backend(backend: Backend) -> io::Result<MainLoop> {
        let poller = Poller::new(backend)?;
        let waker = Waker::new()?;
        poller.register(waker.fd(), WAKER, WatchFlags::READABLE)?;
        Ok(MainLoop {
            inner: Arc::new(Inner {
                poller,
                waker,
                state: Mutex::new(State::default()),
                quit: AtomicBool::new(false),
                running: AtomicBool::new(false),
                scratch: Mutex::new(Scratch::default()),
            }),
        })
    }

    /// The backend this loop runs on.
    pub fn backend(&self) -> Backend {
        self.inner.poller.backend()
    }

    /// Glue for a bare [`WatchList`](crate::WatchList): its watches are polled by this loop.
    pub fn watch_functions(&self) -> Box<dyn WatchFunctions> {
        Box::new(LoopWatches(Arc::downgrade(&self.inner)))
    }

    /// Glue for a bare [`TimeoutList`](crate::TimeoutList): its timeouts run on this loop.
    pub fn timeout_functions(&self) -> Box<dyn TimeoutFunctions> {
        Box::new(LoopTimeouts(Arc::downgrade(&self.inner)))
    }

    /// Runs `source` on this loop: installs the loop's watch, timeout, wakeup and
    /// dispatch-status functions, then reads the dispatch status once (C16).
    ///
    /// The loop keeps the source alive until [`detach`](Self::detach) (or until the loop is
    /// dropped): detach a connection when it ends — in its disconnect handler, say — or it
    /// stays attached with nothing to poll.
    ///
    /// # Errors
    ///
    /// If the source refuses the functions (a watch's fd cannot be polled: EBADF, or EPERM for
    /// a regular file under epoll); nothing stays installed then.
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<()> {
        let key = self.inner.lock().sources.insert(Attached {
            source: Arc::clone(&source),
            queued: false,
        });
        let refused = |inner: &Inner, error: crate::Error| {
            inner.lock().sources.try_remove(key);
            io::Error::from(error)
        };
        if let Err(e) = source.set_functions(self.watch_functions(), self.timeout_functions()) {
            return Err(refused(&self.inner, e));
        }
        let inner = Arc::downgrade(&self.inner);
        source.set_wakeup_main_function(Some(Box::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.waker.wake();
            }
        })));
        let inner = Arc::downgrade(&self.inner);
        source.set_dispatch_status_function(Some(Box::new(move |status| {
            if status == DispatchStatus::DataRemains {
                if let Some(inner) = inner.upgrade() {
                    inner.queue_dispatch(key);
                }
            }
        })));
        // Setting the function never calls it: read the status once (C16).
        if source.dispatch_status() == DispatchStatus::DataRemains {
            self.inner.queue_dispatch(key);
        }
        Ok(())
    }

    /// Stops running `source`: uninstalls everything [`attach`](Self::attach) installed.
    ///
    /// # Errors
    ///
    /// If the source refuses to uninstall (only when called from inside one of its own list
    /// callbacks).
    pub fn detach(&self, source: &dyn Source) -> io::Result<()> {
        {
            let mut state = self.inner.lock();
            let key = state
                .sources
                .iter()
                .find(|(_, a)| a.source.data().id() == source.data().id())
                .map(|(key, _)| key);
            if let Some(key) = key {
                state.sources.remove(key);
            }
        }
        source.clear_functions().map_err(io::Error::from)
    }

    /// A handle that quits or wakes this loop from any thread.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Runs until [`LoopHandle::quit`] is called (before or during the run).
    ///
    /// # Errors
    ///
    /// As [`run_once`](Self::run_once).
    ///
    /// # Panics
    ///
    /// If a handler panics; the loop stays usable.
    pub fn run(&self) -> io::Result<()> {
        while !self.inner.quit.swap(false, Ordering::AcqRel) {
            self.run_once(None)?;
        }
        Ok(())
    }

    /// Waits once for readiness, a due timeout, a wakeup or `timeout` (`None`: no limit),
    /// then handles what is ready, fires what is due and dispatches sources with queued work.
    /// Returns how many handlers and dispatches ran.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if another thread is running the loop; otherwise what the poller reports
    /// (never EINTR, which counts as an empty wait).
    ///
    /// # Panics
    ///
    /// If a handler panics; the loop stays usable.
    pub fn run_once(&self, timeout: Option<Duration>) -> io::Result<usize> {
        let inner = &*self.inner;
        if inner.running.swap(true, Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the loop is already running on another thread",
            ));
        }
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _running = Running(&inner.running);
        let mut scratch = std::mem::take(&mut *inner.scratch.lock());

        let wait = {
            let mut state = inner.lock();
            let mut wait = timeout;
            if !state.dispatch.is_empty() {
                wait = Some(Duration::ZERO);
            } else if let Some(due) = state.timers.next_due() {
                let until = due.saturating_duration_since(Instant::now());
                wait = Some(wait.map_or(until, |w| w.min(until)));
            }
            state.polling = true;
            wait
        };
        let waited = inner.poller.wait(&mut scratch.ready, wait);

        let mut woken = false;
        {
            let mut state = inner.lock();
            let state = &mut *state;
            state.polling = false;
            for ready in scratch.ready.drain(..) {
                let key = ready.token as usize;
                if ready.token == WAKER {
                    woken = true;
                } else if ready.closed {
                    state.fds.drop_fd(&inner.poller, key);
                } else {
                    state
                        .fds
                        .ready_watches(key, ready.condition, &mut scratch.handle);
                }
            }
            state.timers.take_due(Instant::now(), &mut scratch.due);
        }
        if woken {
            inner.waker.reset();
        }

        // User code from here on: no lock held (C11). A watch removed by an earlier handler
        // in this round answers `Removed` and is skipped.
        let mut ran = 0;
        for (watch, condition) in scratch.handle.drain(..) {
            if watch.handle(condition) == Delivery::Delivered {
                ran += 1;
            }
        }
        for timeout in scratch.due.drain(..) {
            if timeout.handle() == Delivery::Delivered {
                ran += 1;
            }
        }
        // Dispatch last, so that work the handlers above just queued (a message read this
        // round) is dispatched this round rather than after another wait.
        let dispatch: Vec<(usize, Arc<dyn Source>)> = {
            let mut state = inner.lock();
            let state = &mut *state;
            let keys = std::mem::take(&mut state.dispatch);
            keys.into_iter()
                .filter_map(|key| {
                    let attached = state.sources.get_mut(key)?;
                    attached.queued = false;
                    Some((key, Arc::clone(&attached.source)))
                })
                .collect()
        };
        for (key, source) in dispatch {
            let mut remains = false;
            for _ in 0..DISPATCH_BATCH {
                remains = source.dispatch_status() == DispatchStatus::DataRemains;
                if !remains {
                    break;
                }
                ran += 1;
                remains = source.dispatch() == DispatchStatus::DataRemains;
                if !remains {
                    break;
                }
            }
            if remains {
                // Its status did not change, so no callback will re-queue it: we do.
                inner.queue_dispatch(key);
            }
        }
        *inner.scratch.lock() = scratch;
        waited.map(|()| ran)
    }

    /// How many fds are registered with the poller right now (the wakeup fd not counted).
    pub fn registered_fds(&self) -> usize {
        self.inner.lock().fds.registered()
    }

    /// How many fds were found closed while watches still used them and dropped (C15).
    pub fn dropped_fds(&self) -> usize {
        self.inner.lock().fds.dropped()
    }

    /// How many timeouts the loop tracks.
    pub fn timeouts(&self) -> usize {
        self.inner.lock().timers.len()
    }

    /// How many sources are attached (and so kept alive by the loop).
    pub fn sources(&self) -> usize {
        self.inner.lock().sources.len()
    }
}

impl LoopHandle {
    /// Makes [`MainLoop::run`] return after its current iteration, waking it if it is blocked.
    /// Does nothing if the loop is gone.
    pub fn quit(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.quit.store(true, Ordering::Release);
            inner.waker.wake();
        }
    }

    /// Interrupts the loop's wait, so that it re-reads its registrations and timeouts.
    pub fn wake(&self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.waker.wake();
        }
    }
}

/// The loop's glue, holding the loop weakly (its sources hold the glue): once the loop is
/// gone, `add` refuses and the rest do nothing.
struct LoopWatches(Weak<Inner>);

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the MainLoop was dropped")
}

impl WatchFunctions for LoopWatches {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        let inner = self.0.upgrade().ok_or_else(gone)?;
        let mut state = inner.lock();
        state.fds.add(&inner.poller, watch)?;
        inner.nudge(&state);
        Ok(())
    }

    fn remove(&mut self, watch: &Watch) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.lock();
            state.fds.remove(&inner.poller, watch);
            inner.nudge(&state);
        }
    }

    fn toggled(&mut self, watch: &Watch) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.lock();
            state.fds.toggled(&inner.poller, watch);
            inner.nudge(&state);
        }
    }
}

struct LoopTimeouts(Weak<Inner>);

impl TimeoutFunctions for LoopTimeouts {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let inner = self.0.upgrade().ok_or_else(gone)?;
        let mut state = inner.lock();
        state.timers.insert(timeout, Instant::now());
        inner.nudge(&state);
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.lock();
            state.timers.remove(timeout);
            inner.nudge(&state);
        }
    }

    fn toggled(&mut self, timeout: &Timeout) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.lock();
            state.timers.toggled(timeout, Instant::now());
            inner.nudge(&state);
        }
    }
}

impl fmt::Debug for MainLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("MainLoop")
            .field("backend", &self.inner.poller.backend())
            .field("registered_fds", &state.fds.registered())
            .field("timeouts", &state.timers.len())
            .field("sources", &state.sources.len())
            .finish()
    }
}

impl fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopHandle")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}
