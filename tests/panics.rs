//! A panic in every callback, then continued use (C14), on MockLoop and on MainLoop (both
//! backends): with a periodic timeout running and messages queued, one callback panics —
//! before or after passing its call on, for glue callbacks — and afterwards messages still
//! echo in order, the timeout still fires, nothing is stranded and the loop idles when
//! nothing is ready.
//!
//! The panicking code is a wrapper around the connection (`Rigged`), as an application's
//! glue or handler would be; the loops under test are unchanged.

mod support;

use std::io;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::main_loop::{Backend, MainLoop};
use loopglue::net::{Connection, ConnectionConfig};
use loopglue::testing::{Harness, MockLoop, SocketPeer, ThreadCpuClock};
use loopglue::{
    DispatchStatus, DispatchStatusFn, SetFunctionsError, Source, SourceData, Timeout,
    TimeoutFunctions, WakeupFn, Watch, WatchFunctions,
};

use support::main_loop::LoopHarness;

/// How long a step may take before the probe gives up: generous, never reached when passing.
const LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Callback {
    WatchAdd,
    WatchRemove,
    WatchToggled,
    TimeoutAdd,
    TimeoutRemove,
    TimeoutToggled,
    FreeData,
    DataDrop,
    Handler,
    StatusFn,
    Wakeup,
    Dispatch,
}

/// Whether a glue callback panics before passing its call on to the loop, or after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Before,
    After,
}

/// One armed panic: the first matching call springs it.
#[derive(Default)]
struct Trap {
    armed: Mutex<Option<(Callback, Mode)>>,
    sprung: AtomicUsize,
}

impl Trap {
    fn arm(&self, at: Callback, mode: Mode) {
        *self.armed.lock().unwrap() = Some((at, mode));
    }

    fn spring(&self, at: Callback, mode: Mode) {
        let mut armed = self.armed.lock().unwrap();
        if *armed == Some((at, mode)) {
            *armed = None;
            drop(armed);
            self.sprung.fetch_add(1, Ordering::SeqCst);
            panic!("probe: {at:?} panics {mode:?} passing its call on");
        }
    }

    /// Springs only for a toggle that disables (a lost enable would stall any glue; a lost
    /// disable must not make one spin).
    fn spring_toggle(&self, at: Callback, mode: Mode, enabled: bool) {
        if mode == Mode::After || !enabled {
            self.spring(at, mode);
        }
    }
}

/// Glue data whose drop can panic.
struct Bomb(Arc<Trap>);

impl Drop for Bomb {
    fn drop(&mut self) {
        self.0.spring(Callback::DataDrop, Mode::After);
    }
}

struct RigWatches {
    inner: Box<dyn WatchFunctions>,
    trap: Arc<Trap>,
}

impl WatchFunctions for RigWatches {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        self.trap.spring(Callback::WatchAdd, Mode::Before);
        self.inner.add(watch)?;
        // The loops under test keep nothing in the data slot, so this value is the set's own.
        watch.set_data(Bomb(Arc::clone(&self.trap)));
        self.trap.spring(Callback::WatchAdd, Mode::After);
        Ok(())
    }

    fn remove(&mut self, watch: &Watch) {
        self.trap.spring(Callback::WatchRemove, Mode::Before);
        self.inner.remove(watch);
        self.trap.spring(Callback::WatchRemove, Mode::After);
    }

    fn toggled(&mut self, watch: &Watch) {
        let enabled = watch.is_enabled();
        self.trap
            .spring_toggle(Callback::WatchToggled, Mode::Before, enabled);
        self.inner.toggled(watch);
        self.trap
            .spring_toggle(Callback::WatchToggled, Mode::After, enabled);
    }
}

impl Drop for RigWatches {
    fn drop(&mut self) {
        self.trap.spring(Callback::FreeData, Mode::After);
    }
}

struct RigTimeouts {
    inner: Box<dyn TimeoutFunctions>,
    trap: Arc<Trap>,
}

