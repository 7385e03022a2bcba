//! The C functions libdbus calls to add, remove and toggle a bridge's watches and timeouts,
//! and the switch that installs them while the glue has functions. `Connection` and `Server`
//! differ in what they do with each call and in whether libdbus holds its lock while it
//! calls; the calling convention, the panic containment and the install-and-roll-back order
//! are the same, and live here once.

use std::io;
use std::os::fd::RawFd;
use std::os::raw::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use libdbus_sys as sys;
use parking_lot::Mutex;

use super::callout::{self, PanicSlot};
use super::ffi::{self, DBusTimeout, DBusWatch};
use crate::{SetFunctionsError, Timeout, TimeoutList, WatchFlags};

/// What a bridge does when libdbus adds, removes or toggles one of its watches or timeouts.
/// The generic trampolines below receive `data` as a pointer to the implementing type.
pub(super) trait Mirror: Sized {
    /// Whether libdbus holds its own lock while it calls these (a connection does, a server
    /// does not): a locked call-out may not re-enter libdbus (see `callout`).
    const LOCKED: bool;

    /// Where a panic in a call-out is kept, since it may not unwind into C.
    fn panics(&self) -> &PanicSlot;

    /// # Safety
    ///
    /// `watch` is a live `DBusWatch` libdbus is adding.
    unsafe fn watch_added(&self, watch: *mut DBusWatch) -> ffi::dbus_bool_t;

    /// # Safety
    ///
    /// `watch` is a live `DBusWatch` whose data, if any, this bridge set.
    unsafe fn watch_removed(&self, watch: *mut DBusWatch);

    /// # Safety
    ///
    /// As [`watch_removed`](Self::watch_removed).
    unsafe fn watch_toggled(&self, watch: *mut DBusWatch);

    /// # Safety
    ///
    /// `timeout` is a live `DBusTimeout` libdbus is adding.
    unsafe fn timeout_added(&self, timeout: *mut DBusTimeout) -> ffi::dbus_bool_t;

    /// # Safety
    ///
    /// `timeout` is a live `DBusTimeout` whose data, if any, this bridge set.
    unsafe fn timeout_removed(&self, timeout: *mut DBusTimeout);

    /// # Safety
    ///
    /// As [`timeout_removed`](Self::timeout_removed).
    unsafe fn timeout_toggled(&self, timeout: *mut DBusTimeout);

    /// Runs a call-out's body, marked as a call-out and with any panic kept.
    fn call_out<R>(&self, fallback: R, body: impl FnOnce() -> R) -> R {
        if Self::LOCKED {
            self.panics().locked(fallback, body)
        } else {
            self.panics().unlocked(fallback, body)
        }
    }
}

// SAFETY (all six): `data` is the `M` installed with the function by
// `Installation::set_functions`. It stays valid until the function is uninstalled, which the
// bridge does before it lets `M` go; libdbus serialises the uninstallation with calls in
// progress (its lock for a connection, its server lock for a server).

pub(super) unsafe extern "C" fn add_watch<M: Mirror>(
    watch: *mut DBusWatch,
    data: *mut c_void,
) -> u32 {
    // SAFETY: see above.
    let mirror = unsafe { &*data.cast::<M>() };
    // SAFETY: libdbus passes a live watch it is adding.
    mirror.call_out(0, || unsafe { mirror.watch_added(watch) })
}

pub(super) unsafe extern "C" fn remove_watch<M: Mirror>(watch: *mut DBusWatch, data: *mut c_void) {
    // SAFETY: see above.
    let mirror = unsafe { &*data.cast::<M>() };
    // SAFETY: libdbus passes a live watch; only this bridge sets its data.
    mirror.call_out((), || unsafe { mirror.watch_removed(watch) });
}

pub(super) unsafe extern "C" fn toggle_watch<M: Mirror>(watch: *mut DBusWatch, data: *mut c_void) {
    // SAFETY: see above.
    let mirror = unsafe { &*data.cast::<M>() };
    // SAFETY: libdbus passes a live watch; only this bridge sets its data.
    mirror.call_out((), || unsafe { mirror.watch_toggled(watch) });
}

pub(super) unsafe extern "C" fn add_timeout<M: Mirror>(
    timeout: *mut DBusTimeout,
    data: *mut c_void,
) -> u32 {
    // SAFETY: see above.
    let mirror = unsafe { &*data.cast::<M>() };
    // SAFETY: libdbus passes a live timeout it is adding.
    mirror.call_out(0, || unsafe { mirror.timeout_added(timeout) })
}

pub(super) unsafe extern "C" fn remove_timeout<M: Mirror>(
    timeout: *mut DBusTimeout,
    data: *mut c_void,
) {
    // SAFETY: see above.
    let mirror = unsafe { &*data.cast::<M>() };
    // SAFETY: libdbus passes a live timeout; only this bridge sets its data.
    mirror.call_out((), || unsafe { mirror.timeout_removed(timeout) });
}

