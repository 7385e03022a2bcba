//! The echo workload of `benches/net.rs` on a GLib main context: through the GLib adapter with
//! two `net::Connection`s per socketpair, and natively with one unix fd `GSource` per socket
//! end and the framing written by hand. Both ends of every pair run on one context, iterated
//! by the calling thread; every frame is one write.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glib::{ControlFlow, IOCondition, MainContext, Priority};
use loopglue::adapters::glib::GlibGlue;
use loopglue::net::Connection;

const PAYLOAD: [u8; 32] = *b"loopglue echo benchmark payload!";

fn frame() -> Vec<u8> {
    let mut f = (PAYLOAD.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&PAYLOAD);
    f
}

/// `connections` client/service pairs through the adapter, each client sending
/// `messages_per_connection` messages one at a time; returns the time from the first send to
/// the last reply.
pub fn via_adapter(connections: usize, messages_per_connection: u64) -> Duration {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let finished = Arc::new(AtomicUsize::new(0));
    let mut keep = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..connections {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, service) = (
            Connection::from_stream(a).unwrap(),
            Connection::from_stream(b).unwrap(),
        );
        service.set_message_handler(|c, m| c.send(m).unwrap());
        let (count, done) = (Arc::new(AtomicU64::new(0)), Arc::clone(&finished));
        client.set_message_handler(move |c, m| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 < messages_per_connection {
                c.send(m).unwrap();
            } else {
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        keep.push(glue.attach(Arc::new(client.clone())).unwrap());
        keep.push(glue.attach(Arc::new(service.clone())).unwrap());
        clients.push(client);
    }
    let start = Instant::now();
    for client in &clients {
        client.send(PAYLOAD.to_vec()).unwrap();
    }
    while finished.load(Ordering::Relaxed) < connections {
        context.iteration(true);
    }
    start.elapsed()
}

/// One socket end of the native loop: bytes read so far, frames parsed from them.
struct End {
    stream: UnixStream,
    buf: Vec<u8>,
    client: bool,
    count: u64,
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
            let fd = stream.as_raw_fd();
            if client {
                client_streams.push(stream.try_clone().unwrap());
            }
            let end = Mutex::new(End {
                stream,
                buf: Vec::new(),
                client,
                count: 0,
            });
            let done = Arc::clone(&finished);
            let mut chunk = vec![0u8; 64 * 1024];
            let source = glib_unix::fd_source_new(
                fd,
                IOCondition::IN | IOCondition::ERR | IOCondition::HUP,
                None,
                Priority::DEFAULT,
                move |_, _| {
                    let end = &mut *end.lock().unwrap();
                    let got = match (&end.stream).read(&mut chunk) {
                        Ok(got) => got,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            return ControlFlow::Continue
                        }
                        Err(e) => panic!("{e}"),
                    };
                    end.buf.extend_from_slice(&chunk[..got]);
                    while end.buf.len() >= 4 {
                        let len = u32::from_le_bytes(end.buf[..4].try_into().unwrap()) as usize;
                        if end.buf.len() < 4 + len {
                            break;
                        }
                        let message: Vec<u8> = end.buf.drain(..4 + len).collect();
                        if !end.client {
                            (&end.stream).write_all(&message).unwrap();
                        } else {
                            end.count += 1;
                            if end.count < messages_per_connection {
                                (&end.stream).write_all(&message).unwrap();
                            } else {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    ControlFlow::Continue
                },
            );
            source.attach(Some(&context));
            sources.push(source);
        }
    }
    let wire = frame();
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