impl TimeoutFunctions for RigTimeouts {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        self.trap.spring(Callback::TimeoutAdd, Mode::Before);
        self.inner.add(timeout)?;
        self.trap.spring(Callback::TimeoutAdd, Mode::After);
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        self.trap.spring(Callback::TimeoutRemove, Mode::Before);
        self.inner.remove(timeout);
        self.trap.spring(Callback::TimeoutRemove, Mode::After);
    }

    fn toggled(&mut self, timeout: &Timeout) {
        let enabled = timeout.is_enabled();
        self.trap
            .spring_toggle(Callback::TimeoutToggled, Mode::Before, enabled);
        self.inner.toggled(timeout);
        self.trap
            .spring_toggle(Callback::TimeoutToggled, Mode::After, enabled);
    }
}

/// A source whose glue, wakeup, status function and dispatch can be made to panic.
struct Rigged<S> {
    connection: S,
    trap: Arc<Trap>,
}

impl<S: Source> Source for Rigged<S> {
    fn data(&self) -> &SourceData {
        self.connection.data()
    }

    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        let trap = Arc::clone(&self.trap);
        self.connection.set_watch_functions(
            functions.map(|inner| Box::new(RigWatches { inner, trap }) as Box<dyn WatchFunctions>),
        )
    }

    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        let trap = Arc::clone(&self.trap);
        self.connection.set_timeout_functions(
            functions
                .map(|inner| Box::new(RigTimeouts { inner, trap }) as Box<dyn TimeoutFunctions>),
        )
    }

    fn set_wakeup_main_function(&self, wakeup: Option<WakeupFn>) {
        let trap = Arc::clone(&self.trap);
        self.connection
            .set_wakeup_main_function(wakeup.map(|inner| {
                Box::new(move || {
                    trap.spring(Callback::Wakeup, Mode::Before);
                    inner();
                    trap.spring(Callback::Wakeup, Mode::After);
                }) as WakeupFn
            }));
    }

    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        let trap = Arc::clone(&self.trap);
        self.connection
            .set_dispatch_status_function(function.map(|inner| {
                Box::new(move |status| {
                    trap.spring(Callback::StatusFn, Mode::Before);
                    inner(status);
                    trap.spring(Callback::StatusFn, Mode::After);
                }) as DispatchStatusFn
            }));
    }

    fn dispatch_status(&self) -> DispatchStatus {
        Source::dispatch_status(&self.connection)
    }

    fn dispatch(&self) -> DispatchStatus {
        self.trap.spring(Callback::Dispatch, Mode::Before);
        let status = Source::dispatch(&self.connection);
        self.trap.spring(Callback::Dispatch, Mode::After);
        status
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Mock,
    MainLoop(Backend),
}

type Replies = Arc<Mutex<Vec<Vec<u8>>>>;

struct Probe {
    h: Box<dyn Harness>,
    kind: Kind,
    trap: Arc<Trap>,
    a: Connection,
    a_source: Arc<dyn Source>,
    replies: Replies,
    _b: Connection,
    /// A second rigged source: its timeout ticks, and work posted to it waits for dispatch.
    ticker: SocketPeer,
    tick: Timeout,
    ticks: Arc<AtomicUsize>,
    /// The other end of the ticker's socket, where posted work arrives.
    ticker_other: UnixStream,
    panics: usize,
}

