//! The echo workload of `benches/net.rs` in a calloop `EventLoop`: through the calloop adapter
//! with two `net::Connection`s per socketpair, and natively with one level-triggered
//! `Generic` per socket end and the framing written by hand. Both ends of every pair run in
//! one loop, dispatched by the calling thread; every frame is one write.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calloop::generic::Generic;
use calloop::{EventLoop, Interest, Mode, PostAction};
use loopglue::adapters::calloop::CalloopGlue;
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
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
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
            let mut buf = Vec::new();
            let mut count = 0u64;
            let mut chunk = vec![0u8; 64 * 1024];
            handle
                .insert_source(
                    Generic::new(stream, Interest::READ, Mode::Level),
                    move |_, stream, finished: &mut usize| {
                        let stream: &UnixStream = stream;
                        let got = match (&*stream).read(&mut chunk) {
                            Ok(got) => got,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                return Ok(PostAction::Continue)
                            }
                            Err(e) => return Err(e),
                        };
                        buf.extend_from_slice(&chunk[..got]);
                        while buf.len() >= 4 {
                            let len = u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize;
                            if buf.len() < 4 + len {
                                break;
                            }
                            let message: Vec<u8> = buf.drain(..4 + len).collect();
                            if !client {
                                (&*stream).write_all(&message)?;
                            } else {
                                count += 1;
                                if count < messages_per_connection {
                                    (&*stream).write_all(&message)?;
                                } else {
                                    *finished += 1;
                                }
                            }
                        }
                        Ok(PostAction::Continue)
                    },
                )
                .unwrap();
        }
    }
    let wire = frame();
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
