//! Running a loopglue source in a `calloop::EventLoop`.
//!
//! `CalloopGlue::insert` puts the glue into the loop; `attach` runs a source there until the
//! returned `CalloopAttachment` is dropped or detached. A source's handlers are `Send`
//! closures and cannot hold the loop's `&mut Data`: they send what they have through a
//! `calloop::channel`, whose callback gets `&mut Data` in the same dispatch. Here a client and
//! a service `net::Connection` on a socketpair ping-pong numbered messages, each echo
//! checked; once the client falls silent, the service's idle timeout — a loopglue `Timeout`,
//! on calloop's timer — hangs up; then both are detached. Exits non-zero if a reply is wrong
//! or anything is missing.
//!
//! ```sh
//! cargo run --features calloop --example calloop
//! cargo run --features calloop --example calloop -- 8 1000   # pairs, messages
//! ```

use std::error::Error;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calloop::channel::{channel, Sender};
use calloop::EventLoop;
use loopglue::adapters::calloop::CalloopGlue;
use loopglue::net::{Connection, ConnectionConfig, DisconnectReason};

/// What the handlers report: a client's last echo checked, or why a service hung up.
enum Event {
    Done(Result<(), String>),
    HungUp(DisconnectReason),
}

/// The loop's `Data`: what the handlers reported.
#[derive(Default)]
struct Progress {
    done: usize,
    hung_up: usize,
    failure: Option<String>,
}

impl Progress {
    fn record(&mut self, event: Event) {
        match event {
            Event::Done(Ok(())) => self.done += 1,
            Event::Done(Err(what)) => self.failure = Some(what),
            Event::HungUp(DisconnectReason::IdleTimeout) => self.hung_up += 1,
            Event::HungUp(other) => self.failure = Some(format!("hung up: {other}")),
        }
    }
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
    let mut event_loop: EventLoop<'_, Progress> = EventLoop::try_new()?;
    let glue = CalloopGlue::insert(&event_loop.handle())?;
    let (events, heard) = channel();
    event_loop
        .handle()
        .insert_source(heard, |event, _, progress: &mut Progress| {
            if let calloop::channel::Event::Msg(event) = event {
                progress.record(event);
            }
        })
        .map_err(|e| e.error)?;
    let mut attachments = Vec::new();
    for n in 0..pairs {
        for connection in pair(n, messages, events.clone())? {
            attachments.push(glue.attach(Arc::new(connection))?);
        }
    }
    // Dispatch until every client is done and every service hung up for idleness.
    let mut progress = Progress::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(failure) = progress.failure.take() {
            return Err(failure.into());
        }
        if progress.done == pairs && progress.hung_up == pairs {
            break;
        }
        if Instant::now() > deadline {
            let Progress { done, hung_up, .. } = progress;
            return Err(format!("{done} of {pairs} done, {hung_up} hung up").into());
        }
        event_loop.dispatch(Duration::from_millis(100), &mut progress)?;
    }
    // Detaching (or dropping) an attachment takes its fds out of calloop's poller before it
    // returns.
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
            println!("calloop: {pairs} pair(s) x {messages} echoes checked, then idle hang-ups");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("calloop example failed: {e}");
            ExitCode::FAILURE
        }
    }
}
