//! Glue for a [`mio::Poll`] that the application owns and runs.
//!
//! The application keeps its `Poll` and its own loop; [`MioGlue`] registers the fds of attached
//! sources with the poll's [`Registry`] on tokens from a range the application sets aside, and
//! the loop hands it what the poll returned:
//!
//! 1. before each `poll`, take the timeout from [`MioGlue::poll_timeout`] (zero while work
//!    is pending, else until the next timeout is due, `None` to block);
//! 2. after each `poll`, call [`MioGlue::process`] with the events: it handles the ready
//!    watches of its tokens (and ignores every other token), fires the due timeouts and
//!    dispatches sources with queued work (C16).
//!
//! What the glue takes care of:
//!
//! * **One registration per fd** (C18): the watches of an fd are merged, across sources too,
//!   and the registration follows their enabled state.
//! * **Level-triggered delivery on an edge-triggered poll** (C17): mio reports an fd once per
//!   edge, but a producer may read only part of what is ready per `handle` (libdbus reads
//!   2 KiB). The fds whose handlers ran are re-checked without blocking — in one poll(2),
//!   once the loop has no other event for the glue, or after a few busy rounds — and those
//!   still ready are handled again, one round per `process`, so one busy fd cannot starve the
//!   others. `poll_timeout` is zero until they are re-checked.
//! * **Timeouts** on a fixed-delay period, restarted with the current interval when enabled
//!   (C9, C10); an interval too large for the clock is never due.
//! * **Wakeups** (C16): a source that queues work from another thread, or a timeout changed
//!   from another thread, wakes the poll through a [`mio::Waker`] — the glue's
//!   own on the first token of its range ([`MioGlue::new`]), or the application's
//!   ([`MioGlue::with_waker`]: mio allows one waker per poll). While `process` runs, nothing
//!   is woken: the loop will ask `poll_timeout` before it blocks.
//! * **Removal before close** (C15): an [`MioAttachment`] dropped, a watch removed or a source
//!   detached is deregistered before the call returns. A registration whose fd was closed, or
//!   whose number now names another file, is never deregistered by number, so the glue cannot
//!   remove a registration that the application made for a new file on a recycled number.
//!
//! Handlers, timeouts and dispatches run inside `process`, on the application's thread, with
//! no lock held (C11): they may attach and detach sources, this one included.
//!
//! # Examples
//!
//! An echo over a socketpair: a [`Connection`](crate::net::Connection) on each end, both
//! attached to one glue, and the application's own loop.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::{Duration, Instant};
//! use loopglue::adapters::mio::MioGlue;
//! use loopglue::net::Connection;
//! use mio::{Events, Poll, Token};
//!
//! let mut poll = Poll::new()?;
//! // Tokens 0..1000 are the application's; the glue takes 1000..2000 (its waker on 1000).
//! let glue = MioGlue::new(poll.registry(), Token(1000)..Token(2000))?;
//!
//! let (a, b) = std::os::unix::net::UnixStream::pair()?;
//! let (client, service) = (Connection::from_stream(a)?, Connection::from_stream(b)?);
//! service.set_message_handler(|conn, message| {
//!     let _ = conn.send(message); // echo
//! });
//! let replies = Arc::new(AtomicUsize::new(0));
//! let counter = Arc::clone(&replies);
//! client.set_message_handler(move |_, message| {
//!     assert_eq!(message, b"ping");
//!     counter.fetch_add(1, Ordering::SeqCst);
//! });
//! let _client = glue.attach(Arc::new(client.clone()))?;
//! let _service = glue.attach(Arc::new(service))?;
//!
//! client.send(b"ping".to_vec()).expect("connected");
//! let mut events = Events::with_capacity(64);
//! let deadline = Instant::now() + Duration::from_secs(10);
//! while replies.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
//!     let timeout = glue.poll_timeout().unwrap_or(Duration::from_secs(1));
//!     poll.poll(&mut events, Some(timeout.min(Duration::from_secs(1))))?;
//!     glue.process(&events);
//! }
//! assert_eq!(replies.load(Ordering::SeqCst), 1);
//! // Dropping the attachments (or the glue) deregisters everything.
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Errors
//!
//! [`MioGlue::attach`] fails, with nothing left installed, when a source cannot be registered:
//! its fd is closed (`EBADF`), the application already registered that fd with the same
//! poll (`EEXIST`, [`io::ErrorKind::AlreadyExists`]), the fd is a regular file (`EPERM`), the
//! token range is used up, or the source is attached already (here or to another loop built
//! on [`glue`](crate::glue)).

