//! `net::Connection` and `net::Server` driven by a small poll(2) glue local to this file:
//! the glue records every call it gets into a log, and `pump` polls the enabled watches with
//! a bounded deadline and reports real readiness through `Watch::handle` — no sleeps.
//!
//! Contract items: C7 (replay at install), C9 (toggles only on change), C15 (remove before
//! close), C16 (wakeup, dispatch status), C17 (bounded work per handle).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::net::{Connection, ConnectionConfig, HalfClose, SendError, Server, ServerConfig};
use loopglue::{
    Delivery, DispatchStatus, Source, Timeout, TimeoutFunctions, Watch, WatchFlags, WatchFunctions,
};
use nix::poll::{poll, PollFd, PollFlags};

// ---------------------------------------------------------------------------------------------
// Allocation tracking: the largest single allocation made on a thread that asked for it.

struct TrackingAllocator;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note_allocation(size: usize) {
    let _ = TRACKING.try_with(|tracking| {
        if tracking.get() {
            LARGEST.with(|largest| largest.set(largest.get().max(size)));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the bookkeeping touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation(new_size);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: TrackingAllocator = TrackingAllocator;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation_in(f: impl FnOnce()) -> usize {
    LARGEST.with(|largest| largest.set(0));
    TRACKING.with(|tracking| tracking.set(true));
    f();
    TRACKING.with(|tracking| tracking.set(false));
    LARGEST.with(|largest| largest.get())
}

// ---------------------------------------------------------------------------------------------
// The test glue.

/// What the glue was told: registered objects and a log of every call, one line each.
struct Registry {
    watches: Vec<Watch>,
    timeouts: Vec<Timeout>,
    log: Vec<String>,
    /// The socket identity (`/proc/self/fd` link) of each watch's fd when it was added.
    identities: Vec<(u64, String)>,
    /// The loop's wakeup channel: the wakeup function writes a byte, `pump` polls the other
    /// end, so a wakeup really interrupts `poll`.
    wake_tx: Arc<UnixStream>,
    wake_rx: UnixStream,
}

type Reg = Arc<Mutex<Registry>>;

fn registry() -> Reg {
    let (wake_tx, wake_rx) = UnixStream::pair().unwrap();
    wake_tx.set_nonblocking(true).unwrap();
    wake_rx.set_nonblocking(true).unwrap();
    Arc::new(Mutex::new(Registry {
        watches: Vec::new(),
        timeouts: Vec::new(),
        log: Vec::new(),
        identities: Vec::new(),
        wake_tx: Arc::new(wake_tx),
        wake_rx,
    }))
}

fn kind(watch: &Watch) -> &'static str {
    if watch.flags().contains(WatchFlags::READABLE) {
        "R"
    } else {
        "W"
    }
}

fn on_off(enabled: bool) -> &'static str {
    if enabled {
        "on"
    } else {
        "off"
    }
}

/// What the fd currently refers to, so that a recycled descriptor number is told apart from
/// the socket it was. `None` if nothing is open under that number.
fn fd_identity(fd: RawFd) -> Option<String> {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|target| target.display().to_string())
}

struct WatchGlue {
    reg: Reg,
    name: &'static str,
}

impl WatchFunctions for WatchGlue {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        let mut reg = self.reg.lock().unwrap();
        let line = format!(
            "{}: add {} {}",
            self.name,
            kind(watch),
            on_off(watch.is_enabled())
        );
        reg.log.push(line);
        reg.watches.push(watch.clone());
        let identity = fd_identity(watch.fd().unwrap()).unwrap_or_default();
        reg.identities.push((watch.id(), identity));
        Ok(())
    }

    fn remove(&mut self, watch: &Watch) {
        let mut reg = self.reg.lock().unwrap();
        // C15: the fd is still the same open socket while the glue's remove runs.
        let added = reg
            .identities
            .iter()
            .find(|(id, _)| *id == watch.id())
            .map(|(_, identity)| identity.clone());
        let now = watch.fd().and_then(fd_identity);
        let state = if now.is_some() && now == added {
            "fd open"
        } else {
            "fd CLOSED"
        };
        let line = format!("{}: remove {} ({state})", self.name, kind(watch));
        reg.log.push(line);
        reg.watches.retain(|w| w != watch);
    }

    fn toggled(&mut self, watch: &Watch) {
        let line = format!(
            "{}: {} {}",
            self.name,
            kind(watch),
            on_off(watch.is_enabled())
        );
        self.reg.lock().unwrap().log.push(line);
    }
}

struct TimeoutGlue {
    reg: Reg,
    name: &'static str,
}

impl TimeoutFunctions for TimeoutGlue {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let mut reg = self.reg.lock().unwrap();
        let line = format!("{}: add T {}", self.name, on_off(timeout.is_enabled()));
        reg.log.push(line);
        reg.timeouts.push(timeout.clone());
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        let mut reg = self.reg.lock().unwrap();
        reg.log.push(format!("{}: remove T", self.name));
        reg.timeouts.retain(|t| t != timeout);
    }

    fn toggled(&mut self, timeout: &Timeout) {
        let line = format!("{}: T {}", self.name, on_off(timeout.is_enabled()));
        self.reg.lock().unwrap().log.push(line);
    }
}

/// Installs the test glue on `source`, logging under `name`; wakeups are logged too.
fn attach(source: &dyn Source, reg: &Reg, name: &'static str) {
    let glue = WatchGlue {
        reg: Arc::clone(reg),
        name,
    };
    if let Err(e) = source.set_watch_functions(Some(Box::new(glue))) {
        panic!("watch functions refused: {}", e.error());
    }
    let glue = TimeoutGlue {
        reg: Arc::clone(reg),
        name,
    };
    if let Err(e) = source.set_timeout_functions(Some(Box::new(glue))) {
        panic!("timeout functions refused: {}", e.error());
    }
    let log = Arc::clone(reg);
    let wake_tx = Arc::clone(&reg.lock().unwrap().wake_tx);
    source.set_wakeup_main_function(Some(Box::new(move || {
        log.lock().unwrap().log.push(format!("{name}: wakeup"));
        let _ = (&*wake_tx).write(&[1]); // a full pipe is already a pending wakeup
    })));
}

