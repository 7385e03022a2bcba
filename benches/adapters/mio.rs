//! The echo workload of `benches/net.rs` on a `mio::Poll`: through the mio adapter (two
//! `net::Connection`s per socketpair, attached to one `MioGlue`), and natively (the framing —
//! u32-LE length + 32-byte payload — written by hand as in `benches/net.rs`, each frame an
//! owned message, each end drained to `WouldBlock` as an edge-triggered poll requires). Ping-pong per connection, both ends in the same loop, one
//! write per frame on both sides. Included by `benches/adapters.rs`.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::mio::MioGlue;
use loopglue::net::Connection;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const PAYLOAD: [u8; 32] = *b"loopglue echo benchmark payload!";

fn frame() -> [u8; 36] {
    let mut wire = [0u8; 36];
    wire[..4].copy_from_slice(&(PAYLOAD.len() as u32).to_le_bytes());
    wire[4..].copy_from_slice(&PAYLOAD);
    wire
}

/// The echo through `MioGlue` and `net::Connection`.
pub fn via_adapter(connections: usize, messages_per_connection: u64) -> Duration {
    let mut poll = Poll::new().unwrap();
    let glue = MioGlue::new(poll.registry(), Token(0)..Token(usize::MAX)).unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut attached = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, service) = (
            Connection::from_stream(a).unwrap(),
            Connection::from_stream(b).unwrap(),
        );
        service.set_message_handler(|c, m| c.send(m).unwrap());
        let (mut count, done) = (0u64, Arc::clone(&finished));
        client.set_message_handler(move |c, m| {
            count += 1;
            if count < messages_per_connection {
                c.send(m).unwrap();
            } else {
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        attached.push(glue.attach(Arc::new(client.clone())).unwrap());
        attached.push(glue.attach(Arc::new(service)).unwrap());
        clients.push(client);
    }
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    for client in &clients {
        client.send(PAYLOAD.to_vec()).unwrap();
    }
    while finished.load(Ordering::Relaxed) < connections {
        poll.poll(&mut events, glue.poll_timeout()).unwrap();
        glue.process(&events);
    }
    start.elapsed()
}

/// One socket end of the hand-written loop.
struct End {
    stream: UnixStream,
    buf: Vec<u8>,
    client: bool,
    count: u64,
}

/// The echo on the same `Poll` with the framing written by hand.
pub fn native(connections: usize, messages_per_connection: u64) -> Duration {
    let mut poll = Poll::new().unwrap();
    let mut ends = Vec::with_capacity(2 * connections);
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
            ends.push(End {
                stream,
                buf: Vec::new(),
                client,
                count: 0,
            });
        }
    }
    let wire = frame();
    let mut events = Events::with_capacity(1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut finished = 0;
    let start = Instant::now();
    for end in ends.iter().filter(|e| e.client) {
        (&end.stream).write_all(&wire).unwrap();
    }
    while finished < connections {
        poll.poll(&mut events, None).unwrap();
        for event in events.iter() {
            let end = &mut ends[event.token().0];
            // Edge-triggered: read until it would block.
            loop {
                match (&end.stream).read(&mut chunk) {
                    Ok(0) => panic!("closed"),
                    Ok(got) => end.buf.extend_from_slice(&chunk[..got]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
            while end.buf.len() >= 4 {
                let len = u32::from_le_bytes(end.buf[..4].try_into().unwrap()) as usize;
                if end.buf.len() < 4 + len {
                    break;
                }
                // Each frame as an owned message, as benches/net.rs's hand-written loop (and
                // any application handing messages on) has it.
                let message: Vec<u8> = end.buf.drain(..4 + len).collect();
                if end.client {
                    end.count += 1;
                    if end.count == messages_per_connection {
                        finished += 1;
                        continue;
                    }
                }
                (&end.stream).write_all(&message).unwrap();
            }
        }
    }
    start.elapsed()
}
