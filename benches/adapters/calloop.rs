//! The echo workload of `benches/net.rs` in a calloop `EventLoop`: through the calloop adapter
//! with two `net::Connection`s per socketpair, and natively with one level-triggered
//! `Generic` per socket end and the framing written by hand. Both ends of every pair run in
//! one loop, dispatched by the calling thread; every frame is one write.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calloop::generic::Generic;
use calloop::{EventLoop, Interest, Mode, PostAction};
use loopglue::adapters::calloop::CalloopGlue;

use super::echo::{self, EchoEnd};

/// `connections` client/service pairs through the adapter, each client sending
/// `messages_per_connection` messages one at a time; returns the time from the first send to
/// the last reply.
pub fn via_adapter(connections: usize, messages_per_connection: u64) -> Duration {
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let done = Arc::clone(&finished);
    let pairs = echo::connection_pairs(connections, messages_per_connection, move || {
        done.fetch_add(1, Ordering::Relaxed);
    });
    let _attached = echo::attach_all(&pairs, |source| glue.attach(source).unwrap());
    let start = echo::start(&pairs);
    while finished.load(Ordering::Relaxed) < connections {
        event_loop.dispatch(None, &mut ()).unwrap();
    }
    start.elapsed()
}

/// The same workload with one `Generic` (level mode) per socket end and the framing by hand.
pub fn native(connections: usize, messages_per_connection: u64) -> Duration {
    let mut event_loop: EventLoop<'_, usize> = EventLoop::try_new().unwrap();
    let handle = event_loop.handle();
    let mut client_streams = Vec::new();
    for _ in 0..connections {
        let (a, b) = UnixStream::pair().unwrap();
        for (stream, client) in [(a, true), (b, false)] {
            stream.set_nonblocking(true).unwrap();
            if client {
                client_streams.push(stream.try_clone().unwrap());
            }
            let mut end = EchoEnd::new(client);
            let mut chunk = vec![0u8; 64 * 1024];
            handle
                .insert_source(
                    Generic::new(stream, Interest::READ, Mode::Level),
                    move |_, stream, finished: &mut usize| {
                        let stream: &UnixStream = stream;
                        let got = match (&*stream).read(&mut chunk) {
                            Ok(got) => got,
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                return Ok(PostAction::Continue)
                            }
                            Err(e) => return Err(e),
                        };
                        if end.received(&chunk[..got], messages_per_connection, stream)? {
                            *finished += 1;
                        }
                        Ok(PostAction::Continue)
                    },
                )
                .unwrap();
        }
    }
    let wire = echo::frame();
    let mut finished = 0usize;
    let start = Instant::now();
    for stream in &client_streams {
        (&*stream).write_all(&wire).unwrap();
    }
    while finished < connections {
        event_loop.dispatch(None, &mut finished).unwrap();
    }
    start.elapsed()
}
