//! The GLib adapter (feature `glib`): runs any [`Source`] on a [`glib::MainContext`] — the
//! default one or any other, iterated by whatever thread owns it — the way dbus-glib's
//! `dbus_connection_setup_with_g_main` and libvirt-glib's `virEventRegisterGLib` run libdbus
//! and libvirt.
//!
//! | loopglue | GLib |
//! |---|---|
//! | the watches of one fd (C18) | one unix fd `GSource` (`g_unix_fd_source_new`, may recurse) for what the enabled watches want, replaced when that changes |
//! | a timeout | a timeout `GSource`, re-armed from the moment `handle()` is called (fixed delay, C10); an interval too long for GLib's `u32` milliseconds never fires |
//! | dispatch status (C16) | dispatched right after the watch handlers of an fd ran, else from an idle `GSource` |
//! | wakeup (C16) | [`MainContext::wakeup`](glib::MainContext::wakeup), from threads that do not own the context |
//!
//! [`GlibGlue::new`] makes the glue for one context; [`GlibGlue::attach`] runs a source on
//! it until the returned [`GlibAttachment`] is dropped (or [`detach`](GlibAttachment::detach)ed).
//! Everything may be called from any thread: GLib's sources are thread-safe, so the glue
//! registers and unregisters at once, whichever thread the producer calls it on, and the
//! handlers run on the thread that iterates the context.
//!
//! # How it runs
//!
//! GLib is level-triggered, so a producer that reads only part of what is ready (libdbus
//! reads 2 KiB per call) is called again (C17). glib-rs cannot write a `GSource` with its own
//! prepare and check functions (dbus-gmain's message-queue source), so queued work is
//! dispatched in two ways: right after the handlers of an fd ran — in the same GLib dispatch,
//! so a message read is answered without another iteration — and, for work queued anywhere
//! else (another thread, a timeout), by an idle source attached only while work is pending.
//!
//! The unix fd sources may recurse (`g_source_set_can_recurse`): GLib blocks a source that
//! may not for the time of each dispatch, by taking its fd out of the poll set and putting it
//! back, which costs two writes to the context's wakeup eventfd per dispatched source. A
//! handler that iterates the context (a nested main loop) may therefore see its own fd
//! handled inside it; the glue holds no lock while handlers run, so that is safe (C11).
//!
//! A unix fd source whose fd was closed under it reports `G_IO_NVAL` on every iteration; the
//! glue drops it (with a warning: the producer broke C15) instead of spinning.
//!
//! A panic in a handler cannot unwind through GLib's C frames. The glue catches it at that
//! boundary, after the panic hook has reported it, and leaves everything consistent: the
//! dispatches not run stay queued and every source's status is read again. The loop carries
//! on.
//!
//! # Examples
//!
//! An echo on a context of its own, iterated by this thread:
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use loopglue::adapters::glib::GlibGlue;
//! use loopglue::net::Connection;
//!
//! let context = glib::MainContext::new();
//! let glue = GlibGlue::new(&context);
//!
//! let (a, b) = UnixStream::pair()?;
//! let (client, service) = (Connection::from_stream(a)?, Connection::from_stream(b)?);
//! service.set_message_handler(|conn, message| conn.send(message).unwrap());
//! let replies = Arc::new(AtomicUsize::new(0));
//! let seen = Arc::clone(&replies);
//! client.set_message_handler(move |_, message| {
//!     assert_eq!(message, b"ping");
//!     seen.fetch_add(1, Ordering::SeqCst);
//! });
//! let _client = glue.attach(Arc::new(client.clone()))?;
//! let _service = glue.attach(Arc::new(service.clone()))?;
//!
//! client.send(b"ping".to_vec()).unwrap();
//! while replies.load(Ordering::SeqCst) < 1 {
//!     context.iteration(true);
//! }
//! // Dropping the attachments unregisters everything before the connections close (C15).
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Errors
//!
//! [`GlibGlue::attach`] fails with `EBADF` if a watch's fd is closed, and with
//! [`io::ErrorKind::AlreadyExists`] if the source is attached already (here, or to any other
//! loop built on [`glue`](crate::glue)); nothing stays installed then.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use ::glib::{ControlFlow, IOCondition, MainContext, Priority};
use parking_lot::Mutex;

