//! MainLoop on both backends: merged registrations (C18), toggling, level-triggered partial
//! reads (C17), periodic timeouts and restart (C9, C10), quit and wake from other threads,
//! closed fds (C15), and scale. Waits are bounded by deadlines on real readiness; time is only
//! ever checked as a lower bound.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::bounded;
use loopglue::main_loop::{Backend, MainLoop};
use loopglue::testing::SocketPeer;
use loopglue::{Source, Timeout, TimeoutList, Watch, WatchFlags, WatchList};

const DEADLINE: Duration = Duration::from_secs(10);

fn backends() -> Vec<Backend> {
    vec![Backend::Epoll, Backend::Poll]
}

/// Runs the loop until `done` or the deadline; false on timeout.
fn run_until(lp: &MainLoop, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + DEADLINE;
    while !done() {
        let now = Instant::now();
        if now >= end {
            return false;
        }
        lp.run_once(Some((end - now).min(Duration::from_millis(20))))
            .expect("run_once");
    }
    true
}

/// A peer attached to `lp`, the other end of its socket, and the attached source — which the
/// caller keeps alive, since the loop holds sources weakly.
fn peer(lp: &MainLoop, budget: usize) -> (SocketPeer, UnixStream, Arc<dyn Source>) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, budget).unwrap();
    let source: Arc<dyn Source> = Arc::new(peer.clone());
    lp.attach(Arc::clone(&source)).unwrap();
    (peer, theirs, source)
}

#[test]
fn c18_two_watches_on_one_fd_are_one_registration() {
    for backend in backends() {
        let lp = MainLoop::with_backend(backend).unwrap();
        assert_eq!(lp.backend(), backend);
        let (peer, other, _source) = peer(&lp, 4096);
        assert_eq!(lp.registered_fds(), 1, "{backend:?}: read watch only");
        peer.queue(b"x");
        assert_eq!(lp.registered_fds(), 1, "{backend:?}: both watches, one fd");
        (&other).write_all(b"ping").unwrap();
        assert!(run_until(&lp, || peer.received_len() == 4
            && !peer.write_watch().is_enabled()));
        let mut got = [0u8; 1];
        (&other).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        peer.close();
        assert_eq!(lp.registered_fds(), 0, "{backend:?}: removed before close");
    }
}

#[test]
fn c17_level_triggered_one_byte_per_handle() {
    for backend in backends() {
        let lp = MainLoop::with_backend(backend).unwrap();
        let (peer, other, _source) = peer(&lp, 1);
        (&other).write_all(&[7u8; 300]).unwrap();
        let mut rounds = 0;
        assert!(run_until(&lp, || {
            rounds += 1;
            peer.received_len() == 300
        }));
        assert!(
            rounds >= 2,
            "{backend:?}: needs many handles, one byte each"
        );
        assert_eq!(peer.received(), vec![7u8; 300]);
    }
}

/// Starts a runner thread that blocks in `run_once(None)` — no timeout at all, so only a wakeup
/// can end each wait — until `peer` has enabled its write watch and flushed; then checks that
/// the other end receives `expected` after `act` runs on this thread.
fn woken_by(backend: Backend, expected: &[u8], act: impl FnOnce(&SocketPeer)) {
    let lp = Arc::new(MainLoop::with_backend(backend).unwrap());
    let (peer, mut other, _source) = peer(&lp, 4096);
    let (l, p) = (Arc::clone(&lp), peer.clone());
    let runner = std::thread::spawn(move || {
        let end = Instant::now() + DEADLINE;
        while p.write_enables() == 0 || p.pending_output() > 0 {
            assert!(Instant::now() < end, "never flushed");
            l.run_once(None).unwrap();
        }
    });
    act(&peer);
    bounded(move || runner.join().unwrap());
    other.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = vec![0u8; expected.len()];
    other.read_exact(&mut got).unwrap();
    assert_eq!(got, expected, "{backend:?}");
}

#[test]
fn write_watch_toggled_from_another_thread_wakes_the_loop() {
    // For poll(2) the new interest needs a new wait: the toggle's wakeup provides it.
    for backend in backends() {
        woken_by(backend, b"from a worker", |peer| {
            peer.queue(b"from a worker")
        });
    }
}