fn log_of(reg: &Reg) -> Vec<String> {
    reg.lock().unwrap().log.clone()
}

/// Log lines of `name` only.
fn log_for(reg: &Reg, name: &str) -> Vec<String> {
    let prefix = format!("{name}: ");
    log_of(reg)
        .into_iter()
        .filter(|line| line.starts_with(&prefix))
        .collect()
}

/// The loop: until `done` says so or `limit` passes, dispatches `sources` while data
/// remains, polls the enabled watches, and reports what is ready. Returns whether `done`
/// was reached. Returns early if no watch is enabled: nothing can change then.
fn pump(
    reg: &Reg,
    sources: &[&dyn Source],
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        for source in sources {
            let mut rounds = 0;
            while source.dispatch_status() == DispatchStatus::DataRemains {
                source.dispatch();
                rounds += 1;
                assert!(rounds < 10_000, "dispatch never completes");
            }
        }
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let (enabled, wake_rx) = {
            let reg = reg.lock().unwrap();
            let enabled: Vec<Watch> = reg
                .watches
                .iter()
                .filter(|w| w.is_enabled())
                .cloned()
                .collect();
            (enabled, reg.wake_rx.try_clone().unwrap())
        };
        if enabled.is_empty() {
            return done();
        }
        let mut ready = Vec::new();
        {
            let mut fds: Vec<PollFd<'_>> = enabled
                .iter()
                .map(|watch| {
                    let mut events = PollFlags::empty();
                    if watch.flags().contains(WatchFlags::READABLE) {
                        events |= PollFlags::POLLIN;
                    }
                    if watch.flags().contains(WatchFlags::WRITABLE) {
                        events |= PollFlags::POLLOUT;
                    }
                    let fd = watch.fd().expect("an enabled registered watch has an fd");
                    // SAFETY: the producers keep a watch's fd open until the glue's remove for
                    // it has returned (C15, checked by the glue's log), and nothing is removed
                    // while these borrows live: handlers run only after `fds` is dropped.
                    PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, events)
                })
                .collect();
            fds.push(PollFd::new(wake_rx.as_fd(), PollFlags::POLLIN));
            let wait = (deadline - now).min(Duration::from_millis(200));
            let wait = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            poll(&mut fds, wait).expect("poll");
            for (watch, fd) in enabled.iter().zip(&fds) {
                let revents = fd.revents().unwrap_or(PollFlags::empty());
                assert!(
                    !revents.contains(PollFlags::POLLNVAL),
                    "polled a closed fd (C15)"
                );
                let mut condition = WatchFlags::empty();
                condition.set(WatchFlags::READABLE, revents.contains(PollFlags::POLLIN));
                condition.set(WatchFlags::WRITABLE, revents.contains(PollFlags::POLLOUT));
                condition.set(WatchFlags::ERROR, revents.contains(PollFlags::POLLERR));
                condition.set(WatchFlags::HANGUP, revents.contains(PollFlags::POLLHUP));
                if !condition.is_empty() {
                    ready.push((watch.clone(), condition));
                }
            }
        }
        let mut woken = Vec::new();
        drain_raw(&wake_rx, &mut woken);
        for (watch, condition) in ready {
            watch.handle(condition);
        }
    }
}

const LIMIT: Duration = Duration::from_secs(10);

/// A frame as it travels on the wire.
fn wire(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// Reads whatever a non-blocking raw peer has into `into`.
fn drain_raw(peer: &UnixStream, into: &mut Vec<u8>) {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match (&*peer).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("peer read: {e}"),
        }
    }
}

type Events = Arc<Mutex<Vec<String>>>;

/// Records messages (as UTF-8 or their length), the read-closed and the disconnect event into
/// one list.
fn record_events(connection: &Connection) -> Events {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    connection.set_message_handler(move |_, message| {
        let text = match String::from_utf8(message) {
            Ok(text) => format!("message {text}"),
            Err(e) => format!("message of {} bytes", e.into_bytes().len()),
        };
        sink.lock().unwrap().push(text);
    });
    let sink = Arc::clone(&events);
    connection.set_read_closed_handler(move |_| sink.lock().unwrap().push("read closed".into()));
    let sink = Arc::clone(&events);
    connection.set_disconnect_handler(move |reason| {
        sink.lock().unwrap().push(format!("disconnect {reason:?}"));
    });
    events
}

fn events_of(events: &Events) -> Vec<String> {
    events.lock().unwrap().clone()
}

fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("loopglue-net-{}-{name}-{n}", std::process::id()))
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn frames_round_trip_over_a_socketpair() {
    let (left, right) = UnixStream::pair().unwrap();
    let client = Connection::from_stream(left).unwrap();
    let echo = Connection::from_stream(right).unwrap();
    let reg = registry();
    attach(&client, &reg, "client");
    attach(&echo, &reg, "echo");
    echo.set_message_handler(|connection, message| connection.send(message).unwrap());
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = Arc::clone(&got);
    client.set_message_handler(move |_, message| sink.lock().unwrap().push(message));

    // Empty, tiny, and larger than one gathered write and one read chunk.
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let payloads = vec![Vec::new(), b"x".to_vec(), big, b"last".to_vec()];
    for payload in &payloads {
        client.send(payload.clone()).unwrap();
    }
    let done = pump(&reg, &[&client, &echo], LIMIT, || {
        got.lock().unwrap().len() == 4
    });
    assert!(done, "echoes arrived: {}", got.lock().unwrap().len());
    assert_eq!(*got.lock().unwrap(), payloads);

    let wire_bytes: u64 = payloads.iter().map(|p| 4 + p.len() as u64).sum();
    let stats = echo.stats();
    assert_eq!(stats.messages_received, 4);
    assert_eq!(stats.bytes_received, wire_bytes);
    assert_eq!(stats.messages_sent, 4);
    assert_eq!(stats.bytes_sent, wire_bytes);
    assert_eq!(client.stats().messages_received, 4);
    assert!(!client.has_messages_to_send() && !echo.has_messages_to_send());
}