impl Probe {
    fn new(kind: Kind) -> Probe {
        let mut h: Box<dyn Harness> = match kind {
            Kind::Mock => Box::new(MockLoop::new()),
            Kind::MainLoop(backend) => Box::new(LoopHarness::new(backend)),
        };
        let trap: Arc<Trap> = Arc::default();
        let (x, y) = UnixStream::pair().unwrap();
        // The idle timeout never fires here; it is restarted (toggled) on every read and write.
        let config = ConnectionConfig::new().idle_timeout(Duration::from_secs(3600));
        let a = Connection::from_stream_with(x, config).unwrap();
        let b = Connection::from_stream(y).unwrap();
        b.set_message_handler(|echo, message| {
            let _ = echo.send(message);
        });
        let replies: Replies = Arc::default();
        let (sink, handler_trap) = (Arc::clone(&replies), Arc::clone(&trap));
        a.set_message_handler(move |_, message| {
            handler_trap.spring(Callback::Handler, Mode::Before);
            sink.lock().unwrap().push(message);
        });
        let a_source: Arc<dyn Source> = Arc::new(Rigged {
            connection: a.clone(),
            trap: Arc::clone(&trap),
        });
        h.attach(Arc::clone(&a_source)).unwrap();
        h.attach(Arc::new(b.clone())).unwrap();
        let (ours, ticker_other) = UnixStream::pair().unwrap();
        ticker_other.set_nonblocking(true).unwrap();
        let ticker = SocketPeer::new(ours, 64).unwrap();
        let (tick, ticks) = ticker.add_timeout(Duration::from_millis(10)).unwrap();
        h.attach(Arc::new(Rigged {
            connection: ticker.clone(),
            trap: Arc::clone(&trap),
        }))
        .unwrap();
        Probe {
            h,
            kind,
            trap,
            a,
            a_source,
            replies,
            _b: b,
            ticker,
            tick,
            ticks,
            ticker_other,
            panics: 0,
        }
    }

    /// Runs the loop until `done`, catching (and counting) the panics that pass through.
    fn run_until(&mut self, mut done: impl FnMut() -> bool) -> bool {
        let end = Instant::now() + LIMIT;
        let limit = if matches!(self.kind, Kind::Mock) {
            LIMIT
        } else {
            Duration::from_millis(50)
        };
        while Instant::now() < end {
            match panic::catch_unwind(AssertUnwindSafe(|| self.h.run_until(limit, &mut done))) {
                Ok(true) => return true,
                Ok(false) if matches!(self.kind, Kind::Mock) => return false,
                Ok(false) => {}
                Err(_) => self.panics += 1,
            }
        }
        done()
    }

    /// Runs `f`, counting a panic that passes through it.
    fn catching(&mut self, f: impl FnOnce(&mut Probe)) {
        if panic::catch_unwind(AssertUnwindSafe(|| f(self))).is_err() {
            self.panics += 1;
        }
    }

    /// Sends `n` messages tagged `tag` from A (catching a panic in `send`) and waits for
    /// every echo, in order; `lost` of them may be missing (consumed by a panicking handler).
    fn exchange(&mut self, tag: &str, n: usize, lost: usize) {
        let sent: Vec<Vec<u8>> = (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect();
        for message in &sent {
            let message = message.clone();
            self.catching(|p| {
                let _ = p.a.send(message);
            });
        }
        let replies = Arc::clone(&self.replies);
        let ours = |replies: &Replies| -> Vec<Vec<u8>> {
            let prefix = format!("{tag}-");
            replies
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.starts_with(prefix.as_bytes()))
                .cloned()
                .collect()
        };
        let got = self.run_until(|| ours(&replies).len() >= n - lost);
        let echoed = ours(&replies);
        assert!(got, "{tag}: {} of {n} echoes came back", echoed.len());
        assert!(
            echoed.windows(2).all(|w| w[0] < w[1]) && echoed.iter().all(|e| sent.contains(e)),
            "{tag}: echoes out of order or altered: {echoed:?}"
        );
    }

