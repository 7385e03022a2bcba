//! The glue conformance scenarios: what any glue must get right, each checked on a fresh
//! [`Harness`] with real sockets.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::Harness;
use super::socket_peer::SocketPeer;
use crate::flags::WatchFlags;
use crate::source::Source;
use crate::timeout::Timeout;
use crate::watch::Watch;

/// How long a scenario waits for something that must happen. Generous: a real loop under a
/// loaded CI machine may be slow, and a passing scenario never waits this long.
const LIMIT: Duration = Duration::from_secs(10);

/// The loop time a quiet window lasts: a stretch in which nothing is ready.
const QUIET: Duration = Duration::from_millis(300);

/// The most handler calls a quiet window may see. A level-triggered glue makes none; an
/// edge-triggered one may report a spurious edge or two as it registers an fd.
const QUIET_CALLS: usize = 4;

/// In a quiet window the loop's thread may spend at most 1/`QUIET_CPU_DIVISOR` of the window's
/// loop time on a CPU. A loop that sleeps in its poll uses well under 1%; one that spins uses
/// whatever share of a core it gets.
const QUIET_CPU_DIVISOR: u32 = 10;

/// On a busy machine a spinning loop may get too little CPU to break that bound; it still
/// never blocks. So a loop's thread that used at least `SPIN_CPU` in a quiet window, and at
/// least `SPIN_CPU_PER_WAIT` per time it blocked, spins too. A loop that sleeps in its poll
/// blocks at every wait and uses microseconds between two.
const SPIN_CPU: Duration = Duration::from_millis(2);
const SPIN_CPU_PER_WAIT: Duration = Duration::from_millis(1);

/// One conformance scenario: a name and a check that drives a fresh [`Harness`].
#[derive(Clone, Copy)]
pub struct Scenario {
    /// A short name, for reports.
    pub name: &'static str,
    /// Runs the scenario; `Err` says what the glue got wrong.
    pub run: fn(&mut dyn Harness) -> Result<(), String>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .finish()
    }
}

/// Every scenario, in the order [`run_all`] runs them.
pub static SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "read and write watch on one socket (C18)",
        run: read_and_write_watch_on_one_socket,
    },
    Scenario {
        name: "write watch follows queued output",
        run: write_watch_follows_queued_output,
    },
    Scenario {
        name: "a disabled write watch on a writable socket stays silent; the loop idles (C9)",
        run: quiet_socket_stays_quiet,
    },
    Scenario {
        name: "one byte per handle drains 64 KiB (C17)",
        run: one_byte_per_handle_drains_64k,
    },
    Scenario {
        name: "periodic timeout restarts on enable (C9, C10)",
        run: periodic_timeout_restarts_on_enable,
    },
    Scenario {
        name: "removal from inside a handler",
        run: removal_from_inside_a_handler,
    },
    Scenario {
        name: "closed fd reused by a new socket (C15)",
        run: closed_fd_reused_by_a_new_socket,
    },
    Scenario {
        name: "fd closed while its watch is registered (C15)",
        run: fd_closed_while_registered,
    },
    Scenario {
        name: "woken from another thread (C16)",
        run: woken_from_another_thread,
    },
    Scenario {
        name: "function set replaced while events are pending",
        run: functions_replaced_while_events_pending,
    },
];

/// A scenario that failed, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioFailure {
    /// The scenario's name.
    pub scenario: &'static str,
    /// What the glue got wrong.
    pub message: String,
}

impl fmt::Display for ScenarioFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario `{}` failed: {}", self.scenario, self.message)
    }
}

impl std::error::Error for ScenarioFailure {}

