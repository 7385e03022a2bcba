//! `Connection`: a libdbus `DBusConnection` presented as a loopglue [`Source`].

use std::ffi::CString;
use std::fmt;
use std::os::raw::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use libdbus_sys as sys;
use parking_lot::Mutex;

use super::announcer::Announcer;
use super::backoff::Backoff;
use super::callout::{self, Callout, PanicSlot, Serving};
use super::confinement::Confinement;
use super::error::{new_error, Error};
use super::ffi;
use super::gate::Gate;
use super::relay::{self, Relay, Slots};
use super::trampoline::{
    add_timeout, add_watch, follow_timeout, remove_timeout, remove_watch, timeout_state,
    toggle_timeout, toggle_watch, watch_state, Installation, Mirror,
};
use crate::{
    DispatchStatus, DispatchStatusFn, SetFunctionsError, Source, SourceData, Timeout,
    TimeoutFunctions, TimeoutList, WakeupFn, WakeupHook, Watch, WatchFlags, WatchFunctions,
    WatchList,
};

/// How many messages the bridge dispatches on its own, in one go, when it runs dispatch work
/// that was deferred out of a call-out.
const DISPATCH_BATCH: usize = 64;

/// Deferred work, bits of `Inner::deferred`.
const DEFERRED_IO: u8 = 1;
const DEFERRED_DISPATCH: u8 = 2;

/// A libdbus connection run by whatever loop attaches it — the bridge between a real
/// `DBusConnection` and loopglue's watch/timeout model.
///
/// The bridge mirrors libdbus's objects one to one: each `DBusWatch` libdbus adds becomes a
/// [`Watch`] on the same fd with the same flags and enabled state, each `DBusTimeout` a
/// [`Timeout`] with the same interval, and libdbus's toggles and removals reach the glue as
/// the same calls. A glue attaches it like any [`Source`] — `MainLoop::attach`, an adapter, a
/// hand-written glue — and the bridge installs libdbus's watch, timeout, wakeup and
/// dispatch-status functions then, and restores libdbus to none when the glue detaches or the
/// last handle drops, before the connection can be closed. [`Source::dispatch`] is
/// `dbus_connection_dispatch`; message handlers (filters, object paths, pending-call
/// notifications) are libdbus's, registered on [`as_ptr`](Self::as_ptr).
///
/// What differs from a hand-written libdbus glue, and why:
///
/// * **A ready watch runs `dbus_connection_read_write(conn, 0)`, not `dbus_watch_handle`.**
///   libdbus frees a `DBusWatch` when its transport disconnects, under its connection lock,
///   from whatever thread found the disconnect; a glue thread about to call
///   `dbus_watch_handle` on it cannot be told in time (waiting for it would deadlock: it
///   needs that lock). `read_write` needs only the connection, which the bridge holds a
///   reference to, so a report racing a disconnect on another thread is harmless. It reads and
///   writes exactly what `dbus_watch_handle` would (one 2 KiB chunk per call, only while
///   libdbus's read watch is enabled), after one extra `poll(2)` with a zero timeout. A
///   program that uses the connection from its loop's thread only — most C programs — can
///   promise so with [`assume_loop_thread_only`](Self::assume_loop_thread_only), and the
///   bridge then calls `dbus_watch_handle` like a C glue.
/// * **Removal does not wait for running handlers** (`ObjectList::remove_nowait`): libdbus
///   removes with its lock held and the handlers take it. Timeout handlers go through a gate
///   that a removal closes, and a `DBusTimeout` is not freed while a handler may still pass it
///   to libdbus (see the module's lock-order notes).
/// * **Re-entry from a call-out is deferred, never deadlocked (C11).** libdbus calls the glue
///   with its connection lock held; a glue that calls [`dispatch`](Source::dispatch), or a
///   watch's `handle`, from there (a large `send` toggles the write watch, and the glue's
///   `toggled` dispatches) would hang inside libdbus. The bridge knows it is inside one of its
///   call-outs on this thread, returns at once — `dispatch` says
///   [`DispatchStatus::Complete`] so that a "dispatch until complete" loop ends — and enables
///   a zero-interval timeout of its own, whose handler does the deferred work from the loop.
/// * **Out of memory** (`DBUS_DISPATCH_NEED_MEMORY`, `dbus_timeout_handle` returning FALSE) is
///   retried through a timeout with exponential backoff (10 ms to 1 s), not by spinning.
/// * **A method call pending at disconnect gets no reply notification** (libdbus 1.14): the
///   connection completes it by queueing a `org.freedesktop.DBus.Error.NoReply` error, but it
///   has already dropped the call from its table, so the error goes to the filters (with the
///   call's serial as reply serial), followed by the `Disconnected` signal. Watch the
///   filters, not the pending call, for the end of a connection.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use loopglue::dbus::Connection;
/// use loopglue::MainLoop;
///
/// let main_loop = MainLoop::new()?;
/// let connection = Connection::open_private("unix:path=/run/user/1000/bus")?;
/// // Register filters and object paths on `connection.as_ptr()` with libdbus, then:
/// main_loop.attach(Arc::new(connection.clone()))?;
/// main_loop.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "DBusConnection")]
#[doc(alias = "dbus_connection_setup_with_g_main")]
#[derive(Clone)]
pub struct Connection {
    owner: Arc<Owner>,
}

/// What the user's handles share: dropping the last one uninstalls libdbus's functions and,
/// for a connection the bridge opened or accepted, closes it.
struct Owner {
    inner: Arc<Inner>,
    close_on_drop: bool,
}

