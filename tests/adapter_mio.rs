//! The mio adapter: the conformance scenarios, a 16 MiB message read 2 KiB per handle, bad
//! input, the echo, and what the application's own loop relies on (its tokens left alone,
//! the waker, the poll timeout).
#![cfg(feature = "mio")]

mod support;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::mio::{MioAttachment, MioGlue};
use loopglue::net::Connection;
use loopglue::testing::{Harness, MockLoop, SocketPeer};
use loopglue::{Source, Timeout, Watch, WatchFlags};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use support::adapter::{self as scenario, pattern, Attached, Bomb, Detachable, LIMIT};

const GLUE_TOKENS: std::ops::Range<Token> = Token(1000)..Token(1100);
const WAKER: Token = Token(1000);

/// The application's side: its poll, and the glue on tokens 1000..1100.
struct App {
    poll: Poll,
    events: Events,
    glue: Arc<MioGlue>,
    attached: Attached<MioAttachment>,
    start: Instant,
    /// Whether the last poll returned the glue's waker event.
    woken: bool,
    /// Every application token (outside the glue's range) the polls returned.
    foreign: Vec<Token>,
}

impl App {
    fn new() -> App {
        let poll = Poll::new().expect("poll");
        let glue = Arc::new(MioGlue::new(poll.registry(), GLUE_TOKENS).expect("glue"));
        App {
            poll,
            events: Events::with_capacity(256),
            glue,
            attached: Attached::new(),
            start: Instant::now(),
            woken: false,
            foreign: Vec::new(),
        }
    }

    /// One iteration of the application's loop, waiting at most `max`.
    fn iterate(&mut self, max: Duration) -> usize {
        let wait = self.glue.poll_timeout().map_or(max, |w| w.min(max));
        self.poll.poll(&mut self.events, Some(wait)).expect("poll");
        self.woken = self.events.iter().any(|e| e.token() == WAKER);
        let foreign = self.events.iter().map(|e| e.token());
        self.foreign.extend(foreign.filter(|t| !self.glue.owns(*t)));
        self.glue.process(&self.events)
    }

    fn run(&mut self, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
        self.run_until(limit, &mut done)
    }
}

impl Harness for App {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        let attachment = self.glue.attach(Arc::clone(&source))?;
        self.attached.insert(&source, attachment);
        Ok(())
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        self.attached.detach(source)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        // Short waits: `done` may be what makes progress possible.
        support::run_until(limit, done, |left| {
            self.iterate(left.min(Duration::from_millis(5)));
        })
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Detachable for MioAttachment {
    fn detach(self) -> Result<(), (Self, io::Error)> {
        MioAttachment::detach(self)
    }
}

#[test]
fn mio_glue_passes_every_scenario() {
    support::assert_passes_every_scenario(App::new);
}

/// On an edge-triggered poll, the glue re-checks the fd after each round (C17).
#[test]
fn c17_a_16_mib_message_read_2_kib_per_handle_arrives_intact() {
    scenario::a_16_mib_message_read_2_kib_per_handle_arrives_intact(&mut App::new());
}

#[test]
fn net_connection_echo_checks_every_reply() {
    let mut app = App::new();
    let connections = scenario::echo_checks_every_reply(&mut app, 4, 200);
    assert_eq!(app.glue.registered_fds(), 8);
    assert_eq!(app.glue.sources(), 8);
    drop(connections);
    app.attached.clear();
    assert_eq!(app.glue.registered_fds(), 0);
    assert_eq!(app.glue.sources(), 0);
}

/// Nothing is left of a refused attach: no registration, no function, no attachment mark —
/// the same source attaches elsewhere afterwards.
fn assert_nothing_left(app: &App, source: &SocketPeer) {
    assert_eq!(app.glue.registered_fds(), 0);
    assert_eq!(app.glue.sources(), 0);
    let mock = MockLoop::new();
    mock.attach(Arc::new(source.clone()))
        .expect("the refused source attaches elsewhere");
    assert_eq!(mock.watches().len(), 2);
}

#[test]
fn bad_input_a_closed_fd_is_a_clear_error_and_nothing_is_left() {
    let app = App::new();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    let peer = SocketPeer::new(ours, 64).unwrap();
    // A watch on a number that is closed (a producer's bug), besides the peer's own watches.
    // On a number far above those other tests' threads are handed (they take the lowest
    // free one), so that none reuses it before the attach.
    let (doomed, _other) = UnixStream::pair().unwrap();
    let dead = nix::fcntl::fcntl(&doomed, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(900)).unwrap();
    drop(doomed);
    nix::unistd::close(dead).unwrap();
    let stale = Watch::new(dead, WatchFlags::READABLE, |_| {});
    peer.watches().add(&stale).unwrap();
    let error = app.glue.attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(nix::libc::EBADF), "{error}");
    assert_eq!(app.glue.registered_fds(), 0, "fd {fd} was left registered");
    peer.watches().remove(&stale).unwrap();
    assert_nothing_left(&app, &peer);
}

