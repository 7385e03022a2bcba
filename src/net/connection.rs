//! `Connection`: length-prefixed frames over a non-blocking Unix stream, driven by a read
//! watch, a write watch and an optional idle timeout — the shape of libdbus's socket
//! transport.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::config::ConnectionConfig;
use super::defer_panic;
use super::error::{DisconnectReason, SendError};
use super::frame::{FrameDecoder, TooLarge, HEADER_LEN};
use super::outbox::{Outbox, Written};
use super::stats::{bump, ConnectionStats, Counters};
use crate::{
    DispatchStatus, DispatchStatusFn, SetFunctionsError, Source, SourceData, StatusNotifier,
    Timeout, TimeoutFunctions, TimeoutList, WakeupFn, WakeupHook, Watch, WatchFlags,
    WatchFunctions, WatchList,
};

/// Bytes read per `read` call; a handle reads up to the read budget in such chunks.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of the connections this thread reads for; see `on_readable`.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

type MessageHandler = Box<dyn FnMut(&Connection, Vec<u8>) + Send>;
type DisconnectHandler = Box<dyn FnOnce(DisconnectReason) + Send>;

/// A framed, message-oriented connection over a Unix stream socket that runs inside any event
/// loop — libdbus's `DBusConnection` reduced to its transport.
///
/// Each message is one *frame* on the wire: its length as a `u32` in little-endian order,
/// then that many bytes. The connection never blocks and never runs a loop. It keeps, like
/// libdbus's socket transport, two [`Watch`]es on its one socket — a write watch and a read
/// watch, created disabled and added to its [`WatchList`] in that order — and, if
/// configured, an idle [`Timeout`]. Glue attaches it through [`Source`] and calls
/// [`Watch::handle`] when the socket is ready and [`dispatch`](Self::dispatch) while the
/// [`dispatch_status`](Self::dispatch_status) says data remains (C16):
///
/// * the **read watch** is enabled from the start, and disabled while the inbound queue is
///   full ([`ConnectionConfig::max_inbound_frames`] / [`max_inbound_bytes`](ConnectionConfig::max_inbound_bytes))
///   until dispatching drains it below the limit;
/// * the **write watch** is enabled only while output waits for the socket: [`send`](Self::send)
///   first writes directly when nothing is queued, and the watch goes off once the queue
///   drains;
/// * each report is handled within a budget ([`ConnectionConfig::read_budget`],
///   [`write_budget`](ConnectionConfig::write_budget)), so the connection relies on
///   level-triggered glue to report a socket that is still ready (C17);
/// * on end of file, a socket error, a bad frame, the idle timeout or [`close`](Self::close),
///   the watches and the timeout are removed from their lists *before* the socket is closed
///   (C15), and [`dispatch`](Self::dispatch) delivers exactly one [`DisconnectReason`], after
///   every message received before it.
///
/// `Connection` is a cheap handle: clones share one connection, and every method may be
/// called from any thread and from inside any callback. No lock is held while the message
/// handler, the disconnect handler or glue code runs (C11). The connection closes when its
/// last handle is dropped.
///
/// # Examples
///
/// Two connections over a socket pair, driven by hand: the "loop" reports the receiver's
/// socket readable, then dispatches.
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use std::sync::{Arc, Mutex};
/// use loopglue::net::Connection;
/// use loopglue::{DispatchStatus, WatchFlags};
///
/// let (left, right) = UnixStream::pair()?;
/// let client = Connection::from_stream(left)?;
/// let service = Connection::from_stream(right)?;
///
/// let received = Arc::new(Mutex::new(Vec::new()));
/// let sink = Arc::clone(&received);
/// service.set_message_handler(move |_conn, message| sink.lock().unwrap().push(message));
///
/// client.send(&b"ping"[..])?;
/// assert!(!client.has_messages_to_send()); // the socket had room: written at once
///
/// service.read_watch().handle(WatchFlags::READABLE); // glue: the fd is readable
/// assert_eq!(service.dispatch_status(), DispatchStatus::DataRemains);
/// assert_eq!(service.dispatch(), DispatchStatus::Complete);
/// assert_eq!(*received.lock().unwrap(), [b"ping".to_vec()]);
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "DBusConnection")]
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

