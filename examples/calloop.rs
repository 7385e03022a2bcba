//! An echo through the calloop adapter: a `net::Server` and a few `net::Connection` clients in a
//! `calloop::EventLoop` of their own, dispatched by this thread. Every client sends numbered
//! messages one at a time and checks each echo; the example exits non-zero on any mismatch,
//! disconnect or timeout.
//!
//! ```sh
//! cargo run --features calloop --example calloop
//! cargo run --release --features calloop --example calloop -- --clients 100 --messages 10000
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use calloop::EventLoop;
use loopglue::adapters::calloop::{CalloopAttachment, CalloopGlue};
use loopglue::net::{Connection, Server};

fn arg(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("{name} takes a positive number")),
    }
}

fn message(client: usize, seq: u64) -> Vec<u8> {
    format!("client {client} message {seq}: loopglue over calloop").into_bytes()
}

fn run() -> Result<String, String> {
    let (clients, messages) = (arg("--clients", 4)? as usize, arg("--messages", 2_000)?);
    let path = std::env::temp_dir().join(format!("loopglue-calloop-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut event_loop: EventLoop<'_, ()> =
        EventLoop::try_new().map_err(|e| format!("event loop: {e}"))?;
    let glue = CalloopGlue::insert(&event_loop.handle()).map_err(|e| format!("glue: {e}"))?;

    // The server: every accepted connection echoes, and is detached when its peer goes. The
    // new-connection function is a `Send` closure, so it attaches through an attacher.
    let server = Server::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    let g = glue.attacher();
    server.set_new_connection_function(move |conn| {
        conn.set_message_handler(|c, m| {
            let _ = c.send(m);
        });
        let slot: Arc<Mutex<Option<CalloopAttachment>>> = Arc::default();
        let on_end = Arc::clone(&slot);
        conn.set_disconnect_handler(move |_| drop(on_end.lock().unwrap().take()));
        match g.attach(Arc::new(conn.clone())) {
            Ok(attachment) => *slot.lock().unwrap() = Some(attachment),
            Err(e) => eprintln!("attach an accepted connection: {e}"),
        }
    });
    let _server = glue
        .attach(Arc::new(server.clone()))
        .map_err(|e| format!("attach the server: {e}"))?;

    // The clients: each checks every echo and sends the next message.
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut attached = Vec::new();
    for client in 0..clients {
        let conn = Connection::connect(&path).map_err(|e| format!("connect: {e}"))?;
        let (next, done, failed) = (
            Arc::new(AtomicU64::new(0)),
            Arc::clone(&finished),
            Arc::clone(&failures),
        );
        conn.set_message_handler(move |c, m| {
            let seq = next.fetch_add(1, Ordering::SeqCst);
            if m != message(client, seq) {
                failed
                    .lock()
                    .unwrap()
                    .push(format!("client {client}: echo {seq} altered"));
            } else if seq + 1 < messages {
                if let Err(e) = c.send(message(client, seq + 1)) {
                    failed
                        .lock()
                        .unwrap()
                        .push(format!("client {client}: send: {e}"));
                }
            } else {
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        attached.push(
            glue.attach(Arc::new(conn.clone()))
                .map_err(|e| format!("attach a client: {e}"))?,
        );
        conn.send(message(client, 0))
            .map_err(|e| format!("send: {e}"))?;
    }

    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while finished.load(Ordering::SeqCst) < clients && failures.lock().unwrap().is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out with {} of {clients} clients done",
                finished.load(Ordering::SeqCst)
            ));
        }
        event_loop
            .dispatch(Duration::from_millis(50), &mut ())
            .map_err(|e| format!("dispatch: {e}"))?;
    }
    let took = start.elapsed();
    drop(attached);
    server.disconnect();
    let _ = std::fs::remove_file(&path);
    if let Some(failure) = failures.lock().unwrap().first() {
        return Err(failure.clone());
    }
    let total = clients as u64 * messages;
    Ok(format!(
        "calloop: {clients} clients x {messages} echoes checked in {took:.2?} ({:.0} round trips/s)",
        total as f64 / took.as_secs_f64()
    ))
}

fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("calloop echo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
