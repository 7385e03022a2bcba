//! What the adapters' tests share: the attachments a harness keeps, and the scenarios that
//! every adapter (or the two of each kind) runs the same way. What only one adapter does stays
//! in its own test file.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::net::{Connection, ConnectionConfig, Server, ServerConfig};
use loopglue::testing::{Harness, SocketPeer};
use loopglue::{Source, Watch, WatchFlags};

use super::Bare;

/// How long a test waits for something that must happen; a passing test never waits this long.
pub const LIMIT: Duration = Duration::from_secs(20);

/// An adapter's attachment: `detach` hands it back when refused.
pub trait Detachable: Sized {
    fn detach(self) -> Result<(), (Self, io::Error)>;
}

/// The attachments a harness holds, by source identity.
pub struct Attached<A>(HashMap<u64, A>);

impl<A: Detachable> Attached<A> {
    pub fn new() -> Attached<A> {
        Attached(HashMap::new())
    }

    pub fn insert(&mut self, source: &Arc<dyn Source>, attachment: A) {
        self.0.insert(source.data().id(), attachment);
    }

    /// Detaches `source` if it is held here (as `Harness::detach`).
    pub fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        match self.0.remove(&source.data().id()) {
            Some(attachment) => attachment.detach().map_err(|(_, error)| error),
            None => Ok(()),
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &A> {
        self.0.values()
    }

    /// Drops every attachment: detaches every source.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl<A: Detachable> Default for Attached<A> {
    fn default() -> Self {
        Attached::new()
    }
}

pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// libdbus reads at most 2 KiB per `dbus_watch_handle`: a 16 MiB message arrives whole only if
/// the glue delivers level-triggered — on an edge-triggered loop, by re-checking the fd after
/// each round (C17).
pub fn a_16_mib_message_read_2_kib_per_handle_arrives_intact(app: &mut impl Harness) {
    let (a, b) = UnixStream::pair().unwrap();
    let config = ConnectionConfig::new()
        .read_budget(2048)
        .max_frame_size(17 * 1024 * 1024);
    let sender = Connection::from_stream_with(a, config.clone()).unwrap();
    let receiver = Connection::from_stream_with(b, config).unwrap();
    let got: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let slot = Arc::clone(&got);
    receiver.set_message_handler(move |_, message| *slot.lock().unwrap() = Some(message));
    app.attach(Arc::new(sender.clone())).unwrap();
    app.attach(Arc::new(receiver.clone())).unwrap();

    let message = pattern(16 * 1024 * 1024);
    sender.send(message.clone()).unwrap();
    let arrived = app.run_until(Duration::from_secs(60), &mut || {
        got.lock().unwrap().is_some()
    });
    assert!(
        arrived,
        "stalled after {} bytes",
        receiver.stats().bytes_received
    );
    assert!(*got.lock().unwrap() == Some(message.clone()), "altered");
    assert!(receiver.stats().bytes_received >= message.len() as u64);
}

fn numbered(pair: u64, seq: u64) -> Vec<u8> {
    [pair.to_le_bytes(), seq.to_le_bytes()].concat()
}

/// `pairs` client/service connection pairs echoing through `app`: every client sends
/// `messages` numbered messages one at a time and checks each reply. Returns the pairs, still
/// attached, for the adapter's own checks.
pub fn echo_checks_every_reply(
    app: &mut impl Harness,
    pairs: u64,
    messages: u64,
) -> Vec<(Connection, Connection)> {
    let replies = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicBool::new(false));
    let mut connections = Vec::new();
    for pair in 0..pairs {
        let (a, b) = UnixStream::pair().unwrap();
        let (client, service) = (
            Connection::from_stream(a).unwrap(),
            Connection::from_stream(b).unwrap(),
        );
        service.set_message_handler(|conn, message| conn.send(message).unwrap());
        let (replies, wrong, next) = (
            Arc::clone(&replies),
            Arc::clone(&wrong),
            Arc::new(AtomicU64::new(0)),
        );
        client.set_message_handler(move |conn, message| {
            let seq = next.fetch_add(1, Ordering::SeqCst);
            if message != numbered(pair, seq) {
                wrong.store(true, Ordering::SeqCst);
            }
            replies.fetch_add(1, Ordering::SeqCst);
            if seq + 1 < messages {
                conn.send(numbered(pair, seq + 1)).unwrap();
            }
        });
        app.attach(Arc::new(client.clone())).unwrap();
        app.attach(Arc::new(service.clone())).unwrap();
        client.send(numbered(pair, 0)).unwrap();
        connections.push((client, service));
    }
    let all = app.run_until(LIMIT, &mut || {
        replies.load(Ordering::SeqCst) == pairs * messages
    });
    assert!(all, "{} replies", replies.load(Ordering::SeqCst));
    assert!(
        !wrong.load(Ordering::SeqCst),
        "a reply did not match its request"
    );
    connections
}

