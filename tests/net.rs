//! net::Connection and net::Server on the crate's loops: echo on MainLoop and on MockLoop
//! (real fds, virtual time), the write-watch sequence from MockLoop's log, back-pressure,
//! bad input, idle timeout in virtual time, 100 connections x 1,000 messages, and sends from
//! four threads while the loop runs in a fifth. Waits are bounded; nothing sleeps.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::net::{Connection, ConnectionConfig, SendError, Server};
use loopglue::testing::{Harness, MockEvent, MockLoop};
use loopglue::{MainLoop, Source, WatchFlags};

const DEADLINE: Duration = Duration::from_secs(30);

fn run_until(lp: &MainLoop, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < end, "not done within {DEADLINE:?}");
        lp.run_once(Some(Duration::from_millis(20))).unwrap();
    }
}

fn socket_path(tag: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("loopglue-net-{tag}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

type Inbox = Arc<Mutex<Vec<Vec<u8>>>>;

fn collect(conn: &Connection) -> Inbox {
    let inbox: Inbox = Arc::default();
    let sink = Arc::clone(&inbox);
    conn.set_message_handler(move |_, m| sink.lock().unwrap().push(m));
    inbox
}

fn echoing(conn: &Connection) {
    conn.set_message_handler(|c, m| {
        c.send(m).expect("echo");
    });
}

fn reason_slot(conn: &Connection) -> Arc<Mutex<Vec<String>>> {
    let slot: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = Arc::clone(&slot);
    conn.set_disconnect_handler(move |reason| s.lock().unwrap().push(format!("{reason:?}")));
    slot
}

#[test]
fn echo_through_a_server_on_main_loop() {
    let path = socket_path("echo");
    let lp = Arc::new(MainLoop::new().unwrap());
    let server = Server::bind(&path).unwrap();
    let l = Arc::clone(&lp);
    server.set_new_connection_function(move |conn| {
        echoing(&conn);
        l.attach(Arc::new(conn)).unwrap();
    });
    lp.attach(Arc::new(server.clone())).unwrap();
    let clients: Vec<(Connection, Inbox)> = (0..3)
        .map(|_| {
            let c = Connection::connect(&path).unwrap();
            let inbox = collect(&c);
            lp.attach(Arc::new(c.clone())).unwrap();
            (c, inbox)
        })
        .collect();
    for (i, (c, _)) in clients.iter().enumerate() {
        for seq in 0..200u32 {
            c.send(
                [i as u8]
                    .iter()
                    .chain(&seq.to_le_bytes())
                    .copied()
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        }
    }
    run_until(&lp, || {
        clients
            .iter()
            .all(|(_, inbox)| inbox.lock().unwrap().len() == 200)
    });
    for (i, (_, inbox)) in clients.iter().enumerate() {
        for (seq, m) in inbox.lock().unwrap().iter().enumerate() {
            assert_eq!(m[0] as usize, i, "a reply reached the wrong client");
            assert_eq!(u32::from_le_bytes(m[1..5].try_into().unwrap()), seq as u32);
        }
    }
    assert_eq!(server.stats().accepted, 3);
    server.disconnect();
    assert!(!path.exists(), "the socket file is unlinked");
}

#[test]
fn echo_on_mock_loop_with_real_fds_and_virtual_time() {
    let mut mock = MockLoop::new();
    let (a, b) = UnixStream::pair().unwrap();
    let (client, service) = (
        Connection::from_stream(a).unwrap(),
        Connection::from_stream(b).unwrap(),
    );
    echoing(&service);
    let inbox = collect(&client);
    mock.attach(Arc::new(client.clone())).unwrap();
    mock.attach(Arc::new(service.clone())).unwrap();
    for n in 0..50u8 {
        client.send(vec![n; 1 + n as usize * 100]).unwrap();
    }
    assert!(Harness::run_until(
        &mut mock,
        Duration::from_secs(1),
        &mut || { inbox.lock().unwrap().len() == 50 }
    ));
    for (n, m) in inbox.lock().unwrap().iter().enumerate() {
        assert_eq!(*m, vec![n as u8; 1 + n * 100]);
    }
    assert_eq!(mock.now(), Duration::ZERO, "no virtual time was needed");
}

#[test]
fn write_watch_is_on_exactly_while_output_waits() {
    let mock = MockLoop::new();
    let (a, mut peer) = UnixStream::pair().unwrap();
    let conn = Connection::from_stream(a).unwrap();
    mock.attach(Arc::new(conn.clone())).unwrap();
    let id = conn.write_watch().id();
    // Small sends go out directly: the write watch stays off.
    conn.send(vec![1; 10]).unwrap();
    // Fill the socket until a send has to queue.
    let big = vec![7u8; 64 * 1024];
    let mut sent = 10 + 4;
    while !conn.has_messages_to_send() {
        conn.send(big.clone()).unwrap();
        sent += big.len() + 4;
    }
    // The peer reads everything; the loop writes the rest as the socket drains.
    peer.set_nonblocking(true).unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..10_000 {
        if got == sent {
            break;
        }
        mock.poll_fds();
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
        }
    }
    assert_eq!(got, sent, "every queued byte arrived");
    let sequence: Vec<MockEvent> = mock
        .log()
        .into_iter()
        .filter(|e| {
            matches!(e,
                MockEvent::WatchAdded { id: i, .. } | MockEvent::WatchToggled { id: i, .. } if *i == id)
        })
        .collect();
    assert_eq!(
        sequence,
        [
            MockEvent::WatchAdded {
                id,
                fd: conn.write_watch().fd().unwrap(),
                flags: WatchFlags::WRITABLE,
                enabled: false
            },
            MockEvent::WatchToggled { id, enabled: true },
            MockEvent::WatchToggled { id, enabled: false },
        ]
    );
    assert_eq!(conn.stats().write_watch_enabled, 1);
}

#[test]
fn back_pressure_queue_cap_and_slow_consumer() {
    let mock = MockLoop::new();
    let (a, b) = UnixStream::pair().unwrap();
    let writer =
        Connection::from_stream_with(a, ConnectionConfig::new().max_outbound_bytes(64 * 1024))
            .unwrap();
    let reader =
        Connection::from_stream_with(b, ConnectionConfig::new().max_inbound_frames(4)).unwrap();
    mock.attach(Arc::new(writer.clone())).unwrap();
    // The reader's glue only, and no handler yet: nobody takes its messages, so its inbound
    // queue fills.
    reader
        .set_watch_functions(Some(mock.watch_functions()))
        .map_err(|e| e.into_error())
        .unwrap();
    let mut accepted = 0u32;
    let refusal = loop {
        match writer.send([accepted.to_le_bytes().to_vec(), vec![0; 1020]].concat()) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        mock.poll_fds();
        assert!(accepted < 1_000_000, "the cap never bit");
    };
    assert!(
        matches!(refusal, SendError::QueueFull { cap: 65536, .. }),
        "{refusal:?}"
    );
    let read_id = reader.read_watch().id();
    assert!(mock.log().contains(&MockEvent::WatchToggled {
        id: read_id,
        enabled: false
    }));
    // The application catches up: dispatching re-enables reading, and everything accepted
    // before the refusal arrives, in order.
    let inbox = collect(&reader);
    for _ in 0..100_000 {
        if inbox.lock().unwrap().len() == accepted as usize {
            break;
        }
        reader.dispatch();
        mock.poll_fds();
    }
    let inbox = inbox.lock().unwrap();
    assert_eq!(inbox.len(), accepted as usize, "nothing dropped");
    for (i, m) in inbox.iter().enumerate() {
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), i as u32);
    }
    assert!(mock.log().contains(&MockEvent::WatchToggled {
        id: read_id,
        enabled: true
    }));
}

