//! The few libvirt functions `register` calls, declared by hand from libvirt's
//! `libvirt-event.h` (stable since libvirt 0.5/0.9; checked against Debian's libvirt-dev 9.0).
//!
//! Why not the `virt-sys` crate: its current release (0.3.2) pins `libc = "=0.2.183"`, which
//! cannot resolve next to `nix` 0.32 (which needs libc ≥ 0.2.186) — only 0.3.1 builds here,
//! and any later pin may break it again; it is licensed LGPL-2.1, which this MIT/Apache crate
//! would then compile into its users' binaries; and three declarations are all we need.
//! libvirt itself is linked dynamically (`-lvirt`, from `libvirt-dev`).

use std::ffi::{c_int, c_void};

// libvirt's three callback types are `unsafe` because they dereference `opaque`.
/// `virEventHandleCallback`. Called only with the `opaque` libvirt registered with it, and
/// only until its free callback has run (`HandleTable` frees after the last callback,
/// C4/C15): the SAFETY condition of every call.
pub(crate) type HandleCallback =
    unsafe extern "C" fn(watch: c_int, fd: c_int, events: c_int, opaque: *mut c_void);
/// `virEventTimeoutCallback`. SAFETY for callers: as for `HandleCallback`.
pub(crate) type TimeoutCallback = unsafe extern "C" fn(timer: c_int, opaque: *mut c_void);
/// `virFreeCallback`. SAFETY for callers: once, with the `opaque` it was registered with.
pub(crate) type FreeCallback = unsafe extern "C" fn(opaque: *mut c_void);

/// `virEventAddHandleFunc`.
pub(crate) type AddHandleFunc = extern "C" fn(
    fd: c_int,
    event: c_int,
    cb: Option<HandleCallback>,
    opaque: *mut c_void,
    ff: Option<FreeCallback>,
) -> c_int;
/// `virEventUpdateHandleFunc`.
pub(crate) type UpdateHandleFunc = extern "C" fn(watch: c_int, event: c_int);
/// `virEventRemoveHandleFunc`.
pub(crate) type RemoveHandleFunc = extern "C" fn(watch: c_int) -> c_int;
/// `virEventAddTimeoutFunc`.
pub(crate) type AddTimeoutFunc = extern "C" fn(
    timeout: c_int,
    cb: Option<TimeoutCallback>,
    opaque: *mut c_void,
    ff: Option<FreeCallback>,
) -> c_int;
/// `virEventUpdateTimeoutFunc`.
pub(crate) type UpdateTimeoutFunc = extern "C" fn(timer: c_int, timeout: c_int);
/// `virEventRemoveTimeoutFunc`.
pub(crate) type RemoveTimeoutFunc = extern "C" fn(timer: c_int) -> c_int;

#[link(name = "virt")]
extern "C" {
    pub(crate) fn virEventRegisterImpl(
        add_handle: Option<AddHandleFunc>,
        update_handle: Option<UpdateHandleFunc>,
        remove_handle: Option<RemoveHandleFunc>,
        add_timeout: Option<AddTimeoutFunc>,
        update_timeout: Option<UpdateTimeoutFunc>,
        remove_timeout: Option<RemoveTimeoutFunc>,
    );
    pub(crate) fn virEventAddTimeout(
        timeout: c_int,
        cb: Option<TimeoutCallback>,
        opaque: *mut c_void,
        ff: Option<FreeCallback>,
    ) -> c_int;
    pub(crate) fn virEventRemoveTimeout(timer: c_int) -> c_int;
}
