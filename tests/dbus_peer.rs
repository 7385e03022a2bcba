//! The libdbus bridge peer to peer, no daemon: a `DBusServer` and clients on every loop in
//! `dbus_support::loops_for(mode)` (ping-pong, signals, disconnect, 16 MiB, a call pending at
//! disconnect, detach and reattach), and what only `MainLoop` and `MockLoop` can show (glue
//! that misbehaves inside libdbus's call-outs, virtual time) — each in both modes. Needs the
//! `dbus` feature (system libdbus, or `dbus-vendored`).

mod dbus_support;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dbus_support::{
    confine, every_mode, loops_for, open_private, payload, run_until, Peer, Reply, TestLoop,
};
use loopglue::dbus::{Connection, Server};
use loopglue::{DispatchStatus, MainLoop, Source, Watch, WatchFunctions};

const TICK: Option<Duration> = Some(Duration::from_millis(200));

/// A server on `main_loop` whose accepted connections answer through a [`Peer`] filter.
fn serve(main_loop: &Arc<MainLoop>, confined: bool) -> (Server, Arc<Mutex<Vec<Peer>>>) {
    let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (sink, looper) = (Arc::clone(&accepted), Arc::downgrade(main_loop));
    server.set_new_connection_function(move |conn: Connection| {
        confine(&conn, confined);
        let looper = looper.upgrade().expect("loop alive");
        looper
            .attach(Arc::new(conn.clone()))
            .expect("attach accepted");
        sink.lock().unwrap().push(Peer::new(conn));
    });
    main_loop
        .attach(Arc::new(server.clone()))
        .expect("attach server");
    (server, accepted)
}

fn connect(main_loop: &MainLoop, server: &Server, confined: bool) -> Peer {
    let client = Peer::new(open_private(&server.address(), confined));
    main_loop
        .attach(Arc::new(client.conn.clone()))
        .expect("attach client");
    client
}

fn step(main_loop: &MainLoop) -> impl FnMut() + '_ {
    move || {
        main_loop.run_once(TICK).expect("run_once");
    }
}

/// A server on `lp` whose accepted connections answer through a [`Peer`] filter, attached
/// from inside the server's new-connection function (on the loop's thread, or a worker's).
fn serve_on(lp: &dyn TestLoop, confined: bool) -> (Server, Arc<Mutex<Vec<Peer>>>) {
    let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (sink, attach) = (Arc::clone(&accepted), lp.attacher());
    server.set_new_connection_function(move |conn: Connection| {
        confine(&conn, confined);
        // The filter first: on a loop with threads of its own the connection may be
        // dispatched as soon as it is attached.
        let peer = Peer::new(conn.clone());
        attach(Arc::new(conn));
        sink.lock().unwrap().push(peer);
    });
    lp.attach(Arc::new(server.clone()));
    (server, accepted)
}

fn connect_on(lp: &dyn TestLoop, server: &Server, confined: bool) -> Peer {
    let client = Peer::new(open_private(&server.address(), confined));
    lp.attach(Arc::new(client.conn.clone()));
    client
}

#[test]
fn ping_pong_signals_and_disconnect_on_every_loop() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let lp = make();
            let (server, accepted) = serve_on(&*lp, confined);
            let client = connect_on(&*lp, &server, confined);
            run_until(
                "authentication",
                || lp.turn(),
                || client.authenticated() && accepted.lock().unwrap().len() == 1,
            );

            // Method call ping-pong, each answer checked.
            for n in 0..2000u32 {
                let serial = client.ping(None, n);
                run_until("a reply", || lp.turn(), || client.reply(serial).is_some());
                assert_eq!(client.reply(serial), Some(Reply::Number(n + 1)), "{name}");
            }
            assert_eq!(
                accepted.lock().unwrap()[0].seen.lock().unwrap().calls,
                2000,
                "{name}"
            );

            // Signals both ways.
            client.signal("FromClient");
            accepted.lock().unwrap()[0].signal("FromServer");
            run_until(
                "signals",
                || lp.turn(),
                || {
                    client.seen.lock().unwrap().signals == ["FromServer"]
                        && accepted.lock().unwrap()[0].seen.lock().unwrap().signals
                            == ["FromClient"]
                },
            );

            // Disconnect: the client closes; both ends see Disconnected, the glue loses the
            // watches.
            client.conn.close();
            run_until(
                "disconnect seen by both",
                || lp.turn(),
                || {
                    client.seen.lock().unwrap().disconnected
                        && accepted.lock().unwrap()[0]
                            .seen
                            .lock()
                            .unwrap()
                            .disconnected
                },
            );
            lp.detach(&client.conn);
            let server_side = accepted.lock().unwrap().pop().unwrap();
            lp.detach(&server_side.conn);
            lp.detach(&server);
            assert_eq!(lp.registered_fds(), 0, "{name}: every watch was removed");
            assert!(!client.conn.has_watch_functions(), "{name}");
            assert!(!server_side.conn.has_watch_functions(), "{name}");
        }
    });
}

