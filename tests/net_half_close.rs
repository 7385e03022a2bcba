//! End of file from the peer means "no more requests", not "stop writing" (issue 8, defect 1):
//! a server on `MainLoop` answers clients that send one request and `shutdown(Write)` at
//! once, and tells its handler that the peer half-closed. Waits are bounded; nothing sleeps.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::net::{Connection, Server};
use loopglue::MainLoop;

const CLIENTS: usize = 1_000;
const DEADLINE: Duration = Duration::from_secs(60);

fn socket_path(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "loopglue-half-close-{tag}-{}.sock",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

fn wire(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn request(i: usize) -> Vec<u8> {
    format!("request {i}").into_bytes()
}

/// What the server saw.
#[derive(Default)]
struct Seen {
    failed_replies: AtomicUsize,
    read_closed: AtomicUsize,
    reasons: Mutex<Vec<String>>,
}

/// An echo server on a loop running in its own thread; `serve` runs the clients, then the
/// loop is stopped and the server's record returned.
fn with_echo_server(tag: &str, serve: impl FnOnce(&std::path::Path)) -> Arc<Seen> {
    let path = socket_path(tag);
    let main_loop = Arc::new(MainLoop::new().unwrap());
    let server = Server::bind(&path).unwrap();
    let seen = Arc::new(Seen::default());
    let (end_tx, ended) = std::sync::mpsc::channel::<()>();
    let end_tx = Mutex::new(end_tx);
    {
        let (lp, seen) = (Arc::clone(&main_loop), Arc::clone(&seen));
        server.set_new_connection_function(move |conn: Connection| {
            let failed = Arc::clone(&seen);
            conn.set_message_handler(move |conn, message| {
                if conn.send(message).is_err() {
                    failed.failed_replies.fetch_add(1, Ordering::Relaxed);
                }
            });
            let closed = Arc::clone(&seen);
            conn.set_read_closed_handler(move |_| {
                closed.read_closed.fetch_add(1, Ordering::Relaxed);
            });
            let (done, lp2, me) = (Arc::clone(&seen), Arc::clone(&lp), conn.clone());
            let tell = end_tx.lock().unwrap().clone();
            conn.set_disconnect_handler(move |reason| {
                done.reasons.lock().unwrap().push(format!("{reason:?}"));
                let _ = lp2.detach(&me);
                let _ = tell.send(());
            });
            lp.attach(Arc::new(conn)).unwrap();
        });
    }
    main_loop.attach(Arc::new(server.clone())).unwrap();
    let handle = main_loop.handle();
    let runner = {
        let lp = Arc::clone(&main_loop);
        std::thread::spawn(move || lp.run().unwrap())
    };
    serve(&path);
    // Every connection ends (the server closes each once its reply is out); then stop.
    let deadline = std::time::Instant::now() + DEADLINE;
    for _ in 0..CLIENTS {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if ended.recv_timeout(left).is_err() {
            break;
        }
    }
    handle.quit();
    runner.join().unwrap();
    server.disconnect();
    seen
}

#[test]
fn thousand_clients_that_half_close_after_one_request_all_get_their_reply() {
    let mut answered = 0;
    with_echo_server("replies", |path| {
        // Each client sends its request and ends its side at once, so the request and the end
        // of file usually reach the server in one read.
        let clients: Vec<UnixStream> = (0..CLIENTS)
            .map(|i| {
                let mut client = UnixStream::connect(path).unwrap();
                client.write_all(&wire(&request(i))).unwrap();
                client.shutdown(Shutdown::Write).unwrap();
                client
            })
            .collect();
        for (i, mut client) in clients.into_iter().enumerate() {
            client.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut reply = Vec::new();
            // The server closes after flushing the reply: read to its end of file.
            if client.read_to_end(&mut reply).is_ok() && reply == wire(&request(i)) {
                answered += 1;
            }
        }
    });
    assert_eq!(answered, CLIENTS, "every half-closed client got its reply");
}

#[test]
fn the_handler_is_told_the_peer_half_closed_and_the_connection_then_closes_cleanly() {
    const N: usize = CLIENTS;
    let seen = with_echo_server("told", |path| {
        for i in 0..N {
            let mut client = UnixStream::connect(path).unwrap();
            client.write_all(&wire(&request(i))).unwrap();
            client.shutdown(Shutdown::Write).unwrap();
            client.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).unwrap();
            assert_eq!(reply, wire(&request(i)));
        }
    });
    assert_eq!(seen.failed_replies.load(Ordering::Relaxed), 0);
    assert_eq!(seen.read_closed.load(Ordering::Relaxed), N);
    let reasons = seen.reasons.lock().unwrap();
    assert_eq!(reasons.len(), N);
    assert!(reasons.iter().all(|r| r == "PeerClosed"), "{reasons:?}");
}
