//! `Watch`: a file descriptor a producer wants monitored.

use std::any::Any;
use std::fmt;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::delivery::Delivery;
use crate::flags::WatchFlags;
use crate::object::{identity_eq, ObjectCore, Phase};

type WatchHandler = Box<dyn Fn(WatchFlags) + Send + Sync>;

/// A file descriptor, the conditions a producer wants to hear about, and whether it wants to
/// hear right now — libdbus's `DBusWatch`.
///
/// A producer (a connection, a server) creates watches with a handler and registers them in
/// its [`WatchList`](crate::WatchList); glue reads [`fd`](Self::fd), [`flags`](Self::flags)
/// and [`is_enabled`](Self::is_enabled), polls the fd, and calls [`handle`](Self::handle)
/// when it is ready. A `Watch` is a cheap handle: clones share one object (C2), compare equal
/// and hash alike, and may be sent to and used from any thread. Equality and hashing go by
/// identity, which never changes, so a `Watch` is a sound map key (clippy's
/// `mutable_key_type` cannot see that; key by [`id`](Self::id) to keep it quiet).
///
/// The handler is an `Fn` and runs with no lock held, so it may call any loopglue API —
/// including removing this very watch — and may even run on two threads at once if two glue
/// threads report the same watch; a producer serialises its own I/O. A handler should hold
/// its producer by `Weak`: the watch owns the handler, and the producer owns the watch.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use loopglue::{Watch, WatchFlags};
///
/// let reads = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&reads);
/// let watch = Watch::new(3, WatchFlags::READABLE, move |condition| {
///     assert!(condition.contains(WatchFlags::READABLE));
///     counter.fetch_add(1, Ordering::Relaxed);
/// });
/// assert_eq!(watch.fd(), Some(3));
/// assert!(watch.handle(WatchFlags::READABLE).is_delivered());
/// assert_eq!(reads.load(Ordering::Relaxed), 1);
/// ```
#[doc(alias = "DBusWatch")]
#[derive(Clone)]
pub struct Watch {
    inner: Arc<WatchInner>,
}

struct WatchInner {
    core: ObjectCore,
    fd: RawFd,
    flags: WatchFlags,
    handler: WatchHandler,
}

impl Watch {
    /// Creates an enabled watch on `fd` for `flags` (only [`WatchFlags::INTEREST`] bits are
    /// kept: C1), whose `handler` receives the conditions glue reports.
    ///
    /// The watch does not own `fd`: the producer keeps it open until the watch has been
    /// removed from its list (C15).
    pub fn new(
        fd: RawFd,
        flags: WatchFlags,
        handler: impl Fn(WatchFlags) + Send + Sync + 'static,
    ) -> Watch {
        Watch::with_state(fd, flags, true, Box::new(handler))
    }

    /// Like [`new`](Self::new), but created disabled — how libdbus creates a socket's read and
    /// write watches before there is anything to read or write.
    pub fn new_disabled(
        fd: RawFd,
        flags: WatchFlags,
        handler: impl Fn(WatchFlags) + Send + Sync + 'static,
    ) -> Watch {
        Watch::with_state(fd, flags, false, Box::new(handler))
    }

    fn with_state(fd: RawFd, flags: WatchFlags, enabled: bool, handler: WatchHandler) -> Watch {
        Watch {
            inner: Arc::new(WatchInner {
                core: ObjectCore::new(enabled),
                fd,
                flags: flags & WatchFlags::INTEREST,
                handler,
            }),
        }
    }

    /// The file descriptor to poll, or `None` once the watch has been removed (C4).
    ///
    /// Inside the glue's `remove` call the fd is still answered, and still open (C15), so
    /// that glue can unregister it.
    #[doc(alias = "dbus_watch_get_unix_fd")]
    #[doc(alias = "dbus_watch_get_socket")]
    #[doc(alias = "dbus_watch_get_fd")]
    pub fn fd(&self) -> Option<RawFd> {
        match self.core().phase() {
            Phase::Invalid => None,
            _ => Some(self.inner.fd),
        }
    }

