//! The calloop adapter (feature `calloop`): runs any [`Source`] in a [`calloop::EventLoop`]
//! — the loop of Smithay and most Wayland compositors.
//!
//! | loopglue | calloop |
//! |---|---|
//! | the watches of one fd (C18) | one event source holding a level-triggered [`Generic`] (`Mode::Level`) for what the enabled watches want |
//! | timeouts | one [`Timer`] armed for the earliest deadline of a [`TimerQueue`] (fixed delay, C10) |
//! | dispatch status (C16) | dispatched right after the watch handlers of an fd ran, else before calloop sleeps |
//! | wakeup (C16), changes from other threads | a calloop [`Ping`] |
//!
//! [`CalloopGlue::insert`] puts the glue into a loop; [`CalloopGlue::attach`] runs a source on
//! it until the returned [`CalloopAttachment`] is dropped (or
//! [`detach`](CalloopAttachment::detach)ed). calloop's loop handle is single-threaded, so
//! `CalloopGlue` stays on the loop's thread; [`CalloopGlue::attacher`] hands out a
//! `Send + Sync` [`CalloopAttacher`] for other threads and for producers' handlers (which are
//! `Send + Sync` closures and cannot hold a loop handle).
//!
//! # How it runs
//!
//! Producers call the glue from any thread, but calloop registers an fd only on its own
//! thread, through its loop handle. So the glue works in two halves:
//!
//! * **At once, on any thread**: merging watches per fd ([`FdRegistry`]), and every
//!   *unregistration* — the [`Generic`] of an fd is dropped inside the producer's `remove`,
//!   which takes the fd out of calloop's poller before `remove` returns, so the producer may
//!   close it (C15).
//! * **On the loop's thread**: inserting an fd's event source, changing its interest, and
//!   re-arming the timer. [`CalloopGlue::attach`] does it before it returns (so a refusal —
//!   `EEXIST` for an fd calloop already polls, `EPERM` for a regular file — is its error); a
//!   change made inside the glue's own handlers is applied when they return; one made on
//!   another thread wakes the loop through the ping; one made anywhere else on the loop's
//!   thread is applied before calloop next sleeps. A refusal learnt that late stops the fd
//!   being polled, with a warning.
//!
//! calloop polls level-triggered here, so a producer that reads only part of what is ready
//! (libdbus reads 2 KiB per call) is called again (C17). calloop reports no hang-up or error
//! bit; the glue recognises one by a direction reported that the fd was not registered for
//! (epoll reports hang-ups as both), and then polls the fd once to tell the producer exactly.
//!
//! # Handlers and `&mut Data`
//!
//! calloop hands its callbacks `&mut Data`, the loop's shared state. A producer's handlers
//! cannot receive it: they are `Send + Sync` closures the producer owns, called through
//! [`Watch::handle`](crate::Watch::handle) and [`Source::dispatch`]. They run on the loop's
//! thread, inside [`EventLoop::dispatch`](calloop::EventLoop::dispatch), so to reach `Data`
//! from a message handler, send what it got through a [`calloop::channel`] and handle it in
//! that channel's callback, which gets `&mut Data` in the same dispatch.
//!
//! A panic in a handler unwinds out of `EventLoop::dispatch` to its caller (C14), with the
//! glue as if the panicking call had returned.
//!
//! # Examples
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use calloop::EventLoop;
//! use loopglue::adapters::calloop::CalloopGlue;
//! use loopglue::net::Connection;
//!
//! let mut event_loop: EventLoop<'_, Vec<Vec<u8>>> = EventLoop::try_new()?;
//! let glue = CalloopGlue::insert(&event_loop.handle())?;
//!
//! let (a, b) = UnixStream::pair()?;
//! let (client, service) = (Connection::from_stream(a)?, Connection::from_stream(b)?);
//! service.set_message_handler(|conn, message| conn.send(message).unwrap());
//! // Replies reach the loop's `&mut Data` through a channel.
//! let (replies, channel) = calloop::channel::channel();
//! client.set_message_handler(move |_, message| replies.send(message).unwrap());
//! event_loop
//!     .handle()
//!     .insert_source(channel, |event, _, data: &mut Vec<Vec<u8>>| {
//!         if let calloop::channel::Event::Msg(message) = event {
//!             data.push(message);
//!         }
//!     })
//!     .map_err(|e| e.error)?;
//! let _client = glue.attach(Arc::new(client.clone()))?;
//! let _service = glue.attach(Arc::new(service.clone()))?;
//!
//! client.send(b"ping".to_vec()).unwrap();
//! let mut received = Vec::new();
//! while received.is_empty() {
//!     event_loop.dispatch(Duration::from_secs(5), &mut received)?;
//! }
//! assert_eq!(received, [b"ping".to_vec()]);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Errors
//!
//! [`CalloopGlue::attach`] fails with `EBADF` if a watch's fd is closed, with what calloop's
//! poller refuses (`EEXIST`, `EPERM`), with [`io::ErrorKind::AlreadyExists`] if the source is
//! attached already (here, or to any other loop built on [`glue`](crate::glue)), and with
//! [`io::ErrorKind::NotConnected`] once the glue has left its loop. Nothing stays installed
//! then.
//!
//! [`Generic`]: calloop::generic::Generic
//! [`Timer`]: calloop::timer::Timer
//! [`Ping`]: calloop::ping::Ping
//! [`FdRegistry`]: crate::glue::FdRegistry
//! [`TimerQueue`]: crate::glue::TimerQueue

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, ThreadId};
use std::time::Instant;