#[test]
fn bad_input_an_fd_the_application_registered_is_refused_with_eexist() {
    let app = App::new();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    app.poll
        .registry()
        .register(&mut SourceFd(&fd), Token(7), Interest::READABLE)
        .unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let error = app.glue.attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AlreadyExists, "{error}");
    assert!(error.to_string().contains("already registered"), "{error}");
    assert_nothing_left(&app, &peer);
    // The application's registration is untouched.
    app.poll
        .registry()
        .reregister(&mut SourceFd(&fd), Token(7), Interest::READABLE)
        .expect("still registered");
}

#[test]
fn bad_input_the_token_range_used_up_is_a_clear_error() {
    let poll = Poll::new().unwrap();
    let glue = MioGlue::new(poll.registry(), Token(10)..Token(12)).unwrap(); // one fd token
    let (a, _a) = UnixStream::pair().unwrap();
    let (b, _b) = UnixStream::pair().unwrap();
    let first = SocketPeer::new(a, 64).unwrap();
    let second = SocketPeer::new(b, 64).unwrap();
    let _first = glue.attach(Arc::new(first)).unwrap();
    let error = glue.attach(Arc::new(second)).unwrap_err();
    assert!(error.to_string().contains("tokens"), "{error}");
    assert_eq!(glue.registered_fds(), 1);
    assert!(MioGlue::new(poll.registry(), Token(5)..Token(6)).is_err());
}

#[test]
fn events_of_the_applications_own_tokens_are_left_alone() {
    let mut app = App::new();
    let (mine, mut my_other) = UnixStream::pair().unwrap();
    mine.set_nonblocking(true).unwrap();
    let fd = mine.as_raw_fd();
    app.poll
        .registry()
        .register(&mut SourceFd(&fd), Token(3), Interest::READABLE)
        .unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    app.attach(Arc::new(peer.clone())).unwrap();
    my_other.write_all(b"app").unwrap();
    theirs.write_all(b"glue").unwrap();
    assert!(app.run(LIMIT, || peer.received_len() >= 4));
    // The application's own event came back to it, and the glue left its data alone.
    assert_eq!(app.foreign, [Token(3)]);
    let mut buf = [0u8; 8];
    assert_eq!(
        io::Read::read(&mut &mine, &mut buf).unwrap(),
        3,
        "data left unread"
    );
    assert!(app.glue.owns(Token(1000)) && app.glue.owns(Token(1099)));
    assert!(!app.glue.owns(Token(3)) && !app.glue.owns(Token(1100)));
}

#[test]
fn c16_work_posted_from_another_thread_wakes_a_blocked_poll() {
    let mut app = App::new();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    app.attach(Arc::new(peer.clone())).unwrap();
    app.iterate(Duration::ZERO);
    assert_eq!(app.glue.poll_timeout(), None, "nothing armed: block");
    let poster = peer.clone();
    let thread = std::thread::spawn(move || {
        // The main thread is (about to be) blocked in poll(LIMIT).
        poster.post(b"afar");
    });
    let deadline = Instant::now() + LIMIT;
    while !app.woken && Instant::now() < deadline {
        app.iterate(LIMIT);
    }
    thread.join().unwrap();
    assert!(app.woken, "the poll was not woken through the glue's waker");
    let mut got = Vec::new();
    assert!(app.run(LIMIT, || {
        let mut buf = [0u8; 16];
        if let Ok(n) = io::Read::read(&mut theirs, &mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        got == b"afar"
    }));
}

#[test]
fn c16_a_source_with_data_remaining_is_dispatched_without_fd_activity() {
    let mut app = App::new();
    let (peer, mut theirs) = scenario::peer_with_work_queued(b"queued before attach");
    app.attach(Arc::new(peer.clone())).unwrap();
    assert_eq!(app.glue.poll_timeout(), Some(Duration::ZERO));
    let ran = app.iterate(LIMIT);
    assert!(ran >= 1, "nothing dispatched");
    let mut got = Vec::new();
    assert!(scenario::receive(
        &mut app,
        &mut theirs,
        &mut got,
        b"queued before attach"
    ));
}

#[test]
fn c10_timeouts_restart_with_the_new_interval_and_huge_intervals_are_never_due() {
    let mut app = App::new();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    app.attach(Arc::new(peer.clone())).unwrap();
    let never = Timeout::new(Duration::MAX, || panic!("a Duration::MAX timeout fired"));
    peer.timeouts().add(&never).unwrap();
    app.iterate(Duration::ZERO); // the new registration's first re-check
    assert_eq!(app.glue.poll_timeout(), None, "never due: block");
    assert_eq!(app.glue.timeouts(), 1);

    let fired = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fired);
    let tick = Timeout::new(Duration::from_secs(3600), move || {
        count.fetch_add(1, Ordering::SeqCst);
    });
    peer.timeouts().add(&tick).unwrap();
    let wait = app.glue.poll_timeout().unwrap();
    assert!(wait > Duration::from_secs(3000), "{wait:?}");
    // A new interval, re-read in `toggled`, restarts the period from now.
    let restarted = Instant::now();
    peer.timeouts()
        .restart(&tick, Duration::from_millis(5))
        .unwrap();
    assert!(app.glue.poll_timeout().unwrap() <= Duration::from_millis(5));
    assert!(app.run(LIMIT, || fired.load(Ordering::SeqCst) >= 2));
    assert!(
        restarted.elapsed() >= Duration::from_millis(10),
        "two periods"
    );
    peer.timeouts().remove(&tick).unwrap();
    peer.timeouts().remove(&never).unwrap();
    assert_eq!(app.glue.timeouts(), 0);
}