pub(super) unsafe extern "C" fn toggle_timeout<M: Mirror>(
    timeout: *mut DBusTimeout,
    data: *mut c_void,
) {
    // SAFETY: see above.
    let mirror = unsafe { &*data.cast::<M>() };
    // SAFETY: libdbus passes a live timeout; only this bridge sets its data.
    mirror.call_out((), || unsafe { mirror.timeout_toggled(timeout) });
}

/// What a `Watch` mirroring `watch` starts with: its fd, the flags a glue may watch for, and
/// whether libdbus has it enabled.
///
/// # Safety
///
/// `watch` is live.
pub(super) unsafe fn watch_state(watch: *mut DBusWatch) -> (RawFd, WatchFlags, bool) {
    // SAFETY: the caller's contract.
    let (fd, flags, enabled) = unsafe {
        (
            sys::dbus_watch_get_unix_fd(watch),
            sys::dbus_watch_get_flags(watch),
            sys::dbus_watch_get_enabled(watch) != 0,
        )
    };
    let flags = WatchFlags::from_bits_truncate(flags as u8) & WatchFlags::INTEREST;
    (fd, flags, enabled)
}

/// What a `Timeout` mirroring `timeout` starts with: its interval (libdbus keeps milliseconds
/// in an `int`) and whether libdbus has it enabled.
///
/// # Safety
///
/// `timeout` is live.
pub(super) unsafe fn timeout_state(timeout: *mut DBusTimeout) -> (Duration, bool) {
    // SAFETY: the caller's contract.
    let (ms, enabled) = unsafe {
        (
            sys::dbus_timeout_get_interval(timeout),
            sys::dbus_timeout_get_enabled(timeout) != 0,
        )
    };
    (
        Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        enabled,
    )
}

/// libdbus toggled `timeout`: `object`, its mirror in `list`, follows. libdbus changes an
/// interval by disabling and re-enabling the timeout, so a new interval on enable restarts
/// the period with it (C9, C10).
///
/// # Safety
///
/// `timeout` is live.
pub(super) unsafe fn follow_timeout(
    list: &TimeoutList,
    object: &Timeout,
    timeout: *mut DBusTimeout,
) {
    // SAFETY: the caller's contract.
    let (interval, enabled) = unsafe { timeout_state(timeout) };
    if enabled && interval != object.interval() {
        let _ = list.restart(object, interval);
    } else {
        let _ = list.toggle(object, enabled);
    }
}

/// Whether a bridge's trampolines for one kind of object (watches or timeouts) are installed
/// in libdbus. They go in with the glue's first set of functions and come out with `None`,
/// and a set that libdbus or the glue refuses leaves both as they were.
#[derive(Debug, Default)]
pub(super) struct Installation {
    on: AtomicBool,
}

impl Installation {
    pub(super) fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// Installs `functions` through `install_in_list`, switching libdbus's trampolines with
    /// `switch(on)` (which says whether libdbus accepted them) around it. `guard` serialises
    /// installations of one bridge.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`](crate::Error::Reentrant) from inside a call-out, where libdbus
    /// may not be entered; a refusal (out of memory) when libdbus did not take the
    /// trampolines; whatever the list's `set_functions` refuses. The set is handed back in
    /// each case.
    pub(super) fn set_functions<F: ?Sized>(
        &self,
        guard: &Mutex<()>,
        functions: Option<Box<F>>,
        switch: impl Fn(bool) -> bool,
        install_in_list: impl FnOnce(Option<Box<F>>) -> Result<(), SetFunctionsError<F>>,
    ) -> Result<(), SetFunctionsError<F>> {
        if callout::inside() {
            return Err(SetFunctionsError::new(crate::Error::Reentrant, functions));
        }
        let _guard = guard.lock();
        let was_on = self.is_on();
        match functions {
            Some(set) => {
                if !was_on && !switch(true) {
                    return Err(SetFunctionsError::new(out_of_memory(), Some(set)));
                }
                self.on.store(true, Ordering::Release);
                let outcome = install_in_list(Some(set));
                if outcome.is_err() && !was_on {
                    self.on.store(false, Ordering::Release);
                    switch(false);
                }
                outcome
            }
            None => {
                self.turn_off(switch);
                install_in_list(None)
            }
        }
    }

    /// Uninstalls the trampolines if they are installed. The caller holds the bridge's
    /// installation guard.
    pub(super) fn turn_off(&self, switch: impl Fn(bool) -> bool) {
        if self.on.swap(false, Ordering::AcqRel) {
            switch(false);
        }
    }
}

fn out_of_memory() -> crate::Error {
    crate::Error::Refused(io::Error::new(
        io::ErrorKind::OutOfMemory,
        "libdbus could not install the main-loop functions",
    ))
}