use std::fmt;
use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::mio::event::Event;
use ::mio::unix::SourceFd;
use ::mio::{Events, Interest, Registry, Token as MioToken, Waker};
use parking_lot::{Mutex, MutexGuard};
use slab::Slab;

use crate::glue::{
    Attachment, Attachments, Detach, FdRegistry, FileIdentity, Recheck, Registrar, TimerGlue,
    TimerQueue, Token, WatchGlue,
};
use crate::{Delivery, Source, WakeupFn, Watch, WatchFlags};

/// How many times one source is dispatched per `process` before the others get their turn.
const DISPATCH_BATCH: usize = 64;

/// The most `process` rounds an fd waits for its level-triggered re-check while other fds
/// keep the loop busy (C17).
const RECHECK_ROUNDS: u32 = 8;

/// Glue between attached sources and a [`mio::Poll`] that the application owns:
/// see the [module documentation](self).
///
/// `MioGlue` is `Send + Sync`: sources may be attached, and their watches and timeouts
/// changed, from any thread. One thread at a time calls [`process`](Self::process) — the
/// thread that polls. Dropping the glue detaches every source still attached.
#[must_use = "dropping the glue detaches every source"]
pub struct MioGlue {
    inner: Arc<Inner>,
}

/// A source attached to a [`MioGlue`]. Dropping it detaches the source:
/// every function the glue installed is uninstalled and every registration removed before
/// the drop returns.
#[must_use = "dropping the attachment detaches the source"]
pub struct MioAttachment(Attachment<Weak<Inner>>);

struct Inner {
    registry: Registry,
    waker: Arc<Waker>,
    /// The token of the glue's own waker, if it made one.
    waker_token: Option<usize>,
    /// The tokens for fds: `first..end`.
    first: usize,
    end: usize,
    state: Mutex<State>,
    attachments: Attachments,
    /// `process` is running: the application's loop will ask `poll_timeout` before it blocks
    /// again, so a change needs no wakeup (libdbus calls the wakeup function per message).
    processing: AtomicBool,
}

#[derive(Default)]
struct State {
    fds: FdRegistry<Slot>,
    /// mio token (as an offset from `first`) → the registry's token.
    slots: Slab<Token>,
    timers: TimerQueue,
    /// Registrations whose handlers ran and that were not re-checked since (C17): a producer
    /// may have left data that no edge will announce. `poll_timeout` is zero while there are
    /// any, and `process` re-checks them once the loop has nothing else to do, or after
    /// [`RECHECK_ROUNDS`] busy rounds.
    unchecked: Vec<Token>,
    /// `process` rounds since the last re-check.
    rounds: u32,
    /// Buffers reused across rounds; `process` takes them out for a round.
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    reports: Vec<(Token, WatchFlags)>,
    /// The tokens of `reports` that had watches to handle.
    handled: Vec<Token>,
    batch: Vec<(Watch, WatchFlags)>,
    handle: Vec<(Token, Watch, WatchFlags)>,
    rechecked: Vec<(Token, Recheck)>,
}

/// One registration with the poll: its token's offset, what it is registered for, and the
/// file it was made for.
struct Slot {
    index: usize,
    interest: WatchFlags,
    file: Option<FileIdentity>,
}

/// The application's poll as the fd registry's host.
struct Host<'a> {
    registry: &'a Registry,
    slots: &'a mut Slab<Token>,
    /// Where registrations whose watches now want more go to be re-checked.
    unchecked: &'a mut Vec<Token>,
    first: usize,
    capacity: usize,
}

fn interest(flags: WatchFlags) -> Interest {
    match (
        flags.contains(WatchFlags::READABLE),
        flags.contains(WatchFlags::WRITABLE),
    ) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        // The registry never asks for nothing; errors and hang-ups come with either.
        _ => Interest::READABLE,
    }
}