use ::calloop::generic::Generic;
use ::calloop::ping::{make_ping, Ping, PingSource};
use ::calloop::timer::{TimeoutAction, Timer};
use ::calloop::{
    EventSource, Interest, LoopHandle, Mode, Poll, PostAction, Readiness, RegistrationToken,
    Token as CalloopToken, TokenFactory,
};
use parking_lot::Mutex;
use slab::Slab;

use crate::glue::{
    Attachment, Attachments, Detach, FdRegistry, Recheck, Registrar, TimerQueue, Token,
};
use crate::{Delivery, Source, Timeout, TimeoutFunctions, Watch, WatchFlags, WatchFunctions};

/// How many times one source is dispatched in a row before the others get their turn.
const DISPATCH_BATCH: usize = 64;

/// A weak loop handle (calloop does not export its `WeakLoopHandle` type): the glue's event
/// sources live in the loop, so a strong handle there would be a cycle.
type WeakHandle<'l, Data> = Rc<dyn Fn() -> Option<LoopHandle<'l, Data>> + 'l>;

fn weak_handle<'l, Data: 'l>(handle: &LoopHandle<'l, Data>) -> WeakHandle<'l, Data> {
    let weak = handle.downgrade();
    Rc::new(move || weak.upgrade())
}

/// The glue between loopglue sources and one calloop loop, on the loop's thread: attach
/// sources with [`attach`](Self::attach). A cheap handle; clones share the glue.
///
/// See the [module documentation](self) for how it maps onto calloop.
#[cfg_attr(docsrs, doc(cfg(feature = "calloop")))]
pub struct CalloopGlue<'l, Data> {
    shared: Arc<Shared>,
    handle: WeakHandle<'l, Data>,
}

/// Attaches sources to a [`CalloopGlue`] from any thread, or from inside a producer's
/// handler. A cheap `Send + Sync` handle.
///
/// Registrations it causes are applied by the loop's thread, so a refusal by calloop's poller
/// (`EEXIST`, `EPERM`) cannot be its error: it stops the fd being polled, with a warning.
/// `EBADF` for a closed fd and "already attached" are still its errors.
#[cfg_attr(docsrs, doc(cfg(feature = "calloop")))]
#[derive(Clone)]
pub struct CalloopAttacher {
    shared: Arc<Shared>,
}

/// A source running in a [`CalloopGlue`]'s loop. Dropping it (on any thread) detaches the
/// source: every fd it used is out of calloop's poller before `drop` returns.
#[cfg_attr(docsrs, doc(cfg(feature = "calloop")))]
#[must_use = "dropping the attachment detaches the source at once"]
pub struct CalloopAttachment(Attachment<Arc<Shared>>);

/// What the glue's functions (any thread) and its event sources (the loop's thread) share.
struct Shared {
    state: Mutex<State>,
    attachments: Attachments,
    ping: Ping,
    loop_thread: ThreadId,
    /// Registrations or the timer wait for the loop's thread.
    attention: AtomicBool,
    /// The glue has left its loop: nothing polls for it any more.
    closed: AtomicBool,
}

