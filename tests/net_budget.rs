//! A server-wide memory cap (issue 8, defect 2): twenty clients each send a 16 MiB frame at
//! once to a server capped at 40 MiB. The heap — measured by a counting allocator, not by
//! the server's own bookkeeping — never grows past the cap (plus a little for the loop and
//! the connections themselves), the server's reserved bytes never exceed it, reading pauses,
//! and every frame arrives intact. One test in this file: the allocator counts the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::net::{Connection, Server, ServerConfig};
use loopglue::MainLoop;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let now = CURRENT.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the bookkeeping is two atomics, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLIENTS: usize = 20;
const FRAME: usize = 16 << 20;
const CAP: usize = 40 << 20;
/// The loop, the connections' own structures and the threads' small allocations.
const SLACK: usize = 4 << 20;

#[test]
fn twenty_clients_sending_16_mib_frames_stay_under_a_40_mib_cap_and_all_arrive() {
    let path = std::env::temp_dir().join(format!("loopglue-budget-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // One pattern shared by all clients (only its first 8 bytes, the client's number,
    // differ), so that the clients' side costs one frame of heap, not twenty.
    let pattern: Arc<Vec<u8>> = Arc::new((0..FRAME).map(|i| (i * 7 + 3) as u8).collect());

    let main_loop = Arc::new(MainLoop::new().unwrap());
    let config = ServerConfig::new().max_buffered_bytes(CAP);
    let server = Server::bind_with(&path, config).unwrap();
    let arrived: Arc<Mutex<Vec<u64>>> = Arc::default();
    let damaged = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<Mutex<Vec<Connection>>> = Arc::default();
    {
        let (lp, arrived, damaged, pattern, accepted) = (
            Arc::clone(&main_loop),
            Arc::clone(&arrived),
            Arc::clone(&damaged),
            Arc::clone(&pattern),
            Arc::clone(&accepted),
        );
        server.set_new_connection_function(move |conn: Connection| {
            accepted.lock().unwrap().push(conn.clone());
            let (arrived, damaged, pattern) = (
                Arc::clone(&arrived),
                Arc::clone(&damaged),
                Arc::clone(&pattern),
            );
            conn.set_message_handler(move |conn, frame| {
                let id = u64::from_le_bytes(frame[..8].try_into().unwrap());
                if frame.len() != FRAME || frame[8..] != pattern[8..] {
                    damaged.fetch_add(1, Ordering::Relaxed);
                }
                drop(frame);
                arrived.lock().unwrap().push(id);
                let _ = conn.send(&b"ok"[..]);
            });
            lp.attach(Arc::new(conn)).unwrap();
        });
    }
    main_loop.attach(Arc::new(server.clone())).unwrap();

    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|id| {
            let (path, pattern) = (path.clone(), Arc::clone(&pattern));
            std::thread::spawn(move || {
                let mut stream = UnixStream::connect(path).unwrap();
                stream.write_all(&(FRAME as u32).to_le_bytes()).unwrap();
                stream.write_all(&id.to_le_bytes()).unwrap();
                stream.write_all(&pattern[8..]).unwrap();
                let mut ack = [0u8; 6];
                stream.read_exact(&mut ack).unwrap();
                assert_eq!(&ack, b"\x02\0\0\0ok");
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while arrived.lock().unwrap().len() < CLIENTS {
        assert!(Instant::now() < deadline, "not every frame arrived in time");
        main_loop.run_once(Some(Duration::from_millis(50))).unwrap();
    }
    // The acks are small: written at once. Let the clients finish.
    for client in clients {
        client.join().unwrap();
    }
    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    let stats = server.stats();

    let mut ids = arrived.lock().unwrap().clone();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..CLIENTS as u64).collect::<Vec<_>>(),
        "every frame, once"
    );
    assert_eq!(damaged.load(Ordering::Relaxed), 0, "every frame intact");
    assert!(
        stats.peak_reserved_bytes <= CAP as u64,
        "reserved {} > cap {CAP}",
        stats.peak_reserved_bytes
    );
    assert!(stats.budget_waits > 0, "the cap was reached: {stats:?}");
    assert_eq!(stats.reserved_bytes, 0, "every reservation given back");
    let paused: u64 = accepted
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.stats().read_watch_disabled)
        .sum();
    assert!(
        paused > 0,
        "waiting connections turned their read watches off"
    );
    assert!(
        peak <= CAP + SLACK,
        "the heap grew by {} MiB; cap {} MiB",
        peak >> 20,
        CAP >> 20
    );
    server.disconnect();
}
