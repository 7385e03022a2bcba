//! The contract: the numbered rules (C1…C18) that loopglue keeps, that glue may rely on, and
//! that the tests cite.
//!
//! libdbus (`dbus-watch.c`, `dbus-timeout.c`, `dbus-connection.c`) is the reference. Each rule
//! names its libdbus counterpart and, where loopglue differs, how and why. "Glue" is the code
//! that connects a producer's lists to an event loop: [`MainLoop`](crate::MainLoop),
//! [`MockLoop`](crate::testing::MockLoop), the adapters, or your own
//! [`WatchFunctions`](crate::WatchFunctions) / [`TimeoutFunctions`](crate::TimeoutFunctions).
//! "Producer" is the code that owns the objects: a connection, a server, a bridge.
//!
//! # Objects
//!
//! **C1 — flags.** [`WatchFlags`](crate::WatchFlags) has libdbus's bit values (READABLE = 1,
//! WRITABLE = 2, ERROR = 4, HANGUP = 8). A watch asks for READABLE and/or WRITABLE, fixed at
//! creation (libdbus has no setter either); ERROR and HANGUP are never in `flags()`, yet glue
//! always reports them.
//!
//! **C2 — handles.** [`Watch`](crate::Watch) and [`Timeout`](crate::Timeout) are cheap
//! clonable `Send + Sync` handles; clones are one object, equal and hashed by identity. Glue
//! reads `fd()` (`dbus_watch_get_unix_fd`), `flags()`, `is_enabled()`, `interval()`, and calls
//! `handle(condition)` when the fd is ready / `handle()` when the timeout is due.
//!
//! **C3 — handle.** `Watch::handle` drops READABLE/WRITABLE bits the watch did not ask for,
//! keeps ERROR/HANGUP, and runs nothing if nothing is left. A handler may add, toggle or remove
//! any object, its own included, before `handle` returns. *Departures:* `handle` returns a
//! [`Delivery`](crate::Delivery) telling what it did, where libdbus returns `TRUE` whatever
//! happened and aborts on a removed watch; a removed object answers `Removed` and runs nothing;
//! a disabled one answers `Disabled` and runs nothing (libdbus delivers to it). Glue only polls
//! enabled watches, so `Disabled` only happens when a report races a toggle on another thread —
//! and then the producer asked not to be called. Glue that receives `Removed` or `Disabled`
//! drops or resyncs that registration instead of polling it again.
//!
//! **C4 — removal invalidates, and waits.** Removal is two-phase. From the moment the producer
//! calls [`remove`](crate::ObjectList::remove), `handle` is a no-op; `fd()` and `flags()` keep
//! answering, and the fd stays open (C15), until the glue's `remove` returns, so glue keyed by
//! fd can unregister it; afterwards `fd()` is `None` and `flags()` empty. `remove` returns only
//! when handler calls of that object already running on *other* threads have finished (like
//! Linux's `del_timer_sync`), so no handler reads the fd after the producer closes it; a
//! handler running on the calling thread (removing its own object) is not waited for. A
//! producer must therefore not call `remove` while holding a lock that the object's handler
//! takes; one that must (libdbus removes under its connection lock, libvirt under its socket
//! lock) uses [`remove_nowait`](crate::ObjectList::remove_nowait) and makes its own guarantee
//! (see [`handles`](crate::handles) and `loopglue::dbus` (feature `dbus`)). Removal is
//! final: re-adding a removed object is [`Error::Removed`](crate::Error::Removed) (libdbus
//! frees it).
//!
//! **C5 — glue data belongs to the set that stored it.** Each object has a data slot per
//! function set (`set_data` / `data` / `take_data`, any `Send + Sync + 'static`, read as
//! `Arc<T>` so no lock is held while glue uses it). Inside a set's callback the slot addressed
//! is that set's; elsewhere it is the slot of the set that has the object. A new set's `add`
//! sees an empty slot and the old set's `remove` still sees its own value — which fixes the
//! dbus-glib context-switch bug (fd.o #30574) by construction. A replaced value, and a set's
//! value once that set's `remove` returns, is dropped exactly once, never under a library lock.
//! Sources have per-glue slots too: [`SourceData`](crate::SourceData)
//! (`dbus_connection_set_data`), with an identity shared by every handle of the source.
//!
//! # Function sets
//!
//! **C6 — a set.** A set is add / remove / toggled, a data value passed to each, and a
//! free-data run exactly once with that data when the set is uninstalled or dropped — the
//! trait form ([`WatchFunctions`](crate::WatchFunctions)) for adapters, the closure form
//! ([`WatchFunctionSet`](crate::WatchFunctionSet)) mirroring
//! `dbus_connection_set_watch_functions` for porting. `add` returns `io::Result<()>`; an error
//! means "this loop cannot take it now".
//!
//! **C7 — replacing a set is a transaction**, in libdbus's order: the new `add` for every
//! object in insertion order, disabled ones too; if all succeed, the old `remove` for every
//! object, then the old free-data, and the new set is installed. If the new `add` fails at
//! object k: the new `remove` for objects 1…k−1, the old set stays installed untouched, and
//! the error hands the new set back ([`SetFunctionsError`](crate::SetFunctionsError)).
//! `None` uninstalls. With no set installed, objects are still tracked with their enabled
//! state and replayed to the next set. *Departure:* libdbus never frees a refused set's data
//! (the C caller still owns it); here ownership travels with the error, and dropping it runs
//! the free-data, exactly once whichever way the caller goes.
//!
//! **C8 — add and remove with a set installed.** Adding calls `add`; if it fails the object is
//! not tracked, no `remove` follows, and the error is returned. Removing calls `remove`, for
//! disabled objects too. An object belongs to one list ([`Error::ForeignObject`]
//! otherwise); toggling a never-added object sets the state it will be added in.
//!
//! [`Error::ForeignObject`]: crate::Error::ForeignObject
//!
//! **C9 — toggled.** `toggled` is called only when the enabled state really changes, and
//! `is_enabled()` already tells the new state inside it. Enabling a timeout restarts its
//! period from now. Toggles queued inside a callback (C11) coalesce at delivery: off-and-on
//! of a watch reaches the glue as nothing. For a timeout, an off-and-on, or a
//! [`restart`](crate::TimeoutList::restart), must restart the period, so it reaches the glue
//! as `toggled` with the timeout enabled even though the glue was last told "enabled": for a
//! timeout, `toggled` while enabled always means "(re)start the period from now with
//! `interval()`".
//!
//! **C10 — timeouts are periodic, fixed-delay.** Glue calls `handle()` every interval while
//! the timeout is enabled, until it is removed. The next period starts when the glue calls
//! `handle()` (fixed delay, as GLib and libdbus's own loop do): two firings are at least an
//! interval apart, and a timeout that fell several periods behind fires once, not in a burst.
//! Nothing fires earlier than an interval after it was added enabled, enabled, restarted or
//! last fired; how much later depends on the loop's load, which the contract does not bound.
//! The interval changes only through [`TimeoutList::restart`](crate::TimeoutList::restart)
//! (libdbus disables and re-enables a timeout whose interval changed; libvirt's
//! `virEventUpdateTimeout`), which glue hears as `toggled`. An interval too long for the clock
//! ([`Duration::MAX`](std::time::Duration::MAX)) means "never": glue saturates, never
//! overflows. Glue may round an interval up to its loop's resolution (a millisecond for
//! poll-style waits), never down to zero.
//!
//! # Reentrancy and threads — where loopglue beats libdbus
//!
//! libdbus holds its connection lock while it calls out, so glue must not call back in.
//!
//! **C11 — no lock held while user code runs.** Functions, handlers, free-data, data drops,
//! wakeup and dispatch-status functions all run with no loopglue lock held. From inside any
//! callback every public method may be called — add, remove, toggle, restart, `handle`,
//! `dispatch` — without deadlock, panic or lost call. Calls that cannot run at once (they
//! would re-enter the set, C12) update the list's bookkeeping at once — `contains`, `len` and
//! `objects` tell the new state — and are delivered to the glue, in order, before the
//! outermost call returns. An `add` from inside a callback returns `Ok(())` because the glue's
//! answer is not known yet; if the glue refuses it, the object leaves the list (`contains`
//! turns false). Replacing a set from inside one of that list's callbacks is refused with
//! [`Error::Reentrant`](crate::Error::Reentrant) and the set handed back: the caller must learn
//! whether its set was installed, which cannot be known before the callback returns. A call
//! from another thread while a callback runs waits for it, as it would for libdbus's lock, so
//! glue must not block on a thread that calls into the same list.
//!
//! A source whose callbacks run under a lock of its own — libdbus calls its watch, timeout
//! and wakeup functions with its connection lock held — cannot let glue re-enter it from
//! there. Such a source defers the re-entry itself: called from inside one of its own
//! call-outs, `dispatch` returns at once and `handle` reports at once, and the source
//! arranges, through a timeout of its own, for the work to run from the loop; replacing its
//! functions from there is refused with `Error::Reentrant`. So glue may call back from `add`,
//! `remove`, `toggled`, the status function or the wakeup function of any source, and neither
//! deadlocks nor spins. (`loopglue::dbus` (feature `dbus`) keeps this rule; libdbus deadlocks.)
//!
//! **C12 — a set is never re-entered.** Its `add` is not called from inside its `add`; calls
//! are delivered one at a time.
//!
//! **C13 — threads.** Everything is usable from any thread. Per object the glue sees
//! add → toggled* → remove, in order, possibly on different threads.
//!
//! **C14 — panics.** A panic in user code reaches the caller once the list is consistent and
//! usable again: the remaining work of the call is done first (a panic in the new `add` acts as
//! a refusal; a panic in the old `remove` does not stop the switch; a panic in `toggled` keeps
//! the new state), free-data still runs exactly once, and
//! [`Source::clear_functions`](crate::Source::clear_functions) finishes every step before it
//! re-raises the first panic. Loops keep their own state as if the panicking call had returned.
//!
//! # Producers and glue
//!
//! **C15 — remove before close.** A producer removes a watch before it closes the fd, so glue
//! never polls a recycled fd number, and (C4) no handler is still reading it. Glue tolerates a
//! producer that breaks this: an fd already closed (EBADF, POLLNVAL) is dropped without
//! spinning or crashing, with a warning; and an fd number reused by another file while a stale
//! watch still names it is recognised by the file's identity, so one producer's bug neither
//! silences nor feeds another.
//!
//! **C16 — wakeup and dispatch status.** A producer asks its loop to wake
//! ([`Source::set_wakeup_main_function`](crate::Source::set_wakeup_main_function)) when work
//! is queued from another thread. The dispatch-status function runs only when the status
//! changes ([`StatusNotifier`](crate::StatusNotifier)); setting it never calls it, so glue
//! reads the status once after installing and calls `dispatch()` from its loop until
//! `Complete`. `dispatch()` may be called from inside the status function (libdbus deadlocks
//! there); a status change reported while the function runs is delivered after it returns, so
//! the glue's last word is the latest status and calls never nest. Statuses computed on
//! several threads must not reach the notifier out of order; producers that cannot promise it
//! report with [`StatusNotifier::refresh`](crate::StatusNotifier::refresh), which re-reads
//! the live status.
//!
//! **C17 — level-triggered delivery.** A producer may consume only part of what is ready per
//! `handle` (libdbus reads 2 KiB). Glue over an edge-triggered loop re-checks readiness after
//! `handle`, so nothing stalls with data pending.
//!
//! **C18 — one registration per fd.** Several watches on one fd (libdbus: a read and a write
//! watch on one socket) are merged by glue into one registration: epoll, mio, `AsyncFd` and
//! libuv take an fd once.