/// The bridge's state, also reachable from handlers (weakly) and trampolines (by pointer,
/// valid while the trampolines are installed).
struct Inner {
    raw: Raw,
    me: Weak<Inner>,
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    wakeup: WakeupHook,
    announcer: Announcer,
    panics: PanicSlot,
    relay: RelayPtr,
    /// Serialises the `Source::set_*` methods: held across libdbus calls, never taken by a
    /// trampoline.
    install: Mutex<()>,
    watch_functions: Installation,
    timeout_functions: Installation,
    wakeup_function: AtomicBool,
    status_function: AtomicBool,
    deferred: AtomicU8,
    /// Whether the user promised to keep the connection on its loop's thread, so that watch
    /// handlers may pass the `DBusWatch` to `dbus_watch_handle`.
    confinement: Arc<Confinement>,
    /// Watches paused after `dbus_watch_handle` ran out of memory.
    paused: Mutex<Vec<Arc<MirroredWatch>>>,
    /// Zero-interval timeout that runs work deferred out of a call-out.
    kick: Timeout,
    /// Out-of-memory retry, restarted with the backoff's delay.
    retry: Timeout,
    backoff: Backoff,
}

/// One reference to a `DBusConnection`.
struct Raw(NonNull<ffi::DBusConnection>);

// SAFETY: libdbus connections are thread-safe once `dbus_threads_init_default` has run (the
// bridge calls it before it takes a connection); the pointer is only ever passed to libdbus.
unsafe impl Send for Raw {}
// SAFETY: as above.
unsafe impl Sync for Raw {}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: this reference was taken (or handed over) when `Raw` was made.
        unsafe { sys::dbus_connection_unref(self.0.as_ptr()) };
    }
}

/// The relay in the connection's data slot, which outlives every handle of this bridge (the
/// bridge holds a connection reference). Set once, right after the bridge is made.
struct RelayPtr(AtomicPtr<Relay<Inner>>);

impl RelayPtr {
    fn get(&self) -> *mut Relay<Inner> {
        self.0.load(Ordering::Acquire)
    }
}

/// A `DBusTimeout` pointer captured by its handler.
#[derive(Clone, Copy)]
struct TimeoutPtr(*mut ffi::DBusTimeout);

/// A `DBusWatch` pointer captured by its handler.
#[derive(Clone, Copy)]
struct WatchPtr(*mut ffi::DBusWatch);

// SAFETY: handlers pass the pointer to libdbus only on a confined connection, after its gate
// was found open inside a counted window (see `watch_ready` and `Confinement`).
unsafe impl Send for WatchPtr {}
// SAFETY: as above.
unsafe impl Sync for WatchPtr {}

/// One `DBusWatch` as the bridge mirrors it: the data libdbus keeps on the watch.
struct MirroredWatch {
    /// The loopglue watch, until libdbus removes the `DBusWatch`.
    gate: Gate<Watch>,
    /// What libdbus last asked for; a watch paused for lack of memory returns to this.
    wanted: AtomicBool,
    /// Replaced by a newer mirror when libdbus added the watch again (new glue functions): its
    /// data's free function then does not mean the `DBusWatch` is being freed.
    superseded: AtomicBool,
    /// The connection's confinement, told when libdbus frees the `DBusWatch`.
    confinement: Arc<Confinement>,
}

// SAFETY: handlers pass the pointer to libdbus only through the gate, which keeps it valid
// (see `timeout_due`); libdbus timeouts may be handled from any thread.
unsafe impl Send for TimeoutPtr {}
// SAFETY: as above.
unsafe impl Sync for TimeoutPtr {}

static STATUS_SLOT: AtomicI32 = AtomicI32::new(-1);

fn status_slots() -> Slots<ffi::DBusConnection> {
    Slots {
        slot: &STATUS_SLOT,
        allocate: ffi::dbus_connection_allocate_data_slot,
        get: ffi::dbus_connection_get_data,
        set: ffi::dbus_connection_set_data,
    }
}

fn init_threads() {
    // SAFETY: idempotent, and required before a connection is used from several threads.
    unsafe { sys::dbus_threads_init_default() };
}

fn map_status(status: sys::DBusDispatchStatus) -> Option<DispatchStatus> {
    match status {
        sys::DBusDispatchStatus::DataRemains => Some(DispatchStatus::DataRemains),
        sys::DBusDispatchStatus::Complete => Some(DispatchStatus::Complete),
        sys::DBusDispatchStatus::NeedMemory => None,
    }
}

impl Connection {
    /// Runs an existing connection: takes a reference of its own (`dbus_connection_ref`) and
    /// leaves closing the connection to the caller, who keeps their reference.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyBridged`] if another bridge runs this connection; [`Error::NoMemory`]
    /// if libdbus cannot allocate, or for a null pointer (what libdbus's constructors return
    /// when they run out of memory).
    ///
    /// # Safety
    ///
    /// `connection` must be null or a valid `DBusConnection`, and nothing else may install main-loop
    /// functions on it or use the data of its watches and timeouts while the bridge lives
    /// (libdbus has one set per connection).
    #[doc(alias = "dbus_connection_ref")]
    pub unsafe fn from_raw(connection: *mut ffi::DBusConnection) -> Result<Connection, Error> {
        let raw = NonNull::new(connection).ok_or(Error::NoMemory)?;
        init_threads();
        // SAFETY: the caller passes a valid connection.
        unsafe { ffi::dbus_connection_ref(raw.as_ptr()) };
        Connection::new(Raw(raw), false)
    }

