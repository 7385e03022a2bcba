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
//! The numbered rules (C1…C18) that the tests cite are in the repository's design notes.
//!
//! # The whole flow
//!
//! A producer with one watch, a glue that records what it is told, and a "loop" that reports
//! the fd ready:
//!
//! ```
//! use std::io;
//! use std::sync::{Arc, Mutex};
//! use loopglue::{Watch, WatchFlags, WatchFunctionSet, WatchList};
//!
//! // The producer's side.
//! let list = WatchList::new();
//! let got = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&got);
//! let watch = Watch::new(4, WatchFlags::READABLE, move |ready| sink.lock().unwrap().push(ready));
//! list.add(&watch)?;
//!
//! // The application's glue: what a poll loop would keep.
//! let registered: Arc<Mutex<Vec<Watch>>> = Arc::default();
//! let glue = WatchFunctionSet::new(
//!     |w: &Watch, reg: &mut Arc<Mutex<Vec<Watch>>>| {
//!         reg.lock().unwrap().push(w.clone());
//!         Ok(())
//!     },
//!     |w: &Watch, reg: &mut Arc<Mutex<Vec<Watch>>>| reg.lock().unwrap().retain(|r| r != w),
//!     |_w: &Watch, _reg: &mut Arc<Mutex<Vec<Watch>>>| {}, // re-reads is_enabled() when polling
//!     Arc::clone(&registered),
//!     drop,
//! );
//! list.set_functions(Some(Box::new(glue))).map_err(|e| e.into_error())?;
//!
//! // The loop: fd 4 polled readable.
//! for w in registered.lock().unwrap().clone() {
//!     if w.is_enabled() {
//!         let _ = w.handle(WatchFlags::READABLE | WatchFlags::WRITABLE);
//!     }
//! }
//! // The watch asked only for READABLE, so that is all its handler hears (C3).
//! assert_eq!(*got.lock().unwrap(), [WatchFlags::READABLE]);
//!
//! list.remove(&watch)?; // glue's remove runs; then close the fd (C15)
//! assert!(registered.lock().unwrap().is_empty());
//! # Ok::<(), loopglue::Error>(())
//! ```
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]
#![cfg(unix)]

mod callout;
mod delivery;
mod error;
mod flags;
mod functions;
mod list;
mod object;
mod source;
mod status;
mod timeout;
mod wakeup;
mod watch;

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
pub use source::Source;
pub use status::{DispatchStatus, DispatchStatusFn, StatusNotifier};
pub use timeout::Timeout;
pub use wakeup::{WakeupFn, WakeupHook};
pub use watch::Watch;
