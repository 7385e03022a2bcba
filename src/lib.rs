//! Run a library's connections inside whatever event loop the application already has —
//! libdbus's watch/timeout model, in Rust, without its lock-held call-outs.
//!
//! # The model
//!
//! A *producer* (a protocol connection, a server, a device handle) never runs a loop. It
//! describes what it waits for as objects:
//!
//! * a [`Watch`]: a file descriptor, the [`WatchFlags`] it wants (readable, writable), and
//!   whether it wants them right now;
//! * a [`Timeout`]: an interval, and whether it is running.
//!
//! It keeps them in a [`WatchList`] and a [`TimeoutList`], and the application's *glue*
//! installs a set of functions on each list — **add / remove / toggled**, plus data and a
//! free-data destructor ([`WatchFunctions`], or the closure form [`WatchFunctionSet`]). The
//! glue registers what it is told with its loop, and calls [`Watch::handle`] when an fd is
//! ready and [`Timeout::handle`] when a timeout is due. A producer implements [`Source`] so
//! that any glue can attach it generically.
//!
//! This is the shape of `dbus_connection_set_watch_functions`, so glue written for libdbus
//! ports one to one, and the `#[doc(alias)]`es find the libdbus names. What loopglue adds:
//! every method may be called from inside every callback (libdbus deadlocks), every object
//! may be used from any thread, a panic in a callback leaves everything consistent, glue data
//! belongs to the function set that stored it, and `handle` on a removed object is harmless.
//! The numbered rules (C1…C18) that glue may rely on and the tests cite are in [`contract`].
//!
//! # The whole flow
//!
//! A producer with one watch and one timeout, attached to [`testing::MockLoop`] — a glue
//! with a virtual clock and a log of every call it receives:
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use loopglue::testing::{MockEvent, MockLoop};
//! use loopglue::{Timeout, TimeoutList, Watch, WatchFlags, WatchList};
//!
//! // The producer's side: its objects and lists (a connection type would own these).
//! let watches = WatchList::new();
//! let timeouts = TimeoutList::new();
//! let heard = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&heard);
//! let watch = Watch::new(4, WatchFlags::READABLE, move |ready| sink.lock().unwrap().push(ready));
//! let tick = Timeout::new(Duration::from_secs(1), || {});
//! watches.add(&watch)?; // no glue yet: tracked, replayed when glue arrives
//! timeouts.add(&tick)?;
//!
//! // The application's side: install its loop's functions (what `MainLoop::attach` does for
//! // any `Source`). Every existing object is added.
//! let mock = MockLoop::new();
//! watches.set_functions(Some(mock.watch_functions())).map_err(|e| e.into_error())?;
//! timeouts.set_functions(Some(mock.timeout_functions())).map_err(|e| e.into_error())?;
//! assert_eq!(
//!     mock.take_log(),
//!     [
//!         MockEvent::WatchAdded { id: watch.id(), fd: 4, flags: WatchFlags::READABLE, enabled: true },
//!         MockEvent::TimeoutAdded { id: tick.id(), interval: Duration::from_secs(1), enabled: true },
//!     ]
//! );
//!
//! // fd 4 polls readable and writable; the watch asked only for READABLE, so that is all its
//! // handler hears (C3).
//! assert_eq!(mock.ready(4, WatchFlags::READABLE | WatchFlags::WRITABLE), 1);
//! assert_eq!(*heard.lock().unwrap(), [WatchFlags::READABLE]);
//!
//! // 2.5 s of virtual time: the periodic timeout fires twice (C10).
//! assert_eq!(mock.advance(Duration::from_millis(2500)), 2);
//!
//! // The producer stops reading for a while: the glue is told, and stops reporting (C9).
//! watches.toggle(&watch, false)?;
//! assert_eq!(mock.ready(4, WatchFlags::READABLE), 0);
//!
//! // And goes away: the glue's remove runs before the producer closes its fd (C15).
//! watches.remove(&watch)?;
//! assert_eq!(watch.fd(), None);
//! assert!(mock.watches().is_empty());
//! # Ok::<(), loopglue::Error>(())
//! ```
//!
//! Real applications attach producers to [`MainLoop`] (epoll or poll(2)), or write their own
//! glue with [`WatchFunctionSet`] — `examples/custom_glue.rs` ports a libdbus poll loop line
//! by line — and check it with the [`testing`] conformance scenarios. The [`glue`] toolkit
//! holds the parts every glue needs (per-fd merging, the edge-triggered re-check, dispatch
//! scheduling, attachments, timers); `MainLoop` is built on it.
//!
//! Code written to libvirt's shape — six functions with integer handle and timer ids instead
//! of watch lists — uses [`handles::HandleTable`], which runs on every loop; with the
//! `libvirt` feature, `libvirt::register` puts the real libvirt on it.
//!
//! # Map of the crate
//!
//! | where | what | for whom |
//! |---|---|---|
//! | the crate root | [`Watch`], [`Timeout`], [`WatchList`], [`TimeoutList`], the function sets, [`Source`], [`SourceData`], dispatch status and wakeup | producers and glue authors |
//! | [`contract`] | the rules C1…C18 every piece keeps, with libdbus's counterparts | everyone |
//! | [`main_loop`] | [`MainLoop`], the built-in loop (epoll, poll(2)) | applications without a loop |
//! | [`adapters`] | glue for tokio, mio, calloop and GLib, one cargo feature each | applications with a loop |
//! | [`glue`] | the toolkit those are built on: per-fd merging, re-check, dispatch queue, timers | writers of glue for other loops |
//! | [`testing`] | [`MockLoop`](testing::MockLoop), conformance scenarios, [`SocketPeer`](testing::SocketPeer) | tests of producers and of glue |
//! | [`net`] | [`Connection`](net::Connection) and [`Server`](net::Server), a reference producer | the main job, and a model to copy |
//! | [`handles`], `libvirt` | libvirt's event-impl shape on loopglue, and the real libvirt on it (feature `libvirt`) | libvirt users |
//! | `dbus` | real libdbus connections and servers as sources (feature `dbus`); `PORTING.md` maps every libdbus main-loop name | libdbus users and porters |
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg(unix)]

mod callout;
mod delivery;
mod error;
mod flags;
mod functions;
mod list;
mod object;
mod source;
mod source_data;
mod status;
mod timeout;
mod wakeup;
mod watch;

pub mod adapters;
pub mod contract;
#[cfg(feature = "dbus")]
pub mod dbus;
pub mod glue;
pub mod handles;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod main_loop;
pub mod net;
pub mod testing;

pub use delivery::Delivery;
pub use error::{Error, SetFunctionsError};
pub use flags::WatchFlags;
pub use functions::{
    FunctionSet, TimeoutFunctionSet, TimeoutFunctions, WatchFunctionSet, WatchFunctions,
};
pub use list::{Object, ObjectList, TimeoutList, WatchList};
pub use main_loop::{Backend, LoopHandle, MainLoop};
pub use source::Source;
pub use source_data::SourceData;
pub use status::{DispatchStatus, DispatchStatusFn, StatusNotifier};
pub use timeout::Timeout;
pub use wakeup::{WakeupFn, WakeupHook};
pub use watch::Watch;
