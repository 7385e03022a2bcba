//! Glue written against the public API only, as an application or an adapter would, for the
//! conformance tests: a small poll(2) glue whose defects can be switched on one at a time (to
//! show that the scenarios reject each), and a harness that runs `MainLoop` on a thread of
//! its own (to show that a loop running elsewhere can be driven by the scenarios).
#![allow(dead_code)]

use std::collections::HashSet;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loopglue::main_loop::{Backend, MainLoop};
use loopglue::testing::{Harness, ThreadCpuClock, ThreadUsage};
use loopglue::{
    Delivery, DispatchStatus, Source, Timeout, TimeoutFunctions, Watch, WatchFlags, WatchFunctions,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::support::run_until;

/// The longest a harness blocks before checking the scenario's `done` again.
const STEP: Duration = Duration::from_millis(5);

/// How often the glue with `Defects::arm_late` arms the timers it left pending.
const SWEEP: Duration = Duration::from_millis(500);

/// Mistakes a glue can make; each one is what a conformance check must catch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Defects {
    /// Polls and reports every watch, enabled or not (C9).
    pub ignore_enabled: bool,
    /// Keeps polling an fd that `poll` reports closed (`POLLNVAL`) instead of dropping it
    /// (C15): `poll` then returns at once, every time.
    pub keep_closed_fds: bool,
    /// Arms a re-enabled timeout only when another timer falls due or at its next
    /// housekeeping pass (every [`SWEEP`]), instead of inside `toggled` (C9).
    pub arm_late: bool,
    /// Reports every enabled read watch readable each round, whatever `poll` said.
    pub report_unpolled: bool,
}

struct Timer {
    timeout: Timeout,
    due: Option<Instant>,
    /// Enabled, waiting for the late arming of `Defects::arm_late`.
    pending: bool,
}

#[derive(Default)]
struct Registry {
    watches: Vec<Watch>,
    timers: Vec<Timer>,
    /// Fds `poll` found closed; skipped until a watch on the number is added again.
    closed: HashSet<RawFd>,
    sources: Vec<Arc<dyn Source>>,
    /// When `Defects::arm_late` last armed its pending timers.
    last_sweep: Option<Instant>,
}

type Shared = Arc<Mutex<Registry>>;