/// Everything a connection owns. The watch and timeout handlers hold it by `Weak`: the lists
/// own the watches, this owns the lists.
struct Shared {
    // Declared first so that they drop first: dropping a list runs the glue's `remove` for each
    // object while the socket, owned by `state` below, is still open (C15).
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    read_watch: Watch,
    write_watch: Watch,
    idle: Option<Timeout>,
    wakeup: WakeupHook,
    status: StatusNotifier,
    config: ConnectionConfig,
    counters: Counters,
    fd: RawFd,
    /// The thread that last ran one of this connection's handlers or `dispatch` (a
    /// [`thread_key`]), 0 before any did.
    loop_thread: AtomicU64,
    handlers: Mutex<Handlers>,
    state: Mutex<State>,
}

struct State {
    /// The socket, `None` once the connection is closed.
    stream: Option<UnixStream>,
    /// A closed connection's socket whose watches the glue has not let go of yet: it is
    /// closed as soon as both are removed (C15).
    closing: Option<UnixStream>,
    decoder: FrameDecoder,
    outbox: Outbox,
    inbound: VecDeque<Vec<u8>>,
    inbound_bytes: usize,
    end: End,
    /// A `dispatch` call is delivering.
    dispatching: bool,
}

/// Where the one disconnect event stands.
enum End {
    Open,
    Pending(DisconnectReason),
    Delivered,
}

#[derive(Default)]
struct Handlers {
    message: Option<MessageHandler>,
    /// Bumped by every `set_message_handler`, so a running dispatch notices a replacement.
    generation: u64,
    disconnect: Option<DisconnectHandler>,
    /// The disconnect event was delivered: handlers are dropped, new ones refused.
    finished: bool,
}

/// What the connection wants from its watches and its glue right now.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Wanted {
    read: bool,
    write: bool,
    status: DispatchStatus,
}

/// Where the calling thread stands with respect to the loop that drives the connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The thread that last ran one of the connection's handlers.
    Loop,
    /// Some other thread: the loop may be asleep in `poll` and must be woken.
    Other,
    /// No handler has run yet; the connection may not be attached at all.
    Unknown,
}

enum Event {
    Message(Vec<u8>),
    Disconnect(DisconnectReason),
}

/// A small number naming the calling thread, never 0.
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static KEY: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    KEY.with(|key| *key)
}

impl Connection {
    /// Connects to the Unix socket at `path` with the default configuration.
    ///
    /// # Errors
    ///
    /// The error of `connect(2)` or of switching the socket to non-blocking mode.
    #[doc(alias = "dbus_connection_open")]
    pub fn connect(path: impl AsRef<Path>) -> io::Result<Connection> {
        Connection::connect_with(path, ConnectionConfig::default())
    }

    /// Connects to the Unix socket at `path` with `config`.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    #[doc(alias = "dbus_connection_open")]
    pub fn connect_with(
        path: impl AsRef<Path>,
        config: ConnectionConfig,
    ) -> io::Result<Connection> {
        Connection::from_stream_with(UnixStream::connect(path)?, config)
    }

    /// Wraps a connected stream — one end of [`UnixStream::pair`], an accepted client — with
    /// the default configuration. The stream is switched to non-blocking mode.
    ///
    /// # Errors
    ///
    /// The error of switching the stream to non-blocking mode.
    pub fn from_stream(stream: UnixStream) -> io::Result<Connection> {
        Connection::from_stream_with(stream, ConnectionConfig::default())
    }

