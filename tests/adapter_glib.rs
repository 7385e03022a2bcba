//! The GLib adapter: every conformance scenario, echo through `net::Connection`, a 16 MiB
//! message read 2 KiB per handle, bad input, a context iterated by another thread, attach and
//! detach from inside handlers, timeouts, and nothing left behind after detach.
#![cfg(feature = "glib")]

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use glib::{ControlFlow, MainContext};
use loopglue::adapters::glib::{GlibAttachment, GlibGlue};
use loopglue::net::{Connection, ConnectionConfig, Server, ServerConfig};
use loopglue::testing::{run_all, Harness, SocketPeer};
use loopglue::{Source, Timeout};

/// How long a test waits for something that must happen (never reached when it passes).
const LIMIT: Duration = Duration::from_secs(20);

/// The glue on a context of its own, iterated by the calling thread.
struct GlibHarness {
    context: MainContext,
    glue: GlibGlue,
    attached: Vec<GlibAttachment>,
    tick: glib::Source,
    start: Instant,
}

impl GlibHarness {
    fn new() -> GlibHarness {
        let context = MainContext::new();
        // A tick bounds every blocking iteration, so `done` is checked every few ms.
        let tick =
            glib::timeout_source_new(Duration::from_millis(5), None, glib::Priority::LOW, || {
                ControlFlow::Continue
            });
        tick.attach(Some(&context));
        GlibHarness {
            glue: GlibGlue::new(&context),
            context,
            attached: Vec::new(),
            tick,
            start: Instant::now(),
        }
    }
}

impl Drop for GlibHarness {
    fn drop(&mut self) {
        self.tick.destroy();
    }
}

impl Harness for GlibHarness {
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
            if Instant::now() >= end {
                return false;
            }
            self.context.iteration(true);
        }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

fn iterate_until(context: &MainContext, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + LIMIT;
    let tick =
        glib::timeout_source_new(Duration::from_millis(5), None, glib::Priority::LOW, || {
            ControlFlow::Continue
        });
    tick.attach(Some(context));
    let ok = loop {
        if done() {
            break true;
        }
        if Instant::now() >= end {
            break false;
        }
        context.iteration(true);
    };
    tick.destroy();
    ok
}

#[test]
fn glib_passes_every_scenario() {
    run_all(GlibHarness::new).unwrap_or_else(|failures| {
        let report: Vec<String> = failures.iter().map(ToString::to_string).collect();
        panic!("{}", report.join("\n"))
    });
}

/// Client and service connections echoing `count` messages each over `pairs` socketpairs.
fn echo(glue: &GlibGlue, context: &MainContext, pairs: usize, count: usize) {
    let finished = Arc::new(AtomicUsize::new(0));
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
    assert!(iterate_until(context, || finished.load(Ordering::SeqCst) == pairs));
    drop(keep);
    assert_eq!(glue.registered_fds(), 0);
    assert_eq!(glue.sources(), 0);
}

#[test]
fn echo_through_connections_on_a_context_of_its_own() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    echo(&glue, &context, 10, 200);
}

#[test]
fn a_16_mib_message_read_2_kib_per_handle_arrives_intact() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
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
    assert!(iterate_until(&context, || got.lock().unwrap().is_some()));
    assert!(
        got.lock().unwrap().as_deref() == Some(&message[..]),
        "altered"
    );
    assert!(receiver.stats().bytes_received >= message.len() as u64);
}

#[test]
fn attaching_a_source_whose_fd_is_closed_fails_cleanly() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let (ours, _theirs) = UnixStream::pair().unwrap();
    // The peer's socket on a number far above those other threads get (they take the lowest
    // free one), so no parallel test is handed it while it is closed.
    let high = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(700)).unwrap();
    // SAFETY: F_DUPFD_CLOEXEC just created `high`; nothing else owns it.
    let peer = SocketPeer::new(unsafe { UnixStream::from_raw_fd(high) }, 64).unwrap();
    nix::unistd::close(high).unwrap();
    let err = glue.attach(Arc::new(peer.clone())).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EBADF), "{err}");
    assert!(!peer.watches().has_functions() && !peer.timeouts().has_functions());
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
    // Nothing of it is left: once its number names the socket again, it attaches.
    // SAFETY: `high` is closed and is this test's number; the peer owns it again after this.
    let _ = unsafe { nix::unistd::dup2_raw(&ours, high) }
        .unwrap()
        .into_raw_fd();
    let again = glue.attach(Arc::new(peer.clone())).unwrap();
    assert_eq!(glue.registered_fds(), 1);
    drop(again);
}

