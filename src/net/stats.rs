//! Counters of what a connection did, for reports and benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a [`Connection`](super::Connection)'s counters, from
/// [`Connection::stats`](super::Connection::stats).
///
/// The counters are updated with relaxed atomics: exact once the connection is quiet,
/// approximate while other threads use it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Frames received complete.
    pub messages_received: u64,
    /// Frames written complete.
    pub messages_sent: u64,
    /// Bytes read from the socket, length prefixes included.
    pub bytes_received: u64,
    /// Bytes written to the socket, length prefixes included.
    pub bytes_sent: u64,
    /// Frames that [`send`](super::Connection::send) wrote completely at once, without
    /// queueing or the write watch.
    pub direct_writes: u64,
    /// Times the write watch was enabled because output had to wait for the socket.
    pub write_watch_enabled: u64,
    /// Times the read watch was disabled because the inbound queue was full.
    pub read_watch_disabled: u64,
    /// Times the wakeup function was called (output queued from a thread other than the
    /// loop's, or a close from another thread).
    pub wakeups: u64,
    /// Received frames that [`dispatch`](super::Connection::dispatch) discarded because no
    /// message handler was set.
    pub messages_unhandled: u64,
    /// Queued frames that never went out completely because the connection closed.
    pub messages_unsent: u64,
}

/// The live counters behind [`ConnectionStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) direct_writes: AtomicU64,
    pub(crate) write_watch_enabled: AtomicU64,
    pub(crate) read_watch_disabled: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    pub(crate) messages_unhandled: AtomicU64,
    pub(crate) messages_unsent: AtomicU64,
}

/// Adds `n` to a counter.
pub(crate) fn bump(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ConnectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            messages_received: get(&self.messages_received),
            messages_sent: get(&self.messages_sent),
            bytes_received: get(&self.bytes_received),
            bytes_sent: get(&self.bytes_sent),
            direct_writes: get(&self.direct_writes),
            write_watch_enabled: get(&self.write_watch_enabled),
            read_watch_disabled: get(&self.read_watch_disabled),
            wakeups: get(&self.wakeups),
            messages_unhandled: get(&self.messages_unhandled),
            messages_unsent: get(&self.messages_unsent),
        }
    }
}