    /// Wraps a connected stream with `config`; see [`from_stream`](Self::from_stream).
    ///
    /// The new connection's write watch and read watch are in its watch list (in that order,
    /// the read watch enabled) and its idle timeout, if configured, in its timeout list,
    /// enabled: glue that attaches it is told about them all at once (C7).
    ///
    /// # Errors
    ///
    /// As [`from_stream`](Self::from_stream).
    pub fn from_stream_with(
        stream: UnixStream,
        config: ConnectionConfig,
    ) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let on_read = weak.clone();
            let read_watch = Watch::new_disabled(fd, WatchFlags::READABLE, move |condition| {
                if let Some(shared) = on_read.upgrade() {
                    shared.on_readable(condition);
                }
            });
            let on_write = weak.clone();
            let write_watch = Watch::new_disabled(fd, WatchFlags::WRITABLE, move |condition| {
                if let Some(shared) = on_write.upgrade() {
                    shared.on_writable(condition);
                }
            });
            let idle = config.idle_timeout.map(|interval| {
                let on_idle = weak.clone();
                Timeout::new_disabled(interval, move || {
                    if let Some(shared) = on_idle.upgrade() {
                        shared.mark_loop_thread();
                        shared.shut(DisconnectReason::IdleTimeout);
                    }
                })
            });
            Shared {
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                read_watch,
                write_watch,
                idle,
                wakeup: WakeupHook::new(),
                status: StatusNotifier::new(),
                counters: Counters::default(),
                fd,
                loop_thread: AtomicU64::new(0),
                handlers: Mutex::new(Handlers::default()),
                state: Mutex::new(State {
                    stream: Some(stream),
                    closing: None,
                    decoder: FrameDecoder::new(config.max_frame_size),
                    outbox: Outbox::default(),
                    inbound: VecDeque::new(),
                    inbound_bytes: 0,
                    end: End::Open,
                    dispatching: false,
                }),
                config,
            }
        });
        // No glue is installed yet, so none of this can be refused; the lists replay it all
        // to the first set installed.
        shared.watches.add(&shared.write_watch)?;
        shared.watches.add(&shared.read_watch)?;
        shared.watches.toggle(&shared.read_watch, true)?;
        if let Some(idle) = &shared.idle {
            shared.timeouts.add(idle)?;
            shared.timeouts.toggle(idle, true)?;
        }
        Ok(Connection { shared })
    }

    /// Queues `payload` as one frame for the peer, from any thread.
    ///
    /// On the loop's thread (the one that last ran this connection's handlers or
    /// [`dispatch`](Self::dispatch)), and before any loop ran them, a payload that finds the
    /// queue empty is written at once, as far as the socket takes it. Whatever cannot be
    /// written waits in the outbound queue, and the write watch is enabled until the queue
    /// drains. From any other thread the frame is only queued, with the write watch enabled,
    /// so that the loop's thread does the writing. Whenever output is left queued by a
    /// thread that is not known to be the loop's, the loop is woken through the wakeup
    /// function (C16).
    ///
    /// # Errors
    ///
    /// [`SendError::FrameTooLarge`] for a payload over [`ConnectionConfig::max_frame_size`];
    /// [`SendError::QueueFull`] when the outbound queue would exceed
    /// [`ConnectionConfig::max_outbound_bytes`] — a slow or stuck peer; frames queued earlier
    /// are kept and sent in order; [`SendError::Disconnected`] once the connection is closed,
    /// or if the socket failed while writing this payload (the disconnect event tells why).
    /// In every case the payload is not queued.
    ///
    /// # Panics
    ///
    /// Only if glue code called from here (`toggled`, the wakeup or status function) panics.
    #[doc(alias = "dbus_connection_send")]
    pub fn send(&self, payload: impl Into<Vec<u8>>) -> Result<(), SendError> {
        self.shared.send(payload.into())
    }

    /// Delivers up to [`ConnectionConfig::dispatch_batch`] received messages, oldest first, to
    /// the message handler, then — once every message received before it is delivered — the
    /// disconnect event to the disconnect handler; returns what remains (C16).
    ///
    /// Glue calls this while [`dispatch_status`](Self::dispatch_status) is
    /// [`DataRemains`](DispatchStatus::DataRemains). Messages are delivered with no lock held;
    /// a message handler may call any method of this connection — send, close, even
    /// `dispatch`, which then returns at once and leaves the delivering to the running call.
    /// A `dispatch` on another thread while one runs also returns at once. Messages that find
    /// no handler set are discarded and counted ([`ConnectionStats::messages_unhandled`]), as
    /// libdbus drops a message nobody handles; use [`pop_message`](Self::pop_message) to pull
    /// messages instead. Taking the inbound queue below its limit re-enables the read watch.
    ///
    /// # Panics
    ///
    /// If the message or disconnect handler panics; the message it was given is consumed, the
    /// rest stay queued, and the connection stays usable.
    #[doc(alias = "dbus_connection_dispatch")]
    pub fn dispatch(&self) -> DispatchStatus {
        let shared = &*self.shared;
        shared.mark_loop_thread();
        {
            let mut state = shared.state.lock();
            if state.dispatching {
                drop(state);
                return shared.wanted().status;
            }
            state.dispatching = true;
        }
        let mut turn = DispatchTurn::begin(shared);
        for _ in 0..shared.config.dispatch_batch {
            turn.refresh();
            let event = shared.state.lock().next_event();
            match event {
                None => break,
                Some(Event::Message(message)) => match turn.handler.as_mut() {
                    Some(handler) => handler(self, message),
                    None => bump(&shared.counters.messages_unhandled, 1),
                },
                Some(Event::Disconnect(reason)) => {
                    turn.finish(reason);
                    break;
                }
            }
        }
        drop(turn);
        shared.settle();
        shared.wanted().status
    }

    /// Whether received messages (or the disconnect event) wait for
    /// [`dispatch`](Self::dispatch).
    #[doc(alias = "dbus_connection_get_dispatch_status")]
    pub fn dispatch_status(&self) -> DispatchStatus {
        self.shared.wanted().status
    }

    /// Takes the oldest received message out of the inbound queue without calling the
    /// message handler — pull-style use instead of [`dispatch`](Self::dispatch). The
    /// disconnect event is left for `dispatch`.
    #[doc(alias = "dbus_connection_pop_message")]
    pub fn pop_message(&self) -> Option<Vec<u8>> {
        let message = self.shared.state.lock().pop_inbound();
        if message.is_some() {
            self.shared.settle();
        }
        message
    }

    /// Sets the function that [`dispatch`](Self::dispatch) hands each received message to,
    /// replacing (and dropping) the previous one; a dispatch in progress uses the new one
    /// from its next message.
    ///
    /// The handler gets this connection as its first argument, so it needs no clone of it: a
    /// handler that owns a clone keeps the connection alive until the disconnect event is
    /// delivered (after which both handlers are dropped). Set after the disconnect event was
    /// delivered, the handler is dropped at once.
    #[doc(alias = "dbus_connection_add_filter")]
    pub fn set_message_handler(&self, handler: impl FnMut(&Connection, Vec<u8>) + Send + 'static) {
        let handler: MessageHandler = Box::new(handler);
        let dropped = {
            let mut handlers = self.shared.handlers.lock();
            if handlers.finished {
                Some(handler)
            } else {
                handlers.generation += 1;
                handlers.message.replace(handler)
            }
        };
        drop(dropped);
    }

    /// Sets the function that receives the one disconnect event, replacing (and dropping) the
    /// previous one. It runs from [`dispatch`](Self::dispatch), after every message received
    /// before the disconnect, with no lock held. Set after the event was delivered, it is
    /// dropped at once and never called.
    pub fn set_disconnect_handler(&self, handler: impl FnOnce(DisconnectReason) + Send + 'static) {
        let handler: DisconnectHandler = Box::new(handler);
        let dropped = {
            let mut handlers = self.shared.handlers.lock();
            if handlers.finished {
                Some(handler)
            } else {
                handlers.disconnect.replace(handler)
            }
        };
        drop(dropped);
    }

    /// Closes the connection from this side: queued output is discarded (counted in
    /// [`ConnectionStats::messages_unsent`]), the watches and the idle timeout are removed from
    /// their lists, then the socket is closed (C15), and [`DisconnectReason::Closed`] is
    /// queued for [`dispatch`](Self::dispatch), behind the messages already received. Does
    /// nothing if the connection is already closed. From a thread not known to be the loop's,
    /// the loop is woken so that it dispatches the event.
    ///
    /// # Panics
    ///
    /// If glue code called from here panics — once the connection is fully closed.
    #[doc(alias = "dbus_connection_close")]
    pub fn close(&self) {
        self.shared.shut(DisconnectReason::Closed);
    }

    /// Whether the connection is open: false from the moment it is closed, by either side,
    /// even while its disconnect event waits for dispatch.
    #[doc(alias = "dbus_connection_get_is_connected")]
    pub fn is_connected(&self) -> bool {
        self.shared.state.lock().stream.is_some()
    }

    /// Whether output waits in the outbound queue for the socket.
    #[doc(alias = "dbus_connection_has_messages_to_send")]
    pub fn has_messages_to_send(&self) -> bool {
        !self.shared.state.lock().outbox.is_empty()
    }

    /// Bytes waiting in the outbound queue, length prefixes included.
    #[doc(alias = "dbus_connection_get_outgoing_size")]
    pub fn queued_outbound_bytes(&self) -> usize {
        self.shared.state.lock().outbox.queued_bytes()
    }

    /// Received messages waiting for [`dispatch`](Self::dispatch) or
    /// [`pop_message`](Self::pop_message).
    pub fn queued_inbound_messages(&self) -> usize {
        self.shared.state.lock().inbound.len()
    }

    /// The read watch (READABLE). Glue receives it through
    /// [`set_watch_functions`](Source::set_watch_functions); this handle is for tests and
    /// hand-driven use, such as calling [`Watch::handle`] directly.
    pub fn read_watch(&self) -> Watch {
        self.shared.read_watch.clone()
    }

    /// The write watch (WRITABLE), enabled only while output is queued; see
    /// [`read_watch`](Self::read_watch).
    pub fn write_watch(&self) -> Watch {
        self.shared.write_watch.clone()
    }

    /// The idle timeout, if [`ConnectionConfig::idle_timeout`] set one; see
    /// [`read_watch`](Self::read_watch).
    pub fn idle_timeout(&self) -> Option<Timeout> {
        self.shared.idle.clone()
    }

    /// A snapshot of the connection's counters.
    pub fn stats(&self) -> ConnectionStats {
        self.shared.counters.snapshot()
    }
}

