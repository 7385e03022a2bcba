//! The real libvirt inside loopglue loops (feature `libvirt`): [`register`] hands an
//! [`EventImpl`] — normally a [`HandleTable`](crate::handles::HandleTable) attached to your
//! loop — to libvirt's `virEventRegisterImpl`, so libvirt's domain events, a remote
//! connection's socket and its keepalive timer run on [`MainLoop`](crate::MainLoop) or any
//! other glue, the way `virEventRegisterDefaultImpl` runs them on libvirt's own loop and
//! libvirt-glib's `gvir_event_register` on GLib's.
//!
//! **Once per process.** libvirt keeps the first event implementation registered in a process
//! for the life of the process and ignores later ones. [`register`] may succeed once; a
//! second call returns [`RegisterError::AlreadyRegistered`], and a call after some other
//! implementation was registered (`virEventRegisterDefaultImpl`, libvirt-glib) returns
//! [`RegisterError::OtherImplementation`] — register before opening any connection, as libvirt
//! asks. Tests that need a fresh registration run in a process of their own.
//!
//! **Calls across the boundary.** libvirt calls the six functions from any of its threads,
//! often with its own locks held; each call goes straight to the `EventImpl` (the table takes
//! only its own short lock and calls no libvirt code while holding it). libvirt's callbacks
//! run on the loop's thread with no loopglue lock held, and may call back into any of the six,
//! removing their own handle included. A handle's free function runs later, on the loop's
//! thread, never inside `virEventRemoveHandle` — libvirt calls that with the socket's lock
//! held, and the socket's free function takes it. A panic inside the `EventImpl` is caught at
//! the boundary and reported to libvirt as a failure (`-1`), never unwound into C.
//!
//! # Examples
//!
//! ```no_run
//! use std::sync::Arc;
//! use loopglue::handles::HandleTable;
//! use loopglue::MainLoop;
//!
//! let main_loop = MainLoop::new()?;
//! let table = HandleTable::new();
//! main_loop.attach(Arc::new(table.clone()))?;
//! loopglue::libvirt::register(table)?;
//! // virConnectOpen(...), virConnectDomainEventRegisterAny(...), then:
//! main_loop.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ffi;

use std::error::Error as StdError;
use std::ffi::{c_int, c_void};
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::flags::WatchFlags;
use crate::handles::{EventImpl, HandleCallback, HandleId, TimerCallback, TimerId, TimerInterval};

/// The implementation libvirt calls, set once by [`register`].
static REGISTERED: OnceLock<Box<dyn EventImpl>> = OnceLock::new();

/// Set when `register`'s probe timer reached our `addTimeout`.
static PROBE_SEEN: AtomicBool = AtomicBool::new(false);

/// The probe timer's opaque: the address of a static is unique, where a function's address
/// may be shared with an identical function.
static PROBE_TOKEN: u8 = 0;

fn probe_token() -> *mut c_void {
    std::ptr::addr_of!(PROBE_TOKEN) as *mut c_void
}

/// Why [`register`] did not install the implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegisterError {
    /// [`register`] already succeeded (or was attempted) in this process; libvirt keeps the
    /// first event implementation for the life of the process.
    AlreadyRegistered,
    /// libvirt already had another event implementation (`virEventRegisterDefaultImpl`,
    /// libvirt-glib, …) and ignored this one.
    OtherImplementation,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegisterError::AlreadyRegistered => f.write_str(
                "an event implementation was already registered with libvirt by this process \
                 (libvirt allows one per process)",
            ),
            RegisterError::OtherImplementation => f.write_str(
                "libvirt already has another event implementation registered in this process \
                 and ignored this one; register before any other",
            ),
        }
    }
}

impl StdError for RegisterError {}

/// Registers `event_impl` as libvirt's event implementation for this process — the
/// `virEventRegisterImpl` call, with `extern "C"` trampolines into `event_impl`.
///
/// Attach the table to its loop before or after; what libvirt registers meanwhile waits in
/// the table. Then keep the loop running: libvirt needs it for events and keepalives, and
/// some of its callbacks stay registered briefly after `virConnectClose`.
///
/// # Errors
///
/// [`RegisterError::AlreadyRegistered`] on any call after the first;
/// [`RegisterError::OtherImplementation`] if libvirt kept an implementation registered
/// earlier by other code (the check registers and removes a disabled probe timer).
#[doc(alias = "virEventRegisterImpl")]
#[doc(alias = "gvir_event_register")]
pub fn register(event_impl: impl EventImpl + 'static) -> Result<(), RegisterError> {
    if REGISTERED.set(Box::new(event_impl)).is_err() {
        return Err(RegisterError::AlreadyRegistered);
    }
    // SAFETY: the six functions are `extern "C"` with the signatures of libvirt-event.h, never
    // unwind, and stay valid for the life of the process, as libvirt requires.
    unsafe {
        ffi::virEventRegisterImpl(
            Some(add_handle),
            Some(update_handle),
            Some(remove_handle),
            Some(add_timeout),
            Some(update_timeout),
            Some(remove_timeout),
        );
    }
    // libvirt ignores a second registration with only a log line: check that calls reach us.
    // SAFETY: a disabled timer with a no-op callback, a token opaque and no free function; libvirt
    // forwards it to whichever implementation it kept, and we remove it at once.
    let probe = unsafe { ffi::virEventAddTimeout(-1, Some(probe_callback), probe_token(), None) };
    if probe >= 0 {
        // SAFETY: removing the timer just added, by its id.
        unsafe { ffi::virEventRemoveTimeout(probe) };
    }
    if PROBE_SEEN.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(RegisterError::OtherImplementation)
    }
}

