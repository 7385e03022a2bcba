//! MockLoop's own behaviour: virtual time, fire order, periodic re-arm, restart on enable,
//! failure injection, readiness injection, real-fd polling and the exact call log.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::testing::{MockEvent, MockLoop};
use loopglue::{Delivery, Error, Timeout, TimeoutList, Watch, WatchFlags, WatchList};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lists(mock: &MockLoop) -> (WatchList, TimeoutList) {
    let (w, t) = (WatchList::new(), TimeoutList::new());
    w.set_functions(Some(mock.watch_functions())).unwrap();
    t.set_functions(Some(mock.timeout_functions())).unwrap();
    (w, t)
}

type Fired = Arc<Mutex<Vec<&'static str>>>;

fn named(fired: &Fired, name: &'static str, every: u64) -> Timeout {
    let f = Arc::clone(fired);
    Timeout::new(ms(every), move || f.lock().unwrap().push(name))
}

#[test]
fn timeouts_fire_in_deadline_order_ties_by_registration() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let fired: Fired = Arc::default();
    for t in [
        named(&fired, "b30", 30),
        named(&fired, "a10", 10),
        named(&fired, "c30", 30),
    ] {
        timeouts.add(&t).unwrap();
    }
    // a10 every 10 ms; b30 and c30 at 30 and 60. At 30 and 60 all three are due, and they
    // fire in registration order: b30, a10, c30.
    assert_eq!(mock.advance(ms(60)), 10);
    assert_eq!(
        *fired.lock().unwrap(),
        ["a10", "a10", "b30", "a10", "c30", "a10", "a10", "b30", "a10", "c30"]
    );
    assert_eq!(mock.now(), ms(60));
}

#[test]
fn fires_carry_their_virtual_time() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let t = Timeout::new(ms(25), || {});
    timeouts.add(&t).unwrap();
    mock.take_log();
    mock.advance(ms(60));
    assert_eq!(
        mock.take_log(),
        [
            MockEvent::TimeoutFired {
                id: t.id(),
                at: ms(25)
            },
            MockEvent::TimeoutFired {
                id: t.id(),
                at: ms(50)
            },
        ]
    );
    assert_eq!(mock.next_deadline(), Some(ms(75)));
}

#[test]
fn enabling_restarts_the_period_and_disabled_never_fires() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let fired: Fired = Arc::default();
    let t = named(&fired, "t", 10);
    timeouts.add(&t).unwrap();
    mock.advance(ms(7));
    timeouts.toggle(&t, false).unwrap();
    assert_eq!(mock.next_deadline(), None);
    assert_eq!(mock.advance(ms(100)), 0);
    timeouts.toggle(&t, true).unwrap(); // at 107: due at 117, not at 10-aligned times
    assert_eq!(mock.next_deadline(), Some(ms(117)));
    assert_eq!(mock.advance(ms(9)), 0);
    assert_eq!(mock.advance(ms(1)), 1);
}

#[test]
fn a_handler_may_remove_its_own_timeout() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let timeouts = Arc::new(timeouts);
    let slot: Arc<Mutex<Option<Timeout>>> = Arc::default();
    let (l, s) = (Arc::clone(&timeouts), Arc::clone(&slot));
    let t = Timeout::new(ms(5), move || {
        let me = s.lock().unwrap().take().unwrap();
        l.remove(&me).unwrap();
    });
    *slot.lock().unwrap() = Some(t.clone());
    timeouts.add(&t).unwrap();
    assert_eq!(mock.advance(ms(50)), 1, "fired once, then gone");
    assert!(mock.timeouts().is_empty());
}

