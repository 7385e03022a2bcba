//! The tokio adapter: the conformance scenarios on current-thread and multi-thread runtimes,
//! a 16 MiB message read 2 KiB per handle, bad input, the echo, virtual time, and the
//! runtime's other tasks not starved by a busy fd.
#![cfg(feature = "tokio")]

mod support;

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::adapters::tokio::{attach, attach_to, TokioAttachment};
use loopglue::testing::{Harness, MockLoop, SocketPeer, ThreadCpuClock, ThreadUsage};
use loopglue::{Source, Timeout, Watch, WatchFlags};
use tokio::runtime::{Builder, Runtime};

use support::adapter::{self as scenario, pattern, Attached, Bomb, Detachable, LIMIT};
use support::Bare;

fn current_thread() -> Runtime {
    Builder::new_current_thread().enable_all().build().unwrap()
}

fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A multi-thread runtime whose worker threads' clocks are kept, for the scenarios' CPU bounds.
fn multi_thread_clocked() -> (Runtime, Arc<Mutex<Vec<ThreadCpuClock>>>) {
    let clocks: Arc<Mutex<Vec<ThreadCpuClock>>> = Arc::default();
    let sink = Arc::clone(&clocks);
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(move || sink.lock().unwrap().push(ThreadCpuClock::current()))
        .enable_all()
        .build()
        .unwrap();
    (runtime, clocks)
}

/// A runtime and the sources attached to it, as the scenarios drive them.
struct App {
    runtime: Runtime,
    attached: Attached<TokioAttachment>,
    start: Instant,
    /// The runtime's worker threads, where the drivers run (multi-thread); `None`: this thread.
    workers: Option<Arc<Mutex<Vec<ThreadCpuClock>>>>,
}

impl App {
    fn new(runtime: Runtime) -> App {
        App {
            runtime,
            attached: Attached::new(),
            start: Instant::now(),
            workers: None,
        }
    }

    fn clocked((runtime, workers): (Runtime, Arc<Mutex<Vec<ThreadCpuClock>>>)) -> App {
        App {
            workers: Some(workers),
            ..App::new(runtime)
        }
    }

    fn run(&mut self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        self.run_until(limit, &mut done)
    }
}

