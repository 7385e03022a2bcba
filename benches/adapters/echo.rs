//! The echo workload of `benches/net.rs`, as every adapter bench runs it: the framing (u32-LE
//! length + 32-byte payload), the connection pairs of the adapter side, and the echo logic of
//! one socket end of a hand-written native loop. Included by `benches/adapters.rs`.

// Each loop's side uses part of this; with one adapter feature on, the rest goes unused.
#![allow(dead_code)]

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use loopglue::net::Connection;
use loopglue::Source;

pub const PAYLOAD: [u8; 32] = *b"loopglue echo benchmark payload!";

/// The payload as one frame on the wire: length, then payload.
pub fn frame() -> Vec<u8> {
    let mut wire = (PAYLOAD.len() as u32).to_le_bytes().to_vec();
    wire.extend_from_slice(&PAYLOAD);
    wire
}

/// `connections` client/service pairs of `net::Connection`s over socketpairs, for the adapter
/// side: each service echoes; each client sends every reply back until it has had
/// `messages_per_connection` of them, then calls `done`. Attach both ends of each pair, then
/// [`start`].
pub fn connection_pairs(
    connections: usize,
    messages_per_connection: u64,
    done: impl Fn() + Clone + Send + 'static,
) -> Vec<(Connection, Connection)> {
    (0..connections)
        .map(|_| {
            let (a, b) = UnixStream::pair().unwrap();
            let (client, service) = (
                Connection::from_stream(a).unwrap(),
                Connection::from_stream(b).unwrap(),
            );
            service.set_message_handler(|c, m| c.send(m).unwrap());
            let (mut count, done) = (0u64, done.clone());
            client.set_message_handler(move |c, m| {
                count += 1;
                if count < messages_per_connection {
                    c.send(m).unwrap();
                } else {
                    done();
                }
            });
            (client, service)
        })
        .collect()
}

/// Attaches both ends of every pair with `attach`; keep what it returns while the echo runs.
pub fn attach_all<A>(
    pairs: &[(Connection, Connection)],
    mut attach: impl FnMut(Arc<dyn Source>) -> A,
) -> Vec<A> {
    pairs
        .iter()
        .flat_map(|(client, service)| [client.clone(), service.clone()])
        .map(|end| attach(Arc::new(end)))
        .collect()
}

/// Sends every client's first message; returns when that began.
pub fn start(pairs: &[(Connection, Connection)]) -> Instant {
    let start = Instant::now();
    for (client, _) in pairs {
        client.send(PAYLOAD.to_vec()).unwrap();
    }
    start
}

/// Whole frames out of the bytes a socket end reads, each an owned message, as
/// `benches/net.rs`'s hand-written loop (and any application handing messages on) has them.
#[derive(Default)]
pub struct Frames(Vec<u8>);

impl Frames {
    /// Takes bytes just read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// The next whole frame, length prefix included.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let len = u32::from_le_bytes(self.0.get(..4)?.try_into().unwrap()) as usize;
        (self.0.len() >= 4 + len).then(|| self.0.drain(..4 + len).collect())
    }
}

/// The echo at one socket end of a hand-written loop: the frames read so far, and for a
/// client, the replies counted.
pub struct EchoEnd {
    frames: Frames,
    client: bool,
    count: u64,
}

impl EchoEnd {
    pub fn new(client: bool) -> EchoEnd {
        EchoEnd {
            frames: Frames::default(),
            client,
            count: 0,
        }
    }

    pub fn is_client(&self) -> bool {
        self.client
    }

    /// Takes `bytes` just read and writes each whole frame back to `socket` — a service
    /// always, a client until it has had `messages_per_connection` replies. Returns whether a
    /// client just had its last.
    pub fn received(
        &mut self,
        bytes: &[u8],
        messages_per_connection: u64,
        mut socket: impl Write,
    ) -> io::Result<bool> {
        self.frames.push(bytes);
        let mut finished = false;
        while let Some(message) = self.frames.next_frame() {
            if self.client {
                self.count += 1;
                if self.count == messages_per_connection {
                    finished = true;
                    continue;
                }
            }
            socket.write_all(&message)?;
        }
        Ok(finished)
    }
}