/// Runs every scenario, each on a fresh harness from `make`, and returns every failure.
///
/// # Errors
///
/// The scenarios that failed, in order.
///
/// # Examples
///
/// ```
/// use loopglue::testing::{run_all, MockLoop};
///
/// run_all(MockLoop::new).expect("the mock loop keeps the glue contract");
/// ```
pub fn run_all<H: Harness>(mut make: impl FnMut() -> H) -> Result<(), Vec<ScenarioFailure>> {
    let failures: Vec<ScenarioFailure> = SCENARIOS
        .iter()
        .filter_map(|scenario| {
            let mut harness = make();
            (scenario.run)(&mut harness)
                .err()
                .map(|message| ScenarioFailure {
                    scenario: scenario.name,
                    message,
                })
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

fn io(what: &str) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A peer on one end of a fresh socketpair, and the other end, non-blocking.
fn pair(budget: usize) -> Result<(SocketPeer, UnixStream), String> {
    let (ours, theirs) = UnixStream::pair().map_err(io("socketpair"))?;
    theirs
        .set_nonblocking(true)
        .map_err(io("set_nonblocking"))?;
    let peer = SocketPeer::new(ours, budget).map_err(io("SocketPeer::new"))?;
    Ok((peer, theirs))
}

fn attach(harness: &mut dyn Harness, peer: &SocketPeer) -> Result<Arc<dyn Source>, String> {
    let source: Arc<dyn Source> = Arc::new(peer.clone());
    harness.attach(Arc::clone(&source)).map_err(io("attach"))?;
    Ok(source)
}

/// Reads whatever `stream` has now (non-blocking) into `into`.
fn drain(stream: &mut UnixStream, into: &mut Vec<u8>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn expect(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// Runs the loop through [`QUIET`] of loop time in which nothing is ready, and checks that it
/// idled: at most [`QUIET_CALLS`] calls counted by `calls`, and — when the harness can tell
/// what the loop's thread used — at most 1/[`QUIET_CPU_DIVISOR`] of the window on a CPU, and
/// not [`SPIN_CPU`] or more at [`SPIN_CPU_PER_WAIT`] or more per wait.
fn idles(h: &mut dyn Harness, what: &str, calls: &dyn Fn() -> usize) -> Result<(), String> {
    let calls_before = calls();
    let before = h.loop_thread_usage();
    let start = h.elapsed();
    h.run_until(QUIET, &mut || false);
    let elapsed = h.elapsed().saturating_sub(start);
    let after = h.loop_thread_usage();
    let made = calls().saturating_sub(calls_before);
    expect(made <= QUIET_CALLS, || {
        format!(
            "{what}: {made} handler calls in {elapsed:?} of loop time with nothing ready \
             (at most {QUIET_CALLS})"
        )
    })?;
    let (Some(before), Some(after)) = (before, after) else {
        return Ok(());
    };
    let cpu = after.cpu.saturating_sub(before.cpu);
    expect(cpu * QUIET_CPU_DIVISOR <= elapsed, || {
        format!(
            "{what}: the loop's thread spent {cpu:?} on a CPU in {elapsed:?} of loop time \
             with nothing ready (at most 1/{QUIET_CPU_DIVISOR}): the glue spins"
        )
    })?;
    if let (Some(from), Some(to)) = (before.waits, after.waits) {
        let waits = to.saturating_sub(from);
        let per_wait = cpu / u32::try_from(waits + 1).unwrap_or(u32::MAX);
        expect(cpu < SPIN_CPU || per_wait < SPIN_CPU_PER_WAIT, || {
            format!(
                "{what}: the loop's thread spent {cpu:?} on a CPU in {elapsed:?} of loop time \
                 with nothing ready, blocking only {waits} times: the glue spins"
            )
        })?;
    }
    Ok(())
}

fn read_and_write_watch_on_one_socket(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, mut other) = pair(4096)?;
    let _source = attach(h, &peer)?;
    expect(peer.read_watch().fd() == peer.write_watch().fd(), || {
        "the two watches must share one fd".into()
    })?;
    peer.queue(b"ping");
    let mut got = Vec::new();
    let sent = h.run_until(LIMIT, &mut || {
        drain(&mut other, &mut got);
        got.len() >= 4
    });
    expect(sent && got == b"ping", || {
        format!("the write watch did not carry the output: got {got:?}")
    })?;
    other.write_all(b"pong").map_err(io("write"))?;
    let received = h.run_until(LIMIT, &mut || peer.received_len() >= 4);
    expect(received && peer.received() == b"pong", || {
        format!(
            "the read watch on the same fd did not fire: {:?}",
            peer.received()
        )
    })?;
    let quiet = h.run_until(LIMIT, &mut || !peer.write_watch().is_enabled());
    expect(quiet, || {
        "the write watch stayed enabled with nothing queued".into()
    })
}

fn write_watch_follows_queued_output(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, mut other) = pair(64 * 1024)?;
    let _source = attach(h, &peer)?;
    // More than a socket buffer holds, so output stays queued until the other end reads.
    let data = pattern(4 * 1024 * 1024);
    peer.queue(&data);
    let flushed = h.run_until(Duration::from_millis(50), &mut || {
        peer.pending_output() == 0
    });
    expect(!flushed && peer.write_watch().is_enabled(), || {
        "with output queued and the socket full, the write watch must stay enabled".into()
    })?;
    let mut got = Vec::new();
    let all = h.run_until(LIMIT, &mut || {
        drain(&mut other, &mut got);
        got.len() >= data.len()
    });
    expect(all && got == data, || {
        format!("got {} of {} bytes, or altered", got.len(), data.len())
    })?;
    let off = h.run_until(LIMIT, &mut || !peer.write_watch().is_enabled());
    expect(off, || {
        "the write watch stayed enabled after the queue drained".into()
    })?;
    expect(peer.write_enables() >= 1, || {
        "the write watch was never enabled".into()
    })
}

/// A socket is writable nearly always, so a glue that polls a disabled write watch anyway
/// (ignoring the enabled flag) wakes for it again and again: nothing reaches the producer
/// (`handle` answers `Disabled`), but the loop spins. The peer's read watch is enabled with
/// nothing to read, its write watch disabled: the loop must sleep.
fn quiet_socket_stays_quiet(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, mut other) = pair(4096)?;
    let _source = attach(h, &peer)?;
    expect(!peer.write_watch().is_enabled(), || {
        "the peer's write watch starts disabled".into()
    })?;
    let calls = || peer.handler_calls();
    idles(h, "a writable socket whose write watch is disabled", &calls)?;

    // Enabled, the write watch works; disabled again once the output is out, quiet again.
    peer.queue(b"once");
    let mut got = Vec::new();
    let sent = h.run_until(LIMIT, &mut || {
        drain(&mut other, &mut got);
        got.len() >= 4 && !peer.write_watch().is_enabled()
    });
    expect(sent && got == b"once", || {
        format!("the write watch, once enabled, carried {got:?}")
    })?;
    idles(h, "a write watch disabled again after its output", &calls)
}

fn one_byte_per_handle_drains_64k(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, other) = pair(1)?;
    let data = pattern(64 * 1024);
    {
        // Written before the loop runs: all of it is pending at once.
        let mut writer = &other;
        writer.write_all(&data).map_err(io("write"))?;
    }
    let _source = attach(h, &peer)?;
    let all = h.run_until(LIMIT, &mut || peer.received_len() >= data.len());
    expect(all && peer.received() == data, || {
        format!(
            "a producer reading one byte per handle stalled at {} of {} bytes: \
             level-triggered delivery required (C17)",
            peer.received_len(),
            data.len()
        )
    })
}

fn periodic_timeout_restarts_on_enable(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, _other) = pair(64)?;
    let _source = attach(h, &peer)?;
    let interval = Duration::from_millis(20);
    let fired: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let log = Arc::clone(&fired);
    let timeout = Timeout::new(interval, move || push(&log, "periodic"));
    let count = || {
        let fired = fired.lock().unwrap_or_else(|p| p.into_inner());
        fired.iter().filter(|name| **name == "periodic").count()
    };

    // Each clock starts before the call that arms the timer, since a correct glue arms it
    // inside that call: then no load can make a correct firing look early. Periods are
    // fixed-delay (C10), so the third firing comes at least three intervals after the add.
    let start = h.elapsed();
    peer.timeouts()
        .add(&timeout)
        .map_err(|e| format!("add timeout: {e}"))?;
    let three = h.run_until(LIMIT, &mut || count() >= 3);
    let took = h.elapsed().saturating_sub(start);
    expect(three && took >= interval * 3, || {
        format!(
            "3 periods of {interval:?} took {took:?} ({} fired)",
            count()
        )
    })?;

    peer.timeouts()
        .toggle(&timeout, false)
        .map_err(|e| format!("toggle off: {e}"))?;
    let before = count();
    h.run_until(interval * 3, &mut || false);
    expect(count() == before, || "a disabled timeout fired".into())?;

    let enabled_at = h.elapsed();
    peer.timeouts()
        .toggle(&timeout, true)
        .map_err(|e| format!("toggle on: {e}"))?;
    // Armed just after the toggle with ten times the interval: a glue that arms the
    // re-enabled timer late — anywhere but inside `toggled` — lets this one fire first.
    let log = Arc::clone(&fired);
    let reference = Timeout::new(interval * 10, move || push(&log, "reference"));
    let seen = fired.lock().map_or(0, |f| f.len());
    peer.timeouts()
        .add(&reference)
        .map_err(|e| format!("add reference timeout: {e}"))?;
    let again = h.run_until(LIMIT, &mut || count() > before);
    let waited = h.elapsed().saturating_sub(enabled_at);
    let _ = peer.timeouts().remove(&reference);
    expect(again && waited >= interval, || {
        format!("after enabling, it fired after {waited:?}: the period must restart from now")
    })?;
    let after: Vec<&str> = fired.lock().map(|f| f[seen..].to_vec()).unwrap_or_default();
    expect(after.first() == Some(&"periodic"), || {
        format!(
            "re-enabled with a period of {interval:?}, it fired only after a timeout of \
             {:?} added after the toggle ({after:?}): the glue must arm the timer inside \
             `toggled`",
            interval * 10
        )
    })
}