/// The write end of a pipe whose read end is closed reports an error (POLLERR): the glue
/// delivers it, although no watch asks for it (C1).
pub fn an_error_reaches_a_write_watch(app: &mut impl Harness) {
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    let heard: Arc<Mutex<Vec<WatchFlags>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let watch = Watch::new(write_end.as_raw_fd(), WatchFlags::WRITABLE, move |c| {
        sink.lock().unwrap().push(c);
    });
    let bare = Arc::new(Bare::new());
    bare.watches.add(&watch).unwrap();
    app.attach(bare.clone()).unwrap();
    assert!(app.run_until(LIMIT, &mut || !heard.lock().unwrap().is_empty()));
    drop(read_end);
    assert!(app.run_until(LIMIT, &mut || heard
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.contains(WatchFlags::ERROR))));
    bare.watches.remove(&watch).unwrap();
    drop(write_end);
}

/// A second watch on a producer's fd shares its one registration (C18), and a hang-up reaches
/// it. `registrations` counts what the adapter registered.
pub fn a_second_watch_on_an_fd_shares_its_registration_and_hears_the_hang_up<H: Harness>(
    app: &mut H,
    registrations: impl Fn(&H) -> usize,
) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    let peer = SocketPeer::new(ours, 64).unwrap();
    let heard: Arc<Mutex<Vec<WatchFlags>>> = Arc::default();
    let sink = Arc::clone(&heard);
    let extra = Watch::new(fd, WatchFlags::READABLE, move |c| {
        sink.lock().unwrap().push(c)
    });
    peer.watches().add(&extra).unwrap();
    app.attach(Arc::new(peer.clone())).unwrap();
    assert_eq!(registrations(app), 1);
    drop(theirs);
    assert!(app.run_until(LIMIT, &mut || heard
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.contains(WatchFlags::HANGUP))));
    peer.watches().remove(&extra).unwrap();
}

/// A peer with `work` queued before it is attached (C16: the glue reads the status once), and
/// the other end of its socket, non-blocking.
pub fn peer_with_work_queued(work: &[u8]) -> (SocketPeer, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let peer = SocketPeer::new(ours, 64).unwrap();
    peer.post(work); // DataRemains, no glue yet
    (peer, theirs)
}