#[test]
fn sixteen_mib_both_ways_intact() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let lp = make();
            let (server, accepted) = serve_on(&*lp, confined);
            let client = connect_on(&*lp, &server, confined);
            let big = payload(16 << 20, 7);
            let serial = client.echo(None, &big);
            run_until(
                "the 16 MiB echo",
                || lp.turn(),
                || client.reply(serial).is_some(),
            );
            assert!(
                client.reply(serial) == Some(Reply::Bytes(big)),
                "{name}: payload corrupted"
            );
            assert_eq!(accepted.lock().unwrap().len(), 1, "{name}");
        }
    });
}

/// libdbus 1.14: a call pending when the connection drops gets no notification; libdbus
/// queues a NoReply error for it, which — the call already gone from its table — reaches the
/// filters, followed by Disconnected. This pins down what really happens, on every loop.
#[test]
fn call_pending_at_disconnect_reaches_the_filters_not_the_notify() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let lp = make();
            let (server, accepted) = serve_on(&*lp, confined);
            let client = connect_on(&*lp, &server, confined);
            let serial = client.stall(None);
            run_until(
                "the server to hold the call",
                || lp.turn(),
                || {
                    accepted
                        .lock()
                        .unwrap()
                        .first()
                        .is_some_and(|p| p.seen.lock().unwrap().stalled == 1)
                },
            );
            // The server drops the connection without answering.
            let server_side = accepted.lock().unwrap().pop().unwrap();
            lp.detach(&server_side.conn);
            drop(server_side); // the bridge owns accepted connections: this closes it
            run_until(
                "the client to see the disconnect",
                || lp.turn(),
                || client.seen.lock().unwrap().disconnected,
            );
            let seen = client.seen.lock().unwrap();
            assert_eq!(
                seen.replies.get(&serial),
                None,
                "{name}: the pending call's notify never ran"
            );
            assert_eq!(
                seen.filtered_errors,
                [("org.freedesktop.DBus.Error.NoReply".to_string(), serial)],
                "{name}: the NoReply error went to the filters"
            );
        }
    });
}

/// C11 for a libdbus source: a glue whose `toggled` dispatches. The server answers `Echo`
/// from its filter, inside `dbus_connection_dispatch`; the 4 MiB reply fills the socket while a second call waits, and and
/// toggles the write watch from inside `dbus_connection_send`, with libdbus's lock held and
/// its dispatch acquired. A `dispatch()` from there waits forever for the dispatch that is
/// running on the same thread — unless the bridge defers it.
struct DispatchingGlue {
    inner: Box<dyn WatchFunctions>,
    source: Weak<Connection>,
    dispatched: Arc<AtomicUsize>,
}