fn push(log: &Mutex<Vec<&'static str>>, name: &'static str) {
    log.lock().unwrap_or_else(|p| p.into_inner()).push(name);
}

fn removal_from_inside_a_handler(h: &mut dyn Harness) -> Result<(), String> {
    let (first, mut first_other) = pair(4096)?;
    let (second, mut second_other) = pair(4096)?;
    let _a = attach(h, &first)?;
    let _b = attach(h, &second)?;
    let calls = Arc::new(AtomicUsize::new(0));
    let fd = first.fd().ok_or("socket closed")?;
    let slot: Arc<std::sync::Mutex<Option<Watch>>> = Arc::default();
    let (me, count, owner, victim) = (
        Arc::clone(&slot),
        Arc::clone(&calls),
        first.clone(),
        second.clone(),
    );
    // A second read watch on the first socket: it removes itself and the other peer's read
    // watch from inside its own handler.
    let remover = Watch::new(fd, WatchFlags::READABLE, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
        if let Some(this) = me.lock().ok().and_then(|mut s| s.take()) {
            let _ = owner.watches().remove(&this);
        }
        let _ = victim.watches().remove(&victim.read_watch());
    });
    *slot.lock().map_err(|_| "poisoned")? = Some(remover.clone());
    first
        .watches()
        .add(&remover)
        .map_err(|e| format!("add: {e}"))?;

    first_other.write_all(b"go").map_err(io("write"))?;
    let handled = h.run_until(LIMIT, &mut || {
        calls.load(Ordering::SeqCst) >= 1 && first.received_len() >= 2
    });
    expect(handled, || {
        "the removing handler or its fd's other watch never ran".into()
    })?;
    expect(
        remover.is_removed() && second.read_watch().is_removed(),
        || "the removals did not take".into(),
    )?;

    second_other.write_all(b"late").map_err(io("write"))?;
    first_other.write_all(b"more").map_err(io("write"))?;
    let wrong = h.run_until(Duration::from_millis(100), &mut || {
        second.received_len() > 0 || calls.load(Ordering::SeqCst) > 1
    });
    expect(!wrong, || "a removed watch was handled again".into())?;
    let rest = h.run_until(LIMIT, &mut || first.received_len() >= 6);
    expect(rest, || "the fd's remaining watch stopped working".into())
}

