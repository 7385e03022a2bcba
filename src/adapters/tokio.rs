//! Glue for a tokio runtime: sources run inside the application's runtime, current-thread or
//! multi-thread.
//!
//! [`attach`] (inside the runtime) or [`attach_to`] (from any thread, with a
//! [`Handle`]) installs the glue on a source and spawns one **driver task** for it on the
//! runtime. Everything of that source runs in its driver task: watch handlers, timeouts and
//! dispatches, one at a time — so a producer's handlers never run concurrently with each other,
//! as in any single-threaded loop, while different sources run in parallel on a multi-thread
//! runtime. Sources are `Send + Sync`, so the driver is an ordinary `Send` task: no
//! `LocalSet` needed.
//!
//! What the glue takes care of:
//!
//! * **One `AsyncFd` per fd** (C18): tokio refuses a second registration of an fd, so the
//!   watches of an fd are merged into one registration, which follows their enabled state.
//! * **Level-triggered delivery on edge-triggered readiness** (C17): tokio reports an fd once
//!   per edge, but a producer may read only part of what is ready per `handle` (libdbus reads
//!   2 KiB). After an fd's handlers ran, the driver polls it once without blocking; readiness
//!   it finds gone is cleared in tokio (with the tick tokio handed out *before* the poll, so
//!   an edge that arrives meanwhile is never lost), and an fd still ready is handled again
//!   after the driver yielded to the runtime — one busy fd cannot starve other tasks.
//! * **Timers on tokio's clock**: the driver sleeps with [`tokio::time`] until
//!   the next timeout, so `tokio::time::pause()` and `advance()` drive the timeouts of a test.
//!   Periods are fixed-delay, restarted with the current interval when enabled (C9, C10); an
//!   interval too large for the clock is never due.
//! * **Wakeups and dispatch** (C16): a source with queued work — notified from any thread, or
//!   already waiting when attached — is dispatched by its driver without waiting for fd
//!   activity. While the driver runs, notifications cost an atomic store.
//! * **Removal before close** (C15): see [Safety](#safety).
//!
//! A handler that panics panics the driver task (tokio reports it as for any task, and a
//! runtime built with `unhandled_panic(ShutdownRuntime)` shuts down); unless the runtime shuts
//! down, a new driver takes over the source where the old one stopped.
//!
//! # Safety
//!
//! tokio's `AsyncFd::register` is `unsafe`: the fd must stay open, naming the same file, for
//! as long as the `AsyncFd` lives. The glue keeps each `AsyncFd` inside its fd registry, uses
//! it only under the registry's lock (never across a handler), and drops it — which
//! deregisters it — synchronously inside the glue's `remove`, before `remove` returns. A
//! producer removes a watch before it closes the fd (C15), and removing the last watch of an
//! fd is what drops its `AsyncFd`, so the fd is open while tokio deregisters it. A producer
//! that breaks C15 (closes an fd, or lets its number be reused, while its watch is
//! registered) is found out by `fstat` when the registration goes: then the `AsyncFd` is
//! leaked instead of dropped, so tokio never deregisters a number that may name another file
//! now, nor frees state the kernel may still report events for.
//!
//! # Examples
//!
//! An echo over a socketpair on a current-thread runtime: a
//! [`Connection`](crate::net::Connection) on each end, both attached.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use loopglue::adapters::tokio::attach;
//! use loopglue::net::Connection;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let reply = runtime.block_on(async {
//!     let (a, b) = std::os::unix::net::UnixStream::pair()?;
//!     let (client, service) = (Connection::from_stream(a)?, Connection::from_stream(b)?);
//!     service.set_message_handler(|conn, message| {
//!         let _ = conn.send(message); // echo
//!     });
//!     let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//!     client.set_message_handler(move |_, message| {
//!         let _ = tx.send(message);
//!     });
//!     let _client = attach(Arc::new(client.clone()))?;
//!     let _service = attach(Arc::new(service))?;
//!
//!     client.send(b"ping".to_vec()).expect("connected");
//!     let reply = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
//!     // Dropping the attachments detaches both sources.
//!     Ok::<_, std::io::Error>(reply.ok().flatten())
//! })?;
//! assert_eq!(reply.as_deref(), Some(&b"ping"[..]));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Errors
//!
//! [`attach`] and [`attach_to`] fail, with nothing left installed, when the runtime cannot
//! run the source — there is no runtime ([`attach`] outside one), or it was built without
//! I/O or time drivers ([`io::ErrorKind::Unsupported`]) — or when an fd cannot be
//! registered: it is closed (`EBADF`), tokio already has it registered (`EEXIST`,
//! [`io::ErrorKind::AlreadyExists`]: an `AsyncFd` or a tokio socket of the application's, or
//! another source's watch on the same fd), or it is a regular file (`EPERM`). A source
//! attached already (here or to another loop built on [`glue`](crate::glue)) is refused
//! with [`io::ErrorKind::AlreadyExists`].

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use ::tokio::io::unix::AsyncFd;
use ::tokio::io::{Interest, Ready};
use ::tokio::runtime::Handle;
use ::tokio::time::Sleep;
use parking_lot::{Mutex, MutexGuard};