impl Harness for App {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        let attachment = attach_to(self.runtime.handle(), Arc::clone(&source))?;
        self.attached.insert(&source, attachment);
        Ok(())
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        self.attached.detach(source)
    }

    /// Runs the runtime (`block_on` on this thread) until `done`, checking it every
    /// millisecond of the runtime's clock.
    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        self.runtime.block_on(async {
            let end = tokio::time::Instant::now() + limit;
            loop {
                if done() {
                    return true;
                }
                if tokio::time::Instant::now() >= end {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// On a multi-thread runtime the drivers run on its workers: their sums.
    fn loop_thread_usage(&self) -> Option<ThreadUsage> {
        let Some(workers) = &self.workers else {
            return ThreadCpuClock::current().usage();
        };
        let mut total = ThreadUsage {
            cpu: Duration::ZERO,
            waits: Some(0),
        };
        for clock in workers.lock().unwrap().iter() {
            let usage = clock.usage()?;
            total.cpu += usage.cpu;
            total.waits = total.waits.zip(usage.waits).map(|(a, b)| a + b);
        }
        Some(total)
    }
}

impl Detachable for TokioAttachment {
    fn detach(self) -> Result<(), (Self, io::Error)> {
        TokioAttachment::detach(self)
    }
}

#[test]
fn tokio_current_thread_passes_every_scenario() {
    support::assert_passes_every_scenario(|| App::new(current_thread()));
}

#[test]
fn tokio_multi_thread_passes_every_scenario() {
    support::assert_passes_every_scenario(|| App::clocked(multi_thread_clocked()));
}

/// With tokio's edge-triggered readiness, the glue re-checks the fd (C17).
#[test]
fn c17_a_16_mib_message_read_2_kib_per_handle_arrives_intact() {
    for runtime in [current_thread(), multi_thread()] {
        scenario::a_16_mib_message_read_2_kib_per_handle_arrives_intact(&mut App::new(runtime));
    }
}

#[test]
fn net_connection_echo_checks_every_reply() {
    for runtime in [current_thread(), multi_thread()] {
        let mut app = App::new(runtime);
        let _connections = scenario::echo_checks_every_reply(&mut app, 4, 200);
        assert!(app.attached.values().all(|a| a.registered_fds() == 1));
    }
}

/// Nothing is left of a refused attach: the same source attaches elsewhere afterwards, and
/// tokio takes its fds (none is still registered).
fn assert_nothing_left(runtime: &Runtime, source: Arc<dyn Source>, fds: &[RawFd]) {
    for &fd in fds {
        let _runtime = runtime.enter();
        // SAFETY: the fd stays open for the life of this `AsyncFd`, dropped at once.
        let registered = unsafe { tokio::io::unix::AsyncFd::register(Borrowed(fd)) };
        assert!(registered.is_ok(), "fd {fd} was left registered with tokio");
    }
    let mock = MockLoop::new();
    mock.attach(source)
        .expect("the refused source attaches elsewhere");
}

struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

#[test]
fn bad_input_a_closed_fd_is_a_clear_error_and_nothing_is_left() {
    let runtime = current_thread();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    let peer = SocketPeer::new(ours, 64).unwrap();
    // On a number far above those other tests' threads are handed (they take the lowest free
    // one), so that none reuses it before the attach.
    let (doomed, _other) = UnixStream::pair().unwrap();
    let dead = nix::fcntl::fcntl(&doomed, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(800)).unwrap();
    drop(doomed);
    nix::unistd::close(dead).unwrap();
    let stale = Watch::new(dead, WatchFlags::READABLE, |_| {});
    peer.watches().add(&stale).unwrap();
    let error = attach_to(runtime.handle(), Arc::new(peer.clone())).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EBADF), "{error}");
    peer.watches().remove(&stale).unwrap();
    assert_nothing_left(&runtime, Arc::new(peer), &[fd]);
}

#[test]
fn bad_input_an_fd_tokio_already_has_is_refused_with_eexist() {
    let runtime = current_thread();
    let (first, _first_other) = UnixStream::pair().unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let taken = ours.as_raw_fd();
    // The application's own tokio socket on `taken`.
    let mine = {
        let _runtime = runtime.enter();
        tokio::net::UnixStream::from_std(ours).unwrap()
    };
    // A source with a good fd first, then the application's: the first is rolled back.
    let bare = Arc::new(Bare::new());
    let good = Watch::new(first.as_raw_fd(), WatchFlags::READABLE, |_| {});
    let clash = Watch::new(taken, WatchFlags::READABLE, |_| {});
    bare.watches.add(&good).unwrap();
    bare.watches.add(&clash).unwrap();
    let error = attach_to(runtime.handle(), bare.clone()).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
    assert!(error.to_string().contains("already registered"), "{error}");
    bare.watches.remove(&clash).unwrap();
    assert_nothing_left(&runtime, bare, &[first.as_raw_fd()]);
    drop(mine);
}

#[test]
fn bad_input_no_runtime_or_a_runtime_without_drivers_is_a_clear_error() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let error = attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
    let no_time = Builder::new_current_thread().enable_io().build().unwrap();
    let error = attach_to(no_time.handle(), Arc::new(peer.clone())).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Unsupported, "{error}");
    let no_io = Builder::new_current_thread().enable_time().build().unwrap();
    let error = attach_to(no_io.handle(), Arc::new(peer.clone())).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::Unsupported, "{error}");
    let mock = MockLoop::new();
    mock.attach(Arc::new(peer))
        .expect("nothing was left installed");
}

#[test]
fn detach_deregisters_before_it_returns() {
    let runtime = multi_thread();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let attachment = attach_to(runtime.handle(), Arc::new(peer.clone())).unwrap();
    assert_eq!(attachment.registered_fds(), 1);
    {
        let _runtime = runtime.enter();
        // SAFETY: the fd stays open for the life of this `AsyncFd`.
        let again = unsafe { tokio::io::unix::AsyncFd::register(Borrowed(fd)) };
        assert!(again.is_err(), "tokio takes an fd only once");
    }
    attachment.detach().unwrap();
    assert_nothing_left(&runtime, Arc::new(peer), &[fd]);
}

/// Timers run on tokio's clock: in paused time an hour-long period passes at once, periods
/// are fixed-delay from the firing, a restart re-reads the interval, and `Duration::MAX`
/// never fires.
#[test]
fn timeouts_run_on_tokios_clock_so_paused_time_drives_them() {
    let runtime = Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let fired: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let log = Arc::clone(&fired);
    let hour = Duration::from_secs(3600);
    let tick = Timeout::new(hour, move || {
        log.lock().unwrap().push(tokio::time::Instant::now());
    });
    let never = Timeout::new(Duration::MAX, || panic!("a Duration::MAX timeout fired"));
    let (started, restarted_at) = runtime.block_on(async {
        let _attachment = attach(Arc::new(peer.clone())).unwrap();
        peer.timeouts().add(&never).unwrap();
        let started = tokio::time::Instant::now();
        peer.timeouts().add(&tick).unwrap();
        while fired.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        let restarted_at = tokio::time::Instant::now();
        peer.timeouts()
            .restart(&tick, Duration::from_secs(10))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(100)).await;
        peer.timeouts().remove(&tick).unwrap();
        // Only the never-due timeout left: a year passes without it firing.
        tokio::time::sleep(Duration::from_secs(86400 * 365)).await;
        (started, restarted_at)
    });
    let fired = fired.lock().unwrap();
    assert!(fired[0] - started >= hour);
    assert!(fired[1] - fired[0] >= hour && fired[2] - fired[1] >= hour);
    assert!(fired[3] - restarted_at >= Duration::from_secs(10));
    assert!(
        fired[3] - restarted_at < hour,
        "the restart kept the old interval"
    );
    assert!(
        (8..=13).contains(&fired.len()),
        "100 s of 10 s periods after the restart: {} firings in all",
        fired.len()
    );
    peer.timeouts().remove(&never).unwrap();
}