fn closed_fd_reused_by_a_new_socket(h: &mut dyn Harness) -> Result<(), String> {
    let (old, old_other) = pair(4096)?;
    let old_source = attach(h, &old)?;
    let old_fd = old.fd();
    // Let the loop register it for real before it goes.
    h.run_until(Duration::from_millis(10), &mut || false);
    old.close(); // removes the watches, then closes the fd (C15)
    drop(old_other);
    h.detach(&old_source).map_err(io("detach"))?;

    let (new, mut new_other) = pair(4096)?;
    let _source = attach(h, &new)?;
    new_other.write_all(b"again").map_err(io("write"))?;
    let got = h.run_until(LIMIT, &mut || new.received_len() >= 5);
    expect(got && new.received() == b"again", || {
        format!(
            "a new socket on fd {:?} (old fd {old_fd:?}) got {:?}",
            new.fd(),
            new.received()
        )
    })?;
    new.queue(b"back");
    let mut back = Vec::new();
    let echoed = h.run_until(LIMIT, &mut || {
        drain(&mut new_other, &mut back);
        back.len() >= 4
    });
    expect(echoed && back == b"back", || {
        format!("write side got {back:?}")
    })
}

fn woken_from_another_thread(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, mut other) = pair(4096)?;
    let _source = attach(h, &peer)?;
    let poster = peer.clone();
    std::thread::spawn(move || poster.post(b"from afar"))
        .join()
        .map_err(|_| "the posting thread panicked")?;
    let mut got = Vec::new();
    let delivered = h.run_until(LIMIT, &mut || {
        drain(&mut other, &mut got);
        got.len() >= 9
    });
    expect(delivered && got == b"from afar", || {
        format!("work posted from another thread was not dispatched: got {got:?}")
    })
}

