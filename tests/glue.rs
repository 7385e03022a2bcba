//! The glue toolkit through its public API only, as an adapter author uses it: per-fd merging
//! and lazy narrowing (C9, C18), recycled and closed fds (C15), the edge-triggered re-check
//! (C17), dispatch scheduling (C16), attachments, and timer arithmetic (C10).

mod support;

use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use loopglue::glue::{
    Attachment, Attachments, Deadline, DispatchQueue, FdRegistry, FileIdentity, Recheck, Registrar,
    TimerGlue, TimerQueue, Token, WatchGlue,
};
use loopglue::testing::{MockLoop, SocketPeer};
use loopglue::{
    Delivery, Source, Timeout, TimeoutFunctions, Watch, WatchFlags, WatchFunctions, WatchList,
};
use support::adapter as scenario;
use support::{fds_exclusive, fds_shared, Bare, PanicOnFree};

/// A host loop that logs every operation and can be told to fail the next one.
#[derive(Default)]
struct Host {
    log: Vec<String>,
    fail_next: Option<io::ErrorKind>,
    widened: Vec<(RawFd, WatchFlags)>,
}

impl Host {
    fn take(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }
    fn fail(&mut self) -> io::Result<()> {
        match self.fail_next.take() {
            Some(kind) => Err(io::Error::from(kind)),
            None => Ok(()),
        }
    }
}

fn bits(f: WatchFlags) -> &'static str {
    match (
        f.contains(WatchFlags::READABLE),
        f.contains(WatchFlags::WRITABLE),
    ) {
        (true, true) => "rw",
        (true, false) => "r",
        (false, true) => "w",
        (false, false) => "-",
    }
}

impl Registrar for Host {
    type Registration = ();
    fn register(&mut self, fd: RawFd, _: Token, interest: WatchFlags) -> io::Result<()> {
        self.fail()?;
        self.log.push(format!("register {fd} {}", bits(interest)));
        Ok(())
    }
    fn reregister(
        &mut self,
        _: &mut (),
        fd: RawFd,
        _: Token,
        interest: WatchFlags,
    ) -> io::Result<()> {
        self.fail()?;
        self.log.push(format!("reregister {fd} {}", bits(interest)));
        Ok(())
    }
    fn deregister(&mut self, _: (), fd: RawFd, _: Token) {
        self.log.push(format!("deregister {fd}"));
    }
    fn widened(&mut self, fd: RawFd, _: Token, interest: WatchFlags) {
        self.widened.push((fd, interest));
    }
}

fn nop(_: WatchFlags) {}

/// A socket with one readable watch, in a list and registered with a fresh registry.
struct Registered {
    /// Kept open for the test's length, so the fd stays this socket's.
    _pair: (UnixStream, UnixStream),
    fd: RawFd,
    list: WatchList,
    w: Watch,
    reg: FdRegistry,
    host: Host,
    token: Token,
}

impl Registered {
    fn new() -> Registered {
        let pair = UnixStream::pair().unwrap();
        let fd = pair.0.as_raw_fd();
        let list = WatchList::new();
        let w = Watch::new(fd, WatchFlags::READABLE, nop);
        list.add(&w).unwrap();
        let (mut reg, mut host) = (FdRegistry::new(), Host::default());
        reg.add(&w, &mut host).unwrap();
        let token = reg.token_of(fd).unwrap();
        Registered {
            _pair: pair,
            fd,
            list,
            w,
            reg,
            host,
            token,
        }
    }
}

#[test]
fn c18_watches_of_one_fd_share_one_registration_that_follows_enabled_state() {
    let _fds = fds_shared();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let read = Watch::new(fd, WatchFlags::READABLE, nop);
    let write = Watch::new_disabled(fd, WatchFlags::WRITABLE, nop);
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    reg.add(&read, &mut host).unwrap();
    reg.add(&write, &mut host).unwrap();
    // The join re-validates the registration even though nothing changed.
    assert_eq!(
        host.take(),
        [format!("register {fd} r"), format!("reregister {fd} r")]
    );
    assert_eq!(reg.registered(), 1);
    assert_eq!(
        std::mem::take(&mut host.widened),
        [(fd, WatchFlags::READABLE)]
    );

    // Enabling widens at once, and tells an edge-triggered glue to re-check.
    let list = WatchList::new();
    list.add(&write).unwrap(); // only to flip the enabled flag
    list.toggle(&write, true).unwrap();
    reg.toggled(&write, &mut host);
    assert_eq!(host.take(), [format!("reregister {fd} rw")]);
    assert_eq!(
        host.widened,
        [(fd, WatchFlags::READABLE | WatchFlags::WRITABLE)]
    );

    // Off and on again between two waits: no host call at all (issue 8).
    list.toggle(&write, false).unwrap();
    reg.toggled(&write, &mut host);
    list.toggle(&write, true).unwrap();
    reg.toggled(&write, &mut host);
    reg.flush(&mut host);
    assert_eq!(host.take(), Vec::<String>::new());

    // Off, then the loop is about to block: flush narrows.
    list.toggle(&write, false).unwrap();
    reg.toggled(&write, &mut host);
    assert!(host.take().is_empty(), "narrowing waits for flush");
    reg.flush(&mut host);
    assert_eq!(host.take(), [format!("reregister {fd} r")]);

    reg.remove(&read, &mut host);
    reg.remove(&write, &mut host);
    assert_eq!(host.take(), [format!("deregister {fd}")]);
    assert_eq!(reg.registered(), 0);
    list.remove(&write).unwrap();
}

