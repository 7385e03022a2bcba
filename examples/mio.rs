//! Running a loopglue source on a `mio::Poll` that the application owns.
//!
//! `MioGlue` registers the fds of the sources attached to it on tokens from a range the
//! application sets aside; the application's loop asks it how long to block (`poll_timeout`)
//! and hands it what each poll returned (`process`). Here a client and a service
//! `net::Connection` on a socketpair ping-pong numbered messages, each echo checked; once the
//! client falls silent, the service's idle timeout — a loopglue `Timeout`, which
//! `poll_timeout` accounts for — hangs up; then both are detached. Exits non-zero if a reply
//! is wrong or anything is missing.
//!
//! ```sh
//! cargo run --features mio --example mio
//! cargo run --features mio --example mio -- 8 1000   # pairs, messages
//! ```

use std::error::Error;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::mio::MioGlue;
use loopglue::net::{Connection, ConnectionConfig, DisconnectReason};
use mio::{Events, Poll, Token};

/// What the handlers report: a client's last echo checked, or why a service hung up.
enum Event {
    Done(Result<(), String>),
    HungUp(DisconnectReason),
}

/// A client and an echoing service that hangs up after 100 ms of silence; the client sends
/// `messages` pings one at a time and checks each echo.
fn pair(n: usize, messages: u64, events: Sender<Event>) -> std::io::Result<[Connection; 2]> {
    let ping = move |seq: u64| format!("pair {n} ping {seq}").into_bytes();
    let (a, b) = UnixStream::pair()?;
    let idle = ConnectionConfig::new().idle_timeout(Duration::from_millis(100));
    let (client, service) = (
        Connection::from_stream(a)?,
        Connection::from_stream_with(b, idle)?,
    );
    service.set_message_handler(|service, message| {
        let _ = service.send(message);
    });
    let hung_up = events.clone();
    service.set_disconnect_handler(move |reason| {
        let _ = hung_up.send(Event::HungUp(reason));
    });
    let mut seq = 0;
    client.set_message_handler(move |client, reply| {
        if reply != ping(seq) {
            let _ = events.send(Event::Done(Err(format!("pair {n}: echo {seq} altered"))));
        } else if seq + 1 == messages {
            let _ = events.send(Event::Done(Ok(())));
        } else {
            seq += 1;
            let _ = client.send(ping(seq));
        }
    });
    client.send(ping(0))?; // written once the client is attached
    Ok([client, service])
}

fn run(pairs: usize, messages: u64) -> Result<(), Box<dyn Error>> {
    let mut poll = Poll::new()?;
    // Tokens below 1000 are the application's own; the glue takes the rest (its waker first).
    let glue = MioGlue::new(poll.registry(), Token(1000)..Token(usize::MAX))?;
    let (events, heard) = channel();
    let mut attachments = Vec::new();
    for n in 0..pairs {
        for connection in pair(n, messages, events.clone())? {
            attachments.push(glue.attach(Arc::new(connection))?);
        }
    }
    // The application's loop, until every client is done and every service hung up for
    // idleness.
    let mut polled = Events::with_capacity(1024);
    let (mut done, mut hung_up) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while done < pairs || hung_up < pairs {
        if Instant::now() > deadline {
            return Err(format!("{done} of {pairs} done, {hung_up} hung up").into());
        }
        // `None`: nothing armed, block until an event (here: for a second at most).
        let timeout = glue.poll_timeout().unwrap_or(Duration::MAX);
        poll.poll(&mut polled, Some(timeout.min(Duration::from_secs(1))))?;
        glue.process(&polled); // the application's own tokens are left to it
        for event in heard.try_iter() {
            match event {
                Event::Done(checked) => done += checked.map(|()| 1)?,
                Event::HungUp(DisconnectReason::IdleTimeout) => hung_up += 1,
                Event::HungUp(other) => return Err(format!("hung up: {other}").into()),
            }
        }
    }
    // Detaching (or dropping) an attachment deregisters its fds before it returns.
    for attachment in attachments {
        attachment.detach().map_err(|(_, e)| e)?;
    }
    match glue.registered_fds() {
        0 => Ok(()),
        left => Err(format!("{left} fds left registered").into()),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let pairs = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let messages = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10u64)
        .max(1);
    match run(pairs, messages) {
        Ok(()) => {
            println!("mio: {pairs} pair(s) x {messages} echoes checked, then idle hang-ups");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mio example failed: {e}");
            ExitCode::FAILURE
        }
    }
}
