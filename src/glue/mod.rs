//! The glue toolkit: the parts every event-loop glue repeats, as small public types, so that
//! an adapter for a host loop — ours for tokio, mio, calloop and GLib, or your own — is
//! short and gets the hard parts right. [`MainLoop`](crate::MainLoop) is built on exactly
//! these types, so every test of `MainLoop` exercises them.
//!
//! | type | what it does | contract |
//! |---|---|---|
//! | [`FdRegistry`] + [`Registrar`] + [`Token`] | merges the watches of each fd into one host registration that follows their enabled state; re-validates recycled fds by file identity; drops closed fds; narrows lazily so toggling is cheap | C9, C15, C18 |
//! | [`Recheck`] | the level-triggered re-check an edge-triggered loop needs after handlers ran | C17 |
//! | [`FileIdentity`] | which file an fd number names, for a registrar that must not deregister a recycled number | C15 |
//! | [`DispatchQueue`] | change-only status notifications from any thread → exactly one pending dispatch while data remains, with no reference cycle and no dispatch lost to a race or a panic | C16 |
//! | [`Attachments`] | attach all-or-nothing with a clear error, "already attached" refused, detach by identity that finishes every step | C6, C7, C16 |
//! | [`Attachment`] + [`Detach`] | the handle `attach` returns: detached when dropped (safely while unwinding), handed back when a detach is refused | C6, C15 |
//! | [`TimerQueue`] + [`Deadline`] | periodic fixed-delay timers, restart on enable with the current interval, huge intervals saturated to never | C9, C10 |
//! | [`WatchGlue`], [`TimerGlue`] | the glue's watch and timeout functions, forwarded to its `FdRegistry` and `TimerQueue`, holding the glue weakly | C7, C9 |
//!
//! Each type is plain data behind the glue's own lock (or, for the last two rows, locks of
//! its own), and none calls producer code while a lock is held: the glue collects what to
//! call under its lock, releases it, then calls [`Watch::handle`](crate::Watch::handle),
//! [`Timeout::handle`](crate::Timeout::handle) or [`Source::dispatch`](crate::Source::dispatch)
//! (C11).
//!
//! # Writing your own glue
//!
//! A glue is four things: watch functions, timeout functions, an `attach`, and a loop
//! iteration. With the toolkit each is a few lines:
//!
//! 1. **Watches.** Keep an [`FdRegistry`] behind your loop's lock. Implement [`Registrar`] for
//!    your host loop: `register` / `reregister` / `deregister` an fd for an interest (never
//!    empty), tagged with a [`Token`] your loop carries back with each readiness report.
//!    Implement [`WatchGlue`] — how to reach the registry under your lock — and
//!    [`WatchGlue::watch_functions`] are your [`WatchFunctions`](crate::WatchFunctions).
//! 2. **Timeouts.** With host timers: arm one for [`Deadline::after`]`(now, interval())` when a
//!    timeout is added or toggled while enabled (re-read `interval()` each time), cancel it on
//!    disable or remove, and re-arm from the moment you call `handle()` (fixed delay). Without
//!    host timers: a [`TimerQueue`] does all of that, and with [`TimerGlue`] implemented,
//!    [`TimerGlue::timeout_functions`] are your [`TimeoutFunctions`](crate::TimeoutFunctions).
//! 3. **Attach.** An [`Attachments`] table per loop: [`Attachments::attach`] with your two
//!    function sets and a wakeup function; its [`DispatchQueue`] tells you (through the `wake`
//!    you gave it) when a source has work to dispatch. Hand the caller an [`Attachment`], which
//!    detaches the source when dropped.
//! 4. **An iteration.** Wait — with no timeout if [`DispatchQueue::is_pending`], else until
//!    the next deadline — then, for each ready token, [`FdRegistry::ready`] under the lock and
//!    [`Watch::handle`](crate::Watch::handle) without it (and [`FdRegistry::report`] what it
//!    answered); then the due timeouts ([`TimerQueue::collect_due`], then
//!    [`TimerQueue::next_due`] one at a time: [`TimerGlue::fire_due`]); then
//!    [`DispatchQueue::run`].
//!
//! **Level-triggered** host loops (epoll without `EPOLLET`, poll(2), GLib, calloop in level
//! mode) need nothing more: an fd still ready is reported again. Call
//! [`FdRegistry::flush`] before blocking if the loop has a hook there. **Edge-triggered**
//! loops (mio, tokio, calloop in edge mode) add two things (C17): after an fd's handlers ran,
//! [`FdRegistry::recheck`] it (or [`FdRegistry::recheck_many`] the fds of a round together)
//! and run them again (after yielding) while
//! [`Recheck::again`]; clear cached readiness only for [`Recheck::clear`]; and re-check a
//! token when [`Registrar::widened`] is called, because an edge that passed while nobody
//! wanted it will not come again.
//!
//! Finally, run [`testing::run_all`](crate::testing::run_all) against your glue.
//!
//! ## A complete glue on poll(2)
//!
//! ```
//! use std::collections::HashMap;
//! use std::io;
//! use std::os::fd::{BorrowedFd, RawFd};
//! use std::sync::{Arc, Mutex};
//! use std::time::{Duration, Instant};
//!
//! use loopglue::glue::{
//!     Attachments, FdRegistry, Registrar, TimerGlue, TimerQueue, Token, WatchGlue,
//! };
//! use loopglue::testing::SocketPeer;
//! use loopglue::{Watch, WatchFlags};
//! use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
//!
//! /// The host loop's side: what poll(2) is asked about, per fd.
//! #[derive(Default)]
//! struct PollSet(HashMap<RawFd, (Token, WatchFlags)>);
//!
//! impl Registrar for PollSet {
//!     type Registration = ();
//!     fn register(&mut self, fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<()> {
//!         self.0.insert(fd, (token, interest));
//!         Ok(())
//!     }
//!     fn reregister(&mut self, _: &mut (), fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<()> {
//!         self.0.insert(fd, (token, interest));
//!         Ok(())
//!     }
//!     fn deregister(&mut self, _: (), fd: RawFd, _: Token) {
//!         self.0.remove(&fd);
//!     }
//! }
//!
//! #[derive(Default)]
//! struct State {
//!     fds: FdRegistry,
//!     poll_set: PollSet,
//!     timers: TimerQueue,
//! }
//!
//! /// The glue: its state behind one lock.
//! #[derive(Default)]
//! struct Glue(Mutex<State>);
//!
//! type Shared = Arc<Glue>;
//!
//! impl Glue {
//!     fn lock(&self) -> std::sync::MutexGuard<'_, State> {
//!         self.0.lock().unwrap()
//!     }
//! }
//!
//! // The watch and timeout functions: how to reach the registry and the timer queue.
//! impl WatchGlue for Glue {
//!     type Registration = ();
//!     type Host<'a> = PollSet;
//!     fn with_fds<T>(self: &Arc<Self>, f: impl FnOnce(&mut FdRegistry, &mut PollSet) -> T) -> T {
//!         let state = &mut *self.lock();
//!         f(&mut state.fds, &mut state.poll_set)
//!     }
//! }
//!
//! impl TimerGlue for Glue {
//!     fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T {
//!         f(&mut self.lock().timers)
//!     }
//!     fn timers_changed(&self) {
//!         // A loop that blocks on another thread wakes itself here to read its next deadline.
//!     }
//! }
//!
//! /// One iteration: wait, handle what is ready, fire what is due, dispatch.
//! fn iterate(state: &Shared, attachments: &Attachments, max_wait: Duration) -> io::Result<()> {
//!     let (polled, wait) = {
//!         let state = &mut *state.lock();
//!         state.fds.flush(&mut state.poll_set);
//!         let polled: Vec<(RawFd, Token, WatchFlags)> =
//!             state.poll_set.0.iter().map(|(fd, (t, i))| (*fd, *t, *i)).collect();
//!         let mut wait = state.timers.wait_time(Instant::now()).unwrap_or(max_wait).min(max_wait);
//!         if attachments.queue().is_pending() {
//!             wait = Duration::ZERO;
//!         }
//!         (polled, wait)
//!     };
//!     let mut fds: Vec<PollFd<'_>> = polled
//!         .iter()
//!         .map(|(fd, _, interest)| {
//!             let events = PollFlags::from_bits_truncate(interest.to_poll_events());
//!             // SAFETY: producers remove a watch before closing its fd (C15), and removal
//!             // runs only in the handlers below, after this poll returned; a closed fd
//!             // comes back as POLLNVAL.
//!             PollFd::new(unsafe { BorrowedFd::borrow_raw(*fd) }, events)
//!         })
//!         .collect();
//!     poll(&mut fds, PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX))?;
//!     let revents: Vec<PollFlags> =
//!         fds.iter().map(|p| p.revents().unwrap_or(PollFlags::empty())).collect();
//!     drop(fds);
//!
//!     let mut ready: Vec<(Token, Watch, WatchFlags)> = Vec::new();
//!     {
//!         let state = &mut *state.lock();
//!         let mut batch = Vec::new();
//!         for ((_, token, _), revents) in polled.iter().zip(revents) {
//!             if revents.contains(PollFlags::POLLNVAL) {
//!                 state.fds.closed(*token, &mut state.poll_set); // C15: dropped, never spins
//!             } else if !revents.is_empty() {
//!                 let condition = WatchFlags::from_poll_revents(revents.bits());
//!                 state.fds.ready(*token, condition, &mut state.poll_set, &mut batch);
//!                 ready.extend(batch.drain(..).map(|(w, c)| (*token, w, c)));
//!             }
//!         }
//!         state.timers.collect_due(Instant::now());
//!     }
//!     // No lock is held while producer code runs (C11).
//!     for (token, watch, condition) in ready {
//!         let delivery = watch.handle(condition);
//!         let state = &mut *state.lock();
//!         state.fds.report(token, &watch, delivery, &mut state.poll_set);
//!     }
//!     state.fire_due(); // what `collect_due` found, one at a time
//!     attachments.queue().run(64);
//!     Ok(())
//! }
//!
//! // Attach a producer and run it.
//! let state: Shared = Arc::default();
//! let attachments = Attachments::new(|| {}); // a real loop wakes itself here
//! let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
//! let peer = SocketPeer::new(ours, 2)?; // reads 2 bytes per handle: needs level triggering
//! attachments.attach(
//!     Arc::new(peer.clone()),
//!     Glue::watch_functions(&state),
//!     Glue::timeout_functions(&state),
//!     None,
//! )?;
//! std::io::Write::write_all(&mut &theirs, b"hello")?;
//! while peer.received_len() < 5 {
//!     iterate(&state, &attachments, Duration::from_secs(5))?;
//! }
//! assert_eq!(peer.received(), b"hello");
//! attachments.detach(&peer)?; // removes every registration before the fd can close (C15)
//! assert!(state.lock().poll_set.0.is_empty());
//! # Ok::<(), std::io::Error>(())
//! ```

mod attachment;
mod attachments;
mod deadline;
mod dispatch_queue;
mod fd_registry;
mod file_identity;
mod id_hasher;
mod recheck;
mod registrar;
mod timer_glue;
mod timer_queue;
mod token;
mod watch_glue;

pub use attachment::{Attachment, Detach};
pub use attachments::Attachments;
pub use deadline::Deadline;
pub use dispatch_queue::{DispatchKey, DispatchQueue};
pub use fd_registry::FdRegistry;
pub use file_identity::FileIdentity;
pub use recheck::Recheck;
pub use registrar::Registrar;
pub use timer_glue::TimerGlue;
pub use timer_queue::TimerQueue;
pub use token::Token;
pub use watch_glue::WatchGlue;

/// Tells the user about a producer's breach of the contract that the glue tolerated.
pub(crate) fn warn(message: &str) {
    eprintln!("loopglue: warning: {message}");
}