#[derive(Default)]
struct State {
    fds: FdRegistry<usize>,
    host: Host,
    timers: TimerQueue,
    /// The deadline calloop's timer is armed for.
    armed: Option<Instant>,
    /// The glue's control source in the loop, once inserted.
    control: Option<RegistrationToken>,
    /// The handler batch buffer, kept between reports.
    batch: Vec<(Watch, WatchFlags)>,
}

/// The fd registry's host: one slot per registered fd, and the calloop operations that wait
/// for the loop's thread.
#[derive(Default)]
struct Host {
    slots: Slab<Slot>,
    ops: Vec<Op>,
}

struct Slot {
    fd: RawFd,
    token: Token,
    interest: WatchFlags,
    /// Registered with calloop's poller while `registered`; dropping it unregisters the fd.
    generic: Option<Generic<FdNumber>>,
    registered: bool,
    /// The slot's event source in the loop, once inserted.
    inserted: Option<RegistrationToken>,
}

/// calloop operations only the loop's thread can make.
enum Op {
    Insert(usize, Token),
    Update(usize, Token),
    Remove(RegistrationToken),
}

/// A watched fd number, as calloop's `Generic` takes it.
struct FdNumber(RawFd);

impl AsFd for FdNumber {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the `Generic` holding this is dropped — unregistering the fd — inside the
        // glue's `remove` of the fd's last watch, which producers call before they close the
        // fd (C15). A producer that breaks C15 can make the poller answer EBADF or act on a
        // recycled number, never make it touch memory.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

impl Registrar for Host {
    type Registration = usize;

    fn register(&mut self, fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<usize> {
        let key = self.slots.insert(Slot {
            fd,
            token,
            interest,
            generic: None,
            registered: false,
            inserted: None,
        });
        self.ops.push(Op::Insert(key, token));
        Ok(key)
    }

    fn reregister(
        &mut self,
        key: &mut usize,
        _: RawFd,
        token: Token,
        interest: WatchFlags,
    ) -> io::Result<()> {
        let slot = &mut self.slots[*key];
        slot.interest = interest;
        // Not inserted yet: the insert reads the latest interest.
        if slot.inserted.is_some() {
            self.ops.push(Op::Update(*key, token));
        }
        Ok(())
    }

    fn deregister(&mut self, key: usize, _: RawFd, _: Token) {
        let slot = self.slots.remove(key);
        // Unregisters the fd from calloop's poller now, on this thread (C15).
        drop(slot.generic);
        if let Some(inserted) = slot.inserted {
            self.ops.push(Op::Remove(inserted));
        }
    }
}

impl Host {
    fn slot(&mut self, key: usize, token: Token) -> Option<&mut Slot> {
        self.slots.get_mut(key).filter(|slot| slot.token == token)
    }

    /// Whether an operation waits that the loop's thread must make soon.
    fn urgent(&self) -> bool {
        self.ops.iter().any(|op| !matches!(op, Op::Remove(_)))
    }
}

fn interest_of(flags: WatchFlags) -> Interest {
    Interest {
        readable: flags.contains(WatchFlags::READABLE),
        writable: flags.contains(WatchFlags::WRITABLE),
    }
}

impl<'l, Data: 'l> CalloopGlue<'l, Data> {
    /// Inserts the glue into the loop of `handle` and returns it.
    ///
    /// The glue stays in the loop until [`remove`](Self::remove) or until the loop is
    /// dropped; either detaches every source still attached.
    ///
    /// # Errors
    ///
    /// If the ping's eventfd cannot be created or calloop refuses the glue's event source.
    pub fn insert(handle: &LoopHandle<'l, Data>) -> io::Result<CalloopGlue<'l, Data>> {
        let (ping, ping_source) = make_ping()?;
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let weak = weak.clone();
            Shared {
                state: Mutex::new(State::default()),
                attachments: Attachments::new(move || {
                    if let Some(shared) = weak.upgrade() {
                        shared.dispatch_soon();
                    }
                }),
                ping,
                loop_thread: thread::current().id(),
                attention: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }
        });
        let control = Control {
            shared: Arc::clone(&shared),
            handle: weak_handle(handle),
            ping: ping_source,
            timer: Timer::immediate(),
            synthetic: None,
        };
        let control = handle
            .insert_source(control, |(), &mut (), _| {})
            .map_err(|e| io::Error::from(e.error))?;
        shared.state.lock().control = Some(control);
        Ok(CalloopGlue {
            shared,
            handle: weak_handle(handle),
        })
    }

