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
//! Then the same two cases on a tokio current-thread runtime (`loopglue::adapters::tokio`),
//! client and responder on the runtime's one thread. The responder is the same in every tokio
//! row — a bridge connection (any-thread mode) attached with the tokio adapter, answering from
//! a libdbus filter — so only the client differs:
//!
//! * **bridge**: a bridge `Connection` attached with the tokio adapter; each call is
//!   `dbus_connection_send_with_reply` with a pending-call notification that wakes the
//!   awaiting task (what a program using libdbus's C API writes);
//! * **bridge, loop thread only**: the same client promised to the runtime's thread;
//! * **ChannelSource**: the `dbus` crate's `SyncConnection` in a `loopglue::dbus::ChannelSource`
//!   attached with the tokio adapter, each call `Proxy::method_call` under
//!   `tokio::time::timeout`;
//! * **dbus-tokio**: the same connection and `Proxy::method_call` driven by
//!   `dbus_tokio::connection::from_channel` (its `IOResource` spawned on the runtime), which
//!   gives each call a tokio timer itself.
//!
//! ChannelSource against dbus-tokio is the like-for-like pair: the same crate, connection type,
//! calls and timers, only the glue between libdbus and tokio differs. The bridge rows add the
//! difference of libdbus's pending-call API (the `dbus` crate matches replies itself).
//! Every tokio message, peer to peer too, names `NAME` as its destination (`Proxy` needs one).
//!
//! Run: `cargo bench --bench dbus --features dbus-rs,tokio`; the dbus-tokio rows need its
//! dev-dependency, which a cfg of its own brings in (it links libdbus, which the README's test
//! command must not need): `RUSTFLAGS="--cfg loopglue_dbus_tokio" cargo bench --bench dbus
//! --features dbus-rs,tokio` (env `DBUS_BENCH_CALLS`, default
//! 20000; `DBUS_BENCH_ONLY=<case>` runs one case once, for callgrind or `strace -c` — the
//! names are in `main`).

#[path = "../tests/dbus_support/mod.rs"]
#[allow(unused_imports)]
mod dbus_support;

use std::os::raw::c_void;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbus_crate::channel::Channel;
use dbus_crate::nonblock::{Proxy, SyncConnection};
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

// ---- on a tokio runtime: the bridge with `adapters::tokio`, and dbus-tokio -------------------

/// Which client a tokio case runs; the responder is the same for all four.
#[derive(Clone, Copy)]
enum TokioClient {
    /// A bridge connection attached with `loopglue::adapters::tokio`, any-thread mode.
    Bridge,
    /// The same, promised to the runtime's thread (`assume_loop_thread_only`).
    BridgeConfined,
    /// The `dbus` crate's `SyncConnection` in a `loopglue::dbus::ChannelSource` attached with
    /// `loopglue::adapters::tokio`, calls through its `Proxy`.
    ChannelSource,
    /// The same connection and calls driven by `dbus_tokio::connection::from_channel` (built
    /// only with `--cfg loopglue_dbus_tokio`, which brings the dev-dependency in).
    #[cfg(loopglue_dbus_tokio)]
    DbusTokio,
}

/// The runtime of every tokio case: current-thread, so client and responder share one thread
/// as in the `MainLoop` cases.
fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The reply of one bridge call on tokio: filled in by the pending call's notification, which
/// wakes the task awaiting it.
#[derive(Default)]
struct Answer {
    reply: Option<Option<u32>>,
    waker: Option<std::task::Waker>,
}