#[test]
fn ready_reaches_every_enabled_watch_of_the_fd_with_its_own_flags() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let seen: Arc<Mutex<Vec<(&str, WatchFlags)>>> = Arc::default();
    let make = |name: &'static str, flags| {
        let s = Arc::clone(&seen);
        Watch::new(9, flags, move |c| s.lock().unwrap().push((name, c)))
    };
    let (r, w, off) = (
        make("r", WatchFlags::READABLE),
        make("w", WatchFlags::WRITABLE),
        make("off", WatchFlags::READABLE),
    );
    for x in [&r, &w, &off] {
        watches.add(x).unwrap();
    }
    watches.toggle(&off, false).unwrap();
    assert_eq!(mock.enabled_watches_for(9), [r.clone(), w.clone()]);
    mock.take_log();
    // HANGUP is always reported, so the write watch hears it too (without READABLE).
    assert_eq!(mock.ready(9, WatchFlags::READABLE | WatchFlags::HANGUP), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("r", WatchFlags::READABLE | WatchFlags::HANGUP),
            ("w", WatchFlags::HANGUP)
        ]
    );
    assert_eq!(
        mock.take_log(),
        [
            MockEvent::WatchHandled {
                id: r.id(),
                condition: WatchFlags::READABLE | WatchFlags::HANGUP,
                delivery: Delivery::Delivered
            },
            MockEvent::WatchHandled {
                id: w.id(),
                condition: WatchFlags::READABLE | WatchFlags::HANGUP,
                delivery: Delivery::Delivered
            },
        ]
    );
    assert_eq!(mock.ready(8, WatchFlags::READABLE), 0, "other fds: nothing");
}

#[test]
fn fail_next_add_and_fail_add_at() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let ws: Vec<Watch> = (0..4)
        .map(|fd| Watch::new(fd, WatchFlags::READABLE, |_| {}))
        .collect();
    mock.fail_next_add(io::Error::other("full"));
    assert!(matches!(watches.add(&ws[0]), Err(Error::Refused(_))));
    watches.add(&ws[0]).unwrap();
    mock.fail_add_at(2);
    watches.add(&ws[1]).unwrap();
    assert!(matches!(watches.add(&ws[2]), Err(Error::Refused(_))));
    watches.add(&ws[3]).unwrap();
    let ids: Vec<u64> = mock.watches().iter().map(Watch::id).collect();
    assert_eq!(ids, [ws[0].id(), ws[1].id(), ws[3].id()]);
    let refused: Vec<MockEvent> = mock
        .log()
        .into_iter()
        .filter(|e| matches!(e, MockEvent::AddRefused { .. }))
        .collect();
    assert_eq!(
        refused,
        [
            MockEvent::AddRefused { id: ws[0].id() },
            MockEvent::AddRefused { id: ws[2].id() }
        ]
    );
}

#[test]
fn the_log_records_adds_toggles_and_removes_exactly() {
    let mock = MockLoop::new();
    let (watches, timeouts) = lists(&mock);
    let w = Watch::new_disabled(3, WatchFlags::WRITABLE, |_| {});
    let t = Timeout::new_disabled(ms(40), || {});
    watches.add(&w).unwrap();
    timeouts.add(&t).unwrap();
    watches.toggle(&w, true).unwrap();
    timeouts.toggle(&t, true).unwrap();
    watches.remove(&w).unwrap();
    timeouts.remove(&t).unwrap();
    assert_eq!(
        mock.take_log(),
        [
            MockEvent::WatchAdded {
                id: w.id(),
                fd: 3,
                flags: WatchFlags::WRITABLE,
                enabled: false
            },
            MockEvent::TimeoutAdded {
                id: t.id(),
                interval: ms(40),
                enabled: false
            },
            MockEvent::WatchToggled {
                id: w.id(),
                enabled: true
            },
            MockEvent::TimeoutToggled {
                id: t.id(),
                enabled: true
            },
            MockEvent::WatchRemoved { id: w.id(), fd: 3 },
            MockEvent::TimeoutRemoved { id: t.id() },
        ]
    );
    assert!(mock.log().is_empty());
}

#[test]
fn poll_fds_delivers_real_readiness() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let (a, b) = UnixStream::pair().unwrap();
    let got: Arc<Mutex<Vec<WatchFlags>>> = Arc::default();
    let g = Arc::clone(&got);
    let w = Watch::new(a.as_raw_fd(), WatchFlags::READABLE, move |c| {
        g.lock().unwrap().push(c)
    });
    watches.add(&w).unwrap();
    assert_eq!(mock.poll_fds(), 0, "nothing to read yet");
    (&b).write_all(b"x").unwrap();
    assert_eq!(mock.poll_fds(), 1);
    assert_eq!(*got.lock().unwrap(), [WatchFlags::READABLE]);
    watches.remove(&w).unwrap();
}