    /// Runs `source` in the loop until the returned attachment is dropped: installs the
    /// glue's watch, timeout, wakeup and dispatch-status functions, reads the dispatch status
    /// once (C16), and registers the source's fds with calloop before it returns. From inside
    /// a calloop callback too.
    ///
    /// # Errors
    ///
    /// `EBADF` if a watch's fd is closed; what calloop's poller refuses (`EEXIST` for an fd it
    /// already polls for another event source, `EPERM` for a regular file);
    /// [`io::ErrorKind::AlreadyExists`] if the source is attached already (here or to another
    /// loop built on [`glue`](crate::glue)); [`io::ErrorKind::NotConnected`] once the glue has
    /// left its loop. Nothing stays installed then.
    ///
    /// # Panics
    ///
    /// If the source's own code panics while it is installed; nothing stays installed then.
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<CalloopAttachment> {
        let (attachment, added) = self.shared.attach(source)?;
        let refused = match (self.handle)() {
            Some(handle) => self.shared.settle(&handle),
            None => Vec::new(),
        };
        if let Some((_, error)) = refused.into_iter().find(|(fd, _)| added.contains(fd)) {
            drop(attachment);
            return Err(error);
        }
        Ok(attachment)
    }

    /// A `Send + Sync` handle that attaches sources from any thread.
    pub fn attacher(&self) -> CalloopAttacher {
        CalloopAttacher {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Takes the glue out of its loop, detaching every source still attached.
    pub fn remove(self) {
        let control = self.shared.state.lock().control.take();
        if let (Some(handle), Some(control)) = ((self.handle)(), control) {
            handle.remove(control);
        }
        self.shared.close();
    }

    /// How many fds are registered with calloop now (or about to be, by the loop's thread).
    pub fn registered_fds(&self) -> usize {
        self.shared.state.lock().fds.registered()
    }

    /// How many fds were found closed or reused while watches still used them, or refused by
    /// calloop after the fact, and dropped.
    pub fn dropped_fds(&self) -> usize {
        self.shared.state.lock().fds.dropped()
    }

    /// How many timeouts the glue tracks.
    pub fn timeouts(&self) -> usize {
        self.shared.state.lock().timers.len()
    }

    /// How many sources are attached.
    pub fn sources(&self) -> usize {
        self.shared.attachments.len()
    }
}

impl<Data> Clone for CalloopGlue<'_, Data> {
    fn clone(&self) -> Self {
        CalloopGlue {
            shared: Arc::clone(&self.shared),
            handle: self.handle.clone(),
        }
    }
}

impl CalloopAttacher {
    /// Runs `source` in the glue's loop until the returned attachment is dropped, as
    /// [`CalloopGlue::attach`] does, from any thread; the loop's thread registers the fds.
    ///
    /// # Errors
    ///
    /// `EBADF` if a watch's fd is closed; [`io::ErrorKind::AlreadyExists`] if the source is
    /// attached already; [`io::ErrorKind::NotConnected`] once the glue has left its loop.
    /// Nothing stays installed then.
    ///
    /// # Panics
    ///
    /// If the source's own code panics while it is installed; nothing stays installed then.
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<CalloopAttachment> {
        self.shared.attach(source).map(|(attachment, _)| attachment)
    }
}

impl CalloopAttachment {
    /// The attached source.
    pub fn source(&self) -> &Arc<dyn Source> {
        self.0.source()
    }

    /// Detaches the source now: uninstalls every function the glue installed and
    /// unregisters every fd it used.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] when called from inside one of the source's own glue
    /// callbacks (not a handler): nothing changes then, and the attachment is handed back.
    ///
    /// # Panics
    ///
    /// If a free-data or another step panics, after every step has run.
    pub fn detach(self) -> Result<(), (CalloopAttachment, io::Error)> {
        self.0
            .detach()
            .map_err(|(back, error)| (CalloopAttachment(back), error))
    }
}

impl Detach for Shared {
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        self.attachments.detach(source).map(drop)
    }
}

impl Shared {
    fn on_loop_thread(&self) -> bool {
        thread::current().id() == self.loop_thread
    }