#[test]
fn an_fd_with_every_watch_disabled_is_deregistered_on_its_first_report() {
    let _fds = fds_shared();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let list = WatchList::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let w = Watch::new(fd, WatchFlags::READABLE, move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    });
    list.add(&w).unwrap();
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    reg.add(&w, &mut host).unwrap();
    let token = reg.token_of(fd).unwrap();
    list.toggle(&w, false).unwrap();
    reg.toggled(&w, &mut host);
    reg.flush(&mut host);
    assert_eq!(
        host.take(),
        [format!("register {fd} r")],
        "kept until it reports"
    );
    // It hangs up (epoll reports that whatever the interest): deregistered, nobody called.
    let mut out = Vec::new();
    assert_eq!(reg.ready(token, WatchFlags::HANGUP, &mut host, &mut out), 0);
    assert_eq!(host.take(), [format!("deregister {fd}")]);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    // Enabled again: registered again.
    list.toggle(&w, true).unwrap();
    reg.toggled(&w, &mut host);
    assert_eq!(host.take(), [format!("register {fd} r")]);
    list.remove(&w).unwrap();
}

#[test]
fn a_report_nobody_wants_narrows_at_once() {
    let _fds = fds_shared();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let list = WatchList::new();
    let read = Watch::new(fd, WatchFlags::READABLE, nop);
    let write = Watch::new(fd, WatchFlags::WRITABLE, nop);
    list.add(&read).unwrap();
    list.add(&write).unwrap();
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    reg.add(&read, &mut host).unwrap();
    reg.add(&write, &mut host).unwrap();
    host.take();
    list.toggle(&write, false).unwrap();
    reg.toggled(&write, &mut host);
    let token = reg.token_of(fd).unwrap();
    let mut out = Vec::new();
    let n = reg.ready(token, WatchFlags::WRITABLE, &mut host, &mut out);
    assert_eq!((n, host.take()), (0, vec![format!("reregister {fd} r")]));
    list.remove(&read).unwrap();
    list.remove(&write).unwrap();
}

#[test]
fn watches_removed_behind_the_glues_back_are_dropped_not_polled() {
    let _fds = fds_shared();
    // A wrapper glue whose `remove` panicked never passed the call on (issue 7.5): the
    // registry finds out from the watch itself, and from what `handle` answers.
    let Registered {
        _pair,
        fd,
        list,
        w,
        mut reg,
        mut host,
        token,
    } = Registered::new();
    list.remove(&w).unwrap(); // the registry is not told
    let mut out = Vec::new();
    assert_eq!(
        reg.ready(token, WatchFlags::READABLE, &mut host, &mut out),
        0
    );
    assert_eq!(
        host.take(),
        [format!("register {fd} r"), format!("deregister {fd}")]
    );
    assert_eq!((reg.registered(), reg.watches()), (0, 0));

    // And through `report`, when the removal races with the report.
    let w2 = Watch::new(fd, WatchFlags::READABLE, nop);
    list.add(&w2).unwrap();
    reg.add(&w2, &mut host).unwrap();
    let token = reg.token_of(fd).unwrap();
    assert_eq!(
        reg.ready(token, WatchFlags::READABLE, &mut host, &mut out),
        1
    );
    list.remove(&w2).unwrap();
    let (watch, condition) = out.pop().unwrap();
    let delivery = watch.handle(condition);
    assert_eq!(delivery, Delivery::Removed);
    reg.report(token, &watch, delivery, &mut host);
    assert_eq!((reg.registered(), reg.watches()), (0, 0));
}

/// Closes the file behind `fd` and makes the same number name a new socket (dup2 does both
/// at once); returns the new socket's peer.
fn recycle(fd: &mut OwnedFd) -> UnixStream {
    let (c, d) = UnixStream::pair().unwrap();
    nix::unistd::dup2(&c, fd).unwrap();
    d
}

#[test]
fn c15_a_recycled_fd_number_starts_a_new_registration_and_silences_the_stale_watches() {
    let _fds = fds_shared();
    let (a, _b) = UnixStream::pair().unwrap();
    let mut owned = OwnedFd::from(a);
    let fd = owned.as_raw_fd();
    let stale = Watch::new(fd, WatchFlags::READABLE, nop);
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    reg.add(&stale, &mut host).unwrap();
    let old_token = reg.token_of(fd).unwrap();
    let _peer = recycle(&mut owned); // producer A's bug: closed without removing its watch

    let fresh = Watch::new(fd, WatchFlags::READABLE, nop);
    reg.add(&fresh, &mut host).unwrap();
    let new_token = reg.token_of(fd).unwrap();
    assert_ne!(old_token, new_token);
    assert_eq!(reg.dropped(), 1);
    let mut out = Vec::new();
    reg.ready(new_token, WatchFlags::READABLE, &mut host, &mut out);
    assert_eq!(
        out,
        [(fresh.clone(), WatchFlags::READABLE)],
        "only B's watch"
    );
    out.clear();
    assert_eq!(
        reg.ready(old_token, WatchFlags::READABLE, &mut host, &mut out),
        0
    );
    // A removes its watch late: nothing of B's changes.
    host.take();
    reg.remove(&stale, &mut host);
    assert!(host.take().is_empty());
    assert_eq!(reg.registered(), 1);
    reg.remove(&fresh, &mut host);
    assert_eq!(reg.registered(), 0);
}