fn lock(shared: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A poll(2) loop and its glue, with `defects` switched on.
pub struct PollGlue {
    shared: Shared,
    defects: Defects,
    start: Instant,
}

impl PollGlue {
    pub fn new(defects: Defects) -> PollGlue {
        PollGlue {
            shared: Shared::default(),
            defects,
            start: Instant::now(),
        }
    }

    /// One iteration: poll the enabled watches for at most `wait` (less if a timer is due
    /// sooner), report what is ready, fire what is due, dispatch what remains.
    fn run_once(&self, wait: Duration) {
        let defects = self.defects;
        let (interest, wait) = {
            let registry = lock(&self.shared);
            let mut interest: Vec<(RawFd, WatchFlags)> = Vec::new();
            for watch in &registry.watches {
                if !watch.is_enabled() && !defects.ignore_enabled {
                    continue;
                }
                let Some(fd) = watch.fd() else { continue };
                if registry.closed.contains(&fd) && !defects.keep_closed_fds {
                    continue;
                }
                match interest.iter_mut().find(|(f, _)| *f == fd) {
                    Some((_, flags)) => *flags |= watch.flags(),
                    None => interest.push((fd, watch.flags())),
                }
            }
            let now = Instant::now();
            let next = registry.timers.iter().filter_map(|t| t.due).min();
            let wait = next.map_or(wait, |due| wait.min(due.saturating_duration_since(now)));
            (interest, wait)
        };
        let mut pollfds: Vec<PollFd<'_>> = interest
            .iter()
            .map(|(fd, flags)| {
                // SAFETY: producers remove a watch before closing its fd (C15); an fd closed
                // in breach of it comes back as POLLNVAL and is never read through.
                let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
                PollFd::new(fd, PollFlags::from_bits_truncate(flags.to_poll_events()))
            })
            .collect();
        let millis = wait.as_micros().div_ceil(1000).min(u128::from(u16::MAX)) as u16;
        let polled = poll(&mut pollfds, PollTimeout::from(millis));
        let mut ready: Vec<(RawFd, WatchFlags)> = Vec::new();
        if polled.is_ok() {
            for ((fd, _), pollfd) in interest.iter().zip(&pollfds) {
                let revents = pollfd.revents().unwrap_or(PollFlags::empty());
                if revents.contains(PollFlags::POLLNVAL) {
                    if !defects.keep_closed_fds {
                        lock(&self.shared).closed.insert(*fd);
                    }
                    continue;
                }
                let condition = WatchFlags::from_poll_revents(revents.bits());
                if !condition.is_empty() {
                    ready.push((*fd, condition));
                }
            }
        }
        drop(pollfds);

        let mut reports: Vec<(Watch, WatchFlags)> = Vec::new();
        {
            let registry = lock(&self.shared);
            for watch in &registry.watches {
                let Some(fd) = watch.fd() else { continue };
                if let Some((_, condition)) = ready.iter().find(|(f, _)| *f == fd) {
                    reports.push((watch.clone(), *condition));
                } else if defects.report_unpolled
                    && watch.is_enabled()
                    && watch.flags().contains(WatchFlags::READABLE)
                {
                    reports.push((watch.clone(), WatchFlags::READABLE));
                }
            }
        }
        for (watch, condition) in reports {
            if watch.is_enabled() || defects.ignore_enabled {
                let _ = watch.handle(condition);
            }
        }

        let due: Vec<Timeout> = {
            let mut registry = lock(&self.shared);
            let now = Instant::now();
            let mut due = Vec::new();
            for timer in registry.timers.iter_mut() {
                if timer.due.is_some_and(|d| d <= now) {
                    // Fixed-delay (C10): the next period starts now, as the handler is called.
                    timer.due = now.checked_add(timer.timeout.interval());
                    due.push(timer.timeout.clone());
                }
            }
            let sweep = registry
                .last_sweep
                .map_or(true, |at| now.duration_since(at) >= SWEEP);
            if defects.arm_late && (!due.is_empty() || sweep) {
                registry.last_sweep = Some(now);
                for timer in registry.timers.iter_mut().filter(|t| t.pending) {
                    timer.pending = false;
                    timer.due = now.checked_add(timer.timeout.interval());
                }
            }
            due
        };
        for timeout in due {
            if timeout.handle() == Delivery::Removed {
                lock(&self.shared).timers.retain(|t| t.timeout != timeout);
            }
        }

        let sources: Vec<Arc<dyn Source>> = lock(&self.shared).sources.clone();
        for source in sources {
            for _ in 0..64 {
                if source.dispatch_status() != DispatchStatus::DataRemains
                    || source.dispatch() == DispatchStatus::Complete
                {
                    break;
                }
            }
        }
    }
}

struct PollWatches(Weak<Mutex<Registry>>);

impl WatchFunctions for PollWatches {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        let shared = self.0.upgrade().ok_or(io::ErrorKind::NotConnected)?;
        let mut registry = lock(&shared);
        if let Some(fd) = watch.fd() {
            registry.closed.remove(&fd);
        }
        registry.watches.push(watch.clone());
        Ok(())
    }

    fn remove(&mut self, watch: &Watch) {
        if let Some(shared) = self.0.upgrade() {
            lock(&shared).watches.retain(|w| w != watch);
        }
    }

    fn toggled(&mut self, _watch: &Watch) {
        // Each iteration reads `is_enabled()` afresh.
    }
}

struct PollTimeouts(Weak<Mutex<Registry>>, Defects);