#[test]
fn c18_two_watches_on_one_fd_are_one_registration_and_a_hang_up_reaches_both() {
    scenario::a_second_watch_on_an_fd_shares_its_registration_and_hears_the_hang_up(
        &mut App::new(),
        |app| app.glue.registered_fds(),
    );
}

#[test]
fn attach_and_detach_from_inside_handlers_and_attach_from_another_thread() {
    let mut app = App::new();
    // Weak inside: the handler belongs to a source the glue holds.
    let (inside, afar) = (Arc::downgrade(&app.glue), Arc::clone(&app.glue));
    scenario::attach_and_detach_from_inside_handlers_and_from_another_thread(
        &mut app,
        move |source| {
            let glue = inside.upgrade().expect("the glue outlives its sources");
            glue.attach(source).unwrap()
        },
        move |source| afar.attach(source).unwrap(),
    );
}

#[test]
fn a_panicking_handler_reaches_the_caller_and_the_glue_carries_on() {
    let mut app = App::new();
    let Bomb {
        peer,
        bomb,
        theirs: _theirs,
        ..
    } = scenario::a_peer_whose_next_handler_panics(&mut app);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for _ in 0..1000 {
            app.iterate(Duration::from_millis(5));
        }
    }));
    assert!(panicked.is_err(), "the panic did not reach the caller");
    // No new edge will come: the glue re-checked the fd and carries on draining it.
    assert!(app.run(LIMIT, || peer.received_len() == 10));
    peer.watches().remove(&bomb).unwrap();
}

#[test]
fn dropping_the_glue_detaches_every_source() {
    let app = App::new();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let attachment = app.glue.attach(Arc::new(peer.clone())).unwrap();
    assert_eq!(app.glue.registered_fds(), 1);
    drop(app);
    drop(attachment); // after its glue: nothing to do
    let mock = MockLoop::new();
    mock.attach(Arc::new(peer.clone())).unwrap();
}

/// The level-triggered re-check waits while the loop is busy with other events, but not for
/// ever: a producer that left data behind is served even when another pair keeps every poll
/// busy (C17).
#[test]
fn c17_a_partial_reader_is_served_while_other_fds_keep_the_loop_busy() {
    let mut app = App::new();
    // An endless ping-pong: some fd of the glue is ready at every poll.
    let (a, b) = UnixStream::pair().unwrap();
    let (left, right) = (
        Connection::from_stream(a).unwrap(),
        Connection::from_stream(b).unwrap(),
    );
    for end in [&left, &right] {
        end.set_message_handler(|conn, message| {
            let _ = conn.send(message);
        });
        app.attach(Arc::new(end.clone())).unwrap();
    }
    left.send(b"ball".to_vec()).unwrap();
    // One byte per handle, 512 bytes pending: no edge announces what it leaves behind.
    let (ours, theirs) = UnixStream::pair().unwrap();
    let slow = SocketPeer::new(ours, 1).unwrap();
    app.attach(Arc::new(slow.clone())).unwrap();
    (&theirs).write_all(&pattern(512)).unwrap();
    assert!(
        app.run(LIMIT, || slow.received_len() == 512),
        "starved at {} bytes",
        slow.received_len()
    );
    assert!(
        right.stats().messages_received > 512,
        "the ping-pong stopped"
    );
}

#[test]
fn the_glue_and_its_attachments_move_and_are_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MioGlue>();
    send_sync::<MioAttachment>();
}

/// The write end of a pipe whose read end is closed reports an error (C1).
#[test]
fn c1_an_error_reaches_the_watch() {
    scenario::an_error_reaches_a_write_watch(&mut App::new());
}

#[test]
fn an_attachment_dropped_while_unwinding_detaches_without_aborting() {
    let app = App::new();
    scenario::an_attachment_dropped_while_unwinding_detaches_without_aborting(|source| {
        app.glue.attach(source)
    });
    assert_eq!(app.glue.sources(), 0);
}