/// What a mio event says, as the flags `Watch::handle` takes. A hang-up is both directions
/// closed (`EPOLLHUP`); a peer that only shut down its writing side is plain readable, as
/// poll(2) reports it.
fn condition(event: &Event) -> WatchFlags {
    let mut condition = WatchFlags::empty();
    if event.is_readable() {
        condition |= WatchFlags::READABLE;
    }
    if event.is_writable() {
        condition |= WatchFlags::WRITABLE;
    }
    if event.is_error() {
        condition |= WatchFlags::ERROR;
    }
    if event.is_read_closed() && event.is_write_closed() {
        condition |= WatchFlags::HANGUP;
    }
    condition
}

/// Adds which fd and poll to a refusal, keeping the error kind (and `EBADF` as it is: the
/// registry reads it as "closed").
fn refused(error: io::Error, fd: RawFd) -> io::Error {
    match error.raw_os_error() {
        Some(nix::libc::EBADF) => error,
        Some(nix::libc::EEXIST) => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "fd {fd} is already registered with this mio poll (by the application or \
                 another glue): {error}"
            ),
        ),
        _ => io::Error::new(
            error.kind(),
            format!("the mio poll refused fd {fd}: {error}"),
        ),
    }
}

impl Registrar for Host<'_> {
    type Registration = Slot;

    fn register(&mut self, fd: RawFd, token: Token, wanted: WatchFlags) -> io::Result<Slot> {
        let index = self.slots.vacant_key();
        if index >= self.capacity {
            return Err(io::Error::other(format!(
                "the glue's {} mio tokens are all in use",
                self.capacity
            )));
        }
        let file = FileIdentity::of(fd).ok();
        self.registry
            .register(
                &mut SourceFd(&fd),
                MioToken(self.first + index),
                interest(wanted),
            )
            .map_err(|e| refused(e, fd))?;
        self.slots.insert(token);
        Ok(Slot {
            index,
            interest: wanted,
            file,
        })
    }

    fn reregister(
        &mut self,
        slot: &mut Slot,
        fd: RawFd,
        _: Token,
        wanted: WatchFlags,
    ) -> io::Result<()> {
        // Errors as they are: the registry reads ENOENT and EBADF.
        self.registry.reregister(
            &mut SourceFd(&fd),
            MioToken(self.first + slot.index),
            interest(wanted),
        )?;
        slot.interest = wanted;
        Ok(())
    }

    fn widened(&mut self, _: RawFd, token: Token, _: WatchFlags) {
        // A registration the kernel re-evaluates (a new or modified one) reports an fd ready
        // now by itself; one kept as it was does not, and an edge that passed while no watch
        // wanted the direction will not come again (C17).
        if !self.unchecked.contains(&token) {
            self.unchecked.push(token);
        }
    }

    fn deregister(&mut self, slot: Slot, fd: RawFd, _: Token) {
        self.slots.try_remove(slot.index);
        // Only by number while the number still names the file registered: a closed fd was
        // forgotten by the kernel, and a recycled number may be registered by the
        // application for its new file (C15 broken by a producer).
        if slot.file.is_some_and(|file| file.is_named_by(fd)) {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Wakes the poll unless `process` is running (then the loop asks `poll_timeout` before
    /// it blocks again).
    fn nudge(&self) {
        if !self.processing.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// The poll as the fd registry's host, with the glue's token slots and re-check list.
    fn host<'a>(&'a self, slots: &'a mut Slab<Token>, unchecked: &'a mut Vec<Token>) -> Host<'a> {
        Host {
            registry: &self.registry,
            slots,
            unchecked,
            first: self.first,
            capacity: self.end - self.first,
        }
    }

    /// Runs `f` on the fd registry with the poll as its host; wakes the poll if a
    /// registration now needs a re-check (the loop may be blocked on another thread).
    fn with_host<T>(&self, f: impl FnOnce(&mut FdRegistry<Slot>, &mut Host<'_>) -> T) -> T {
        let (out, widened) = {
            let mut state = self.lock();
            let State {
                fds,
                slots,
                unchecked,
                ..
            } = &mut *state;
            let before = unchecked.len();
            let mut host = self.host(slots, unchecked);
            let out = f(fds, &mut host);
            (out, host.unchecked.len() > before)
        };
        if widened {
            self.nudge();
        }
        out
    }
}

impl MioGlue {
    /// Glue for the poll of `registry`, on the tokens in `tokens`: the first for its own
    /// [`mio::Waker`], the rest for fds (one per fd, whatever its watches).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if the range has fewer than two tokens; otherwise why
    /// the registry cannot be cloned or the waker made.
    pub fn new(registry: &Registry, tokens: Range<MioToken>) -> io::Result<MioGlue> {
        if tokens.end.0 <= tokens.start.0.saturating_add(1) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the glue needs at least two tokens: one for its waker, one per fd",
            ));
        }
        let waker = Arc::new(Waker::new(registry, tokens.start)?);
        MioGlue::build(
            registry,
            tokens.start.0 + 1..tokens.end.0,
            waker,
            Some(tokens.start.0),
        )
    }

    /// Glue for the poll of `registry` that wakes it with the application's `waker` (mio
    /// allows one waker per poll), with every token in `tokens` for fds.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] if the range is empty; otherwise why the registry
    /// cannot be cloned.
    pub fn with_waker(
        registry: &Registry,
        tokens: Range<MioToken>,
        waker: Arc<Waker>,
    ) -> io::Result<MioGlue> {
        if tokens.end.0 <= tokens.start.0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the glue needs at least one token",
            ));
        }
        MioGlue::build(registry, tokens.start.0..tokens.end.0, waker, None)
    }

    fn build(
        registry: &Registry,
        fds: Range<usize>,
        waker: Arc<Waker>,
        waker_token: Option<usize>,
    ) -> io::Result<MioGlue> {
        let registry = registry.try_clone()?;
        Ok(MioGlue {
            inner: Arc::new_cyclic(|weak: &Weak<Inner>| {
                let weak = weak.clone();
                Inner {
                    registry,
                    waker,
                    waker_token,
                    first: fds.start,
                    end: fds.end,
                    state: Mutex::new(State::default()),
                    attachments: Attachments::new(move || {
                        if let Some(inner) = weak.upgrade() {
                            inner.nudge();
                        }
                    }),
                    processing: AtomicBool::new(false),
                }
            }),
        })
    }

    /// Runs `source` on this glue: installs its watch, timeout, wakeup and dispatch-status
    /// functions and registers its enabled watches, then reads its dispatch status once
    /// (C16). The source runs until the returned [`MioAttachment`] is dropped or detached.
    ///
    /// May be called from any thread, and from inside a handler.
    ///
    /// # Errors
    ///
    /// See the [module documentation](self#errors); nothing stays installed then.
    ///
    /// # Panics
    ///
    /// If the source's code panics; nothing stays installed then either.
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<MioAttachment> {
        let weak = Arc::downgrade(&self.inner);
        let waking = weak.clone();
        let wakeup: WakeupFn = Box::new(move || {
            if let Some(inner) = waking.upgrade() {
                inner.nudge();
            }
        });
        self.inner.attachments.attach(
            Arc::clone(&source),
            Inner::watch_functions(&self.inner),
            Inner::timeout_functions(&self.inner),
            Some(wakeup),
        )?;
        Ok(MioAttachment(Attachment::new(weak, source)))
    }

    /// How long the application's `poll` may block: zero while fds are still ready (C17) or
    /// sources have work to dispatch, else until the next timeout is due; `None` if no timeout
    /// is armed (block until an event). Take the smaller of this and the loop's own timeout.
    ///
    /// Call it just before polling: it also narrows registrations that are wider than their
    /// enabled watches want.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let inner = &*self.inner;
        let wait = {
            let mut state = inner.lock();
            let state = &mut *state;
            let mut host = inner.host(&mut state.slots, &mut state.unchecked);
            state.fds.flush(&mut host);
            if !state.unchecked.is_empty() {
                return Some(Duration::ZERO);
            }
            if state.timers.is_empty() {
                None // no clock read without timeouts
            } else {
                state.timers.wait_time(Instant::now())
            }
        };
        if inner.attachments.queue().is_pending() {
            return Some(Duration::ZERO);
        }
        wait
    }

    /// When the next timeout falls due (now, if fds are still ready or sources have work to
    /// dispatch), or `None` if nothing is armed: for loops that compute their own timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.poll_timeout().map(|wait| Instant::now() + wait)
    }

    /// Whether `token` is one of the glue's (its waker's or an fd's): events for other tokens
    /// are the application's.
    pub fn owns(&self, token: MioToken) -> bool {
        let inner = &*self.inner;
        Some(token.0) == inner.waker_token || (inner.first..inner.end).contains(&token.0)
    }

    /// Handles what a `poll` returned: the ready watches of the glue's tokens (other tokens
    /// are ignored), then the fds still ready from the last round (C17), then the due
    /// timeouts, then the dispatch of sources with queued work. Call it after every `poll`,
    /// with whatever events it returned (none, if it timed out). Returns how many handlers
    /// and dispatches ran.
    ///
    /// # Panics
    ///
    /// If a handler panics. The glue stays usable: the fds of the round are re-checked and
    /// handled again next time, timeouts not fired yet stay due, and every source's status is
    /// read again.
    pub fn process(&self, events: &Events) -> usize {
        let inner = &*self.inner;
        inner.processing.store(true, Ordering::SeqCst);
        struct Processing<'a>(&'a AtomicBool);
        impl Drop for Processing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _processing = Processing(&inner.processing);

        let (mut scratch, due) = {
            let mut state = inner.lock();
            let state = &mut *state;
            let mut scratch = std::mem::take(&mut state.scratch);
            for event in events.iter() {
                let mio_token = event.token().0;
                if mio_token < inner.first || mio_token >= inner.end {
                    continue; // the waker's, or the application's
                }
                let Some(&token) = state.slots.get(mio_token - inner.first) else {
                    continue; // deregistered since the poll
                };
                let now = condition(event);
                match scratch.reports.iter_mut().find(|(t, _)| *t == token) {
                    Some((_, known)) => *known |= now,
                    None => scratch.reports.push((token, now)),
                }
            }
            // Level-triggered emulation (C17): the fds handled in earlier rounds are re-checked
            // when the loop has nothing else for the glue (it would block next), or when they
            // waited long enough — in one poll(2). A native edge-triggered handler reads until
            // `WouldBlock`; a producer need not (libdbus reads 2 KiB), and a re-check after
            // every round would cost a system call per message.
            let mut pending = std::mem::take(&mut state.unchecked);
            let mut host = inner.host(&mut state.slots, &mut state.unchecked);
            if !pending.is_empty() {
                let reported = &scratch.reports;
                pending.retain(|token| !reported.iter().any(|(t, _)| t == token));
                if scratch.reports.is_empty() || state.rounds >= RECHECK_ROUNDS {
                    // In one poll(2); closed fds are dropped (C15). If the poll fails, nothing
                    // was polled: the next edge will tell.
                    let found = &mut scratch.rechecked;
                    let _ = state.fds.recheck_many(&pending, &mut host, found);
                    let again = found.drain(..).filter(|(_, found)| found.again());
                    scratch
                        .reports
                        .extend(again.map(|(token, found)| (token, found.ready())));
                    pending.clear();
                    state.rounds = 0;
                } else {
                    state.rounds += 1;
                }
            }
            for &(token, condition) in &scratch.reports {
                if state
                    .fds
                    .ready(token, condition, &mut host, &mut scratch.batch)
                    > 0
                {
                    scratch.handled.push(token);
                }
                let batch = scratch.batch.drain(..);
                scratch
                    .handle
                    .extend(batch.map(|(watch, condition)| (token, watch, condition)));
            }
            // Not re-checked yet: waits on, with those widened meanwhile.
            for token in pending {
                if !state.unchecked.contains(&token) {
                    state.unchecked.push(token);
                }
            }
            let due = if state.timers.is_empty() {
                0
            } else {
                state.timers.collect_due(Instant::now())
            };
            (scratch, due)
        };

        // Producer code from here on: no lock held (C11).
        let ran = panic::catch_unwind(AssertUnwindSafe(|| self.handle_round(&scratch.handle, due)));
        let panicked = ran.is_err();
        {
            let mut state = inner.lock();
            let state = &mut *state;
            // The round's fds may hold data no edge will announce again: re-checked later —
            // all of them if a handler panicked, the handled ones otherwise.
            let round: &mut dyn Iterator<Item = Token> = if panicked {
                &mut scratch.reports.iter().map(|(t, _)| *t)
            } else {
                &mut scratch.handled.iter().copied()
            };
            for token in round {
                if !state.unchecked.contains(&token) {
                    state.unchecked.push(token);
                }
            }
            scratch.handle.clear();
            scratch.handled.clear();
            scratch.reports.clear();
            scratch.batch.clear();
            state.scratch = scratch;
        }
        match ran {
            Ok(ran) => ran,
            Err(payload) => {
                inner.attachments.queue().schedule_all();
                panic::resume_unwind(payload)
            }
        }
    }

    fn handle_round(&self, ready: &[(Token, Watch, WatchFlags)], due: usize) -> usize {
        let inner = &*self.inner;
        let mut ran = 0;
        for (token, watch, condition) in ready {
            match watch.handle(*condition) {
                Delivery::Delivered => ran += 1,
                Delivery::NotRequested => {}
                // The glue missed (or raced) a remove or a toggle: resync.
                delivery @ (Delivery::Removed | Delivery::Disabled) => {
                    inner.with_host(|fds, host| fds.report(*token, watch, delivery, host));
                }
            }
        }
        if due > 0 {
            ran += inner.fire_due();
        }
        // Dispatch last, so that what the handlers above queued is dispatched this round.
        ran + inner.attachments.queue().run(DISPATCH_BATCH)
    }

    /// How many fds are registered with the poll.
    pub fn registered_fds(&self) -> usize {
        self.inner.lock().fds.registered()
    }

    /// How many timeouts the glue tracks.
    pub fn timeouts(&self) -> usize {
        self.inner.lock().timers.len()
    }

    /// How many sources are attached.
    pub fn sources(&self) -> usize {
        self.inner.attachments.len()
    }

    /// The waker the glue wakes the poll with.
    pub fn waker(&self) -> &Arc<Waker> {
        &self.inner.waker
    }
}