use crate::glue::{
    Attachment, Attachments, Detach, FdRegistry, FileIdentity, Recheck, Registrar, TimerGlue,
    TimerQueue, Token, WatchGlue,
};
use crate::{Delivery, Source, WakeupFn, Watch, WatchFlags};

/// How many times the source is dispatched per driver turn before the driver yields.
const DISPATCH_BATCH: usize = 64;

/// Runs `source` on the tokio runtime this is called from: installs the glue's functions on
/// it, registers its enabled watches, and spawns its driver task. The source runs until the
/// returned [`TokioAttachment`] is dropped or detached.
///
/// # Errors
///
/// [`io::ErrorKind::NotFound`] outside a tokio runtime (use [`attach_to`] there); otherwise
/// as [`attach_to`].
///
/// # Panics
///
/// If the source's code panics; nothing stays installed then.
///
/// # Examples
///
/// See the [module documentation](self#examples).
pub fn attach(source: Arc<dyn Source>) -> io::Result<TokioAttachment> {
    let handle = Handle::try_current().map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("attach needs a tokio runtime ({e}); use attach_to with its Handle"),
        )
    })?;
    attach_to(&handle, source)
}

/// Runs `source` on the runtime of `handle`, from any thread (or from inside a handler): as
/// [`attach`].
///
/// # Errors
///
/// See the [module documentation](self#errors); nothing stays installed then.
///
/// # Panics
///
/// If the source's code panics; nothing stays installed then.
pub fn attach_to(handle: &Handle, source: Arc<dyn Source>) -> io::Result<TokioAttachment> {
    // The driver's timer, made first: it tells whether the runtime has a time driver.
    let sleep = panic::catch_unwind(AssertUnwindSafe(|| {
        let _runtime = handle.enter();
        Box::pin(::tokio::time::sleep(Duration::ZERO))
    }))
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "the tokio runtime has no time driver: build it with enable_time() or enable_all()",
        )
    })?;
    let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
        let weak = weak.clone();
        Shared {
            handle: handle.clone(),
            state: Mutex::new(State::default()),
            attachments: Attachments::new(move || {
                if let Some(shared) = weak.upgrade() {
                    shared.notify();
                }
            }),
            fresh: Mutex::new(Vec::new()),
            driver: Mutex::new(None),
            timers_changed: AtomicBool::new(false),
            running: AtomicBool::new(false),
            detached: AtomicBool::new(false),
        }
    });
    let waking = Arc::downgrade(&shared);
    let wakeup: WakeupFn = Box::new(move || {
        if let Some(shared) = waking.upgrade() {
            shared.notify();
        }
    });
    shared.attachments.attach(
        Arc::clone(&source),
        Shared::watch_functions(&shared),
        Shared::timeout_functions(&shared),
        Some(wakeup),
    )?;
    handle.spawn(Driver::new(Arc::clone(&shared), sleep));
    Ok(TokioAttachment(Attachment::new(shared, source)))
}