impl Source for Connection {
    fn data(&self) -> &SourceData {
        &self.shared.data
    }

    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        let outcome = self.shared.watches.set_functions(functions);
        self.shared.reap();
        outcome
    }

    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        self.shared.timeouts.set_functions(functions)
    }

    fn set_wakeup_main_function(&self, wakeup: Option<WakeupFn>) {
        self.shared.wakeup.set_function(wakeup);
    }

    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        self.shared.status.set_function(function);
    }

    fn dispatch_status(&self) -> DispatchStatus {
        Connection::dispatch_status(self)
    }

    fn dispatch(&self) -> DispatchStatus {
        Connection::dispatch(self)
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Connection")
            .field("fd", &self.shared.fd)
            .field("connected", &state.stream.is_some())
            .field("inbound_messages", &state.inbound.len())
            .field("outbound_bytes", &state.outbox.queued_bytes())
            .finish_non_exhaustive()
    }
}

impl State {
    fn inbound_full(&self, config: &ConnectionConfig) -> bool {
        self.inbound.len() >= config.max_inbound_frames
            || self.inbound_bytes >= config.max_inbound_bytes
    }

    fn pop_inbound(&mut self) -> Option<Vec<u8>> {
        let message = self.inbound.pop_front()?;
        self.inbound_bytes -= message.len();
        Some(message)
    }

