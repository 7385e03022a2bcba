//! The outbound queue: framed payloads waiting for the socket to take them.

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixStream;

use self::nosignal::{send_bytes, send_two};
use super::frame::{header, HEADER_LEN};

/// Consecutive small frames are copied into a buffer of this size and written with one call;
/// a payload with at least this much left is written straight from the frame.
const GATHER: usize = 16 * 1024;

thread_local! {
    /// The gather buffer of the connections this thread writes for; see `write_to`.
    static GATHER_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; GATHER]);
}

/// Frames not yet (fully) written, oldest first, with the count of bytes they still need.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    frames: VecDeque<Outgoing>,
    queued: usize,
}

#[derive(Debug)]
struct Outgoing {
    prefix: [u8; HEADER_LEN],
    payload: Vec<u8>,
    /// Bytes of this frame (prefix included) already written.
    sent: usize,
}

impl Outgoing {
    fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// The unwritten parts of this frame, as up to two slices.
    fn unsent(&self) -> [&[u8]; 2] {
        if self.sent < HEADER_LEN {
            [&self.prefix[self.sent..], &self.payload]
        } else {
            [&self.payload[self.sent - HEADER_LEN..], &[]]
        }
    }
}

/// What one write pass moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Written {
    pub(crate) bytes: usize,
    pub(crate) frames: usize,
}

impl Outbox {
    /// Queues one payload behind its length prefix (`payload.len()` must fit the prefix).
    pub(crate) fn push(&mut self, payload: Vec<u8>) {
        let frame = Outgoing {
            prefix: header(payload.len()),
            payload,
            sent: 0,
        };
        self.queued += frame.wire_len();
        self.frames.push_back(frame);
    }

    /// Queues the rest of a payload of which `sent` wire bytes (prefix included) went out
    /// already, written directly by [`send_frame`].
    pub(crate) fn push_rest(&mut self, payload: Vec<u8>, sent: usize) {
        let frame = Outgoing {
            prefix: header(payload.len()),
            payload,
            sent,
        };
        self.queued += frame.wire_len() - sent;
        self.frames.push_back(frame);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes still to be written, prefixes included.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Empties the queue, returning how many frames never went out completely.
    pub(crate) fn discard(&mut self) -> usize {
        let frames = self.frames.len();
        self.frames = VecDeque::new();
        self.queued = 0;
        frames
    }

    /// Writes queued bytes, oldest first, until the socket would block, the queue is empty,
    /// or about `budget` bytes went out.
    ///
    /// # Errors
    ///
    /// The socket's error; what was written before it is accounted for in the queue.
    pub(crate) fn write_to(&mut self, stream: &UnixStream, budget: usize) -> io::Result<Written> {
        let mut written = Written::default();
        // A buffer per thread, zeroed once (a fresh 16 KiB per write cost more than the send).
        let mut gather = GATHER_BUFFER
            .with(|b| b.try_borrow_mut().ok().map(|mut b| std::mem::take(&mut *b)))
            .filter(|b| b.len() == GATHER)
            .unwrap_or_else(|| vec![0; GATHER]);
        let outcome = self.write_through(stream, budget, &mut gather, &mut written);
        GATHER_BUFFER.with(|b| {
            if let Ok(mut slot) = b.try_borrow_mut() {
                *slot = gather;
            }
        });
        outcome.map(|()| written)
    }

    fn write_through(
        &mut self,
        stream: &UnixStream,
        budget: usize,
        gather: &mut [u8],
        written: &mut Written,
    ) -> io::Result<()> {
        while written.bytes < budget {
            let Some(front) = self.frames.front() else {
                break;
            };
            // The unsent part of the oldest frame: its prefix, or the rest of its payload.
            let head = front.unsent()[0];
            let outcome = if head.len() >= GATHER {
                send_bytes(stream, head)
            } else {
                let mut filled = 0;
                'frames: for frame in &self.frames {
                    for part in frame.unsent() {
                        let take = part.len().min(GATHER - filled);
                        gather[filled..filled + take].copy_from_slice(&part[..take]);
                        filled += take;
                        if filled == GATHER {
                            break 'frames;
                        }
                    }
                }
                send_bytes(stream, &gather[..filled])
            };
            let n = match outcome {
                Ok(0) => break, // the socket took nothing of a non-empty write: never spin
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            written.bytes += n;
            written.frames += self.advance(n);
        }
        Ok(())
    }

    /// Marks `n` more bytes written; returns how many frames that completed.
    fn advance(&mut self, mut n: usize) -> usize {
        self.queued -= n;
        let mut completed = 0;
        while let Some(frame) = self.frames.front_mut() {
            let left = frame.wire_len() - frame.sent;
            if n < left {
                frame.sent += n;
                break;
            }
            n -= left;
            self.frames.pop_front();
            completed += 1;
        }
        completed
    }
}

/// Payloads up to this size are copied behind their prefix on the stack and written with one
/// `send`; longer ones go out as two slices with one `sendmsg`.
const SMALL_FRAME: usize = 128;

/// Writes one frame straight to the socket, as far as it takes it, with one system call;
/// returns the wire bytes written (`WouldBlock` counts as 0). `payload.len()` must fit the
/// prefix.
///
/// # Errors
///
/// The socket's error.
pub(crate) fn send_frame(stream: &UnixStream, payload: &[u8]) -> io::Result<usize> {
    let prefix = header(payload.len());
    loop {
        let outcome = if payload.len() <= SMALL_FRAME {
            let mut wire = [0u8; HEADER_LEN + SMALL_FRAME];
            wire[..HEADER_LEN].copy_from_slice(&prefix);
            wire[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
            send_bytes(stream, &wire[..HEADER_LEN + payload.len()])
        } else {
            send_two(stream, &prefix, payload)
        };
        match outcome {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// System calls that write without raising `SIGPIPE` on a closed peer (`MSG_NOSIGNAL`),
/// where the platform has the flag.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "fuchsia",
    target_os = "haiku"
))]
mod nosignal {
    use std::io::{self, IoSlice};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use nix::sys::socket::{send, sendmsg, MsgFlags, UnixAddr};

    /// Writes `bytes`.
    pub(super) fn send_bytes(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
        send(stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
    }

    /// Writes two slices with one call.
    pub(super) fn send_two(stream: &UnixStream, first: &[u8], second: &[u8]) -> io::Result<usize> {
        let slices = [IoSlice::new(first), IoSlice::new(second)];
        sendmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &slices,
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)
    }
}

/// Elsewhere plain writes: Rust programs ignore `SIGPIPE` unless told otherwise.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "fuchsia",
    target_os = "haiku"
)))]
mod nosignal {
    use std::io::{self, IoSlice, Write};
    use std::os::unix::net::UnixStream;

