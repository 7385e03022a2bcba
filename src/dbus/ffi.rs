//! What `libdbus-sys` 0.2.7 declares wrongly or lacks, declared here against
//! `/usr/include/dbus-1.0/dbus/*.h` (libdbus 1.14). Everything else comes from `libdbus-sys`.
//!
//! * `DBusWakeupMainFunction` is `void (*)(void *data)` in `dbus-connection.h`; `libdbus-sys`
//!   declares it with a leading connection argument, so a callback written against it reads
//!   its data pointer from the wrong register. [`WakeupMainFunction`] and
//!   [`dbus_connection_set_wakeup_main_function`] here have the C shape.
//! * `dbus-server.h` is missing entirely: [`DBusServer`] and the `dbus_server_*` functions.
//! * `dbus_connection_ref`, `dbus_connection_get_is_authenticated`, the connection data
//!   slots, `dbus_pending_call_get_completed`, `dbus_message_get_error_name` and the deprecated
//!   `dbus_watch_get_fd` are missing; the bridge and its tests need them.
//!
//! The declarations are `pub` so that programs using the bridge can call them too (a
//! `DBusServer` is otherwise unreachable from Rust); they are plain C declarations, and every
//! call is `unsafe` with libdbus's own rules.
#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_int, c_void};

pub use libdbus_sys::{
    DBusConnection, DBusDispatchStatus, DBusError, DBusFreeFunction, DBusMessage, DBusPendingCall,
    DBusTimeout, DBusWatch,
};

/// libdbus's `dbus_bool_t`: a 32-bit integer, zero for false.
pub type dbus_bool_t = u32;

/// An opaque `DBusServer` (`dbus-server.h`).
#[repr(C)]
#[derive(Debug)]
pub struct DBusServer {
    _opaque: [u8; 0],
}

/// `DBusWakeupMainFunction` as `dbus-connection.h` declares it: one argument, the data.
pub type WakeupMainFunction = Option<unsafe extern "C" fn(data: *mut c_void)>;

/// `DBusNewConnectionFunction` (`dbus-server.h`).
pub type NewConnectionFunction = Option<
    unsafe extern "C" fn(server: *mut DBusServer, conn: *mut DBusConnection, data: *mut c_void),
>;

/// `DBusAddWatchFunction`, with `unsafe` so trampolines may be declared `unsafe extern "C"`.
pub type AddWatchFunction =
    Option<unsafe extern "C" fn(watch: *mut DBusWatch, data: *mut c_void) -> dbus_bool_t>;
/// `DBusRemoveWatchFunction` and `DBusWatchToggledFunction`.
pub type WatchFunction = Option<unsafe extern "C" fn(watch: *mut DBusWatch, data: *mut c_void)>;
/// `DBusAddTimeoutFunction`.
pub type AddTimeoutFunction =
    Option<unsafe extern "C" fn(timeout: *mut DBusTimeout, data: *mut c_void) -> dbus_bool_t>;
/// `DBusRemoveTimeoutFunction` and `DBusTimeoutToggledFunction`.
pub type TimeoutFunction =
    Option<unsafe extern "C" fn(timeout: *mut DBusTimeout, data: *mut c_void)>;
/// `DBusDispatchStatusFunction`.
pub type DispatchStatusFunction = Option<
    unsafe extern "C" fn(conn: *mut DBusConnection, status: DBusDispatchStatus, data: *mut c_void),
>;
/// `DBusFreeFunction`, `unsafe` variant.
pub type FreeFunction = Option<unsafe extern "C" fn(memory: *mut c_void)>;

