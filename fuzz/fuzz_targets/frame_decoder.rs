//! The `net` frame decoder through its public surface: a `Connection` on `MockLoop`, fed the
//! fuzzer's bytes over a socket pair in chunks, with small limits and budgets taken from the
//! input. What it delivers — messages in order, then one disconnect reason — must match a
//! reference decoder written here from the wire format's description, and nothing may panic.

#![no_main]

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use loopglue::net::{Connection, ConnectionConfig, DisconnectReason};
use loopglue::testing::MockLoop;
use loopglue::DispatchStatus;
use nix::sys::socket::{send, MsgFlags};

/// What a correct decoder makes of `stream` when frames may be at most `max` bytes long.
#[derive(Debug, PartialEq, Eq)]
enum End {
    PeerClosed,
    TooLarge { len: usize, max: usize },
    Truncated { have: usize, need: usize },
}

fn reference(mut stream: &[u8], max: usize) -> (Vec<Vec<u8>>, End) {
    let mut messages = Vec::new();
    loop {
        if stream.is_empty() {
            return (messages, End::PeerClosed);
        }
        if stream.len() < 4 {
            return (
                messages,
                End::Truncated {
                    have: stream.len(),
                    need: 4,
                },
            );
        }
        let len = u32::from_le_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        if len > max {
            return (messages, End::TooLarge { len, max });
        }
        if stream.len() - 4 < len {
            return (
                messages,
                End::Truncated {
                    have: stream.len(),
                    need: 4 + len,
                },
            );
        }
        messages.push(stream[4..4 + len].to_vec());
        stream = &stream[4 + len..];
    }
}

fn end_of(reason: &DisconnectReason) -> Option<End> {
    match reason {
        DisconnectReason::PeerClosed => Some(End::PeerClosed),
        DisconnectReason::FrameTooLarge { len, max } => Some(End::TooLarge {
            len: *len,
            max: *max,
        }),
        DisconnectReason::TruncatedFrame { have, need } => Some(End::Truncated {
            have: *have,
            need: *need,
        }),
        _ => None,
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let (head, stream) = input.split_at(4);
    let max = usize::from(head[0]) * 4;
    let config = ConnectionConfig::new()
        .max_frame_size(max)
        .read_budget(1 + usize::from(head[1]))
        .max_inbound_frames(1 + usize::from(head[2] % 8));
    let chunk = 1 + usize::from(head[3]);

    let mock = MockLoop::new();
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    theirs.set_nonblocking(true).expect("non-blocking");
    let connection = Connection::from_stream_with(ours, config).expect("connection");
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let reason: Arc<Mutex<Option<DisconnectReason>>> = Arc::default();
    let (sink, last) = (Arc::clone(&got), Arc::clone(&reason));
    connection.set_message_handler(move |_, message| sink.lock().unwrap().push(message));
    connection.set_disconnect_handler(move |why| *last.lock().unwrap() = Some(why));
    mock.attach(Arc::new(connection.clone())).expect("attach");

    let settle = || {
        // Each round either handles something or dispatches; a bounded number of rounds
        // always reaches quiet, since every round consumes input.
        for _ in 0..100_000 {
            let handled = mock.poll_fds();
            if handled == 0 && connection.dispatch_status() == DispatchStatus::Complete {
                return;
            }
        }
        panic!("the connection never settled");
    };
    let mut written = 0;
    while written < stream.len() && reason.lock().unwrap().is_none() {
        let end = (written + chunk).min(stream.len());
        // MSG_NOSIGNAL: once the connection closes its end, a write must not raise SIGPIPE.
        match send(
            std::os::fd::AsRawFd::as_raw_fd(&theirs),
            &stream[written..end],
            MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => written += n,
            Err(nix::errno::Errno::EAGAIN) => {}
            Err(_) => break, // the connection closed its end after a bad frame
        }
        settle();
    }
    // Whatever the connection sent back is of no interest; reading it keeps the pair tidy.
    let mut sink = [0u8; 256];
    let _ = (&theirs).read(&mut sink).or_else(|e| match e.kind() {
        io::ErrorKind::WouldBlock => Ok(0),
        _ => Err(e),
    });
    drop(theirs); // end of stream
    settle();

    let (expected, end) = reference(&stream[..written], max);
    let reason = reason
        .lock()
        .unwrap()
        .take()
        .expect("one disconnect reason, always");
    let got = got.lock().unwrap();
    match end_of(&reason) {
        Some(actual) if written == stream.len() || actual != End::PeerClosed => {
            assert_eq!(actual, end, "disconnect reason");
            assert_eq!(*got, expected, "messages before the end");
        }
        _ => panic!(
            "unexpected disconnect: {reason:?} after {written} of {} bytes",
            stream.len()
        ),
    }
    assert!(!connection.is_connected());
    mock.detach(&connection).expect("detach");
});