#[test]
fn attach_replays_write_then_read_watch_and_read_is_on_c7() {
    let (left, _right) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let reg = registry();
    attach(&connection, &reg, "a");
    // libdbus's order: the write watch, then the read watch; only the read watch enabled.
    assert_eq!(log_of(&reg), ["a: add W off", "a: add R on"]);
    assert_eq!(connection.dispatch_status(), DispatchStatus::Complete);
}

#[test]
fn write_watch_is_on_only_while_output_is_queued_c9() {
    let (left, peer) = UnixStream::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let reg = registry();
    attach(&connection, &reg, "a");
    connection.dispatch(); // this thread is now the loop's: no wakeups for its sends

    // Fits the socket: written at once, the write watch never hears of it.
    connection.send(&b"small"[..]).unwrap();
    assert_eq!(connection.stats().direct_writes, 1);
    assert_eq!(log_of(&reg), ["a: add W off", "a: add R on"]);

    // Does not fit: the rest waits, the write watch goes on — once, however much follows.
    let big = vec![7u8; 1 << 20];
    connection.send(big.clone()).unwrap();
    connection.send(&b"after"[..]).unwrap();
    assert!(connection.has_messages_to_send());
    assert_eq!(log_of(&reg), ["a: add W off", "a: add R on", "a: W on"]);

    let mut expected = wire(b"small");
    expected.extend(wire(&big));
    expected.extend(wire(b"after"));
    let mut received = Vec::new();
    let done = pump(&reg, &[&connection], LIMIT, || {
        drain_raw(&peer, &mut received);
        received.len() >= expected.len()
    });
    assert!(
        done,
        "peer received {} of {}",
        received.len(),
        expected.len()
    );
    assert!(received == expected, "bytes arrived intact and in order");
    // Drained: off again. Exactly one on and one off.
    assert_eq!(
        log_of(&reg),
        ["a: add W off", "a: add R on", "a: W on", "a: W off"]
    );
    assert_eq!(connection.stats().write_watch_enabled, 1);
    assert_eq!(connection.queued_outbound_bytes(), 0);

    // Room again: a new small frame goes out directly, no toggles.
    connection.send(&b"again"[..]).unwrap();
    assert_eq!(log_of(&reg).len(), 4);
}

#[test]
fn read_watch_is_off_while_inbound_queue_is_full_c17() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let config = ConnectionConfig::new()
        .max_inbound_frames(2)
        .dispatch_batch(1);
    let connection = Connection::from_stream_with(left, config).unwrap();
    let reg = registry();
    attach(&connection, &reg, "a");

    let mut burst = Vec::new();
    for text in ["1", "2", "3", "4", "5"] {
        burst.extend(wire(text.as_bytes()));
    }
    peer.write_all(&burst).unwrap();
    // Pump without dispatching: the queue fills and the read watch goes off.
    let read = pump(&reg, &[], LIMIT, || {
        connection.queued_inbound_messages() > 0
    });
    assert!(read);
    assert_eq!(connection.queued_inbound_messages(), 5); // one read completed all five
    assert_eq!(log_of(&reg), ["a: add W off", "a: add R on", "a: R off"]);
    assert_eq!(connection.dispatch_status(), DispatchStatus::DataRemains);
    // No handler was set while reading, so nothing went straight to one: all five queued.
    let events = record_events(&connection);

    // Full: more from the peer is not read; a stray report reaches nobody.
    peer.write_all(&wire(b"6")).unwrap();
    assert_eq!(
        connection.read_watch().handle(WatchFlags::READABLE),
        Delivery::Disabled
    );
    assert_eq!(connection.queued_inbound_messages(), 5);

    // Dispatch one at a time: the watch comes back once the queue is below the limit.
    let expected_after = [
        (DispatchStatus::DataRemains, 3),
        (DispatchStatus::DataRemains, 3),
        (DispatchStatus::DataRemains, 3),
        (DispatchStatus::DataRemains, 4),
        (DispatchStatus::Complete, 4),
    ];
    for (round, (status, log_len)) in expected_after.into_iter().enumerate() {
        assert_eq!(connection.dispatch(), status, "round {round}");
        assert_eq!(
            log_of(&reg).len(),
            log_len,
            "round {round}: {:?}",
            log_of(&reg)
        );
    }
    assert_eq!(log_of(&reg)[3], "a: R on");
    assert_eq!(
        events_of(&events),
        [
            "message 1",
            "message 2",
            "message 3",
            "message 4",
            "message 5"
        ]
    );

    // Reading resumed: the frame written while full arrives.
    let done = pump(&reg, &[&connection], LIMIT, || {
        events_of(&events).len() == 6
    });
    assert!(done);
    assert_eq!(events_of(&events)[5], "message 6");
    assert_eq!(connection.stats().read_watch_disabled, 1);
}

