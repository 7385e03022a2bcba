//! The echo workload of `benches/net.rs` on a GLib main context: through the GLib adapter with
//! two `net::Connection`s per socketpair, and natively with one unix fd `GSource` per socket
//! end and the framing written by hand. Both ends of every pair run on one context, iterated
//! by the calling thread; every frame is one write.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glib::{ControlFlow, IOCondition, MainContext, Priority};
use loopglue::adapters::glib::GlibGlue;

use super::echo::{self, EchoEnd};

/// `connections` client/service pairs through the adapter, each client sending
/// `messages_per_connection` messages one at a time; returns the time from the first send to
/// the last reply.
pub fn via_adapter(connections: usize, messages_per_connection: u64) -> Duration {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let finished = Arc::new(AtomicUsize::new(0));
    let done = Arc::clone(&finished);
    let pairs = echo::connection_pairs(connections, messages_per_connection, move || {
        done.fetch_add(1, Ordering::Relaxed);
    });
    let _attached = echo::attach_all(&pairs, |source| glue.attach(source).unwrap());
    let start = echo::start(&pairs);
    while finished.load(Ordering::Relaxed) < connections {
        context.iteration(true);
    }
    start.elapsed()
}

/// The same workload with one unix fd `GSource` per socket end and the framing by hand.
pub fn native(connections: usize, messages_per_connection: u64) -> Duration {
    let context = MainContext::new();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut sources = Vec::new();
    let mut client_streams = Vec::new();
    for _ in 0..connections {
        let (a, b) = UnixStream::pair().unwrap();
        for (stream, client) in [(a, true), (b, false)] {
            stream.set_nonblocking(true).unwrap();
            if client {
                client_streams.push(stream.try_clone().unwrap());
            }
            let mut end = EchoEnd::new(client);
            let done = Arc::clone(&finished);
            let mut chunk = vec![0u8; 64 * 1024];
            let source = glib_unix::fd_source_new(
                stream.as_raw_fd(),
                IOCondition::IN | IOCondition::ERR | IOCondition::HUP,
                None,
                Priority::DEFAULT,
                move |_, _| {
                    let got = match (&stream).read(&mut chunk) {
                        Ok(got) => got,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            return ControlFlow::Continue
                        }
                        Err(e) => panic!("{e}"),
                    };
                    if end
                        .received(&chunk[..got], messages_per_connection, &stream)
                        .unwrap()
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    ControlFlow::Continue
                },
            );
            source.attach(Some(&context));
            sources.push(source);
        }
    }
    let wire = echo::frame();
    let start = Instant::now();
    for stream in &client_streams {
        (&*stream).write_all(&wire).unwrap();
    }
    while finished.load(Ordering::Relaxed) < connections {
        context.iteration(true);
    }
    let took = start.elapsed();
    for source in sources {
        source.destroy();
    }
    took
}