/// Runs `app`, reading what arrives on `theirs` into `got`, until `got` is `expected`.
pub fn receive(
    app: &mut impl Harness,
    theirs: &mut UnixStream,
    got: &mut Vec<u8>,
    expected: &[u8],
) -> bool {
    app.run_until(LIMIT, &mut || {
        let mut buf = [0u8; 64];
        while let Ok(n) = io::Read::read(theirs, &mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got == expected
    })
}

/// What a panic test starts from: a peer attached to `app` that reads one byte per handle,
/// an extra watch on its fd whose handler panics the first time it runs (`armed` until then),
/// and ten bytes waiting. Keep `theirs`, the other end; remove `bomb` at the end.
pub struct Bomb {
    pub peer: SocketPeer,
    pub bomb: Watch,
    pub armed: Arc<AtomicBool>,
    pub theirs: UnixStream,
}

pub fn a_peer_whose_next_handler_panics(app: &mut impl Harness) -> Bomb {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let fd = ours.as_raw_fd();
    let peer = SocketPeer::new(ours, 1).unwrap(); // one byte per handle
    let armed = Arc::new(AtomicBool::new(true));
    let trip = Arc::clone(&armed);
    let bomb = Watch::new(fd, WatchFlags::READABLE, move |_| {
        if trip.swap(false, Ordering::SeqCst) {
            panic!("handler panic (expected by the test)");
        }
    });
    peer.watches().add(&bomb).unwrap();
    app.attach(Arc::new(peer.clone())).unwrap();
    theirs.write_all(b"0123456789").unwrap();
    Bomb {
        peer,
        bomb,
        armed,
        theirs,
    }
}

/// Attaching works from another thread and from inside a handler, and detaching from inside
/// a handler: the glue holds no lock while handlers run. `inside` attaches from a handler,
/// `afar` from another thread.
pub fn attach_and_detach_from_inside_handlers_and_from_another_thread<H, A>(
    app: &mut H,
    inside: impl Fn(Arc<dyn Source>) -> A + Send + Sync + 'static,
    afar: impl FnOnce(Arc<dyn Source>) -> A + Send + 'static,
) where
    H: Harness,
    A: Detachable + Send + 'static,
{
    let slot = Arc::new(Mutex::new(None::<A>));
    let (a, mut a_other) = UnixStream::pair().unwrap();
    let (b, mut b_other) = UnixStream::pair().unwrap();
    let first = SocketPeer::new(a, 64).unwrap();
    let second = SocketPeer::new(b, 64).unwrap();
    app.attach(Arc::new(first.clone())).unwrap();

    // From another thread, while nobody runs the loop.
    let (c, mut c_other) = UnixStream::pair().unwrap();
    let third = SocketPeer::new(c, 64).unwrap();
    let from_afar = {
        let third = third.clone();
        std::thread::spawn(move || afar(Arc::new(third)))
            .join()
            .unwrap()
    };

    // A watch on the first socket attaches the second source, then detaches it, from inside
    // its handler.
    let (held, source, calls) = (
        Arc::clone(&slot),
        second.clone(),
        Arc::new(AtomicUsize::new(0)),
    );
    let counted = Arc::clone(&calls);
    let trigger = Watch::new(first.fd().unwrap(), WatchFlags::READABLE, move |_| {
        let mut held = held.lock().unwrap();
        match counted.fetch_add(1, Ordering::SeqCst) {
            0 => *held = Some(inside(Arc::new(source.clone()))),
            _ => {
                if let Some(attachment) = held.take() {
                    if let Err((_, error)) = attachment.detach() {
                        panic!("detach from inside a handler: {error}");
                    }
                }
            }
        }
    });
    first.watches().add(&trigger).unwrap();
    a_other.write_all(b"1").unwrap();
    assert!(app.run_until(LIMIT, &mut || slot.lock().unwrap().is_some()));
    b_other.write_all(b"to second").unwrap();
    assert!(app.run_until(LIMIT, &mut || second.received_len() == 9));
    a_other.write_all(b"2").unwrap();
    assert!(
        app.run_until(LIMIT, &mut || calls.load(Ordering::SeqCst) >= 2
            && slot.lock().unwrap().is_none())
    );
    b_other.write_all(b"late").unwrap();
    assert!(!app.run_until(Duration::from_millis(50), &mut || second.received_len() > 9));

    c_other.write_all(b"three").unwrap();
    assert!(app.run_until(LIMIT, &mut || third.received_len() == 5));
    drop(from_afar);
    first.watches().remove(&trigger).unwrap();
}

/// A server on a socket in a fresh directory of the temporary one, named for the test.
fn bind(name: &str) -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("loopglue-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir(&dir);
    let path = dir.join("server.sock");
    let _ = std::fs::remove_file(&path);
    let server =
        Server::from_listener(UnixListener::bind(&path).unwrap(), ServerConfig::default()).unwrap();
    (server, path)
}

/// A server attaches each accepted connection from inside its new-connection function, and
/// each connection detaches itself from inside its disconnect handler. `attach` attaches
/// from the server's handler; `sources` counts the sources the glue runs.
pub fn a_server_attaches_connections_from_inside_its_handler_and_they_detach_on_disconnect<H, A>(
    app: &mut H,
    name: &str,
    attach: impl Fn(Arc<dyn Source>) -> A + Send + Sync + 'static,
    sources: impl Fn() -> usize,
) where
    H: Harness,
    A: Send + 'static,
{
    let (server, path) = bind(name);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    server.set_new_connection_function(move |conn| {
        conn.set_message_handler(|c, m| c.send(m).unwrap());
        let attachment: Arc<Mutex<Option<A>>> = Arc::default();
        let slot = Arc::clone(&attachment);
        // Detached from inside its own handler when the peer goes.
        conn.set_disconnect_handler(move |_| drop(slot.lock().unwrap().take()));
        *attachment.lock().unwrap() = Some(attach(Arc::new(conn.clone())));
        count.fetch_add(1, Ordering::SeqCst);
    });
    app.attach(Arc::new(server.clone())).unwrap();

    let replies = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = Connection::connect(&path).unwrap();
        let seen = Arc::clone(&replies);
        client.set_message_handler(move |_, m| {
            assert_eq!(m, b"hello");
            seen.fetch_add(1, Ordering::SeqCst);
        });
        app.attach(Arc::new(client.clone())).unwrap();
        client.send(b"hello".to_vec()).unwrap();
        clients.push(client);
    }
    assert!(app.run_until(LIMIT, &mut || replies.load(Ordering::SeqCst) == 3));
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(sources(), 1 + 3 + 3);
    for client in clients {
        app.detach(&(Arc::new(client.clone()) as Arc<dyn Source>))
            .unwrap();
        client.close();
    }
    assert!(app.run_until(LIMIT, &mut || sources() == 1));
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(path.parent().unwrap());
}

