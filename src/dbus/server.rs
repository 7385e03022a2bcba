//! `Server`: a libdbus `DBusServer` presented as a loopglue [`Source`].

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_void;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use libdbus_sys as sys;
use parking_lot::Mutex;

use super::backoff::Backoff;
use super::callout::{self, PanicSlot};
use super::connection::Connection;
use super::error::{new_error, Error};
use super::ffi;
use super::gate::Gate;
use super::relay::{self, Relay, Slots};
use super::trampoline::{
    add_timeout, add_watch, follow_timeout, remove_timeout, remove_watch, timeout_state,
    toggle_timeout, toggle_watch, watch_state, Installation, Mirror,
};
use crate::{
    SetFunctionsError, Source, SourceData, Timeout, TimeoutFunctions, TimeoutList, Watch,
    WatchFlags, WatchFunctions, WatchList,
};

type NewConnectionFn = Box<dyn FnMut(Connection) + Send>;

/// A libdbus server (`DBusServer`) run by whatever loop attaches it: its listening sockets
/// become [`Watch`]es, and each accepted connection is handed to your function as a
/// [`Connection`] — attach it to a loop to run it.
///
/// Unlike a connection, a server calls its glue with its own lock released, so the bridge
/// hands `dbus_watch_handle` the `DBusWatch` directly: a removal waits for a handler running
/// on another thread (`ObjectList::remove`), and libdbus frees the watch only after the
/// removal returns. If `dbus_watch_handle` reports out of memory, the watch is paused and
/// re-enabled by a retry timeout with exponential backoff (libdbus's own loop skips it for
/// one poll).
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use loopglue::dbus::Server;
/// use loopglue::MainLoop;
///
/// let main_loop = Arc::new(MainLoop::new()?);
/// let server = Server::listen("unix:tmpdir=/tmp")?;
/// let accepting = Arc::clone(&main_loop);
/// server.set_new_connection_function(move |connection| {
///     // Register filters on `connection.as_ptr()`, then run it here too.
///     accepting.attach(Arc::new(connection)).expect("attach");
/// });
/// main_loop.attach(Arc::new(server.clone()))?;
/// println!("listening on {}", server.address());
/// main_loop.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "DBusServer")]
#[doc(alias = "dbus_server_unref")]
#[doc(alias = "dbus_server_setup_with_g_main")]
#[derive(Clone)]
pub struct Server {
    owner: Arc<Owner>,
}

struct Owner {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Raw,
    me: Weak<Inner>,
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    panics: PanicSlot,
    relay: AtomicPtr<Relay<Inner>>,
    on_connection: Mutex<Option<NewConnectionFn>>,
    install: Mutex<()>,
    watch_functions: Installation,
    timeout_functions: Installation,
    /// Watches paused after `dbus_watch_handle` ran out of memory.
    paused: Mutex<Vec<Arc<ServerWatch>>>,
    retry: Timeout,
    backoff: Backoff,
}

/// A listening socket's watch as the bridge mirrors it.
struct ServerWatch {
    gate: Gate<Watch>,
    /// What libdbus last asked for; a paused watch returns to this.
    wanted: AtomicBool,
}

struct Raw(NonNull<ffi::DBusServer>);

// SAFETY: libdbus servers are thread-safe once `dbus_threads_init_default` has run; the
// pointer is only passed to libdbus.
unsafe impl Send for Raw {}
// SAFETY: as above.
unsafe impl Sync for Raw {}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: the reference taken when `Raw` was made.
        unsafe { ffi::dbus_server_unref(self.0.as_ptr()) };
    }
}

struct Pointer<T>(*mut T);

impl<T> Clone for Pointer<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Pointer<T> {}

// SAFETY: passed to libdbus only while the object is in its list: the server removes with
// its lock released, and `ObjectList::remove` waits for handlers running on other threads.
unsafe impl<T> Send for Pointer<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Pointer<T> {}

static CONNECTION_SLOT: AtomicI32 = AtomicI32::new(-1);

fn slots() -> Slots<ffi::DBusServer> {
    Slots {
        slot: &CONNECTION_SLOT,
        allocate: ffi::dbus_server_allocate_data_slot,
        get: ffi::dbus_server_get_data,
        set: ffi::dbus_server_set_data,
    }
}