    /// Runs a connection accepted by a server: the bridge owns it and closes it when the last
    /// handle drops.
    ///
    /// # Safety
    ///
    /// As [`from_raw`](Self::from_raw).
    pub(crate) unsafe fn from_accepted(
        connection: *mut ffi::DBusConnection,
    ) -> Result<Connection, Error> {
        let raw = NonNull::new(connection).ok_or(Error::NoMemory)?;
        // SAFETY: libdbus passes a valid connection to the new-connection function.
        unsafe { ffi::dbus_connection_ref(raw.as_ptr()) };
        Connection::new(Raw(raw), true)
    }

    /// Opens a private connection to `address` (`dbus_connection_open_private`); blocks until
    /// it is connected and authenticated. The bridge owns it and closes it when the last
    /// handle drops; it does not exit the process on disconnect.
    ///
    /// # Errors
    ///
    /// What libdbus reports (no such address, authentication refused), or
    /// [`Error::InvalidAddress`].
    #[doc(alias = "dbus_connection_open_private")]
    pub fn open_private(address: &str) -> Result<Connection, Error> {
        init_threads();
        let address = CString::new(address).map_err(|_| Error::InvalidAddress)?;
        let mut error = new_error();
        // SAFETY: a valid C string and an initialised error.
        let raw = unsafe { sys::dbus_connection_open_private(address.as_ptr(), &mut error) };
        let Some(raw) = NonNull::new(raw) else {
            // SAFETY: libdbus set the error.
            return Err(unsafe { Error::take(&mut error) });
        };
        // SAFETY: a live connection we own.
        unsafe { sys::dbus_connection_set_exit_on_disconnect(raw.as_ptr(), 0) };
        Connection::new(Raw(raw), true)
    }

    /// Opens a private connection to a message bus at `address` and registers with it
    /// (`dbus_bus_register`, the `Hello` call); blocks until the bus answers.
    ///
    /// # Errors
    ///
    /// As [`open_private`](Self::open_private), and what the bus answers.
    #[doc(alias = "dbus_bus_register")]
    pub fn open_bus(address: &str) -> Result<Connection, Error> {
        let connection = Connection::open_private(address)?;
        let mut error = new_error();
        // SAFETY: a live connection and an initialised error.
        if unsafe { sys::dbus_bus_register(connection.as_ptr(), &mut error) } == 0 {
            // SAFETY: libdbus set the error.
            return Err(unsafe { Error::take(&mut error) });
        }
        Ok(connection)
    }

    fn new(raw: Raw, close_on_drop: bool) -> Result<Connection, Error> {
        let ptr = raw.0.as_ptr();
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let kick = {
                let me = me.clone();
                Timeout::new_disabled(Duration::ZERO, move || {
                    if let Some(inner) = me.upgrade() {
                        inner.run_deferred();
                    }
                })
            };
            let retry = {
                let me = me.clone();
                Timeout::new_disabled(Duration::from_millis(10), move || {
                    if let Some(inner) = me.upgrade() {
                        inner.retry_due();
                    }
                })
            };
            Inner {
                raw,
                me: me.clone(),
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                wakeup: WakeupHook::new(),
                announcer: Announcer::default(),
                panics: PanicSlot::default(),
                relay: RelayPtr(AtomicPtr::new(std::ptr::null_mut())),
                install: Mutex::new(()),
                watch_functions: Installation::default(),
                timeout_functions: Installation::default(),
                wakeup_function: AtomicBool::new(false),
                status_function: AtomicBool::new(false),
                deferred: AtomicU8::new(0),
                confinement: Arc::new(Confinement::default()),
                paused: Mutex::new(Vec::new()),
                kick,
                retry,
                backoff: Backoff::new(),
            }
        });
        // SAFETY: a live connection; the status slot holds only `Relay<Inner>`.
        let relay = unsafe { relay::install(&status_slots(), ptr, Arc::downgrade(&inner)) };
        let relay = match relay {
            Ok(relay) => relay,
            Err(e) => {
                if close_on_drop {
                    // SAFETY: the connection is ours to close; `inner` holds a reference.
                    unsafe { sys::dbus_connection_close(ptr) };
                }
                return Err(e);
            }
        };
        inner.relay.0.store(relay.cast_mut(), Ordering::Release);
        // The bridge's own timeouts are tracked from the start and replayed to every glue.
        let _ = inner.timeouts.add(&inner.kick);
        let _ = inner.timeouts.add(&inner.retry);
        Ok(Connection {
            owner: Arc::new(Owner {
                inner,
                close_on_drop,
            }),
        })
    }

    /// The libdbus connection, for libdbus calls (filters, object paths, sending). Valid as
    /// long as a handle of this bridge lives.
    pub fn as_ptr(&self) -> *mut ffi::DBusConnection {
        self.owner.inner.ptr()
    }

    /// Closes the connection (`dbus_connection_close`): libdbus removes its watches, which
    /// the glue hears, and queues the `Disconnected` signal for the next dispatch.
    #[doc(alias = "dbus_connection_close")]
    pub fn close(&self) {
        // SAFETY: a live connection.
        unsafe { sys::dbus_connection_close(self.as_ptr()) };
    }

    /// Whether the connection is still connected (`dbus_connection_get_is_connected`).
    #[doc(alias = "dbus_connection_get_is_connected")]
    pub fn is_connected(&self) -> bool {
        // SAFETY: a live connection.
        unsafe { sys::dbus_connection_get_is_connected(self.as_ptr()) != 0 }
    }

    /// Whether the glue currently has libdbus's watch functions installed through this bridge.
    pub fn has_watch_functions(&self) -> bool {
        self.owner.inner.watch_functions.is_on()
    }

    /// Promises that nothing disconnects this connection on another thread while its loop
    /// may be running it, so that the bridge can answer a ready watch the way a C glue
    /// does: with `dbus_watch_handle` on the `DBusWatch` itself, instead of
    /// `dbus_connection_read_write(conn, 0)`, which polls the fd once more before it reads.
    /// That is one system call fewer per readiness (a message, most of the time), and less
    /// work inside libdbus: the bridge's time per method call comes within a few percent of a
    /// hand-written poll glue's (BENCHMARKS.md). It is how most C programs use libdbus — one
    /// thread.
    ///
    /// The promise holds from this call until the last handle of this bridge is dropped;
    /// there is no way back. Every handle of this bridge (clones) shares it.
    ///
    /// # Safety
    ///
    /// libdbus frees a connection's `DBusWatch`es when the transport disconnects, under its
    /// connection lock, on whichever thread found the disconnect, while `dbus_watch_handle`
    /// reads the watch before it takes that lock. So, from this call on, no libdbus call that
    /// can disconnect the connection may run on one thread while one of its watch handlers
    /// may be running on another. Calls that can disconnect it: everything that reads or
    /// writes the socket (`dbus_connection_send` and everything that sends —
    /// `dbus_connection_send_with_reply`, `dbus_bus_*` calls, replies —,
    /// `dbus_connection_flush`, `dbus_connection_read_write[_dispatch]`,
    /// `dbus_connection_send_with_reply_and_block`, `dbus_pending_call_block`, since a read
    /// or write that fails disconnects), `dbus_connection_close` and [`close`](Self::close),
    /// and dropping the last handle of a connection the bridge owns (which closes it).
    /// Watch handlers run whenever the glue the connection is attached to runs its loop's
    /// handlers — for `MainLoop`, inside `run` / `run_once` — so the simple way to keep the
    /// promise is to do all of the above on the thread that runs that loop (from the loop's
    /// own callbacks, libdbus's message handlers and pending-call notifications, or between
    /// iterations), which is what a single-threaded program does anyway.
    ///
    /// Safe on any thread, at any time: reading the dispatch status, libdbus calls that
    /// neither read nor write the socket (building messages, filters, object paths, data
    /// slots), attaching and detaching; and everything a connection that was never confined
    /// allows once no handler can run any more (the connection detached from every loop, or
    /// the loops stopped). Dispatching belongs to the loop's thread too, since message
    /// handlers send.
    ///
    /// What the bridge checks: if libdbus frees a watch while a handler on another thread is
    /// between its check of the watch and libdbus's lock, the process aborts with a message
    /// rather than let the handler read freed memory (the check covers every interleaving of
    /// libdbus 1.14's frees with the bridge's handlers, at the price of two atomic
    /// operations per readiness); a broken promise that is caught may also abort in a race
    /// that would have been harmless.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use loopglue::dbus::Connection;
    /// use loopglue::MainLoop;
    ///
    /// let main_loop = MainLoop::new()?;
    /// let connection = Connection::open_bus("unix:path=/run/user/1000/bus")?;
    /// // SAFETY: this program sends, calls and closes only on this thread, which runs the loop.
    /// unsafe { connection.assume_loop_thread_only() };
    /// main_loop.attach(Arc::new(connection.clone()))?;
    /// main_loop.run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "dbus_watch_handle")]
    pub unsafe fn assume_loop_thread_only(&self) {
        self.owner.inner.confinement.promise();
    }

    /// Whether [`assume_loop_thread_only`](Self::assume_loop_thread_only) was called on a
    /// handle of this bridge.
    pub fn is_loop_thread_only(&self) -> bool {
        self.owner.inner.confinement.is_promised()
    }
}

