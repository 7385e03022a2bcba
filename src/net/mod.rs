//! A reference producer: framed connections and a listening server over Unix sockets.
//!
//! [`Connection`] carries messages over a non-blocking [`UnixStream`](std::os::unix::net::UnixStream),
//! each as a *frame*: a `u32` little-endian length, then that many bytes. [`Server`] listens
//! on a socket file and hands every client it accepts to the application as a `Connection`.
//! Neither runs a loop: like libdbus's `DBusConnection` and `DBusServer`, each keeps its
//! [`Watch`](crate::Watch)es and [`Timeout`](crate::Timeout)s in lists, implements
//! [`Source`](crate::Source), and runs in whatever loop glue attaches it to — the built-in
//! loop, an adapter, the mock loop, or a dozen lines of `poll(2)` (below).
//!
//! What the connection does for its loop:
//!
//! * one read and one write watch on its socket (created disabled and added write first, as
//!   libdbus's socket transport does); the write watch is on only while output waits for the
//!   socket, the read watch off while the inbound queue is full (back-pressure);
//! * bounded work per readiness report (read and write budgets), so glue must be
//!   level-triggered (C17);
//! * messages read while nothing is queued go straight to the message handler; the rest wait
//!   for [`dispatch`](Connection::dispatch), which delivers them in batches with a dispatch
//!   status (C16); a wakeup when output is queued from a thread other than the loop's;
//! * end of file from the peer is a half-close ([`HalfClose`]): by default what was read is
//!   delivered, the read-closed event told, the replies flushed, then the connection closes;
//! * optional idle and frame-completion timeouts, checked by one periodic timeout — on by
//!   default for connections a [`Server`] accepts, so silent and trickling clients go;
//! * on any end — the peer gone, a socket error, a frame over the maximum, end of file inside
//!   a frame, a timeout, [`close`](Connection::close) — its watches and timeout leave their
//!   lists before its socket closes (C15), and exactly one [`DisconnectReason`] is
//!   delivered, after the messages received before it.
//!
//! Bad input never panics and never allocates by the peer's word: a payload buffer grows only
//! as its bytes arrive, so a frame announcing 4 GiB costs what actually came. A peer that does
//! not read fills the outbound queue up to its cap, and then [`send`](Connection::send) says
//! [`SendError::QueueFull`] — nothing queued is dropped. All of a server's connections
//! together buffer at most [`ServerConfig::max_buffered_bytes`]: reaching it pauses reading
//! and drops nothing.
//!
//! # Examples
//!
//! An echo service and its client over a socket pair, with "the loop" played by hand:
//!
//! ```
//! use std::os::unix::net::UnixStream;
//! use std::sync::{Arc, Mutex};
//! use loopglue::net::Connection;
//! use loopglue::WatchFlags;
//!
//! let (left, right) = UnixStream::pair()?;
//! let client = Connection::from_stream(left)?;
//! let echo = Connection::from_stream(right)?;
//! echo.set_message_handler(|connection, message| {
//!     let _ = connection.send(message);
//! });
//! let replies = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&replies);
//! client.set_message_handler(move |_, message| sink.lock().unwrap().push(message));
//!
//! client.send(&b"hello"[..])?;
//! echo.read_watch().handle(WatchFlags::READABLE); // the echo side's socket is readable
//! echo.dispatch(); // the handler sends the reply
//! client.read_watch().handle(WatchFlags::READABLE);
//! client.dispatch();
//! assert_eq!(*replies.lock().unwrap(), [b"hello".to_vec()]);
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Attaching a connection to a tiny `poll(2)` loop through [`Source`](crate::Source): the glue
//! keeps the watches it is given, polls the enabled ones, reports what is ready, and
//! dispatches while data remains.
//!
//! ```
//! use std::os::fd::BorrowedFd;
//! use std::os::unix::net::UnixStream;
//! use std::sync::{Arc, Mutex};
//! use nix::poll::{poll, PollFd, PollFlags};
//! use loopglue::net::Connection;
//! use loopglue::{DispatchStatus, Source, Watch, WatchFlags, WatchFunctionSet};
//!
//! type Watches = Arc<Mutex<Vec<Watch>>>;
//!
//! let (left, right) = UnixStream::pair()?;
//! let sender = Connection::from_stream(left)?;
//! let receiver = Connection::from_stream(right)?;
//! let watches: Watches = Arc::default();
//! let glue = WatchFunctionSet::new(
//!     |watch: &Watch, all: &mut Watches| {
//!         all.lock().unwrap().push(watch.clone());
//!         Ok(())
//!     },
//!     |watch: &Watch, all: &mut Watches| all.lock().unwrap().retain(|w| w != watch),
//!     |_: &Watch, _: &mut Watches| {}, // the loop re-reads is_enabled() before each poll
//!     Arc::clone(&watches),
//!     drop,
//! );
//! receiver.set_watch_functions(Some(Box::new(glue))).map_err(|e| e.into_error())?;
//! let got = Arc::new(Mutex::new(Vec::new()));
//! let sink = Arc::clone(&got);
//! receiver.set_message_handler(move |_, message| sink.lock().unwrap().push(message));
//!
//! sender.send(&b"over poll"[..])?;
//! while got.lock().unwrap().is_empty() {
//!     let ready: Vec<Watch> = watches.lock().unwrap().iter().filter(|w| w.is_enabled()).cloned().collect();
//!     let mut fds: Vec<PollFd<'_>> = ready
//!         .iter()
//!         .map(|w| {
//!             let events = if w.flags().contains(WatchFlags::READABLE) {
//!                 PollFlags::POLLIN
//!             } else {
//!                 PollFlags::POLLOUT
//!             };
//!             // SAFETY: a connection keeps its fd open until its watches are removed
//!             // (C15), and nothing removes them while this loop iteration runs.
//!             let fd = unsafe { BorrowedFd::borrow_raw(w.fd().unwrap()) };
//!             PollFd::new(fd, events)
//!         })
//!         .collect();
//!     poll(&mut fds, 1000u16)?;
//!     for (watch, fd) in ready.iter().zip(&fds) {
//!         let revents = fd.revents().unwrap_or(PollFlags::empty());
//!         let mut condition = WatchFlags::empty();
//!         condition.set(WatchFlags::READABLE, revents.contains(PollFlags::POLLIN));
//!         condition.set(WatchFlags::WRITABLE, revents.contains(PollFlags::POLLOUT));
//!         condition.set(WatchFlags::HANGUP, revents.contains(PollFlags::POLLHUP));
//!         condition.set(WatchFlags::ERROR, revents.contains(PollFlags::POLLERR));
//!         if !condition.is_empty() {
//!             watch.handle(condition);
//!         }
//!     }
//!     while receiver.dispatch_status() == DispatchStatus::DataRemains {
//!         receiver.dispatch();
//!     }
//! }
//! assert_eq!(*got.lock().unwrap(), [b"over poll".to_vec()]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod budget;
mod config;
mod connection;
mod error;
mod frame;
mod outbox;
mod server;
mod stats;

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};

pub use config::{ConnectionConfig, HalfClose, ServerConfig};
pub use connection::Connection;
pub use error::{DisconnectReason, SendError};
pub use server::{Server, ServerStats};
pub use stats::ConnectionStats;

/// Runs `f`, keeping the first panic in `first` instead of unwinding, so that a teardown's
/// remaining steps (removing the other watch, closing the fd) still run; the caller resumes
/// the panic at the end (C14).
fn defer_panic(first: &mut Option<Box<dyn Any + Send>>, f: impl FnOnce()) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
        first.get_or_insert(payload);
    }
}
