//! The calloop adapter: every conformance scenario, echo through `net::Connection`, a 16 MiB
//! message read 2 KiB per handle, bad input (closed fd, an fd calloop already polls, a second
//! attach), attach from another thread and from inside handlers, detach from inside a
//! handler, panics, timeouts, and nothing left behind.
#![cfg(feature = "calloop")]

mod support;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use calloop::generic::Generic;
use calloop::{EventLoop, Interest, Mode, PostAction};
use loopglue::adapters::calloop::{CalloopAttachment, CalloopGlue};
use loopglue::net::Connection;
use loopglue::testing::{Harness, SocketPeer};
use loopglue::{Source, Timeout, Watch, WatchFlags};

use support::adapter::{self as scenario, Attached, Detachable, LIMIT};

/// The glue in a loop of its own, dispatched by the calling thread.
struct CalloopHarness {
    event_loop: EventLoop<'static, ()>,
    glue: CalloopGlue<'static, ()>,
    attached: Attached<CalloopAttachment>,
    start: Instant,
}

impl CalloopHarness {
    fn new() -> CalloopHarness {
        let event_loop = EventLoop::try_new().expect("event loop");
        let glue = CalloopGlue::insert(&event_loop.handle()).expect("glue");
        CalloopHarness {
            event_loop,
            glue,
            attached: Attached::new(),
            start: Instant::now(),
        }
    }
}

impl Harness for CalloopHarness {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        let attachment = self.glue.attach(Arc::clone(&source))?;
        self.attached.insert(&source, attachment);
        Ok(())
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        self.attached.detach(source)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        support::run_until(limit, done, |left| {
            let wait = left.min(Duration::from_millis(5));
            self.event_loop.dispatch(wait, &mut ()).expect("dispatch");
        })
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Detachable for CalloopAttachment {
    fn detach(self) -> Result<(), (Self, io::Error)> {
        CalloopAttachment::detach(self)
    }
}

fn dispatch_until<D>(
    event_loop: &mut EventLoop<'_, D>,
    data: &mut D,
    mut done: impl FnMut(&D) -> bool,
) -> bool {
    let end = Instant::now() + LIMIT;
    while !done(data) {
        if Instant::now() >= end {
            return false;
        }
        event_loop
            .dispatch(Duration::from_millis(5), data)
            .expect("dispatch");
    }
    true
}

#[test]
fn calloop_passes_every_scenario() {
    support::assert_passes_every_scenario(CalloopHarness::new);
}

#[test]
fn echo_through_connections() {
    let mut harness = CalloopHarness::new();
    let _connections = scenario::echo_checks_every_reply(&mut harness, 10, 200);
    harness.attached.clear();
    let glue = &harness.glue;
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
}

#[test]
fn a_16_mib_message_read_2_kib_per_handle_arrives_intact() {
    scenario::a_16_mib_message_read_2_kib_per_handle_arrives_intact(&mut CalloopHarness::new());
}

#[test]
fn attaching_a_source_whose_fd_is_closed_fails_cleanly() {
    let event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    scenario::a_source_whose_fd_is_closed_is_refused_and_leaves_nothing(
        |source| glue.attach(source),
        || (glue.registered_fds(), glue.sources()),
        800,
    );
}

#[test]
fn an_fd_calloop_already_polls_is_refused_with_eexist_and_nothing_stays_installed() {
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let fd = peer.fd().unwrap();
    // The application polls the same fd itself.
    let duplicate = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }).unwrap();
    let theirs = event_loop
        .handle()
        .insert_source(
            Generic::new(
                // SAFETY: not closed before the source is removed at the end of the test.
                unsafe { calloop::generic::FdWrapper::new(fd) },
                Interest::READ,
                Mode::Level,
            ),
            |_, _, _| Ok(PostAction::Continue),
        )
        .unwrap();
    let err = glue.attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EEXIST), "{err}");
    assert!(!peer.watches().has_functions() && !peer.timeouts().has_functions());
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
    // The loop is unharmed and the application's source still registered.
    event_loop.dispatch(Duration::ZERO, &mut ()).unwrap();
    event_loop.handle().remove(theirs);
    let attached = glue.attach(Arc::new(peer.clone())).unwrap();
    drop(attached);
    drop(duplicate);
}

