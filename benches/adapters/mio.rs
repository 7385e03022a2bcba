//! The echo workload of `benches/net.rs` on a `mio::Poll`: through the mio adapter (two
//! `net::Connection`s per socketpair, attached to one `MioGlue`), and natively (the framing
//! written by hand, each end drained to `WouldBlock` as an edge-triggered poll requires).
//! Ping-pong per connection, both ends in the same loop, one write per frame on both sides.
//! Included by `benches/adapters.rs`.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::mio::MioGlue;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::echo::{self, EchoEnd};

/// The echo through `MioGlue` and `net::Connection`.
pub fn via_adapter(connections: usize, messages_per_connection: u64) -> Duration {
    let mut poll = Poll::new().unwrap();
    let glue = MioGlue::new(poll.registry(), Token(0)..Token(usize::MAX)).unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let done = Arc::clone(&finished);
    let pairs = echo::connection_pairs(connections, messages_per_connection, move || {
        done.fetch_add(1, Ordering::Relaxed);
    });
    let _attached = echo::attach_all(&pairs, |source| glue.attach(source).unwrap());
    let mut events = Events::with_capacity(1024);
    let start = echo::start(&pairs);
    while finished.load(Ordering::Relaxed) < connections {
        poll.poll(&mut events, glue.poll_timeout()).unwrap();
        glue.process(&events);
    }
    start.elapsed()
}

/// The echo on the same `Poll` with the framing written by hand.
pub fn native(connections: usize, messages_per_connection: u64) -> Duration {
    let mut poll = Poll::new().unwrap();
    let mut ends: Vec<(UnixStream, EchoEnd)> = Vec::with_capacity(2 * connections);
    for _ in 0..connections {
        let (a, b) = UnixStream::pair().unwrap();
        for (stream, client) in [(a, true), (b, false)] {
            stream.set_nonblocking(true).unwrap();
            poll.registry()
                .register(
                    &mut SourceFd(&stream.as_raw_fd()),
                    Token(ends.len()),
                    Interest::READABLE,
                )
                .unwrap();
            ends.push((stream, EchoEnd::new(client)));
        }
    }
    let wire = echo::frame();
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut finished = 0;
    let start = Instant::now();
    for (stream, _) in ends.iter().filter(|(_, end)| end.is_client()) {
        (&*stream).write_all(&wire).unwrap();
    }
    while finished < connections {
        poll.poll(&mut events, None).unwrap();
        for event in events.iter() {
            let (stream, end) = &mut ends[event.token().0];
            // Edge-triggered: read until it would block.
            loop {
                let got = match (&*stream).read(&mut chunk) {
                    Ok(0) => panic!("closed"),
                    Ok(got) => got,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                };
                if end
                    .received(&chunk[..got], messages_per_connection, &*stream)
                    .unwrap()
                {
                    finished += 1;
                }
            }
        }
    }
    start.elapsed()
}