#[test]
fn oversized_frame_disconnects_with_frame_too_large_without_allocating_it() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let events = record_events(&connection);
    let reg = registry();
    attach(&connection, &reg, "a");

    let mut bytes = wire(b"fine");
    bytes.extend_from_slice(&u32::MAX.to_le_bytes()); // announces 4 GiB
    bytes.extend_from_slice(&[0xAB; 16]);
    peer.write_all(&bytes).unwrap();
    let largest = largest_allocation_in(|| {
        let done = pump(&reg, &[&connection], LIMIT, || {
            events_of(&events).len() == 2
        });
        assert!(done, "events: {:?}", events_of(&events));
    });
    assert_eq!(
        events_of(&events),
        [
            "message fine".to_string(),
            format!(
                "disconnect FrameTooLarge {{ len: {}, max: {} }}",
                u32::MAX,
                16 << 20
            ),
        ]
    );
    assert!(largest < 64 * 1024, "largest allocation {largest} bytes");
    // C15: both watches left the glue while the socket was still open.
    assert_eq!(
        log_of(&reg),
        [
            "a: add W off",
            "a: add R on",
            "a: remove R (fd open)",
            "a: remove W (fd open)"
        ]
    );
    assert!(!connection.is_connected());
    assert_eq!(connection.send(&b"x"[..]), Err(SendError::Disconnected));
    // The stream was closed: the peer sees end of file.
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn eof_inside_a_frame_is_truncated_frame() {
    // (bytes the peer sends before shutting down, expected disconnect)
    let cases: [(Vec<u8>, &str); 3] = [
        (vec![5, 0], "TruncatedFrame { have: 2, need: 4 }"),
        (
            {
                let mut bytes = 100u32.to_le_bytes().to_vec();
                bytes.extend_from_slice(&[1; 30]);
                bytes
            },
            "TruncatedFrame { have: 34, need: 104 }",
        ),
        (wire(b"whole"), "PeerClosed"),
    ];
    for (bytes, expected) in cases {
        let (left, mut peer) = UnixStream::pair().unwrap();
        let connection = Connection::from_stream(left).unwrap();
        let events = record_events(&connection);
        let reg = registry();
        attach(&connection, &reg, "a");
        peer.write_all(&bytes).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let done = pump(&reg, &[&connection], LIMIT, || {
            events_of(&events)
                .iter()
                .any(|e| e.starts_with("disconnect"))
        });
        assert!(done);
        let last = events_of(&events).pop().unwrap();
        assert_eq!(last, format!("disconnect {expected}"));
    }
}

#[test]
fn frame_announcing_4_gib_allowed_but_cut_costs_only_what_arrived() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    // The maximum is clamped to what the prefix can say: a 4 GiB frame is allowed.
    let config = ConnectionConfig::new().max_frame_size(usize::MAX);
    let connection = Connection::from_stream_with(left, config).unwrap();
    let events = record_events(&connection);
    let reg = registry();
    attach(&connection, &reg, "a");
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[9; 10]);
    peer.write_all(&bytes).unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let largest = largest_allocation_in(|| {
        assert!(pump(&reg, &[&connection], LIMIT, || events_of(&events)
            .len()
            == 2));
    });
    assert_eq!(
        events_of(&events),
        [
            "read closed".to_string(),
            format!(
                "disconnect TruncatedFrame {{ have: 14, need: {} }}",
                4 + u64::from(u32::MAX)
            )
        ]
    );
    assert!(largest < 64 * 1024, "largest allocation {largest} bytes");
}

#[test]
fn peer_that_never_reads_gets_queue_full_and_nothing_is_dropped() {
    let (left, right) = UnixStream::pair().unwrap();
    let cap = 256 * 1024;
    let sender =
        Connection::from_stream_with(left, ConnectionConfig::new().max_outbound_bytes(cap))
            .unwrap();
    let receiver = Connection::from_stream(right).unwrap();
    let reg = registry();
    attach(&sender, &reg, "sender");
    sender.dispatch(); // this thread is now the loop's: no wakeups for its sends

    let frame = |i: u32| {
        let mut payload = i.to_le_bytes().to_vec();
        payload.resize(16 * 1024, (i % 256) as u8);
        payload
    };
    let mut accepted = 0u32;
    let refusal = loop {
        match sender.send(frame(accepted)) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10_000, "the cap never bit");
    };
    let SendError::QueueFull {
        queued,
        cap: told_cap,
    } = refusal
    else {
        panic!("expected QueueFull, got {refusal:?}");
    };
    assert_eq!(told_cap, cap);
    assert!(
        queued <= cap && queued + 4 + 16 * 1024 > cap,
        "queued {queued}"
    );
    assert_eq!(sender.queued_outbound_bytes(), queued);
    assert_eq!(
        log_for(&reg, "sender"),
        ["sender: add W off", "sender: add R on", "sender: W on"]
    );

    // The peer starts reading: every accepted frame arrives, in order, intact.
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let sink = Arc::clone(&got);
    receiver.set_message_handler(move |_, message| sink.lock().unwrap().push(message));
    attach(&receiver, &reg, "receiver");
    let done = pump(&reg, &[&sender, &receiver], LIMIT, || {
        got.lock().unwrap().len() == accepted as usize
    });
    assert!(done, "received {} of {accepted}", got.lock().unwrap().len());
    let expected: Vec<Vec<u8>> = (0..accepted).map(frame).collect();
    assert!(
        *got.lock().unwrap() == expected,
        "frames intact and in order"
    );
    assert_eq!(sender.stats().messages_sent, u64::from(accepted));
    assert_eq!(sender.stats().messages_unsent, 0);
    assert_eq!(
        log_for(&reg, "sender"),
        [
            "sender: add W off",
            "sender: add R on",
            "sender: W on",
            "sender: W off"
        ]
    );
    // Room again.
    sender.send(frame(accepted)).unwrap();
}

#[test]
fn hang_up_reports_exactly_one_disconnect_after_earlier_messages_c15() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let events = record_events(&connection);
    let reg = registry();
    attach(&connection, &reg, "a");
    let statuses: Arc<Mutex<Vec<DispatchStatus>>> = Arc::default();
    let sink = Arc::clone(&statuses);
    connection.set_dispatch_status_function(Some(Box::new(move |s| sink.lock().unwrap().push(s))));

    peer.write_all(&[wire(b"one"), wire(b"two")].concat())
        .unwrap();
    drop(peer);
    // Poll until the hang-up is seen, without dispatching: nothing was queued, so the read
    // handler delivers the messages and the end of file itself; with nothing to write, the
    // connection then closes, watches first (C15).
    assert!(pump(&reg, &[], LIMIT, || !connection.is_connected()));
    assert_eq!(
        log_of(&reg),
        [
            "a: add W off",
            "a: add R on",
            "a: remove R (fd open)",
            "a: remove W (fd open)"
        ]
    );
    assert_eq!(
        events_of(&events),
        ["message one", "message two", "read closed"]
    );
    assert_eq!(*statuses.lock().unwrap(), [DispatchStatus::DataRemains]);
    assert_eq!(connection.stats().direct_deliveries, 2);

    // Then the one disconnect; more dispatching and closing add nothing.
    assert_eq!(connection.dispatch(), DispatchStatus::Complete);
    connection.close();
    assert_eq!(connection.dispatch(), DispatchStatus::Complete);
    assert_eq!(
        events_of(&events),
        [
            "message one",
            "message two",
            "read closed",
            "disconnect PeerClosed"
        ]
    );
    assert_eq!(
        *statuses.lock().unwrap(),
        [DispatchStatus::DataRemains, DispatchStatus::Complete]
    );
    assert_eq!(log_of(&reg).len(), 4, "no glue calls after the teardown");
}