    /// Something waits for the loop's thread: from another thread, wake it; on it, the glue's
    /// event sources look before calloop sleeps.
    fn attend(&self) {
        self.attention.store(true, Ordering::SeqCst);
        if !self.on_loop_thread() {
            self.ping.ping();
        }
    }

    /// A source has work to dispatch (C16). On the loop's thread the glue dispatches after
    /// the handlers running now, or before calloop sleeps; elsewhere, wake the loop.
    fn dispatch_soon(&self) {
        if !self.on_loop_thread() {
            self.ping.ping();
        }
    }

    /// Installs the glue's functions on `source`; returns the attachment and the fds its
    /// watches were added on.
    fn attach(
        self: &Arc<Self>,
        source: Arc<dyn Source>,
    ) -> io::Result<(CalloopAttachment, Vec<RawFd>)> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(gone());
        }
        let weak = Arc::downgrade(self);
        let added = Arc::new(Mutex::new(Vec::new()));
        let ping = self.ping.clone();
        let loop_thread = self.loop_thread;
        let wakeup = Box::new(move || {
            if thread::current().id() != loop_thread {
                ping.ping();
            }
        });
        self.attachments.attach(
            Arc::clone(&source),
            Box::new(CalloopWatches {
                shared: weak.clone(),
                added: Arc::clone(&added),
            }),
            Box::new(CalloopTimeouts(weak)),
            Some(wakeup),
        )?;
        let added = std::mem::take(&mut *added.lock());
        Ok((
            CalloopAttachment(Attachment::new(Arc::clone(self), source)),
            added,
        ))
    }

    /// Detaches everything: the glue has left its loop.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.attachments.detach_all();
        let mut state = self.state.lock();
        let state = &mut *state;
        state.fds.clear(&mut state.host);
        state.host.ops.clear();
    }

    /// Whether calloop's timer must be armed earlier than it is.
    fn timer_behind(state: &mut State) -> bool {
        match (state.timers.next_deadline().instant(), state.armed) {
            (Some(due), Some(armed)) => due < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// On the loop's thread: makes the calloop operations that wait, re-arms the timer if it
    /// is behind, and returns the registrations calloop refused (fd, error).
    fn settle<'l, Data: 'l>(
        self: &Arc<Self>,
        handle: &LoopHandle<'l, Data>,
    ) -> Vec<(RawFd, io::Error)> {
        let mut refused = Vec::new();
        if !self.attention.swap(false, Ordering::SeqCst) {
            return refused;
        }
        loop {
            let (ops, rearm) = {
                let mut state = self.state.lock();
                let ops = std::mem::take(&mut state.host.ops);
                let rearm = Shared::timer_behind(&mut state)
                    .then_some(state.control)
                    .flatten();
                (ops, rearm)
            };
            if let Some(control) = rearm {
                // Inside the glue's own control source calloop defers this until the source
                // returns, which is soon enough.
                let _ = handle.update(&control);
            }
            if ops.is_empty() {
                return refused;
            }
            for op in ops {
                match op {
                    Op::Insert(key, token) => {
                        let source = FdSource {
                            shared: Arc::clone(self),
                            key,
                            token,
                            handle: weak_handle(handle),
                        };
                        match handle.insert_source(source, |(), &mut (), _| {}) {
                            Ok(inserted) => {
                                let mut state = self.state.lock();
                                match state.host.slot(key, token) {
                                    Some(slot) => slot.inserted = Some(inserted),
                                    // Deregistered while being inserted.
                                    None => state.host.ops.push(Op::Remove(inserted)),
                                }
                            }
                            Err(e) => self.refuse(key, token, e.error.into(), &mut refused),
                        }
                    }
                    Op::Update(key, token) => {
                        let inserted = {
                            let mut state = self.state.lock();
                            state.host.slot(key, token).and_then(|slot| slot.inserted)
                        };
                        if let Some(inserted) = inserted {
                            if let Err(e) = handle.update(&inserted) {
                                self.refuse(key, token, e.into(), &mut refused);
                            }
                        }
                    }
                    Op::Remove(inserted) => handle.remove(inserted),
                }
            }
        }
    }

    fn refuse(
        &self,
        key: usize,
        token: Token,
        error: io::Error,
        refused: &mut Vec<(RawFd, io::Error)>,
    ) {
        let mut state = self.state.lock();
        let state = &mut *state;
        if let Some(slot) = state.host.slot(key, token) {
            let copy = match error.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(error.kind(), error.to_string()),
            };
            refused.push((slot.fd, copy));
            state.fds.refused(token, error, &mut state.host);
        }
    }

    /// calloop reported the fd of slot `key` ready: hand the report to its watches.
    fn on_ready(&self, key: usize, token: Token, readiness: Readiness) {
        let mut condition = WatchFlags::empty();
        if readiness.readable {
            condition |= WatchFlags::READABLE;
        }
        if readiness.writable {
            condition |= WatchFlags::WRITABLE;
        }
        if readiness.error {
            condition |= WatchFlags::ERROR;
        }
        let mut state = self.state.lock();
        let (fd, interest) = match state.host.slot(key, token) {
            Some(slot) => (slot.fd, slot.interest),
            None => return,
        };
        // calloop drops the hang-up and error bits; epoll reports a hang-up as both
        // directions. A direction not asked for (or both at once) is looked at once more.
        if !(condition & !interest).is_empty() || condition.contains(WatchFlags::INTEREST) {
            drop(state);
            match Recheck::poll(fd, interest) {
                Ok(recheck) if !recheck.is_closed() => condition = recheck.ready(),
                _ => {
                    let mut state = self.state.lock();
                    let state = &mut *state;
                    state.fds.closed(token, &mut state.host);
                    return;
                }
            }
            if condition.is_empty() {
                return;
            }
            state = self.state.lock();
        }
        let mut batch = {
            let state = &mut *state;
            let mut batch = std::mem::take(&mut state.batch);
            state
                .fds
                .ready(token, condition, &mut state.host, &mut batch);
            batch
        };
        drop(state);
        let ran = panic::catch_unwind(AssertUnwindSafe(|| {
            for (watch, condition) in batch.drain(..) {
                let delivery = watch.handle(condition);
                if matches!(delivery, Delivery::Removed | Delivery::Disabled) {
                    let mut state = self.state.lock();
                    let state = &mut *state;
                    state.fds.report(token, &watch, delivery, &mut state.host);
                }
            }
        }));
        batch.clear();
        {
            let mut state = self.state.lock();
            if state.batch.capacity() < batch.capacity() {
                state.batch = batch;
            }
            if state.host.urgent() {
                self.attention.store(true, Ordering::SeqCst);
            }
        }
        if let Err(payload) = ran {
            // The panic may have come from a status function and taken a `DataRemains`
            // notification with it: every source's status is read again before calloop sleeps.
            self.attachments.queue().schedule_all();
            self.attention.store(true, Ordering::SeqCst);
            panic::resume_unwind(payload);
        }
    }

    /// Runs the dispatch queue; after a panic every source's status is read again (the panic
    /// may have come from a status function and taken a notification with it).
    fn dispatch(&self) {
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| {
            self.attachments.queue().run(DISPATCH_BATCH);
        })) {
            self.attachments.queue().schedule_all();
            panic::resume_unwind(payload);
        }
    }

    /// Fires the due timeouts, one at a time with no lock held (fixed delay, C10); returns
    /// the next deadline.
    fn fire_timers(&self) -> Option<Instant> {
        let mut state = self.state.lock();
        state.timers.collect_due(Instant::now());
        loop {
            let next = state.timers.next_due(Instant::now());
            let Some(timeout) = next else { break };
            drop(state);
            let _ = timeout.handle();
            state = self.state.lock();
        }
        state.timers.next_deadline().instant()
    }

    fn needs_loop(&self) -> bool {
        self.attention.load(Ordering::SeqCst) || self.attachments.queue().is_pending()
    }
}

