//! `MockLoop`: a deterministic loop with a virtual clock, for unit tests of producers.

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::delivery::Delivery;
use crate::flags::WatchFlags;
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::source::Source;
use crate::status::DispatchStatus;
use crate::timeout::Timeout;
use crate::watch::Watch;

/// How many times one source is dispatched in a row before others get their turn.
const DISPATCH_BATCH: usize = 64;

/// One thing the glue was told or did, in [`MockLoop::log`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MockEvent {
    /// A watch was added (its `add` accepted).
    WatchAdded {
        /// [`Watch::id`].
        id: u64,
        /// Its fd.
        fd: RawFd,
        /// What it asks for.
        flags: WatchFlags,
        /// Whether it was enabled when added.
        enabled: bool,
    },
    /// An `add` the mock refused, as told by [`MockLoop::fail_next_add`] or
    /// [`MockLoop::fail_add_at`].
    AddRefused {
        /// The object's id.
        id: u64,
    },
    /// A watch was removed.
    WatchRemoved {
        /// [`Watch::id`].
        id: u64,
        /// Its fd, still answered inside `remove` (C4).
        fd: RawFd,
    },
    /// A watch was enabled or disabled.
    WatchToggled {
        /// [`Watch::id`].
        id: u64,
        /// The new state.
        enabled: bool,
    },
    /// The mock called [`Watch::handle`]. Logged before the call, so what the handler does
    /// follows it in the log; a call on a watch removed meanwhile is not logged.
    WatchHandled {
        /// [`Watch::id`].
        id: u64,
        /// The condition reported.
        condition: WatchFlags,
        /// What `handle` said it did.
        delivery: Delivery,
    },
    /// A timeout was added.
    TimeoutAdded {
        /// [`Timeout::id`].
        id: u64,
        /// Its interval.
        interval: Duration,
        /// Whether it was enabled when added.
        enabled: bool,
    },
    /// A timeout was removed.
    TimeoutRemoved {
        /// [`Timeout::id`].
        id: u64,
    },
    /// A timeout was enabled or disabled.
    TimeoutToggled {
        /// [`Timeout::id`].
        id: u64,
        /// The new state.
        enabled: bool,
    },
    /// A timeout fell due and the mock called [`Timeout::handle`]; logged before the call,
    /// and only if its handler ran.
    TimeoutFired {
        /// [`Timeout::id`].
        id: u64,
        /// The virtual time it fired at.
        at: Duration,
    },
    /// `poll_fds` found an fd closed (`POLLNVAL`, or `EBADF` from `fstat`) and stopped
    /// polling it for the watches that used it (C15). Logged once per fd and discovery.
    FdClosed {
        /// The fd.
        fd: RawFd,
    },
    /// `poll_fds` found that a watch's fd number now names another file than when the watch
    /// was added — its producer closed the fd without removing the watch, and the number was
    /// reused (C15). The mock no longer reports anything to that watch, so one producer's bug
    /// neither feeds nor silences the new owner of the number. Logged once per watch.
    WatchStale {
        /// [`Watch::id`].
        id: u64,
        /// The reused fd number.
        fd: RawFd,
    },
    /// An attached source was dispatched.
    Dispatched,
}

struct Armed {
    timeout: Timeout,
    /// `None`: never — the interval reaches past the end of the clock (C10).
    due: Option<Duration>,
    /// Registration order: breaks ties between timeouts due at the same instant.
    seq: u64,
}

/// A file as `fstat` names it: (device, inode).
type FileId = (u64, u64);

struct Registered {
    watch: Watch,
    /// The file the fd named when the watch was added, if it named one.
    file: Option<FileId>,
    /// Found closed or reused by `poll_fds`: never reported to again (C15).
    stale: bool,
}

/// When a timeout added or restarted at `now` falls due: `None` when the interval reaches past
/// the end of the clock — an interval of `Duration::MAX` means "never" (C10).
fn due_after(now: Duration, interval: Duration) -> Option<Duration> {
    now.checked_add(interval)
}

/// The first panic of a pass over several callbacks; the pass finishes, then it is resumed,
/// so the mock ends up as if each panicking call had returned (C14).
#[derive(Default)]
struct FirstPanic(Option<Box<dyn Any + Send>>);