/// `stream` moved to a number far above those other threads get (they take the lowest free
/// number), so that no other test's thread reuses it while a test watches it closed; each
/// call takes another number. Where the fd limit is too low for that, `stream` as it is.
fn lonely(stream: UnixStream) -> UnixStream {
    static NEXT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
    let from = 768 + NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 128;
    at_least(&stream, from).unwrap_or(stream)
}

/// A duplicate of `stream` on the lowest free number from `number` up.
fn at_least(stream: &UnixStream, number: i32) -> Option<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = nix::fcntl::fcntl(stream, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(number)).ok()?;
    // SAFETY: F_DUPFD_CLOEXEC just created `fd`; nothing else owns it.
    Some(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[test]
fn poll_fds_drops_a_closed_fd_instead_of_spinning() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = lonely(a).into_raw_fd();
    let w = Watch::new(fd, WatchFlags::READABLE, |_| {
        panic!("a closed fd is never handled")
    });
    watches.add(&w).unwrap();
    nix::unistd::close(fd).unwrap(); // breaks C15 on purpose
    mock.take_log();
    assert_eq!(mock.poll_fds(), 0);
    assert_eq!(mock.poll_fds(), 0);
    assert_eq!(mock.take_log(), [MockEvent::FdClosed { fd }], "logged once");
    watches.remove(&w).unwrap();
}

// ---- Issue 7: huge intervals, panics, fd reuse, the log option ----

/// Runs `f`, expecting it to panic (the panic is the test's own, on purpose).
fn expect_panic(f: impl FnOnce()) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(outcome.is_err(), "expected the call to pass a panic on");
}

/// Issue 7.4: an interval of `Duration::MAX` means "never"; add, toggle and advance saturate.
#[test]
fn a_duration_max_interval_never_falls_due_and_never_panics() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let fired = Arc::new(Mutex::new(0));
    let f = Arc::clone(&fired);
    let never = Timeout::new(Duration::MAX, move || *f.lock().unwrap() += 1);
    mock.advance(ms(1));
    timeouts.add(&never).unwrap();
    assert_eq!(mock.next_deadline(), None);
    timeouts.toggle(&never, false).unwrap();
    timeouts.toggle(&never, true).unwrap();
    assert_eq!(mock.next_deadline(), None);
    assert_eq!(mock.advance(Duration::MAX), 0);
    assert_eq!(mock.now(), Duration::MAX, "the clock saturates");
    assert_eq!(mock.advance(ms(1)), 0);
    assert_eq!(*fired.lock().unwrap(), 0);
    timeouts.remove(&never).unwrap();
}

/// Issue 7.4: near the end of the clock, a period that fits once but not twice fires once,
/// then never again.
#[test]
fn a_periodic_rearm_past_the_clock_saturates_to_never() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let day = Duration::from_secs(86_400);
    mock.advance(Duration::MAX - day * 300);
    let t = Timeout::new(day * 200, || {});
    timeouts.add(&t).unwrap();
    assert_eq!(mock.next_deadline(), Some(Duration::MAX - day * 100));
    assert_eq!(mock.advance(Duration::MAX), 1);
    assert_eq!(mock.next_deadline(), None);
    assert_eq!(mock.now(), Duration::MAX);
}

/// `TimeoutList::restart` reaches the mock as `toggled` while enabled: the period restarts
/// from now with the new interval, read afresh.
#[test]
fn restart_rearms_with_the_new_interval_from_now() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let t = Timeout::new(ms(50), || {});
    timeouts.add(&t).unwrap();
    mock.advance(ms(30));
    timeouts.restart(&t, ms(5)).unwrap();
    assert_eq!(mock.next_deadline(), Some(ms(35)));
    assert_eq!(mock.advance(ms(20)), 4, "at 35, 40, 45 and 50");
    timeouts.restart(&t, Duration::MAX).unwrap();
    assert_eq!(mock.next_deadline(), None, "Duration::MAX: never");
    assert_eq!(mock.advance(ms(1000)), 0);
}

