//! Echo through the mio adapter: the application owns a `mio::Poll` and its loop; pairs of
//! `net::Connection`s (a client and a service on each socketpair) run in it through
//! `MioGlue`. Every client sends numbered messages one at a time and checks each echo; the
//! example exits non-zero if a reply is wrong or missing.
//!
//! ```sh
//! cargo run --features mio --example mio
//! cargo run --release --features mio --example mio -- 100 10000   # clients, messages each
//! ```

use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::mio::MioGlue;
use loopglue::net::Connection;
use mio::{Events, Poll, Token};

fn message(client: u64, seq: u64) -> Vec<u8> {
    [
        &client.to_le_bytes()[..],
        &seq.to_le_bytes(),
        b"mio echo payload",
    ]
    .concat()
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let clients = args.next().and_then(Result::ok).unwrap_or(4);
    let messages = args.next().and_then(Result::ok).unwrap_or(2_000).max(1);
    match run(clients, messages) {
        Ok(took) => {
            println!(
                "mio: {clients} clients x {messages} messages echoed and checked in {took:.2?}"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mio echo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(clients: u64, messages: u64) -> Result<Duration, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    // The application's tokens are below 1_000; the glue has the rest.
    let glue = MioGlue::new(poll.registry(), Token(1_000)..Token(usize::MAX))
        .map_err(|e| e.to_string())?;
    let done = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicBool::new(false));
    let mut attachments = Vec::new();
    let mut starters = Vec::new();
    for c in 0..clients {
        let (a, b) = UnixStream::pair().map_err(|e| e.to_string())?;
        let client = Connection::from_stream(a).map_err(|e| e.to_string())?;
        let service = Connection::from_stream(b).map_err(|e| e.to_string())?;
        service.set_message_handler(|conn, m| {
            let _ = conn.send(m);
        });
        let (done, wrong, next) = (Arc::clone(&done), Arc::clone(&wrong), AtomicU64::new(0));
        client.set_message_handler(move |conn, reply| {
            let seq = next.fetch_add(1, Ordering::Relaxed);
            if reply != message(c, seq) {
                wrong.store(true, Ordering::Relaxed);
            }
            if seq + 1 < messages {
                let _ = conn.send(message(c, seq + 1));
            } else {
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
        attachments.push(
            glue.attach(Arc::new(client.clone()))
                .map_err(|e| e.to_string())?,
        );
        attachments.push(glue.attach(Arc::new(service)).map_err(|e| e.to_string())?);
        starters.push((c, client));
    }
    let start = Instant::now();
    for (c, client) in &starters {
        client.send(message(*c, 0)).map_err(|e| e.to_string())?;
    }
    let mut events = Events::with_capacity(1024);
    let deadline = start + Duration::from_secs(60);
    while done.load(Ordering::Relaxed) < clients && !wrong.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out with {} of {clients} clients done",
                done.load(Ordering::Relaxed)
            ));
        }
        let timeout = glue
            .poll_timeout()
            .map_or(Duration::from_secs(1), |t| t.min(Duration::from_secs(1)));
        poll.poll(&mut events, Some(timeout))
            .map_err(|e| e.to_string())?;
        glue.process(&events);
    }
    if wrong.load(Ordering::Relaxed) {
        return Err("a reply did not match its request".into());
    }
    Ok(start.elapsed())
}