    /// Posts `bytes` to the ticker (catching a panic in `post`) and waits until its dispatch
    /// has written them to the other end.
    fn post(&mut self, bytes: &'static [u8]) {
        self.catching(|p| p.ticker.post(bytes));
        let other = self.ticker_other.try_clone().unwrap();
        let mut got = Vec::new();
        let done = self.run_until(|| {
            let mut buf = [0u8; 256];
            while let Ok(n) = std::io::Read::read(&mut &other, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got.ends_with(bytes)
        });
        assert!(done, "work posted to the ticker was stranded: got {got:?}");
    }

    /// The ticker keeps firing.
    fn ticking(&mut self) {
        let ticks = Arc::clone(&self.ticks);
        let from = ticks.load(Ordering::SeqCst);
        assert!(
            self.run_until(|| ticks.load(Ordering::SeqCst) >= from + 2),
            "the periodic timeout stopped"
        );
    }

    /// Nothing ready: the loop must idle — the CPU bounds of the conformance scenarios: at
    /// most a tenth of the window on a CPU, and not 2 ms or more at 1 ms or more per wait.
    fn idles(&mut self) {
        let Kind::MainLoop(_) = self.kind else { return };
        let clock = ThreadCpuClock::current();
        let (Some(before), start) = (clock.usage(), Instant::now()) else {
            return;
        };
        let _ = self.run_until(|| start.elapsed() >= Duration::from_millis(300));
        let (Some(after), elapsed) = (clock.usage(), start.elapsed()) else {
            return;
        };
        let cpu = after.cpu - before.cpu;
        assert!(
            cpu * 10 <= elapsed,
            "the loop spent {cpu:?} on a CPU in {elapsed:?} with nothing ready: it spins"
        );
        if let (Some(from), Some(to)) = (before.waits, after.waits) {
            let waits = to - from;
            assert!(
                cpu < Duration::from_millis(2)
                    || cpu / u32::try_from(waits + 1).unwrap_or(u32::MAX)
                        < Duration::from_millis(1),
                "the loop spent {cpu:?} on a CPU in {elapsed:?} blocking {waits} times: it spins"
            );
        }
    }
}

/// Keeps the deliberate panics (their messages start with "probe:") out of the test output,
/// and quick: printing a backtrace takes long enough to let a timer fall due. Every other
/// panic is reported as usual.
fn quiet_probes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied());
            if !message.is_some_and(|m| m.starts_with("probe:")) {
                report(info);
            }
        }));
    });
}

/// Arms `at` (`mode`), runs the step that calls it, then checks continued use.
fn probe(kind: Kind, at: Callback, mode: Mode) {
    quiet_probes();
    let mut p = Probe::new(kind);
    p.exchange("warm-up", 3, 0);
    p.trap.arm(at, mode);
    match at {
        Callback::WatchAdd | Callback::TimeoutAdd => {
            let source = Arc::clone(&p.a_source);
            p.h.detach(&source).unwrap();
            p.catching(|p| {
                let _ = p.h.attach(Arc::clone(&source));
            });
            p.catching(|p| {
                let _ = p.h.detach(&source);
            });
            p.h.attach(source).unwrap();
        }
        Callback::WatchRemove
        | Callback::TimeoutRemove
        | Callback::FreeData
        | Callback::DataDrop => {
            let source = Arc::clone(&p.a_source);
            p.catching(|p| {
                let _ = p.h.detach(&source);
            });
            p.h.attach(source).unwrap();
        }
        Callback::WatchToggled => {
            // More than the socket takes at once: the write watch goes on, then off.
            let big = vec![7u8; 4 << 20];
            p.catching(|p| {
                let _ = p.a.send(big);
            });
            let replies = Arc::clone(&p.replies);
            assert!(
                p.run_until(|| replies.lock().unwrap().iter().any(|r| r.len() == 4 << 20)),
                "the big message did not come back"
            );
        }
        Callback::TimeoutToggled => {
            let (ticker, tick) = (p.ticker.clone(), p.tick.clone());
            p.catching(|_| {
                let _ = ticker.timeouts().toggle(&tick, false);
            });
            p.catching(|_| {
                let _ = ticker.timeouts().toggle(&tick, true);
            });
        }
        Callback::StatusFn | Callback::Dispatch => p.post(b"posted"),
        Callback::Handler => {
            // The message the panicking handler was given is consumed (Connection::dispatch);
            // the two behind it must not be stranded.
            p.exchange("armed", 3, 1);
        }
        Callback::Wakeup => {
            let a = p.a.clone();
            let sender = std::thread::spawn(move || {
                panic::catch_unwind(AssertUnwindSafe(|| {
                    let _ = a.send(&b"from-afar"[..]);
                }))
                .is_err()
            });
            if sender.join().unwrap() {
                p.panics += 1;
            }
            let replies = Arc::clone(&p.replies);
            assert!(
                p.run_until(|| replies.lock().unwrap().iter().any(|r| r == b"from-afar")),
                "the message sent from another thread was not carried"
            );
        }
    }
    assert_eq!(
        p.trap.sprung.load(Ordering::SeqCst),
        1,
        "{at:?} {mode:?}: the armed callback was never called"
    );
    assert!(
        p.panics >= 1,
        "{at:?} {mode:?}: the panic did not reach a caller"
    );
    p.exchange("after", 5, 0);
    p.post(b"posted again");
    p.ticking();
    p.idles();
    p.ticker.close();
    p.a.close();
}

