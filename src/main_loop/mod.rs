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
mod poll;
mod poller;
mod waker;

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::delivery::Delivery;
use crate::flags::WatchFlags;
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::glue::{Attachments, FdRegistry, Registrar, TimerGlue, TimerQueue, Token, WatchGlue};
use crate::source::Source;
use crate::watch::Watch;

pub use poller::Backend;
use poller::{Events, Poller, Ready};
use waker::Waker;

/// The poller token of the wakeup fd; `Token`s never take this value.
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
    /// The attached sources and their pending dispatches (C16).
    attachments: Attachments,
    quit: AtomicBool,
    /// The runner's token and its buffers: `run_once` holds it for the whole call (a second
    /// runner, or a nested call from a handler, finds it taken and gets `WouldBlock`). No other
    /// code ever takes it, so holding it while handlers run can block nothing (C11).
    runner: Mutex<Scratch>,
    /// The runner is (about to be) blocked in the poller: a change it must notice wakes it.
    /// Set under the state lock (so timer changes, made under it, see it or are seen), and
    /// read with `SeqCst` against the dispatch queue's pending flag.
    polling: AtomicBool,
}

/// What the loop's glue functions and its runner share, behind one lock.
#[derive(Default)]
struct State {
    fds: FdRegistry,
    timers: TimerQueue,
}

/// Buffers reused across iterations.
#[derive(Default)]
struct Scratch {
    events: Events,
    ready: Vec<Ready>,
    handle: Vec<(Watch, WatchFlags)>,
}

/// The poller as the fd registry's host: executes what the registry decides.
struct Host<'a> {
    poller: &'a Poller,
    /// The interest set changed: a poll(2) runner blocked on the old set must be woken (epoll
    /// sees changes made while it waits).
    changed: bool,
}