#[test]
fn idle_timeout_in_virtual_time_restarts_on_activity() {
    let mock = MockLoop::new();
    let (a, mut peer) = UnixStream::pair().unwrap();
    let conn = Connection::from_stream_with(
        a,
        ConnectionConfig::new().idle_timeout(Duration::from_secs(4)),
    )
    .unwrap();
    let reasons = reason_slot(&conn);
    let inbox = collect(&conn);
    mock.attach(Arc::new(conn.clone())).unwrap();
    // Checked every second (a quarter of the timeout).
    mock.advance(Duration::from_millis(3500));
    assert!(conn.is_connected());
    peer.write_all(&[1, 0, 0, 0, 42]).unwrap(); // one frame: activity at t = 3.5 s
    mock.poll_fds();
    assert_eq!(*inbox.lock().unwrap(), [vec![42u8]]);
    mock.advance(Duration::from_millis(4400)); // t = 7.9 s: 4.4 s since the activity
    assert!(conn.is_connected(), "activity restarted the count");
    mock.advance(Duration::from_millis(100)); // t = 8 s: four silent periods since t = 4 s
    assert!(!conn.is_connected());
    assert_eq!(*reasons.lock().unwrap(), ["IdleTimeout"]);
}

#[test]
fn bad_input_is_a_clear_disconnect_on_main_loop() {
    let lp = MainLoop::new().unwrap();
    // A frame over the maximum: refused from its header.
    let (a, mut peer) = UnixStream::pair().unwrap();
    let conn =
        Connection::from_stream_with(a, ConnectionConfig::new().max_frame_size(1024)).unwrap();
    let reasons = reason_slot(&conn);
    let source: Arc<dyn Source> = Arc::new(conn.clone());
    lp.attach(Arc::clone(&source)).unwrap();
    peer.write_all(&u32::MAX.to_le_bytes()).unwrap();
    run_until(&lp, || !reasons.lock().unwrap().is_empty());
    assert_eq!(
        *reasons.lock().unwrap(),
        ["FrameTooLarge { len: 4294967295, max: 1024 }"]
    );
    assert!(matches!(conn.send(vec![1]), Err(SendError::Disconnected)));

    // End of file inside a frame.
    let (a, mut peer) = UnixStream::pair().unwrap();
    let conn = Connection::from_stream(a).unwrap();
    let reasons = reason_slot(&conn);
    lp.attach(Arc::new(conn.clone())).unwrap();
    peer.write_all(&[10, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(peer);
    run_until(&lp, || !reasons.lock().unwrap().is_empty());
    assert_eq!(
        *reasons.lock().unwrap(),
        ["TruncatedFrame { have: 7, need: 14 }"]
    );
    assert_eq!(
        lp.registered_fds(),
        0,
        "watches removed before the fds closed"
    );
}

#[test]
fn hundred_connections_thousand_messages_nothing_lost_or_reordered() {
    let lp = MainLoop::new().unwrap();
    let mut clients = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..100 {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, service) = (
            Connection::from_stream(a).unwrap(),
            Connection::from_stream(b).unwrap(),
        );
        echoing(&service);
        let inbox = collect(&client);
        lp.attach(Arc::new(client.clone())).unwrap();
        lp.attach(Arc::new(service.clone())).unwrap();
        clients.push((client, inbox));
        keep.push(service);
    }
    for (client, _) in &clients {
        for seq in 0..1_000u32 {
            client.send(seq.to_le_bytes().to_vec()).unwrap();
        }
    }
    run_until(&lp, || {
        clients
            .iter()
            .all(|(_, inbox)| inbox.lock().unwrap().len() == 1_000)
    });
    for (_, inbox) in &clients {
        let got: Vec<u32> = inbox
            .lock()
            .unwrap()
            .iter()
            .map(|m| u32::from_le_bytes(m[..].try_into().unwrap()))
            .collect();
        assert_eq!(got, (0..1_000).collect::<Vec<_>>());
    }
}

#[test]
fn sends_from_four_threads_while_the_loop_runs_in_a_fifth() {
    let lp = Arc::new(MainLoop::new().unwrap());
    let (a, b) = UnixStream::pair().unwrap();
    let (sender, receiver) = (
        Connection::from_stream(a).unwrap(),
        Connection::from_stream(b).unwrap(),
    );
    let (done_tx, done_rx) = mpsc::channel();
    let got: Arc<Mutex<Vec<(u8, u32)>>> = Arc::default();
    let g = Arc::clone(&got);
    let done_tx = Mutex::new(Some(done_tx));
    receiver.set_message_handler(move |_, m| {
        let mut got = g.lock().unwrap();
        got.push((m[0], u32::from_le_bytes(m[1..5].try_into().unwrap())));
        if got.len() == 4_000 {
            if let Some(tx) = done_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    });
    lp.attach(Arc::new(sender.clone())).unwrap();
    lp.attach(Arc::new(receiver.clone())).unwrap();
    let handle = lp.handle();
    let l = Arc::clone(&lp);
    let runner = std::thread::spawn(move || l.run().unwrap());

    let retries = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4u8)
        .map(|t| {
            let (conn, retries) = (sender.clone(), Arc::clone(&retries));
            std::thread::spawn(move || {
                for seq in 0..1_000u32 {
                    let message: Vec<u8> = [t].iter().chain(&seq.to_le_bytes()).copied().collect();
                    // A full queue is a clear refusal: back off by yielding and retry.
                    while let Err(SendError::QueueFull { .. }) = conn.send(message.clone()) {
                        retries.fetch_add(1, Ordering::Relaxed);
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    done_rx
        .recv_timeout(DEADLINE)
        .expect("all 4,000 messages arrived");
    handle.quit();
    runner.join().unwrap();
    let got = got.lock().unwrap();
    for t in 0..4u8 {
        let order: Vec<u32> = got
            .iter()
            .filter(|(x, _)| *x == t)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(order, (0..1_000).collect::<Vec<_>>(), "thread {t}'s order");
    }
}

#[test]
fn server_drops_a_trickling_and_a_silent_client_by_default_in_virtual_time() {
    let path = socket_path("slowloris");
    let mock = MockLoop::new();
    let server = Server::bind(&path).unwrap();
    let ended: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
    {
        let (mock2, ended) = (mock.clone(), Arc::clone(&ended));
        server.set_new_connection_function(move |conn| {
            let (ended, clock) = (Arc::clone(&ended), mock2.clone());
            conn.set_disconnect_handler(move |reason| {
                ended
                    .lock()
                    .unwrap()
                    .push((format!("{reason:?}"), clock.now()));
            });
            echoing(&conn);
            mock2.attach(Arc::new(conn)).unwrap();
        });
    }
    mock.attach(Arc::new(server.clone())).unwrap();
    // A slowloris: announces a 1,000-byte frame and sends a byte every 5 s, so it is never
    // idle. A silent client: connects and says nothing. A good client, polite but slow:
    // one whole message a minute.
    let mut trickler = UnixStream::connect(&path).unwrap();
    trickler.write_all(&1000u32.to_le_bytes()).unwrap();
    let silent = UnixStream::connect(&path).unwrap();
    let mut polite = UnixStream::connect(&path).unwrap();
    mock.poll_fds();
    mock.poll_fds();
    assert_eq!(server.stats().accepted, 3);
    for second in 1..=200u64 {
        if second % 5 == 0 && second < 100 {
            let _ = trickler.write_all(&[0]);
        }
        if second % 60 == 0 {
            polite.write_all(&[1, 0, 0, 0, 9]).unwrap();
        }
        mock.advance(Duration::from_secs(1));
        mock.poll_fds();
    }
    let ended = ended.lock().unwrap().clone();
    assert_eq!(ended.len(), 2, "{ended:?}");
    // Frame timeout 30 s, checked every 7.5 s: dropped after 30 to 37.5 s in its frame.
    let (reason, at) = &ended[0];
    assert_eq!(reason, "FrameTimeout");
    assert!(
        (Duration::from_secs(30)..=Duration::from_millis(38_500)).contains(at),
        "{at:?}"
    );
    // Idle timeout 120 s: dropped after 120 to 127.5 s of silence.
    let (reason, at) = &ended[1];
    assert_eq!(reason, "IdleTimeout");
    assert!(
        (Duration::from_secs(120)..=Duration::from_millis(128_500)).contains(at),
        "{at:?}"
    );
    drop(silent);
    server.disconnect();
}
