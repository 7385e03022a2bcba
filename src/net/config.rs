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
/// | [`idle_timeout`](Self::idle_timeout) | none; 120 s when a [`Server`](super::Server) accepted it | silence of the peer before disconnecting |
/// | [`frame_timeout`](Self::frame_timeout) | none; 30 s when a [`Server`](super::Server) accepted it | time to finish a frame once started |
/// | [`half_close`](Self::half_close) | [`HalfClose::Flush`] | what end of file from the peer does |
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
    /// `None`: not set — off, or the server's default for accepted connections.
    pub(crate) idle_timeout: Option<Option<Duration>>,
    pub(crate) frame_timeout: Option<Option<Duration>>,
    pub(crate) half_close: HalfClose,
}

/// What a [`Connection`](super::Connection) does when its peer ends its side of the stream
/// (end of file: the peer called `shutdown(SHUT_WR)`, or closed its socket).
///
/// End of file means "no more requests", not "stop writing": whatever the policy, every
/// complete message read before it is delivered, and then the read-closed event
/// ([`Connection::set_read_closed_handler`](super::Connection::set_read_closed_handler)).
/// The policies differ in when the connection closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HalfClose {
    /// The default: stop reading, deliver what was read, let the handlers' replies be sent,
    /// and close once the read-closed event is delivered and the outbound queue is empty —
    /// with [`DisconnectReason::PeerClosed`](super::DisconnectReason::PeerClosed) (or
    /// [`TruncatedFrame`](super::DisconnectReason::TruncatedFrame) if the stream ended
    /// inside a frame). Nothing read is lost, nor any reply sent before the close. A peer
    /// that half-closes and then never reads its replies holds the connection until the idle
    /// timeout (on by default for a [`Server`](super::Server)'s connections) or
    /// [`close`](super::Connection::close).
    #[default]
    Flush,
    /// libdbus's behaviour: close at once. The messages already read and the read-closed
    /// event are still delivered, but a reply sent from their handlers fails with
    /// [`SendError::Disconnected`](super::SendError::Disconnected).
    Close,
    /// Stop reading but stay open for writing until the application calls
    /// [`close`](super::Connection::close) (or a write fails): for peers that half-close
    /// and wait for replies computed later, or for pull-style use with
    /// [`pop_message`](super::Connection::pop_message).
    Keep,
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
            frame_timeout: None,
            half_close: HalfClose::Flush,
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
    /// after `timeout` in which the connection waited on its peer and no byte moved; `None`
    /// never does. Not set, it is off for connections you create and
    /// [`ServerConfig::DEFAULT_IDLE_TIMEOUT`] for those a [`Server`](super::Server) accepts.
    ///
    /// Only waiting on the peer counts: wanting to read (the read side open and not paused by
    /// back-pressure or the server's memory cap) or having output queued that the peer does
    /// not take. A connection paused by the application's own slowness is not idle.
    ///
    /// The connection checks with one periodic [`Timeout`](crate::Timeout) (see
    /// [`Connection::timeout`](super::Connection::timeout)) whose period is a quarter of the
    /// shorter of this and [`frame_timeout`](Self::frame_timeout); nothing is done per byte
    /// or per message. So the disconnect comes after at least `timeout` of silence and at
    /// most one period later.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> ConnectionConfig {
        self.idle_timeout = Some(timeout.into());
        self
    }

    /// Disconnect with [`DisconnectReason::FrameTimeout`](super::DisconnectReason::FrameTimeout)
    /// when a frame the peer started (a byte of its length prefix arrived) is still not
    /// complete after `timeout` — a peer that trickles bytes to hold a connection and its
    /// buffer ("slowloris") — while the connection was reading; `None` never does. Not set, it
    /// is off for connections you create and [`ServerConfig::DEFAULT_FRAME_TIMEOUT`] for those
    /// a [`Server`](super::Server) accepts. Checked by the same periodic timeout as
    /// [`idle_timeout`](Self::idle_timeout), with the same precision. A frame of
    /// [`max_frame_size`](Self::max_frame_size) must arrive at `max_frame_size / timeout`
    /// bytes per second: for 16 MiB in 30 s, about 0.6 MB/s.
    pub fn frame_timeout(mut self, timeout: impl Into<Option<Duration>>) -> ConnectionConfig {
        self.frame_timeout = Some(timeout.into());
        self
    }

    /// What end of file from the peer does; [`HalfClose::Flush`] (lose nothing, then close)
    /// by default.
    pub fn half_close(mut self, policy: HalfClose) -> ConnectionConfig {
        self.half_close = policy;
        self
    }

    /// The two timeouts with `idle` and `frame` filling in what was not set.
    pub(crate) fn with_timeout_defaults(
        mut self,
        idle: Option<Duration>,
        frame: Option<Duration>,
    ) -> ConnectionConfig {
        self.idle_timeout.get_or_insert(idle);
        self.frame_timeout.get_or_insert(frame);
        self
    }
}