#[test]
fn a_second_attach_is_refused_and_changes_nothing() {
    let event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let first = glue.attach(Arc::new(peer.clone())).unwrap();
    let err = glue.attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    let err = glue.attacher().attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(glue.registered_fds(), 1);
    drop(first);
    assert!(!peer.watches().has_functions());
}

#[test]
fn attach_and_send_from_another_thread_wake_the_loop() {
    let mut event_loop: EventLoop<'_, Vec<Vec<u8>>> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let attacher = glue.attacher();
    let (a, b) = UnixStream::pair().unwrap();
    let (client, service) = (
        Connection::from_stream(a).unwrap(),
        Connection::from_stream(b).unwrap(),
    );
    service.set_message_handler(|c, m| c.send(m).unwrap());
    // Replies reach the loop's `&mut Data` through a calloop channel.
    let (replies, channel) = calloop::channel::channel();
    client.set_message_handler(move |_, m| replies.send(m).unwrap());
    event_loop
        .handle()
        .insert_source(channel, |event, _, data: &mut Vec<Vec<u8>>| {
            if let calloop::channel::Event::Msg(m) = event {
                data.push(m);
            }
        })
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (client, service) = (client.clone(), service.clone());
        std::thread::spawn(move || {
            // Attached and sent from here while the loop thread waits in calloop.
            let c = attacher.attach(Arc::new(client.clone())).unwrap();
            let s = attacher.attach(Arc::new(service.clone())).unwrap();
            for i in 0..10u32 {
                client.send(i.to_le_bytes().to_vec()).unwrap();
            }
            tx.send((c, s)).unwrap();
        })
    };
    let mut received = Vec::new();
    assert!(dispatch_until(&mut event_loop, &mut received, |r| r.len() == 10));
    let expected: Vec<Vec<u8>> = (0..10u32).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(received, expected);
    worker.join().unwrap();
    let attachments = rx.recv().unwrap();
    // Detached from another thread too: unregistered before `drop` returns.
    std::thread::spawn(move || drop(attachments))
        .join()
        .unwrap();
    assert_eq!(glue.registered_fds(), 0);
}

#[test]
fn a_server_attaches_from_inside_its_handler_and_connections_detach_on_disconnect() {
    let mut harness = CalloopHarness::new();
    let (attacher, glue) = (harness.glue.attacher(), harness.glue.clone());
    scenario::a_server_attaches_connections_from_inside_its_handler_and_they_detach_on_disconnect(
        &mut harness,
        "calloop",
        move |source| attacher.attach(source).unwrap(),
        move || glue.sources(),
    );
}

#[test]
fn attach_and_detach_from_inside_handlers_and_from_another_thread() {
    let mut harness = CalloopHarness::new();
    let (inside, afar) = (harness.glue.attacher(), harness.glue.attacher());
    scenario::attach_and_detach_from_inside_handlers_and_from_another_thread(
        &mut harness,
        move |source| inside.attach(source).unwrap(),
        move |source| afar.attach(source).unwrap(),
    );
}

#[test]
fn c18_two_watches_on_one_fd_are_one_registration_and_a_hang_up_reaches_both() {
    scenario::a_second_watch_on_an_fd_shares_its_registration_and_hears_the_hang_up(
        &mut CalloopHarness::new(),
        |harness| harness.glue.registered_fds(),
    );
}

/// The write end of a pipe whose read end is closed reports an error (C1).
#[test]
fn c1_an_error_reaches_the_watch() {
    scenario::an_error_reaches_a_write_watch(&mut CalloopHarness::new());
}

#[test]
fn an_attachment_dropped_while_unwinding_detaches_without_aborting() {
    let harness = CalloopHarness::new();
    scenario::an_attachment_dropped_while_unwinding_detaches_without_aborting(|source| {
        harness.glue.attach(source)
    });
    assert_eq!(harness.glue.sources(), 0);
}

#[test]
fn a_panicking_handler_reaches_the_dispatch_caller_and_the_loop_carries_on() {
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let conn = Connection::from_stream(a).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    conn.set_message_handler(move |_, m| {
        count.fetch_add(1, Ordering::SeqCst);
        if m == b"boom" {
            panic!("message handler");
        }
    });
    let _a = glue.attach(Arc::new(conn.clone())).unwrap();
    let peer = Connection::from_stream(b).unwrap();
    let _p = glue.attach(Arc::new(peer.clone())).unwrap();
    peer.send(b"boom".to_vec()).unwrap();
    peer.send(b"after".to_vec()).unwrap();
    let end = Instant::now() + LIMIT;
    let mut panicked = false;
    while seen.load(Ordering::SeqCst) < 2 && Instant::now() < end {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            event_loop.dispatch(Duration::from_millis(5), &mut ())
        }));
        panicked |= outcome.is_err();
    }
    assert!(panicked, "the panic reached the caller of dispatch");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the message after it was delivered"
    );
}