impl Drop for MioGlue {
    /// Detaches every source still attached (deregistering its fds) while the glue's functions
    /// can still reach the glue.
    fn drop(&mut self) {
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            self.inner.attachments.detach_all();
        }));
        self.inner.with_host(|fds, host| fds.clear(host));
    }
}

impl MioAttachment {
    /// The attached source.
    pub fn source(&self) -> &Arc<dyn Source> {
        self.0.source()
    }

    /// Detaches the source now, as dropping the attachment does, and reports what went wrong.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] when called from inside one of the source's own watch
    /// functions (not a handler: detaching from inside a handler is fine); the source then
    /// stays attached, and the attachment is handed back to detach later.
    ///
    /// # Panics
    ///
    /// If a step of the detach panics (a free-data, say), after every step has run.
    pub fn detach(self) -> Result<(), (MioAttachment, io::Error)> {
        self.0
            .detach()
            .map_err(|(back, error)| (MioAttachment(back), error))
    }
}

impl Detach for Inner {
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        self.attachments.detach(source).map(drop)
    }
}

/// The glue's watch functions: the registry with the poll as its host. A new registration,
/// or a wider one, is re-evaluated by the kernel: an fd ready now reports an edge to the
/// poll, even one blocked on another thread.
impl WatchGlue for Inner {
    type Registration = Slot;
    type Host<'a> = Host<'a>;
    const GONE: &'static str = "MioGlue";

    fn with_fds<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut FdRegistry<Slot>, &mut Host<'_>) -> T,
    ) -> T {
        self.with_host(f)
    }
}

/// The glue's timeout functions: a change wakes the poll, which asks `poll_timeout` again.
impl TimerGlue for Inner {
    const GONE: &'static str = "MioGlue";

    fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T {
        f(&mut self.lock().timers)
    }

    fn timers_changed(&self) {
        self.nudge();
    }
}

impl fmt::Debug for MioGlue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let state = inner.lock();
        f.debug_struct("MioGlue")
            .field("tokens", &(inner.first..inner.end))
            .field("waker_token", &inner.waker_token)
            .field("fds", &state.fds)
            .field("timeouts", &state.timers.len())
            .field("unchecked", &state.unchecked.len())
            .field("sources", &inner.attachments.len())
            .finish()
    }
}

impl fmt::Debug for MioAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MioAttachment")
            .field("source", &self.0.source().data().id())
            .field("glue_alive", &(self.0.glue().strong_count() > 0))
            .finish()
    }
}