impl Server {
    /// Listens on `address` (`dbus_server_listen`), e.g. `unix:tmpdir=/tmp` or
    /// `unix:path=/run/my.sock`.
    ///
    /// # Errors
    ///
    /// What libdbus reports (bad address, address in use), or [`Error::InvalidAddress`].
    #[doc(alias = "dbus_server_listen")]
    pub fn listen(address: &str) -> Result<Server, Error> {
        // SAFETY: idempotent, and required before objects are shared between threads.
        unsafe { sys::dbus_threads_init_default() };
        let address = CString::new(address).map_err(|_| Error::InvalidAddress)?;
        let mut error = new_error();
        // SAFETY: a valid C string and an initialised error.
        let raw = unsafe { ffi::dbus_server_listen(address.as_ptr(), &mut error) };
        let Some(raw) = NonNull::new(raw) else {
            // SAFETY: libdbus set the error.
            return Err(unsafe { Error::take(&mut error) });
        };
        Server::new(Raw(raw))
    }

    /// Runs an existing server, taking a reference of its own.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyBridged`], [`Error::NoMemory`].
    ///
    /// # Safety
    ///
    /// `server` must be a valid `DBusServer` on which nothing else installs functions.
    #[doc(alias = "dbus_server_ref")]
    pub unsafe fn from_raw(server: *mut ffi::DBusServer) -> Result<Server, Error> {
        let raw = NonNull::new(server).ok_or(Error::NoMemory)?;
        // SAFETY: idempotent.
        unsafe { sys::dbus_threads_init_default() };
        // SAFETY: the caller passes a valid server.
        unsafe { ffi::dbus_server_ref(raw.as_ptr()) };
        Server::new(Raw(raw))
    }

    fn new(raw: Raw) -> Result<Server, Error> {
        let ptr = raw.0.as_ptr();
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let retry = {
                let me = me.clone();
                Timeout::new_disabled(Duration::from_millis(10), move || {
                    if let Some(inner) = me.upgrade() {
                        inner.resume_paused();
                    }
                })
            };
            Inner {
                raw,
                me: me.clone(),
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                panics: PanicSlot::default(),
                relay: AtomicPtr::new(std::ptr::null_mut()),
                on_connection: Mutex::new(None),
                install: Mutex::new(()),
                watch_functions: Installation::default(),
                timeout_functions: Installation::default(),
                paused: Mutex::new(Vec::new()),
                retry,
                backoff: Backoff::new(),
            }
        });
        // SAFETY: a live server; the slot holds only `Relay<Inner>` values.
        let relay = unsafe { relay::install(&slots(), ptr, Arc::downgrade(&inner)) }?;
        inner.relay.store(relay.cast_mut(), Ordering::Release);
        // SAFETY: a live server; the data is the relay, which lives as long as the server
        // (libdbus calls this function with the server lock released, holding a reference).
        unsafe {
            ffi::dbus_server_set_new_connection_function(
                ptr,
                Some(new_connection),
                relay.cast_mut().cast(),
                None,
            )
        };
        let _ = inner.timeouts.add(&inner.retry);
        Ok(Server {
            owner: Arc::new(Owner { inner }),
        })
    }

    /// Sets the function that receives each accepted connection
    /// (`dbus_server_set_new_connection_function`). A connection the function drops is closed.
    /// It runs on the thread that handled the listening watch, with no lock held.
    #[doc(alias = "dbus_server_set_new_connection_function")]
    #[doc(alias = "DBusNewConnectionFunction")]
    pub fn set_new_connection_function(&self, function: impl FnMut(Connection) + Send + 'static) {
        let old = self
            .owner
            .inner
            .on_connection
            .lock()
            .replace(Box::new(function));
        drop(old);
    }

    /// The address clients connect to (`dbus_server_get_address`), with the listening
    /// socket's actual path or port.
    #[doc(alias = "dbus_server_get_address")]
    pub fn address(&self) -> String {
        // SAFETY: a live server; the string is ours to free.
        unsafe {
            let address = ffi::dbus_server_get_address(self.as_ptr());
            if address.is_null() {
                return String::new();
            }
            let out = CStr::from_ptr(address).to_string_lossy().into_owned();
            sys::dbus_free(address.cast());
            out
        }
    }

    /// The server's unique id (`dbus_server_get_id`), as clients see it in the address.
    #[doc(alias = "dbus_server_get_id")]
    pub fn id(&self) -> String {
        // SAFETY: a live server; the string is ours to free.
        unsafe {
            let id = ffi::dbus_server_get_id(self.as_ptr());
            if id.is_null() {
                return String::new();
            }
            let out = CStr::from_ptr(id).to_string_lossy().into_owned();
            sys::dbus_free(id.cast());
            out
        }
    }

    /// Restricts the authentication mechanisms clients may use
    /// (`dbus_server_set_auth_mechanisms`), e.g. `&["EXTERNAL"]`; empty allows all.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for a name with a NUL byte, [`Error::NoMemory`].
    #[doc(alias = "dbus_server_set_auth_mechanisms")]
    pub fn set_auth_mechanisms(&self, mechanisms: &[&str]) -> Result<(), Error> {
        let names = mechanisms
            .iter()
            .map(|m| CString::new(*m).map_err(|_| Error::InvalidAddress))
            .collect::<Result<Vec<_>, _>>()?;
        let mut list: Vec<*const std::os::raw::c_char> = names.iter().map(|n| n.as_ptr()).collect();
        list.push(std::ptr::null());
        let list = if mechanisms.is_empty() {
            std::ptr::null_mut()
        } else {
            list.as_mut_ptr()
        };
        // SAFETY: a live server and a NULL-terminated array of C strings that libdbus copies.
        if unsafe { ffi::dbus_server_set_auth_mechanisms(self.as_ptr(), list) } == 0 {
            return Err(Error::NoMemory);
        }
        Ok(())
    }

    /// The libdbus server, for libdbus calls.
    pub fn as_ptr(&self) -> *mut ffi::DBusServer {
        self.owner.inner.raw.0.as_ptr()
    }

    /// Stops listening (`dbus_server_disconnect`); the glue hears the watches removed.
    #[doc(alias = "dbus_server_disconnect")]
    pub fn disconnect(&self) {
        // SAFETY: a live server.
        unsafe { ffi::dbus_server_disconnect(self.as_ptr()) };
    }

    /// Whether the server still listens (`dbus_server_get_is_connected`).
    #[doc(alias = "dbus_server_get_is_connected")]
    pub fn is_connected(&self) -> bool {
        // SAFETY: a live server.
        unsafe { ffi::dbus_server_get_is_connected(self.as_ptr()) != 0 }
    }
}