/// Settings of a [`Server`](super::Server): the configuration its accepted connections get,
/// how it accepts, and the memory cap all its connections share.
///
/// | setting | default |
/// |---|---|
/// | [`connection`](Self::connection) | [`ConnectionConfig::default`], with [`DEFAULT_IDLE_TIMEOUT`](Self::DEFAULT_IDLE_TIMEOUT) and [`DEFAULT_FRAME_TIMEOUT`](Self::DEFAULT_FRAME_TIMEOUT) where not set |
/// | [`max_buffered_bytes`](Self::max_buffered_bytes) | [`DEFAULT_MAX_BUFFERED_BYTES`](Self::DEFAULT_MAX_BUFFERED_BYTES) (64 MiB) |
/// | [`accept_budget`](Self::accept_budget) | 16 |
/// | [`accept_retry`](Self::accept_retry) | 100 ms |
/// | [`unlink_on_close`](Self::unlink_on_close) | true |
///
/// # Examples
///
/// ```
/// use loopglue::net::{ConnectionConfig, ServerConfig};
///
/// let config = ServerConfig::new()
///     .connection(ConnectionConfig::new().max_frame_size(4096))
///     .accept_budget(8)
///     .max_buffered_bytes(16 << 20)
///     .unlink_on_close(false);
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub(crate) connection: ConnectionConfig,
    pub(crate) accept_budget: usize,
    pub(crate) accept_retry: Duration,
    pub(crate) unlink_on_close: bool,
    pub(crate) max_buffered_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            connection: ConnectionConfig::default(),
            accept_budget: 16,
            accept_retry: Duration::from_millis(100),
            unlink_on_close: true,
            max_buffered_bytes: ServerConfig::DEFAULT_MAX_BUFFERED_BYTES,
        }
    }
}

impl ServerConfig {
    /// The idle timeout of accepted connections whose configuration sets none: 120 s.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

    /// The frame timeout of accepted connections whose configuration sets none: 30 s.
    pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);

    /// The default cap on the bytes all of a server's connections buffer: 64 MiB, four
    /// frames of the default maximum size.
    pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 << 20;

    /// The defaults (see the table above).
    pub fn new() -> ServerConfig {
        ServerConfig::default()
    }

    /// The configuration of every accepted [`Connection`](super::Connection). Timeouts it
    /// does not set get the server's defaults ([`DEFAULT_IDLE_TIMEOUT`](Self::DEFAULT_IDLE_TIMEOUT),
    /// [`DEFAULT_FRAME_TIMEOUT`](Self::DEFAULT_FRAME_TIMEOUT)); set them to `None` to turn
    /// them off.
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

    /// The most bytes all of this server's connections together may buffer: received
    /// messages not yet dispatched, partly received frames (counted at their full length from
    /// the moment their length prefix arrives) and output queued for slow peers.
    ///
    /// Reaching it pauses reading, never drops anything: a connection that needs room for its
    /// next frame turns its read watch off and waits, first come first served, until
    /// dispatching and writing free enough; frames already started always finish. Output is
    /// never refused for the cap (each connection's
    /// [`max_outbound_bytes`](ConnectionConfig::max_outbound_bytes) bounds it), but counts
    /// against it, so a server whose replies pile up stops reading new requests. A frame
    /// longer than the cap can never fit, so the accepted connections refuse frames over
    /// `min(max_frame_size, max_buffered_bytes)` with
    /// [`DisconnectReason::FrameTooLarge`](super::DisconnectReason::FrameTooLarge). Reads
    /// are cheapest while the room left exceeds one maximum frame plus 64 KiB: nearer the cap
    /// a connection reads up to each frame's prefix first. [`Server::stats`](super::Server::stats)
    /// reports the bytes reserved, their peak, and the pauses.
    pub fn max_buffered_bytes(mut self, bytes: usize) -> ServerConfig {
        self.max_buffered_bytes = bytes.max(1);
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