impl FirstPanic {
    fn call<R>(&mut self, f: impl FnOnce() -> R) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(payload) => {
                self.0.get_or_insert(payload);
                None
            }
        }
    }

    fn resume(self) {
        if let Some(payload) = self.0 {
            panic::resume_unwind(payload);
        }
    }
}

struct MockState {
    now: Duration,
    watches: Vec<Registered>,
    timeouts: Vec<Armed>,
    next_seq: u64,
    log: Vec<MockEvent>,
    fail_next: Option<io::Error>,
    /// Adds still to accept before refusing one.
    fail_in: Option<usize>,
    closed_fds: HashSet<RawFd>,
    /// Held strongly, as `MainLoop` does: attaching keeps a source running until `detach`.
    /// The glue holds this state weakly, so there is no cycle.
    sources: Vec<Arc<dyn Source>>,
    log_not_requested: bool,
}

impl Default for MockState {
    fn default() -> MockState {
        MockState {
            now: Duration::ZERO,
            watches: Vec::new(),
            timeouts: Vec::new(),
            next_seq: 0,
            log: Vec::new(),
            fail_next: None,
            fail_in: None,
            closed_fds: HashSet::new(),
            sources: Vec::new(),
            log_not_requested: true,
        }
    }
}

impl MockState {
    /// Logs the event a call is about to cause, so that whatever the producer does inside the
    /// call is logged after it; `settle` then records how the call went.
    fn open(&mut self, event: MockEvent) -> usize {
        self.log.push(event);
        self.log.len() - 1
    }

    /// Records a call's outcome in the entry `open` made, or drops the entry if the object
    /// turned out to be removed (nothing was called). A log taken meanwhile leaves it alone.
    fn settle(&mut self, at: usize, opened: &MockEvent, delivery: Delivery) {
        if self.log.get(at) != Some(opened) {
            return;
        }
        match (&mut self.log[at], delivery) {
            (_, Delivery::Removed) => {
                self.log.remove(at);
            }
            (MockEvent::WatchHandled { .. }, Delivery::NotRequested) if !self.log_not_requested => {
                self.log.remove(at);
            }
            (MockEvent::WatchHandled { delivery: d, .. }, _) => *d = delivery,
            (MockEvent::TimeoutFired { .. }, Delivery::Delivered) => {}
            (MockEvent::TimeoutFired { .. }, _) => {
                self.log.remove(at);
            }
            _ => {}
        }
    }

    /// Drops registrations of watches whose removal is complete although our `remove` never
    /// heard of it (a glue wrapper panicked before passing it on): they would never be polled
    /// again anyway, having no fd left.
    fn forget_removed(&mut self) {
        self.watches.retain(|r| r.watch.fd().is_some());
    }

    /// Applies failure injection to one `add`; `Err` means refuse it.
    fn admit(&mut self, id: u64) -> io::Result<()> {
        if let Some(error) = self.fail_next.take() {
            self.log.push(MockEvent::AddRefused { id });
            return Err(error);
        }
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                self.log.push(MockEvent::AddRefused { id });
                Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "MockLoop::fail_add_at refused this add",
                ))
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The file `fd` names now.
fn file_id(fd: RawFd) -> nix::Result<FileId> {
    if fd < 0 {
        return Err(nix::errno::Errno::EBADF);
    }
    // SAFETY: the descriptor is only passed to fstat for this call; if it was closed, fstat
    // answers EBADF, and if its number was reused, fstat describes the new file — which is
    // what this asks.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(fd)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.st_dev as u64, stat.st_ino as u64))
}

type Shared = Arc<Mutex<MockState>>;

fn lock(shared: &Shared) -> MutexGuard<'_, MockState> {
    // A producer's panic inside a handler must not poison the mock for the rest of a test.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A deterministic event loop for unit tests: a virtual clock, a log of every call the glue