impl WatchFunctions for DispatchingGlue {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        self.inner.add(watch)
    }
    fn remove(&mut self, watch: &Watch) {
        self.inner.remove(watch);
    }
    fn toggled(&mut self, watch: &Watch) {
        self.inner.toggled(watch);
        if let Some(source) = self.source.upgrade() {
            // Also a `handle` from inside the call-out, as a careless edge glue would.
            watch.handle(loopglue::WatchFlags::WRITABLE);
            while source.dispatch() == DispatchStatus::DataRemains {}
            self.dispatched.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn a_glue_that_dispatches_from_toggled_does_not_hang() {
    every_mode(|confined| {
        let (done, finished) = std::sync::mpsc::channel();
        let dispatched = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&dispatched);
        // On a thread of its own, so that a hang fails the test instead of stalling it.
        std::thread::spawn(move || {
            let main_loop = Arc::new(MainLoop::new().unwrap());
            let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
            let kept = Arc::new(Mutex::new(Vec::new()));
            let (sink, looper) = (Arc::clone(&kept), Arc::downgrade(&main_loop));
            server.set_new_connection_function(move |conn: Connection| {
                confine(&conn, confined);
                let looper = looper.upgrade().expect("loop alive");
                let source = Arc::new(conn.clone());
                looper.attach(source.clone()).expect("attach accepted");
                // Swap MainLoop's watch glue for the careless one, which still registers with
                // the same loop.
                source
                    .set_watch_functions(None)
                    .map_err(|e| e.into_error())
                    .unwrap();
                source
                    .set_watch_functions(Some(Box::new(DispatchingGlue {
                        inner: looper.watch_functions(),
                        source: Arc::downgrade(&source),
                        dispatched: Arc::clone(&counter),
                    })))
                    .map_err(|e| e.into_error())
                    .unwrap();
                sink.lock().unwrap().push((Peer::new(conn), source));
            });
            main_loop
                .attach(Arc::new(server.clone()))
                .expect("attach server");
            let client = connect(&main_loop, &server, confined);
            // Two calls queued at the server: while the first one's reply is being sent, the
            // second one is waiting, so a nested dispatch would have work to take.
            let big = payload(4 << 20, 3);
            let first = client.echo(None, &big);
            let second = client.ping(None, 1);
            run_until("both replies", step(&main_loop), || {
                client.reply(first).is_some() && client.reply(second).is_some()
            });
            let _ = done.send(
                client.reply(first) == Some(Reply::Bytes(big))
                    && client.reply(second) == Some(Reply::Number(2)),
            );
        });
        let intact = finished
            .recv_timeout(dbus_support::DEADLINE)
            .expect("hung inside libdbus: dispatch from toggled re-entered the connection");
        assert!(intact);
        assert!(
            dispatched.load(Ordering::Relaxed) > 0,
            "the glue's toggled ran and dispatched"
        );
    });
}

/// Detaching leaves libdbus with no functions (so the connection may be closed), and
/// another loop of the same kind takes the connection over.
#[test]
fn detach_restores_libdbus_to_no_functions_and_reattach_works() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let lp = make();
            let (server, _accepted) = serve_on(&*lp, confined);
            let client = connect_on(&*lp, &server, confined);
            run_until("authentication", || lp.turn(), || client.authenticated());
            lp.detach(&client.conn);
            assert!(!client.conn.has_watch_functions(), "{name}");
            // Another loop takes it over.
            let second = make();
            second.attach(Arc::new(client.conn.clone()));
            let serial = client.ping(None, 41);
            run_until(
                "a reply across two loops",
                || {
                    lp.turn_counting(Duration::from_millis(5));
                    second.turn_counting(Duration::from_millis(5));
                },
                || client.reply(serial).is_some(),
            );
            assert_eq!(client.reply(serial), Some(Reply::Number(42)), "{name}");
        }
    });
}