/// C10 (fixed-delay) and C9: the next period starts when the mock calls `handle`, and a
/// `toggled` that arrives while the timeout is enabled restarts the period from now (how
/// `TimeoutList::restart` and a coalesced off-and-on reach glue).
#[test]
fn toggled_while_enabled_restarts_the_period_from_now() {
    let mock = MockLoop::new();
    let t = Timeout::new(ms(10), || {});
    let mut glue = mock.timeout_functions();
    glue.add(&t).unwrap();
    assert_eq!(mock.advance(ms(10)), 1);
    assert_eq!(mock.next_deadline(), Some(ms(20)), "10 ms after the call");
    mock.advance(ms(7));
    glue.toggled(&t); // still enabled: a restart
    assert_eq!(mock.next_deadline(), Some(ms(27)));
    assert_eq!(mock.advance(ms(9)), 0);
    assert_eq!(mock.advance(ms(1)), 1);
    glue.remove(&t);
}

/// Issue 7.5, on the mock: a panicking timeout handler neither stops the advance nor drops
/// the other timeouts due in it; the first panic reaches the caller at the end.
#[test]
fn a_panicking_timeout_handler_does_not_drop_the_rest_of_the_advance() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let fired: Fired = Arc::default();
    let bomb_calls = Arc::new(Mutex::new(0));
    let b = Arc::clone(&bomb_calls);
    let bomb = Timeout::new(ms(10), move || {
        *b.lock().unwrap() += 1;
        panic!("the producer's timeout handler panics");
    });
    let steady = named(&fired, "steady", 10);
    timeouts.add(&bomb).unwrap();
    timeouts.add(&steady).unwrap();
    expect_panic(|| {
        mock.advance(ms(30));
    });
    assert_eq!(mock.now(), ms(30), "the advance went all the way");
    assert_eq!(*fired.lock().unwrap(), ["steady"; 3]);
    assert_eq!(*bomb_calls.lock().unwrap(), 3);
    assert_eq!(mock.next_deadline(), Some(ms(40)));
    // Still usable.
    timeouts.remove(&bomb).unwrap();
    assert_eq!(mock.advance(ms(10)), 1);
}

/// Issue 7.5, on the mock: a panicking watch handler does not keep the fd's other watches
/// from hearing the same report.
#[test]
fn a_panicking_watch_handler_does_not_starve_the_fds_other_watches() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let heard = Arc::new(Mutex::new(0));
    let h = Arc::clone(&heard);
    let bomb = Watch::new(9, WatchFlags::READABLE, |_| panic!("handler panics"));
    let other = Watch::new(9, WatchFlags::READABLE, move |_| *h.lock().unwrap() += 1);
    watches.add(&bomb).unwrap();
    watches.add(&other).unwrap();
    expect_panic(|| {
        mock.ready(9, WatchFlags::READABLE);
    });
    assert_eq!(*heard.lock().unwrap(), 1);
    watches.remove(&bomb).unwrap();
    assert_eq!(mock.ready(9, WatchFlags::READABLE), 1);
}

/// A producer with a queue of `pending` dispatches and a dispatch that panics while
/// `bombs` > 0.
struct Queue {
    watches: WatchList,
    timeouts: TimeoutList,
    data: loopglue::SourceData,
    status: loopglue::StatusNotifier,
    pending: Mutex<usize>,
    bombs: Mutex<usize>,
    dispatched: Mutex<usize>,
}

impl Queue {
    fn new(pending: usize, bombs: usize) -> Arc<Queue> {
        let status = loopglue::StatusNotifier::new();
        if pending > 0 {
            status.update(loopglue::DispatchStatus::DataRemains);
        }
        Arc::new(Queue {
            watches: WatchList::new(),
            timeouts: TimeoutList::new(),
            data: loopglue::SourceData::new(),
            status,
            pending: Mutex::new(pending),
            bombs: Mutex::new(bombs),
            dispatched: Mutex::new(0),
        })
    }
}