/// received, readiness you inject, and failures you schedule.
///
/// Attach a producer with [`attach`](Self::attach) (or install
/// [`watch_functions`](Self::watch_functions) on a bare list), then drive it:
/// [`ready`](Self::ready) reports an fd ready, [`advance`](Self::advance) moves the clock and
/// fires due timeouts in deadline order, [`poll_fds`](Self::poll_fds) polls the registered
/// real fds once without blocking, and [`log`](Self::log) tells exactly what happened. Nothing
/// sleeps and nothing reads the wall clock. No lock is held while a producer's code runs, so
/// producers may call anything from their handlers (C11).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use loopglue::testing::{MockEvent, MockLoop};
/// use loopglue::{Timeout, TimeoutList};
///
/// let mock = MockLoop::new();
/// let list = TimeoutList::new();
/// list.set_functions(Some(mock.timeout_functions())).map_err(|e| e.into_error())?;
/// let tick = Timeout::new(Duration::from_millis(10), || {});
/// list.add(&tick)?;
/// assert_eq!(mock.advance(Duration::from_millis(35)), 3); // at 10, 20 and 30 ms
/// assert_eq!(mock.next_deadline(), Some(Duration::from_millis(40)));
/// assert!(mock.log().contains(&MockEvent::TimeoutFired {
///     id: tick.id(),
///     at: Duration::from_millis(20),
/// }));
/// # Ok::<(), loopglue::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct MockLoop {
    shared: Shared,
    wakeups: Arc<AtomicUsize>,
}

impl MockLoop {
    /// A mock at virtual time zero with nothing registered.
    pub fn new() -> MockLoop {
        MockLoop::default()
    }

    /// Glue for a [`WatchList`](crate::WatchList) that registers its watches with this mock.
    pub fn watch_functions(&self) -> Box<dyn WatchFunctions> {
        Box::new(MockWatches(Arc::downgrade(&self.shared)))
    }

    /// Glue for a [`TimeoutList`](crate::TimeoutList) that registers its timeouts with this
    /// mock.
    pub fn timeout_functions(&self) -> Box<dyn TimeoutFunctions> {
        Box::new(MockTimeouts(Arc::downgrade(&self.shared)))
    }

    /// Installs this mock's watch, timeout, wakeup and dispatch-status functions on `source`
    /// and keeps it alive until [`detach`](Self::detach);
    /// sources whose status is [`DispatchStatus::DataRemains`] are dispatched after each
    /// [`ready`](Self::ready), [`advance`](Self::advance) and [`poll_fds`](Self::poll_fds).
    ///
    /// # Errors
    ///
    /// The source's refusal of the watch or timeout functions (its glue `add` failed, for
    /// instance through [`fail_next_add`](Self::fail_next_add)); nothing stays installed then.
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<()> {
        source
            .set_functions(self.watch_functions(), self.timeout_functions())
            .map_err(io::Error::from)?;
        let wakeups = Arc::clone(&self.wakeups);
        source.set_wakeup_main_function(Some(Box::new(move || {
            wakeups.fetch_add(1, Ordering::SeqCst);
        })));
        // The mock asks every source for its status when it dispatches, so the status function
        // only needs to exist; setting it never calls it (C16).
        source.set_dispatch_status_function(Some(Box::new(|_| {})));
        lock(&self.shared).sources.push(source);
        Ok(())
    }

    /// Uninstalls everything [`attach`](Self::attach) installed on `source`.
    ///
    /// # Errors
    ///
    /// If uninstalling was refused (only from inside one of the source's own callbacks).
    pub fn detach(&self, source: &dyn Source) -> io::Result<()> {
        lock(&self.shared)
            .sources
            .retain(|s| s.data().id() != source.data().id());
        source.clear_functions().map_err(io::Error::from)
    }

    /// The virtual time since the mock was created.
    pub fn now(&self) -> Duration {
        lock(&self.shared).now
    }

    /// Whether reports that reached no handler because the watch did not ask for them
    /// ([`Delivery::NotRequested`]) are logged as [`MockEvent::WatchHandled`]. On by default;
    /// turn it off when a read and a write watch share a busy socket and the log should show
    /// only what producers heard.
    pub fn set_log_not_requested(&self, log: bool) {
        lock(&self.shared).log_not_requested = log;
    }