#[test]
fn a_second_attach_is_refused_and_changes_nothing() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let other = GlibGlue::new(&MainContext::new());
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let first = glue.attach(Arc::new(peer.clone())).unwrap();
    for g in [&glue, &other] {
        let err = g.attach(Arc::new(peer.clone())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    }
    assert_eq!((glue.registered_fds(), other.registered_fds()), (1, 0));
    drop(first);
    assert!(!peer.watches().has_functions());
}

#[test]
fn a_context_iterated_by_another_thread_runs_what_this_thread_attaches() {
    let (tx, rx) = mpsc::channel();
    let runner = std::thread::spawn(move || {
        let context = MainContext::new();
        let main_loop = glib::MainLoop::new(Some(&context), false);
        tx.send((context.clone(), main_loop.clone())).unwrap();
        context
            .with_thread_default(|| main_loop.run())
            .expect("context owned by this thread");
    });
    let (context, main_loop) = rx.recv().unwrap();
    let glue = GlibGlue::new(&context);
    let (a, b) = UnixStream::pair().unwrap();
    let (client, service) = (
        Connection::from_stream(a).unwrap(),
        Connection::from_stream(b).unwrap(),
    );
    service.set_message_handler(|c, m| c.send(m).unwrap());
    let (reply_tx, reply_rx) = mpsc::channel();
    let reply_tx = Mutex::new(reply_tx);
    client.set_message_handler(move |_, m| reply_tx.lock().unwrap().send(m).unwrap());
    let _c = glue.attach(Arc::new(client.clone())).unwrap();
    let _s = glue.attach(Arc::new(service.clone())).unwrap();
    // Sent from this thread: only queued, and the runner is woken to write it (C16).
    for i in 0..20u32 {
        client.send(i.to_le_bytes().to_vec()).unwrap();
        let reply = reply_rx
            .recv_timeout(LIMIT)
            .expect("echo from the context's thread");
        assert_eq!(reply, i.to_le_bytes());
    }
    drop((_c, _s));
    assert_eq!(glue.registered_fds(), 0);
    main_loop.quit();
    runner.join().unwrap();
}

#[test]
fn a_server_attaches_connections_from_inside_its_handler_and_detaches_them_on_disconnect() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let dir = std::env::temp_dir().join(format!("loopglue-glib-{}", std::process::id()));
    let _ = std::fs::create_dir(&dir);
    let path = dir.join("server.sock");
    let _ = std::fs::remove_file(&path);
    let server =
        Server::from_listener(UnixListener::bind(&path).unwrap(), ServerConfig::default()).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (g, count) = (glue.clone(), Arc::clone(&accepted));
    server.set_new_connection_function(move |conn| {
        conn.set_message_handler(|c, m| c.send(m).unwrap());
        let attachment: Arc<Mutex<Option<GlibAttachment>>> = Arc::default();
        let slot = Arc::clone(&attachment);
        // Detached from inside its own handler when the peer goes.
        conn.set_disconnect_handler(move |_| drop(slot.lock().unwrap().take()));
        *attachment.lock().unwrap() = Some(g.attach(Arc::new(conn.clone())).unwrap());
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
    assert!(iterate_until(&context, || replies.load(Ordering::SeqCst) == 3));
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(glue.sources(), 1 + 3 + 3);
    for (attachment, client) in clients {
        drop(attachment);
        client.close();
    }
    assert!(iterate_until(&context, || glue.sources() == 1));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn timeouts_never_due_are_never_armed_and_a_restart_rearms() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let _a = glue.attach(Arc::new(peer.clone())).unwrap();
    let never = Timeout::new(Duration::MAX, || panic!("never due"));
    let fifty_days = Timeout::new(Duration::from_secs(50 * 86_400), || panic!("not yet"));
    peer.timeouts().add(&never).unwrap();
    peer.timeouts().add(&fifty_days).unwrap();
    assert_eq!(
        glue.armed_timeouts(),
        0,
        "beyond GLib's u32 milliseconds is never"
    );

    let fired = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fired);
    let tick = Timeout::new(Duration::from_secs(3600), move || {
        count.fetch_add(1, Ordering::SeqCst);
    });
    peer.timeouts().add(&tick).unwrap();
    assert_eq!(glue.armed_timeouts(), 1);
    // The producer changes the interval: the glue re-reads it (C9).
    peer.timeouts()
        .restart(&tick, Duration::from_millis(1))
        .unwrap();
    assert!(iterate_until(&context, || fired.load(Ordering::SeqCst) >= 2));
    peer.timeouts().toggle(&tick, false).unwrap();
    assert_eq!(glue.armed_timeouts(), 0);
    peer.timeouts().remove(&tick).unwrap();
}