    /// The next thing `dispatch` delivers: a message, else the disconnect event once.
    fn next_event(&mut self) -> Option<Event> {
        if let Some(message) = self.pop_inbound() {
            return Some(Event::Message(message));
        }
        match std::mem::replace(&mut self.end, End::Delivered) {
            End::Pending(reason) => Some(Event::Disconnect(reason)),
            other => {
                self.end = other;
                None
            }
        }
    }

    /// Why the stream ended here: inside a frame, or between two.
    fn end_of_stream(&self) -> DisconnectReason {
        match self.decoder.unfinished() {
            Some((have, need)) => DisconnectReason::TruncatedFrame { have, need },
            None => DisconnectReason::PeerClosed,
        }
    }
}

/// Why a socket that poll reported with ERROR or HANGUP, but that neither read nor write
/// could make progress on, is unusable.
fn condition_reason(state: &State, stream: &UnixStream, condition: WatchFlags) -> DisconnectReason {
    match stream.take_error() {
        Ok(Some(error)) | Err(error) => DisconnectReason::Io(error),
        Ok(None) if condition.contains(WatchFlags::HANGUP) => state.end_of_stream(),
        Ok(None) => DisconnectReason::Io(io::Error::other("poll reported an error on the socket")),
    }
}

impl Shared {
    fn mark_loop_thread(&self) {
        self.loop_thread.store(thread_key(), Ordering::Relaxed);
    }