    /// Moves the clock forward by `by` (saturating at `Duration::MAX`), firing every timeout
    /// that falls due on the way, in deadline order (registration order breaks ties),
    /// periodic ones again and again (C10). Returns how many fired.
    ///
    /// Periods are fixed-delay, as C10 says: the next period starts when the mock calls the
    /// timeout's `handle` (in virtual time nothing is ever late, so that is its due time). A
    /// zero interval fires once per millisecond; an interval that reaches past the end of the
    /// clock never falls due.
    ///
    /// # Panics
    ///
    /// If a handler or a dispatch panics: the advance still goes all the way to its end,
    /// firing and dispatching everything else, and then the first panic is passed on — the
    /// mock is left as if every panicking call had returned.
    pub fn advance(&self, by: Duration) -> usize {
        let mut panics = FirstPanic::default();
        let end = lock(&self.shared).now.saturating_add(by);
        let mut fired = 0;
        loop {
            let next = {
                let mut state = lock(&self.shared);
                let due = state
                    .timeouts
                    .iter_mut()
                    .filter(|a| a.timeout.is_enabled() && a.due.is_some_and(|due| due <= end))
                    .min_by_key(|a| (a.due, a.seq));
                match due {
                    Some(armed) => {
                        let at = armed.due.unwrap_or(end);
                        let period = armed.timeout.interval().max(Duration::from_millis(1));
                        armed.due = due_after(at, period);
                        let timeout = armed.timeout.clone();
                        state.now = at;
                        Some((timeout, at))
                    }
                    None => {
                        state.now = end;
                        None
                    }
                }
            };
            let Some((timeout, at)) = next else { break };
            let event = MockEvent::TimeoutFired {
                id: timeout.id(),
                at,
            };
            let entry = lock(&self.shared).open(event.clone());
            // A handler that panicked had run: it counts as fired, and its entry stays.
            let delivery = panics
                .call(|| timeout.handle())
                .unwrap_or(Delivery::Delivered);
            {
                let mut state = lock(&self.shared);
                state.settle(entry, &event, delivery);
                if delivery == Delivery::Removed {
                    // Its glue `remove` never reached us (a wrapper panicked before passing it
                    // on, say): forget it rather than fire it forever.
                    state.timeouts.retain(|a| a.timeout != timeout);
                }
            }
            if delivery == Delivery::Delivered {
                fired += 1;
            }
            self.dispatch_all(&mut panics);
        }
        self.dispatch_all(&mut panics);
        panics.resume();
        fired
    }

    /// Reports `condition` on `fd`: every enabled watch of that fd is handled (C18). Returns
    /// how many handlers ran.
    ///
    /// # Panics
    ///
    /// If a handler or a dispatch panics, once every other watch of the fd has heard the
    /// report and the sources are dispatched.
    pub fn ready(&self, fd: RawFd, condition: WatchFlags) -> usize {
        let mut panics = FirstPanic::default();
        let mut state = lock(&self.shared);
        state.forget_removed();
        let targets: Vec<(Watch, WatchFlags)> = state
            .watches
            .iter()
            .filter(|r| !r.stale && r.watch.is_enabled() && r.watch.fd() == Some(fd))
            .map(|r| (r.watch.clone(), condition))
            .collect();
        drop(state);
        let delivered = self.deliver(targets, &mut panics);
        self.dispatch_all(&mut panics);
        panics.resume();
        delivered
    }