impl Inner {
    fn ptr(&self) -> *mut ffi::DBusServer {
        self.raw.0.as_ptr()
    }

    fn data_ptr(&self) -> *mut c_void {
        (self as *const Inner).cast_mut().cast()
    }

    fn watch_ready(
        &self,
        state: &Weak<ServerWatch>,
        watch: Pointer<ffi::DBusWatch>,
        ready: WatchFlags,
    ) {
        let Some(state) = state.upgrade() else { return };
        if !state.gate.enter() {
            return;
        }
        // SAFETY: the watch was in its list when this handler started (loopglue's `handle`
        // runs nothing for a removed watch), and the server's remove trampoline calls
        // `ObjectList::remove`, which waits for this handler before libdbus may free the
        // watch or close its fd. The server calls out with its lock released, so that wait
        // cannot deadlock against the lock `dbus_watch_handle` takes.
        let handled = unsafe { sys::dbus_watch_handle(watch.0, u32::from(ready.bits())) };
        state.gate.leave();
        if handled == 0 {
            // Out of memory: pause the watch and retry later instead of spinning on it.
            if let Some(object) = state.gate.object() {
                let _ = self.watches.toggle(&object, false);
                self.paused.lock().push(state);
                let _ = self.timeouts.restart(&self.retry, self.backoff.failed());
            }
        } else {
            self.backoff.succeeded();
        }
        self.panics.resume();
    }

    fn resume_paused(&self) {
        let _ = self.timeouts.toggle(&self.retry, false);
        let paused = std::mem::take(&mut *self.paused.lock());
        for state in paused {
            if let Some(object) = state.gate.object() {
                let _ = self
                    .watches
                    .toggle(&object, state.wanted.load(Ordering::Acquire));
            }
        }
    }

    fn timeout_due(&self, gate: &Weak<Gate<Timeout>>, timeout: Pointer<ffi::DBusTimeout>) {
        let Some(gate) = gate.upgrade() else { return };
        if !gate.enter() {
            return;
        }
        // SAFETY: as for watches: removal waits for this handler (server call-outs hold no
        // lock), and libdbus frees a timeout only after removing it.
        unsafe { sys::dbus_timeout_handle(timeout.0) };
        gate.leave();
        self.panics.resume();
    }