mod fd_source;

use fd_source::fd_source;

use crate::glue::{
    Attachment, Attachments, Deadline, Detach, FdRegistry, Registrar, Token, WatchGlue,
};
use crate::{Delivery, Source, Timeout, TimeoutFunctions, Watch, WatchFlags};

/// How many times one source is dispatched in a row before the others get their turn.
const DISPATCH_BATCH: usize = 64;

/// Glue identities, for [`DISPATCHING`]; never zero.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The glue (by id) whose handlers run on this thread right now, followed by a dispatch
    /// of its queue: a source queued meanwhile needs no idle source.
    static DISPATCHING: Cell<u64> = const { Cell::new(0) };
}

/// The glue between loopglue sources and one [`glib::MainContext`]: attach sources with
/// [`attach`](Self::attach). A cheap handle: clones share the glue.
///
/// See the [module documentation](self) for how it maps onto GLib.
#[cfg_attr(docsrs, doc(cfg(feature = "glib")))]
#[derive(Clone)]
pub struct GlibGlue {
    inner: Arc<Inner>,
}

/// A source running on a [`GlibGlue`]'s context. Dropping it detaches the source:
/// every `GSource` it used is destroyed before `drop` returns.
#[cfg_attr(docsrs, doc(cfg(feature = "glib")))]
#[must_use = "dropping the attachment detaches the source at once"]
pub struct GlibAttachment(Attachment<Arc<Inner>>);

struct Inner {
    id: u64,
    context: MainContext,
    priority: Priority,
    state: Mutex<State>,
    attachments: Attachments,
    /// An idle source is attached (or about to be) to run the dispatch queue.
    idle_pending: AtomicBool,
    idle: Mutex<Option<::glib::Source>>,
}

#[derive(Default)]
struct State {
    fds: FdRegistry<::glib::Source>,
    timers: HashMap<u64, Timer>,
    /// The handler batch buffer, kept between reports.
    batch: Vec<(Watch, WatchFlags)>,
}

struct Timer {
    timeout: Timeout,
    source: Option<::glib::Source>,
    /// Bumped on every arm: a firing of an older source is stale.
    generation: u64,
}

impl GlibGlue {
    /// The glue for `context`, with its sources at [`Priority::DEFAULT`].
    pub fn new(context: &MainContext) -> GlibGlue {
        GlibGlue::with_priority(context, Priority::DEFAULT)
    }