#[test]
fn a_closed_fd_reporting_nval_is_dropped_not_spun_on() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let _a = glue.attach(Arc::new(peer.clone())).unwrap();
    let (doomed, _other) = UnixStream::pair().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let watch = loopglue::Watch::new(
        doomed.as_raw_fd(),
        loopglue::WatchFlags::READABLE,
        move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        },
    );
    peer.watches().add(&watch).unwrap();
    assert_eq!(glue.registered_fds(), 2);
    drop(doomed); // the producer's bug: closed while its watch is registered (C15)
    assert!(iterate_until(&context, || glue.dropped_fds() == 1));
    assert_eq!(glue.registered_fds(), 1, "the closed fd's source is gone");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    peer.watches().remove(&watch).unwrap();
}

#[test]
fn detaching_leaves_nothing_behind() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let (a, b) = UnixStream::pair().unwrap();
    let conn = Connection::from_stream(a).unwrap();
    let source: Arc<dyn Source> = Arc::new(conn.clone());
    let attachment = glue.attach(Arc::clone(&source)).unwrap();
    assert!(glue.registered_fds() == 1 && glue.sources() == 1);
    (&b).write_all(&[0, 0, 0, 0]).unwrap(); // an empty frame: work to dispatch
    assert!(iterate_until(&context, || conn.stats().messages_received == 1));
    attachment.detach().map_err(|(_, e)| e).unwrap();
    assert_eq!((glue.registered_fds(), glue.sources()), (0, 0));
    // No reference cycle: the glue holds nothing of the source, and the glue goes with its
    // last handle.
    assert_eq!(Arc::strong_count(&source), 1);
    let weak = Arc::downgrade(&source);
    drop(source);
    assert!(weak.upgrade().is_none());
    // The connection still works on another loop.
    let main_loop = loopglue::MainLoop::new().unwrap();
    main_loop.attach(Arc::new(conn.clone())).unwrap();
}

#[test]
fn a_handler_that_iterates_the_context_is_reentered_safely() {
    // GLib may dispatch the glue's fd sources re-entrantly (they skip GLib's per-dispatch
    // blocking): a handler running a nested iteration sees its own fd handled inside it.
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let peer = SocketPeer::new(ours, 1).unwrap(); // reads one byte per handle
    let _a = glue.attach(Arc::new(peer.clone())).unwrap();
    let depth = Arc::new(AtomicUsize::new(0));
    let deepest = Arc::new(AtomicUsize::new(0));
    let (ctx, d, deep) = (context.clone(), Arc::clone(&depth), Arc::clone(&deepest));
    let nester = loopglue::Watch::new(
        peer.fd().unwrap(),
        loopglue::WatchFlags::READABLE,
        move |_| {
            let level = d.fetch_add(1, Ordering::SeqCst) + 1;
            deep.fetch_max(level, Ordering::SeqCst);
            if level < 4 {
                ctx.iteration(false);
            }
            d.fetch_sub(1, Ordering::SeqCst);
        },
    );
    peer.watches().add(&nester).unwrap();
    (&theirs).write_all(&[7u8; 10]).unwrap();
    assert!(iterate_until(&context, || peer.received_len() == 10));
    assert_eq!(peer.received(), [7u8; 10]);
    assert!(
        deepest.load(Ordering::SeqCst) >= 2,
        "no nested dispatch happened"
    );
    peer.watches().remove(&nester).unwrap();
}

#[test]
fn data_remaining_is_dispatched_without_fd_activity() {
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
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
    assert!(iterate_until(&context, || {
        drain(&mut got);
        got == b"early "
    }));
    // Work queued on the context's thread outside any handler: an idle source dispatches it.
    peer.post(b"late");
    assert!(iterate_until(&context, || {
        drain(&mut got);
        got == b"early late"
    }));
}

#[test]
fn a_panicking_handler_is_stopped_at_glibs_boundary_and_loses_nothing() {
    // A panic cannot unwind through GLib's C frames: the glue catches it there (the panic hook
    // reports it), and the message queued behind the panicking one is still delivered.
    let context = MainContext::new();
    let glue = GlibGlue::new(&context);
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
    assert!(iterate_until(&context, || seen.load(Ordering::SeqCst) == 2));
}
