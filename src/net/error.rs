//! Why a connection ended, and why a frame was not sent.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Why a [`Connection`](super::Connection) was disconnected — delivered exactly once, to the
/// handler set with [`Connection::set_disconnect_handler`](super::Connection::set_disconnect_handler),
/// by [`dispatch`](super::Connection::dispatch) after every message received before it.
#[derive(Debug)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed the stream between two frames: end of file (after which, by default,
    /// the replies to what was read are still sent — see [`HalfClose`](super::HalfClose)), a
    /// hang-up, or a peer that went away with data unread, which the socket reports as
    /// `ECONNRESET` on a read or `EPIPE` on a write.
    PeerClosed,
    /// The socket reported an error other than the peer going away.
    Io(io::Error),
    /// The peer announced a frame longer than the configured maximum; nothing of its size was
    /// allocated, and the stream, now out of step, was closed.
    FrameTooLarge {
        /// The payload length the peer announced.
        len: usize,
        /// The configured maximum ([`ConnectionConfig::max_frame_size`](super::ConnectionConfig::max_frame_size)).
        max: usize,
    },
    /// The stream ended inside a frame. Both counts are bytes on the wire, the 4-byte length
    /// prefix included.
    TruncatedFrame {
        /// How much of the frame arrived.
        have: usize,
        /// How long the frame was: its prefix plus the length it announced, or just the
        /// prefix's 4 bytes if the stream ended inside the prefix.
        need: usize,
    },
    /// Nothing was read or written for the configured idle time
    /// ([`ConnectionConfig::idle_timeout`](super::ConnectionConfig::idle_timeout)).
    IdleTimeout,
    /// A frame the peer started was not complete within the configured time
    /// ([`ConnectionConfig::frame_timeout`](super::ConnectionConfig::frame_timeout)): a peer
    /// trickling bytes to hold the connection open.
    FrameTimeout,
    /// The application called [`Connection::close`](super::Connection::close).
    Closed,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PeerClosed => f.write_str("the peer closed the connection"),
            DisconnectReason::Io(e) => write!(f, "socket error: {e}"),
            DisconnectReason::FrameTooLarge { len, max } => {
                write!(
                    f,
                    "the peer announced a {len}-byte frame; the maximum is {max}"
                )
            }
            DisconnectReason::TruncatedFrame { have, need } => write!(
                f,
                "the stream ended inside a frame: {have} of {need} bytes arrived"
            ),
            DisconnectReason::IdleTimeout => f.write_str("the connection was idle too long"),
            DisconnectReason::FrameTimeout => {
                f.write_str("the peer took too long to finish sending a frame")
            }
            DisconnectReason::Closed => f.write_str("the connection was closed locally"),
        }
    }
}

impl DisconnectReason {
    /// The reason for a socket error: the peer going away (`EPIPE`, `ECONNRESET`,
    /// `ECONNABORTED`) is [`PeerClosed`](Self::PeerClosed), anything else [`Io`](Self::Io).
    pub(crate) fn from_io(error: io::Error) -> DisconnectReason {
        match error.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => DisconnectReason::PeerClosed,
            _ => DisconnectReason::Io(error),
        }
    }
}

impl StdError for DisconnectReason {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            DisconnectReason::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Connection::send`](super::Connection::send) refused a payload. When `send` returns
/// an error the payload is not queued: apart from a socket failure in the middle of writing
/// it ([`Disconnected`](Self::Disconnected)), none of it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is closed (or failed while writing this payload; the disconnect event
    /// tells why).
    Disconnected,
    /// The payload is longer than the configured maximum frame size.
    FrameTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured maximum ([`ConnectionConfig::max_frame_size`](super::ConnectionConfig::max_frame_size)).
        max: usize,
    },
    /// The outbound queue cannot take the frame: the peer is not reading fast enough. Every
    /// frame accepted before this one stays queued and will be written in order; retry once
    /// [`Connection::queued_outbound_bytes`](super::Connection::queued_outbound_bytes)
    /// has gone down.
    QueueFull {
        /// Bytes queued (length prefixes included) when the frame was refused.
        queued: usize,
        /// The configured cap ([`ConnectionConfig::max_outbound_bytes`](super::ConnectionConfig::max_outbound_bytes)).
        cap: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Disconnected => f.write_str("the connection is closed"),
            SendError::FrameTooLarge { len, max } => {
                write!(
                    f,
                    "a {len}-byte payload exceeds the {max}-byte frame maximum"
                )
            }
            SendError::QueueFull { queued, cap } => write!(
                f,
                "the outbound queue is full: {queued} bytes queued, cap {cap}"
            ),
        }
    }
}

impl StdError for SendError {}

impl From<SendError> for io::Error {
    fn from(error: SendError) -> io::Error {
        let kind = match error {
            SendError::Disconnected => io::ErrorKind::NotConnected,
            SendError::FrameTooLarge { .. } => io::ErrorKind::InvalidInput,
            SendError::QueueFull { .. } => io::ErrorKind::WouldBlock,
        };
        io::Error::new(kind, error)
    }
}