impl Inner {
    fn ptr(&self) -> *mut ffi::DBusConnection {
        self.raw.0.as_ptr()
    }

    fn data_ptr(&self) -> *mut c_void {
        (self as *const Inner).cast_mut().cast()
    }

    // ---- work the loop asks for -------------------------------------------------------

    /// A watch's fd is ready: `dbus_watch_handle` on a confined connection, else I/O through
    /// the connection alone.
    fn watch_ready(&self, mirror: &Weak<MirroredWatch>, watch: WatchPtr, ready: WatchFlags) {
        if callout::inside() {
            self.defer(DEFERRED_IO);
            return;
        }
        match self.confinement.enter() {
            Some(window) => {
                let _serving = Serving::enter();
                // Counted in (the window) before the gate is read: see `Confinement`.
                let mirror = mirror.upgrade().filter(|mirror| mirror.gate.is_open());
                if let Some(mirror) = mirror {
                    // SAFETY: the gate was open after this handler was counted in, so libdbus
                    // had not freed the watch then (it closes the gate first, in the remove
                    // trampoline), and it frees a connection's watches only when the
                    // transport disconnects (or the connection is finalized, which the
                    // bridge's reference rules out). The user promised that no disconnect
                    // happens on another thread while this handler runs, and a broken promise
                    // aborts in `watch_freed` before the free. A disconnect on this thread
                    // happens inside this call, where libdbus holds its own reference to the
                    // watch.
                    let handled =
                        unsafe { sys::dbus_watch_handle(watch.0, u32::from(ready.bits())) };
                    drop(window);
                    // `dbus_watch_handle` moves complete messages to the incoming queue and
                    // reports the status itself (the wakeup and status trampolines tell the
                    // glue).
                    if handled == 0 {
                        self.pause(mirror);
                    }
                }
            }
            None => self.read_write_now(),
        }
        self.panics.resume();
    }