/// A source attached to a tokio runtime by [`attach`] or [`attach_to`]. Dropping it detaches
/// the source: every function the glue installed is uninstalled and every `AsyncFd`
/// deregistered before the drop returns, and the driver task ends.
#[must_use = "dropping the attachment detaches the source"]
pub struct TokioAttachment(Attachment<Arc<Shared>>);

/// What the glue functions, the token wakers and the driver task of one source share.
struct Shared {
    handle: Handle,
    state: Mutex<State>,
    /// The one attached source and its dispatch queue (C16).
    attachments: Attachments,
    /// Registrations to look at: woken by tokio, new, or widened.
    fresh: Mutex<Vec<Token>>,
    /// The driver task's waker.
    driver: Mutex<Option<Waker>>,
    /// A timeout was added or toggled: the driver's sleep must be set again.
    timers_changed: AtomicBool,
    /// The driver is in its turn: before it sleeps it looks for work queued meanwhile (fresh
    /// registrations, pending dispatches, changed timers), so nothing needs to wake it.
    running: AtomicBool,
    detached: AtomicBool,
}

#[derive(Default)]
struct State {
    fds: FdRegistry<Registration>,
    timers: TimerQueue,
}

/// One fd's registration with tokio: its `AsyncFd`, the waker tokio calls when it is ready,
/// what the enabled watches want, and the file it was made for.
struct Registration {
    fd: AsyncFd<Fd>,
    waker: Waker,
    interest: WatchFlags,
    file: Option<FileIdentity>,
}

/// An fd number the registry's watches name; it does not own the fd (the producer does).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Tells the driver which registration tokio found ready.
struct TokenWaker {
    token: Token,
    shared: Weak<Shared>,
}

impl Wake for TokenWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.fresh.lock().push(self.token);
            shared.notify();
        }
    }
}

/// tokio as the fd registry's host.
struct Host<'a> {
    shared: &'a Weak<Shared>,
    handle: &'a Handle,
    /// Registrations the driver must look at once the lock is released.
    look: &'a mut Vec<Token>,
}

/// Adds which fd to a refusal, keeping the error kind (and `EBADF` as it is: the registry
/// reads it as "closed").
fn refused(error: io::Error, fd: RawFd) -> io::Error {
    match error.raw_os_error() {
        Some(nix::libc::EBADF) => error,
        Some(nix::libc::EEXIST) => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "fd {fd} is already registered with this tokio runtime (an AsyncFd or tokio \
                 socket of the application's, or another source's watch): {error}"
            ),
        ),
        _ => io::Error::new(error.kind(), format!("tokio refused fd {fd}: {error}")),
    }
}