#[test]
fn c10_timeouts_are_periodic_and_c9_restart_on_enable() {
    for backend in backends() {
        let lp = MainLoop::with_backend(backend).unwrap();
        let list = TimeoutList::new();
        list.set_functions(Some(lp.timeout_functions())).unwrap();
        let fired: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let f = Arc::clone(&fired);
        let period = Duration::from_millis(15);
        let t = Timeout::new(period, move || f.lock().unwrap().push(Instant::now()));
        let start = Instant::now();
        list.add(&t).unwrap();
        assert!(run_until(&lp, || fired.lock().unwrap().len() >= 3));
        let times = fired.lock().unwrap().clone();
        assert!(
            times[0] - start >= period,
            "{backend:?}: first fire too early"
        );
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= period - Duration::from_millis(1));
        }
        list.toggle(&t, false).unwrap();
        let n = fired.lock().unwrap().len();
        lp.run_once(Some(period * 3)).unwrap();
        assert_eq!(
            fired.lock().unwrap().len(),
            n,
            "{backend:?}: disabled timeout fired"
        );
        let enabled_at = Instant::now();
        list.toggle(&t, true).unwrap();
        assert!(run_until(&lp, || fired.lock().unwrap().len() > n));
        let again = *fired.lock().unwrap().last().unwrap();
        assert!(
            again - enabled_at >= period,
            "{backend:?}: period not restarted"
        );
        list.remove(&t).unwrap();
        assert_eq!(lp.timeouts(), 0);
    }
}

#[test]
fn quit_from_another_thread_ends_run() {
    for backend in backends() {
        let lp = MainLoop::with_backend(backend).unwrap();
        let list = TimeoutList::new();
        list.set_functions(Some(lp.timeout_functions())).unwrap();
        // A timeout tells the other thread the loop is running; that thread then quits it.
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(Some(tx));
        list.add(&Timeout::new(Duration::from_millis(1), move || {
            if let Some(tx) = tx.lock().unwrap().take() {
                tx.send(()).unwrap();
            }
        }))
        .unwrap();
        let handle = lp.handle();
        let quitter = std::thread::spawn(move || {
            rx.recv_timeout(DEADLINE).expect("the loop ran");
            handle.quit();
        });
        let lp = Arc::new(lp);
        let l = Arc::clone(&lp);
        bounded(move || l.run().unwrap());
        quitter.join().unwrap();
        drop(list);
    }
}

#[test]
fn wake_from_another_thread_interrupts_an_unbounded_wait() {
    for backend in backends() {
        let lp = Arc::new(MainLoop::with_backend(backend).unwrap());
        let handle = lp.handle();
        std::thread::spawn(move || handle.wake());
        let l = Arc::clone(&lp);
        assert_eq!(bounded(move || l.run_once(None).unwrap()), 0, "{backend:?}");
    }
}

#[test]
fn run_once_refuses_a_second_runner() {
    let lp = Arc::new(MainLoop::new().unwrap());
    let list = Arc::new(WatchList::new());
    list.set_functions(Some(lp.watch_functions())).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    (&b).write_all(b"!").unwrap();
    let nested: Arc<Mutex<Option<std::io::ErrorKind>>> = Arc::default();
    let (l, n) = (Arc::clone(&lp), Arc::clone(&nested));
    let w = Watch::new(a.as_raw_fd(), WatchFlags::READABLE, move |_| {
        *n.lock().unwrap() = l.run_once(Some(Duration::ZERO)).err().map(|e| e.kind());
    });
    list.add(&w).unwrap();
    assert!(run_until(&lp, || nested.lock().unwrap().is_some()));
    assert_eq!(
        *nested.lock().unwrap(),
        Some(std::io::ErrorKind::WouldBlock)
    );
    list.remove(&w).unwrap();
}

#[test]
fn c15_epoll_refuses_a_closed_fd_at_add() {
    let lp = MainLoop::with_backend(Backend::Epoll).unwrap();
    let list = WatchList::new();
    list.set_functions(Some(lp.watch_functions())).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.into_raw_fd();
    nix::unistd::close(fd).unwrap();
    let w = Watch::new(fd, WatchFlags::READABLE, |_| {});
    match list.add(&w) {
        Err(loopglue::Error::Refused(e)) => assert_eq!(e.raw_os_error(), Some(nix::libc::EBADF)),
        other => panic!("expected EBADF, got {other:?}"),
    }
    assert_eq!(lp.registered_fds(), 0);
}