/// Whether [`register`] has been called in this process.
pub fn is_registered() -> bool {
    REGISTERED.get().is_some()
}

// SAFETY: touches neither argument; `unsafe` only because `TimeoutCallback` is.
unsafe extern "C" fn probe_callback(_timer: c_int, _opaque: *mut c_void) {}

/// libvirt's `opaque`, carried to the loop's thread.
struct Opaque(*mut c_void);

// SAFETY: libvirt hands `opaque` to an event implementation precisely so that the loop — run
// on a thread of the application's choosing, not the one that registered the handle — passes
// it back to `cb` and `ff`; libvirt's own default loop does the same. We never dereference it.
unsafe impl Send for Opaque {}
// SAFETY: as above; it is only copied and passed back to libvirt.
unsafe impl Sync for Opaque {}

/// What libvirt gave for one handle or timer. Dropping it is libvirt's free function, unless
/// the registration failed (`armed` false): libvirt then frees `opaque` itself.
struct Registration<F: Copy> {
    cb: F,
    opaque: Opaque,
    ff: Option<ffi::FreeCallback>,
    armed: AtomicBool,
}

impl<F: Copy> Drop for Registration<F> {
    fn drop(&mut self) {
        if let (Some(ff), true) = (self.ff, *self.armed.get_mut()) {
            // SAFETY: `ff` and `opaque` came together from libvirt, and the table drops a
            // callback exactly once, after its handle or timer was removed and no call of it
            // is running — when libvirt allows `opaque` to be freed.
            unsafe { ff(self.opaque.0) };
        }
    }
}

fn implementation() -> Option<&'static dyn EventImpl> {
    REGISTERED.get().map(|b| &**b)
}

/// Runs `f`, turning a panic into `None` so that it never unwinds into libvirt.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    panic::catch_unwind(AssertUnwindSafe(f)).ok()
}

fn events_of(events: c_int) -> WatchFlags {
    // The four bits are libvirt's virEventHandleType, bit for bit; anything else is ignored.
    WatchFlags::from_bits_truncate((events & 0xF) as u8)
}

extern "C" fn add_handle(
    fd: c_int,
    events: c_int,
    cb: Option<ffi::HandleCallback>,
    opaque: *mut c_void,
    ff: Option<ffi::FreeCallback>,
) -> c_int {
    let (Some(event_impl), Some(cb)) = (implementation(), cb) else {
        return -1;
    };
    let registration = Arc::new(Registration {
        cb,
        opaque: Opaque(opaque),
        ff,
        armed: AtomicBool::new(true),
    });
    let held = Arc::clone(&registration);
    let callback: HandleCallback = Box::new(move |id: HandleId, fd, events: WatchFlags| {
        // SAFETY: libvirt's callback with its own opaque, for a handle it has not removed
        // (the table starts no call after removal), with the ids and bits it expects.
        unsafe { (held.cb)(id.get(), fd, c_int::from(events.bits()), held.opaque.0) }
    });
    match guarded(|| event_impl.add_handle(fd, events_of(events), callback)) {
        Some(Ok(id)) => id.get(),
        _ => {
            // libvirt frees `opaque` itself when registration fails.
            registration.armed.store(false, Ordering::SeqCst);
            -1
        }
    }
}

extern "C" fn update_handle(watch: c_int, events: c_int) {
    if let Some(event_impl) = implementation() {
        // libvirt ignores updates of unknown handles, and so do we.
        let _ = guarded(|| event_impl.update_handle(HandleId::from_raw(watch), events_of(events)));
    }
}

extern "C" fn remove_handle(watch: c_int) -> c_int {
    let Some(event_impl) = implementation() else {
        return -1;
    };
    match guarded(|| event_impl.remove_handle(HandleId::from_raw(watch))) {
        Some(Ok(())) => 0,
        _ => -1,
    }
}

extern "C" fn add_timeout(
    timeout: c_int,
    cb: Option<ffi::TimeoutCallback>,
    opaque: *mut c_void,
    ff: Option<ffi::FreeCallback>,
) -> c_int {
    let (Some(event_impl), Some(cb)) = (implementation(), cb) else {
        return -1;
    };
    if opaque == probe_token() {
        PROBE_SEEN.store(true, Ordering::SeqCst);
    }
    let registration = Arc::new(Registration {
        cb,
        opaque: Opaque(opaque),
        ff,
        armed: AtomicBool::new(true),
    });
    let held = Arc::clone(&registration);
    let callback: TimerCallback = Box::new(move |id: TimerId| {
        // SAFETY: as for handles.
        unsafe { (held.cb)(id.get(), held.opaque.0) }
    });
    match guarded(|| event_impl.add_timeout(TimerInterval::from_millis(timeout), callback)) {
        Some(Ok(id)) => id.get(),
        _ => {
            registration.armed.store(false, Ordering::SeqCst);
            -1
        }
    }
}

extern "C" fn update_timeout(timer: c_int, timeout: c_int) {
    if let Some(event_impl) = implementation() {
        let _ = guarded(|| {
            event_impl.update_timeout(
                TimerId::from_raw(timer),
                TimerInterval::from_millis(timeout),
            )
        });
    }
}

extern "C" fn remove_timeout(timer: c_int) -> c_int {
    let Some(event_impl) = implementation() else {
        return -1;
    };
    match guarded(|| event_impl.remove_timeout(TimerId::from_raw(timer))) {
        Some(Ok(())) => 0,
        _ => -1,
    }
}