    fn caller(&self) -> Caller {
        match self.loop_thread.load(Ordering::Relaxed) {
            0 => Caller::Unknown,
            key if key == thread_key() => Caller::Loop,
            _ => Caller::Other,
        }
    }

    fn wanted(&self) -> Wanted {
        let state = self.state.lock();
        let open = state.stream.is_some();
        let remains = !state.inbound.is_empty() || matches!(state.end, End::Pending(_));
        Wanted {
            read: open && !state.inbound_full(&self.config),
            write: open && !state.outbox.is_empty(),
            status: if remains {
                DispatchStatus::DataRemains
            } else {
                DispatchStatus::Complete
            },
        }
    }

    /// Brings the watches and the glue's idea of the dispatch status in line with the state.
    ///
    /// The glue is called with no lock held, so another thread may change the state between
    /// the look and the call; each caller looks again after calling and repeats until what it
    /// told matches. Every change to the state is followed by a `settle` on the changing
    /// thread, so the last word the glue hears is the current state.
    fn settle(&self) {
        loop {
            let wanted = self.wanted();
            if wanted.read != self.read_watch.is_enabled() {
                if !wanted.read {
                    bump(&self.counters.read_watch_disabled, 1);
                }
                // Only fails for a watch of another list, which these are not.
                let _ = self.watches.toggle(&self.read_watch, wanted.read);
            }
            if wanted.write != self.write_watch.is_enabled() {
                if wanted.write {
                    bump(&self.counters.write_watch_enabled, 1);
                }
                let _ = self.watches.toggle(&self.write_watch, wanted.write);
            }
            self.status.update(wanted.status);
            if self.wanted() == wanted {
                break;
            }
        }
        self.reap();
    }

    /// Restarts the idle period: a disable and an enable, which glue answers by re-arming the
    /// timer from now (C9).
    fn restart_idle(&self) {
        if let Some(idle) = &self.idle {
            let _ = self.timeouts.toggle(idle, false);
            let _ = self.timeouts.toggle(idle, true);
        }
    }

    /// Closes the socket of a shut connection once the glue has let go of both watches.
    ///
    /// `shut` removes the watches before it gets here, so normally they are gone already; but
    /// a `close` from inside one of the watch list's own glue callbacks only queues the
    /// removal, which the list delivers when that callback returns.
    fn reap(&self) {
        if self.read_watch.fd().is_none() && self.write_watch.fd().is_none() {
            let closing = self.state.lock().closing.take();
            drop(closing);
        }
    }