    /// I/O through the connection alone, for a ready watch of a connection that is not
    /// confined, and for I/O deferred out of a call-out.
    fn read_write_now(&self) {
        let _serving = Serving::enter();
        let wakeups = callout::served_wakeups();
        // SAFETY: a live connection (this bridge holds a reference). No watch pointer is
        // used, so a disconnect on another thread that frees the watches is harmless.
        unsafe { sys::dbus_connection_read_write(self.ptr(), 0) };
        // `read_write` queues the complete messages it reads (libdbus's wakeup, on this
        // thread, tells the glue) but never reports the status. When it queued nothing, the
        // status is read, as `dbus_watch_handle` does on its way out: that moves messages a
        // completed authentication left behind to the incoming queue, and reports
        // `NEED_MEMORY` if queueing ran out of memory. When it queued something, the glue will
        // dispatch, and the dispatch reports both.
        if callout::served_wakeups() == wakeups && self.read_status() == DispatchStatus::DataRemains
        {
            self.announcer.data_remains();
        }
    }

    /// `dbus_watch_handle` ran out of memory: pause the watch and retry later instead of
    /// spinning on it (the fd stays ready).
    fn pause(&self, mirror: Arc<MirroredWatch>) {
        if let Some(object) = mirror.gate.object() {
            let _ = self.watches.toggle(&object, false);
            self.paused.lock().push(mirror);
            self.schedule_retry();
        }
    }

    /// Watches paused for lack of memory return to what libdbus last asked for.
    fn resume_paused(&self) {
        let paused = std::mem::take(&mut *self.paused.lock());
        for mirror in paused {
            if let Some(object) = mirror.gate.object() {
                let _ = self
                    .watches
                    .toggle(&object, mirror.wanted.load(Ordering::Acquire));
            }
        }
    }

    /// A mirrored libdbus timeout fell due.
    fn timeout_due(&self, gate: &Weak<Gate<Timeout>>, timeout: TimeoutPtr) {
        if callout::inside() {
            // Periodic: it falls due again one interval later (C10).
            return;
        }
        let Some(gate) = gate.upgrade() else { return };
        if !gate.enter() {
            return; // removed meanwhile: libdbus no longer wants it handled
        }
        // SAFETY: the gate was open, so libdbus had not removed the timeout when we entered,
        // and libdbus frees a DBusTimeout only through our data destructor, which waits for
        // this handler to leave the gate (`free_timeout_gate`). A removal between `enter` and
        // this call is libdbus's own race (a reply and its timeout on two threads): the call
        // then queues a NoReply error for a call that already completed, which reaches the
        // filters.
        let handled = unsafe { sys::dbus_timeout_handle(timeout.0) };
        gate.leave();
        if handled == 0 {
            self.schedule_retry(); // out of memory; the timeout also fires again next period
        }
        self.panics.resume();
    }

    /// `dbus_connection_dispatch`, outside any call-out.
    fn dispatch_now(&self) -> DispatchStatus {
        let status = {
            // Message handlers run in here: a nested dispatch from one of them waits forever
            // for this one (pacemaker #1201), so it is deferred like a call-out's.
            let _dispatching = Callout::unlocked();
            let _serving = Serving::enter();
            // SAFETY: a live connection.
            unsafe { sys::dbus_connection_dispatch(self.ptr()) }
        };
        match map_status(status) {
            Some(status) => {
                self.backoff.succeeded();
                status
            }
            None => {
                self.schedule_retry();
                DispatchStatus::Complete
            }
        }
    }

    /// `dbus_connection_get_dispatch_status`, outside any locked call-out.
    fn read_status(&self) -> DispatchStatus {
        // SAFETY: a live connection.
        let status = unsafe { sys::dbus_connection_get_dispatch_status(self.ptr()) };
        map_status(status).unwrap_or_else(|| {
            self.schedule_retry();
            DispatchStatus::Complete
        })
    }

    // ---- deferral and retry -----------------------------------------------------------

    fn defer(&self, what: u8) {
        self.deferred.fetch_or(what, Ordering::AcqRel);
        let _ = self.timeouts.toggle(&self.kick, true);
    }

    /// The kick timeout's handler: work deferred out of a call-out, now from the loop.
    fn run_deferred(&self) {
        if callout::inside() {
            return; // still inside: the kick stays enabled and fires again
        }
        let _ = self.timeouts.toggle(&self.kick, false);
        let work = self.deferred.swap(0, Ordering::AcqRel);
        if work & DEFERRED_IO != 0 {
            self.read_write_now();
        }
        if work & DEFERRED_DISPATCH != 0 {
            self.dispatch_batch();
        }
        self.panics.resume();
    }

    fn dispatch_batch(&self) {
        for _ in 0..DISPATCH_BATCH {
            if self.dispatch_now() == DispatchStatus::Complete {
                return;
            }
        }
        self.defer(DEFERRED_DISPATCH);
    }

    fn schedule_retry(&self) {
        let delay = self.backoff.failed();
        let _ = self.timeouts.restart(&self.retry, delay);
    }

    fn retry_due(&self) {
        if callout::inside() {
            return;
        }
        let _ = self.timeouts.toggle(&self.retry, false);
        self.resume_paused();
        self.dispatch_batch();
        self.panics.resume();
    }

    /// The wakeup trampoline's body (lock held): a message entered the incoming queue, or a
    /// send left output queued. Either may have happened on a thread other than the loop's.
    fn woken(&self) {
        self.announcer.data_remains();
        // The loop that called the bridge on this thread is running, not blocked in a wait:
        // waking it would only cost it a spurious wakeup (an eventfd write and read per
        // message on MainLoop). Wakeups caused by other threads are passed on.
        if callout::serving() {
            callout::note_served_wakeup();
        } else {
            self.wakeup.wake();
        }
    }