/// The bridge on `MockLoop`: real sockets, virtual time. libdbus's objects reach the glue one
/// to one (two watches on the client's socket; a 25 s timeout per pending call, removed when
/// the reply comes), and a pending call whose peer never answers gets its NoReply through
/// `dbus_timeout_handle` once 25 s of virtual time pass — no waiting.
#[test]
fn on_mock_loop_objects_map_one_to_one_and_a_call_times_out_in_virtual_time() {
    every_mode(|confined| {
        use loopglue::testing::{MockEvent, MockLoop};
        let mock = Arc::new(MockLoop::new());
        let server = Server::listen("unix:tmpdir=/tmp").expect("listen");
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (sink, looper) = (Arc::clone(&accepted), Arc::downgrade(&mock));
        server.set_new_connection_function(move |conn: Connection| {
            confine(&conn, confined);
            looper
                .upgrade()
                .unwrap()
                .attach(Arc::new(conn.clone()))
                .unwrap();
            sink.lock().unwrap().push(Peer::new(conn));
        });
        mock.attach(Arc::new(server.clone())).unwrap();
        let client = Peer::new(open_private(&server.address(), confined));
        {
            mock.take_log();
            mock.attach(Arc::new(client.conn.clone())).unwrap();
            let log = mock.take_log();
            let watches: Vec<_> = log
                .iter()
                .filter_map(|e| match e {
                    MockEvent::WatchAdded { fd, flags, .. } => Some((*fd, *flags)),
                    _ => None,
                })
                .collect();
            assert_eq!(watches.len(), 2, "a read and a write DBusWatch: {log:?}");
            assert_eq!(watches[0].0, watches[1].0, "on one socket");
            let flags: Vec<_> = watches.iter().map(|w| w.1).collect();
            assert!(flags.contains(&loopglue::WatchFlags::READABLE));
            assert!(flags.contains(&loopglue::WatchFlags::WRITABLE));
        }
        let pump = || {
            mock.poll_fds();
        };
        run_until("authentication", pump, || {
            client.authenticated() && accepted.lock().unwrap().len() == 1
        });

        // A call that is answered: its timeout comes and goes.
        mock.take_log();
        let serial = client.ping(None, 1);
        run_until("the reply", pump, || client.reply(serial).is_some());
        assert_eq!(client.reply(serial), Some(Reply::Number(2)));
        let log = mock.take_log();
        let added: Vec<_> = log
            .iter()
            .filter_map(|e| match e {
                MockEvent::TimeoutAdded {
                    id,
                    interval,
                    enabled: true,
                } => Some((*id, *interval)),
                _ => None,
            })
            .collect();
        assert_eq!(
            added.len(),
            1,
            "one DBusTimeout for the pending call: {log:?}"
        );
        assert_eq!(
            added[0].1,
            Duration::from_secs(25),
            "libdbus's default reply timeout"
        );
        assert!(
            log.iter()
                .any(|e| matches!(e, MockEvent::TimeoutRemoved { id } if *id == added[0].0)),
            "removed when the reply arrived: {log:?}"
        );

        // A call that is never answered: 25 s of virtual time later, libdbus's timeout handler
        // completes it with NoReply, through the pending call's notify this time.
        let serial = client.stall(None);
        run_until("the server to hold the call", pump, || {
            accepted.lock().unwrap()[0].seen.lock().unwrap().stalled == 1
        });
        assert_eq!(client.reply(serial), None);
        mock.advance(Duration::from_secs(24));
        assert_eq!(client.reply(serial), None, "not before its time");
        mock.advance(Duration::from_secs(1));
        run_until("the NoReply", pump, || client.reply(serial).is_some());
        assert_eq!(
            client.reply(serial),
            Some(Reply::Error("org.freedesktop.DBus.Error.NoReply".into()))
        );
        assert!(client.conn.is_connected());
    });
}

/// A glue whose `toggled` panics once, after doing its job.
struct PanickyGlue {
    inner: Box<dyn WatchFunctions>,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl WatchFunctions for PanickyGlue {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        self.inner.add(watch)
    }
    fn remove(&mut self, watch: &Watch) {
        self.inner.remove(watch);
    }
    fn toggled(&mut self, watch: &Watch) {
        self.inner.toggled(watch);
        if self.armed.swap(false, Ordering::AcqRel) {
            panic!("glue toggled failed");
        }
    }
}

/// C14 through libdbus: a panic in the glue inside a libdbus call-out cannot unwind through
/// C; it is kept and raised by the next bridge call the loop makes, and nothing is lost.
#[test]
fn a_glue_panic_inside_libdbus_reaches_the_loop_and_loses_nothing() {
    every_mode(|confined| {
        let main_loop = Arc::new(MainLoop::new().unwrap());
        let (server, _accepted) = serve(&main_loop, confined);
        let client = connect(&main_loop, &server, confined);
        run_until("authentication", step(&main_loop), || {
            client.authenticated()
        });
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(true));
        client
            .conn
            .set_watch_functions(None)
            .map_err(|e| e.into_error())
            .unwrap();
        client
            .conn
            .set_watch_functions(Some(Box::new(PanickyGlue {
                inner: main_loop.watch_functions(),
                armed: Arc::clone(&armed),
            })))
            .map_err(|e| e.into_error())
            .unwrap();
        let big = payload(4 << 20, 21);
        // The send toggles the write watch inside libdbus: the glue panics there.
        let serial = client.echo(None, &big);
        assert!(
            !armed.load(Ordering::Acquire),
            "the glue's toggled ran and panicked"
        );
        let mut caught = None;
        run_until(
            "the echo",
            || {
                let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    main_loop.run_once(TICK).unwrap();
                }));
                if let Err(payload) = turn {
                    caught = payload.downcast_ref::<&str>().map(|s| s.to_string());
                }
            },
            || client.reply(serial).is_some(),
        );
        assert_eq!(caught.as_deref(), Some("glue toggled failed"));
        assert!(
            client.reply(serial) == Some(Reply::Bytes(big)),
            "payload corrupted"
        );
    });
}