    /// Polls the registered real fds once, without blocking, and handles what is ready —
    /// real sockets, virtual time. Returns how many handlers ran.
    ///
    /// A producer that breaks C15 costs nothing worse than a log entry: an fd found closed
    /// (`POLLNVAL`, or `EBADF` from `fstat`) is logged as [`MockEvent::FdClosed`] and no longer
    /// polled for the watches that used it, and a watch whose fd number now names another
    /// file than when it was added (`fstat` device and inode) is logged as
    /// [`MockEvent::WatchStale`] and never reported to again — the fd's new owner is polled
    /// and served alone.
    ///
    /// # Panics
    ///
    /// Never for a closed or reused fd; if a handler or a dispatch panics, once every other
    /// ready watch has been handled and the sources dispatched.
    pub fn poll_fds(&self) -> usize {
        let mut panics = FirstPanic::default();
        let (interest, targets) = self.live_interest();
        if interest.is_empty() {
            self.dispatch_all(&mut panics);
            panics.resume();
            return 0;
        }
        let mut pollfds: Vec<PollFd<'_>> = interest
            .iter()
            .map(|(fd, flags)| {
                // SAFETY: `live_interest` just found each fd open (fstat) or, for an fd that
                // named no file when its watch was added, trusts C15; one closed since comes
                // back as POLLNVAL, which is handled below, never read through.
                let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
                PollFd::new(fd, PollFlags::from_bits_truncate(flags.to_poll_events()))
            })
            .collect();
        if poll(&mut pollfds, PollTimeout::ZERO).is_err() {
            // EINTR or EINVAL: nothing was reported; the next call polls again.
            return 0;
        }
        let mut ready: Vec<(RawFd, WatchFlags)> = Vec::new();
        for ((fd, _), pollfd) in interest.iter().zip(&pollfds) {
            let revents = pollfd.revents().unwrap_or(PollFlags::empty());
            if revents.contains(PollFlags::POLLNVAL) {
                let mut state = lock(&self.shared);
                state.closed_fds.insert(*fd);
                for r in state
                    .watches
                    .iter_mut()
                    .filter(|r| r.watch.fd() == Some(*fd))
                {
                    r.stale |= r.file.is_some();
                }
                state.log.push(MockEvent::FdClosed { fd: *fd });
                continue;
            }
            let condition = WatchFlags::from_poll_revents(revents.bits());
            if !condition.is_empty() {
                ready.push((*fd, condition));
            }
        }
        drop(pollfds);
        let targets: Vec<(Watch, WatchFlags)> = targets
            .into_iter()
            .filter_map(|(fd, watch)| {
                let (_, condition) = ready.iter().find(|(f, _)| *f == fd)?;
                Some((watch, *condition))
            })
            .collect();
        let delivered = self.deliver(targets, &mut panics);
        self.dispatch_all(&mut panics);
        panics.resume();
        delivered
    }

    /// The fds to poll with their merged interest (C18), and the watches to report each fd's
    /// condition to, leaving out — and logging — watches whose fd was closed or reused.
    #[allow(clippy::type_complexity)]
    fn live_interest(&self) -> (Vec<(RawFd, WatchFlags)>, Vec<(RawFd, Watch)>) {
        let mut guard = lock(&self.shared);
        guard.forget_removed();
        let state = &mut *guard;
        let mut interest: Vec<(RawFd, WatchFlags)> = Vec::new();
        let mut targets: Vec<(RawFd, Watch)> = Vec::new();
        let mut closed_now: Vec<RawFd> = Vec::new();
        for r in state.watches.iter_mut() {
            if r.stale || !r.watch.is_enabled() {
                continue;
            }
            let Some(fd) = r.watch.fd() else { continue };
            match r.file {
                Some(file) => match file_id(fd) {
                    Ok(now) if now == file => {}
                    Ok(_) => {
                        r.stale = true;
                        state.log.push(MockEvent::WatchStale {
                            id: r.watch.id(),
                            fd,
                        });
                        continue;
                    }
                    Err(_) => {
                        r.stale = true;
                        if !closed_now.contains(&fd) {
                            closed_now.push(fd);
                            state.log.push(MockEvent::FdClosed { fd });
                        }
                        continue;
                    }
                },
                None if state.closed_fds.contains(&fd) => continue,
                None => {}
            }
            match interest.iter_mut().find(|(f, _)| *f == fd) {
                Some((_, flags)) => *flags |= r.watch.flags(),
                None => interest.push((fd, r.watch.flags())),
            }
            targets.push((fd, r.watch.clone()));
        }
        (interest, targets)
    }

    /// Dispatches every attached source whose status is [`DispatchStatus::DataRemains`], up to
    /// a batch per source, and returns how many dispatches ran.
    ///
    /// # Panics
    ///
    /// If a source's `dispatch` or `dispatch_status` panics, once the other sources have been
    /// dispatched. The panicking source is asked for its status again on the next call, so
    /// its remaining work is not stranded.
    pub fn dispatch_pending(&self) -> usize {
        let mut panics = FirstPanic::default();
        let dispatched = self.dispatch_all(&mut panics);
        panics.resume();
        dispatched
    }