    /// The dispatch-status function's body (no lock held, inside a libdbus call).
    ///
    /// Only `DataRemains` is passed on: the glue learns `Complete` from the answers of
    /// `dispatch` and `dispatch_status`, and a `Complete` reported here may be stale (libdbus
    /// calls this after unlocking, so two threads' reports can overtake each other).
    fn status_changed(&self, status: sys::DBusDispatchStatus) {
        match map_status(status) {
            Some(DispatchStatus::DataRemains) => self.announcer.data_remains(),
            Some(DispatchStatus::Complete) => {}
            None => self.schedule_retry(),
        }
    }

    // ---- installing libdbus's functions ------------------------------------------------

    /// libdbus's watch functions, and the wakeup function that goes with them (it announces
    /// messages queued on any thread), in or out. Says whether libdbus took them.
    fn set_watch_trampolines(&self, on: bool) -> bool {
        let (add, remove, toggle, data): (
            ffi::AddWatchFunction,
            ffi::WatchFunction,
            ffi::WatchFunction,
            _,
        ) = if on {
            (
                Some(add_watch::<Inner>),
                Some(remove_watch::<Inner>),
                Some(toggle_watch::<Inner>),
                self.data_ptr(),
            )
        } else {
            self.set_wakeup_trampoline(false);
            (None, None, None, std::ptr::null_mut())
        };
        // SAFETY: a live connection; the data is this Inner, which outlives the installation
        // (uninstalled before the owner lets it go, under libdbus's lock, which serialises
        // with running call-outs). Setting no functions cannot fail (libdbus calls our remove
        // for every watch first).
        let taken = unsafe {
            ffi::dbus_connection_set_watch_functions(self.ptr(), add, remove, toggle, data, None)
        } != 0;
        if on && taken {
            self.set_wakeup_trampoline(true);
        }
        taken
    }

    fn set_timeout_trampolines(&self, on: bool) -> bool {
        let (add, remove, toggle, data): (
            ffi::AddTimeoutFunction,
            ffi::TimeoutFunction,
            ffi::TimeoutFunction,
            _,
        ) = if on {
            (
                Some(add_timeout::<Inner>),
                Some(remove_timeout::<Inner>),
                Some(toggle_timeout::<Inner>),
                self.data_ptr(),
            )
        } else {
            (None, None, None, std::ptr::null_mut())
        };
        // SAFETY: as `set_watch_trampolines`.
        let taken = unsafe {
            ffi::dbus_connection_set_timeout_functions(self.ptr(), add, remove, toggle, data, None)
        };
        taken != 0
    }

    fn set_wakeup_trampoline(&self, on: bool) {
        if self.wakeup_function.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let (function, data): (ffi::WakeupMainFunction, *mut c_void) = if on {
            (Some(wakeup_main), self.data_ptr())
        } else {
            (None, std::ptr::null_mut())
        };
        // SAFETY: a live connection; libdbus calls the wakeup function with its lock held, so
        // replacing it serialises with running calls and the data outlives them.
        unsafe { ffi::dbus_connection_set_wakeup_main_function(self.ptr(), function, data, None) };
    }

    fn set_status_trampoline(&self, on: bool) {
        if self.status_function.swap(on, Ordering::AcqRel) == on {
            return;
        }
        let (function, data): (ffi::DispatchStatusFunction, *mut c_void) = if on {
            (Some(dispatch_status_changed), self.relay.get().cast())
        } else {
            (None, std::ptr::null_mut())
        };
        // SAFETY: a live connection; the data is the relay, which lives as long as the
        // connection (libdbus calls this function without its lock, holding a reference).
        unsafe {
            ffi::dbus_connection_set_dispatch_status_function(self.ptr(), function, data, None)
        };
    }

    /// Restores libdbus to no functions: what detaching and dropping do.
    fn uninstall_all(&self) {
        let _install = self.install.lock();
        self.set_wakeup_trampoline(false);
        self.set_status_trampoline(false);
        self.watch_functions
            .turn_off(|on| self.set_watch_trampolines(on));
        self.timeout_functions
            .turn_off(|on| self.set_timeout_trampolines(on));
    }
}

/// libdbus calls these with its connection lock held.
impl Mirror for Inner {
    const LOCKED: bool = true;

    fn panics(&self) -> &PanicSlot {
        &self.panics
    }