macro_rules! probes {
    ($($(#[$meta:meta])* $name:ident: $kind:expr, $at:ident, $mode:ident;)*) => {
        $(
            #[test]
            $(#[$meta])*
            fn $name() {
                probe($kind, Callback::$at, Mode::$mode);
            }
        )*
    };
}

const MOCK: Kind = Kind::Mock;
const EPOLL: Kind = Kind::MainLoop(Backend::Epoll);
const POLL: Kind = Kind::MainLoop(Backend::Poll);

probes! {
    mock_watch_add_before: MOCK, WatchAdd, Before;
    mock_watch_add_after: MOCK, WatchAdd, After;
    mock_watch_remove_before: MOCK, WatchRemove, Before;
    mock_watch_remove_after: MOCK, WatchRemove, After;
    mock_watch_toggled_before: MOCK, WatchToggled, Before;
    mock_watch_toggled_after: MOCK, WatchToggled, After;
    mock_timeout_add_after: MOCK, TimeoutAdd, After;
    mock_timeout_remove_before: MOCK, TimeoutRemove, Before;
    mock_timeout_toggled_before: MOCK, TimeoutToggled, Before;
    mock_timeout_toggled_after: MOCK, TimeoutToggled, After;
    mock_free_data: MOCK, FreeData, After;
    mock_data_drop: MOCK, DataDrop, After;
    mock_handler: MOCK, Handler, Before;
    mock_status_fn: MOCK, StatusFn, After;
    mock_wakeup: MOCK, Wakeup, After;
    mock_dispatch: MOCK, Dispatch, Before;

    epoll_watch_add_before: EPOLL, WatchAdd, Before;
    epoll_watch_add_after: EPOLL, WatchAdd, After;
    epoll_watch_remove_before: EPOLL, WatchRemove, Before;
    epoll_watch_remove_after: EPOLL, WatchRemove, After;
    epoll_watch_toggled_before: EPOLL, WatchToggled, Before;
    epoll_watch_toggled_after: EPOLL, WatchToggled, After;
    epoll_timeout_add_after: EPOLL, TimeoutAdd, After;
    epoll_timeout_remove_before: EPOLL, TimeoutRemove, Before;
    epoll_timeout_toggled_before: EPOLL, TimeoutToggled, Before;
    epoll_timeout_toggled_after: EPOLL, TimeoutToggled, After;
    epoll_free_data: EPOLL, FreeData, After;
    epoll_data_drop: EPOLL, DataDrop, After;
    epoll_handler: EPOLL, Handler, Before;
    epoll_status_fn: EPOLL, StatusFn, After;
    epoll_wakeup: EPOLL, Wakeup, After;
    epoll_dispatch: EPOLL, Dispatch, Before;

    poll_watch_add_before: POLL, WatchAdd, Before;
    poll_watch_add_after: POLL, WatchAdd, After;
    poll_watch_remove_before: POLL, WatchRemove, Before;
    poll_watch_remove_after: POLL, WatchRemove, After;
    poll_watch_toggled_before: POLL, WatchToggled, Before;
    poll_watch_toggled_after: POLL, WatchToggled, After;
    poll_timeout_add_after: POLL, TimeoutAdd, After;
    poll_timeout_remove_before: POLL, TimeoutRemove, Before;
    poll_timeout_toggled_before: POLL, TimeoutToggled, Before;
    poll_timeout_toggled_after: POLL, TimeoutToggled, After;
    poll_free_data: POLL, FreeData, After;
    poll_data_drop: POLL, DataDrop, After;
    poll_handler: POLL, Handler, Before;
    poll_status_fn: POLL, StatusFn, After;
    poll_wakeup: POLL, Wakeup, After;
    poll_dispatch: POLL, Dispatch, Before;
}

/// Issue 7.5: a watch handler that panics must not drop the timeouts due in the same round.
/// The loop is not run while the timeout's deadline passes (a sleep that only makes time
/// pass: any length from the interval up gives the same outcome), so the round that meets
/// the panicking handler also holds the due timeout; it must fire in that round or the next.
/// A loop that drops it re-arms it a whole interval later, which the next round, run at
/// once, does not reach (unless it is delayed by the whole interval).
fn due_timeouts_survive_a_panicking_watch_handler(backend: Backend) {
    quiet_probes();
    use loopglue::{TimeoutList, WatchFlags, WatchList};

    let main_loop = MainLoop::with_backend(backend).unwrap();
    let watches = WatchList::new();
    let timeouts = TimeoutList::new();
    watches
        .set_functions(Some(main_loop.watch_functions()))
        .unwrap();
    timeouts
        .set_functions(Some(main_loop.timeout_functions()))
        .unwrap();
    let (x, y) = UnixStream::pair().unwrap();
    let armed = Arc::new(AtomicUsize::new(1));
    let bomb = Arc::clone(&armed);
    let watch = Watch::new(
        std::os::fd::AsRawFd::as_raw_fd(&x),
        WatchFlags::READABLE,
        move |_| {
            if bomb.swap(0, Ordering::SeqCst) == 1 {
                panic!("probe: the watch handler panics");
            }
        },
    );
    let fired = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fired);
    let interval = Duration::from_millis(300);
    let timeout = Timeout::new(interval, move || {
        count.fetch_add(1, Ordering::SeqCst);
    });
    watches.add(&watch).unwrap();
    timeouts.add(&timeout).unwrap();
    std::io::Write::write_all(&mut &y, b"x").unwrap();
    // Not synchronisation with another thread: real time must pass for the timeout to fall
    // due in the same round as the ready watch, and MainLoop has no virtual clock.
    std::thread::sleep(interval + Duration::from_millis(5));
    let round = panic::catch_unwind(AssertUnwindSafe(|| {
        main_loop.run_once(Some(Duration::ZERO))
    }));
    assert!(
        round.is_err(),
        "the handler's panic reaches run_once's caller"
    );
    let _ = main_loop.run_once(Some(Duration::ZERO));
    assert!(
        fired.load(Ordering::SeqCst) >= 1,
        "the timeout due in the panicking round was dropped"
    );
    watches.remove(&watch).unwrap();
    timeouts.remove(&timeout).unwrap();
}

#[test]
fn epoll_due_timeouts_survive_a_panicking_watch_handler() {
    due_timeouts_survive_a_panicking_watch_handler(Backend::Epoll);
}

#[test]
fn poll_due_timeouts_survive_a_panicking_watch_handler() {
    due_timeouts_survive_a_panicking_watch_handler(Backend::Poll);
}
