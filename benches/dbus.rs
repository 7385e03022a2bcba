//! Method-call round trips per second through libdbus, side by side in one run:
//!
//! * **bridge**: the libdbus bridge (`loopglue::dbus`) on `MainLoop`;
//! * **bridge, loop thread only**: the same with every connection promised to the loop's
//!   thread (`Connection::assume_loop_thread_only`), so watches go to `dbus_watch_handle`;
//! * **poll glue**: libdbus driven by a hand-written poll(2) glue — watches in a vector from
//!   `dbus_connection_set_watch_functions`, `poll`, `dbus_watch_handle`, dispatch until
//!   complete — the C-equivalent of `shared/anchors/libdbus_pingpong.c`;
//! * **dbus crate**: the `dbus` crate's blocking `Connection` (`send_with_reply_and_block`) as
//!   the client, answered by a bridge responder on a `MainLoop` thread.
//!
//! Peer to peer (a `DBusServer` and one client in one thread, as the anchor) and through a
//! private `dbus-daemon` (skipped if it is not installed). Each case runs `ROUNDS` times,
//! alternating, and the median is reported.
//!
//! Run: `cargo bench --bench dbus --features dbus-rs` (env `DBUS_BENCH_CALLS`, default 20000).

#[path = "../tests/dbus_support/mod.rs"]
#[allow(unused_imports)]
mod dbus_support;

use std::os::raw::c_void;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbus_support::{request_name, Daemon, Peer, Reply};
use libdbus_sys as sys;
use loopglue::dbus::{ffi, Connection, Server};
use loopglue::MainLoop;

const ROUNDS: usize = 5;
const NAME: &str = "org.loopglue.Bench";