#[test]
fn c15_poll_drops_a_closed_fd_without_spinning() {
    let lp = MainLoop::with_backend(Backend::Poll).unwrap();
    let list = WatchList::new();
    list.set_functions(Some(lp.watch_functions())).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.into_raw_fd();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handled);
    let w = Watch::new(fd, WatchFlags::READABLE, move |_| {
        h.fetch_add(1, Ordering::SeqCst);
    });
    list.add(&w).unwrap();
    nix::unistd::close(fd).unwrap(); // breaks C15 on purpose
    lp.run_once(Some(Duration::ZERO)).unwrap(); // POLLNVAL: dropped
    assert_eq!(lp.dropped_fds(), 1);
    // Now a wait blocks for its whole timeout instead of returning at once, again and again.
    let start = Instant::now();
    assert_eq!(lp.run_once(Some(Duration::from_millis(30))).unwrap(), 0);
    assert!(
        start.elapsed() >= Duration::from_millis(25),
        "the loop spun"
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0);
    list.remove(&w).unwrap();
}

#[test]
fn c15_epoll_tolerates_an_fd_closed_while_registered() {
    let lp = MainLoop::with_backend(Backend::Epoll).unwrap();
    let list = WatchList::new();
    list.set_functions(Some(lp.watch_functions())).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.into_raw_fd();
    let w = Watch::new_disabled(fd, WatchFlags::READABLE, |_| {});
    list.add(&w).unwrap();
    list.toggle(&w, true).unwrap();
    nix::unistd::close(fd).unwrap(); // breaks C15: the kernel forgets the registration
    list.toggle(&w, false).unwrap();
    list.toggle(&w, true).unwrap(); // EPOLL_CTL_ADD on a closed fd: EBADF, dropped
    assert_eq!(lp.dropped_fds(), 1);
    let start = Instant::now();
    assert_eq!(lp.run_once(Some(Duration::from_millis(30))).unwrap(), 0);
    assert!(
        start.elapsed() >= Duration::from_millis(25),
        "the loop spun"
    );
    list.remove(&w).unwrap();
}

#[test]
fn scale_100k_watches_and_100k_timeouts() {
    for backend in backends() {
        let lp = MainLoop::with_backend(backend).unwrap();
        let watches = WatchList::new();
        let timeouts = TimeoutList::new();
        watches.set_functions(Some(lp.watch_functions())).unwrap();
        timeouts
            .set_functions(Some(lp.timeout_functions()))
            .unwrap();
        // 5,000 socketpairs, 10 watches on each end: 100,000 watches on 10,000 fds.
        let pairs: Vec<(UnixStream, UnixStream)> =
            (0..5_000).map(|_| UnixStream::pair().unwrap()).collect();
        let mut all = Vec::with_capacity(100_000);
        for (a, b) in &pairs {
            for fd in [a.as_raw_fd(), b.as_raw_fd()] {
                for i in 0..10 {
                    let flags = if i % 2 == 0 {
                        WatchFlags::READABLE
                    } else {
                        WatchFlags::WRITABLE
                    };
                    let w = Watch::new_disabled(fd, flags, |_| {});
                    watches.add(&w).unwrap();
                    all.push(w);
                }
            }
        }
        for w in all.iter().step_by(2) {
            watches.toggle(w, true).unwrap();
        }
        assert_eq!(lp.registered_fds(), 10_000, "{backend:?}");
        let ts: Vec<Timeout> = (0..100_000u64)
            .map(|i| Timeout::new(Duration::from_secs(3600 + i), || {}))
            .collect();
        for t in &ts {
            timeouts.add(t).unwrap();
        }
        assert_eq!(lp.timeouts(), 100_000);
        lp.run_once(Some(Duration::ZERO)).unwrap();
        for t in ts.iter().step_by(3) {
            timeouts.toggle(t, false).unwrap();
        }
        for w in &all {
            watches.remove(w).unwrap();
        }
        for t in &ts {
            timeouts.remove(t).unwrap();
        }
        assert_eq!((lp.registered_fds(), lp.timeouts()), (0, 0), "{backend:?}");
    }
}

#[test]
fn dispatch_runs_for_work_posted_from_another_thread() {
    for backend in backends() {
        woken_by(backend, b"posted", |peer| peer.post(b"posted"));
    }
}