/// What a registrar on a shared host loop checks before it deregisters by number: the fd still
/// names the file it registered — not once the number was closed and reused (C15).
#[test]
fn c15_file_identity_tells_a_recycled_number_from_the_file_it_named() {
    let _fds = fds_shared();
    let (a, b) = UnixStream::pair().unwrap();
    let mut owned = OwnedFd::from(a);
    let fd = owned.as_raw_fd();
    let identity = FileIdentity::of(fd).unwrap();
    assert_eq!(FileIdentity::of(fd).unwrap(), identity, "stable");
    assert!(identity.is_named_by(fd));
    assert!(!identity.is_named_by(b.as_raw_fd()), "another socket");
    let dup = nix::unistd::dup(&owned).unwrap();
    assert!(
        identity.is_named_by(dup.as_raw_fd()),
        "a dup names the same file"
    );
    let _peer = recycle(&mut owned);
    assert!(!identity.is_named_by(fd), "the number names a new socket");
    assert_ne!(FileIdentity::of(fd).unwrap(), identity);
    assert!(!identity.is_named_by(-1));
    let err = FileIdentity::of(-1).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EBADF));
}

#[test]
fn c15_a_forgotten_registration_of_the_same_file_is_registered_again() {
    let _fds = fds_shared();
    // epoll's MOD → ENOENT when the kernel dropped the fd: same file (a dup was closed and
    // re-made at the same number), so ADD it again.
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.as_raw_fd();
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    reg.add(&Watch::new(fd, WatchFlags::READABLE, nop), &mut host)
        .unwrap();
    host.take();
    host.fail_next = Some(io::ErrorKind::NotFound);
    let w = Watch::new(fd, WatchFlags::WRITABLE, nop);
    reg.add(&w, &mut host).unwrap();
    assert_eq!(
        host.take(),
        [format!("deregister {fd}"), format!("register {fd} rw")]
    );
    assert_eq!(reg.dropped(), 0);
}

#[test]
fn c8_a_refused_or_closed_fd_is_not_tracked() {
    let _fds = fds_exclusive();
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.into_raw_fd();
    nix::unistd::close(fd).unwrap();
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    let err = reg
        .add(&Watch::new(fd, WatchFlags::READABLE, nop), &mut host)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EBADF));
    let (c, _d) = UnixStream::pair().unwrap();
    host.fail_next = Some(io::ErrorKind::PermissionDenied);
    let err = reg
        .add(
            &Watch::new(c.as_raw_fd(), WatchFlags::READABLE, nop),
            &mut host,
        )
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!((reg.registered(), reg.watches()), (0, 0));
    assert!(host.take().is_empty());
}

#[test]
fn a_closed_fd_is_dropped_once_and_never_registered_again() {
    let _fds = fds_shared();
    let Registered {
        _pair,
        fd,
        list,
        w,
        mut reg,
        mut host,
        token,
    } = Registered::new();
    reg.closed(token, &mut host);
    reg.closed(token, &mut host);
    assert_eq!(reg.dropped(), 1);
    list.toggle(&w, false).unwrap();
    reg.toggled(&w, &mut host);
    list.toggle(&w, true).unwrap();
    reg.toggled(&w, &mut host);
    assert_eq!(
        host.take(),
        [format!("register {fd} r"), format!("deregister {fd}")]
    );
    let mut out = Vec::new();
    assert_eq!(
        reg.ready(token, WatchFlags::READABLE, &mut host, &mut out),
        0
    );
    reg.remove(&w, &mut host);
    assert_eq!(reg.watches(), 0);
    list.remove(&w).unwrap();
}

#[test]
fn c17_recheck_tells_an_edge_triggered_glue_to_go_again_until_drained() {
    let _fds = fds_shared();
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let fd = a.as_raw_fd();
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    let w = Watch::new(fd, WatchFlags::READABLE, nop);
    reg.add(&w, &mut host).unwrap();
    let token = reg.token_of(fd).unwrap();
    b.write_all(&[1, 2, 3]).unwrap();
    let mut rounds = 0;
    loop {
        io::Read::read(&mut &a, &mut [0u8; 1]).unwrap(); // a handler reading one byte
        rounds += 1;
        let check = reg.recheck(token, &mut host);
        if !check.again() {
            assert_eq!(check.clear(), WatchFlags::READABLE);
            break;
        }
        assert_eq!(check.ready(), WatchFlags::READABLE);
        assert!(check.clear().is_empty());
    }
    assert_eq!(rounds, 3);
    // A closed fd comes back as closed and is dropped.
    assert!(Recheck::poll(-1, WatchFlags::READABLE).unwrap().is_closed());
}