impl loopglue::Source for Queue {
    fn data(&self) -> &loopglue::SourceData {
        &self.data
    }
    fn set_watch_functions(
        &self,
        f: Option<Box<dyn loopglue::WatchFunctions>>,
    ) -> Result<(), loopglue::SetFunctionsError<dyn loopglue::WatchFunctions>> {
        self.watches.set_functions(f)
    }
    fn set_timeout_functions(
        &self,
        f: Option<Box<dyn loopglue::TimeoutFunctions>>,
    ) -> Result<(), loopglue::SetFunctionsError<dyn loopglue::TimeoutFunctions>> {
        self.timeouts.set_functions(f)
    }
    fn set_dispatch_status_function(&self, function: Option<loopglue::DispatchStatusFn>) {
        self.status.set_function(function);
    }
    fn dispatch_status(&self) -> loopglue::DispatchStatus {
        self.status.status()
    }
    fn dispatch(&self) -> loopglue::DispatchStatus {
        {
            let mut bombs = self.bombs.lock().unwrap();
            if *bombs > 0 {
                *bombs -= 1;
                drop(bombs);
                panic!("dispatch panics");
            }
        }
        *self.dispatched.lock().unwrap() += 1;
        let mut pending = self.pending.lock().unwrap();
        *pending = pending.saturating_sub(1);
        let status = if *pending == 0 {
            loopglue::DispatchStatus::Complete
        } else {
            loopglue::DispatchStatus::DataRemains
        };
        drop(pending);
        self.status.update(status);
        status
    }
}

/// Issue 7.5, on the mock: a panicking dispatch neither starves the other sources nor
/// strands its own queued work.
#[test]
fn a_panicking_dispatch_strands_nothing() {
    let mock = MockLoop::new();
    let first = Queue::new(2, 1);
    let second = Queue::new(2, 0);
    mock.attach(first.clone()).unwrap();
    mock.attach(second.clone()).unwrap();
    expect_panic(|| {
        mock.dispatch_pending();
    });
    assert_eq!(
        *second.dispatched.lock().unwrap(),
        2,
        "the other source was served"
    );
    assert_eq!(
        mock.dispatch_pending(),
        2,
        "the panicking one is served next time"
    );
    assert_eq!(*first.dispatched.lock().unwrap(), 2);
    assert_eq!(mock.dispatch_pending(), 0);
}

/// A glue wrapper whose `remove` panics before passing the call on leaves the mock holding a
/// registration the list no longer has; the mock's next pass over its watches drops it.
#[test]
fn a_registration_answering_removed_is_dropped() {
    struct PanicBeforeRemove(Box<dyn loopglue::WatchFunctions>);
    impl loopglue::WatchFunctions for PanicBeforeRemove {
        fn add(&mut self, watch: &Watch) -> io::Result<()> {
            self.0.add(watch)
        }
        fn remove(&mut self, _watch: &Watch) {
            panic!("glue wrapper panics before passing remove on");
        }
        fn toggled(&mut self, watch: &Watch) {
            self.0.toggled(watch)
        }
    }
    let mock = MockLoop::new();
    let watches = WatchList::new();
    watches
        .set_functions(Some(Box::new(PanicBeforeRemove(mock.watch_functions()))))
        .unwrap();
    let w = Watch::new(9, WatchFlags::READABLE, |_| {});
    watches.add(&w).unwrap();
    expect_panic(|| {
        let _ = watches.remove(&w);
    });
    assert_eq!(
        mock.watches(),
        std::slice::from_ref(&w),
        "the mock never heard the remove"
    );
    assert_eq!(mock.ready(9, WatchFlags::READABLE), 0);
    assert!(mock.watches().is_empty(), "dropped on the next pass");
}

/// Producer A's fd number N now names producer B's socket: `dup2` replaces A's file in one
/// step, as if A had closed N and B had been given the number — without the window in which
/// another test's thread could take the number. Returns B's end, which owns N.
fn reuse_number(a: UnixStream, b: UnixStream) -> UnixStream {
    let mut number = std::os::fd::OwnedFd::from(a);
    nix::unistd::dup2(&b, &mut number).unwrap();
    UnixStream::from(number)
}