    /// What the watch asks for: [`READABLE`](WatchFlags::READABLE) and/or
    /// [`WRITABLE`](WatchFlags::WRITABLE), fixed at creation; empty once removed (C1, C4).
    /// Glue polls for these plus [`WatchFlags::ALWAYS`].
    #[doc(alias = "dbus_watch_get_flags")]
    pub fn flags(&self) -> WatchFlags {
        match self.core().phase() {
            Phase::Invalid => WatchFlags::empty(),
            _ => self.inner.flags,
        }
    }

    /// Whether glue should poll this watch now. Inside the glue's `toggled` call it already
    /// tells the new state (C9).
    #[doc(alias = "dbus_watch_get_enabled")]
    pub fn is_enabled(&self) -> bool {
        self.core().is_enabled()
    }

    /// Whether the producer has removed this watch from its list: glue should forget it.
    pub fn is_removed(&self) -> bool {
        matches!(self.core().phase(), Phase::Detaching | Phase::Invalid)
    }

    /// A number that identifies this watch for the life of the process (logs, maps).
    pub fn id(&self) -> u64 {
        self.core().id()
    }

    /// Reports that the fd is ready; glue calls this from its loop (C3).
    ///
    /// READABLE/WRITABLE bits the watch did not ask for are dropped, ERROR and HANGUP are
    /// kept, and the handler runs only if something is left. The handler runs with no lock
    /// held and may add, toggle or remove any watch, this one included.
    ///
    /// Unlike libdbus, which aborts on a removed watch and delivers to a disabled one, this
    /// returns [`Delivery::Removed`] or [`Delivery::Disabled`] and runs nothing, so a report
    /// that raced with a remove or a toggle on another thread is harmless. A handler that has
    /// started finishes before [`WatchList::remove`](crate::WatchList::remove) returns on
    /// another thread, so the producer may close the fd once `remove` returns (C4, C15).
    ///
    /// # Panics
    ///
    /// Only if the producer's handler panics; the panic passes through unchanged.
    #[doc(alias = "dbus_watch_handle")]
    pub fn handle(&self, condition: WatchFlags) -> Delivery {
        let core = self.core();
        if core.phase() >= Phase::Detaching {
            return Delivery::Removed;
        }
        let condition = condition & (self.inner.flags | WatchFlags::ALWAYS);
        if condition.is_empty() {
            return Delivery::NotRequested;
        }
        if !core.is_enabled() {
            return Delivery::Disabled;
        }
        // Counted while it runs, so that `remove` on another thread waits for it (C4, C15).
        let Some(_running) = core.enter_handler() else {
            return Delivery::Removed;
        };
        (self.inner.handler)(condition);
        Delivery::Delivered
    }

    /// Stores glue data on this watch for the function set that is calling (C5), dropping the
    /// value it replaces — with no lock held.
    ///
    /// Inside a set's callback the value belongs to that set; elsewhere it belongs to the set
    /// that currently has the watch. A set's value is dropped after that set's `remove` for
    /// the watch returns, so a new set never sees (or frees) an old set's value — the
    /// dbus-glib context-switch bug, fd.o #30574.
    #[doc(alias = "dbus_watch_set_data")]
    pub fn set_data<T: Any + Send + Sync>(&self, value: T) {
        self.core().set_data(value);
    }

    /// The calling set's data, if it stored a `T` (C5).
    #[doc(alias = "dbus_watch_get_data")]
    pub fn data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.core().data_of()
    }

    /// Takes the calling set's data out of the watch, if it is a `T` (C5).
    pub fn take_data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.core().take_typed()
    }

    pub(crate) fn core(&self) -> &ObjectCore {
        &self.inner.core
    }
}

identity_eq!(Watch);

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Watch");
        out.field("fd", &self.inner.fd)
            .field("flags", &self.inner.flags);
        self.core().fmt_fields(&mut out);
        out.finish()
    }
}