#[test]
fn close_by_us_removes_watches_then_closes_and_reports_closed_once() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let config = ConnectionConfig::new().idle_timeout(Duration::from_secs(60));
    let connection = Connection::from_stream_with(left, config).unwrap();
    let events = record_events(&connection);
    let reg = registry();
    attach(&connection, &reg, "a");
    connection.send(vec![0u8; 1 << 20]).unwrap(); // leaves output queued

    connection.close();
    connection.close();
    assert_eq!(
        log_of(&reg),
        [
            "a: add W off",
            "a: add R on",
            "a: add T on",
            // No handler has run yet, so no thread is known to be the loop's: `send` writes
            // directly, queues the rest, and wakes the loop in case one is attached on
            // another thread. (Activity is noted for the timer, not told to the glue.)
            "a: W on",
            "a: wakeup",
            "a: remove R (fd open)",
            "a: remove W (fd open)",
            "a: remove T",
            "a: wakeup", // the same for the close
        ]
    );
    assert!(connection.stats().messages_unsent == 1);
    assert_eq!(connection.dispatch(), DispatchStatus::Complete);
    assert_eq!(events_of(&events), ["disconnect Closed"]);
    // The socket is closed: the peer reads what got out, then end of file.
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.len() < 4 + (1 << 20));
}

#[test]
fn send_from_another_thread_queues_and_wakes_the_loop_c16() {
    let (left, peer) = UnixStream::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let reg = registry();
    attach(&connection, &reg, "a");
    let (woken, wakeups) = mpsc::channel();
    let log = Arc::clone(&reg);
    connection.set_wakeup_main_function(Some(Box::new(move || {
        log.lock().unwrap().log.push("a: wakeup".into());
        let _ = woken.send(std::thread::current().name().map(String::from));
    })));
    // This thread becomes the loop's: it runs the connection's dispatch.
    connection.dispatch();

    let remote = connection.clone();
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(move || remote.send(&b"from afar"[..]))
        .unwrap();
    let woken_on = wakeups.recv_timeout(LIMIT).expect("the loop was woken");
    assert_eq!(woken_on.as_deref(), Some("worker"));
    worker.join().unwrap().unwrap();
    // Not written by the worker: queued for the loop, with the write watch on.
    assert_eq!(connection.stats().direct_writes, 0);
    assert_eq!(
        log_of(&reg),
        ["a: add W off", "a: add R on", "a: W on", "a: wakeup"]
    );

    let mut received = Vec::new();
    let expected = wire(b"from afar");
    assert!(pump(&reg, &[&connection], LIMIT, || {
        drain_raw(&peer, &mut received);
        received.len() >= expected.len()
    }));
    assert_eq!(received, expected);
    assert_eq!(
        log_of(&reg),
        [
            "a: add W off",
            "a: add R on",
            "a: W on",
            "a: wakeup",
            "a: W off"
        ]
    );
    assert_eq!(connection.stats().wakeups, 1);
}

#[test]
fn server_calls_the_new_connection_function_for_each_client() {
    let path = socket_path("accept");
    let server = Server::bind_with(&path, ServerConfig::new().accept_budget(2)).unwrap();
    let reg = registry();
    attach(&server, &reg, "srv");
    let accepted: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let messages: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = Arc::clone(&accepted);
    let sink = Arc::clone(&messages);
    let glue = Arc::clone(&reg);
    server.set_new_connection_function(move |connection| {
        let sink = Arc::clone(&sink);
        connection.set_message_handler(move |_, message| sink.lock().unwrap().push(message));
        // The application attaches each connection to its loop, as with libdbus.
        attach(&connection, &glue, "conn");
        keep.lock().unwrap().push(connection);
    });

    let clients: Vec<Connection> = (0..5)
        .map(|_| Connection::connect(&path).unwrap())
        .collect();
    // One report accepts at most the budget (C17)...
    assert_eq!(
        server.watch().handle(WatchFlags::READABLE),
        Delivery::Delivered
    );
    assert_eq!(accepted.lock().unwrap().len(), 2);
    // ...and level-triggered polling takes the rest.
    assert!(pump(&reg, &[], LIMIT, || accepted.lock().unwrap().len() == 5));
    assert_eq!(server.stats().accepted, 5);
    assert_eq!(
        log_for(&reg, "conn"),
        // Accepted connections get the server's idle and frame timeouts: one timer each.
        ["conn: add W off", "conn: add R on", "conn: add T on"].repeat(5)
    );
    let timer = accepted.lock().unwrap()[0].timeout().unwrap();
    assert_eq!(timer.interval(), ServerConfig::DEFAULT_FRAME_TIMEOUT / 4);

    for (i, client) in clients.iter().enumerate() {
        client.send(vec![i as u8]).unwrap();
    }
    let sources: Vec<Connection> = accepted.lock().unwrap().clone();
    let sources: Vec<&dyn Source> = sources.iter().map(|c| c as &dyn Source).collect();
    assert!(pump(&reg, &sources, LIMIT, || messages
        .lock()
        .unwrap()
        .len()
        == 5));
    let mut got = messages.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());

    server.disconnect();
    assert!(!server.is_connected());
    assert_eq!(
        log_for(&reg, "srv"),
        [
            "srv: add R on",
            "srv: add T off",
            "srv: remove R (fd open)",
            "srv: remove T"
        ]
    );
    assert!(!path.exists(), "socket file unlinked on close");
    assert!(Connection::connect(&path).is_err());
}

