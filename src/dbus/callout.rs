//! Whether this thread is inside a libdbus call-out, and what to do with panics there.
//!
//! libdbus calls the bridge's trampolines (add / remove / toggled, wakeup, dispatch status)
//! from inside its own API calls, most of them with the connection lock held. Whatever the
//! trampolines call — loopglue lists, and through them the glue — runs inside that call-out.
//! A glue that calls back into the source from there (`dispatch()` from `toggled`, say)
//! would re-enter libdbus on the thread that holds its lock: libdbus hangs on its own I/O
//! path or dispatch condition variable. The bridge therefore marks every call-out on a
//! thread-local counter and, while it is non-zero, defers its own libdbus entry points
//! instead of calling them (C11 for a source whose callbacks run under its own lock).
//!
//! The counter is per thread and not per connection on purpose: a glue that dispatches
//! *another* connection from inside a call-out could deadlock two connections against each
//! other (lock order X → Y on this thread, Y → X on another), so no bridge enters libdbus
//! from inside any call-out.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

thread_local! {
    /// Call-outs made with a libdbus lock held (watch, timeout and wakeup trampolines).
    static LOCKED: Cell<u32> = const { Cell::new(0) };
    /// Everything else that runs inside a libdbus call without its lock: the dispatch-status
    /// function and message handlers during `dbus_connection_dispatch`, where a nested
    /// dispatch waits forever for the outer one (pacemaker #1201).
    static UNLOCKED: Cell<u32> = const { Cell::new(0) };
    /// The bridge is doing I/O or dispatching on behalf of the loop that called it: that loop
    /// is running on this thread, not blocked, so libdbus's wakeups need not reach it.
    static SERVING: Cell<u32> = const { Cell::new(0) };
    /// How many libdbus wakeups reached the bridge on this thread while it was serving.
    static SERVED_WAKEUPS: Cell<u64> = const { Cell::new(0) };
}

/// Counts a libdbus wakeup (a message queued, or output left queued) that reached the bridge
/// while it was serving its loop on this thread.
pub(crate) fn note_served_wakeup() {
    SERVED_WAKEUPS.with(|n| n.set(n.get().wrapping_add(1)));
}

/// The count of [`note_served_wakeup`]: compared before and after a libdbus call made while
/// serving, it tells whether libdbus queued a message during the call.
pub(crate) fn served_wakeups() -> u64 {
    SERVED_WAKEUPS.with(Cell::get)
}

/// Whether this thread is serving its loop inside the bridge (see `SERVING`).
pub(crate) fn serving() -> bool {
    SERVING.with(|n| n.get() > 0)
}

/// Marks the bridge's own libdbus calls made for the loop on this thread.
pub(crate) struct Serving(());

impl Serving {
    pub(crate) fn enter() -> Serving {
        SERVING.with(|n| n.set(n.get() + 1));
        Serving(())
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.with(|n| n.set(n.get() - 1));
    }
}

/// Whether this thread is inside a libdbus call-out right now: the bridge does not enter
/// libdbus from here.
pub(crate) fn inside() -> bool {
    LOCKED.with(|n| n.get()) + UNLOCKED.with(|n| n.get()) > 0
}

/// Whether this thread holds a libdbus lock through a call-out: the bridge does not even
/// wait for another thread from here, since that thread may need the lock.
pub(crate) fn locked() -> bool {
    LOCKED.with(|n| n.get()) > 0
}

/// Marks a call-out for as long as it lives; unwinding cannot skip it.
pub(crate) struct Callout {
    locked: bool,
}

impl Callout {
    /// A call-out made with a libdbus lock held.
    pub(crate) fn locked() -> Callout {
        LOCKED.with(|n| n.set(n.get() + 1));
        Callout { locked: true }
    }

    /// A call-out made from inside a libdbus call that holds no lock.
    pub(crate) fn unlocked() -> Callout {
        UNLOCKED.with(|n| n.set(n.get() + 1));
        Callout { locked: false }
    }
}

impl Drop for Callout {
    fn drop(&mut self) {
        let counter = if self.locked { &LOCKED } else { &UNLOCKED };
        counter.with(|n| n.set(n.get() - 1));
    }
}

/// A panic caught in a trampoline: it may not unwind into libdbus (C frames), so it is kept
/// here and raised again by the next bridge call that returns to Rust code outside libdbus
/// (C14: a panic in user code reaches a caller).
#[derive(Default)]
pub(crate) struct PanicSlot {
    payload: Mutex<Option<Box<dyn Any + Send>>>,
    /// Whether `payload` may be set: `resume`, called on every bridge entry, reads only this
    /// unless a panic was kept.
    kept: AtomicBool,
}

impl PanicSlot {
    /// Runs `f` as a call-out with a libdbus lock held: marked, and with any panic kept
    /// instead of unwinding into C.
    pub(crate) fn locked<R>(&self, fallback: R, f: impl FnOnce() -> R) -> R {
        let _callout = Callout::locked();
        self.catch(fallback, f)
    }

    /// Runs `f` as a call-out from inside libdbus without its lock.
    pub(crate) fn unlocked<R>(&self, fallback: R, f: impl FnOnce() -> R) -> R {
        let _callout = Callout::unlocked();
        self.catch(fallback, f)
    }

    fn catch<R>(&self, fallback: R, f: impl FnOnce() -> R) -> R {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => value,
            Err(payload) => {
                let mut slot = self.payload.lock();
                if slot.is_none() {
                    *slot = Some(payload);
                }
                self.kept.store(true, Ordering::Release);
                fallback
            }
        }
    }

    /// Raises a kept panic, if any, on this thread (outside libdbus).
    pub(crate) fn resume(&self) {
        if !self.kept.load(Ordering::Acquire) || inside() {
            return;
        }
        self.kept.store(false, Ordering::Release);
        let payload = self.payload.lock().take();
        if let Some(payload) = payload {
            panic::resume_unwind(payload);
        }
    }
}

impl std::fmt::Debug for PanicSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PanicSlot")
            .field("pending", &self.payload.lock().is_some())
            .finish()
    }
}
