//! The limits and budgets of connections and servers.

use std::time::Duration;

use super::frame::MAX_PAYLOAD;

/// Limits and budgets of a [`Connection`](super::Connection), built by chaining setters on
/// the defaults.
///
/// | setting | default | what it bounds |
/// |---|---|---|
/// | [`max_frame_size`](Self::max_frame_size) | 16 MiB | one payload, in and out |
/// | [`max_inbound_frames`](Self::max_inbound_frames) | 1024 | received, undispatched frames |
/// | [`max_inbound_bytes`](Self::max_inbound_bytes) | 64 MiB | their payload bytes |
/// | [`max_outbound_bytes`](Self::max_outbound_bytes) | 64 MiB | bytes queued for the peer |
/// | [`read_budget`](Self::read_budget) | 64 KiB | bytes read per readiness report |
/// | [`write_budget`](Self::write_budget) | 256 KiB | bytes written per readiness report |
/// | [`dispatch_batch`](Self::dispatch_batch) | 64 | messages per `dispatch` call |
/// | [`idle_timeout`](Self::idle_timeout) | none | silence before disconnecting |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use loopglue::net::ConnectionConfig;
///
/// let config = ConnectionConfig::new()
///     .max_frame_size(1 << 20)
///     .max_inbound_frames(64)
///     .idle_timeout(Duration::from_secs(30));
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    pub(crate) max_frame_size: usize,
    pub(crate) max_inbound_frames: usize,
    pub(crate) max_inbound_bytes: usize,
    pub(crate) max_outbound_bytes: usize,
    pub(crate) read_budget: usize,
    pub(crate) write_budget: usize,
    pub(crate) dispatch_batch: usize,
    pub(crate) idle_timeout: Option<Duration>,
}

impl Default for ConnectionConfig {
    fn default() -> ConnectionConfig {
        ConnectionConfig {
            max_frame_size: 16 << 20,
            max_inbound_frames: 1024,
            max_inbound_bytes: 64 << 20,
            max_outbound_bytes: 64 << 20,
            read_budget: 64 << 10,
            write_budget: 256 << 10,
            dispatch_batch: 64,
            idle_timeout: None,
        }
    }
}

impl ConnectionConfig {
    /// The defaults (see the table above).
    pub fn new() -> ConnectionConfig {
        ConnectionConfig::default()
    }

    /// The longest payload accepted from the peer and by [`send`](super::Connection::send).
    /// A peer announcing more is disconnected with
    /// [`DisconnectReason::FrameTooLarge`](super::DisconnectReason::FrameTooLarge). Values
    /// beyond what the 32-bit length prefix can describe are lowered to `u32::MAX`.
    #[doc(alias = "dbus_connection_set_max_message_size")]
    pub fn max_frame_size(mut self, bytes: usize) -> ConnectionConfig {
        self.max_frame_size = bytes.min(MAX_PAYLOAD);
        self
    }

    /// How many received frames may wait for [`dispatch`](super::Connection::dispatch): once
    /// the inbound queue holds this many, the connection stops reading and disables its read
    /// watch until dispatching takes the queue below the limit again. One read can complete
    /// several frames, so the queue may overshoot by the frames of one read (at most the
    /// [`read_budget`](Self::read_budget) in bytes). At least 1.
    #[doc(alias = "dbus_connection_set_max_received_size")]
    pub fn max_inbound_frames(mut self, frames: usize) -> ConnectionConfig {
        self.max_inbound_frames = frames.max(1);
        self
    }

    /// Like [`max_inbound_frames`](Self::max_inbound_frames), counted in payload bytes. At
    /// least 1.
    pub fn max_inbound_bytes(mut self, bytes: usize) -> ConnectionConfig {
        self.max_inbound_bytes = bytes.max(1);
        self
    }

    /// The most bytes (length prefixes included) that may wait for a slow peer. A
    /// [`send`](super::Connection::send) that would go beyond it fails with
    /// [`SendError::QueueFull`](super::SendError::QueueFull) and queues nothing. An empty
    /// queue always takes one frame, so a frame longer than the cap can still be sent.
    pub fn max_outbound_bytes(mut self, bytes: usize) -> ConnectionConfig {
        self.max_outbound_bytes = bytes;
        self
    }

    /// The most bytes read per readiness report, so that one busy connection cannot starve
    /// the others on its loop. What is left stays readable, and level-triggered glue reports
    /// it again (C17). At least 1.
    pub fn read_budget(mut self, bytes: usize) -> ConnectionConfig {
        self.read_budget = bytes.max(1);
        self
    }

    /// The most bytes written per readiness report (the write watch stays enabled while more
    /// is queued). At least 1.
    pub fn write_budget(mut self, bytes: usize) -> ConnectionConfig {
        self.write_budget = bytes.max(1);
        self
    }

    /// The most messages one [`dispatch`](super::Connection::dispatch) call delivers; glue
    /// calls again while the status says data remains. At least 1.
    pub fn dispatch_batch(mut self, messages: usize) -> ConnectionConfig {
        self.dispatch_batch = messages.max(1);
        self
    }

    /// Disconnect with [`DisconnectReason::IdleTimeout`](super::DisconnectReason::IdleTimeout)
    /// after `timeout` without a byte read or written; `None` (the default) never does. The
    /// connection keeps one [`Timeout`](crate::Timeout) of this interval in its timeout list
    /// and restarts it (disable, enable: C9) on every read or write that moved bytes.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> ConnectionConfig {
        self.idle_timeout = timeout.into();
        self
    }
}

/// Settings of a [`Server`](super::Server): the configuration its accepted connections get,
/// and how it accepts.
///
/// # Examples
///
/// ```
/// use loopglue::net::{ConnectionConfig, ServerConfig};
///
/// let config = ServerConfig::new()
///     .connection(ConnectionConfig::new().max_frame_size(4096))
///     .accept_budget(8)
///     .unlink_on_close(false);
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) connection: ConnectionConfig,
    pub(crate) accept_budget: usize,
    pub(crate) accept_retry: Duration,
    pub(crate) unlink_on_close: bool,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            connection: ConnectionConfig::default(),
            accept_budget: 16,
            accept_retry: Duration::from_millis(100),
            unlink_on_close: true,
        }
    }
}

impl ServerConfig {
    /// The defaults: default connections, 16 accepts per readiness report, a 100 ms pause
    /// after a failed accept, and the socket path unlinked on close.
    pub fn new() -> ServerConfig {
        ServerConfig::default()
    }

    /// The configuration of every accepted [`Connection`](super::Connection).
    pub fn connection(mut self, config: ConnectionConfig) -> ServerConfig {
        self.connection = config;
        self
    }

    /// The most connections accepted per readiness report; more pending clients are accepted
    /// on the next report (C17). At least 1.
    pub fn accept_budget(mut self, connections: usize) -> ServerConfig {
        self.accept_budget = connections.max(1);
        self
    }

    /// How long the server stops accepting after `accept` fails with something other than
    /// "would block" (say `EMFILE`): the pending client stays readable, and polling it again
    /// at once would spin. The server disables its watch and enables a [`Timeout`](crate::Timeout)
    /// of this interval that turns it back on.
    pub fn accept_retry(mut self, pause: Duration) -> ServerConfig {
        self.accept_retry = pause;
        self
    }

    /// Whether closing the server ([`Server::disconnect`](super::Server::disconnect) or dropping
    /// the last handle) removes the socket file it listened on — only if the path still names
    /// that same socket. On by default.
    pub fn unlink_on_close(mut self, unlink: bool) -> ServerConfig {
        self.unlink_on_close = unlink;
        self
    }
}