#[test]
fn server_without_function_closes_clients_and_keeps_file_if_asked() {
    let path = socket_path("refuse");
    let server = Server::bind_with(&path, ServerConfig::new().unlink_on_close(false)).unwrap();
    let client = Connection::connect(&path).unwrap();
    let events = record_events(&client);
    let reg = registry();
    attach(&client, &reg, "client");
    server.watch().handle(WatchFlags::READABLE);
    assert_eq!(server.stats().refused, 1);
    assert!(pump(&reg, &[&client], LIMIT, || events_of(&events).len() == 2));
    assert_eq!(events_of(&events), ["read closed", "disconnect PeerClosed"]);
    drop(server);
    assert!(path.exists(), "unlink_on_close(false) keeps the file");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn idle_timeout_counts_silent_periods_and_activity_resets_them_without_glue_calls() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let config = ConnectionConfig::new().idle_timeout(Duration::from_secs(30));
    let connection = Connection::from_stream_with(left, config).unwrap();
    let events = record_events(&connection);
    let reg = registry();
    attach(&connection, &reg, "a");
    assert_eq!(log_of(&reg), ["a: add W off", "a: add R on", "a: add T on"]);
    let timer = reg.lock().unwrap().timeouts[0].clone();
    // One periodic check, a quarter of the timeout: nothing is re-armed per message.
    assert_eq!(timer.interval(), Duration::from_secs(30) / 4);

    // Three silent periods, then activity: the count starts again.
    for _ in 0..3 {
        assert_eq!(timer.handle(), Delivery::Delivered);
    }
    peer.write_all(&wire(b"hi")).unwrap();
    assert!(pump(&reg, &[&connection], LIMIT, || !events_of(&events)
        .is_empty()));
    assert_eq!(log_of(&reg).len(), 3, "activity costs no glue call");
    assert_eq!(timer.handle(), Delivery::Delivered); // saw the activity
    for _ in 0..3 {
        assert_eq!(timer.handle(), Delivery::Delivered);
        assert!(connection.is_connected());
    }
    // The fourth silent period since the activity: 30 s of silence.
    assert_eq!(timer.handle(), Delivery::Delivered);
    assert!(!connection.is_connected());
    assert_eq!(
        log_of(&reg)[3..],
        [
            "a: remove R (fd open)",
            "a: remove W (fd open)",
            "a: remove T"
        ]
    );
    connection.dispatch();
    assert_eq!(events_of(&events), ["message hi", "disconnect IdleTimeout"]);
    assert_eq!(timer.handle(), Delivery::Removed);
}

#[test]
fn close_from_inside_the_glue_closes_the_fd_only_after_the_removal_c11_c15() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let reg = registry();
    // A glue whose `toggled` closes the connection: the removals are queued behind it.
    struct Closing {
        inner: WatchGlue,
        connection: Arc<Mutex<Option<Connection>>>,
    }
    impl WatchFunctions for Closing {
        fn add(&mut self, watch: &Watch) -> io::Result<()> {
            self.inner.add(watch)
        }
        fn remove(&mut self, watch: &Watch) {
            self.inner.remove(watch);
        }
        fn toggled(&mut self, watch: &Watch) {
            self.inner.toggled(watch);
            if let Some(connection) = self.connection.lock().unwrap().take() {
                connection.close();
            }
        }
    }
    let slot = Arc::new(Mutex::new(Some(connection.clone())));
    let glue = Closing {
        inner: WatchGlue {
            reg: Arc::clone(&reg),
            name: "a",
        },
        connection: Arc::clone(&slot),
    };
    connection
        .set_watch_functions(Some(Box::new(glue)))
        .map_err(|e| e.into_error())
        .unwrap();
    let events = record_events(&connection);
    connection.send(vec![1u8; 1 << 20]).unwrap(); // toggles the write watch on → close
    assert_eq!(
        log_of(&reg),
        [
            "a: add W off",
            "a: add R on",
            "a: W on",
            "a: remove R (fd open)",
            "a: remove W (fd open)"
        ]
    );
    assert!(!connection.is_connected());
    connection.dispatch();
    assert_eq!(events_of(&events), ["disconnect Closed"]);
    // Closed by now: the peer reaches end of file.
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
}

#[test]
fn dispatch_from_inside_the_message_handler_returns_at_once_c16() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let seen: Arc<Mutex<Vec<(String, DispatchStatus)>>> = Arc::default();
    let sink = Arc::clone(&seen);
    connection.set_message_handler(move |connection, message| {
        // Reentrant dispatch: the running call keeps delivering, in order.
        let inner = connection.dispatch();
        sink.lock()
            .unwrap()
            .push((String::from_utf8(message).unwrap(), inner));
    });
    peer.write_all(&[wire(b"a"), wire(b"b")].concat()).unwrap();
    connection.read_watch().handle(WatchFlags::READABLE);
    assert_eq!(connection.dispatch(), DispatchStatus::Complete);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("a".to_string(), DispatchStatus::DataRemains),
            ("b".to_string(), DispatchStatus::Complete)
        ]
    );
}

#[test]
fn send_refuses_a_payload_over_the_maximum() {
    let (left, _peer) = UnixStream::pair().unwrap();
    let connection =
        Connection::from_stream_with(left, ConnectionConfig::new().max_frame_size(8)).unwrap();
    assert_eq!(
        connection.send(vec![0u8; 9]),
        Err(SendError::FrameTooLarge { len: 9, max: 8 })
    );
    assert_eq!(connection.send(vec![0u8; 8]), Ok(()));
    assert!(connection.is_connected());
}