extern "C" {
    // dbus-connection.h: the main-loop integration, declared with the C callback shapes
    // (`libdbus-sys` has these too, but with safe-fn callback types and the wrong wakeup type).
    /// `dbus_connection_set_watch_functions`.
    pub fn dbus_connection_set_watch_functions(
        conn: *mut DBusConnection,
        add: AddWatchFunction,
        remove: WatchFunction,
        toggled: WatchFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    ) -> dbus_bool_t;
    /// `dbus_connection_set_timeout_functions`.
    pub fn dbus_connection_set_timeout_functions(
        conn: *mut DBusConnection,
        add: AddTimeoutFunction,
        remove: TimeoutFunction,
        toggled: TimeoutFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    ) -> dbus_bool_t;
    /// `dbus_connection_set_wakeup_main_function`, with the C callback type.
    pub fn dbus_connection_set_wakeup_main_function(
        conn: *mut DBusConnection,
        wakeup: WakeupMainFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    );
    /// `dbus_connection_set_dispatch_status_function`.
    pub fn dbus_connection_set_dispatch_status_function(
        conn: *mut DBusConnection,
        function: DispatchStatusFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    );
    /// `dbus_connection_ref` (missing from `libdbus-sys`).
    pub fn dbus_connection_ref(conn: *mut DBusConnection) -> *mut DBusConnection;
    /// `dbus_connection_get_is_authenticated`.
    pub fn dbus_connection_get_is_authenticated(conn: *mut DBusConnection) -> dbus_bool_t;
    /// `dbus_connection_allocate_data_slot`.
    pub fn dbus_connection_allocate_data_slot(slot: *mut i32) -> dbus_bool_t;
    /// `dbus_connection_set_data`.
    pub fn dbus_connection_set_data(
        conn: *mut DBusConnection,
        slot: i32,
        data: *mut c_void,
        free_data: FreeFunction,
    ) -> dbus_bool_t;
    /// `dbus_connection_get_data`.
    pub fn dbus_connection_get_data(conn: *mut DBusConnection, slot: i32) -> *mut c_void;
    /// `dbus_watch_get_fd` (deprecated since 1.1.1; same as `dbus_watch_get_unix_fd`).
    pub fn dbus_watch_get_fd(watch: *mut DBusWatch) -> c_int;
    /// `dbus_pending_call_get_completed`.
    pub fn dbus_pending_call_get_completed(pending: *mut DBusPendingCall) -> dbus_bool_t;
    /// `dbus_message_get_error_name`.
    pub fn dbus_message_get_error_name(message: *mut DBusMessage) -> *const c_char;

    // dbus-server.h, absent from `libdbus-sys`.
    /// `dbus_server_listen`.
    pub fn dbus_server_listen(address: *const c_char, error: *mut DBusError) -> *mut DBusServer;
    /// `dbus_server_ref`.
    pub fn dbus_server_ref(server: *mut DBusServer) -> *mut DBusServer;
    /// `dbus_server_unref`.
    pub fn dbus_server_unref(server: *mut DBusServer);
    /// `dbus_server_disconnect`.
    pub fn dbus_server_disconnect(server: *mut DBusServer);
    /// `dbus_server_get_is_connected`.
    pub fn dbus_server_get_is_connected(server: *mut DBusServer) -> dbus_bool_t;
    /// `dbus_server_get_address` (free the result with `dbus_free`).
    pub fn dbus_server_get_address(server: *mut DBusServer) -> *mut c_char;
    /// `dbus_server_get_id` (free the result with `dbus_free`).
    pub fn dbus_server_get_id(server: *mut DBusServer) -> *mut c_char;
    /// `dbus_server_set_new_connection_function`.
    pub fn dbus_server_set_new_connection_function(
        server: *mut DBusServer,
        function: NewConnectionFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    );
    /// `dbus_server_set_watch_functions`.
    pub fn dbus_server_set_watch_functions(
        server: *mut DBusServer,
        add: AddWatchFunction,
        remove: WatchFunction,
        toggled: WatchFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    ) -> dbus_bool_t;
    /// `dbus_server_set_timeout_functions`.
    pub fn dbus_server_set_timeout_functions(
        server: *mut DBusServer,
        add: AddTimeoutFunction,
        remove: TimeoutFunction,
        toggled: TimeoutFunction,
        data: *mut c_void,
        free_data: FreeFunction,
    ) -> dbus_bool_t;
    /// `dbus_server_set_auth_mechanisms` (`mechanisms` is a NULL-terminated array).
    pub fn dbus_server_set_auth_mechanisms(
        server: *mut DBusServer,
        mechanisms: *mut *const c_char,
    ) -> dbus_bool_t;
    /// `dbus_server_allocate_data_slot`.
    pub fn dbus_server_allocate_data_slot(slot: *mut i32) -> dbus_bool_t;
    /// `dbus_server_set_data`.
    pub fn dbus_server_set_data(
        server: *mut DBusServer,
        slot: c_int,
        data: *mut c_void,
        free_data: FreeFunction,
    ) -> dbus_bool_t;
    /// `dbus_server_get_data`.
    pub fn dbus_server_get_data(server: *mut DBusServer, slot: c_int) -> *mut c_void;
}