/// Issue 7.2 on the mock: producer A loses fd N without removing its watch (a bug in A), and
/// N now names producer B's socket. A's stale watch must not be fed B's bytes, and B's read
/// and write watches on N must be served.
#[test]
fn a_reused_fd_number_neither_feeds_nor_silences_another_producer() {
    let mock = MockLoop::new();
    let (a_watches, _ta) = lists(&mock);
    let (b_watches, _tb) = lists(&mock);
    let (a, _a_other) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    // What A reads through: the number it believes is its own.
    let a_socket: Arc<Mutex<Option<UnixStream>>> = Arc::default();
    let stale_calls = Arc::new(Mutex::new(0));
    let (s, sock) = (Arc::clone(&stale_calls), Arc::clone(&a_socket));
    let stale = Watch::new(fd, WatchFlags::READABLE, move |_| {
        *s.lock().unwrap() += 1;
        if let Some(stream) = sock.lock().unwrap().as_ref() {
            let mut buf = [0u8; 64];
            let _ = io::Read::read(&mut &*stream, &mut buf);
        }
    });
    a_watches.add(&stale).unwrap();

    let (b, b_other) = UnixStream::pair().unwrap();
    let b = reuse_number(a, b);
    b.set_nonblocking(true).unwrap();
    *a_socket.lock().unwrap() = Some(b.try_clone().unwrap());
    let got: Arc<Mutex<Vec<u8>>> = Arc::default();
    let g = Arc::clone(&got);
    let reader = b.try_clone().unwrap();
    let fresh = Watch::new(fd, WatchFlags::READABLE, move |_| {
        let mut buf = [0u8; 64];
        if let Ok(n) = io::Read::read(&mut &reader, &mut buf) {
            g.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let writes = Arc::new(Mutex::new(0));
    let w = Arc::clone(&writes);
    let writer = Watch::new(fd, WatchFlags::WRITABLE, move |_| *w.lock().unwrap() += 1);
    b_watches.add(&fresh).unwrap();
    b_watches.add(&writer).unwrap();
    (&b_other).write_all(b"for B").unwrap();
    mock.take_log();
    mock.poll_fds();
    assert_eq!(
        *stale_calls.lock().unwrap(),
        0,
        "A's stale watch was fed B's socket"
    );
    assert_eq!(*got.lock().unwrap(), b"for B");
    assert_eq!(*writes.lock().unwrap(), 1, "B's write watch was served");
    let log = mock.take_log();
    assert_eq!(
        log.iter()
            .filter(|e| matches!(e, MockEvent::WatchStale { id, .. } if *id == stale.id()))
            .count(),
        1,
        "the stale watch is logged once: {log:?}"
    );
    mock.poll_fds();
    assert!(!mock
        .take_log()
        .iter()
        .any(|e| matches!(e, MockEvent::WatchStale { .. })));
    assert_eq!(
        mock.ready(fd, WatchFlags::READABLE),
        1,
        "injected reports skip it too"
    );
    assert_eq!(*stale_calls.lock().unwrap(), 0);
    // A finally removes its watch (late); B is unaffected.
    a_watches.remove(&stale).unwrap();
    (&b_other).write_all(b"!").unwrap();
    mock.poll_fds();
    assert_eq!(*got.lock().unwrap(), b"for B!");
    b_watches.remove(&fresh).unwrap();
    b_watches.remove(&writer).unwrap();
}

/// Issue 7.2 on the mock: A closes its fd without removing its watch; the watch goes quiet
/// (one `FdClosed`), and the next socket on the same number is served without A's watch
/// hearing it.
#[test]
fn a_closed_fds_number_serves_its_next_owner_alone() {
    let mock = MockLoop::new();
    let (a_watches, _ta) = lists(&mock);
    let (b_watches, _tb) = lists(&mock);
    let (a, _a_other) = UnixStream::pair().unwrap();
    let fd = lonely(a).into_raw_fd();
    let stale = Watch::new(fd, WatchFlags::READABLE, |_| {
        panic!("A's stale watch handled")
    });
    a_watches.add(&stale).unwrap();
    nix::unistd::close(fd).unwrap(); // breaks C15 on purpose
    mock.take_log();
    assert_eq!(mock.poll_fds(), 0);
    assert_eq!(mock.take_log(), [MockEvent::FdClosed { fd }]);

    let (b, b_other) = UnixStream::pair().unwrap();
    let b = at_least(&b, fd).unwrap_or(b); // `fd` itself: no other thread takes such numbers
    let number = b.as_raw_fd();
    let got = Arc::new(Mutex::new(0));
    let g = Arc::clone(&got);
    let reader = b.try_clone().unwrap();
    let fresh = Watch::new(number, WatchFlags::READABLE, move |_| {
        let mut buf = [0u8; 64];
        let n = io::Read::read(&mut &reader, &mut buf).unwrap_or(0);
        *g.lock().unwrap() += n;
    });
    b_watches.add(&fresh).unwrap();
    (&b_other).write_all(b"abc").unwrap();
    assert_eq!(mock.poll_fds(), 1);
    assert_eq!(*got.lock().unwrap(), 3);
    a_watches.remove(&stale).unwrap();
    b_watches.remove(&fresh).unwrap();
}

/// `set_log_not_requested(false)` leaves reports that reached no handler because the watch
/// did not ask for them out of the log (a read and a write watch on one busy socket would
/// otherwise fill it).
#[test]
fn not_requested_reports_can_be_left_out_of_the_log() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let r = Watch::new(9, WatchFlags::READABLE, |_| {});
    watches.add(&r).unwrap();
    mock.take_log();
    mock.ready(9, WatchFlags::WRITABLE);
    assert_eq!(
        mock.take_log(),
        [MockEvent::WatchHandled {
            id: r.id(),
            condition: WatchFlags::WRITABLE,
            delivery: Delivery::NotRequested
        }]
    );
    mock.set_log_not_requested(false);
    mock.ready(9, WatchFlags::WRITABLE);
    assert_eq!(mock.take_log(), []);
    mock.ready(9, WatchFlags::READABLE | WatchFlags::WRITABLE);
    assert_eq!(
        mock.take_log(),
        [MockEvent::WatchHandled {
            id: r.id(),
            condition: WatchFlags::READABLE | WatchFlags::WRITABLE,
            delivery: Delivery::Delivered
        }]
    );
    watches.remove(&r).unwrap();
}

/// A glue wrapper whose `add` passes the call on and then panics leaves the mock holding a
/// registration for a set the list rolled back; installing the mock's glue again must not
/// double it (each report would reach the watch twice).
#[test]
fn a_registration_left_by_a_panicking_add_is_replaced_not_doubled() {
    struct PanicAfterAdd(Box<dyn loopglue::WatchFunctions>);
    impl loopglue::WatchFunctions for PanicAfterAdd {
        fn add(&mut self, watch: &Watch) -> io::Result<()> {
            self.0.add(watch)?;
            panic!("glue wrapper panics after passing add on");
        }
        fn remove(&mut self, watch: &Watch) {
            self.0.remove(watch)
        }
        fn toggled(&mut self, watch: &Watch) {
            self.0.toggled(watch)
        }
    }
    let mock = MockLoop::new();
    let watches = WatchList::new();
    let heard = Arc::new(Mutex::new(0));
    let h = Arc::clone(&heard);
    let w = Watch::new(9, WatchFlags::READABLE, move |_| *h.lock().unwrap() += 1);
    watches.add(&w).unwrap();
    expect_panic(|| {
        let _ = watches.set_functions(Some(Box::new(PanicAfterAdd(mock.watch_functions()))));
    });
    watches.set_functions(Some(mock.watch_functions())).unwrap();
    assert_eq!(mock.watches(), std::slice::from_ref(&w));
    assert_eq!(mock.ready(9, WatchFlags::READABLE), 1);
    assert_eq!(*heard.lock().unwrap(), 1);
    watches.remove(&w).unwrap();
    assert!(mock.watches().is_empty());
}