    /// The glue for `context`, with every `GSource` it creates at `priority`.
    pub fn with_priority(context: &MainContext, priority: Priority) -> GlibGlue {
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                context: context.clone(),
                priority,
                state: Mutex::new(State::default()),
                attachments: Attachments::new(move || {
                    if let Some(inner) = weak.upgrade() {
                        inner.dispatch_soon();
                    }
                }),
                idle_pending: AtomicBool::new(false),
                idle: Mutex::new(None),
            }
        });
        GlibGlue { inner }
    }

    /// The context this glue attaches to.
    pub fn context(&self) -> &MainContext {
        &self.inner.context
    }

    /// Runs `source` on the context until the returned attachment is dropped: installs the
    /// glue's watch, timeout, wakeup and dispatch-status functions, then reads the dispatch
    /// status once (C16). May be called from any thread, inside a handler too.
    ///
    /// # Errors
    ///
    /// `EBADF` if a watch's fd is closed; [`io::ErrorKind::AlreadyExists`] if the source is
    /// attached already (here or to another loop built on [`glue`](crate::glue)). Nothing
    /// stays installed then.
    ///
    /// # Panics
    ///
    /// If the source's own code panics while it is installed; nothing stays installed then.
    #[doc(alias = "dbus_connection_setup_with_g_main")]
    #[doc(alias = "dbus_server_setup_with_g_main")]
    pub fn attach(&self, source: Arc<dyn Source>) -> io::Result<GlibAttachment> {
        let weak = Arc::downgrade(&self.inner);
        let context = self.inner.context.clone();
        // The owner is iterating it (possibly inside this very call): nothing to wake.
        let wakeup = Box::new(move || {
            if !context.is_owner() {
                context.wakeup();
            }
        });
        self.inner.attachments.attach(
            Arc::clone(&source),
            Inner::watch_functions(&self.inner),
            Box::new(GlibTimeouts(weak)),
            Some(wakeup),
        )?;
        Ok(GlibAttachment(Attachment::new(
            Arc::clone(&self.inner),
            source,
        )))
    }

    /// How many fds have a unix fd `GSource` now.
    pub fn registered_fds(&self) -> usize {
        self.inner.state.lock().fds.registered()
    }

    /// How many fds were found closed (`G_IO_NVAL`) or reused while watches still used them,
    /// and dropped (C15).
    pub fn dropped_fds(&self) -> usize {
        self.inner.state.lock().fds.dropped()
    }

    /// How many timeouts have a timeout `GSource` now (enabled ones with a reachable
    /// interval).
    pub fn armed_timeouts(&self) -> usize {
        let state = self.inner.state.lock();
        state.timers.values().filter(|t| t.source.is_some()).count()
    }

    /// How many sources are attached.
    pub fn sources(&self) -> usize {
        self.inner.attachments.len()
    }
}

impl GlibAttachment {
    /// The attached source.
    pub fn source(&self) -> &Arc<dyn Source> {
        self.0.source()
    }

    /// Detaches the source now: uninstalls every function the glue installed and destroys
    /// every `GSource` it used.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] when called from inside one of the source's own glue
    /// callbacks (not a handler): nothing changes then, and the attachment is handed back.
    ///
    /// # Panics
    ///
    /// If a free-data or another step panics, after every step has run.
    pub fn detach(self) -> Result<(), (GlibAttachment, io::Error)> {
        self.0
            .detach()
            .map_err(|(back, error)| (GlibAttachment(back), error))
    }
}

impl Detach for Inner {
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        self.attachments.detach(source).map(drop)
    }
}

