//! Why the bridge could not open, listen or take a connection.

use std::ffi::CStr;
use std::fmt;

use super::ffi;

/// Why a [`Connection`](super::Connection) or [`Server`](super::Server) could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// libdbus reported an error (`DBusError`): its name (`org.freedesktop.DBus.Error.…`)
    /// and message.
    Dbus {
        /// The D-Bus error name.
        name: String,
        /// The human-readable message.
        message: String,
    },
    /// The connection or server is already run by a bridge: libdbus has one set of
    /// main-loop functions per object.
    AlreadyBridged,
    /// libdbus could not allocate memory.
    NoMemory,
    /// An address contained a NUL byte.
    InvalidAddress,
}

impl Error {
    /// Takes the error out of a set `DBusError` and frees it.
    ///
    /// # Safety
    ///
    /// `error` must be an initialised `DBusError`.
    pub(crate) unsafe fn take(error: &mut ffi::DBusError) -> Error {
        let text = |p: *const std::os::raw::c_char| {
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: libdbus sets name and message to NUL-terminated strings it owns
                // until dbus_error_free.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        let out = Error::Dbus {
            name: text(error.name),
            message: text(error.message),
        };
        // SAFETY: the caller passes an initialised DBusError.
        unsafe { libdbus_sys::dbus_error_free(error) };
        out
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Dbus { name, message } => write!(f, "{name}: {message}"),
            Error::AlreadyBridged => f.write_str("a bridge already runs this D-Bus object"),
            Error::NoMemory => f.write_str("libdbus ran out of memory"),
            Error::InvalidAddress => f.write_str("a D-Bus address may not contain NUL"),
        }
    }
}

impl std::error::Error for Error {}

/// A fresh, initialised `DBusError`.
pub(crate) fn new_error() -> ffi::DBusError {
    let mut error = ffi::DBusError {
        name: std::ptr::null(),
        message: std::ptr::null(),
        dummy: 0,
        padding1: std::ptr::null(),
    };
    // SAFETY: dbus_error_init only writes the struct it is given.
    unsafe { libdbus_sys::dbus_error_init(&mut error) };
    error
}