    /// Writes `bytes`.
    pub(super) fn send_bytes(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
        (&*stream).write(bytes)
    }

    /// Writes two slices with one call.
    pub(super) fn send_two(stream: &UnixStream, first: &[u8], second: &[u8]) -> io::Result<usize> {
        (&*stream).write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn queued_frames_arrive_in_order_with_prefixes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut outbox = Outbox::default();
        outbox.push(b"one".to_vec());
        outbox.push(Vec::new());
        outbox.push(b"three".to_vec());
        assert_eq!(outbox.queued_bytes(), 3 * HEADER_LEN + 8);
        let written = outbox.write_to(&a, usize::MAX).unwrap();
        assert_eq!(
            written,
            Written {
                bytes: 20,
                frames: 3
            }
        );
        assert!(outbox.is_empty());
        let mut got = [0; 20];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x03\0\0\0one\0\0\0\0\x05\0\0\0three");
    }

    #[test]
    fn a_frame_sent_directly_arrives_whole_small_or_large() {
        let (a, mut b) = UnixStream::pair().unwrap();
        for len in [0, 3, SMALL_FRAME, SMALL_FRAME + 1, 5000] {
            let payload = vec![len as u8; len];
            assert_eq!(send_frame(&a, &payload).unwrap(), HEADER_LEN + len);
            let mut got = vec![0; HEADER_LEN + len];
            b.read_exact(&mut got).unwrap();
            assert_eq!(got[..HEADER_LEN], header(len));
            assert_eq!(got[HEADER_LEN..], payload[..]);
        }
    }

    #[test]
    fn partial_progress_is_remembered() {
        let mut outbox = Outbox::default();
        outbox.push(b"abcdef".to_vec());
        outbox.push(b"gh".to_vec());
        assert_eq!(outbox.advance(2), 0);
        assert_eq!(outbox.frames[0].unsent(), [&[0, 0][..], b"abcdef"]);
        assert_eq!(outbox.advance(5), 0);
        assert_eq!(outbox.frames[0].unsent(), [&b"def"[..], b""]);
        assert_eq!(outbox.advance(3 + 1), 1);
        assert_eq!(outbox.frames[0].unsent(), [&[0, 0, 0][..], b"gh"]);
        assert_eq!(outbox.queued_bytes(), 5);
        assert_eq!(outbox.discard(), 1);
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
