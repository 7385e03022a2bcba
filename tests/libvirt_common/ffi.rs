//! The libvirt client functions the libvirt tests and bench drive, declared by hand from
//! libvirt-host.h, libvirt-domain.h and libvirt-event.h (see src/libvirt/ffi.rs for why not
//! `virt-sys`).
#![allow(non_camel_case_types, dead_code)]

use std::ffi::{c_char, c_int, c_uint, c_void};

pub enum virConnect {}
pub enum virDomain {}
pub type virConnectPtr = *mut virConnect;
pub type virDomainPtr = *mut virDomain;

pub type FreeCallback = unsafe extern "C" fn(opaque: *mut c_void);
pub type LifecycleCallback = unsafe extern "C" fn(
    conn: virConnectPtr,
    dom: virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int;
/// `virConnectDomainEventGenericCallback`: what `virConnectDomainEventRegisterAny` takes.
pub type GenericCallback =
    unsafe extern "C" fn(conn: virConnectPtr, dom: virDomainPtr, opaque: *mut c_void);
pub type CloseCallback =
    unsafe extern "C" fn(conn: virConnectPtr, reason: c_int, opaque: *mut c_void);
pub type HandleCallback =
    unsafe extern "C" fn(watch: c_int, fd: c_int, events: c_int, opaque: *mut c_void);

pub const VIR_DOMAIN_EVENT_ID_LIFECYCLE: c_int = 0;
pub const VIR_DOMAIN_EVENT_STARTED: c_int = 2;
pub const VIR_DOMAIN_EVENT_STOPPED: c_int = 5;
pub const VIR_EVENT_HANDLE_READABLE: c_int = 1;
pub const VIR_CONNECT_CLOSE_REASON_ERROR: c_int = 0;
pub const VIR_CONNECT_CLOSE_REASON_EOF: c_int = 1;

#[link(name = "virt")]
extern "C" {
    pub fn virConnectOpen(name: *const c_char) -> virConnectPtr;
    pub fn virConnectClose(conn: virConnectPtr) -> c_int;
    pub fn virConnectDomainEventRegisterAny(
        conn: virConnectPtr,
        dom: virDomainPtr,
        event_id: c_int,
        cb: Option<GenericCallback>,
        opaque: *mut c_void,
        freecb: Option<FreeCallback>,
    ) -> c_int;
    pub fn virConnectDomainEventDeregisterAny(conn: virConnectPtr, callback_id: c_int) -> c_int;
    pub fn virConnectRegisterCloseCallback(
        conn: virConnectPtr,
        cb: Option<CloseCallback>,
        opaque: *mut c_void,
        freecb: Option<FreeCallback>,
    ) -> c_int;
    pub fn virDomainCreateXML(
        conn: virConnectPtr,
        xml: *const c_char,
        flags: c_uint,
    ) -> virDomainPtr;
    pub fn virDomainDestroy(dom: virDomainPtr) -> c_int;
    pub fn virDomainFree(dom: virDomainPtr) -> c_int;
    pub fn virGetLastErrorMessage() -> *const c_char;
    pub fn virEventRegisterDefaultImpl() -> c_int;
    pub fn virEventRunDefaultImpl() -> c_int;
    pub fn virEventAddHandle(
        fd: c_int,
        events: c_int,
        cb: Option<HandleCallback>,
        opaque: *mut c_void,
        ff: Option<FreeCallback>,
    ) -> c_int;
    pub fn virEventRemoveHandle(watch: c_int) -> c_int;
}

/// libvirt's last error, for failure messages.
pub fn last_error() -> String {
    // SAFETY: returns a static or thread-local string, never freed by the caller.
    let message = unsafe { virGetLastErrorMessage() };
    if message.is_null() {
        return "no libvirt error".into();
    }
    // SAFETY: a NUL-terminated string owned by libvirt, valid until the next libvirt call.
    unsafe { std::ffi::CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned()
}
