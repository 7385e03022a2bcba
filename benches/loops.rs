//! The side-by-side harness: the same socketpair ping-pong through `MainLoop` + watches and
//! through a hand-written epoll loop (the physical limit), in one run, with the ratio per N;
//! and a timeout-heavy run.
//!
//! Each N is run five times per loop, alternating, and the medians are compared.
//!
//! `cargo bench --bench loops` (1,000,000 round trips per N), or
//! `cargo bench --bench loops -- --quick` (100,000). For a profiler, one loop alone:
//! `--only main|epoll N TRIPS` (e.g. under `valgrind --tool=callgrind`, which counts
//! instructions and is immune to load on a shared machine).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::{MainLoop, Timeout, TimeoutList, Watch, WatchFlags, WatchList};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

const MESSAGE: [u8; 8] = *b"pingpong";

fn pairs(n: usize) -> Vec<(UnixStream, UnixStream)> {
    (0..n)
        .map(|_| {
            let (a, b) = UnixStream::pair().expect("socketpair");
            a.set_nonblocking(true).unwrap();
            b.set_nonblocking(true).unwrap();
            (a, b)
        })
        .collect()
}

/// One end's work when readable: the server echoes; the client counts a round trip and, if
/// more remain, sends again. Shared by both loops so they do exactly the same I/O.
fn on_readable(stream: &UnixStream, client: Option<(&AtomicUsize, usize, &AtomicUsize)>) {
    let mut buf = [0u8; 8];
    let mut s = stream;
    match s.read(&mut buf) {
        Ok(8) => {}
        Ok(n) => panic!("short read of {n} bytes"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
        Err(e) => panic!("read: {e}"),
    }
    match client {
        None => s.write_all(&buf).unwrap(),
        Some((trips, target, finished)) => {
            if trips.fetch_add(1, Ordering::Relaxed) + 1 < target {
                s.write_all(&MESSAGE).unwrap();
            } else {
                finished.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn main_loop_pingpong(n: usize, per_pair: usize) -> Duration {
    let lp = MainLoop::new().unwrap();
    let list = WatchList::new();
    list.set_functions(Some(lp.watch_functions()))
        .map_err(|e| e.into_error())
        .unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let sockets: Vec<Arc<(UnixStream, UnixStream, AtomicUsize)>> = pairs(n)
        .into_iter()
        .map(|(a, b)| Arc::new((a, b, AtomicUsize::new(0))))
        .collect();
    let mut watches = Vec::with_capacity(2 * n);
    for pair in &sockets {
        let (p, f) = (Arc::clone(pair), Arc::clone(&finished));
        watches.push(Watch::new(
            pair.0.as_raw_fd(),
            WatchFlags::READABLE,
            move |_| {
                on_readable(&p.0, Some((&p.2, per_pair, &f)));
            },
        ));
        let p = Arc::clone(pair);
        watches.push(Watch::new(
            pair.1.as_raw_fd(),
            WatchFlags::READABLE,
            move |_| {
                on_readable(&p.1, None);
            },
        ));
    }
    for w in &watches {
        list.add(w).unwrap();
    }
    let start = Instant::now();
    for pair in &sockets {
        (&pair.0).write_all(&MESSAGE).unwrap();
    }
    while finished.load(Ordering::Relaxed) < n {
        lp.run_once(None).unwrap();
    }
    let took = start.elapsed();
    for w in &watches {
        list.remove(w).unwrap();
    }
    took
}

fn epoll_pingpong(n: usize, per_pair: usize) -> Duration {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let finished = AtomicUsize::new(0);
    let sockets: Vec<(UnixStream, UnixStream, AtomicUsize)> = pairs(n)
        .into_iter()
        .map(|(a, b)| (a, b, AtomicUsize::new(0)))
        .collect();
    for (i, (a, b, _)) in sockets.iter().enumerate() {
        let event = |end: usize| EpollEvent::new(EpollFlags::EPOLLIN, (2 * i + end) as u64);
        epoll.add(a.as_fd(), event(0)).unwrap();
        epoll.add(b.as_fd(), event(1)).unwrap();
    }
    let mut events = vec![EpollEvent::empty(); 1024];
    let start = Instant::now();
    for (a, _, _) in &sockets {
        (&*a).write_all(&MESSAGE).unwrap();
    }
    while finished.load(Ordering::Relaxed) < n {
        let ready = epoll.wait(&mut events, EpollTimeout::NONE).unwrap();
        for event in &events[..ready] {
            let token = event.data() as usize;
            let (a, b, trips) = &sockets[token / 2];
            if token % 2 == 0 {
                on_readable(a, Some((trips, per_pair, &finished)));
            } else {
                on_readable(b, None);
            }
        }
    }
    start.elapsed()
}

fn timeout_heavy(count: usize, run_for: Duration) -> (usize, Duration) {
    let lp = MainLoop::new().unwrap();
    let list = TimeoutList::new();
    list.set_functions(Some(lp.timeout_functions()))
        .map_err(|e| e.into_error())
        .unwrap();
    let fired = Arc::new(AtomicUsize::new(0));
    let timeouts: Vec<Timeout> = (0..count)
        .map(|i| {
            let f = Arc::clone(&fired);
            // Periods of 10..=109 ms: about 19,000 firings per 100 ms of run time.
            Timeout::new(Duration::from_millis(10 + (i % 100) as u64), move || {
                f.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for t in &timeouts {
        list.add(t).unwrap();
    }
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    while start.elapsed() < run_for {
        let round = Instant::now();
        let ran = lp
            .run_once(Some(run_for.saturating_sub(start.elapsed())))
            .unwrap();
        if ran > 0 {
            busy += round.elapsed();
        }
    }
    (fired.load(Ordering::Relaxed), busy)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn raise_fd_limit(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if soft >= want {
        return soft;
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return want;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    hard
}

fn main() {
    // `--only main|epoll N TRIPS`: one loop alone, for a profiler (callgrind counts
    // instructions, which load on a shared machine does not disturb).
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--only") {
        let n: usize = args.get(i + 2).and_then(|a| a.parse().ok()).unwrap_or(1);
        let trips: usize = args
            .get(i + 3)
            .and_then(|a| a.parse().ok())
            .unwrap_or(20_000);
        let took = match args.get(i + 1).map(String::as_str) {
            Some("epoll") => epoll_pingpong(n, trips),
            _ => main_loop_pingpong(n, trips),
        };
        println!("{:.0} ns/rt", took.as_nanos() as f64 / (n * trips) as f64);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let total = if quick { 100_000 } else { 1_000_000 };
    let limit = raise_fd_limit(65_536);
    println!("round trips per N: {total}; fd limit {limit}; 8-byte messages over socketpairs");
    println!(
        "{:>7} {:>16} {:>16} {:>8}",
        "N", "MainLoop ns/rt", "epoll ns/rt", "ratio"
    );
    for n in [1usize, 100, 10_000] {
        let n = if (2 * n + 64) as u64 > limit {
            let fit = ((limit as usize).saturating_sub(64)) / 2;
            println!("(N = {n} does not fit the fd limit; running N = {fit})");
            fit
        } else {
            n
        };
        let per_pair = total / n;
        // Warm up both, then alternate five runs each so that drift and other load hit both
        // alike, and compare medians.
        epoll_pingpong(n, per_pair.min(1_000));
        main_loop_pingpong(n, per_pair.min(1_000));
        const RUNS: usize = 5;
        let per_run = (per_pair / RUNS).max(1);
        let trips = (n * per_run) as f64;
        let mut ours = Vec::with_capacity(RUNS);
        let mut theirs = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            theirs.push(epoll_pingpong(n, per_run).as_nanos() as f64 / trips);
            ours.push(main_loop_pingpong(n, per_run).as_nanos() as f64 / trips);
        }
        let (a, b) = (median(&mut ours), median(&mut theirs));
        println!("{n:>7} {a:>16.0} {b:>16.0} {:>7.3}x", a / b);
    }
    let (count, run_for) = (100_000, Duration::from_secs(if quick { 1 } else { 3 }));
    let (fired, busy) = timeout_heavy(count, run_for);
    println!(
        "timeouts: {count} periodic (10..109 ms) for {run_for:?}: {fired} firings, \
         {:.0} ns of loop time per firing",
        busy.as_nanos() as f64 / fired.max(1) as f64
    );
}