    fn dispatch_all(&self, panics: &mut FirstPanic) -> usize {
        let sources: Vec<Arc<dyn Source>> = lock(&self.shared).sources.clone();
        let mut dispatched = 0;
        for source in sources {
            panics.call(|| {
                for _ in 0..DISPATCH_BATCH {
                    if source.dispatch_status() != DispatchStatus::DataRemains {
                        break;
                    }
                    lock(&self.shared).log.push(MockEvent::Dispatched);
                    dispatched += 1;
                    if source.dispatch() == DispatchStatus::Complete {
                        break;
                    }
                }
            });
        }
        dispatched
    }

    /// Reports each condition to its watch, with no lock held (handlers may add or remove
    /// watches, C11); a panicking handler does not keep the others from hearing theirs.
    fn deliver(&self, targets: Vec<(Watch, WatchFlags)>, panics: &mut FirstPanic) -> usize {
        let mut delivered = 0;
        for (watch, condition) in targets {
            let event = MockEvent::WatchHandled {
                id: watch.id(),
                condition,
                delivery: Delivery::Delivered,
            };
            let entry = lock(&self.shared).open(event.clone());
            let delivery = panics
                .call(|| watch.handle(condition))
                .unwrap_or(Delivery::Delivered);
            let mut state = lock(&self.shared);
            state.settle(entry, &event, delivery);
            if delivery == Delivery::Removed {
                // Its glue `remove` never reached us (a wrapper panicked before passing it on,
                // say): forget it rather than poll it forever.
                state.watches.retain(|r| r.watch != watch);
            }
            if delivery == Delivery::Delivered {
                delivered += 1;
            }
        }
        delivered
    }

    /// Every event so far, oldest first.
    pub fn log(&self) -> Vec<MockEvent> {
        lock(&self.shared).log.clone()
    }

    /// Every event so far, clearing the log.
    pub fn take_log(&self) -> Vec<MockEvent> {
        std::mem::take(&mut lock(&self.shared).log)
    }

    /// Makes the next `add` (watch or timeout) fail with `error`.
    pub fn fail_next_add(&self, error: io::Error) {
        lock(&self.shared).fail_next = Some(error);
    }

    /// Makes the `k`-th `add` from now (1-based, watches and timeouts counted together) fail.
    ///
    /// # Panics
    ///
    /// If `k` is zero.
    pub fn fail_add_at(&self, k: usize) {
        assert!(k > 0, "fail_add_at counts from 1");
        lock(&self.shared).fail_in = Some(k - 1);
    }

    /// The registered watches, in the order they were added (stale ones included: see
    /// [`poll_fds`](Self::poll_fds)).
    pub fn watches(&self) -> Vec<Watch> {
        lock(&self.shared)
            .watches
            .iter()
            .map(|r| r.watch.clone())
            .collect()
    }

    /// The registered, enabled watches on `fd` that are not stale.
    pub fn enabled_watches_for(&self, fd: RawFd) -> Vec<Watch> {
        lock(&self.shared)
            .watches
            .iter()
            .filter(|r| !r.stale && r.watch.is_enabled() && r.watch.fd() == Some(fd))
            .map(|r| r.watch.clone())
            .collect()
    }

    /// The registered timeouts, in the order they were added.
    pub fn timeouts(&self) -> Vec<Timeout> {
        lock(&self.shared)
            .timeouts
            .iter()
            .map(|a| a.timeout.clone())
            .collect()
    }

    /// When the next enabled timeout falls due, in virtual time.
    pub fn next_deadline(&self) -> Option<Duration> {
        lock(&self.shared)
            .timeouts
            .iter()
            .filter(|a| a.timeout.is_enabled())
            .filter_map(|a| a.due)
            .min()
    }

    /// How many sources are attached (and so kept alive by the mock).
    pub fn sources(&self) -> usize {
        lock(&self.shared).sources.len()
    }