    unsafe fn watch_added(&self, watch: *mut ffi::DBusWatch) -> ffi::dbus_bool_t {
        // SAFETY: libdbus passes a live watch.
        let (fd, flags, enabled) = unsafe { watch_state(watch) };
        let mirror = Arc::new(MirroredWatch {
            gate: Gate::new(),
            wanted: AtomicBool::new(enabled),
            superseded: AtomicBool::new(false),
            confinement: Arc::clone(&self.confinement),
        });
        let (me, weak, pointer) = (self.me.clone(), Arc::downgrade(&mirror), WatchPtr(watch));
        let handler = move |ready: WatchFlags| {
            if let Some(inner) = me.upgrade() {
                inner.watch_ready(&weak, pointer, ready);
            }
        };
        let object = if enabled {
            Watch::new(fd, flags, handler)
        } else {
            Watch::new_disabled(fd, flags, handler)
        };
        mirror.gate.open(object.clone());
        // Added again (the glue's functions were replaced): the old mirror's free function,
        // which `set_data` runs, does not mean the watch is being freed.
        // SAFETY: libdbus passes a live watch; its data, if any, is ours.
        if let Some(old) = unsafe { mirrored_watch(watch) } {
            old.superseded.store(true, Ordering::Release);
        }
        // SAFETY: a live watch; the data is an `Arc<MirroredWatch>` reference released by
        // `free_mirrored_watch`.
        unsafe {
            sys::dbus_watch_set_data(
                watch,
                Arc::into_raw(mirror).cast_mut().cast(),
                Some(free_mirrored_watch),
            )
        };
        match self.watches.add(&object) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    unsafe fn watch_removed(&self, watch: *mut ffi::DBusWatch) {
        // SAFETY: libdbus passes a live watch; its data is ours.
        if let Some(mirror) = unsafe { mirrored_watch(watch) } {
            if let Some(object) = mirror.gate.close() {
                // Not `remove`: it would wait for handlers on other threads, which need the
                // lock libdbus holds now. Watch handlers never touch the DBusWatch.
                let _ = self.watches.remove_nowait(&object);
            }
        }
    }

    unsafe fn watch_toggled(&self, watch: *mut ffi::DBusWatch) {
        // SAFETY: libdbus passes a live watch; its data is ours.
        if let Some(mirror) = unsafe { mirrored_watch(watch) } {
            // SAFETY: a live watch.
            let enabled = unsafe { sys::dbus_watch_get_enabled(watch) } != 0;
            mirror.wanted.store(enabled, Ordering::Release);
            if let Some(object) = mirror.gate.object() {
                let _ = self.watches.toggle(&object, enabled);
            }
        }
    }

    unsafe fn timeout_added(&self, timeout: *mut ffi::DBusTimeout) -> ffi::dbus_bool_t {
        // SAFETY: libdbus passes a live timeout.
        let (interval, enabled) = unsafe { timeout_state(timeout) };
        let gate = Arc::new(Gate::new());
        let me = self.me.clone();
        let weak_gate = Arc::downgrade(&gate);
        let pointer = TimeoutPtr(timeout);
        let handler = move || {
            if let Some(inner) = me.upgrade() {
                inner.timeout_due(&weak_gate, pointer);
            }
        };
        let object = if enabled {
            Timeout::new(interval, handler)
        } else {
            Timeout::new_disabled(interval, handler)
        };
        gate.open(object.clone());
        // SAFETY: a live timeout; the data is an `Arc<Gate<Timeout>>` reference released by
        // `free_timeout_gate` (at the latest when libdbus finalizes the timeout).
        unsafe {
            sys::dbus_timeout_set_data(
                timeout,
                Arc::into_raw(gate).cast_mut().cast(),
                Some(free_timeout_gate),
            )
        };
        match self.timeouts.add(&object) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    unsafe fn timeout_removed(&self, timeout: *mut ffi::DBusTimeout) {
        // SAFETY: libdbus passes a live timeout; its data is ours.
        if let Some(gate) = unsafe { timeout_gate(timeout) } {
            if let Some(object) = gate.close() {
                let _ = self.timeouts.remove_nowait(&object);
            }
        }
    }

    unsafe fn timeout_toggled(&self, timeout: *mut ffi::DBusTimeout) {
        // SAFETY: libdbus passes a live timeout; its data is ours.
        let Some(object) = (unsafe { timeout_gate(timeout) }).and_then(|gate| gate.object()) else {
            return;
        };
        // SAFETY: a live timeout.
        unsafe { follow_timeout(&self.timeouts, &object, timeout) };
    }
}

/// The mirror stored on a watch, if the bridge stored one.
///
/// # Safety
///
/// `watch` is live and its data, if any, was set by this bridge.
unsafe fn mirrored_watch<'a>(watch: *mut ffi::DBusWatch) -> Option<&'a MirroredWatch> {
    // SAFETY: the caller's contract.
    let data = unsafe { sys::dbus_watch_get_data(watch) }.cast::<MirroredWatch>();
    // SAFETY: non-null data is the `Arc<MirroredWatch>` stored in `watch_added`, which libdbus
    // releases only when it replaces the data or frees the watch — under its lock, which the
    // caller (a trampoline) holds for as long as it uses the reference.
    unsafe { data.as_ref() }
}

/// # Safety
///
/// As [`watch_gate`].
unsafe fn timeout_gate<'a>(timeout: *mut ffi::DBusTimeout) -> Option<&'a Gate<Timeout>> {
    // SAFETY: the caller's contract.
    let data = unsafe { sys::dbus_timeout_get_data(timeout) }.cast::<Gate<Timeout>>();
    // SAFETY: non-null data is the `Arc<Gate<Timeout>>` stored in `timeout_added`, released as
    // for watches (`mirrored_watch`).
    unsafe { data.as_ref() }
}

extern "C" fn free_mirrored_watch(data: *mut c_void) {
    // SAFETY: libdbus hands back the `Arc<MirroredWatch>` stored in `watch_added`, once.
    let mirror = unsafe { Arc::from_raw(data.cast::<MirroredWatch>()) };
    // Not replaced by a newer mirror: libdbus is freeing the DBusWatch itself (transport
    // disconnected, lock held), right after this returns.
    if !mirror.superseded.load(Ordering::Acquire) {
        mirror.confinement.watch_freed();
    }
}

extern "C" fn free_timeout_gate(data: *mut c_void) {
    // SAFETY: libdbus hands back the `Arc<Gate<Timeout>>` stored in `timeout_added`, once.
    let gate = unsafe { Arc::from_raw(data.cast::<Gate<Timeout>>()) };
    // libdbus finalizes a pending call's timeout without its connection lock: wait until no
    // handler may still pass this DBusTimeout to libdbus. When the data is merely replaced
    // (a re-added timeout, lock held) the timeout stays alive and nothing needs to wait.
    if !callout::locked() {
        gate.wait_idle();
    }
}

// ---- trampolines: libdbus → bridge ---------------------------------------------------------
//
// SAFETY (both): `data` is the `Inner` installed with the function. It stays valid until the
// function is uninstalled, which takes libdbus's connection lock and so waits for calls in
// progress (these are called with that lock held). Watches and timeouts: `trampoline`.

unsafe extern "C" fn wakeup_main(data: *mut c_void) {
    // SAFETY: see above (the wakeup function is called with the lock held too).
    let inner = unsafe { &*data.cast::<Inner>() };
    inner.panics.locked((), || inner.woken());
}

unsafe extern "C" fn dispatch_status_changed(
    _connection: *mut ffi::DBusConnection,
    status: sys::DBusDispatchStatus,
    data: *mut c_void,
) {
    // The glue learns `Complete` from the answers of `dispatch` and `dispatch_status` only
    // (`status_changed`): nothing to do, and libdbus reports it after every dispatch that
    // empties the queue.
    if status == sys::DBusDispatchStatus::Complete {
        return;
    }
    // SAFETY: `data` is the relay in the connection's data slot, freed only when the
    // connection is finalized; libdbus holds a reference for the length of this call.
    let relay = unsafe { &*data.cast::<Relay<Inner>>() };
    if let Some(inner) = relay.target() {
        inner.panics.unlocked((), || inner.status_changed(status));
    }
}

// ---- the Source -------------------------------------------------------------------------------

impl Source for Connection {
    fn data(&self) -> &SourceData {
        &self.owner.inner.data
    }

    /// Installs the glue's watch functions; the first set also installs the bridge's
    /// trampolines as libdbus's (`dbus_connection_set_watch_functions`), so every `DBusWatch`
    /// reaches the glue as a [`Watch`]. `None` restores libdbus to no watch functions first.
    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        let inner = &self.owner.inner;
        inner.watch_functions.set_functions(
            &inner.install,
            functions,
            |on| inner.set_watch_trampolines(on),
            |set| inner.watches.set_functions(set),
        )
    }

    /// As [`set_watch_functions`](Self::set_watch_functions), for timeouts
    /// (`dbus_connection_set_timeout_functions`). The glue also sees two timeouts of the
    /// bridge's own, disabled until needed: one for work deferred out of a call-out, one for
    /// out-of-memory retries.
    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        let inner = &self.owner.inner;
        inner.timeout_functions.set_functions(
            &inner.install,
            functions,
            |on| inner.set_timeout_trampolines(on),
            |set| inner.timeouts.set_functions(set),
        )
    }