/// The event source of one fd: registers the fd's `Generic` in level mode and hands its
/// readiness to the glue.
struct FdSource<'l, Data> {
    shared: Arc<Shared>,
    key: usize,
    token: Token,
    handle: WeakHandle<'l, Data>,
}

impl<'l, Data: 'l> EventSource for FdSource<'l, Data> {
    type Event = ();
    type Metadata = ();
    type Ret = ();
    type Error = io::Error;

    fn process_events<F>(
        &mut self,
        readiness: Readiness,
        _: CalloopToken,
        _: F,
    ) -> io::Result<PostAction>
    where
        F: FnMut((), &mut ()),
    {
        self.shared.on_ready(self.key, self.token, readiness);
        // Dispatch right after the handlers, so a message read now is answered now.
        self.shared.dispatch();
        if let Some(handle) = (self.handle)() {
            self.shared.settle(&handle);
        }
        Ok(PostAction::Continue)
    }

    fn register(&mut self, poll: &mut Poll, factory: &mut TokenFactory) -> ::calloop::Result<()> {
        let mut state = self.shared.state.lock();
        let Some(slot) = state.host.slot(self.key, self.token) else {
            return Ok(()); // deregistered meanwhile: an empty source, removed soon
        };
        let mut generic = Generic::new(FdNumber(slot.fd), interest_of(slot.interest), Mode::Level);
        generic.register(poll, factory)?;
        slot.generic = Some(generic);
        slot.registered = true;
        Ok(())
    }

    fn reregister(&mut self, poll: &mut Poll, factory: &mut TokenFactory) -> ::calloop::Result<()> {
        let mut state = self.shared.state.lock();
        let Some(slot) = state.host.slot(self.key, self.token) else {
            return Ok(());
        };
        let interest = interest_of(slot.interest);
        match slot.generic.as_mut() {
            Some(generic) if slot.registered => {
                generic.interest = interest;
                generic.reregister(poll, factory)
            }
            _ => {
                let mut generic = Generic::new(FdNumber(slot.fd), interest, Mode::Level);
                generic.register(poll, factory)?;
                slot.generic = Some(generic);
                slot.registered = true;
                Ok(())
            }
        }
    }

    fn unregister(&mut self, poll: &mut Poll) -> ::calloop::Result<()> {
        let mut state = self.shared.state.lock();
        if let Some(slot) = state.host.slot(self.key, self.token) {
            if let Some(generic) = slot.generic.as_mut().filter(|_| slot.registered) {
                slot.registered = false;
                // A closed fd is already out of the poller.
                let _ = generic.unregister(poll);
            }
        }
        Ok(())
    }
}

