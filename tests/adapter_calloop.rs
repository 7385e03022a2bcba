//! The calloop adapter: every conformance scenario, echo through `net::Connection`, a 16 MiB
//! message read 2 KiB per handle, bad input (closed fd, an fd calloop already polls, a second
//! attach), attach from another thread and from inside handlers, detach from inside a
//! handler, panics, timeouts, and nothing left behind.
#![cfg(feature = "calloop")]

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use calloop::generic::Generic;
use calloop::{EventLoop, Interest, Mode, PostAction};
use loopglue::adapters::calloop::{CalloopAttachment, CalloopGlue};
use loopglue::net::{Connection, ConnectionConfig, Server, ServerConfig};
use loopglue::testing::{run_all, Harness, SocketPeer};
use loopglue::{Source, Timeout, Watch, WatchFlags};

/// How long a test waits for something that must happen (never reached when it passes).
const LIMIT: Duration = Duration::from_secs(20);

/// The glue in a loop of its own, dispatched by the calling thread.
struct CalloopHarness {
    event_loop: EventLoop<'static, ()>,
    glue: CalloopGlue<'static, ()>,
    attached: Vec<CalloopAttachment>,
    start: Instant,
}

impl CalloopHarness {
    fn new() -> CalloopHarness {
        let event_loop = EventLoop::try_new().expect("event loop");
        let glue = CalloopGlue::insert(&event_loop.handle()).expect("glue");
        CalloopHarness {
            event_loop,
            glue,
            attached: Vec::new(),
            start: Instant::now(),
        }
    }
}

impl Harness for CalloopHarness {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        self.attached.push(self.glue.attach(source)?);
        Ok(())
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        let id = source.data().id();
        if let Some(i) = self
            .attached
            .iter()
            .position(|a| a.source().data().id() == id)
        {
            self.attached.swap_remove(i).detach().map_err(|(_, e)| e)?;
        }
        Ok(())
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        let end = Instant::now() + limit;
        loop {
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            let wait = (end - now).min(Duration::from_millis(5));
            self.event_loop.dispatch(wait, &mut ()).expect("dispatch");
        }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
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
    run_all(CalloopHarness::new).unwrap_or_else(|failures| {
        let report: Vec<String> = failures.iter().map(ToString::to_string).collect();
        panic!("{}", report.join("\n"))
    });
}