#[test]
fn server_pauses_after_a_failed_accept_and_its_timeout_resumes_it() {
    let path = socket_path("pause");
    let server = Server::bind(&path).unwrap();
    let reg = registry();
    attach(&server, &reg, "srv");
    // An error reported with nothing to accept: polling again at once would spin.
    assert_eq!(
        server.watch().handle(WatchFlags::ERROR),
        Delivery::Delivered
    );
    assert_eq!(server.stats().accept_errors, 1);
    assert!(server.retry_timeout().is_enabled());
    // The glue finds the retry timeout due.
    assert_eq!(server.retry_timeout().handle(), Delivery::Delivered);
    assert_eq!(
        log_of(&reg),
        [
            "srv: add R on",
            "srv: add T off",
            "srv: R off",
            "srv: T on",
            "srv: T off",
            "srv: R on"
        ]
    );
    // Accepting works again.
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    server.set_new_connection_function(move |_| {
        seen.fetch_add(1, Ordering::Relaxed);
    });
    let _client = Connection::connect(&path).unwrap();
    assert!(pump(&reg, &[], LIMIT, || count.load(Ordering::Relaxed) == 1));
}

#[test]
fn a_panicking_message_handler_leaves_the_connection_usable() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&got);
    connection.set_message_handler(move |_, message| {
        let text = String::from_utf8(message).unwrap();
        if text == "boom" {
            panic!("handler refuses {text}");
        }
        sink.lock().unwrap().push(text);
    });
    peer.write_all(&[wire(b"one"), wire(b"boom"), wire(b"two")].concat())
        .unwrap();
    // Nothing was queued: the read handler delivers straight to the message handler, and
    // the panic reaches the glue that reported the socket readable.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        connection.read_watch().handle(WatchFlags::READABLE)
    }));
    assert!(outcome.is_err(), "the panic reaches the caller");
    assert_eq!(connection.dispatch_status(), DispatchStatus::DataRemains);
    // The same handler, still installed, takes the rest; "boom" was consumed.
    assert_eq!(connection.dispatch(), DispatchStatus::Complete);
    assert_eq!(*got.lock().unwrap(), ["one", "two"]);
    connection.send(&b"still open"[..]).unwrap();
}

#[test]
fn a_handler_replaced_during_dispatch_takes_the_next_message() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = Arc::clone(&got);
    connection.set_message_handler(move |connection, message| {
        sink.lock().unwrap().push(format!("first {}", message[0]));
        let sink = Arc::clone(&sink);
        connection.set_message_handler(move |_, message| {
            sink.lock().unwrap().push(format!("second {}", message[0]));
        });
    });
    peer.write_all(&[wire(&[1]), wire(&[2]), wire(&[3])].concat())
        .unwrap();
    connection.read_watch().handle(WatchFlags::READABLE);
    assert_eq!(connection.dispatch_status(), DispatchStatus::Complete);
    assert_eq!(*got.lock().unwrap(), ["first 1", "second 2", "second 3"]);
}

#[test]
fn sends_from_many_threads_all_arrive_in_per_thread_order_c13_c16() {
    const THREADS: u32 = 4;
    const EACH: u32 = 300;
    let (left, right) = UnixStream::pair().unwrap();
    // A small outbound cap makes the workers meet QueueFull and retry, racing the loop's
    // writes and toggles.
    let config = ConnectionConfig::new().max_outbound_bytes(8192);
    let sender = Connection::from_stream_with(left, config).unwrap();
    let receiver = Connection::from_stream(right).unwrap();
    let reg = registry();
    attach(&sender, &reg, "sender");
    attach(&receiver, &reg, "receiver");
    sender.dispatch(); // this thread is the loop's
    let got: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let sink = Arc::clone(&got);
    receiver.set_message_handler(move |_, message| {
        let word = |i: usize| u32::from_le_bytes(message[i..i + 4].try_into().unwrap());
        sink.lock().unwrap().push((word(0), word(4)));
    });

    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let sender = sender.clone();
            std::thread::spawn(move || {
                let mut refusals = 0u32;
                for seq in 0..EACH {
                    let mut payload = thread.to_le_bytes().to_vec();
                    payload.extend_from_slice(&seq.to_le_bytes());
                    payload.resize(512, 0);
                    loop {
                        match sender.send(payload.clone()) {
                            Ok(()) => break,
                            Err(SendError::QueueFull { .. }) => {
                                refusals += 1;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("send: {e}"),
                        }
                    }
                }
                refusals
            })
        })
        .collect();
    let total = (THREADS * EACH) as usize;
    let done = pump(&reg, &[&sender, &receiver], LIMIT, || {
        got.lock().unwrap().len() == total
    });
    assert!(done, "received {} of {total}", got.lock().unwrap().len());
    let refusals: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let got = got.lock().unwrap().clone();
    for thread in 0..THREADS {
        let seqs: Vec<u32> = got
            .iter()
            .filter(|(t, _)| *t == thread)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "thread {thread}");
    }
    // Quiet again: nothing queued, the write watch off, and the glue told so last.
    assert!(!sender.has_messages_to_send());
    assert!(!sender.write_watch().is_enabled());
    let last_write_toggle = log_for(&reg, "sender")
        .into_iter()
        .rfind(|line| line.starts_with("sender: W "));
    assert_eq!(last_write_toggle.as_deref(), Some("sender: W off"));
    let stats = sender.stats();
    assert_eq!(stats.messages_sent, u64::from(THREADS * EACH));
    eprintln!(
        "{refusals} QueueFull retries, {} wakeups, {} write-watch enables",
        stats.wakeups, stats.write_watch_enabled
    );
}

