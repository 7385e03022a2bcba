//! `Confinement`: a connection its user promised to keep on its loop's thread, and the check
//! that turns a broken promise into an abort instead of a read of freed memory.
//!
//! A confined connection's watch handlers call `dbus_watch_handle` with the `DBusWatch`
//! pointer, which libdbus reads before it takes its connection lock. libdbus frees a
//! connection's watches when the transport disconnects, under that lock, right after calling
//! the bridge's remove trampoline (which closes the watch's gate) and the watch data's free
//! function. So a handler on one thread and a disconnect on another can meet in one way only:
//! the handler checked the gate while it was open, and the free runs before the handler has
//! taken the lock. The user's promise rules that out; this type makes sure that if the
//! promise is broken anyway, the process stops before the handler can read the freed watch.
//!
//! The check is a Dekker pair, all four operations sequentially consistent:
//!
//! * a handler counts itself in ([`enter`](Confinement::enter)), *then* reads the gate;
//! * the remove trampoline closes the gate, *then* libdbus frees the watch, and the free
//!   function reads the count ([`watch_freed`](Confinement::watch_freed)).
//!
//! In the single order of those operations, either the handler's count comes first — then the
//! free sees it and aborts before `dbus_free` runs — or the gate's close does, and the handler
//! finds the gate closed and never passes the pointer. A handler counted in when the free
//! looks may also be one that has not read the gate yet, or one that has left libdbus and not
//! yet counted itself out: those two would have been harmless, and abort too. Only a broken
//! promise can get there.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

thread_local! {
    /// The confinement (by address) whose watch handler this thread is inside, or 0.
    static INSIDE: Cell<usize> = const { Cell::new(0) };
}

/// The promise and the count of watch handlers inside `dbus_watch_handle`.
#[derive(Debug, Default)]
pub(crate) struct Confinement {
    promised: AtomicBool,
    /// Handlers between `enter` and the end of their `dbus_watch_handle`, on any thread.
    inside: AtomicUsize,
}

/// A handler inside: counted until dropped.
pub(crate) struct Window<'a> {
    confinement: &'a Confinement,
    outer: usize,
}

impl Confinement {
    /// Records the user's promise; there is no way back.
    pub(crate) fn promise(&self) {
        self.promised.store(true, Ordering::Release);
    }

    /// Whether the user promised.
    pub(crate) fn is_promised(&self) -> bool {
        self.promised.load(Ordering::Acquire)
    }

    fn key(&self) -> usize {
        self as *const Confinement as usize
    }

    /// A watch handler is about to read its gate and call `dbus_watch_handle`; `None` if the
    /// connection is not confined (the handler takes the general path).
    ///
    /// Windows do not nest on one thread: everything `dbus_watch_handle` calls back into runs
    /// inside a libdbus call-out, where the bridge defers its handlers instead of running them.
    pub(crate) fn enter(&self) -> Option<Window<'_>> {
        if !self.is_promised() {
            return None;
        }
        self.inside.fetch_add(1, Ordering::SeqCst);
        let outer = INSIDE.with(|inside| inside.replace(self.key()));
        Some(Window {
            confinement: self,
            outer,
        })
    }

    /// libdbus is freeing one of the connection's watches (its gate already closed, the
    /// connection lock held by this thread). A handler inside on another thread means the
    /// promise was broken and that handler may be about to read the freed watch: abort.
    pub(crate) fn watch_freed(&self) {
        let here = INSIDE.with(Cell::get) == self.key();
        let others = self.inside.load(Ordering::SeqCst) - usize::from(here);
        if others > 0 {
            eprintln!(
                "loopglue: fatal: a libdbus connection promised to its loop's thread \
                 (dbus::Connection::assume_loop_thread_only) was disconnected on another \
                 thread while a watch handler was running; aborting before the handler can \
                 read the freed DBusWatch"
            );
            std::process::abort();
        }
    }
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        INSIDE.with(|inside| inside.set(self.outer));
        self.confinement.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_promised_connection_opens_windows() {
        let confinement = Confinement::default();
        assert!(confinement.enter().is_none());
        confinement.promise();
        let window = confinement.enter().expect("promised");
        // A free on the handler's own thread (a disconnect found inside `dbus_watch_handle`)
        // is libdbus's business and harmless.
        confinement.watch_freed();
        drop(window);
        assert_eq!(confinement.inside.load(Ordering::SeqCst), 0);
        assert_eq!(INSIDE.with(Cell::get), 0);
    }
}