#[test]
fn echo_through_connections() {
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let (pairs, count) = (10, 200);
    let mut keep = Vec::new();
    for pair in 0..pairs {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, service) = (
            Connection::from_stream(a).unwrap(),
            Connection::from_stream(b).unwrap(),
        );
        service.set_message_handler(|c, m| c.send(m).unwrap());
        let (next, done) = (Arc::new(AtomicUsize::new(0)), Arc::clone(&finished));
        client.set_message_handler(move |c, m| {
            let seq = next.fetch_add(1, Ordering::SeqCst);
            assert_eq!(
                m,
                format!("{pair}:{seq}").into_bytes(),
                "reply out of order"
            );
            if seq + 1 < count {
                c.send(format!("{pair}:{}", seq + 1)).unwrap();
            } else {
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
        keep.push(glue.attach(Arc::new(client.clone())).unwrap());
        keep.push(glue.attach(Arc::new(service.clone())).unwrap());
        client.send(format!("{pair}:0")).unwrap();
    }
    assert!(dispatch_until(&mut event_loop, &mut (), |_| {
        finished.load(Ordering::SeqCst) == pairs
    }));
    drop(keep);
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
}

#[test]
fn a_16_mib_message_read_2_kib_per_handle_arrives_intact() {
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let sender = Connection::from_stream(a).unwrap();
    let receiver =
        Connection::from_stream_with(b, ConnectionConfig::default().read_budget(2048)).unwrap();
    let got: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let slot = Arc::clone(&got);
    receiver.set_message_handler(move |_, m| *slot.lock().unwrap() = Some(m));
    let _s = glue.attach(Arc::new(sender.clone())).unwrap();
    let _r = glue.attach(Arc::new(receiver.clone())).unwrap();
    let message: Vec<u8> = (0..16usize << 20).map(|i| (i % 251) as u8).collect();
    sender.send(message.clone()).unwrap();
    assert!(dispatch_until(&mut event_loop, &mut (), |_| got
        .lock()
        .unwrap()
        .is_some()));
    assert!(
        got.lock().unwrap().as_deref() == Some(&message[..]),
        "altered"
    );
}

#[test]
fn attaching_a_source_whose_fd_is_closed_fails_cleanly() {
    let event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (ours, _theirs) = UnixStream::pair().unwrap();
    // The peer's socket on a number far above those other threads get (they take the lowest
    // free one), so no parallel test is handed it while it is closed.
    let high = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(800)).unwrap();
    // SAFETY: F_DUPFD_CLOEXEC just created `high`; nothing else owns it.
    let peer = SocketPeer::new(unsafe { UnixStream::from_raw_fd(high) }, 64).unwrap();
    nix::unistd::close(high).unwrap();
    let err = glue.attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EBADF), "{err}");
    assert!(!peer.watches().has_functions() && !peer.timeouts().has_functions());
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
    // SAFETY: `high` is closed and is this test's number; the peer owns it again after this.
    let _ = unsafe { nix::unistd::dup2_raw(&ours, high) }
        .unwrap()
        .into_raw_fd();
    let again = glue.attach(Arc::new(peer.clone())).unwrap();
    assert_eq!(glue.registered_fds(), 1);
    drop(again);
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
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let dir = std::env::temp_dir().join(format!("loopglue-calloop-{}", std::process::id()));
    let _ = std::fs::create_dir(&dir);
    let path = dir.join("server.sock");
    let _ = std::fs::remove_file(&path);
    let server =
        Server::from_listener(UnixListener::bind(&path).unwrap(), ServerConfig::default()).unwrap();
    let attacher = glue.attacher();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    server.set_new_connection_function(move |conn| {
        conn.set_message_handler(|c, m| c.send(m).unwrap());
        let attachment: Arc<Mutex<Option<CalloopAttachment>>> = Arc::default();
        let slot = Arc::clone(&attachment);
        // Detached from inside its own handler when the peer goes.
        conn.set_disconnect_handler(move |_| drop(slot.lock().unwrap().take()));
        *attachment.lock().unwrap() = Some(attacher.attach(Arc::new(conn.clone())).unwrap());
        count.fetch_add(1, Ordering::SeqCst);
    });
    let _server = glue.attach(Arc::new(server.clone())).unwrap();

    let replies = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = Connection::connect(&path).unwrap();
        let seen = Arc::clone(&replies);
        client.set_message_handler(move |_, m| {
            assert_eq!(m, b"hello");
            seen.fetch_add(1, Ordering::SeqCst);
        });
        clients.push((
            glue.attach(Arc::new(client.clone())).unwrap(),
            client.clone(),
        ));
        client.send(b"hello".to_vec()).unwrap();
    }
    assert!(dispatch_until(&mut event_loop, &mut (), |_| replies
        .load(Ordering::SeqCst)
        == 3));
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(glue.sources(), 1 + 3 + 3);
    for (attachment, client) in clients {
        drop(attachment);
        client.close();
    }
    assert!(dispatch_until(&mut event_loop, &mut (), |_| glue.sources() == 1));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
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
    let mut event_loop: EventLoop<'_, ()> = EventLoop::try_new().unwrap();
    let glue = CalloopGlue::insert(&event_loop.handle()).unwrap();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    // Work queued before the attach: the glue reads the status once (C16).
    peer.post(b"early ");
    let _a = glue.attach(Arc::new(peer.clone())).unwrap();
    let mut got = Vec::new();
    let mut drain = |got: &mut Vec<u8>| {
        let mut buf = [0u8; 64];
        while let Ok(n) = io::Read::read(&mut theirs, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    assert!(dispatch_until(&mut event_loop, &mut (), |_| {
        drain(&mut got);
        got == b"early "
    }));
    // Work queued on the loop's thread outside any handler: dispatched before calloop sleeps.
    peer.post(b"late");
    assert!(dispatch_until(&mut event_loop, &mut (), |_| {
        drain(&mut got);
        got == b"early late"
    }));
}