    fn accepted(&self, connection: *mut ffi::DBusConnection) {
        // SAFETY: libdbus passes a live, unowned connection; `from_accepted` takes a reference.
        let Ok(connection) = (unsafe { Connection::from_accepted(connection) }) else {
            return; // no memory: libdbus closes the connection nobody referenced
        };
        let function = self.on_connection.lock().take();
        match function {
            Some(mut function) => {
                function(connection);
                let mut slot = self.on_connection.lock();
                if slot.is_none() {
                    *slot = Some(function);
                }
            }
            None => drop(connection),
        }
    }

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
            (None, None, None, std::ptr::null_mut())
        };
        // SAFETY: a live server; the data is this Inner, valid until the functions are
        // uninstalled (the owner does so before letting it go).
        let taken = unsafe {
            ffi::dbus_server_set_watch_functions(self.ptr(), add, remove, toggle, data, None)
        };
        taken != 0
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
            ffi::dbus_server_set_timeout_functions(self.ptr(), add, remove, toggle, data, None)
        };
        taken != 0
    }
}

/// A server calls these with its lock released.
impl Mirror for Inner {
    const LOCKED: bool = false;

    fn panics(&self) -> &PanicSlot {
        &self.panics
    }

    unsafe fn watch_added(&self, watch: *mut ffi::DBusWatch) -> ffi::dbus_bool_t {
        // SAFETY: libdbus passes a live watch.
        let (fd, flags, enabled) = unsafe { watch_state(watch) };
        let state = Arc::new(ServerWatch {
            gate: Gate::new(),
            wanted: AtomicBool::new(enabled),
        });
        let me = self.me.clone();
        let weak = Arc::downgrade(&state);
        let pointer = Pointer(watch);
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
        state.gate.open(object.clone());
        // SAFETY: a live watch; the data is a Box<Arc<ServerWatch>> freed by `free_watch`.
        unsafe {
            sys::dbus_watch_set_data(
                watch,
                Box::into_raw(Box::new(state)).cast(),
                Some(free_watch),
            )
        };
        match self.watches.add(&object) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    unsafe fn watch_removed(&self, watch: *mut ffi::DBusWatch) {
        // SAFETY: the caller's contract.
        if let Some(state) = unsafe { server_watch(watch) } {
            if let Some(object) = state.gate.close() {
                let _ = self.watches.remove(&object);
            }
        }
    }

    unsafe fn watch_toggled(&self, watch: *mut ffi::DBusWatch) {
        // SAFETY: the caller's contract.
        if let Some(state) = unsafe { server_watch(watch) } {
            // SAFETY: a live watch.
            let enabled = unsafe { sys::dbus_watch_get_enabled(watch) } != 0;
            state.wanted.store(enabled, Ordering::Release);
            if let Some(object) = state.gate.object() {
                let _ = self.watches.toggle(&object, enabled);
            }
        }
    }

    unsafe fn timeout_added(&self, timeout: *mut ffi::DBusTimeout) -> ffi::dbus_bool_t {
        // SAFETY: libdbus passes a live timeout.
        let (interval, enabled) = unsafe { timeout_state(timeout) };
        let gate = Arc::new(Gate::new());
        let me = self.me.clone();
        let weak = Arc::downgrade(&gate);
        let pointer = Pointer(timeout);
        let handler = move || {
            if let Some(inner) = me.upgrade() {
                inner.timeout_due(&weak, pointer);
            }
        };
        let object = if enabled {
            Timeout::new(interval, handler)
        } else {
            Timeout::new_disabled(interval, handler)
        };
        gate.open(object.clone());
        // SAFETY: a live timeout; the data is a Box<Arc<Gate<Timeout>>> freed by
        // `free_timeout`.
        unsafe {
            sys::dbus_timeout_set_data(
                timeout,
                Box::into_raw(Box::new(gate)).cast(),
                Some(free_timeout),
            )
        };
        match self.timeouts.add(&object) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    unsafe fn timeout_removed(&self, timeout: *mut ffi::DBusTimeout) {
        // SAFETY: the caller's contract.
        if let Some(object) = unsafe { timeout_gate(timeout) }.and_then(|gate| gate.close()) {
            let _ = self.timeouts.remove(&object);
        }
    }

    unsafe fn timeout_toggled(&self, timeout: *mut ffi::DBusTimeout) {
        // SAFETY: the caller's contract.
        if let Some(object) = unsafe { timeout_gate(timeout) }.and_then(|gate| gate.object()) {
            // SAFETY: a live timeout.
            unsafe { follow_timeout(&self.timeouts, &object, timeout) };
        }
    }
}

/// # Safety
///
/// `watch` is live and its data, if any, set by this bridge.
unsafe fn server_watch(watch: *mut ffi::DBusWatch) -> Option<Arc<ServerWatch>> {
    // SAFETY: the caller's contract.
    let data = unsafe { sys::dbus_watch_get_data(watch) }.cast::<Arc<ServerWatch>>();
    // SAFETY: non-null data is the Box<Arc<ServerWatch>> stored in `watch_added`.
    (!data.is_null()).then(|| unsafe { Arc::clone(&*data) })
}

/// # Safety
///
/// As [`server_watch`].
unsafe fn timeout_gate(timeout: *mut ffi::DBusTimeout) -> Option<Arc<Gate<Timeout>>> {
    // SAFETY: the caller's contract.
    let data = unsafe { sys::dbus_timeout_get_data(timeout) }.cast::<Arc<Gate<Timeout>>>();
    // SAFETY: non-null data is the Box<Arc<Gate<Timeout>>> stored in `timeout_added`.
    (!data.is_null()).then(|| unsafe { Arc::clone(&*data) })
}

extern "C" fn free_watch(data: *mut c_void) {
    // SAFETY: libdbus hands back the box stored in `watch_added`, once.
    drop(unsafe { Box::from_raw(data.cast::<Arc<ServerWatch>>()) });
}

extern "C" fn free_timeout(data: *mut c_void) {
    // SAFETY: libdbus hands back the box stored in `timeout_added`, once.
    drop(unsafe { Box::from_raw(data.cast::<Arc<Gate<Timeout>>>()) });
}

// ---- trampolines -------------------------------------------------------------------------------
//
// Watches and timeouts: `trampoline` (a server calls them with its lock released, so the
// call-outs are not marked as locked: the glue may call into the bridge from them).

unsafe extern "C" fn new_connection(
    _server: *mut ffi::DBusServer,
    connection: *mut ffi::DBusConnection,
    data: *mut c_void,
) {
    // SAFETY: `data` is the relay in the server's data slot, freed only when the server is
    // finalized; libdbus holds a server reference for the length of this call.
    let relay = unsafe { &*data.cast::<Relay<Inner>>() };
    if let Some(inner) = relay.target() {
        // Not marked as a call-out: the user attaches the new connection from here, and no
        // libdbus lock is held.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.accepted(connection)));
        if let Err(payload) = outcome {
            inner
                .panics
                .unlocked((), || std::panic::resume_unwind(payload));
        }
    }
}

// ---- the Source ----------------------------------------------------------------------------

impl Source for Server {
    fn data(&self) -> &SourceData {
        &self.owner.inner.data
    }

    /// Installs the glue's watch functions; the first set also installs the bridge's
    /// trampolines (`dbus_server_set_watch_functions`). `None` restores libdbus to none.
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
    /// (`dbus_server_set_timeout_functions`; libdbus 1.14 servers create none, and the
    /// glue sees the bridge's out-of-memory retry timeout).
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
}

impl Drop for Owner {
    fn drop(&mut self) {
        let inner = &self.inner;
        if callout::locked() {
            std::mem::forget(Arc::clone(inner));
            return;
        }
        {
            let _install = inner.install.lock();
            inner
                .watch_functions
                .turn_off(|on| inner.set_watch_trampolines(on));
            inner
                .timeout_functions
                .turn_off(|on| inner.set_timeout_trampolines(on));
        }
        let relay = inner.relay.load(Ordering::Acquire);
        if !relay.is_null() {
            // SAFETY: the relay lives as long as the server, which `inner` holds.
            unsafe { &*relay }.clear();
        }
        // SAFETY: a live server; its functions are uninstalled, so it closes its sockets
        // without calling out.
        unsafe { ffi::dbus_server_disconnect(inner.ptr()) };
        let _ = inner.watches.set_functions(None);
        let _ = inner.timeouts.set_functions(None);
        let _ = inner.timeouts.remove(&inner.retry);
        drop(inner.on_connection.lock().take());
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.owner.inner;
        f.debug_struct("Server")
            .field("ptr", &inner.ptr())
            .field("watches", &inner.watches.len())
            .finish_non_exhaustive()
    }
}
