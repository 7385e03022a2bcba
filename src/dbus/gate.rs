//! `Gate`: one libdbus watch or timeout as the bridge mirrors it, and who is handling it.
//!
//! libdbus removes a connection's watches and timeouts with its connection lock held (a
//! disconnect found by a `send` on any thread, a reply that completes a pending call,
//! `dbus_connection_close`, uninstalling the functions), and the bridge's handlers enter
//! libdbus, which takes that lock. `ObjectList::remove` would wait for a handler running on
//! another thread — which waits for the lock the remover holds — so the bridge removes with
//! `ObjectList::remove_nowait` and makes its own guarantee that a late handler does no harm:
//!
//! * a handler enters the gate before it uses the libdbus object and leaves it after; the
//!   remove trampoline closes the gate first, so a handler that starts later touches nothing;
//! * a handler that entered before the close may still pass its pointer to libdbus. For a
//!   watch that is harmless because connection watch handlers pass no watch pointer at all
//!   (they call `dbus_connection_read_write`) — except on a connection promised to its
//!   loop's thread, whose handlers only read [`is_open`](Gate::is_open) under the rules of
//!   `Confinement`, and pass the pointer to `dbus_watch_handle`. For a timeout the pointer
//!   must stay valid:
//!   libdbus frees a pending call's `DBusTimeout` when the pending call is finalized, without
//!   its connection lock, and that free runs the bridge's data destructor, which waits here
//!   ([`wait_idle`](Gate::wait_idle)) for handlers still inside.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, ThreadId};

use parking_lot::{Condvar, Mutex};

/// The mirrored object and the handlers inside it.
pub(crate) struct Gate<O> {
    state: Mutex<State<O>>,
    idle: Condvar,
    /// Whether `state.object` is set, readable without the lock and sequentially consistent
    /// with other atomics (a confined connection's watch handlers rely on that, see
    /// `Confinement`).
    open: AtomicBool,
}

struct State<O> {
    /// The loopglue object, until it has been removed from its list.
    object: Option<O>,
    /// Threads whose handler is between `enter` and `leave` (a thread may appear twice if a
    /// handler is re-entered on it).
    inside: Vec<ThreadId>,
}

impl<O: Clone> Gate<O> {
    pub(crate) fn new() -> Gate<O> {
        Gate {
            state: Mutex::new(State {
                object: None,
                inside: Vec::new(),
            }),
            idle: Condvar::new(),
            open: AtomicBool::new(false),
        }
    }

    /// Opens the gate for the object it mirrors.
    pub(crate) fn open(&self, object: O) {
        self.state.lock().object = Some(object);
        self.open.store(true, Ordering::SeqCst);
    }

    /// Whether the gate is open: the object has not been removed. A handler that does not
    /// need `enter`'s bookkeeping (it runs where no removal can overtake it) asks this.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    /// The object, while the gate is open.
    pub(crate) fn object(&self) -> Option<O> {
        self.state.lock().object.clone()
    }

    /// A handler asks to use the libdbus object; false once the gate is closed.
    pub(crate) fn enter(&self) -> bool {
        let mut state = self.state.lock();
        if state.object.is_none() {
            return false;
        }
        state.inside.push(thread::current().id());
        true
    }

    /// A handler is done with the libdbus object.
    pub(crate) fn leave(&self) {
        let me = thread::current().id();
        let mut state = self.state.lock();
        if let Some(i) = state.inside.iter().position(|t| *t == me) {
            state.inside.swap_remove(i);
        }
        if state.inside.is_empty() {
            self.idle.notify_all();
        }
    }

    /// The remove trampoline closes the gate; returns the object to remove from its list.
    pub(crate) fn close(&self) -> Option<O> {
        let object = self.state.lock().object.take();
        self.open.store(false, Ordering::SeqCst);
        object
    }

    /// Waits until no handler on another thread is inside: libdbus is about to free the
    /// object's memory, and a handler past `enter` may still be about to pass its pointer to
    /// libdbus. Must not be called with a libdbus lock held (the handler may need it).
    pub(crate) fn wait_idle(&self) {
        let me = thread::current().id();
        let mut state = self.state.lock();
        while state.inside.iter().any(|t| *t != me) {
            self.idle.wait(&mut state);
        }
    }
}
