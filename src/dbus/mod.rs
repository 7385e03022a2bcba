//! Real libdbus inside any loopglue loop (feature `dbus`).
//!
//! [`Connection`] presents a libdbus `DBusConnection`, and [`Server`] a `DBusServer`, as a
//! loopglue [`Source`](crate::Source): attach one to [`MainLoop`](crate::MainLoop), an
//! adapter or your own glue, and libdbus's watches, timeouts, wakeups and dispatch run
//! there — edge-triggered loops included, since every glue re-checks readiness (C17) while
//! libdbus reads 2 KiB per call. Message handling stays libdbus's: register filters, object
//! paths and pending-call notifications on [`Connection::as_ptr`] with `libdbus-sys` (and
//! [`ffi`] for what it lacks).
//!
//! `PORTING.md` in the repository maps every libdbus main-loop name to its loopglue
//! counterpart; the `#[doc(alias)]`es let rustdoc search find them by the C name.
//!
//! # Locks
//!
//! libdbus calls the bridge's trampolines with its connection lock held (watch, timeout and
//! wakeup functions), and the glue's add / remove / toggled run inside those calls. The two
//! lock orders stay deadlock-free because the bridge never holds a loopglue lock — nor one of
//! its own that a trampoline takes — when it calls libdbus, and never enters libdbus from a
//! call-out: so the only order is libdbus lock → loopglue list lock (inside trampolines), and
//! loopglue releases its locks before it calls the glue (C11). Three consequences:
//!
//! * glue code that calls back into the bridge from a call-out (`dispatch`, a watch's
//!   `handle`) is deferred to the bridge's own zero-interval timeout instead of re-entering
//!   libdbus (a thread-local marks the call-outs);
//! * removal uses `ObjectList::remove_nowait`: waiting for a handler on another thread, which
//!   is blocked on libdbus's lock, would deadlock (see [`Connection`]);
//! * replacing the glue's functions from inside a call-out is refused with
//!   [`Error::Reentrant`](crate::Error::Reentrant).
//!
//! # The `dbus` crate
//!
//! `dbus::channel::Channel` (and the blocking and non-blocking connections built on it)
//! cannot be handed to this bridge: it exposes no `DBusConnection` pointer and no constructor
//! from one, it installs its own watch functions (recording toggles in an atomic that nobody
//! is told about), installs no timeout, wakeup or dispatch-status functions, and never calls
//! `dbus_connection_dispatch` (it pops messages itself). With the `dbus-rs` feature,
//! `ChannelSource` drives a `dbus::nonblock::SyncConnection` through that crate's own
//! public API instead; see its notes for what that route cannot do.

mod announcer;
mod backoff;
mod callout;
#[cfg(feature = "dbus-rs")]
mod channel_source;
mod confinement;
mod connection;
mod error;
pub mod ffi;
mod gate;
mod relay;
mod server;
mod trampoline;

#[cfg(feature = "dbus-rs")]
pub use channel_source::ChannelSource;
pub use connection::Connection;
pub use error::Error;
pub use server::Server;