/// The batched re-check of a round: one answer per live token whose watches want something,
/// in order; a closed fd is dropped (C15); a disabled or stale registration is not polled.
#[test]
fn c17_recheck_many_answers_for_every_fd_of_a_round_in_one_call() {
    let _fds = fds_exclusive();
    let (idle, _idle_peer) = UnixStream::pair().unwrap();
    let (busy, mut busy_peer) = UnixStream::pair().unwrap();
    let (off, mut off_peer) = UnixStream::pair().unwrap();
    let (doomed, _doomed_peer) = UnixStream::pair().unwrap();
    let list = WatchList::new();
    let (mut reg, mut host) = (FdRegistry::new(), Host::default());
    let mut watches = Vec::new();
    for socket in [&idle, &busy, &off, &doomed] {
        let w = Watch::new(socket.as_raw_fd(), WatchFlags::READABLE, nop);
        list.add(&w).unwrap();
        reg.add(&w, &mut host).unwrap();
        watches.push(w);
    }
    let token = |s: &UnixStream| reg.token_of(s.as_raw_fd()).unwrap();
    let round = [token(&idle), token(&busy), token(&off), token(&doomed)];
    busy_peer.write_all(b"x").unwrap();
    off_peer.write_all(b"x").unwrap();
    list.toggle(&watches[2], false).unwrap();
    reg.toggled(&watches[2], &mut host);
    let doomed_fd = doomed.into_raw_fd();
    nix::unistd::close(doomed_fd).unwrap(); // a producer's bug: closed under its watch
    let stale = Token::from_raw(u64::MAX - 1);

    let mut found = Vec::new();
    reg.recheck_many(
        &[round[0], round[1], round[2], stale, round[3]],
        &mut host,
        &mut found,
    )
    .unwrap();
    let tokens: Vec<Token> = found.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        tokens,
        [round[0], round[1], round[3]],
        "the disabled and the stale: not polled"
    );
    let (idle_found, busy_found, closed_found) = (found[0].1, found[1].1, found[2].1);
    assert!(!idle_found.again() && idle_found.clear() == WatchFlags::READABLE);
    assert!(busy_found.again() && busy_found.ready() == WatchFlags::READABLE);
    assert!(closed_found.is_closed() && !closed_found.again());
    assert_eq!(reg.dropped(), 1, "the closed fd is dropped");
    assert_eq!(reg.token_of(doomed_fd), None);
    // The same answers as one `recheck` per token.
    assert_eq!(reg.recheck(round[0], &mut host), idle_found);
    assert_eq!(reg.recheck(round[1], &mut host), busy_found);
    // Nothing to poll: nothing appended.
    found.clear();
    reg.recheck_many(&[round[2], round[3]], &mut host, &mut found)
        .unwrap();
    assert!(found.is_empty());
    for w in &watches {
        reg.remove(w, &mut host);
        list.remove(w).unwrap();
    }
}

/// A glue built on `WatchGlue` and `TimerGlue`: the logging `Host` as its registrar, a
/// clock of its own, and a count of the changes it was told about.
struct Toolkit {
    state: Mutex<(FdRegistry, Host, TimerQueue)>,
    changed: AtomicUsize,
    clock: Mutex<Instant>,
}

impl WatchGlue for Toolkit {
    type Registration = ();
    type Host<'a> = Host;
    const GONE: &'static str = "test glue";

    fn with_fds<T>(self: &Arc<Self>, f: impl FnOnce(&mut FdRegistry, &mut Host) -> T) -> T {
        let (fds, host, _) = &mut *self.state.lock().unwrap();
        f(fds, host)
    }
}

impl TimerGlue for Toolkit {
    fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T {
        f(&mut self.state.lock().unwrap().2)
    }
    fn timers_changed(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
    }
    fn now(&self) -> Instant {
        *self.clock.lock().unwrap()
    }
}

