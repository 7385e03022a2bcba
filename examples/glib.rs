//! Running a loopglue source on a GLib main context, as dbus-glib's
//! `dbus_connection_setup_with_g_main` runs libdbus.
//!
//! `GlibGlue::new` makes the glue for a context (here the default one, run by a
//! `glib::MainLoop`); `attach` runs a source there until the returned `GlibAttachment` is
//! dropped or detached. Here a client and a service `net::Connection` on a socketpair
//! ping-pong numbered messages, each echo checked; once the client falls silent, the
//! service's idle timeout — a loopglue `Timeout`, as a GLib timeout source — hangs up and
//! quits the main loop; then both are detached. Exits non-zero if a reply is wrong or
//! anything is missing.
//!
//! ```sh
//! cargo run --features glib --example glib
//! cargo run --features glib --example glib -- 8 1000   # pairs, messages
//! ```

use std::error::Error;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glib::{ControlFlow, MainContext, MainLoop};
use loopglue::adapters::glib::GlibGlue;
use loopglue::net::{Connection, ConnectionConfig, DisconnectReason};

/// What the handlers reported; the main loop quits once every service hung up, or on failure.
struct Progress {
    pairs: usize,
    done: usize,
    hung_up: usize,
    failure: Option<String>,
    main_loop: MainLoop,
}

type Shared = Arc<Mutex<Progress>>;

fn report(progress: &Shared, change: impl FnOnce(&mut Progress)) {
    let mut progress = progress.lock().unwrap();
    change(&mut progress);
    if progress.failure.is_some() || progress.hung_up == progress.pairs {
        progress.main_loop.quit();
    }
}

/// A client and an echoing service that hangs up after 100 ms of silence; the client sends
/// `messages` pings one at a time and checks each echo.
fn pair(n: usize, messages: u64, progress: &Shared) -> std::io::Result<[Connection; 2]> {
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
    let hung_up = Arc::clone(progress);
    service.set_disconnect_handler(move |reason| {
        report(&hung_up, |p| match reason {
            DisconnectReason::IdleTimeout => p.hung_up += 1,
            other => p.failure = Some(format!("hung up: {other}")),
        });
    });
    let (progress, mut seq) = (Arc::clone(progress), 0);
    client.set_message_handler(move |client, reply| {
        if reply != ping(seq) {
            report(&progress, |p| {
                p.failure = Some(format!("pair {n}: echo {seq} altered"));
            });
        } else if seq + 1 == messages {
            report(&progress, |p| p.done += 1);
        } else {
            seq += 1;
            let _ = client.send(ping(seq));
        }
    });
    client.send(ping(0))?; // written once the client is attached
    Ok([client, service])
}

fn run(pairs: usize, messages: u64) -> Result<(), Box<dyn Error>> {
    let context = MainContext::default();
    let main_loop = MainLoop::new(Some(&context), false);
    let glue = GlibGlue::new(&context);
    let progress = Arc::new(Mutex::new(Progress {
        pairs,
        done: 0,
        hung_up: 0,
        failure: None,
        main_loop: main_loop.clone(),
    }));
    let mut attachments = Vec::new();
    for n in 0..pairs {
        for connection in pair(n, messages, &progress)? {
            attachments.push(glue.attach(Arc::new(connection))?);
        }
    }
    // Run until the handlers quit the loop, for 30 s at most.
    let stop = main_loop.clone();
    let deadline = glib::timeout_source_new(
        Duration::from_secs(30),
        None,
        glib::Priority::DEFAULT,
        move || {
            stop.quit();
            ControlFlow::Break
        },
    );
    deadline.attach(Some(&context));
    main_loop.run();
    deadline.destroy();
    {
        let Progress {
            done,
            hung_up,
            failure,
            ..
        } = &*progress.lock().unwrap();
        if let Some(failure) = failure {
            return Err(failure.clone().into());
        }
        if (*done, *hung_up) != (pairs, pairs) {
            return Err(format!("{done} of {pairs} done, {hung_up} hung up").into());
        }
    }
    // Detaching (or dropping) an attachment destroys its GSources before it returns.
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
            println!("glib: {pairs} pair(s) x {messages} echoes checked, then idle hang-ups");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("glib example failed: {e}");
            ExitCode::FAILURE
        }
    }
}
