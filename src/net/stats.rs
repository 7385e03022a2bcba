//! Counters of what a connection did, for reports and benchmarks.

/// A snapshot of a [`Connection`](super::Connection)'s counters, from
/// [`Connection::stats`](super::Connection::stats).
///
/// The counters live under the connection's lock and are updated in the critical sections
/// that do the counted work, so they cost nothing extra per message.
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
    /// Times the read watch was disabled because the inbound queue was full (or the server's
    /// memory cap was reached: see [`budget_waits`](Self::budget_waits)).
    pub read_watch_disabled: u64,
    /// Times the wakeup function was called (output queued from a thread other than the
    /// loop's, or a close from another thread).
    pub wakeups: u64,
    /// Received frames that [`dispatch`](super::Connection::dispatch) discarded because no
    /// message handler was set.
    pub messages_unhandled: u64,
    /// Queued frames that never went out completely because the connection closed.
    pub messages_unsent: u64,
    /// Messages delivered to the message handler straight from the read watch's handler,
    /// because nothing was queued before them (the rest went through
    /// [`dispatch`](super::Connection::dispatch)).
    pub direct_deliveries: u64,
    /// Times the connection stopped reading to wait for room under its server's memory cap
    /// ([`ServerConfig::max_buffered_bytes`](super::ServerConfig::max_buffered_bytes)).
    pub budget_waits: u64,
}