#[test]
fn watch_and_timer_glue_forward_every_call_and_hold_the_glue_weakly() {
    let _fds = fds_shared();
    let glue = Arc::new(Toolkit {
        state: Mutex::default(),
        changed: AtomicUsize::new(0),
        clock: Mutex::new(Instant::now() + Duration::from_secs(3600)), // not the system's
    });
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    let (watches, timeouts) = (WatchList::new(), loopglue::TimeoutList::new());
    watches
        .set_functions(Some(Toolkit::watch_functions(&glue)))
        .unwrap();
    timeouts
        .set_functions(Some(Toolkit::timeout_functions(&glue)))
        .unwrap();

    let w = Watch::new(fd, WatchFlags::READABLE, nop);
    watches.add(&w).unwrap();
    watches.toggle(&w, false).unwrap();
    watches.toggle(&w, true).unwrap();
    watches.remove(&w).unwrap();
    assert_eq!(
        glue.state.lock().unwrap().1.take(),
        [format!("register {fd} r"), format!("deregister {fd}")],
        "add, toggles (narrowed lazily: no call) and remove reached the registry"
    );

    let t = Timeout::new(Duration::from_secs(5), || {});
    timeouts.add(&t).unwrap();
    assert_eq!(glue.changed.load(Ordering::SeqCst), 1);
    let deadline = glue.with_timers(|timers| timers.next_deadline());
    assert_eq!(
        deadline.instant(),
        Some(glue.now() + Duration::from_secs(5)),
        "the glue's clock"
    );
    timeouts.toggle(&t, false).unwrap();
    timeouts.toggle(&t, true).unwrap();
    assert_eq!(glue.changed.load(Ordering::SeqCst), 3, "each toggle");
    timeouts.remove(&t).unwrap();
    assert_eq!(
        glue.changed.load(Ordering::SeqCst),
        3,
        "a removal brings nothing closer"
    );
    assert!(glue.with_timers(|timers| timers.is_empty()));

    // fire_due: the collected timeouts one at a time, with no lock held (the first handler
    // disables the second through the glue), each re-armed from the glue's clock.
    let timeouts = Arc::new(timeouts);
    let victim: Arc<Mutex<Option<Timeout>>> = Arc::default();
    let (list, slot) = (Arc::clone(&timeouts), Arc::clone(&victim));
    let first = Timeout::new(Duration::from_secs(5), move || {
        let second = slot.lock().unwrap().clone().unwrap();
        list.toggle(&second, false).unwrap();
    });
    // Made second: collected after the first (the same deadline, a later id).
    let second = Timeout::new(Duration::from_secs(5), || {
        panic!("disabled before its turn")
    });
    *victim.lock().unwrap() = Some(second.clone());
    timeouts.add(&first).unwrap();
    timeouts.add(&second).unwrap();
    let later = glue.now() + Duration::from_secs(5);
    *glue.clock.lock().unwrap() = later;
    assert_eq!(glue.with_timers(|timers| timers.collect_due(later)), 2);
    assert_eq!(glue.fire_due(), 1, "the disabled one is skipped");
    let deadline = glue.with_timers(|timers| timers.next_deadline());
    assert_eq!(deadline.instant(), Some(later + Duration::from_secs(5)));
    assert_eq!(glue.fire_due(), 0, "nothing collected");
    timeouts.remove(&first).unwrap();
    timeouts.remove(&second).unwrap();

    // The functions hold the glue weakly: once it is gone, add refuses and the rest do nothing.
    let kept = Watch::new(fd, WatchFlags::READABLE, nop);
    watches.add(&kept).unwrap();
    let kept_timeout = Timeout::new(Duration::from_secs(5), || {});
    timeouts.add(&kept_timeout).unwrap();
    let weak = Arc::downgrade(&glue);
    drop(glue);
    assert!(weak.upgrade().is_none(), "no cycle through the functions");
    let refused = |e: loopglue::Error| match e {
        loopglue::Error::Refused(e) => (e.kind(), e.to_string()),
        other => panic!("{other}"),
    };
    let w2 = Watch::new(fd, WatchFlags::READABLE, nop);
    let (kind, message) = refused(watches.add(&w2).unwrap_err());
    assert_eq!(kind, io::ErrorKind::NotConnected);
    assert_eq!(message, "the test glue was dropped");
    let t2 = Timeout::new(Duration::from_secs(5), || {});
    let (kind, message) = refused(timeouts.add(&t2).unwrap_err());
    assert_eq!(kind, io::ErrorKind::NotConnected);
    assert_eq!(message, "the glue was dropped", "the default name");
    watches.toggle(&kept, false).unwrap();
    watches.remove(&kept).unwrap();
    timeouts.toggle(&kept_timeout, false).unwrap();
    timeouts.remove(&kept_timeout).unwrap();
}

#[test]
fn c10_deadlines_saturate_and_timers_are_fixed_delay() {
    let _fds = fds_shared();
    let now = Instant::now();
    assert!(Deadline::after(now, Duration::MAX).is_never());
    assert!(!Deadline::after(now, Duration::MAX).is_due(now + Duration::from_secs(1 << 40)));

    let mut timers = TimerQueue::new();
    let never = Timeout::new(Duration::MAX, || {});
    timers.add(&never, now);
    assert_eq!(timers.wait_time(now), None, "Duration::MAX is never due");

    let t = Timeout::new(Duration::from_millis(10), || {});
    timers.add(&t, now);
    // The loop runs late, then a handler runs long: fixed delay from the hand-out.
    let late = now + Duration::from_millis(35);
    assert_eq!(timers.collect_due(late), 1);
    let handed = late + Duration::from_millis(5);
    assert_eq!(timers.next_due(handed), Some(t.clone()));
    assert_eq!(
        timers.next_deadline().instant(),
        Some(handed + Duration::from_millis(10))
    );
}

#[test]
fn collected_timeouts_survive_a_panicking_handler_and_honour_restarts() {
    let _fds = fds_shared();
    let now = Instant::now();
    let mut timers = TimerQueue::new();
    let list = loopglue::TimeoutList::new();
    let a = Timeout::new(Duration::from_millis(1), || panic!("handler"));
    let b = Timeout::new(Duration::from_millis(1), || {});
    let c = Timeout::new(Duration::from_millis(1), || {});
    for t in [&a, &b, &c] {
        list.add(t).unwrap();
        timers.add(t, now);
    }
    let due = now + Duration::from_millis(2);
    assert_eq!(timers.collect_due(due), 3);
    let first = timers.next_due(due).unwrap();
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| first.handle())).is_err());
    // `b` and `c` are still waiting: the next round hands them out first.
    assert!(timers.next_deadline().is_due(due));
    // A restart of `c` in the meantime wins over its collected firing (NOTES 19).
    list.toggle(&c, false).unwrap();
    timers.toggled(&c, due);
    list.toggle(&c, true).unwrap();
    timers.toggled(&c, due);
    let mut handed = Vec::new();
    while let Some(t) = timers.next_due(due) {
        handed.push(t);
    }
    assert_eq!(handed.len(), 1);
    assert!(handed[0] == b || handed[0] == a);
}

