//! Connections promised to their loop's thread (`Connection::assume_loop_thread_only`):
//! disconnects on the loop's thread in every shape the bridge meets them, and a broken
//! promise stopped before a watch handler can read a freed `DBusWatch`. (The peer and daemon
//! suites run every scenario in both modes as well.) Needs the `dbus` feature.

mod dbus_support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use dbus_support::{confine, every_mode, open_private, payload, run_until, Peer, DEADLINE};
use loopglue::dbus::{Connection, Server};
use loopglue::testing::MockLoop;
use loopglue::{MainLoop, Source};

const TICK: Option<Duration> = Some(Duration::from_millis(200));

/// A server on `main_loop` whose accepted connections answer through a [`Peer`] filter.
fn serve(main_loop: &Arc<MainLoop>, confined: bool) -> (Server, Arc<Mutex<Vec<Peer>>>) {
    let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (sink, looper) = (Arc::clone(&accepted), Arc::downgrade(main_loop));
    server.set_new_connection_function(move |conn: Connection| {
        confine(&conn, confined);
        looper
            .upgrade()
            .expect("loop alive")
            .attach(Arc::new(conn.clone()))
            .expect("attach accepted");
        sink.lock().unwrap().push(Peer::new(conn));
    });
    main_loop
        .attach(Arc::new(server.clone()))
        .expect("attach server");
    (server, accepted)
}

fn step(main_loop: &MainLoop) -> impl FnMut() + '_ {
    move || {
        main_loop.run_once(TICK).expect("run_once");
    }
}

/// The peer closes while the client has output queued (its write watch enabled): the hang-up
/// reaches the fd's read and write watches in one batch, the first handler's I/O disconnects
/// and frees both `DBusWatch`es on the loop's thread, and the second is never handled.
#[test]
fn a_hangup_with_output_queued_frees_both_watches_on_the_loop_thread() {
    every_mode(|confined| {
        let main_loop = Arc::new(MainLoop::new().unwrap());
        let (server, accepted) = serve(&main_loop, confined);
        let client = Peer::new(open_private(&server.address(), confined));
        main_loop.attach(Arc::new(client.conn.clone())).unwrap();
        run_until("authentication", step(&main_loop), || {
            client.authenticated() && accepted.lock().unwrap().len() == 1
        });
        // The server side stops reading, so a 16 MiB call fills the socket and libdbus
        // enables the client's write watch.
        let server_side = accepted.lock().unwrap().pop().unwrap();
        main_loop.detach(&server_side.conn).unwrap();
        let serial = client.echo(None, &payload(16 << 20, 5));
        main_loop.run_once(Some(Duration::ZERO)).unwrap();
        drop(server_side); // closes the server's end with the call half read
        run_until("the client to see the hang-up", step(&main_loop), || {
            client.seen.lock().unwrap().disconnected
        });
        assert!(!client.conn.is_connected());
        assert!(client.reply(serial).is_none());
        main_loop.detach(&client.conn).unwrap();
        main_loop.detach(&server).unwrap();
        assert_eq!(main_loop.registered_fds(), 0, "every watch was removed");
    });
}

/// A connection closed from inside its own message handler (on the loop's thread, inside
/// `dbus_connection_dispatch`): both ends see the disconnect.
#[test]
fn a_connection_closed_from_its_own_message_handler() {
    every_mode(|confined| {
        let main_loop = Arc::new(MainLoop::new().unwrap());
        let (server, accepted) = serve(&main_loop, confined);
        let client = Peer::new(open_private(&server.address(), confined));
        main_loop.attach(Arc::new(client.conn.clone())).unwrap();
        let serial = client.ping(None, 1);
        run_until("a first reply", step(&main_loop), || {
            client.reply(serial).is_some()
        });
        let hangup = client.hangup(None);
        run_until("both ends to see the disconnect", step(&main_loop), || {
            client.seen.lock().unwrap().disconnected
                && accepted.lock().unwrap()[0]
                    .seen
                    .lock()
                    .unwrap()
                    .disconnected
        });
        assert!(!client.conn.is_connected());
        assert_eq!(client.reply(hangup), None, "never answered");
        let server_side = accepted.lock().unwrap().pop().unwrap();
        main_loop.detach(&server_side.conn).unwrap();
        main_loop.detach(&client.conn).unwrap();
        main_loop.detach(&server).unwrap();
        assert_eq!(main_loop.registered_fds(), 0);
    });
}