#[test]
fn timeouts_fire_periodically_restart_and_never_fire_when_never_due() {
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let _a = glue.attach(Arc::new(peer.clone())).unwrap();
    let never = Timeout::new(Duration::MAX, || panic!("never due"));
    peer.timeouts().add(&never).unwrap();
    let fired = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fired);
    let tick = Timeout::new(Duration::from_secs(3600), move || {
        count.fetch_add(1, Ordering::SeqCst);
    });
    peer.timeouts().add(&tick).unwrap();
    event_loop.dispatch(Duration::ZERO, &mut ()).unwrap();
    // The producer shortens it: the glue re-reads the interval and re-arms calloop's timer
    // earlier (C9).
    peer.timeouts()
        .restart(&tick, Duration::from_millis(2))
        .unwrap();
    assert!(dispatch_until(&mut event_loop, &mut (), |_| fired
        .load(Ordering::SeqCst)
        >= 3));
    assert_eq!(glue.timeouts(), 2);
    peer.timeouts().remove(&tick).unwrap();
    peer.timeouts().remove(&never).unwrap();
    assert_eq!(glue.timeouts(), 0);
}

#[test]
fn a_hang_up_reaches_a_write_only_watch() {
    // calloop reports no hang-up bit: the glue must find it.
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let _a = glue.attach(Arc::new(peer.clone())).unwrap();
    let seen: Arc<Mutex<WatchFlags>> = Arc::default();
    let slot = Arc::clone(&seen);
    peer.watches().toggle(&peer.read_watch(), false).unwrap();
    let watch = Watch::new(peer.fd().unwrap(), WatchFlags::READABLE, move |c| {
        *slot.lock().unwrap() |= c;
    });
    peer.watches().add(&watch).unwrap();
    drop(theirs);
    assert!(dispatch_until(&mut event_loop, &mut (), |_| seen
        .lock()
        .unwrap()
        .contains(WatchFlags::HANGUP)));
    assert!(!seen.lock().unwrap().contains(WatchFlags::WRITABLE));
    peer.watches().remove(&watch).unwrap();
}

#[test]
fn dropping_the_loop_detaches_everything() {
    let event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let attacher = glue.attacher();
    let (a, mut b) = UnixStream::pair().unwrap();
    let conn = Connection::from_stream(a).unwrap();
    let source: Arc<dyn Source> = Arc::new(conn.clone());
    let attachment = glue.attach(Arc::clone(&source)).unwrap();
    b.write_all(&[0, 0, 0, 0]).unwrap();
    drop(event_loop);
    assert!(!conn.read_watch().is_removed() && !conn.stats().messages_received > 0);
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
    let err = attacher.attach(Arc::clone(&source)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotConnected);
    drop(attachment);
    assert_eq!(
        Arc::strong_count(&source),
        1,
        "no reference cycle through the glue"
    );
    // The connection runs on another loop now.
    let main_loop = loopglue::MainLoop::new().unwrap();
    main_loop.attach(Arc::new(conn.clone())).unwrap();
    let deadline = Instant::now() + LIMIT;
    while conn.stats().messages_received == 0 && Instant::now() < deadline {
        main_loop.run_once(Some(Duration::from_millis(5))).unwrap();
    }
    assert_eq!(conn.stats().messages_received, 1);
    let _ = b.as_raw_fd();
}

#[test]
fn data_remaining_is_dispatched_without_fd_activity() {
    let mut harness = CalloopHarness::new();
    // Work queued before the attach: the glue reads the status once (C16).
    let (peer, mut theirs) = scenario::peer_with_work_queued(b"early ");
    harness.attach(Arc::new(peer.clone())).unwrap();
    let mut got = Vec::new();
    assert!(scenario::receive(
        &mut harness,
        &mut theirs,
        &mut got,
        b"early "
    ));
    // Work queued on the loop's thread outside any handler: dispatched before calloop sleeps.
    peer.post(b"late");
    assert!(scenario::receive(
        &mut harness,
        &mut theirs,
        &mut got,
        b"early late"
    ));
}