    /// Closes the connection for `reason` unless it is closed already; returns whether this
    /// call closed it.
    fn shut(&self, reason: DisconnectReason) -> bool {
        let stream = {
            let mut state = self.state.lock();
            let Some(stream) = state.stream.take() else {
                return false;
            };
            state.end = End::Pending(reason);
            bump(&self.counters.messages_unsent, state.outbox.discard());
            state.decoder.reset();
            stream
        };
        // The glue lets go of the fd before it is closed (C15). Each step runs even if glue
        // code panics in an earlier one; the first panic is resumed at the end.
        let mut panic = None;
        defer_panic(&mut panic, || {
            let _ = self.watches.remove(&self.read_watch);
        });
        defer_panic(&mut panic, || {
            let _ = self.watches.remove(&self.write_watch);
        });
        if let Some(idle) = &self.idle {
            defer_panic(&mut panic, || {
                let _ = self.timeouts.remove(idle);
            });
        }
        self.state.lock().closing = Some(stream);
        defer_panic(&mut panic, || self.settle());
        self.reap();
        if self.caller() != Caller::Loop {
            bump(&self.counters.wakeups, 1);
            defer_panic(&mut panic, || self.wakeup.wake());
        }
        if let Some(payload) = panic {
            panic::resume_unwind(payload);
        }
        true
    }

    fn send(&self, payload: Vec<u8>) -> Result<(), SendError> {
        let len = payload.len();
        let max = self.config.max_frame_size;
        if len > max {
            return Err(SendError::FrameTooLarge { len, max });
        }
        let caller = self.caller();
        let (written, failure, queued_after) = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            let Some(stream) = state.stream.as_ref() else {
                return Err(SendError::Disconnected);
            };
            let queued = state.outbox.queued_bytes();
            let cap = self.config.max_outbound_bytes;
            if queued > 0 && queued.saturating_add(HEADER_LEN + len) > cap {
                return Err(SendError::QueueFull { queued, cap });
            }
            state.outbox.push(payload);
            let mut written = Written::default();
            let mut failure = None;
            if queued == 0 && caller != Caller::Other {
                let budget = self.config.write_budget.max(HEADER_LEN + len);
                match state.outbox.write_to(stream, budget) {
                    Ok(progress) => written = progress,
                    Err(error) => failure = Some(error),
                }
            }
            (written, failure, state.outbox.queued_bytes())
        };
        bump(&self.counters.bytes_sent, written.bytes);
        bump(&self.counters.messages_sent, written.frames);
        bump(&self.counters.direct_writes, written.frames);
        if let Some(error) = failure {
            self.shut(DisconnectReason::Io(error));
            return Err(SendError::Disconnected);
        }
        if written.bytes > 0 {
            self.restart_idle();
        }
        self.settle();
        if queued_after > 0 && caller != Caller::Loop {
            bump(&self.counters.wakeups, 1);
            self.wakeup.wake();
        }
        Ok(())
    }

    /// The read watch's handler: reads up to the read budget, queues the frames completed,
    /// and shuts the connection on end of file, an error or a bad frame.
    fn on_readable(&self, condition: WatchFlags) {
        self.mark_loop_thread();
        let mut ended = None;
        let mut moved = 0;
        let mut frames = 0;
        {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            let Some(stream) = state.stream.as_ref() else {
                return;
            };
            // A buffer per thread, zeroed once: zeroing a fresh 16 KiB on every read cost more
            // than the read itself for small messages.
            let mut owned;
            let mut borrowed =
                READ_BUFFER.with(|b| b.try_borrow_mut().ok().map(|mut b| std::mem::take(&mut *b)));
            let chunk: &mut [u8] = match borrowed.as_mut() {
                Some(buffer) if buffer.len() == READ_CHUNK => buffer,
                _ => {
                    owned = vec![0u8; READ_CHUNK];
                    &mut owned
                }
            };
            while moved < self.config.read_budget && !state.inbound_full(&self.config) {
                let want = (self.config.read_budget - moved).min(READ_CHUNK);
                match (&*stream).read(&mut chunk[..want]) {
                    Ok(0) => {
                        ended = Some(state.end_of_stream());
                        break;
                    }
                    Ok(n) => {
                        moved += n;
                        let inbound = &mut state.inbound;
                        let mut bytes = 0;
                        let fed = state.decoder.feed(&chunk[..n], &mut |message| {
                            bytes += message.len();
                            frames += 1;
                            inbound.push_back(message);
                        });
                        state.inbound_bytes += bytes;
                        if let Err(TooLarge { len, max }) = fed {
                            ended = Some(DisconnectReason::FrameTooLarge { len, max });
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if moved == 0 && condition.intersects(WatchFlags::ALWAYS) {
                            ended = Some(condition_reason(state, stream, condition));
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        ended = Some(DisconnectReason::Io(e));
                        break;
                    }
                }
            }
            if let Some(buffer) = borrowed {
                READ_BUFFER.with(|b| {
                    if let Ok(mut slot) = b.try_borrow_mut() {
                        *slot = buffer;
                    }
                });
            }
        }
        bump(&self.counters.bytes_received, moved);
        bump(&self.counters.messages_received, frames);
        if moved > 0 {
            self.restart_idle();
        }
        match ended {
            Some(reason) => {
                self.shut(reason);
            }
            None => self.settle(),
        }
    }

    /// The write watch's handler: writes queued output up to the write budget.
    fn on_writable(&self, condition: WatchFlags) {
        self.mark_loop_thread();
        let mut ended = None;
        let written = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            let Some(stream) = state.stream.as_ref() else {
                return;
            };
            match state.outbox.write_to(stream, self.config.write_budget) {
                Ok(written) => {
                    let stuck = written.bytes == 0 && !state.outbox.is_empty();
                    if stuck && condition.intersects(WatchFlags::ALWAYS) {
                        ended = Some(condition_reason(state, stream, condition));
                    }
                    written
                }
                Err(error) => {
                    ended = Some(DisconnectReason::Io(error));
                    Written::default()
                }
            }
        };
        bump(&self.counters.bytes_sent, written.bytes);
        bump(&self.counters.messages_sent, written.frames);
        if written.bytes > 0 {
            self.restart_idle();
        }
        match ended {
            Some(reason) => {
                self.shut(reason);
            }
            None => self.settle(),
        }
    }
}