#[test]
fn c16_dispatch_queue_holds_no_cycle_and_survives_a_panicking_dispatch() {
    let _fds = fds_shared();
    struct Panicky {
        data: loopglue::SourceData,
        status: loopglue::StatusNotifier,
        dispatched: AtomicUsize,
    }
    impl Source for Panicky {
        fn data(&self) -> &loopglue::SourceData {
            &self.data
        }
        fn set_watch_functions(
            &self,
            _: Option<Box<dyn WatchFunctions>>,
        ) -> Result<(), loopglue::SetFunctionsError<dyn WatchFunctions>> {
            Ok(())
        }
        fn set_timeout_functions(
            &self,
            _: Option<Box<dyn TimeoutFunctions>>,
        ) -> Result<(), loopglue::SetFunctionsError<dyn TimeoutFunctions>> {
            Ok(())
        }
        fn set_dispatch_status_function(&self, f: Option<loopglue::DispatchStatusFn>) {
            self.status.set_function(f);
        }
        fn dispatch_status(&self) -> loopglue::DispatchStatus {
            self.status.status()
        }
        fn dispatch(&self) -> loopglue::DispatchStatus {
            if self.dispatched.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("message handler");
            }
            self.status.update(loopglue::DispatchStatus::Complete);
            loopglue::DispatchStatus::Complete
        }
    }
    let source = Arc::new(Panicky {
        data: loopglue::SourceData::new(),
        status: loopglue::StatusNotifier::new(),
        dispatched: AtomicUsize::new(0),
    });
    let queue = DispatchQueue::new(|| {});
    let key = queue.insert(Arc::clone(&source) as Arc<dyn Source>);
    queue.watch(key);
    assert_eq!(Arc::strong_count(&source), 2, "the queue's reference only");
    // Work arrives on another thread.
    let s = Arc::clone(&source);
    std::thread::spawn(move || s.status.update(loopglue::DispatchStatus::DataRemains))
        .join()
        .unwrap();
    assert!(std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| queue.run(8))).is_err());
    // The status did not change, so no notification will come: the queue kept it pending.
    assert!(queue.is_pending());
    assert_eq!(queue.run(8), 1);
    assert_eq!(source.dispatch_status(), loopglue::DispatchStatus::Complete);
    drop(queue.remove(key));
    assert_eq!(Arc::strong_count(&source), 1);
}

/// Watch functions that refuse every add with `kind`.
struct Refuse(io::ErrorKind);
impl WatchFunctions for Refuse {
    fn add(&mut self, _: &Watch) -> io::Result<()> {
        Err(io::Error::from(self.0))
    }
    fn remove(&mut self, _: &Watch) {}
    fn toggled(&mut self, _: &Watch) {}
}

#[test]
fn attach_is_all_or_nothing_and_refuses_a_second_loop() {
    let _fds = fds_shared();
    let mock = MockLoop::new();
    let table = Attachments::new(|| {});
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 16).unwrap();
    let err = table
        .attach(
            Arc::new(peer.clone()),
            Box::new(Refuse(io::ErrorKind::AlreadyExists)),
            mock.timeout_functions(),
            None,
        )
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert!(table.is_empty() && !table.contains(&peer));
    assert!(mock.timeouts().is_empty(), "no timeout set left installed");
    // Nothing left behind: a later attach works, and a second table is refused.
    table
        .attach(
            Arc::new(peer.clone()),
            mock.watch_functions(),
            mock.timeout_functions(),
            None,
        )
        .unwrap();
    let other = Attachments::new(|| {});
    let err = other
        .attach(
            Arc::new(peer.clone()),
            mock.watch_functions(),
            mock.timeout_functions(),
            None,
        )
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(mock.watches().len(), 2, "the first attachment is untouched");
    assert!(!other.detach(&peer).unwrap(), "not attached there");
    assert!(table.detach(&peer.clone()).unwrap());
    assert!(other
        .attach(
            Arc::new(peer.clone()),
            mock.watch_functions(),
            mock.timeout_functions(),
            None
        )
        .is_ok());
    other.detach_all();
    assert!(other.is_empty() && mock.watches().is_empty());
}

#[test]
fn detach_finishes_every_step_when_a_free_data_panics() {
    let _fds = fds_shared();
    let mock = MockLoop::new();
    let table = Attachments::new(|| {});
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 16).unwrap();
    table
        .attach(
            Arc::new(peer.clone()),
            Box::new(PanicOnFree(mock.watch_functions())),
            mock.timeout_functions(),
            Some(Box::new(|| {})),
        )
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| table.detach(&peer)));
    assert!(outcome.is_err(), "the panic reaches the caller");
    assert!(table.is_empty(), "and the source is detached anyway");
    assert!(mock.watches().is_empty() && mock.timeouts().is_empty());
    // Attachable again: nothing of the old attachment is left.
    let table2 = Attachments::new(|| {});
    table2
        .attach(
            Arc::new(peer.clone()),
            mock.watch_functions(),
            mock.timeout_functions(),
            None,
        )
        .unwrap();
    table2.detach(&peer).unwrap();
}

#[test]
fn an_attachment_detaches_when_dropped_and_never_aborts_while_unwinding() {
    let _fds = fds_shared();
    let mock = MockLoop::new();
    let table = Arc::new(Attachments::new(|| {}));
    let attach = |source: Arc<dyn Source>| {
        table
            .attach(
                Arc::clone(&source),
                mock.watch_functions(),
                mock.timeout_functions(),
                None,
            )
            .unwrap();
        Attachment::new(Arc::downgrade(&table), source)
    };
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 16).unwrap();
    let attachment = attach(Arc::new(peer.clone()));
    assert_eq!(attachment.source().data().id(), peer.data().id());
    drop(attachment);
    assert!(
        table.is_empty() && mock.watches().is_empty(),
        "dropped: detached"
    );
    attach(Arc::new(peer.clone())).detach().unwrap();
    assert!(table.is_empty());

    // A step that panics: the panic reaches whoever drops the attachment, detached all the same…
    let fragile = Arc::new(Bare::new());
    let attachment = attach(fragile.clone());
    fragile.explode.store(true, Ordering::SeqCst);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(attachment)));
    assert!(outcome.is_err(), "the step's panic reaches the caller");
    assert!(table.is_empty());
    // …except while the thread unwinds already: a second panic there would abort the process.
    scenario::an_attachment_dropped_while_unwinding_detaches_without_aborting(|source| {
        Ok(attach(source))
    });
    assert!(table.is_empty(), "detached while unwinding");

    // Once the glue is gone, detaching is harmless: it detached everything when dropped.
    let attachment = Attachment::new(Weak::<Attachments>::new(), Arc::new(peer.clone()));
    attachment.detach().unwrap();
}