    /// Installs the glue's wakeup function. libdbus's wakeup (a message queued, or output
    /// left queued, possibly on another thread) reaches the bridge while its watch functions
    /// are installed; the bridge announces [`DispatchStatus::DataRemains`] and calls this
    /// function unless the loop is the one running the bridge on this thread.
    fn set_wakeup_main_function(&self, wakeup: Option<WakeupFn>) {
        self.owner.inner.wakeup.set_function(wakeup);
    }

    /// Installs the glue's dispatch-status function; libdbus's status changes reach it, with
    /// a stale `Complete` corrected (see the type's notes). Setting it never calls it (C16).
    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        let inner = &self.owner.inner;
        let on = function.is_some();
        inner.announcer.set_function(function);
        if !callout::inside() {
            let _install = inner.install.lock();
            inner.set_status_trampoline(on);
        }
    }

    /// `dbus_connection_get_dispatch_status`; inside a call-out, the last status the glue was
    /// told (libdbus may not be entered there).
    fn dispatch_status(&self) -> DispatchStatus {
        let inner = &self.owner.inner;
        if callout::inside() {
            return inner.announcer.believed();
        }
        // The glue believes `DataRemains` and has not dispatched yet: `dispatch` finds out.
        if inner.announcer.believed() == DispatchStatus::DataRemains {
            return DispatchStatus::DataRemains;
        }
        inner.announcer.begin();
        let status = inner.read_status();
        inner.announcer.answer(status)
    }

    /// `dbus_connection_dispatch`: runs the handlers of one incoming message. Inside a
    /// call-out it defers the work to the bridge's own timeout and returns `Complete`.
    ///
    /// # Panics
    ///
    /// If a glue callback panicked inside a libdbus call-out since the last bridge call: the
    /// panic could not unwind through libdbus and is raised here.
    fn dispatch(&self) -> DispatchStatus {
        let inner = &self.owner.inner;
        if callout::inside() {
            inner.defer(DEFERRED_DISPATCH);
            return inner.announcer.complete();
        }
        inner.announcer.begin();
        let status = inner.dispatch_now();
        // libdbus reports a change only against its own last report, which a `read_write`
        // never updates: the glue's answer is the bridge's (see `Announcer`).
        let answer = inner.announcer.answer(status);
        inner.panics.resume();
        answer
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let inner = &self.inner;
        if callout::locked() {
            // Dropped inside a call-out that holds libdbus's lock: libdbus cannot be entered
            // to uninstall. Keep the bridge alive (its trampolines stay valid) rather than
            // leave libdbus with dangling functions.
            std::mem::forget(Arc::clone(inner));
            return;
        }
        inner.uninstall_all();
        let relay = inner.relay.get();
        if !relay.is_null() {
            // SAFETY: the relay is the connection's, alive while the connection is (`RelayPtr`).
            unsafe { &*relay }.clear();
        }
        if self.close_on_drop {
            // SAFETY: a live connection this bridge opened or accepted.
            unsafe { sys::dbus_connection_close(inner.ptr()) };
        }
        let _ = inner.watches.set_functions(None);
        let _ = inner.timeouts.set_functions(None);
        let _ = inner.timeouts.remove(&inner.kick);
        let _ = inner.timeouts.remove(&inner.retry);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.owner.inner;
        f.debug_struct("Connection")
            .field("ptr", &inner.ptr())
            .field("watches", &inner.watches.len())
            .field("timeouts", &inner.timeouts.len())
            .field("installed", &inner.watch_functions.is_on())
            .finish_non_exhaustive()
    }
}