#[test]
fn c16_a_source_with_data_remaining_is_dispatched_without_fd_activity() {
    let mut app = App::new(current_thread());
    let (peer, mut theirs) = scenario::peer_with_work_queued(b"queued before attach");
    app.attach(Arc::new(peer.clone())).unwrap();
    let mut got = Vec::new();
    assert!(scenario::receive(
        &mut app,
        &mut theirs,
        &mut got,
        b"queued before attach"
    ));
}

/// One fd with a megabyte pending for a producer that reads one byte per handle: the
/// runtime's other tasks still run while it drains (the driver yields between rounds).
#[test]
fn a_busy_fd_does_not_starve_the_runtime() {
    let runtime = current_thread();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 1).unwrap();
    let data = pattern(64 * 1024);
    (&theirs).write_all(&data).unwrap();
    let (turns, turns_at_end) = runtime.block_on(async {
        let turns = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&turns);
        let other = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        });
        let _attachment = attach(Arc::new(peer.clone())).unwrap();
        let deadline = tokio::time::Instant::now() + LIMIT;
        while peer.received_len() < data.len() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let at_end = turns.load(Ordering::SeqCst);
        other.abort();
        (turns, at_end)
    });
    assert_eq!(
        peer.received(),
        data,
        "stalled: level-triggered delivery (C17)"
    );
    // 65,536 rounds of one byte: a driver that yields between rounds as `yield_now` does
    // shares the thread with the other task about turn for turn (a driver that ran every
    // round at once left it 560 turns, one that only re-woke itself 1,145).
    assert!(
        turns_at_end >= 10_000,
        "the other task ran {turns_at_end} times while 64 KiB drained ({} now)",
        turns.load(Ordering::SeqCst)
    );
}

#[test]
fn c18_two_watches_on_one_fd_are_one_asyncfd_and_a_hang_up_reaches_both() {
    scenario::a_second_watch_on_an_fd_shares_its_registration_and_hears_the_hang_up(
        &mut App::new(multi_thread()),
        |app| app.attached.values().map(|a| a.registered_fds()).sum(),
    );
}

#[test]
fn attach_and_detach_from_inside_handlers_and_from_another_thread() {
    for runtime in [current_thread(), multi_thread()] {
        let mut app = App::new(runtime);
        // From inside a handler (on the first source's driver task), the runtime is current;
        // from another thread, attach with the runtime's handle.
        let handle = app.runtime.handle().clone();
        scenario::attach_and_detach_from_inside_handlers_and_from_another_thread(
            &mut app,
            |source| attach(source).unwrap(),
            move |source| attach_to(&handle, source).unwrap(),
        );
    }
}

#[test]
fn a_panicking_handler_panics_its_driver_and_a_new_driver_carries_on() {
    let mut app = App::new(current_thread());
    let Bomb {
        peer,
        bomb,
        armed,
        theirs: _theirs,
    } = scenario::a_peer_whose_next_handler_panics(&mut app);
    assert!(app.run(LIMIT, || peer.received_len() == 10));
    assert!(!armed.load(Ordering::SeqCst), "the bomb never went off");
    peer.watches().remove(&bomb).unwrap();
}

/// Applications shut down in any order: a runtime dropped before the attachment leaves the
/// detach (and the producer's later removals) harmless, and the source free to attach again.
#[test]
fn a_runtime_dropped_before_its_attachments_leaves_detach_harmless() {
    let runtime = multi_thread();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let (timeout, _fired) = peer.add_timeout(Duration::from_millis(5)).unwrap();
    let attachment = attach_to(runtime.handle(), Arc::new(peer.clone())).unwrap();
    theirs.write_all(b"x").unwrap();
    drop(runtime);
    peer.timeouts().toggle(&timeout, false).unwrap();
    peer.timeouts().remove(&timeout).unwrap();
    drop(attachment);
    let mut app = App::new(current_thread());
    app.attach(Arc::new(peer.clone())).unwrap();
    assert!(app.run(LIMIT, || peer.received_len() == 1));
}

#[test]
fn an_attachment_moves_and_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<TokioAttachment>();
}

/// The write end of a pipe whose read end is closed reports an error (C1).
#[test]
fn c1_an_error_reaches_the_watch() {
    scenario::an_error_reaches_a_write_watch(&mut App::new(multi_thread()));
}

#[test]
fn an_attachment_dropped_while_unwinding_detaches_without_aborting() {
    let runtime = multi_thread();
    scenario::an_attachment_dropped_while_unwinding_detaches_without_aborting(|source| {
        attach_to(runtime.handle(), source)
    });
}
