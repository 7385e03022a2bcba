//! The libdbus bridge against a real `dbus-daemon` the test starts itself, on every loop in
//! `dbus_support::loops_for(mode)` (`MainLoop` and every adapter whose feature is on). Needs
//! the `dbus` feature and `dbus-daemon` (`.ci/run` installs it).

mod dbus_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dbus_support::{
    every_mode, loops_for, open_bus, payload, request_name, run_until, Daemon, Peer, Reply,
};

const NAME_A: &str = "org.loopglue.TestA";
const NAME_B: &str = "org.loopglue.TestB";
/// `DBUS_NAME_FLAG_DO_NOT_QUEUE`.
const DO_NOT_QUEUE: u32 = 4;

#[test]
fn two_connections_own_names_and_call_each_other() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let daemon = Daemon::start();
            let lp = make();
            let a = Peer::new(open_bus(&daemon.address, confined));
            let b = Peer::new(open_bus(&daemon.address, confined));
            assert_eq!(
                request_name(&a.conn, NAME_A, DO_NOT_QUEUE),
                1,
                "{name}: A owns its name"
            );
            assert_eq!(
                request_name(&b.conn, NAME_B, DO_NOT_QUEUE),
                1,
                "{name}: B owns its name"
            );
            assert_eq!(
                request_name(&a.conn, NAME_B, DO_NOT_QUEUE),
                3,
                "{name}: B's name is taken"
            );
            lp.attach(Arc::new(a.conn.clone()));
            lp.attach(Arc::new(b.conn.clone()));
            for n in 0..200 {
                let to_b = a.ping(Some(NAME_B), n);
                let to_a = b.ping(Some(NAME_A), n + 1000);
                run_until(
                    "replies both ways",
                    || lp.turn(),
                    || a.reply(to_b).is_some() && b.reply(to_a).is_some(),
                );
                assert_eq!(a.reply(to_b), Some(Reply::Number(n + 1)), "{name}");
                assert_eq!(b.reply(to_a), Some(Reply::Number(n + 1001)), "{name}");
            }
            // A broadcast signal reaches a connection with a match rule.
            let rule =
                std::ffi::CString::new("type='signal',interface='org.loopglue.Test'").unwrap();
            // SAFETY: a live connection; a NULL error makes the call asynchronous.
            unsafe {
                libdbus_sys::dbus_bus_add_match(
                    b.conn.as_ptr(),
                    rule.as_ptr(),
                    std::ptr::null_mut(),
                )
            };
            let sync = b.ping(Some(NAME_A), 0); // the match is in place once this returns
            run_until("the match rule", || lp.turn(), || b.reply(sync).is_some());
            a.signal("Broadcast");
            run_until(
                "the broadcast",
                || lp.turn(),
                || {
                    b.seen
                        .lock()
                        .unwrap()
                        .signals
                        .iter()
                        .any(|s| s == "Broadcast")
                },
            );
        }
    });
}

/// The edge-triggered loss case (dbus-rs #72, #254): a 16 MiB message read 2 KiB per
/// `handle` arrives intact on every loop.
#[test]
fn sixteen_mib_through_the_daemon_intact() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let daemon = Daemon::start();
            let lp = make();
            let a = Peer::new(open_bus(&daemon.address, confined));
            let b = Peer::new(open_bus(&daemon.address, confined));
            assert_eq!(request_name(&b.conn, NAME_B, DO_NOT_QUEUE), 1);
            lp.attach(Arc::new(a.conn.clone()));
            lp.attach(Arc::new(b.conn.clone()));
            let big = payload(16 << 20, 11);
            let serial = a.echo(Some(NAME_B), &big);
            run_until(
                "the 16 MiB echo",
                || lp.turn(),
                || a.reply(serial).is_some(),
            );
            assert!(
                a.reply(serial) == Some(Reply::Bytes(big)),
                "{name}: payload corrupted"
            );
        }
    });
}

/// The daemon dies while a call is pending: every connection sees the disconnect, nothing
/// hangs, and the loop then sleeps instead of spinning on dead fds.
#[test]
fn daemon_killed_mid_call_every_connection_sees_the_disconnect() {
    every_mode(|confined| {
        for (name, make) in loops_for(confined) {
            let mut daemon = Daemon::start();
            let lp = make();
            let a = Peer::new(open_bus(&daemon.address, confined));
            let b = Peer::new(open_bus(&daemon.address, confined));
            assert_eq!(request_name(&b.conn, NAME_B, DO_NOT_QUEUE), 1);
            lp.attach(Arc::new(a.conn.clone()));
            lp.attach(Arc::new(b.conn.clone()));
            let serial = a.stall(Some(NAME_B));
            run_until(
                "B to hold the call",
                || lp.turn(),
                || b.seen.lock().unwrap().stalled == 1,
            );
            daemon.kill();
            run_until(
                "both disconnects",
                || lp.turn(),
                || a.seen.lock().unwrap().disconnected && b.seen.lock().unwrap().disconnected,
            );
            assert!(!a.conn.is_connected() && !b.conn.is_connected(), "{name}");
            // libdbus 1.14: the pending call's NoReply goes to the filters, not to its notify.
            let seen = a.seen.lock().unwrap();
            assert_eq!(seen.replies.get(&serial), None, "{name}");
            assert!(
                seen.filtered_errors
                    .iter()
                    .any(|(e, s)| e == "org.freedesktop.DBus.Error.NoReply" && *s == serial),
                "{name}: {:?}",
                seen.filtered_errors
            );
            drop(seen);
            // libdbus removed the dead sockets' watches: the glue polls nothing for them.
            assert_eq!(lp.registered_fds(), 0, "{name}: fds left");
            // No spin: with both connections dead, nothing is ready, nothing is due — each turn
            // waits out its 20 ms timeout, runs no handler and burns no CPU. (Load can only make
            // the turns fewer and the CPU time smaller, so these bounds cannot fail falsely.)
            let window = Duration::from_millis(200);
            let (start, cpu) = (std::time::Instant::now(), lp.cpu_time());
            let mut turns = 0;
            while start.elapsed() < window {
                let ran = lp.turn_counting(Duration::from_millis(20));
                assert!(matches!(ran, None | Some(0)), "{name}: a handler ran");
                turns += 1;
            }
            let used = lp.cpu_time() - cpu;
            assert!(
                turns <= 15,
                "{name}: {turns} turns in {window:?}: the loop does not wait"
            );
            assert!(
                used < window / 2,
                "{name}: {used:?} of CPU in {window:?}: the loop spins"
            );
        }
    });
}

