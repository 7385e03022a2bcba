//! The GLib adapter: every conformance scenario, echo through `net::Connection`, a 16 MiB
//! message read 2 KiB per handle, bad input, a context iterated by another thread, attach and
//! detach from inside handlers, timeouts, and nothing left behind after detach.
#![cfg(feature = "glib")]

mod support;

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use glib::{ControlFlow, MainContext};
use loopglue::adapters::glib::{GlibAttachment, GlibGlue};
use loopglue::net::Connection;
use loopglue::testing::{Harness, SocketPeer};
use loopglue::{Source, Timeout};

use support::adapter::{self as scenario, Attached, Detachable, LIMIT};

/// The glue on a context of its own, iterated by the calling thread.
struct GlibHarness {
    context: MainContext,
    glue: GlibGlue,
    attached: Attached<GlibAttachment>,
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
            attached: Attached::new(),
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
        let attachment = self.glue.attach(Arc::clone(&source))?;
        self.attached.insert(&source, attachment);
        Ok(())
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        self.attached.detach(source)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        // The tick bounds each blocking iteration.
        support::run_until(limit, done, |_| {
            self.context.iteration(true);
        })
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Detachable for GlibAttachment {
    fn detach(self) -> Result<(), (Self, io::Error)> {
        GlibAttachment::detach(self)
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
    support::assert_passes_every_scenario(GlibHarness::new);
}

#[test]
fn echo_through_connections_on_a_context_of_its_own() {
    let mut harness = GlibHarness::new();
    let _connections = scenario::echo_checks_every_reply(&mut harness, 10, 200);
    harness.attached.clear();
    assert_eq!(harness.glue.registered_fds(), 0);
    assert_eq!(harness.glue.sources(), 0);
}

#[test]
fn a_16_mib_message_read_2_kib_per_handle_arrives_intact() {
    scenario::a_16_mib_message_read_2_kib_per_handle_arrives_intact(&mut GlibHarness::new());
}

#[test]
fn attaching_a_source_whose_fd_is_closed_fails_cleanly() {
    let glue = GlibGlue::new(&MainContext::new());
    scenario::a_source_whose_fd_is_closed_is_refused_and_leaves_nothing(
        |source| glue.attach(source),
        || (glue.registered_fds(), glue.sources()),
        700,
    );
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
    let mut harness = GlibHarness::new();
    let (attacher, glue) = (harness.glue.clone(), harness.glue.clone());
    scenario::a_server_attaches_connections_from_inside_its_handler_and_they_detach_on_disconnect(
        &mut harness,
        "glib",
        move |source| attacher.attach(source).unwrap(),
        move || glue.sources(),
    );
}

#[test]
fn attach_and_detach_from_inside_handlers_and_from_another_thread() {
    let mut harness = GlibHarness::new();
    let (inside, afar) = (harness.glue.clone(), harness.glue.clone());
    scenario::attach_and_detach_from_inside_handlers_and_from_another_thread(
        &mut harness,
        move |source| inside.attach(source).unwrap(),
        move |source| afar.attach(source).unwrap(),
    );
}

#[test]
fn c18_two_watches_on_one_fd_are_one_registration_and_a_hang_up_reaches_both() {
    scenario::a_second_watch_on_an_fd_shares_its_registration_and_hears_the_hang_up(
        &mut GlibHarness::new(),
        |harness| harness.glue.registered_fds(),
    );
}

/// The write end of a pipe whose read end is closed reports an error (C1).
#[test]
fn c1_an_error_reaches_the_watch() {
    scenario::an_error_reaches_a_write_watch(&mut GlibHarness::new());
}

#[test]
fn an_attachment_dropped_while_unwinding_detaches_without_aborting() {
    let glue = GlibGlue::new(&MainContext::new());
    scenario::an_attachment_dropped_while_unwinding_detaches_without_aborting(|source| {
        glue.attach(source)
    });
    assert_eq!(glue.sources(), 0);
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
    let mut harness = GlibHarness::new();
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
    // Work queued on the context's thread outside any handler: an idle source dispatches it.
    peer.post(b"late");
    assert!(scenario::receive(
        &mut harness,
        &mut theirs,
        &mut got,
        b"early late"
    ));
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
