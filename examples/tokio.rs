//! Running a loopglue source in a tokio runtime.
//!
//! `attach` (inside the runtime) or `attach_to` (anywhere, with a `Handle`) runs a source in a
//! driver task of its own until the returned `TokioAttachment` is dropped or detached. Here a
//! client and a service `net::Connection` on a socketpair ping-pong numbered messages, each
//! echo checked; once the client falls silent, the service's idle timeout — a loopglue
//! `Timeout`, on tokio's timers — hangs up; then both are detached. Exits non-zero if a reply
//! is wrong or anything is missing.
//!
//! ```sh
//! cargo run --features tokio --example tokio
//! cargo run --features tokio --example tokio -- 8 1000 multi   # pairs, messages, runtime
//! ```

use std::error::Error;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use loopglue::adapters::tokio::attach;
use loopglue::net::{Connection, ConnectionConfig, DisconnectReason};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// What the handlers report: a client's last echo checked, or why a service hung up.
enum Event {
    Done(Result<(), String>),
    HungUp(DisconnectReason),
}

/// A client and an echoing service that hangs up after 100 ms of silence; the client sends
/// `messages` pings one at a time and checks each echo.
fn pair(
    n: usize,
    messages: u64,
    events: UnboundedSender<Event>,
) -> std::io::Result<[Connection; 2]> {
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

async fn run(pairs: usize, messages: u64) -> Result<(), Box<dyn Error>> {
    let (events, mut heard) = unbounded_channel();
    let mut attachments = Vec::new();
    for n in 0..pairs {
        for connection in pair(n, messages, events.clone())? {
            attachments.push(attach(Arc::new(connection))?);
        }
    }
    // Every client done, and every service hung up for idleness.
    let (mut done, mut hung_up) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while done < pairs || hung_up < pairs {
        match tokio::time::timeout_at(deadline, heard.recv()).await {
            Ok(Some(Event::Done(checked))) => done += checked.map(|()| 1)?,
            Ok(Some(Event::HungUp(DisconnectReason::IdleTimeout))) => hung_up += 1,
            Ok(Some(Event::HungUp(other))) => return Err(format!("hung up: {other}").into()),
            _ => return Err(format!("{done} of {pairs} done, {hung_up} hung up").into()),
        }
    }
    // Detaching (or dropping) an attachment deregisters its fds and ends its driver task.
    for attachment in attachments {
        attachment.detach().map_err(|(_, e)| e)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let pairs = args.first().and_then(|a| a.parse().ok()).unwrap_or(1);
    let messages = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10u64)
        .max(1);
    let mut runtime = if args.iter().any(|a| a == "multi") {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let outcome = runtime.enable_all().build().map_err(Box::from);
    match outcome.and_then(|runtime| runtime.block_on(run(pairs, messages))) {
        Ok(()) => {
            println!("tokio: {pairs} pair(s) x {messages} echoes checked, then idle hang-ups");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokio example failed: {e}");
            ExitCode::FAILURE
        }
    }
}