impl Inner {
    fn host(&self, weak: Weak<Inner>) -> Host<'_> {
        Host {
            inner: weak,
            context: &self.context,
            priority: self.priority,
        }
    }

    fn weak(self: &Arc<Self>) -> Weak<Inner> {
        Arc::downgrade(self)
    }

    /// The dispatch queue has work: unless this glue's handlers are running on this thread
    /// (their dispatch follows), make sure an idle source will run it.
    fn dispatch_soon(self: &Arc<Self>) {
        if DISPATCHING.with(Cell::get) == self.id {
            return;
        }
        self.ensure_idle();
    }

    fn ensure_idle(self: &Arc<Self>) {
        if self.idle_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = self.weak();
        let idle = ::glib::idle_source_new(None, self.priority, move || match weak.upgrade() {
            Some(inner) => inner.on_idle(),
            None => ControlFlow::Break,
        });
        // Attaching from a thread that does not own the context wakes it.
        idle.attach(Some(&self.context));
        let old = self.idle.lock().replace(idle);
        drop(old);
    }

    fn on_idle(self: &Arc<Self>) -> ControlFlow {
        self.dispatching(|| ());
        if self.attachments.queue().is_pending() {
            return ControlFlow::Continue;
        }
        self.idle_pending.store(false, Ordering::SeqCst);
        // A source queued between the check and the store found `idle_pending` set and
        // relied on this source: keep it.
        if self.attachments.queue().is_pending() && !self.idle_pending.swap(true, Ordering::SeqCst)
        {
            return ControlFlow::Continue;
        }
        ControlFlow::Break
    }

    /// Runs `handlers`, then the dispatch queue, marked as this glue's dispatch on this thread
    /// (so the sources they queue need no idle source). A panic is caught here — it cannot
    /// unwind into GLib — after which the glue is as if the panicking call had returned.
    fn dispatching(self: &Arc<Self>, handlers: impl FnOnce()) {
        let outer = DISPATCHING.with(|d| d.replace(self.id));
        let ran = panic::catch_unwind(AssertUnwindSafe(|| {
            handlers();
            self.attachments.queue().run(DISPATCH_BATCH);
        }));
        DISPATCHING.with(|d| d.set(outer));
        if ran.is_err() {
            // The panic may have come from a status function and taken a `DataRemains`
            // notification with it: read every source's status again.
            self.attachments.queue().schedule_all();
        }
        if self.attachments.queue().is_pending() {
            self.ensure_idle();
        }
    }

    /// A unix fd source reported `condition` for the registration `token`.
    fn on_fd(self: &Arc<Self>, token: Token, condition: IOCondition) -> ControlFlow {
        let mut batch = {
            let mut state = self.state.lock();
            let state = &mut *state;
            let mut host = self.host(self.weak());
            if condition.contains(IOCondition::NVAL) {
                state.fds.closed(token, &mut host);
                return ControlFlow::Break;
            }
            if state.fds.fd(token).is_none() {
                return ControlFlow::Break;
            }
            let mut batch = std::mem::take(&mut state.batch);
            state
                .fds
                .ready(token, watch_flags(condition), &mut host, &mut batch);
            batch
        };
        self.dispatching(|| {
            for (watch, condition) in batch.drain(..) {
                let delivery = watch.handle(condition);
                if matches!(delivery, Delivery::Removed | Delivery::Disabled) {
                    let mut state = self.state.lock();
                    let mut host = self.host(self.weak());
                    state.fds.report(token, &watch, delivery, &mut host);
                }
            }
        });
        batch.clear();
        let mut state = self.state.lock();
        if state.batch.capacity() < batch.capacity() {
            state.batch = batch;
        }
        ControlFlow::Continue
    }

    /// Arms `timer` for one period from now, if it is enabled and its interval fits GLib.
    fn arm(self: &Arc<Self>, id: u64, timer: &mut Timer) {
        if let Some(old) = timer.source.take() {
            old.destroy();
        }
        timer.generation += 1;
        if !timer.timeout.is_enabled() {
            return;
        }
        let interval = timer.timeout.interval();
        // Rounded up to GLib's milliseconds, never down to zero (C10); beyond u32::MAX
        // milliseconds (49 days) is never.
        let Some(ms) = Deadline::ticks(interval, Duration::from_millis(1))
            .and_then(|ms| u32::try_from(ms).ok())
        else {
            return;
        };
        let (weak, generation) = (self.weak(), timer.generation);
        let source = ::glib::timeout_source_new(
            Duration::from_millis(u64::from(ms)),
            None,
            self.priority,
            move || {
                if let Some(inner) = weak.upgrade() {
                    inner.on_timer(id, generation);
                }
                ControlFlow::Break
            },
        );
        source.attach(Some(&self.context));
        timer.source = Some(source);
    }

    /// A timeout source fired: re-arm first, so the next period starts as `handle()` is called
    /// (fixed delay, C10) and a handler that disables, restarts or removes the timeout is
    /// obeyed; then call it.
    fn on_timer(self: &Arc<Self>, id: u64, generation: u64) {
        let timeout = {
            let mut state = self.state.lock();
            let Some(timer) = state.timers.get_mut(&id) else {
                return;
            };
            if timer.generation != generation {
                return;
            }
            // The fired source returns Break; arming destroys it, which GLib allows.
            self.arm(id, timer);
            timer.timeout.clone()
        };
        self.dispatching(|| {
            let _ = timeout.handle();
        });
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(idle) = self.idle.get_mut().take() {
            idle.destroy();
        }
    }
}

/// The context as the fd registry's host: one unix fd `GSource` per fd.
struct Host<'a> {
    inner: Weak<Inner>,
    context: &'a MainContext,
    priority: Priority,
}

