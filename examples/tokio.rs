//! Echo through the tokio adapter: pairs of `net::Connection`s (a client and a service on
//! each socketpair) run inside a tokio runtime, each in its own driver task. Every client
//! sends numbered messages one at a time and checks each echo; the example exits non-zero if
//! a reply is wrong or missing.
//!
//! ```sh
//! cargo run --features tokio --example tokio
//! cargo run --release --features tokio --example tokio -- 100 10000 multi   # clients, messages each, runtime
//! ```

use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::tokio::attach;
use loopglue::net::Connection;

fn message(client: u64, seq: u64) -> Vec<u8> {
    [
        &client.to_le_bytes()[..],
        &seq.to_le_bytes(),
        b"tokio echo payload",
    ]
    .concat()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clients = args.first().and_then(|a| a.parse().ok()).unwrap_or(4u64);
    let messages = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000u64)
        .max(1);
    let multi = args.get(2).is_some_and(|a| a == "multi");
    let runtime = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let outcome = runtime
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run(clients, messages)));
    match outcome {
        Ok(took) => {
            let kind = if multi {
                "multi-thread"
            } else {
                "current-thread"
            };
            println!(
                "tokio ({kind}): {clients} clients x {messages} messages echoed and checked in \
                 {took:.2?}"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokio echo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(clients: u64, messages: u64) -> Result<Duration, String> {
    let (finished, mut results) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let mut attachments = Vec::new();
    let mut starters = Vec::new();
    for c in 0..clients {
        let (a, b) = UnixStream::pair().map_err(|e| e.to_string())?;
        let client = Connection::from_stream(a).map_err(|e| e.to_string())?;
        let service = Connection::from_stream(b).map_err(|e| e.to_string())?;
        service.set_message_handler(|conn, m| {
            let _ = conn.send(m);
        });
        let finished = finished.clone();
        let mut next = 0u64;
        client.set_message_handler(move |conn, reply| {
            let seq = next;
            next += 1;
            if reply != message(c, seq) {
                let _ = finished.send(Err(format!("client {c}: reply {seq} did not match")));
            } else if seq + 1 < messages {
                let _ = conn.send(message(c, seq + 1));
            } else {
                let _ = finished.send(Ok(()));
            }
        });
        attachments.push(attach(Arc::new(client.clone())).map_err(|e| e.to_string())?);
        attachments.push(attach(Arc::new(service)).map_err(|e| e.to_string())?);
        starters.push((c, client));
    }
    let start = Instant::now();
    for (c, client) in &starters {
        client.send(message(*c, 0)).map_err(|e| e.to_string())?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for done in 0..clients {
        match tokio::time::timeout_at(deadline, results.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            Ok(None) => return Err("the clients went away".into()),
            Err(_) => return Err(format!("timed out with {done} of {clients} clients done")),
        }
    }
    Ok(start.elapsed())
}