#[test]
fn a_peer_gone_while_we_write_is_peer_closed_not_broken_pipe() {
    let (left, peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let events = record_events(&connection);
    drop(peer);
    // The direct write meets EPIPE.
    assert_eq!(
        connection.send(&b"anyone there?"[..]),
        Err(SendError::Disconnected)
    );
    assert_eq!(connection.dispatch(), DispatchStatus::Complete);
    assert_eq!(events_of(&events), ["disconnect PeerClosed"]);
}

#[test]
fn a_peer_that_closes_with_our_data_unread_is_peer_closed_not_connection_reset() {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let connection = Connection::from_stream(left).unwrap();
    let events = record_events(&connection);
    let reg = registry();
    attach(&connection, &reg, "a");
    // The peer sends a message, leaves what we sent it unread and closes: our next read
    // fails with ECONNRESET once the message is read.
    connection.send(&b"never read"[..]).unwrap();
    peer.write_all(&wire(b"last words")).unwrap();
    drop(peer);
    assert!(pump(&reg, &[&connection], LIMIT, || events_of(&events)
        .iter()
        .any(|e| e.starts_with("disconnect"))));
    assert_eq!(
        events_of(&events),
        ["message last words", "disconnect PeerClosed"]
    );
}

const REQUEST: usize = 16 * 1024 - 4;

/// A peer that half-closes and reads: what the handlers send after the end of file reaches
/// it, however much, before the connection closes — or not, under the other policies.
fn half_closed_peer(policy: HalfClose) -> (Vec<u8>, Vec<String>, Connection, UnixStream) {
    let (left, mut peer) = UnixStream::pair().unwrap();
    let config = ConnectionConfig::new().half_close(policy);
    let connection = Connection::from_stream_with(left, config).unwrap();
    let events = record_events(&connection);
    // A reply bigger than the socket buffer: it needs the write watch to get out.
    let sink = Arc::clone(&events);
    connection.set_message_handler(move |connection, message| {
        let sent = connection.send(vec![7u8; 1 << 20]);
        sink.lock()
            .unwrap()
            .push(format!("message of {} bytes -> {sent:?}", message.len()));
    });
    let sink = Arc::clone(&events);
    connection.set_read_closed_handler(move |connection| {
        let sent = connection.send(&b"bye"[..]);
        sink.lock()
            .unwrap()
            .push(format!("read closed -> {sent:?}"));
    });
    let reg = registry();
    attach(&connection, &reg, "a");
    // A request that fills one 16 KiB read exactly, so that the connection reads the end of
    // file in the same pass as the request (the case issue 8 found), then the end of file.
    peer.write_all(&wire(&[b'r'; REQUEST])).unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut eof = false;
    let deadline = Instant::now() + LIMIT;
    while !eof && Instant::now() < deadline {
        pump(&reg, &[&connection], Duration::from_millis(20), || false);
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match peer.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        if policy == HalfClose::Keep
            && connection.is_read_closed()
            && got.len() >= 4 + (1 << 20) + 7
        {
            break;
        }
    }
    connection.dispatch();
    (got, events_of(&events), connection, peer)
}

#[test]
fn half_close_flush_sends_every_reply_then_closes() {
    let (got, events, connection, _peer) = half_closed_peer(HalfClose::Flush);
    assert_eq!(
        got.len(),
        4 + (1 << 20) + 4 + 3,
        "the big reply and the goodbye"
    );
    assert_eq!(&got[got.len() - 7..], b"\x03\0\0\0bye");
    assert_eq!(
        events,
        [
            "message of 16380 bytes -> Ok(())",
            "read closed -> Ok(())",
            "disconnect PeerClosed"
        ]
    );
    assert!(!connection.is_connected());
}

#[test]
fn half_close_close_is_libdbus_closing_at_once() {
    let (got, events, connection, _peer) = half_closed_peer(HalfClose::Close);
    assert!(got.is_empty());
    assert_eq!(
        events,
        [
            "message of 16380 bytes -> Err(Disconnected)",
            "read closed -> Err(Disconnected)",
            "disconnect PeerClosed"
        ]
    );
    assert!(!connection.is_connected());
}

#[test]
fn half_close_keep_stays_open_for_writing_until_closed() {
    let (got, events, connection, mut peer) = half_closed_peer(HalfClose::Keep);
    assert_eq!(got.len(), 4 + (1 << 20) + 4 + 3);
    assert_eq!(
        events,
        ["message of 16380 bytes -> Ok(())", "read closed -> Ok(())"]
    );
    assert!(connection.is_connected() && connection.is_read_closed());
    connection.send(&b"later"[..]).unwrap();
    connection.close();
    connection.dispatch();
    assert!(!connection.is_connected());
    peer.set_nonblocking(false).unwrap();
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, wire(b"later"));
}

#[test]
fn a_frame_longer_than_the_servers_memory_cap_is_refused_from_its_prefix() {
    let path = socket_path("cap");
    let server = Server::bind_with(&path, ServerConfig::new().max_buffered_bytes(1024)).unwrap();
    let reg = registry();
    attach(&server, &reg, "srv");
    let accepted: Arc<Mutex<Vec<(Connection, Events)>>> = Arc::default();
    let keep = Arc::clone(&accepted);
    let glue = Arc::clone(&reg);
    server.set_new_connection_function(move |connection| {
        let events = record_events(&connection);
        attach(&connection, &glue, "conn");
        keep.lock().unwrap().push((connection, events));
    });
    let mut client = UnixStream::connect(&path).unwrap();
    client.write_all(&wire(&[0xff; 1000])).unwrap(); // not UTF-8: logged by length
    client.write_all(&2000u32.to_le_bytes()).unwrap();
    let done = || {
        let accepted = accepted.lock().unwrap();
        accepted
            .first()
            .is_some_and(|(_, events)| events_of(events).len() == 2)
    };
    let sources: Vec<&dyn Source> = vec![&server];
    assert!(pump(&reg, &sources, LIMIT, || {
        let accepted = accepted.lock().unwrap();
        for (connection, _) in accepted.iter() {
            connection.dispatch();
        }
        drop(accepted);
        done()
    }));
    let accepted = accepted.lock().unwrap();
    assert_eq!(
        events_of(&accepted[0].1),
        [
            "message of 1000 bytes".to_string(),
            "disconnect FrameTooLarge { len: 2000, max: 1024 }".to_string()
        ]
    );
    assert_eq!(server.stats().reserved_bytes, 0);
    assert!(server.stats().peak_reserved_bytes <= 1024);
}