impl Registrar for Host<'_> {
    type Registration = ::glib::Source;

    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: WatchFlags,
    ) -> io::Result<::glib::Source> {
        let inner = self.inner.clone();
        let source = fd_source(
            fd,
            io_condition(interest),
            self.priority,
            Box::new(move |condition| match inner.upgrade() {
                Some(inner) => inner.on_fd(token, condition),
                None => ControlFlow::Break,
            }),
        );
        source.attach(Some(self.context));
        Ok(source)
    }

    fn reregister(
        &mut self,
        registration: &mut ::glib::Source,
        fd: RawFd,
        token: Token,
        interest: WatchFlags,
    ) -> io::Result<()> {
        // glib-rs has no g_source_modify_unix_fd: a new source replaces the old one.
        let new = self.register(fd, token, interest)?;
        std::mem::replace(registration, new).destroy();
        Ok(())
    }

    fn deregister(&mut self, registration: ::glib::Source, _: RawFd, _: Token) {
        // Removes the fd from the context's poll set before returning (C15).
        registration.destroy();
    }
}

fn io_condition(interest: WatchFlags) -> IOCondition {
    let mut condition = IOCondition::ERR | IOCondition::HUP;
    if interest.contains(WatchFlags::READABLE) {
        condition |= IOCondition::IN;
    }
    if interest.contains(WatchFlags::WRITABLE) {
        condition |= IOCondition::OUT;
    }
    condition
}

fn watch_flags(condition: IOCondition) -> WatchFlags {
    let mut flags = WatchFlags::empty();
    if condition.intersects(IOCondition::IN | IOCondition::PRI) {
        flags |= WatchFlags::READABLE;
    }
    if condition.contains(IOCondition::OUT) {
        flags |= WatchFlags::WRITABLE;
    }
    if condition.contains(IOCondition::ERR) {
        flags |= WatchFlags::ERROR;
    }
    if condition.contains(IOCondition::HUP) {
        flags |= WatchFlags::HANGUP;
    }
    flags
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the GLib glue was dropped")
}

/// The glue's watch functions: the registry with the context as its host.
impl WatchGlue for Inner {
    type Registration = ::glib::Source;
    type Host<'a> = Host<'a>;
    const GONE: &'static str = "GLib glue";

    fn with_fds<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut FdRegistry<::glib::Source>, &mut Host<'_>) -> T,
    ) -> T {
        let mut host = self.host(self.weak());
        let mut state = self.state.lock();
        f(&mut state.fds, &mut host)
    }
}

/// The glue's timeout functions.
struct GlibTimeouts(Weak<Inner>);

impl TimeoutFunctions for GlibTimeouts {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let inner = self.0.upgrade().ok_or_else(gone)?;
        let mut timer = Timer {
            timeout: timeout.clone(),
            source: None,
            generation: 0,
        };
        let mut state = inner.state.lock();
        inner.arm(timeout.id(), &mut timer);
        if let Some(old) = state.timers.insert(timeout.id(), timer) {
            if let Some(source) = old.source {
                source.destroy();
            }
        }
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        if let Some(inner) = self.0.upgrade() {
            let removed = inner.state.lock().timers.remove(&timeout.id());
            if let Some(source) = removed.and_then(|t| t.source) {
                source.destroy();
            }
        }
    }

    fn toggled(&mut self, timeout: &Timeout) {
        if let Some(inner) = self.0.upgrade() {
            let mut state = inner.state.lock();
            if let Some(timer) = state.timers.get_mut(&timeout.id()) {
                // Enabled: (re)start the period from now with the current interval (C9).
                inner.arm(timeout.id(), timer);
            }
        }
    }
}

impl fmt::Debug for GlibGlue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("GlibGlue")
            .field("registered_fds", &state.fds.registered())
            .field("timeouts", &state.timers.len())
            .field("sources", &self.inner.attachments.len())
            .finish()
    }
}

impl fmt::Debug for GlibAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlibAttachment")
            .field("source", &self.0.source().data().id())
            .finish()
    }
}