/// Watch functions that run a hook after each `toggled`: a glue callback of the source.
struct OnToggle(Box<dyn WatchFunctions>, Arc<dyn Fn() + Send + Sync>);
impl WatchFunctions for OnToggle {
    fn add(&mut self, w: &Watch) -> io::Result<()> {
        self.0.add(w)
    }
    fn remove(&mut self, w: &Watch) {
        self.0.remove(w)
    }
    fn toggled(&mut self, w: &Watch) {
        self.0.toggled(w);
        (self.1)();
    }
}

#[test]
fn a_detach_refused_inside_a_glue_callback_hands_the_attachment_back_still_attached() {
    let _fds = fds_shared();
    let mock = MockLoop::new();
    let table = Arc::new(Attachments::new(|| {}));
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 16).unwrap();
    type Slot = Mutex<Option<Attachment<Arc<Attachments>>>>;
    let slot: Arc<Slot> = Arc::default();
    let refusals: Arc<Mutex<Vec<io::ErrorKind>>> = Arc::default();
    let (held, seen) = (Arc::clone(&slot), Arc::clone(&refusals));
    let detach_now = move || {
        let taken = held.lock().unwrap().take();
        if let Some(attachment) = taken {
            match attachment.detach() {
                Ok(()) => seen.lock().unwrap().push(io::ErrorKind::Other),
                Err((back, error)) => {
                    seen.lock().unwrap().push(error.kind());
                    *held.lock().unwrap() = Some(back);
                }
            }
        }
    };
    table
        .attach(
            Arc::new(peer.clone()),
            Box::new(OnToggle(mock.watch_functions(), Arc::new(detach_now))),
            mock.timeout_functions(),
            None,
        )
        .unwrap();
    *slot.lock().unwrap() = Some(Attachment::new(Arc::clone(&table), Arc::new(peer.clone())));
    peer.watches().toggle(&peer.read_watch(), false).unwrap(); // runs the hook
    assert_eq!(*refusals.lock().unwrap(), [io::ErrorKind::InvalidInput]);
    assert!(table.contains(&peer), "still attached");
    let back = slot.lock().unwrap().take().expect("handed back");
    assert_eq!(back.source().data().id(), peer.data().id());
    back.detach().unwrap();
    assert!(table.is_empty() && mock.watches().is_empty());
}