/// The glue's own event source: the ping (wakeups and changes from other threads), the timer,
/// and a look before calloop sleeps.
struct Control<'l, Data> {
    shared: Arc<Shared>,
    handle: WeakHandle<'l, Data>,
    ping: PingSource,
    timer: Timer,
    /// The token of the event `before_sleep` makes up when the glue needs the loop.
    synthetic: Option<CalloopToken>,
}

impl<'l, Data: 'l> Control<'l, Data> {
    fn arm(&mut self, poll: &mut Poll, factory: &mut TokenFactory) -> ::calloop::Result<()> {
        self.timer.unregister(poll)?;
        let due = self.shared.state.lock().timers.next_deadline().instant();
        if let Some(due) = due {
            self.timer = Timer::from_deadline(due);
            self.timer.register(poll, factory)?;
        }
        self.shared.state.lock().armed = due;
        Ok(())
    }
}

impl<'l, Data: 'l> EventSource for Control<'l, Data> {
    type Event = ();
    type Metadata = ();
    type Ret = ();
    type Error = io::Error;

    const NEEDS_EXTRA_LIFECYCLE_EVENTS: bool = true;

    fn process_events<F>(
        &mut self,
        readiness: Readiness,
        token: CalloopToken,
        _: F,
    ) -> io::Result<PostAction>
    where
        F: FnMut((), &mut ()),
    {
        self.ping
            .process_events(readiness, token, |(), &mut ()| {})
            .map_err(io::Error::other)?;
        let shared = &self.shared;
        let mut panicked = None;
        let _ = self
            .timer
            .process_events(readiness, token, |_, &mut ()| {
                let next = match panic::catch_unwind(AssertUnwindSafe(|| shared.fire_timers())) {
                    Ok(next) => next,
                    Err(payload) => {
                        // Timeouts collected and not fired yet come first next time.
                        panicked = Some(payload);
                        Some(Instant::now())
                    }
                };
                shared.state.lock().armed = next;
                next.map_or(TimeoutAction::Drop, TimeoutAction::ToInstant)
            })
            .map_err(io::Error::other)?;
        if let Some(payload) = panicked {
            self.shared.attachments.queue().schedule_all();
            self.shared.attention.store(true, Ordering::SeqCst);
            panic::resume_unwind(payload);
        }
        self.shared.dispatch();
        if let Some(handle) = (self.handle)() {
            // Re-arming the timer from here is deferred by calloop until this returns.
            self.shared.settle(&handle);
        }
        Ok(PostAction::Continue)
    }

    fn register(&mut self, poll: &mut Poll, factory: &mut TokenFactory) -> ::calloop::Result<()> {
        let synthetic = factory.token();
        self.synthetic = Some(synthetic);
        self.ping.register(poll, factory)?;
        self.arm(poll, factory)
    }

    fn reregister(&mut self, poll: &mut Poll, factory: &mut TokenFactory) -> ::calloop::Result<()> {
        self.synthetic = Some(factory.token());
        self.ping.reregister(poll, factory)?;
        self.arm(poll, factory)
    }

    fn unregister(&mut self, poll: &mut Poll) -> ::calloop::Result<()> {
        self.synthetic = None;
        self.ping.unregister(poll)?;
        self.timer.unregister(poll)?;
        self.shared.state.lock().armed = None;
        Ok(())
    }

    fn before_sleep(&mut self) -> ::calloop::Result<Option<(Readiness, CalloopToken)>> {
        // Work left by code that ran on the loop's thread outside the glue's own sources:
        // wake at once and do it in `process_events`, where calloop allows changes.
        Ok(self
            .synthetic
            .filter(|_| self.shared.needs_loop())
            .map(|token| (Readiness::EMPTY, token)))
    }
}