/// One `dispatch` call's hold on the message handler. Dropping it — also while a handler
/// panic unwinds — puts the handler back (unless it was replaced meanwhile) and lets the next
/// `dispatch` in.
struct DispatchTurn<'a> {
    shared: &'a Shared,
    handler: Option<MessageHandler>,
    generation: u64,
}

impl<'a> DispatchTurn<'a> {
    fn begin(shared: &'a Shared) -> DispatchTurn<'a> {
        let mut handlers = shared.handlers.lock();
        DispatchTurn {
            shared,
            handler: handlers.message.take(),
            generation: handlers.generation,
        }
    }

    /// Switches to a handler set since the last message.
    fn refresh(&mut self) {
        let stale = {
            let mut handlers = self.shared.handlers.lock();
            if handlers.generation == self.generation {
                return;
            }
            self.generation = handlers.generation;
            std::mem::replace(&mut self.handler, handlers.message.take())
        };
        drop(stale);
    }

    /// Delivers the disconnect event and drops both handlers, which may own clones of the
    /// connection.
    fn finish(&mut self, reason: DisconnectReason) {
        let (disconnect, message) = {
            let mut handlers = self.shared.handlers.lock();
            handlers.finished = true;
            (handlers.disconnect.take(), handlers.message.take())
        };
        let own = self.handler.take();
        if let Some(disconnect) = disconnect {
            disconnect(reason);
        }
        drop(message);
        drop(own);
    }
}

impl Drop for DispatchTurn<'_> {
    fn drop(&mut self) {
        let stale = {
            let mut handlers = self.shared.handlers.lock();
            match self.handler.take() {
                Some(handler) if !handlers.finished && handlers.generation == self.generation => {
                    handlers.message = Some(handler);
                    None
                }
                other => other,
            }
        };
        drop(stale);
        self.shared.state.lock().dispatching = false;
    }
}