#[test]
fn status_from_many_threads_means_one_pending_dispatch() {
    let _fds = fds_shared();
    let wakes = Arc::new(AtomicUsize::new(0));
    let w = Arc::clone(&wakes);
    let queue = Arc::new(DispatchQueue::new(move || {
        w.fetch_add(1, Ordering::Relaxed);
    }));
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 16).unwrap();
    let key = queue.insert(Arc::new(peer.clone()));
    queue.watch(key);
    let seen = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let q = Arc::clone(&queue);
            std::thread::spawn(move || {
                for _ in 0..100 {
                    q.schedule(key);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    *seen.lock().unwrap() = wakes.load(Ordering::Relaxed);
    assert_eq!(*seen.lock().unwrap(), 1, "one wake while it stays pending");
    queue.run(8);
    assert!(!queue.is_pending());
}

#[test]
fn dropping_the_table_detaches_everything_so_the_source_can_attach_elsewhere() {
    let _fds = fds_shared();
    let mock = MockLoop::new();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 16).unwrap();
    let table = Attachments::new(|| {});
    table
        .attach(
            Arc::new(peer.clone()),
            mock.watch_functions(),
            mock.timeout_functions(),
            None,
        )
        .unwrap();
    drop(table);
    assert!(mock.watches().is_empty());
    let next = loopglue::MainLoop::new().unwrap();
    next.attach(Arc::new(peer.clone())).unwrap();
    drop(next);
    assert!(!peer.watches().has_functions());
}

/// An edge-triggered glue built from the toolkit, as the mio and tokio adapters will be: epoll
/// with `EPOLLET`, `FdRegistry::recheck` after handlers, and a re-check whenever the registry
/// says a registration widened. The producer reads one byte per `handle` and switches its own
/// watch off after each byte (its inbound queue is full); the application switches it on
/// again. With no fresh edge ever coming for bytes already in the socket, only the re-checks
/// get all of them delivered (C17). The disable, made inside the handler, is deliberately not
/// forwarded to the registry (a glue that missed a `toggled`): the re-check after the handler
/// notices it, so the enable still counts as a widening.
#[test]
fn c17_an_edge_triggered_glue_built_on_the_toolkit_never_stalls() {
    use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
    use std::os::fd::BorrowedFd;

    let _fds = fds_shared();

    struct EdgeHost<'a> {
        epoll: &'a Epoll,
        recheck: Vec<Token>,
    }
    fn events(interest: WatchFlags) -> EpollFlags {
        let mut flags = EpollFlags::EPOLLET;
        flags.set(EpollFlags::EPOLLIN, interest.contains(WatchFlags::READABLE));
        flags.set(
            EpollFlags::EPOLLOUT,
            interest.contains(WatchFlags::WRITABLE),
        );
        flags
    }
    impl Registrar for EdgeHost<'_> {
        type Registration = ();
        fn register(&mut self, fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<()> {
            // SAFETY: the fd belongs to a watch not yet removed, so it is open (C15).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let event = EpollEvent::new(events(interest), token.into_raw());
            Ok(self.epoll.add(fd, event)?)
        }
        fn reregister(
            &mut self,
            _: &mut (),
            fd: RawFd,
            token: Token,
            interest: WatchFlags,
        ) -> io::Result<()> {
            // SAFETY: as in `register`.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let mut event = EpollEvent::new(events(interest), token.into_raw());
            Ok(self.epoll.modify(fd, &mut event)?)
        }
        fn deregister(&mut self, _: (), fd: RawFd, _: Token) {
            // SAFETY: as in `register`.
            let _ = self.epoll.delete(unsafe { BorrowedFd::borrow_raw(fd) });
        }
        fn widened(&mut self, _: RawFd, token: Token, _: WatchFlags) {
            // An edge that passed while nobody wanted it will not come again: look now.
            self.recheck.push(token);
        }
    }

    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
    let mut host = EdgeHost {
        epoll: &epoll,
        recheck: Vec::new(),
    };
    let mut registry = FdRegistry::new();
    let list = Arc::new(WatchList::new());
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let (r, l, sock) = (
        Arc::clone(&received),
        Arc::downgrade(&list),
        a.try_clone().unwrap(),
    );
    let watch = Arc::new(Mutex::new(None::<Watch>));
    let me = Arc::clone(&watch);
    let w = Watch::new(a.as_raw_fd(), WatchFlags::READABLE, move |_| {
        if matches!(io::Read::read(&mut &sock, &mut [0u8; 1]), Ok(1)) {
            r.fetch_add(1, Ordering::SeqCst);
            // Queue full: stop reading until the application has consumed the byte.
            if let (Some(list), Some(w)) = (l.upgrade(), me.lock().unwrap().clone()) {
                list.toggle(&w, false).unwrap();
            }
        }
    });
    *watch.lock().unwrap() = Some(w.clone());
    list.add(&w).unwrap();
    registry.add(&w, &mut host).unwrap();
    host.recheck.clear(); // a fresh ADD reports what is ready already

    const TOTAL: usize = 4096;
    (&b).write_all(&[7u8; TOTAL]).unwrap();
    let mut buf = vec![EpollEvent::empty(); 8];
    let mut ready = Vec::new();
    let mut rounds = 0;
    let end = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::SeqCst) < TOTAL {
        assert!(
            Instant::now() < end,
            "stalled at {} bytes",
            received.load(Ordering::SeqCst)
        );
        rounds += 1;
        // The application consumed the byte: switch the watch on again, and tell the glue.
        if !w.is_enabled() {
            list.toggle(&w, true).unwrap();
            registry.toggled(&w, &mut host);
        }
        let mut tokens: Vec<(Token, WatchFlags)> = Vec::new();
        for token in std::mem::take(&mut host.recheck) {
            let check = registry.recheck(token, &mut host);
            if check.again() {
                tokens.push((token, check.ready()));
            }
        }
        if tokens.is_empty() {
            let n = epoll.wait(&mut buf, EpollTimeout::from(100u16)).unwrap();
            for event in &buf[..n] {
                let condition = WatchFlags::from_poll_revents(event.events().bits() as i16);
                tokens.push((Token::from_raw(event.data()), condition));
            }
        }
        for (token, condition) in tokens {
            registry.ready(token, condition, &mut host, &mut ready);
            for (watch, condition) in ready.drain(..) {
                let delivery = watch.handle(condition);
                registry.report(token, &watch, delivery, &mut host);
            }
            // Edge-triggered: look again before waiting for an edge that may never come.
            if registry.recheck(token, &mut host).again() {
                host.recheck.push(token);
            }
        }
    }
    assert_eq!(received.load(Ordering::SeqCst), TOTAL);
    assert!(rounds >= TOTAL, "one byte per round");
    registry.remove(&w, &mut host);
    list.remove(&w).unwrap();
}

#[test]
fn a_registration_the_host_refuses_later_stops_polling_until_removed() {
    let _fds = fds_shared();
    // calloop applies registrations on its own thread and learns of EEXIST only then.
    let Registered {
        _pair,
        fd,
        list,
        w,
        mut reg,
        mut host,
        token,
    } = Registered::new();
    reg.refused(
        token,
        io::Error::from(io::ErrorKind::AlreadyExists),
        &mut host,
    );
    assert_eq!(
        host.take(),
        [format!("register {fd} r"), format!("deregister {fd}")]
    );
    assert_eq!(
        (reg.registered(), reg.token_of(fd), reg.dropped()),
        (0, None, 1)
    );
    let mut out = Vec::new();
    assert_eq!(
        reg.ready(token, WatchFlags::READABLE, &mut host, &mut out),
        0
    );
    reg.remove(&w, &mut host);
    assert_eq!(reg.watches(), 0);
    list.remove(&w).unwrap();
}