fn functions_replaced_while_events_pending(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, other) = pair(16)?;
    let data = pattern(1000);
    {
        let mut writer = &other;
        writer.write_all(&data).map_err(io("write"))?;
    }
    let source = attach(h, &peer)?;
    let some = h.run_until(LIMIT, &mut || peer.received_len() >= 16);
    expect(some, || "nothing was read before the switch".into())?;
    h.detach(&source).map_err(io("detach"))?;
    h.attach(Arc::clone(&source)).map_err(io("re-attach"))?;
    let all = h.run_until(LIMIT, &mut || peer.received_len() >= data.len());
    expect(all && peer.received() == data, || {
        format!(
            "after replacing the functions, got {} of {} bytes",
            peer.received_len(),
            data.len()
        )
    })
}

/// A producer that breaks C15 — closes an fd while its watch is still registered — must cost
/// the glue nothing worse than a warning: no report for the dead fd, no spinning on it
/// (`poll` answers `POLLNVAL` at once, every time), a removal that tolerates EBADF, and a new
/// socket on the same fd number served normally.
fn fd_closed_while_registered(h: &mut dyn Harness) -> Result<(), String> {
    let (peer, _other) = pair(4096)?;
    let _source = attach(h, &peer)?;
    let (doomed, _doomed_other) = UnixStream::pair().map_err(io("socketpair"))?;
    let doomed = OwnedFd::from(doomed);
    let doomed = lonely(&doomed).unwrap_or(doomed);
    let fd = doomed.as_raw_fd();
    let reports = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&reports);
    let watch = Watch::new(fd, WatchFlags::READABLE, move |_| {
        count.fetch_add(1, Ordering::SeqCst);
    });
    peer.watches()
        .add(&watch)
        .map_err(|e| format!("add: {e}"))?;
    h.run_until(Duration::from_millis(10), &mut || false);
    drop(doomed); // closed while its watch is registered: the producer's bug
    let count = || reports.load(Ordering::SeqCst);
    idles(h, "an fd closed while its watch is registered", &count)?;
    expect(count() == 0, || {
        "a watch on a closed fd was reported to the producer".into()
    })?;
    peer.watches()
        .remove(&watch)
        .map_err(|e| format!("the late removal failed: {e}"))?;

    // The fd number is free again: a new socket that gets it must work.
    let (ours, theirs) = UnixStream::pair().map_err(io("socketpair"))?;
    let ours = OwnedFd::from(ours);
    let ours = at_least(&ours, fd).unwrap_or(ours);
    let reused = SocketPeer::new(UnixStream::from(ours), 4096).map_err(io("SocketPeer::new"))?;
    let _reused = attach(h, &reused)?;
    let mut writer = &theirs;
    writer.write_all(b"fresh").map_err(io("write"))?;
    let got = h.run_until(LIMIT, &mut || reused.received_len() >= 5);
    expect(got && reused.received() == b"fresh", || {
        format!(
            "after a closed fd, a new socket on fd {:?} (the closed one was {fd}) got {:?}",
            reused.fd(),
            reused.received()
        )
    })
}

/// A duplicate of `fd` on a number far above those the process's other threads get (they
/// take the lowest free number), so that no other thread reuses it while a scenario watches
/// it closed; each call takes another number, so scenarios running in parallel keep apart.
/// `None` where the fd limit is too low for that.
fn lonely(fd: &OwnedFd) -> Option<OwnedFd> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let slot = 512 + (NEXT.fetch_add(1, Ordering::Relaxed) % 256) as RawFd;
    at_least(fd, slot)
}

/// A duplicate of `fd` (close-on-exec) on the lowest free number from `number` up.
fn at_least(fd: &OwnedFd, number: RawFd) -> Option<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg};
    let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(number)).ok()?;
    // SAFETY: F_DUPFD_CLOEXEC just created `dup`; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(dup) })
}
