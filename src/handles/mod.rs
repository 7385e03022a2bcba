//! libvirt's shape of the same idea: an *event implementation* of six functions — add,
//! update and remove a handle (an fd), add, update and remove a timer — with integer ids,
//! that a library calls to have fds and timers watched without running a loop of its own
//! (`virEventRegisterImpl`).
//!
//! * [`EventImpl`]: the six functions as a Rust trait.
//! * [`HandleTable`]: an `EventImpl` built on loopglue's watches and timeouts. It is a
//!   [`Source`](crate::Source), so code written to libvirt's shape runs on every loop that
//!   attaches sources — [`MainLoop`](crate::MainLoop), [`MockLoop`](crate::testing::MockLoop)
//!   and the adapters — with no glue of its own.
//! * With the `libvirt` feature, `loopglue::libvirt::register` hands an `EventImpl` to the real
//!   libvirt.
//!
//! # Semantics
//!
//! These are libvirt's, read from `src/util/virevent.c` (the public contract),
//! `vireventglib.c` (the default implementation since libvirt 6.3, and so in libvirt 9.0),
//! the older `vireventpoll.c`, `tests/eventtest.c`, and libvirt-glib's
//! `libvirt-glib-event.c`. Where the table differs it says so, and why.
//!
//! **Ids.** Handle and timer ids are positive integers counted up from 1, separately, and
//! never reused while live (libvirt never reuses one at all; the table wraps after 2³¹−1 and
//! skips live ids). An id that is not live — never issued, or removed — is an error
//! ([`EventError::UnknownHandle`] / [`UnknownTimer`](EventError::UnknownTimer)), never a
//! crash: libvirt's `remove*` return `-1` for it and its `update*` ignore it.
//!
//! **Events.** The mask is the four bits of `virEventHandleType`, equal to [`WatchFlags`](crate::WatchFlags)
//! (`READABLE` 1, `WRITABLE` 2, `ERROR` 4, `HANGUP` 8). `READABLE` and `WRITABLE` choose what
//! is polled; errors and hang-ups are reported whenever the fd is polled, asked or not
//! (poll(2) reports them regardless). A mask of `ERROR` and/or `HANGUP` alone still polls the
//! fd, for errors and hang-ups only (`vireventpoll.c` passes `POLLERR|POLLHUP`;
//! `vireventglib.c` makes a source for any non-zero mask). A mask of 0 polls nothing and
//! reports nothing, hang-ups included: libvirt leaves such a handle out of the poll set.
//! libvirt reports `POLLNVAL` (an fd closed under its handle) as `ERROR`; loopglue's loops
//! instead stop polling a closed fd with a warning (C15), since the producer broke the rule
//! that a handle is removed before its fd is closed.
//!
//! **Handles on loopglue.** A handle is a `READABLE` watch and a `WRITABLE` watch on its fd,
//! enabled as the mask says — libdbus's own pattern, which glue merges into one registration
//! per fd (C18) — plus, created the first time a mask needs it, a watch asking for nothing
//! that is enabled for a mask of `ERROR`/`HANGUP` alone. An update toggles watches and creates
//! nothing; an unchanged mask (libvirt repeats its mask several times per RPC) costs one lock
//! and a lookup. When the fd is readable and writable at once, the callback may be called
//! twice in one iteration, once per watch (`READABLE|…` then `WRITABLE|…`), where libvirt
//! calls once with both bits; both are level-triggered, so nothing is lost, and a callback
//! that removes its handle in the first call does not get the second. Two handles on one fd
//! are independent; a handle with mask 0 on a shared fd hears nothing (`eventtest.c`'s last
//! case).
//!
//! **Timers.** `updateTimeout(id, n)` with `n` > 0 re-arms the timer with period `n` ms
//! counted from now, even if `n` is unchanged (both libvirt implementations restart it);
//! `-1` disables it; the timer keeps firing every period until disabled or removed
//! (fixed-delay: the next period starts when the callback is called, C10; libvirt's poll loop
//! also never catches up on missed periods). A timer is one loopglue [`Timeout`](crate::Timeout)
//! for its whole life, re-armed with [`TimeoutList::restart`](crate::TimeoutList::restart)
//! (one call to the glue, which hears `toggled` with the new interval) and disabled for `-1`
//! and `0`.
//!
//! **Interval 0: "fire on every loop iteration".** libvirt's loops make a 0 timer ready at once
//! on every iteration, so while one is enabled the loop never blocks: it spins. libvirt itself
//! uses 0 as "run this soon, once" — the callback sets `-1` before doing its work (domain event
//! queues, the daemon's client timers) — and pays nothing for the spin. The table keeps
//! "every iteration" without the spin: a 0 timer fires from the table's
//! [`dispatch`](crate::Source::dispatch), which every loop runs at the end of an iteration
//! when the table reports [`DataRemains`](crate::DispatchStatus::DataRemains); the table
//! reports it (a) when a timer is added or updated with 0 — so it fires in the next iteration,
//! woken if the loop was blocked — and (b) in every iteration in which any of the table's
//! handles or timers fired. So a 0 timer fires on every iteration in which libvirt had
//! anything to do, and a loop with nothing ready blocks instead of spinning. The one program
//! this changes is one that leaves a 0 timer enabled and expects it to poll something outside
//! libvirt's fds; it is called again only when the loop next wakes for the table. A 0 timer
//! that re-arms itself with 0 from its own callback is due again at once, as in libvirt (one
//! firing per `dispatch` call, never a loop inside one call).
//!
//! **Removal and the free function.** `removeHandle` / `removeTimeout` may be called from any
//! thread and from inside any callback, the handle's own included. After they return no call
//! of the callback starts and the fd is no longer polled (the watches leave their list at
//! once, through [`remove_nowait`](crate::ObjectList::remove_nowait)). They do **not** wait
//! for a call already running on another thread: libvirt removes a socket's handle with the
//! socket's lock held, and the socket's callback takes that lock, so a waiting removal
//! deadlocks (libvirt's own loops do not wait either; its callbacks re-check their state
//! under their lock). The free function — libvirt's `ff`, here the drop of the callback
//! closure — runs exactly once, later, with no lock held: from the table's `dispatch` on the
//! loop's thread, or when a call still running on another thread returns, whichever comes
//! last. It must not run inside the removal: `ff` typically
//! takes the lock the remover holds (libvirt's socket `ff` does), which self-deadlocks.
//! libvirt's GLib loop and libvirt-glib defer it the same way, to an idle source. Frees queued
//! while the table is attached to no loop run once it is attached, or when it is dropped.
//!
//! **Threads.** Every function may be called from any thread; callbacks run on the loop's
//! thread with no loopglue lock held, so they may call any function of the table. Two threads
//! updating one handle or timer at once end in the state of the last update.
//!
//! # Examples
//!
//! A timer on [`MockLoop`](crate::testing::MockLoop)'s virtual clock, updated the libvirt way:
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use loopglue::handles::{HandleTable, TimerInterval};
//! use loopglue::testing::MockLoop;
//!
//! let mock = MockLoop::new();
//! let table = HandleTable::new();
//! mock.attach(Arc::new(table.clone()))?;
//! let fired = Arc::new(AtomicUsize::new(0));
//! let count = Arc::clone(&fired);
//! let timer = table.add_timeout(
//!     TimerInterval::from_millis(100),
//!     Box::new(move |_id| {
//!         count.fetch_add(1, Ordering::SeqCst);
//!     }),
//! )?;
//! mock.advance(Duration::from_millis(250));
//! assert_eq!(fired.load(Ordering::SeqCst), 2); // at 100 and 200 ms
//! table.update_timeout(timer, TimerInterval::from_millis(-1))?; // disabled
//! mock.advance(Duration::from_secs(1));
//! assert_eq!(fired.load(Ordering::SeqCst), 2);
//! table.remove_timeout(timer)?;
//! assert!(table.remove_timeout(timer).is_err()); // unknown now: an error, not a crash
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod event_impl;
mod id;
mod table;

pub use error::EventError;
pub use event_impl::{EventImpl, HandleCallback, TimerCallback, TimerInterval};
pub use id::{HandleId, TimerId};
pub use table::HandleTable;