fn calls() -> u32 {
    std::env::var("DBUS_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Sequential round trips: each call is sent when the previous reply arrived.
fn round_trips(client: &Peer, dest: Option<&str>, n: u32, mut turn: impl FnMut()) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let serial = client.ping(dest, i);
        while client.reply(serial).is_none() {
            turn();
        }
        assert_eq!(client.reply(serial), Some(Reply::Number(i + 1)));
        client.seen.lock().unwrap().replies.remove(&serial);
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

// ---- the hand-written poll(2) glue ------------------------------------------------------------

/// What a C program keeps for its glue: the watches and timeouts libdbus gave it, and the
/// connections to dispatch.
#[derive(Default)]
struct PollGlue {
    watches: Vec<*mut ffi::DBusWatch>,
    timeouts: Vec<*mut ffi::DBusTimeout>,
    connections: Vec<*mut ffi::DBusConnection>,
}

unsafe extern "C" fn add_watch(watch: *mut ffi::DBusWatch, data: *mut c_void) -> u32 {
    (*data.cast::<PollGlue>()).watches.push(watch);
    1
}
unsafe extern "C" fn remove_watch(watch: *mut ffi::DBusWatch, data: *mut c_void) {
    (*data.cast::<PollGlue>()).watches.retain(|w| *w != watch);
}
unsafe extern "C" fn toggle_watch(_: *mut ffi::DBusWatch, _: *mut c_void) {}
unsafe extern "C" fn add_timeout(timeout: *mut ffi::DBusTimeout, data: *mut c_void) -> u32 {
    (*data.cast::<PollGlue>()).timeouts.push(timeout);
    1
}
unsafe extern "C" fn remove_timeout(timeout: *mut ffi::DBusTimeout, data: *mut c_void) {
    (*data.cast::<PollGlue>())
        .timeouts
        .retain(|t| *t != timeout);
}
unsafe extern "C" fn toggle_timeout(_: *mut ffi::DBusTimeout, _: *mut c_void) {}

impl PollGlue {
    /// `dbus_connection_set_watch_functions` + timeouts, as the anchor's `glue()`.
    unsafe fn install(&mut self, connection: *mut ffi::DBusConnection) {
        let data = (self as *mut PollGlue).cast();
        ffi::dbus_connection_set_watch_functions(
            connection,
            Some(add_watch),
            Some(remove_watch),
            Some(toggle_watch),
            data,
            None,
        );
        ffi::dbus_connection_set_timeout_functions(
            connection,
            Some(add_timeout),
            Some(remove_timeout),
            Some(toggle_timeout),
            data,
            None,
        );
        self.connections.push(connection);
    }

    unsafe fn uninstall_all(&mut self) {
        for connection in std::mem::take(&mut self.connections) {
            ffi::dbus_connection_set_watch_functions(
                connection,
                None,
                None,
                None,
                std::ptr::null_mut(),
                None,
            );
            ffi::dbus_connection_set_timeout_functions(
                connection,
                None,
                None,
                None,
                std::ptr::null_mut(),
                None,
            );
        }
    }

    /// One iteration: poll the enabled watches, handle, dispatch everything. Takes a raw
    /// pointer: libdbus calls back into the glue (add/remove) while this runs.
    unsafe fn iterate(glue: *mut PollGlue) {
        let watches = (*glue).watches.clone();
        let mut fds = Vec::with_capacity(watches.len());
        let mut which = Vec::with_capacity(watches.len());
        for watch in watches {
            if sys::dbus_watch_get_enabled(watch) == 0 {
                continue;
            }
            let flags = sys::dbus_watch_get_flags(watch);
            let mut events = 0;
            if flags & 1 != 0 {
                events |= libc_poll::POLLIN;
            }
            if flags & 2 != 0 {
                events |= libc_poll::POLLOUT;
            }
            fds.push(libc_poll::pollfd {
                fd: sys::dbus_watch_get_unix_fd(watch),
                events,
                revents: 0,
            });
            which.push(watch);
        }
        libc_poll::poll(fds.as_mut_ptr(), fds.len() as _, 1000);
        for (fd, watch) in fds.iter().zip(which) {
            let mut condition = 0;
            if fd.revents & libc_poll::POLLIN != 0 {
                condition |= 1;
            }
            if fd.revents & libc_poll::POLLOUT != 0 {
                condition |= 2;
            }
            if fd.revents & libc_poll::POLLERR != 0 {
                condition |= 4;
            }
            if fd.revents & libc_poll::POLLHUP != 0 {
                condition |= 8;
            }
            // The C glue's pattern: only watches still registered (a handler may remove one).
            if condition != 0 && (*glue).watches.contains(&watch) {
                sys::dbus_watch_handle(watch, condition);
            }
        }
        for connection in (*glue).connections.clone() {
            while sys::dbus_connection_dispatch(connection) == sys::DBusDispatchStatus::DataRemains
            {
            }
        }
    }
}

/// poll(2) as C declares it.
mod libc_poll {
    #[repr(C)]
    pub struct pollfd {
        pub fd: i32,
        pub events: i16,
        pub revents: i16,
    }
    pub const POLLIN: i16 = 0x1;
    pub const POLLOUT: i16 = 0x4;
    pub const POLLERR: i16 = 0x8;
    pub const POLLHUP: i16 = 0x10;
    extern "C" {
        pub fn poll(fds: *mut pollfd, n: u64, timeout: i32) -> i32;
    }
}

// ---- peer to peer -----------------------------------------------------------------------------

/// Promises `conn` to the loop's thread if `confined`.
fn confine(conn: &Connection, confined: bool) {
    if confined {
        // SAFETY: every benchmark case runs its connections on one thread, the loop's.
        unsafe { conn.assume_loop_thread_only() };
    }
}

fn p2p_bridge(n: u32, confined: bool) -> f64 {
    let main_loop = Arc::new(MainLoop::new().unwrap());
    let server = Server::listen("unix:tmpdir=/tmp").unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (sink, looper) = (Arc::clone(&accepted), Arc::downgrade(&main_loop));
    server.set_new_connection_function(move |conn: Connection| {
        confine(&conn, confined);
        looper
            .upgrade()
            .unwrap()
            .attach(Arc::new(conn.clone()))
            .unwrap();
        sink.lock().unwrap().push(Peer::new(conn));
    });
    main_loop.attach(Arc::new(server.clone())).unwrap();
    let client = Peer::new(Connection::open_private(&server.address()).unwrap());
    confine(&client.conn, confined);
    main_loop.attach(Arc::new(client.conn.clone())).unwrap();
    let turn = || {
        main_loop.run_once(Some(Duration::from_secs(1))).unwrap();
    };
    round_trips(&client, None, 10, turn); // authentication and warm-up
    let rate = round_trips(&client, None, n, turn);
    for peer in accepted.lock().unwrap().drain(..) {
        main_loop.detach(&peer.conn).unwrap();
    }
    main_loop.detach(&client.conn).unwrap();
    main_loop.detach(&server).unwrap();
    rate
}

fn p2p_poll_glue(n: u32) -> f64 {
    let glue: *mut PollGlue = Box::into_raw(Box::default());
    let server = Server::listen("unix:tmpdir=/tmp").unwrap();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&accepted);
    let glue_addr = glue as usize;
    server.set_new_connection_function(move |conn: Connection| {
        // SAFETY: single-threaded benchmark; the glue outlives every connection.
        unsafe { (*(glue_addr as *mut PollGlue)).install(conn.as_ptr()) };
        sink.lock().unwrap().push(Peer::new(conn));
    });
    // SAFETY: the glue lives until the end of this function; one thread.
    unsafe {
        ffi::dbus_server_set_watch_functions(
            server.as_ptr(),
            Some(add_watch),
            Some(remove_watch),
            Some(toggle_watch),
            glue.cast(),
            None,
        );
    }
    let client = Peer::new(Connection::open_private(&server.address()).unwrap());
    // SAFETY: as above.
    unsafe { (*glue).install(client.conn.as_ptr()) };
    let turn = || unsafe { PollGlue::iterate(glue) };
    round_trips(&client, None, 10, turn);
    let rate = round_trips(&client, None, n, turn);
    // SAFETY: as above; nothing calls the glue after it is uninstalled.
    unsafe {
        (*glue).uninstall_all();
        ffi::dbus_server_set_watch_functions(
            server.as_ptr(),
            None,
            None,
            None,
            std::ptr::null_mut(),
            None,
        );
        drop(accepted.lock().unwrap().drain(..).collect::<Vec<_>>());
        drop(client);
        drop(server);
        drop(Box::from_raw(glue));
    }
    rate
}

/// A bridge responder on a `MainLoop` thread; returns its address-side handles and a stop.
fn responder_thread(address: Option<String>) -> (String, impl FnOnce()) {
    let (ready, get) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let main_loop = Arc::new(MainLoop::new().unwrap());
        let mut keep = Vec::new();
        let server;
        match address {
            Some(bus) => {
                let peer = Peer::new(Connection::open_bus(&bus).unwrap());
                assert_eq!(request_name(&peer.conn, NAME, 4), 1);
                main_loop.attach(Arc::new(peer.conn.clone())).unwrap();
                keep.push(peer);
                server = None;
                ready.send(bus).unwrap();
            }
            None => {
                let listening = Server::listen("unix:tmpdir=/tmp").unwrap();
                let looper = Arc::downgrade(&main_loop);
                let accepted = Arc::new(Mutex::new(Vec::new()));
                let sink = Arc::clone(&accepted);
                listening.set_new_connection_function(move |conn: Connection| {
                    looper
                        .upgrade()
                        .unwrap()
                        .attach(Arc::new(conn.clone()))
                        .unwrap();
                    sink.lock().unwrap().push(Peer::new(conn));
                });
                main_loop.attach(Arc::new(listening.clone())).unwrap();
                ready.send(listening.address()).unwrap();
                server = Some((listening, accepted));
            }
        }
        while stop_rx.try_recv().is_err() {
            main_loop.run_once(Some(Duration::from_millis(50))).unwrap();
        }
        drop(server);
        drop(keep);
    });
    let address = get.recv().unwrap();
    (address, move || {
        let _ = stop_tx.send(());
        thread.join().unwrap();
    })
}