impl Registrar for Host<'_> {
    type Registration = ();

    fn register(&mut self, fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<()> {
        self.changed = true;
        self.poller.register(fd, token.into_raw(), interest)
    }

    fn reregister(
        &mut self,
        _: &mut (),
        fd: RawFd,
        token: Token,
        interest: WatchFlags,
    ) -> io::Result<()> {
        self.changed = true;
        self.poller.reregister(fd, token.into_raw(), interest)
    }

    fn deregister(&mut self, _: (), fd: RawFd, _: Token) {
        // Closed (so forgotten by the kernel) or never added: nothing to undo either way.
        let _ = self.poller.deregister(fd);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn host(&self) -> Host<'_> {
        Host {
            poller: &self.poller,
            changed: false,
        }
    }

    /// Wakes the runner if it is blocked (or about to block) in the poller; from the loop's
    /// own thread, or while the runner is busy, this costs one atomic load and no system call.
    fn nudge(&self) {
        if self.polling.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// After a registry change: epoll applies it to a wait in progress, poll(2) needs a new
    /// wait.
    fn nudge_if_polled(&self, host: &Host<'_>) {
        if host.changed && self.poller.backend() == Backend::Poll {
            self.nudge();
        }
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
            inner: Arc::new_cyclic(|weak: &Weak<Inner>| {
                let weak = weak.clone();
                Inner {
                    poller,
                    waker,
                    state: Mutex::new(State::default()),
                    // A source with work to dispatch wakes a blocked runner.
                    attachments: Attachments::new(move || {
                        if let Some(inner) = weak.upgrade() {
                            inner.nudge();
                        }
                    }),
                    quit: AtomicBool::new(false),
                    runner: Mutex::new(Scratch::default()),
                    polling: AtomicBool::new(false),
                }
            }),
        })
    }

    /// The backend this loop runs on.
    pub fn backend(&self) -> Backend {
        self.inner.poller.backend()
    }

    /// Glue for a bare [`WatchList`](crate::WatchList): its watches are polled by this loop.
    pub fn watch_functions(&self) -> Box<dyn WatchFunctions> {
        Inner::watch_functions(&self.inner)
    }

    /// Glue for a bare [`TimeoutList`](crate::TimeoutList): its timeouts run on this loop.
    pub fn timeout_functions(&self) -> Box<dyn TimeoutFunctions> {
        Inner::timeout_functions(&self.inner)
    }

    /// Runs `source` on this loop: installs the loop's watch, timeout, wakeup and
    /// dispatch-status functions, then reads the dispatch status once (C16).
    ///
    /// The loop keeps the source alive until [`detach`](Self::detach) (or until the loop is
    /// dropped, which detaches everything): detach a connection when it ends — in its
    /// disconnect handler, say — or it stays attached with nothing to poll.
    ///
    /// The wakeup function it installs writes the loop's eventfd only when the loop is
    /// blocked (or about to block) in its poller, so a producer that calls it for every
    /// message (libdbus does) costs nothing while the loop is running its handlers.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::AlreadyExists`] if the source is attached already (here or to another
    /// loop built on [`glue`](crate::glue)); otherwise the refusal of a watch (its fd is
    /// closed: `EBADF`; a regular file under epoll: `EPERM`). Nothing stays installed then.
    ///
    /// # Panics
    ///
    /// If the source's code panics; nothing stays installed then either.
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<()> {
        let inner = Arc::downgrade(&self.inner);
        let wakeup = Box::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.nudge();
            }
        });
        self.inner
            .attachments
            .attach(
                source,
                self.watch_functions(),
                self.timeout_functions(),
                Some(wakeup),
            )
            .map(drop)
    }

    /// Stops running `source` — any handle of it: it is found by its
    /// [`SourceData`](crate::SourceData) identity — by uninstalling everything
    /// [`attach`](Self::attach) installed. A source not attached here is left alone.
    ///
    /// # Errors
    ///
    /// If the source refuses to uninstall (only when called from inside one of its own list
    /// callbacks); nothing changes then.
    ///
    /// # Panics
    ///
    /// If a free-data or another step panics — after every step has run, so the source is
    /// detached all the same.
    pub fn detach(&self, source: &dyn Source) -> io::Result<()> {
        self.inner.attachments.detach(source).map(drop)
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
        let Some(mut runner) = inner.runner.try_lock() else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the loop is already running on another thread",
            ));
        };
        let scratch = &mut *runner;

        let wait = {
            let mut state = inner.lock();
            let state = &mut *state;
            let mut host = inner.host();
            state.fds.flush(&mut host);
            let mut wait = timeout;
            if !state.timers.is_empty() {
                if let Some(until) = state.timers.wait_time(Instant::now()) {
                    wait = Some(wait.map_or(until, |w| w.min(until)));
                }
            }
            // Under the lock: a timer change made after this sees `polling` and wakes us.
            inner.polling.store(true, Ordering::SeqCst);
            wait
        };
        // After `polling` is set: a source queued from now on wakes us (C16).
        let wait = if inner.attachments.queue().is_pending() {
            Some(Duration::ZERO)
        } else {
            wait
        };
        let waited = inner
            .poller
            .wait(&mut scratch.events, &mut scratch.ready, wait);
        // Relaxed: a nudge that still sees `true` only costs a spurious wakeup.
        inner.polling.store(false, Ordering::Relaxed);

        let mut woken = false;
        let mut due = 0;
        {
            let mut state = inner.lock();
            let state = &mut *state;
            let mut host = inner.host();
            for ready in scratch.ready.drain(..) {
                if ready.token == WAKER {
                    woken = true;
                    continue;
                }
                let token = Token::from_raw(ready.token);
                if ready.closed {
                    state.fds.closed(token, &mut host);
                } else {
                    state
                        .fds
                        .ready(token, ready.condition, &mut host, &mut scratch.handle);
                }
            }
            if !state.timers.is_empty() {
                due = state.timers.collect_due(Instant::now());
            }
        }
        if woken {
            inner.waker.reset();
        }

        // User code from here on: no lock held (C11). A panic propagates to the caller, with
        // the loop as if the panicking call had returned: timeouts collected but not fired
        // stay collected, dispatches not run stay queued, and every source's status is read
        // again (the panic may have come from a status function, taking a notification with
        // it). Ready watches not handled are reported again: the loop is level-triggered.
        let ran = panic::catch_unwind(AssertUnwindSafe(|| {
            self.handle_round(&mut scratch.handle, due)
        }));
        scratch.handle.clear();
        match ran {
            Ok(ran) => waited.map(|()| ran),
            Err(payload) => {
                inner.attachments.queue().schedule_all();
                panic::resume_unwind(payload)
            }
        }
    }

    /// Runs the handlers of one round: ready watches, due timeouts, queued dispatches.
    fn handle_round(&self, ready: &mut Vec<(Watch, WatchFlags)>, due: usize) -> usize {
        let inner = &*self.inner;
        let mut ran = 0;
        for (watch, condition) in ready.drain(..) {
            match watch.handle(condition) {
                Delivery::Delivered => ran += 1,
                // The glue missed (or raced) a toggle — a wrapper around it panicked, say:
                // resync now, so the fd is not polled for nothing again. (A watch removed
                // behind the glue's back is dropped by the registry at its next report.)
                Delivery::Disabled => {
                    let mut state = inner.lock();
                    let state = &mut *state;
                    if let Some(token) = watch.fd().and_then(|fd| state.fds.token_of(fd)) {
                        let mut host = inner.host();
                        state
                            .fds
                            .report(token, &watch, Delivery::Disabled, &mut host);
                    }
                }
                Delivery::NotRequested | Delivery::Removed => {}
            }
        }
        if due > 0 {
            // One at a time, so a handler that restarts or removes a later one is obeyed.
            ran += inner.fire_due();
        }
        // Dispatch last, so that work the handlers above just queued (a message read this
        // round) is dispatched this round rather than after another wait.
        ran + inner.attachments.queue().run(DISPATCH_BATCH)
    }

    /// How many fds are registered with the poller right now (the wakeup fd not counted). An
    /// fd whose watches were all disabled stays registered until it reports something
    /// (NOTES 38); an fd whose watches were all removed is never counted.
    pub fn registered_fds(&self) -> usize {
        self.inner.lock().fds.registered()
    }

    /// How many fds were found closed, or reused by another file, while watches still used
    /// them, and dropped (C15).
    pub fn dropped_fds(&self) -> usize {
        self.inner.lock().fds.dropped()
    }

    /// How many timeouts the loop tracks.
    pub fn timeouts(&self) -> usize {
        self.inner.lock().timers.len()
    }

    /// How many sources are attached (and so kept alive by the loop).
    pub fn sources(&self) -> usize {
        self.inner.attachments.len()
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

/// The loop's watch functions: the registry with the poller as its host. epoll applies a
/// change to a wait in progress; a poll(2) runner blocked on the old set is woken.
impl WatchGlue for Inner {
    type Registration = ();
    type Host<'a> = Host<'a>;
    const GONE: &'static str = "MainLoop";

    fn with_fds<T>(self: &Arc<Self>, f: impl FnOnce(&mut FdRegistry, &mut Host<'_>) -> T) -> T {
        let mut host = self.host();
        let out = f(&mut self.lock().fds, &mut host);
        self.nudge_if_polled(&host);
        out
    }
}

/// The loop's timeout functions: a change wakes a blocked runner, which reads its next
/// deadline again.
impl TimerGlue for Inner {
    const GONE: &'static str = "MainLoop";

    fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T {
        f(&mut self.lock().timers)
    }

    fn timers_changed(&self) {
        self.nudge();
    }
}

impl fmt::Debug for MainLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("MainLoop")
            .field("backend", &self.inner.poller.backend())
            .field("registered_fds", &state.fds.registered())
            .field("timeouts", &state.timers.len())
            .field("sources", &self.inner.attachments.len())
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