/// A source whose fd is closed is refused with `EBADF` and leaves nothing installed; once its
/// number names the socket again it attaches. The peer's socket is put on `high`, a number far
/// above those other tests' threads are handed (they take the lowest free one), so no
/// parallel test is handed it while it is closed. `counts` is (registered fds, sources).
pub fn a_source_whose_fd_is_closed_is_refused_and_leaves_nothing<A>(
    attach: impl Fn(Arc<dyn Source>) -> io::Result<A>,
    counts: impl Fn() -> (usize, usize),
    high: RawFd,
) {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let high = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(high)).unwrap();
    // SAFETY: F_DUPFD_CLOEXEC just created `high`; nothing else owns it.
    let peer = SocketPeer::new(unsafe { UnixStream::from_raw_fd(high) }, 64).unwrap();
    nix::unistd::close(high).unwrap();
    let err = attach(Arc::new(peer.clone())).err().expect("refused");
    assert_eq!(err.raw_os_error(), Some(nix::libc::EBADF), "{err}");
    assert!(!peer.watches().has_functions() && !peer.timeouts().has_functions());
    assert_eq!(counts(), (0, 0));
    // Nothing of it is left: once its number names the socket again, it attaches.
    // SAFETY: `high` is closed and is this test's number; the peer owns it again after this.
    let _ = unsafe { nix::unistd::dup2_raw(&ours, high) }
        .unwrap()
        .into_raw_fd();
    let again = attach(Arc::new(peer.clone())).unwrap();
    assert_eq!(counts().0, 1);
    drop(again);
}

/// An attachment dropped while its thread unwinds detaches the source even when a detach step
/// panics: that second panic is swallowed — raised there, it would abort the process.
pub fn an_attachment_dropped_while_unwinding_detaches_without_aborting<A>(
    attach: impl Fn(Arc<dyn Source>) -> io::Result<A>,
) {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let bare = Arc::new(Bare::new());
    let watch = Watch::new(ours.as_raw_fd(), WatchFlags::READABLE, |_| {});
    bare.watches.add(&watch).unwrap();
    let attachment = attach(bare.clone()).unwrap();
    assert!(bare.watches.has_functions());
    bare.explode.store(true, Ordering::SeqCst);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _held = attachment;
        panic!("the application's own panic");
    }));
    let payload = outcome.unwrap_err();
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"the application's own panic")
    );
    assert!(
        !bare.watches.has_functions() && !bare.timeouts.has_functions(),
        "detached while unwinding"
    );
    bare.watches.remove(&watch).unwrap();
}