/// Every handle of one bridge shares the promise.
#[test]
fn the_promise_belongs_to_the_bridge() {
    let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
    let main_loop = Arc::new(MainLoop::new().unwrap());
    main_loop.attach(Arc::new(server.clone())).unwrap();
    let opening = std::thread::spawn({
        let address = server.address();
        move || Connection::open_private(&address).expect("open")
    });
    run_until("the client to connect", step(&main_loop), || {
        opening.is_finished()
    });
    let client = opening.join().unwrap();
    let clone = client.clone();
    assert!(!clone.is_loop_thread_only());
    confine(&client, true);
    assert!(clone.is_loop_thread_only());
}

/// Set in the child process of the next test.
const CHILD: &str = "LOOPGLUE_TEST_BREAK_THE_PROMISE";
const BREAKS_THE_PROMISE: &str = "a_disconnect_on_another_thread_inside_a_watch_handler_aborts";

/// A broken promise: while the loop's thread is inside `dbus_watch_handle` (held in the
/// dispatch-status function libdbus calls at its end, after releasing its lock), another
/// thread closes the connection and libdbus frees its watches. The bridge must stop the
/// process there — before `dbus_free` — with a message, since in general the handler could
/// still be about to read the watch. Run in a child process, which must die of `SIGABRT`.
#[test]
fn a_disconnect_on_another_thread_inside_a_watch_handler_aborts() {
    if std::env::var_os(CHILD).is_some() {
        break_the_promise();
        return;
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            BREAKS_THE_PROMISE,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test binary again");
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the handler reached its window"),
        "the scenario did not get where it should:\n{stderr}"
    );
    assert_eq!(
        output.status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "the child was not aborted ({:?}):\n{stderr}",
        output.status
    );
    assert!(
        stderr.contains("loopglue: fatal") && stderr.contains("assume_loop_thread_only"),
        "no explanation on stderr:\n{stderr}"
    );
}

/// The child's side of the test above.
fn break_the_promise() {
    // The server side, on a loop of its own thread.
    let (ready, address) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    let (accepted_tx, accepted_rx) = mpsc::channel::<Connection>();
    std::thread::spawn(move || {
        let main_loop = Arc::new(MainLoop::new().unwrap());
        let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
        let looper = Arc::downgrade(&main_loop);
        server.set_new_connection_function(move |conn: Connection| {
            looper
                .upgrade()
                .unwrap()
                .attach(Arc::new(conn.clone()))
                .unwrap();
            let _ = accepted_tx.send(conn);
        });
        main_loop.attach(Arc::new(server.clone())).unwrap();
        ready.send(server.address()).unwrap();
        while !stopping.load(Ordering::Acquire) {
            main_loop.run_once(Some(Duration::from_millis(50))).unwrap();
        }
    });
    let address = address.recv().unwrap();

    // The client, promised to this thread, on a mock loop this thread pumps.
    let client = open_private(&address, true);
    let server_side = Peer::new(accepted_rx.recv_timeout(DEADLINE).unwrap());
    let mock = MockLoop::new();
    mock.attach(Arc::new(client.clone())).unwrap();

    // The glue's status function, replaced: the first call (from libdbus's wakeup, lock
    // held) dispatches — deferred inside a call-out, so the glue now believes `Complete`;
    // the second (from the status function libdbus calls at the end of
    // `dbus_watch_handle`, lock released) waits for the other thread.
    let (inside, inside_rx) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let dispatcher = client.clone();
    client.set_dispatch_status_function(Some(Box::new(move |_| {
        match counted.fetch_add(1, Ordering::SeqCst) {
            0 => {
                let _ = dispatcher.dispatch();
            }
            1 => {
                eprintln!("the handler reached its window");
                let _ = inside.send(());
                let _ = go_rx.lock().unwrap().recv_timeout(DEADLINE);
            }
            _ => {}
        }
    })));

    // The other thread: closes the connection while the handler waits.
    let closer = client.clone();
    std::thread::spawn(move || {
        if inside_rx.recv_timeout(DEADLINE).is_ok() {
            closer.close(); // frees the watches: the bridge aborts here
            let _ = go.send(());
        }
    });

    server_side.signal("Poke");
    run_until(
        "the poke to be read",
        || {
            mock.poll_fds();
        },
        || calls.load(Ordering::SeqCst) >= 2,
    );
    // Only without the bridge's check does the child get here, and exit normally.
    stop.store(true, Ordering::Release);
}