/// 100 connections × 100 calls from 4 threads, each thread with its own loop, to one
/// responder on the test thread's loop.
#[test]
fn hundred_connections_hundred_calls_from_four_threads() {
    every_mode(|confined| {
        const THREADS: usize = 4;
        const CONNECTIONS: usize = 100;
        const CALLS: u32 = 100;
        for (name, make) in loops_for(confined) {
            let daemon = Daemon::start();
            let lp = make();
            let responder = Peer::new(open_bus(&daemon.address, confined));
            assert_eq!(request_name(&responder.conn, NAME_B, DO_NOT_QUEUE), 1);
            lp.attach(Arc::new(responder.conn.clone()));
            let finished = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let address = daemon.address.clone();
                    let finished = Arc::clone(&finished);
                    std::thread::spawn(move || {
                        let lp = make();
                        let peers: Vec<Peer> = (0..CONNECTIONS / THREADS)
                            .map(|_| {
                                let peer = Peer::new(open_bus(&address, confined));
                                lp.attach(Arc::new(peer.conn.clone()));
                                peer
                            })
                            .collect();
                        let mut calls = Vec::new();
                        for (i, peer) in peers.iter().enumerate() {
                            for n in 0..CALLS {
                                let x = (t * 1_000_000 + i * 1000) as u32 + n;
                                calls.push((i, peer.ping(Some(NAME_B), x), x));
                            }
                        }
                        run_until(
                            "every reply",
                            || lp.turn(),
                            || {
                                calls
                                    .iter()
                                    .all(|(i, serial, _)| peers[*i].reply(*serial).is_some())
                            },
                        );
                        for (i, serial, x) in &calls {
                            assert_eq!(peers[*i].reply(*serial), Some(Reply::Number(x + 1)));
                        }
                        finished.fetch_add(1, Ordering::Release);
                    })
                })
                .collect();
            run_until(
                "the four threads",
                || lp.turn(),
                || {
                    finished.load(Ordering::Acquire) == THREADS
                        || workers.iter().any(|w| w.is_finished())
                            && finished.load(Ordering::Acquire)
                                < workers.iter().filter(|w| w.is_finished()).count()
                },
            );
            for worker in workers {
                worker
                    .join()
                    .unwrap_or_else(|_| panic!("{name}: a worker failed"));
            }
            assert_eq!(
                responder.seen.lock().unwrap().calls,
                CONNECTIONS * CALLS as usize,
                "{name}"
            );
        }
    });
}

/// Messages queued by another thread are dispatched by the loop: a worker makes blocking
/// calls on the responder's own connection (libdbus then reads the responder's incoming
/// calls on the worker's thread, and its wakeups come from there), while a client keeps
/// calling the responder. Every call is answered: no message strands in the queue while the
/// loop sleeps, however the status reports of the two threads interleave.
#[test]
fn messages_queued_by_another_thread_are_dispatched() {
    every_mode(|confined| {
        const CALLS: u32 = 2000;
        for (name, make) in loops_for(confined) {
            let daemon = Daemon::start();
            let lp = make();
            // A worker makes blocking calls on the responder's connection from another
            // thread: it stays an any-thread connection in both modes.
            let responder = Peer::new(open_bus(&daemon.address, false));
            let echo = Peer::new(open_bus(&daemon.address, confined));
            assert_eq!(request_name(&responder.conn, NAME_B, DO_NOT_QUEUE), 1);
            assert_eq!(request_name(&echo.conn, NAME_A, DO_NOT_QUEUE), 1);
            lp.attach(Arc::new(responder.conn.clone()));
            lp.attach(Arc::new(echo.conn.clone()));
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // The worker: blocking calls to the echo peer on the responder's connection.
            let worker = {
                let conn = responder.conn.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut answered = 0u32;
                    while !stop.load(Ordering::Acquire) {
                        if dbus_support::blocking_ping(&conn, NAME_A, answered)
                            == Some(answered + 1)
                        {
                            answered += 1;
                        }
                    }
                    answered
                })
            };
            // The client, on a loop of its own thread.
            let address = daemon.address.clone();
            let client = std::thread::spawn(move || {
                let lp = make();
                let client = Peer::new(open_bus(&address, confined));
                lp.attach(Arc::new(client.conn.clone()));
                for n in 0..CALLS {
                    let serial = client.ping(Some(NAME_B), n);
                    run_until(
                        "the responder's answer",
                        || lp.turn(),
                        || client.reply(serial).is_some(),
                    );
                    assert_eq!(client.reply(serial), Some(Reply::Number(n + 1)));
                }
            });
            run_until("the client's calls", || lp.turn(), || client.is_finished());
            stop.store(true, Ordering::Release);
            client
                .join()
                .unwrap_or_else(|_| panic!("{name}: a call stranded"));
            run_until("the worker", || lp.turn(), || worker.is_finished());
            assert!(worker.join().unwrap() > 0, "{name}: the worker made calls");
        }
    });
}