    /// How many times attached sources asked to be woken (C16).
    pub fn wakeups(&self) -> usize {
        self.wakeups.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for MockLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.shared);
        f.debug_struct("MockLoop")
            .field("now", &state.now)
            .field("watches", &state.watches.len())
            .field("timeouts", &state.timeouts.len())
            .field("sources", &state.sources.len())
            .finish()
    }
}

/// The mock's glue holds its state weakly (attached sources hold the glue); once every
/// `MockLoop` handle is gone, `add` refuses and the rest do nothing.
struct MockWatches(Weak<Mutex<MockState>>);

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the MockLoop was dropped")
}

impl WatchFunctions for MockWatches {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        let mut state = lock(&shared);
        state.admit(watch.id())?;
        let fd = watch.fd().unwrap_or(-1);
        state.closed_fds.remove(&fd);
        state.log.push(MockEvent::WatchAdded {
            id: watch.id(),
            fd,
            flags: watch.flags(),
            enabled: watch.is_enabled(),
        });
        // A registration left behind by an earlier set whose `add` passed the call on and then
        // panicked (so no `remove` ever came for it) is replaced, not doubled.
        state.watches.retain(|r| r.watch != *watch);
        state.watches.push(Registered {
            watch: watch.clone(),
            file: file_id(fd).ok(),
            stale: false,
        });
        Ok(())
    }

    fn remove(&mut self, watch: &Watch) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let mut state = lock(&shared);
        state.watches.retain(|r| r.watch != *watch);
        state.log.push(MockEvent::WatchRemoved {
            id: watch.id(),
            fd: watch.fd().unwrap_or(-1),
        });
    }

    fn toggled(&mut self, watch: &Watch) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        lock(&shared).log.push(MockEvent::WatchToggled {
            id: watch.id(),
            enabled: watch.is_enabled(),
        });
    }
}

struct MockTimeouts(Weak<Mutex<MockState>>);

impl TimeoutFunctions for MockTimeouts {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        let mut state = lock(&shared);
        state.admit(timeout.id())?;
        state.log.push(MockEvent::TimeoutAdded {
            id: timeout.id(),
            interval: timeout.interval(),
            enabled: timeout.is_enabled(),
        });
        state.timeouts.retain(|a| a.timeout != *timeout); // as for watches
        let (due, seq) = (due_after(state.now, timeout.interval()), state.next_seq);
        state.next_seq += 1;
        state.timeouts.push(Armed {
            timeout: timeout.clone(),
            due,
            seq,
        });
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let mut state = lock(&shared);
        state.timeouts.retain(|a| a.timeout != *timeout);
        state
            .log
            .push(MockEvent::TimeoutRemoved { id: timeout.id() });
    }

    fn toggled(&mut self, timeout: &Timeout) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let mut state = lock(&shared);
        let now = state.now;
        if timeout.is_enabled() {
            // Enabling restarts the period from now (C9); so does a `toggled` while enabled
            // (a restart, or an off-and-on that coalesced), with the interval read afresh.
            if let Some(armed) = state.timeouts.iter_mut().find(|a| a.timeout == *timeout) {
                armed.due = due_after(now, timeout.interval());
            }
        }
        state.log.push(MockEvent::TimeoutToggled {
            id: timeout.id(),
            enabled: timeout.is_enabled(),
        });
    }
}

/// Runs each scenario in virtual time: ready real fds are delivered first, and only when
/// nothing is ready does the clock jump to the next deadline.
impl super::Harness for MockLoop {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        MockLoop::attach(self, source)
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        MockLoop::detach(self, &**source)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        // Bounds a producer that stays ready without making progress.
        const MAX_ROUNDS: usize = 10_000_000;
        let end = self.now().saturating_add(limit);
        for _ in 0..MAX_ROUNDS {
            if done() {
                return true;
            }
            if self.poll_fds() + self.dispatch_pending() > 0 {
                continue;
            }
            if done() {
                return true;
            }
            let now = self.now();
            if now >= end {
                return false;
            }
            let step = match self.next_deadline() {
                Some(due) if due <= end => due.saturating_sub(now),
                _ => end - now,
            };
            self.advance(step);
        }
        done()
    }

    fn elapsed(&self) -> Duration {
        self.now()
    }
}
