//! `Relay`: a pointer libdbus may use after the bridge is gone.
//!
//! libdbus calls two functions *after* releasing its lock, with a data pointer it copied
//! under the lock: the dispatch-status function and a server's new-connection function.
//! Uninstalling such a function frees its old data at once, while another thread may still
//! be inside a call with that pointer. So their data is not the bridge but a small relay
//! stored in a libdbus data slot of the connection (or server) itself: libdbus frees it when
//! the object is finalized, and every caller of those functions holds a reference to the
//! object for the length of the call. The relay holds the bridge weakly.

use std::os::raw::c_void;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::error::Error;
use super::ffi;

/// What libdbus's late callbacks point to.
pub(crate) struct Relay<T> {
    target: Mutex<Weak<T>>,
}

impl<T> Relay<T> {
    /// The bridge, if it is still alive.
    pub(crate) fn target(&self) -> Option<Arc<T>> {
        self.target.lock().upgrade()
    }

    /// Detaches the bridge: later calls find nothing.
    pub(crate) fn clear(&self) {
        *self.target.lock() = Weak::new();
    }
}

/// libdbus's data-slot functions for one object type.
pub(crate) struct Slots<O> {
    pub(crate) slot: &'static AtomicI32,
    pub(crate) allocate: unsafe extern "C" fn(*mut i32) -> ffi::dbus_bool_t,
    pub(crate) get: unsafe extern "C" fn(*mut O, i32) -> *mut c_void,
    pub(crate) set:
        unsafe extern "C" fn(*mut O, i32, *mut c_void, ffi::FreeFunction) -> ffi::dbus_bool_t,
}

unsafe extern "C" fn free_relay<T>(data: *mut c_void) {
    // SAFETY: the slot only ever holds a `Box<Relay<T>>` made by `install`, and libdbus calls
    // this once, when it replaces or finalizes it.
    drop(unsafe { Box::from_raw(data.cast::<Relay<T>>()) });
}

/// Stores a relay to `target` in `object`'s data slot, or reuses the relay a dropped bridge
/// left there; returns the pointer to hand to libdbus.
///
/// # Safety
///
/// `object` must be a live libdbus object of the slot functions' type, and the slot must
/// only ever hold `Relay<T>` values.
pub(crate) unsafe fn install<O, T>(
    slots: &Slots<O>,
    object: *mut O,
    target: Weak<T>,
) -> Result<*const Relay<T>, Error> {
    let mut slot = slots.slot.load(Ordering::Acquire);
    if slot < 0 {
        let mut fresh: i32 = -1;
        // SAFETY: allocating a slot writes the integer it is given; libdbus refcounts slots,
        // so two threads racing here both get the same slot number.
        if unsafe { (slots.allocate)(&mut fresh) } == 0 {
            return Err(Error::NoMemory);
        }
        slots.slot.store(fresh, Ordering::Release);
        slot = fresh;
    }
    // SAFETY: `object` is live (caller); the slot is ours.
    let existing = unsafe { (slots.get)(object, slot) }.cast::<Relay<T>>();
    if !existing.is_null() {
        // SAFETY: only `install` stores values in this slot, each a Box<Relay<T>>, freed by
        // libdbus only at finalization of `object`, which the caller keeps alive.
        let relay = unsafe { &*existing };
        let mut current = relay.target.lock();
        if current.strong_count() > 0 {
            return Err(Error::AlreadyBridged);
        }
        *current = target;
        return Ok(existing);
    }
    let relay = Box::into_raw(Box::new(Relay {
        target: Mutex::new(target),
    }));
    // SAFETY: as above; on success libdbus owns the box and frees it with `free_relay`.
    let stored = unsafe { (slots.set)(object, slot, relay.cast(), Some(free_relay::<T>)) };
    if stored == 0 {
        // SAFETY: libdbus did not take the box.
        drop(unsafe { Box::from_raw(relay) });
        return Err(Error::NoMemory);
    }
    Ok(relay)
}