extern "C" fn answer_ready(pending: *mut sys::DBusPendingCall, data: *mut c_void) {
    // SAFETY: `data` is the `Arc<Mutex<Answer>>` leaked in `bridge_ping`, freed by
    // `free_answer` only after this notification.
    let answer = unsafe { &*data.cast::<Mutex<Answer>>() };
    let mut n = None;
    // SAFETY: `pending` is the call, whose reference `bridge_ping` left to this function;
    // libdbus calls this once, with the reply or its own timeout error, which is read and
    // unreferenced here.
    unsafe {
        let reply = sys::dbus_pending_call_steal_reply(pending);
        if !reply.is_null() {
            let mut iter: sys::DBusMessageIter = std::mem::zeroed();
            if sys::dbus_message_get_type(reply) == 2
                && sys::dbus_message_iter_init(reply, &mut iter) != 0
                && sys::dbus_message_iter_get_arg_type(&mut iter) == sys::DBUS_TYPE_UINT32
            {
                let mut value = 0u32;
                sys::dbus_message_iter_get_basic(&mut iter, (&mut value as *mut u32).cast());
                n = Some(value);
            }
            sys::dbus_message_unref(reply);
        }
        sys::dbus_pending_call_unref(pending);
    }
    let waker = {
        let mut answer = answer.lock().unwrap();
        answer.reply = Some(n);
        answer.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

extern "C" fn free_answer(data: *mut c_void) {
    // SAFETY: the reference `bridge_ping` leaked for the notification; libdbus frees it once.
    drop(unsafe { Arc::from_raw(data.cast::<Mutex<Answer>>()) });
}

/// The names of a `Ping` call, made once per run (a C program's string constants).
struct PingNames {
    dest: std::ffi::CString,
    path: std::ffi::CString,
    iface: std::ffi::CString,
    member: std::ffi::CString,
}

impl PingNames {
    fn new() -> PingNames {
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        PingNames {
            dest: c(NAME),
            path: c(dbus_support::PATH),
            iface: c(dbus_support::IFACE),
            member: c("Ping"),
        }
    }
}

/// `Ping(n)` through the bridge, awaited: `dbus_connection_send_with_reply` (libdbus's default
/// timeout), a pending-call notification that wakes this task, the reply's `u32` (`None` for
/// an error reply).
async fn bridge_ping(conn: &Connection, names: &PingNames, n: u32) -> Option<u32> {
    let answer = Arc::new(Mutex::new(Answer::default()));
    // SAFETY: a live connection, valid C strings; the notification's data is a leaked
    // reference to `answer`, freed by libdbus with `free_answer`; the pending call's reference
    // goes to `answer_ready`, which runs only inside a dispatch — on a current-thread runtime
    // not before this block ends, so `pending` is still ours for the completion check.
    unsafe {
        let msg = sys::dbus_message_new_method_call(
            names.dest.as_ptr(),
            names.path.as_ptr(),
            names.iface.as_ptr(),
            names.member.as_ptr(),
        );
        assert!(!msg.is_null());
        let mut iter: sys::DBusMessageIter = std::mem::zeroed();
        sys::dbus_message_iter_init_append(msg, &mut iter);
        assert_ne!(
            sys::dbus_message_iter_append_basic(
                &mut iter,
                sys::DBUS_TYPE_UINT32,
                (&n as *const u32).cast()
            ),
            0
        );
        let mut pending: *mut sys::DBusPendingCall = std::ptr::null_mut();
        assert_ne!(
            sys::dbus_connection_send_with_reply(conn.as_ptr(), msg, &mut pending, -1),
            0
        );
        sys::dbus_message_unref(msg);
        assert!(!pending.is_null(), "connection closed");
        assert_ne!(
            sys::dbus_pending_call_set_notify(
                pending,
                Some(answer_ready),
                Arc::into_raw(Arc::clone(&answer)).cast_mut().cast(),
                Some(free_answer),
            ),
            0
        );
        // libdbus never calls a notify set on a completed call; nothing can have completed it.
        assert_eq!(ffi::dbus_pending_call_get_completed(pending), 0);
    }
    std::future::poll_fn(|cx| {
        let mut answer = answer.lock().unwrap();
        match answer.reply {
            Some(reply) => std::task::Poll::Ready(reply),
            None => {
                answer.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    })
    .await
}

/// The `dbus` crate's proxy for [`NAME`]'s `Ping`, with libdbus's default call timeout.
fn ping_proxy(conn: Arc<SyncConnection>) -> Proxy<'static, Arc<SyncConnection>> {
    Proxy::new(NAME, dbus_support::PATH, Duration::from_secs(25), conn)
}

/// A `dbus` crate channel to `address`: registered on the bus if `bus`; peer to peer
/// authenticated first if `authenticate`.
///
/// dbus-tokio cannot finish authenticating a connection by itself: after the server's `OK`
/// libdbus has its next line to write, but dbus-tokio calls `read_write` again only on a new
/// read edge, a send, or a write edge while a message is queued, and tokio reports no new
/// edge for a socket that stayed writable — the first call times out. Its docs ask for the
/// blocking `register()` first; peer to peer the blocking step is one call, on a
/// blocking-pool thread while the runtime's thread serves the responder.
async fn dbus_channel(address: &str, bus: bool, authenticate: bool) -> Channel {
    let mut channel = Channel::open_private(address).unwrap();
    if bus {
        channel.register().unwrap(); // blocking: `Hello` to the daemon
    } else if authenticate {
        channel = tokio::task::spawn_blocking(move || {
            let ping = dbus_crate::Message::new_method_call(
                NAME,
                dbus_support::PATH,
                dbus_support::IFACE,
                "Ping",
            )
            .unwrap()
            .append1(0u32);
            let reply = channel
                .send_with_reply_and_block(ping, Duration::from_secs(25))
                .unwrap();
            assert_eq!(reply.read1::<u32>().unwrap(), 1);
            channel
        })
        .await
        .unwrap();
    }
    channel
}

/// Sequential round trips on tokio: each call awaited before the next is sent.
async fn tokio_round_trips<F: std::future::Future<Output = Option<u32>>>(
    n: u32,
    mut call: impl FnMut(u32) -> F,
) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        assert_eq!(call(i).await, Some(i + 1));
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

/// One client's rate against the bridge responder, everything on one current-thread runtime:
/// peer to peer (`bus` is `None`: a `DBusServer` and the connections it accepts) or through
/// the daemon at `bus` (a bus connection owning [`NAME`]). The responder is the same `Peer`
/// filter on bridge connections attached with `adapters::tokio` whatever the client.
fn tokio_case(client: TokioClient, bus: Option<&str>, n: u32) -> f64 {
    use loopglue::adapters::tokio::{attach, TokioAttachment};
    let runtime = current_thread_runtime();
    runtime.block_on(async {
        let accepted: Arc<Mutex<Vec<(TokioAttachment, Peer)>>> = Arc::default();
        let mut server = None;
        let address = match bus {
            Some(bus) => {
                let responder = Peer::new(Connection::open_bus(bus).unwrap());
                assert_eq!(request_name(&responder.conn, NAME, 4), 1);
                let attachment = attach(Arc::new(responder.conn.clone())).unwrap();
                accepted.lock().unwrap().push((attachment, responder));
                bus.to_string()
            }
            None => {
                let listening = Server::listen("unix:tmpdir=/tmp").unwrap();
                let (sink, handle) = (Arc::clone(&accepted), tokio::runtime::Handle::current());
                listening.set_new_connection_function(move |conn: Connection| {
                    let peer = Peer::new(conn);
                    let source = Arc::new(peer.conn.clone());
                    let attachment = loopglue::adapters::tokio::attach_to(&handle, source).unwrap();
                    sink.lock().unwrap().push((attachment, peer));
                });
                let address = listening.address();
                server = Some((attach(Arc::new(listening.clone())).unwrap(), listening));
                address
            }
        };
        let rate = match client {
            TokioClient::Bridge | TokioClient::BridgeConfined => {
                let conn = if bus.is_some() {
                    Connection::open_bus(&address).unwrap()
                } else {
                    Connection::open_private(&address).unwrap()
                };
                confine(&conn, matches!(client, TokioClient::BridgeConfined));
                let attachment = attach(Arc::new(conn.clone())).unwrap();
                let names = PingNames::new();
                let call = |i| bridge_ping(&conn, &names, i);
                tokio_round_trips(10, call).await; // authentication and warm-up
                let rate = tokio_round_trips(n, call).await;
                drop(attachment);
                rate
            }
            TokioClient::ChannelSource => {
                let source = loopglue::dbus::ChannelSource::new(
                    dbus_channel(&address, bus.is_some(), false).await,
                );
                let proxy = ping_proxy(source.connection());
                let attachment = attach(Arc::new(source)).unwrap();
                // dbus-tokio gives each call a tokio timer (its timeout maker); a
                // `ChannelSource` has none, so the caller adds the same.
                let call = |i: u32| {
                    let reply = proxy.method_call(dbus_support::IFACE, "Ping", (i,));
                    async move {
                        let reply = tokio::time::timeout(Duration::from_secs(25), reply).await;
                        reply.ok()?.ok().map(|(n,): (u32,)| n)
                    }
                };
                tokio_round_trips(10, call).await;
                let rate = tokio_round_trips(n, call).await;
                drop(attachment);
                rate
            }
            #[cfg(loopglue_dbus_tokio)]
            TokioClient::DbusTokio => {
                let channel = dbus_channel(&address, bus.is_some(), true).await;
                let (resource, conn) =
                    dbus_tokio::connection::from_channel::<SyncConnection>(channel).unwrap();
                let driver = tokio::spawn(resource);
                let proxy = ping_proxy(conn);
                let call = |i: u32| {
                    let reply = proxy.method_call(dbus_support::IFACE, "Ping", (i,));
                    async move { reply.await.ok().map(|(n,): (u32,)| n) }
                };
                tokio_round_trips(10, call).await;
                let rate = tokio_round_trips(n, call).await;
                driver.abort();
                assert!(driver.await.unwrap_err().is_cancelled());
                rate
            }
        };
        drop(server); // its attachment first, then the `DBusServer`
        let responders: Vec<_> = accepted.lock().unwrap().drain(..).collect();
        for (attachment, peer) in responders {
            drop(attachment);
            if bus.is_some() {
                release(&peer);
            }
        }
        rate
    })
}

/// The tokio rows of one case, a run of each per round.
#[derive(Default)]
struct TokioRates {
    bridge: Vec<f64>,
    confined: Vec<f64>,
    channel_source: Vec<f64>,
    dbus_tokio: Vec<f64>,
}

impl TokioRates {
    /// One run of each client; the order flips every round, so a drift in the machine's load
    /// does not always favour the same one.
    fn run(&mut self, bus: Option<&str>, n: u32) {
        let mut order = [
            TokioClient::Bridge,
            TokioClient::BridgeConfined,
            TokioClient::ChannelSource,
            #[cfg(loopglue_dbus_tokio)]
            TokioClient::DbusTokio,
        ];
        if self.bridge.len() % 2 == 1 {
            order.reverse();
        }
        for client in order {
            let rate = tokio_case(client, bus, n);
            match client {
                TokioClient::Bridge => self.bridge.push(rate),
                TokioClient::BridgeConfined => self.confined.push(rate),
                TokioClient::ChannelSource => self.channel_source.push(rate),
                #[cfg(loopglue_dbus_tokio)]
                TokioClient::DbusTokio => self.dbus_tokio.push(rate),
            }
        }
    }

    fn report(self, case: &str) {
        let mut rows = vec![
            ("bridge", median(self.bridge)),
            ("bridge, loop thread only", median(self.confined)),
            ("ChannelSource", median(self.channel_source)),
        ];
        // Without the cfg that brings dbus-tokio in, the rows compare with ChannelSource.
        let mut baseline = "ChannelSource";
        if !self.dbus_tokio.is_empty() {
            rows.push(("dbus-tokio", median(self.dbus_tokio)));
            baseline = "dbus-tokio";
        }
        report(
            &format!(
                "{case} on a tokio current-thread runtime (one thread; the same bridge responder)"
            ),
            baseline,
            &rows,
        );
    }
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

/// Prints a case's rows, each with its time per call relative to the row named `baseline`.
fn report(case: &str, baseline: &str, rates: &[(&str, f64)]) {
    let base = rates
        .iter()
        .find(|(name, _)| *name == baseline)
        .map(|r| r.1);
    println!("{case}");
    for (name, rate) in rates {
        let ratio = base.map_or(String::new(), |b| {
            format!("  time/call {:.3}x of {baseline}", b / rate)
        });
        println!("  {name:<24} {rate:>9.0} calls/s{ratio}");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for the list of benchmarks
    }
    let n = calls();
    // Profiling aid: `DBUS_BENCH_ONLY=bridge`, `=confined`, `=glue`, `=tokio`,
    // `=tokio-confined`, `=channel-source` or `=dbus-tokio` runs that peer-to-peer case once; the same names with
    // `bus-` before them the case through a private dbus-daemon (which callgrind and
    // `strace -c` leave out unless told to follow children).
    if let Ok(only) = std::env::var("DBUS_BENCH_ONLY") {
        let rate = match only.as_str() {
            "bridge" => p2p_bridge(n, false),
            "confined" => p2p_bridge(n, true),
            "glue" => p2p_poll_glue(n),
            "tokio" => tokio_case(TokioClient::Bridge, None, n),
            "tokio-confined" => tokio_case(TokioClient::BridgeConfined, None, n),
            "channel-source" => tokio_case(TokioClient::ChannelSource, None, n),
            #[cfg(loopglue_dbus_tokio)]
            "dbus-tokio" => tokio_case(TokioClient::DbusTokio, None, n),
            bus => {
                let daemon = Daemon::start();
                let at = Some(daemon.address.as_str());
                match bus {
                    "bus-bridge" => bus_bridge(&daemon.address, n, false),
                    "bus-confined" => bus_bridge(&daemon.address, n, true),
                    "bus-glue" => bus_poll_glue(&daemon.address, n),
                    "bus-tokio" => tokio_case(TokioClient::Bridge, at, n),
                    "bus-tokio-confined" => tokio_case(TokioClient::BridgeConfined, at, n),
                    "bus-channel-source" => tokio_case(TokioClient::ChannelSource, at, n),
                    #[cfg(loopglue_dbus_tokio)]
                    "bus-dbus-tokio" => tokio_case(TokioClient::DbusTokio, at, n),
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
    let mut on_tokio = TokioRates::default();
    let (p2p_address, stop) = responder_thread(None);
    for _ in 0..ROUNDS {
        bridge.push(p2p_bridge(n, false));
        confined.push(p2p_bridge(n, true));
        glue.push(p2p_poll_glue(n));
        crate_.push(dbus_crate_client(&p2p_address, false, n));
        on_tokio.run(None, n);
    }
    stop();
    report(
        "peer to peer (one thread; dbus crate: client thread + bridge responder thread)",
        "poll glue",
        &[
            ("bridge", median(bridge)),
            ("bridge, loop thread only", median(confined)),
            ("poll glue", median(glue)),
            ("dbus crate", median(crate_)),
        ],
    );
    on_tokio.report("peer to peer");

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
    let mut on_tokio = TokioRates::default();
    for _ in 0..ROUNDS {
        bridge.push(bus_bridge(&daemon.address, n, false));
        confined.push(bus_bridge(&daemon.address, n, true));
        glue.push(bus_poll_glue(&daemon.address, n));
        let (address, stop) = responder_thread(Some(daemon.address.clone()));
        crate_.push(dbus_crate_client(&address, true, n));
        stop();
        on_tokio.run(Some(&daemon.address), n);
    }
    report(
        "through dbus-daemon (one thread; dbus crate: client thread + bridge responder thread)",
        "poll glue",
        &[
            ("bridge", median(bridge)),
            ("bridge, loop thread only", median(confined)),
            ("poll glue", median(glue)),
            ("dbus crate", median(crate_)),
        ],
    );
    on_tokio.report("through dbus-daemon");
}