fn dbus_crate_client(address: &str, bus: bool, n: u32) -> f64 {
    use dbus_crate::blocking::Connection as Blocking;
    use dbus_crate::channel::Channel;
    let mut channel = Channel::open_private(address).unwrap();
    if bus {
        channel.register().unwrap();
    }
    let conn = Blocking::from(channel);
    let dest = if bus { NAME } else { "org.loopglue.Any" };
    let call = |i: u32| {
        let mut msg = dbus_crate::Message::new_method_call(
            dest,
            dbus_support::PATH,
            dbus_support::IFACE,
            "Ping",
        )
        .unwrap()
        .append1(i);
        if !bus {
            msg.set_destination(None);
        }
        let reply = dbus_crate::blocking::BlockingSender::send_with_reply_and_block(
            &conn,
            msg,
            Duration::from_secs(25),
        )
        .unwrap();
        assert_eq!(reply.read1::<u32>().unwrap(), i + 1);
    };
    for i in 0..10 {
        call(i);
    }
    let start = Instant::now();
    for i in 0..n {
        call(i);
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

// ---- through the daemon -----------------------------------------------------------------------

fn bus_bridge(address: &str, n: u32, confined: bool) -> f64 {
    let main_loop = MainLoop::new().unwrap();
    let responder = Peer::new(Connection::open_bus(address).unwrap());
    assert_eq!(request_name(&responder.conn, NAME, 4), 1);
    let client = Peer::new(Connection::open_bus(address).unwrap());
    confine(&responder.conn, confined);
    confine(&client.conn, confined);
    main_loop.attach(Arc::new(responder.conn.clone())).unwrap();
    main_loop.attach(Arc::new(client.conn.clone())).unwrap();
    let turn = || {
        main_loop.run_once(Some(Duration::from_secs(1))).unwrap();
    };
    round_trips(&client, Some(NAME), 10, turn);
    let rate = round_trips(&client, Some(NAME), n, turn);
    main_loop.detach(&client.conn).unwrap();
    main_loop.detach(&responder.conn).unwrap();
    release(&responder);
    rate
}

fn bus_poll_glue(address: &str, n: u32) -> f64 {
    let glue: *mut PollGlue = Box::into_raw(Box::default());
    let responder = Peer::new(Connection::open_bus(address).unwrap());
    assert_eq!(request_name(&responder.conn, NAME, 4), 1);
    let client = Peer::new(Connection::open_bus(address).unwrap());
    // SAFETY: one thread; the glue outlives its installation.
    unsafe {
        (*glue).install(responder.conn.as_ptr());
        (*glue).install(client.conn.as_ptr());
    }
    let turn = || unsafe { PollGlue::iterate(glue) };
    round_trips(&client, Some(NAME), 10, turn);
    let rate = round_trips(&client, Some(NAME), n, turn);
    // SAFETY: as above.
    unsafe {
        (*glue).uninstall_all();
        drop(Box::from_raw(glue));
    }
    release(&responder);
    rate
}

fn release(peer: &Peer) {
    let name = std::ffi::CString::new(NAME).unwrap();
    // SAFETY: a live connection; a NULL error is allowed.
    unsafe { sys::dbus_bus_release_name(peer.conn.as_ptr(), name.as_ptr(), std::ptr::null_mut()) };
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn report(case: &str, rates: &[(&str, f64)]) {
    let baseline = rates
        .iter()
        .find(|(name, _)| *name == "poll glue")
        .map(|r| r.1);
    println!("{case}");
    for (name, rate) in rates {
        let ratio = baseline.map_or(String::new(), |b| {
            format!("  time/call {:.3}x of poll glue", b / rate)
        });
        println!("  {name:<24} {rate:>9.0} calls/s{ratio}");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for the list of benchmarks
    }
    let n = calls();
    // Profiling aid: `DBUS_BENCH_ONLY=bridge`, `=confined` or `=glue` runs that peer-to-peer
    // case once; `=bus-bridge`, `=bus-confined` or `=bus-glue` the case through a private
    // dbus-daemon (which callgrind and `strace -c` leave out unless told to follow children).
    if let Ok(only) = std::env::var("DBUS_BENCH_ONLY") {
        let rate = match only.as_str() {
            "bridge" => p2p_bridge(n, false),
            "confined" => p2p_bridge(n, true),
            "glue" => p2p_poll_glue(n),
            bus => {
                let daemon = Daemon::start();
                match bus {
                    "bus-bridge" => bus_bridge(&daemon.address, n, false),
                    "bus-confined" => bus_bridge(&daemon.address, n, true),
                    "bus-glue" => bus_poll_glue(&daemon.address, n),
                    other => panic!("DBUS_BENCH_ONLY={other}: not a case"),
                }
            }
        };
        return println!("{only} {rate:.0} calls/s");
    }
    println!(
        "dbus bench: {n} sequential method calls per run, median of {ROUNDS} alternating runs"
    );

    let (mut bridge, mut confined, mut glue, mut crate_) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (p2p_address, stop) = responder_thread(None);
    for _ in 0..ROUNDS {
        bridge.push(p2p_bridge(n, false));
        confined.push(p2p_bridge(n, true));
        glue.push(p2p_poll_glue(n));
        crate_.push(dbus_crate_client(&p2p_address, false, n));
    }
    stop();
    report(
        "peer to peer (one thread; dbus crate: client thread + bridge responder thread)",
        &[
            ("bridge", median(bridge)),
            ("bridge, loop thread only", median(confined)),
            ("poll glue", median(glue)),
            ("dbus crate", median(crate_)),
        ],
    );

    let Ok(found) = std::process::Command::new("dbus-daemon")
        .arg("--version")
        .output()
    else {
        println!("through the daemon: skipped (dbus-daemon not installed)");
        return;
    };
    drop(found);
    let daemon = Daemon::start();
    let (mut bridge, mut confined, mut glue, mut crate_) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        bridge.push(bus_bridge(&daemon.address, n, false));
        confined.push(bus_bridge(&daemon.address, n, true));
        glue.push(bus_poll_glue(&daemon.address, n));
        let (address, stop) = responder_thread(Some(daemon.address.clone()));
        crate_.push(dbus_crate_client(&address, true, n));
        stop();
    }
    report(
        "through dbus-daemon (one thread; dbus crate: client thread + bridge responder thread)",
        &[
            ("bridge", median(bridge)),
            ("bridge, loop thread only", median(confined)),
            ("poll glue", median(glue)),
            ("dbus crate", median(crate_)),
        ],
    );
}