impl TimeoutFunctions for PollTimeouts {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let shared = self.0.upgrade().ok_or(io::ErrorKind::NotConnected)?;
        let due = timeout
            .is_enabled()
            .then(|| Instant::now().checked_add(timeout.interval()))
            .flatten();
        lock(&shared).timers.push(Timer {
            timeout: timeout.clone(),
            due,
            pending: false,
        });
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        if let Some(shared) = self.0.upgrade() {
            lock(&shared).timers.retain(|t| t.timeout != *timeout);
        }
    }

    fn toggled(&mut self, timeout: &Timeout) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let mut registry = lock(&shared);
        let Some(timer) = registry.timers.iter_mut().find(|t| t.timeout == *timeout) else {
            return;
        };
        match (timeout.is_enabled(), self.1.arm_late) {
            (true, false) => timer.due = Instant::now().checked_add(timeout.interval()),
            (true, true) => {
                timer.due = None;
                timer.pending = true;
            }
            (false, _) => {
                timer.due = None;
                timer.pending = false;
            }
        }
    }
}

impl Harness for PollGlue {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        let weak = Arc::downgrade(&self.shared);
        source
            .set_functions(
                Box::new(PollWatches(weak.clone())),
                Box::new(PollTimeouts(weak, self.defects)),
            )
            .map_err(io::Error::from)?;
        // Each iteration asks every source for its status and wakes at least every STEP, so
        // neither function needs to do anything.
        source.set_wakeup_main_function(Some(Box::new(|| {})));
        source.set_dispatch_status_function(Some(Box::new(|_| {})));
        lock(&self.shared).sources.push(source);
        Ok(())
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        let id = source.data().id();
        lock(&self.shared).sources.retain(|s| s.data().id() != id);
        source.clear_functions().map_err(io::Error::from)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        run_until(limit, done, |left| self.run_once(left.min(STEP)))
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// `MainLoop` running on a thread of its own, driven by the scenarios from theirs: what an
/// adapter whose host loop runs elsewhere (a GLib main loop on its thread, a multi-thread
/// runtime) does in its harness.
pub struct ThreadedLoop {
    main_loop: Arc<MainLoop>,
    stop: Arc<AtomicBool>,
    /// Iterations completed, and a signal after each.
    progress: Arc<(Mutex<u64>, Condvar)>,
    clock: ThreadCpuClock,
    thread: Option<JoinHandle<()>>,
    start: Instant,
}

impl ThreadedLoop {
    pub fn new(backend: Backend) -> ThreadedLoop {
        let main_loop = Arc::new(MainLoop::with_backend(backend).expect("loop"));
        let stop = Arc::new(AtomicBool::new(false));
        let progress: Arc<(Mutex<u64>, Condvar)> = Arc::default();
        let (clock_tx, clock_rx) = std::sync::mpsc::channel();
        let thread = {
            let (main_loop, stop, progress) = (
                Arc::clone(&main_loop),
                Arc::clone(&stop),
                Arc::clone(&progress),
            );
            std::thread::spawn(move || {
                clock_tx
                    .send(ThreadCpuClock::current())
                    .expect("clock handed over");
                while !stop.load(Ordering::Acquire) {
                    main_loop.run_once(Some(STEP)).expect("run_once");
                    let (count, signal) = &*progress;
                    *count.lock().unwrap() += 1;
                    signal.notify_all();
                }
            })
        };
        ThreadedLoop {
            main_loop,
            stop,
            progress,
            clock: clock_rx.recv().expect("the loop thread started"),
            thread: Some(thread),
            start: Instant::now(),
        }
    }

    /// Waits (bounded) for the loop thread to finish one more iteration.
    fn next_iteration(&self, at_most: Duration) {
        let (count, signal) = &*self.progress;
        let guard = count.lock().unwrap();
        let seen = *guard;
        let _ = signal
            .wait_timeout_while(guard, at_most, |now| *now == seen)
            .unwrap();
    }
}

impl Harness for ThreadedLoop {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        self.main_loop.attach(source)
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        self.main_loop.detach(&**source)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        run_until(limit, done, |left| {
            self.next_iteration(left.min(Duration::from_millis(50)))
        })
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn loop_thread_usage(&self) -> Option<ThreadUsage> {
        self.clock.usage()
    }
}

impl Drop for ThreadedLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.main_loop.handle().wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