impl<Data> Drop for Control<'_, Data> {
    fn drop(&mut self) {
        // The loop is gone (or removed the glue): nothing may stay installed for it.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| self.shared.close()));
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the calloop glue has left its loop",
    )
}

/// The glue's watch functions, holding the glue weakly (the source holds them).
struct CalloopWatches {
    shared: Weak<Shared>,
    /// The fds of the watches added, for `CalloopGlue::attach` to match refusals.
    added: Arc<Mutex<Vec<RawFd>>>,
}

impl CalloopWatches {
    fn with(&self, f: impl FnOnce(&mut State)) {
        if let Some(shared) = self.shared.upgrade() {
            let urgent = {
                let mut state = shared.state.lock();
                f(&mut state);
                state.host.urgent()
            };
            if urgent {
                shared.attend();
            }
        }
    }
}

impl WatchFunctions for CalloopWatches {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        let shared = self.shared.upgrade().ok_or_else(gone)?;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(gone());
        }
        let urgent = {
            let mut state = shared.state.lock();
            let state = &mut *state;
            state.fds.add(watch, &mut state.host)?;
            state.host.urgent()
        };
        if let Some(fd) = watch.fd() {
            self.added.lock().push(fd);
        }
        if urgent {
            shared.attend();
        }
        Ok(())
    }

    fn remove(&mut self, watch: &Watch) {
        self.with(|state| state.fds.remove(watch, &mut state.host));
    }

    fn toggled(&mut self, watch: &Watch) {
        self.with(|state| state.fds.toggled(watch, &mut state.host));
    }
}

/// The glue's timeout functions.
struct CalloopTimeouts(Weak<Shared>);

impl CalloopTimeouts {
    fn with(&self, f: impl FnOnce(&mut TimerQueue)) {
        if let Some(shared) = self.0.upgrade() {
            let behind = {
                let mut state = shared.state.lock();
                f(&mut state.timers);
                Shared::timer_behind(&mut state)
            };
            if behind {
                shared.attend();
            }
        }
    }
}

impl TimeoutFunctions for CalloopTimeouts {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let shared = self.0.upgrade().ok_or_else(gone)?;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(gone());
        }
        self.with(|timers| timers.add(timeout, Instant::now()));
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        self.with(|timers| timers.remove(timeout));
    }

    fn toggled(&mut self, timeout: &Timeout) {
        // Enabled: (re)start the period from now with the current interval (C9).
        self.with(|timers| timers.toggled(timeout, Instant::now()));
    }
}

impl<Data> fmt::Debug for CalloopGlue<'_, Data> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl fmt::Debug for CalloopAttacher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CalloopAttacher").finish_non_exhaustive()
    }
}

impl fmt::Debug for CalloopAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CalloopAttachment")
            .field("source", &self.0.source().data().id())
            .finish()
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("CalloopGlue")
            .field("registered_fds", &state.fds.registered())
            .field("timeouts", &state.timers.len())
            .field("sources", &self.attachments.len())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}
