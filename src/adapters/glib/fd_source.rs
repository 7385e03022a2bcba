//! `fd_source`: a unix fd `GSource` that GLib may dispatch re-entrantly.

use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};

use ::glib::ffi::{gboolean, gpointer, GIOCondition, GSourceFunc};
use ::glib::translate::{from_glib_full, IntoGlib};
use ::glib::{ControlFlow, IOCondition, Priority, Source};

/// What the glue runs when the fd reports: `Fn`, so a re-entrant dispatch is no conflict.
pub(super) type FdCallback = Box<dyn Fn(IOCondition) -> ControlFlow + Send + Sync>;

/// A unix fd source (`g_unix_fd_source_new`) for `condition` on `fd`, at `priority`, that
/// calls `callback` — and that GLib may dispatch while a handler of it runs (`can_recurse`).
///
/// Why not `glib_unix::fd_source_new`: a source that cannot recurse is blocked for the time
/// of each dispatch, which GLib does by taking its fd out of the context's poll set and
/// putting it back — two writes to the context's wakeup eventfd per dispatched source (the
/// cost a porter measured: 0.69–0.85× of MainLoop's round trips). A recursing source skips
/// that; but glib-rs keeps its closures in a `RefCell`, so a handler that iterates the context
/// (a nested main loop) would re-enter the borrowed closure and abort. This callback is a
/// plain `Fn`, and the glue's handlers run with no lock held, so recursion is safe.
pub(super) fn fd_source(
    fd: RawFd,
    condition: IOCondition,
    priority: Priority,
    callback: FdCallback,
) -> Source {
    unsafe extern "C" fn dispatch(_fd: i32, condition: GIOCondition, data: gpointer) -> gboolean {
        // SAFETY: `data` is the `Box<FdCallback>` leaked below; GLib keeps it until `destroy`,
        // and holds a reference to it for the whole of this call even if the source is
        // destroyed inside it.
        let callback = unsafe { &*(data as *const FdCallback) };
        let condition = IOCondition::from_bits_truncate(condition);
        // The glue catches handler panics itself; this only keeps its own code from
        // unwinding into C.
        match panic::catch_unwind(AssertUnwindSafe(|| callback(condition))) {
            Ok(flow) => flow.into_glib(),
            Err(_) => ControlFlow::Continue.into_glib(),
        }
    }
    unsafe extern "C" fn destroy(data: gpointer) {
        // SAFETY: GLib calls this once, after the last dispatch, with the pointer leaked below.
        drop(unsafe { Box::from_raw(data as *mut FdCallback) });
    }
    let data = Box::into_raw(Box::new(callback)) as gpointer;
    // SAFETY: a unix fd source calls its callback as a `GUnixFDSourceFunc` (fd, condition,
    // data); `GSourceFunc` is only the type `g_source_set_callback` declares, and the C ABI
    // passes the pointer through unchanged — GLib's own C callers make the same cast. The
    // source pointer is fresh from `g_unix_fd_source_new` and owned (full) by the returned
    // `Source`; `data` is freed by `destroy` exactly once.
    unsafe {
        let source = glib_unix::ffi::g_unix_fd_source_new(fd, condition.into_glib());
        let dispatch: unsafe extern "C" fn(i32, GIOCondition, gpointer) -> gboolean = dispatch;
        let dispatch: GSourceFunc = Some(std::mem::transmute::<
            unsafe extern "C" fn(i32, GIOCondition, gpointer) -> gboolean,
            unsafe extern "C" fn(gpointer) -> gboolean,
        >(dispatch));
        ::glib::ffi::g_source_set_callback(source, dispatch, data, Some(destroy));
        ::glib::ffi::g_source_set_priority(source, priority.into_glib());
        ::glib::ffi::g_source_set_can_recurse(source, ::glib::ffi::GTRUE);
        from_glib_full(source)
    }
}