impl Registrar for Host<'_> {
    type Registration = Registration;

    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        wanted: WatchFlags,
    ) -> io::Result<Registration> {
        let file = FileIdentity::of(fd).ok();
        let registered = panic::catch_unwind(AssertUnwindSafe(|| {
            let _runtime = self.handle.enter();
            // Both directions, whatever the watches want now: tokio cannot change an
            // `AsyncFd`'s interest, and the driver only polls the directions wanted.
            //
            // SAFETY: the fd is open (the registry checked it with fstat just now) and stays
            // open, naming the same file, until this `AsyncFd` is dropped: it lives in the
            // registry's entry for the fd and is dropped in `deregister`, which the registry
            // calls synchronously inside the glue's `remove` of the fd's last watch (or in
            // `detach`), and a producer removes a watch before it closes its fd (C15). If a
            // producer breaks C15, `deregister` sees it and leaks the `AsyncFd` instead.
            unsafe {
                AsyncFd::register_with_interest(Fd(fd), Interest::READABLE | Interest::WRITABLE)
            }
        }));
        let fd_registration = match registered {
            Ok(Ok(registration)) => registration,
            Ok(Err(error)) => return Err(refused(error.into_parts().1, fd)),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the tokio runtime has no I/O driver: build it with enable_io() or \
                     enable_all()",
                ))
            }
        };
        self.look.push(token);
        Ok(Registration {
            fd: fd_registration,
            waker: Waker::from(Arc::new(TokenWaker {
                token,
                shared: self.shared.clone(),
            })),
            interest: wanted,
            file,
        })
    }

    fn reregister(
        &mut self,
        registration: &mut Registration,
        _: RawFd,
        _: Token,
        wanted: WatchFlags,
    ) -> io::Result<()> {
        // The `AsyncFd` takes both directions; the driver polls what is wanted.
        registration.interest = wanted;
        Ok(())
    }

    fn deregister(&mut self, registration: Registration, fd: RawFd, _: Token) {
        let Registration {
            fd: async_fd, file, ..
        } = registration;
        if file.is_some_and(|file| file.is_named_by(fd)) {
            drop(async_fd); // deregisters the fd from tokio, while it is open (C15)
        } else {
            // The fd was closed, or its number now names another file, under the
            // registration (C15 broken by the producer): dropping would deregister the number
            // — perhaps another file's registration — and let tokio free what the kernel may
            // still report. Leaked instead; the runtime releases it when it shuts down.
            std::mem::forget(async_fd);
        }
    }

    fn widened(&mut self, _: RawFd, token: Token, _: WatchFlags) {
        // An edge that passed while nobody wanted the direction will not come again (C17).
        self.look.push(token);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Tells the driver to look, once the work is queued: wakes it unless it is in its turn
    /// (then it finds the work before it sleeps). Per message on the driver's own task —
    /// libdbus calls its wakeup function for each — this is an atomic load.
    fn notify(&self) {
        if !self.running.load(Ordering::SeqCst) {
            self.wake_driver();
        }
    }

    fn wake_driver(&self) {
        let waker = self.driver.lock().clone();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Queues registrations for the driver to look at.
    fn look_at(&self, tokens: Vec<Token>) {
        if !tokens.is_empty() {
            self.fresh.lock().extend(tokens);
            self.notify();
        }
    }
}

/// The driver task of one source: handles ready fds, fires due timeouts, dispatches.
struct Driver {
    shared: Arc<Shared>,
    sleep: Pin<Box<Sleep>>,
    /// The deadline `sleep` is set for.
    armed: Option<Instant>,
    /// Registrations found still ready after their handlers ran, with what was ready: handled
    /// again in the next turn, after yielding (C17).
    again: Vec<(Token, WatchFlags)>,
    // Buffers reused across turns.
    fresh: Vec<Token>,
    batch: Vec<(Watch, WatchFlags)>,
    handle: Vec<(Token, Watch, WatchFlags)>,
    handled: Vec<Token>,
}

/// What tokio's cached readiness of a registration says, for the watches.
enum Readiness {
    /// Nothing wanted is ready: the token waker is armed.
    Idle,
    Ready(WatchFlags),
    Closed,
}

/// Reads tokio's readiness of `registration` for the directions its watches want, arming its
/// token waker for those not ready. A hang-up or error bit makes the glue poll the fd for the
/// exact condition, which tokio does not keep.
fn readiness(registration: &Registration) -> Readiness {
    let mut cx = Context::from_waker(&registration.waker);
    let mut condition = WatchFlags::empty();
    let mut closed = false;
    if registration.interest.contains(WatchFlags::READABLE) {
        if let Poll::Ready(Ok(guard)) = registration.fd.poll_read_ready(&mut cx) {
            let ready = guard.ready();
            if ready.is_readable() {
                condition |= WatchFlags::READABLE;
            }
            closed |= ready.is_read_closed();
        }
    }
    if registration.interest.contains(WatchFlags::WRITABLE) {
        if let Poll::Ready(Ok(guard)) = registration.fd.poll_write_ready(&mut cx) {
            let ready = guard.ready();
            if ready.is_writable() {
                condition |= WatchFlags::WRITABLE;
            }
            closed |= ready.is_write_closed();
        }
    }
    if closed {
        match Recheck::poll(registration.fd.get_ref().0, registration.interest) {
            Ok(recheck) if recheck.is_closed() => return Readiness::Closed,
            Ok(recheck) => condition = recheck.ready(),
            Err(_) => {}
        }
    }
    if condition.is_empty() {
        Readiness::Idle
    } else {
        Readiness::Ready(condition)
    }
}

/// What a re-check after the handlers found.
enum Rechecked {
    /// Not ready any more: cleared in tokio, the token waker armed.
    Idle,
    /// tokio saw a new edge while the glue looked: look again next turn.
    Fresh,
    Again(WatchFlags),
    Closed,
}

/// The level-triggered re-check (C17): polls the fd once, clears in tokio what it found not
/// ready — with the readiness ticks taken *before* the poll, so that tokio keeps an edge that
/// arrived meanwhile — and arms the token waker for it.
fn recheck(registration: &Registration) -> Rechecked {
    let mut cx = Context::from_waker(&registration.waker);
    let wants_read = registration.interest.contains(WatchFlags::READABLE);
    let wants_write = registration.interest.contains(WatchFlags::WRITABLE);
    let mut read = match wants_read.then(|| registration.fd.poll_read_ready(&mut cx)) {
        Some(Poll::Ready(Ok(guard))) => Some(guard),
        _ => None,
    };
    let mut write = match wants_write.then(|| registration.fd.poll_write_ready(&mut cx)) {
        Some(Poll::Ready(Ok(guard))) => Some(guard),
        _ => None,
    };
    if read.is_none() && write.is_none() {
        return Rechecked::Idle; // both armed already
    }
    let found = match Recheck::poll(registration.fd.get_ref().0, registration.interest) {
        Ok(found) if found.is_closed() => return Rechecked::Closed,
        Ok(found) => found,
        Err(_) => return Rechecked::Fresh,
    };
    if found.again() {
        return Rechecked::Again(found.ready());
    }
    let mut cleared = false;
    if found.clear().contains(WatchFlags::READABLE) {
        if let Some(guard) = read.as_mut() {
            guard.clear_ready_matching(Ready::READABLE | Ready::READ_CLOSED);
            cleared = true;
        }
    }
    if found.clear().contains(WatchFlags::WRITABLE) {
        if let Some(guard) = write.as_mut() {
            guard.clear_ready_matching(Ready::WRITABLE | Ready::WRITE_CLOSED);
            cleared = true;
        }
    }
    if cleared {
        // Arms the waker; Ready means an edge came after the guards were taken.
        let read = wants_read && registration.fd.poll_read_ready(&mut cx).is_ready();
        let write = wants_write && registration.fd.poll_write_ready(&mut cx).is_ready();
        if read || write {
            return Rechecked::Fresh;
        }
    }
    Rechecked::Idle
}

impl Driver {
    fn new(shared: Arc<Shared>, sleep: Pin<Box<Sleep>>) -> Driver {
        Driver {
            shared,
            sleep,
            armed: None,
            again: Vec::new(),
            fresh: Vec::new(),
            batch: Vec::new(),
            handle: Vec::new(),
            handled: Vec::new(),
        }
    }

    /// One turn: the fds to look at, then the due timeouts, then the dispatch. Returns
    /// whether the driver should run again soon (it yields first).
    fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let shared = Arc::clone(&self.shared);
        std::mem::swap(&mut self.fresh, &mut *shared.fresh.lock());
        self.fresh.sort_unstable();
        self.fresh.dedup();
        let again = std::mem::take(&mut self.again);
        if !again.is_empty() || !self.fresh.is_empty() {
            self.watches(&shared, again);
        }
        let mut more = self.timers(&shared, cx);
        // Dispatch last, so that what the handlers above queued is dispatched this turn.
        shared.attachments.queue().run(DISPATCH_BATCH);
        {
            // Narrow registrations wider than their watches want, before sleeping.
            let weak = Arc::downgrade(&shared);
            let mut look = Vec::new();
            let mut state = shared.lock();
            let mut host = Host {
                shared: &weak,
                handle: &shared.handle,
                look: &mut look,
            };
            state.fds.flush(&mut host);
            drop(state);
            if !look.is_empty() {
                shared.fresh.lock().extend(look);
                more = true;
            }
        }
        more || !self.again.is_empty()
    }

    fn watches(&mut self, shared: &Arc<Shared>, again: Vec<(Token, WatchFlags)>) {
        let weak = Arc::downgrade(shared);
        let mut look = Vec::new();
        {
            let mut state = shared.lock();
            let state = &mut *state;
            let mut host = Host {
                shared: &weak,
                handle: &shared.handle,
                look: &mut look,
            };
            // Still ready after the last turn: what the re-check found (no new poll). Then
            // what tokio reports for the registrations woken, made or widened.
            let mut reports: Vec<(Token, WatchFlags)> = again;
            for &token in &self.fresh {
                if reports.iter().any(|(t, _)| *t == token) {
                    continue;
                }
                let found = match state.fds.registration(token) {
                    Some(registration) => readiness(registration),
                    None => continue, // gone, or a stale wake
                };
                match found {
                    Readiness::Idle => {}
                    Readiness::Ready(condition) => reports.push((token, condition)),
                    Readiness::Closed => state.fds.closed(token, &mut host),
                }
            }
            self.fresh.clear();
            for (token, condition) in reports {
                state
                    .fds
                    .ready(token, condition, &mut host, &mut self.batch);
                let batch = self.batch.drain(..);
                self.handle
                    .extend(batch.map(|(watch, condition)| (token, watch, condition)));
                // Re-checked after the handlers even if none ran: tokio's readiness was read,
                // not cleared, so its waker is not armed.
                self.handled.push(token);
            }
        }
        // Producer code: no lock held (C11).
        for (token, watch, condition) in self.handle.drain(..) {
            match watch.handle(condition) {
                Delivery::Delivered | Delivery::NotRequested => {}
                // The glue missed (or raced) a remove or a toggle: resync.
                delivery @ (Delivery::Removed | Delivery::Disabled) => {
                    shared.with_fds(|fds, host| fds.report(token, &watch, delivery, host));
                }
            }
        }
        // Level-triggered emulation (C17).
        if !self.handled.is_empty() {
            let mut state = shared.lock();
            let state = &mut *state;
            let mut host = Host {
                shared: &weak,
                handle: &shared.handle,
                look: &mut look,
            };
            for token in self.handled.drain(..) {
                let found = match state.fds.registration(token) {
                    Some(registration) => recheck(registration),
                    None => continue,
                };
                match found {
                    Rechecked::Idle => {}
                    Rechecked::Fresh => host.look.push(token),
                    Rechecked::Again(condition) => self.again.push((token, condition)),
                    Rechecked::Closed => state.fds.closed(token, &mut host),
                }
            }
        }
        if !look.is_empty() {
            shared.fresh.lock().extend(look);
        }
    }

    /// Fires the due timeouts and sets the sleep for the next; whether to run again soon (a
    /// timeout is due again at once: a zero interval).
    fn timers(&mut self, shared: &Shared, cx: &mut Context<'_>) -> bool {
        shared.timers_changed.store(false, Ordering::SeqCst);
        for round in 0..2 {
            let next = shared.lock().timers.next_deadline().instant();
            let Some(at) = next else {
                self.armed = None;
                return false;
            };
            if self.armed != Some(at) {
                self.sleep
                    .as_mut()
                    .reset(::tokio::time::Instant::from_std(at));
                self.armed = Some(at);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if round == 1 {
                return true; // due again already: after a yield
            }
            self.armed = None;
            let now = ::tokio::time::Instant::now().into_std();
            shared.lock().timers.collect_due(now);
            shared.fire_due();
        }
        false
    }

    /// After a panic in producer code: every registration this turn touched is looked at
    /// again (their readiness was not cleared), and every source's status read again.
    fn recover(&mut self) {
        let mut tokens: Vec<Token> = self.handle.drain(..).map(|(t, _, _)| t).collect();
        tokens.append(&mut self.handled);
        tokens.extend(self.again.drain(..).map(|(t, _)| t));
        tokens.append(&mut self.fresh);
        self.shared.fresh.lock().extend(tokens);
        self.shared.attachments.queue().schedule_all();
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let shared = Arc::clone(&this.shared);
        if shared.detached.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        {
            let mut slot = shared.driver.lock();
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        shared.running.store(true, Ordering::SeqCst);
        let turned = panic::catch_unwind(AssertUnwindSafe(|| this.turn(cx)));
        shared.running.store(false, Ordering::SeqCst);
        let more = match turned {
            Ok(more) => more,
            Err(payload) => {
                // A handler panicked: this task ends with the panic (tokio reports it as for
                // any task); a new driver carries on with the source.
                this.recover();
                if !shared.detached.load(Ordering::SeqCst) {
                    let sleep = Box::pin(::tokio::time::sleep(Duration::ZERO));
                    shared.handle.spawn(Driver::new(Arc::clone(&shared), sleep));
                }
                panic::resume_unwind(payload);
            }
        };
        if shared.detached.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        // Read after `running` is cleared: work queued from now on wakes the task.
        if more
            || shared.timers_changed.load(Ordering::SeqCst)
            || shared.attachments.queue().is_pending()
            || !shared.fresh.lock().is_empty()
        {
            // Yield as `tokio::task::yield_now` does: the runtime wakes this task again
            // after its other tasks and its I/O driver had their turn.
            let mut yielding = Box::pin(::tokio::task::yield_now());
            if yielding.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl TokioAttachment {
    /// The attached source.
    pub fn source(&self) -> &Arc<dyn Source> {
        self.0.source()
    }

    /// How many fds are registered with tokio for this source.
    pub fn registered_fds(&self) -> usize {
        self.0.glue().lock().fds.registered()
    }

    /// How many timeouts of this source the glue tracks.
    pub fn timeouts(&self) -> usize {
        self.0.glue().lock().timers.len()
    }

    /// Detaches the source now, as dropping the attachment does, and reports what went wrong.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] when called from inside one of the source's own watch
    /// functions (not a handler: detaching from inside a handler is fine); the source then
    /// stays attached, its driver running, and the attachment is handed back to detach later.
    ///
    /// # Panics
    ///
    /// If a step of the detach panics (a free-data, say), after every step has run.
    pub fn detach(self) -> Result<(), (TokioAttachment, io::Error)> {
        self.0
            .detach()
            .map_err(|(back, error)| (TokioAttachment(back), error))
    }
}

impl Detach for Shared {
    /// Detaches the source and ends its driver task, unless the detach was refused.
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        let detached = self.attachments.detach(source);
        if !matches!(&detached, Err(e) if e.kind() == io::ErrorKind::InvalidInput) {
            self.detached.store(true, Ordering::SeqCst);
            self.wake_driver();
        }
        detached.map(drop)
    }
}

/// The glue's watch functions: the registry with tokio as its host; the driver looks at the
/// registrations a change made or widened.
impl WatchGlue for Shared {
    type Registration = Registration;
    type Host<'a> = Host<'a>;
    const GONE: &'static str = "tokio attachment";

    fn with_fds<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut FdRegistry<Registration>, &mut Host<'_>) -> T,
    ) -> T {
        let weak = Arc::downgrade(self);
        let mut look = Vec::new();
        let out = {
            let mut state = self.lock();
            let mut host = Host {
                shared: &weak,
                handle: &self.handle,
                look: &mut look,
            };
            f(&mut state.fds, &mut host)
        };
        self.look_at(look);
        out
    }
}

/// The glue's timeout functions, on the runtime's clock: a change has the driver set its
/// sleep again.
impl TimerGlue for Shared {
    const GONE: &'static str = "tokio attachment";

    fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T {
        f(&mut self.lock().timers)
    }

    fn timers_changed(&self) {
        self.timers_changed.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Now on the runtime's clock (virtual while `tokio::time::pause()` is in force).
    fn now(&self) -> Instant {
        let _runtime = self.handle.enter();
        ::tokio::time::Instant::now().into_std()
    }
}

impl fmt::Debug for TokioAttachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.0.glue().lock();
        f.debug_struct("TokioAttachment")
            .field("source", &self.0.source().data().id())
            .field("fds", &state.fds)
            .field("timeouts", &state.timers.len())
            .finish()
    }
}
