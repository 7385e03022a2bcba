//! `Connection`: length-prefixed frames over a non-blocking Unix stream, driven by a read
//! watch, a write watch and an optional timeout — the shape of libdbus's socket transport.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use super::budget::{Budget, BudgetWaiter};
use super::config::{ConnectionConfig, HalfClose};
use super::defer_panic;
use super::error::{DisconnectReason, SendError};
use super::frame::{FrameDecoder, TooLarge, HEADER_LEN};
use super::outbox::{send_frame, Outbox};
use super::stats::ConnectionStats;
use crate::{
    DispatchStatus, DispatchStatusFn, SetFunctionsError, Source, SourceData, StatusNotifier,
    Timeout, TimeoutFunctions, TimeoutList, WakeupFn, WakeupHook, Watch, WatchFlags,
    WatchFunctions, WatchList,
};

/// Bytes read per `read` call; a handle reads up to the read budget in such chunks.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of the connections this thread reads for, zeroed once on first use;
    /// see `read_some`.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

type MessageHandler = Box<dyn FnMut(&Connection, Vec<u8>) + Send>;
type DisconnectHandler = Box<dyn FnOnce(DisconnectReason) + Send>;
type ReadClosedHandler = Box<dyn FnOnce(&Connection) + Send>;

/// A framed, message-oriented connection over a Unix stream socket that runs inside any event
/// loop — libdbus's `DBusConnection` reduced to its transport.
///
/// Each message is one *frame* on the wire: its length as a `u32` in little-endian order,
/// then that many bytes. The connection never blocks and never runs a loop. It keeps, like
/// libdbus's socket transport, two [`Watch`]es on its one socket — a write watch and a read
/// watch, created disabled and added to its [`WatchList`] in that order — and, if a timeout
/// is configured, one periodic [`Timeout`]. Glue attaches it through [`Source`] and calls
/// [`Watch::handle`] when the socket is ready and [`dispatch`](Self::dispatch) while the
/// [`dispatch_status`](Self::dispatch_status) says data remains (C16):
///
/// * the **read watch** is enabled from the start, and disabled while the inbound queue is
///   full ([`ConnectionConfig::max_inbound_frames`] / [`max_inbound_bytes`](ConnectionConfig::max_inbound_bytes))
///   until dispatching drains it below the limit, while the server's memory cap makes the
///   connection wait ([`ServerConfig::max_buffered_bytes`](super::ServerConfig::max_buffered_bytes)),
///   and for good once the peer has ended its side of the stream;
/// * messages read when nothing is queued before them are handed to the message handler
///   straight from the read watch's handler (no queue, no status change); the rest wait in
///   the inbound queue for [`dispatch`](Self::dispatch);
/// * the **write watch** is enabled only while output waits for the socket: [`send`](Self::send)
///   first writes directly when nothing is queued, and the watch goes off once the queue
///   drains;
/// * each report is handled within a budget ([`ConnectionConfig::read_budget`],
///   [`write_budget`](ConnectionConfig::write_budget)), so the connection relies on
///   level-triggered glue to report a socket that is still ready (C17);
/// * end of file from the peer means "no more messages", not "stop writing": by default
///   ([`HalfClose::Flush`]) every message read before it is delivered, then the read-closed
///   event ([`set_read_closed_handler`](Self::set_read_closed_handler)), the replies are
///   flushed, and only then does the connection close;
/// * on a socket error, a bad frame, a timeout, [`close`](Self::close) or the end of a
///   half-closed connection, the watches and the timeout are removed from their lists
///   *before* the socket is closed (C15), and exactly one [`DisconnectReason`] is delivered,
///   after every message received before it.
///
/// `Connection` is a cheap handle: clones share one connection, and every method may be
/// called from any thread and from inside any callback. No lock is held while the handlers or
/// glue code run (C11). The connection closes when its last handle is dropped.
///
/// # Examples
///
/// Two connections over a socket pair, driven by hand: the "loop" reports the receiver's
/// socket readable, and the message goes straight to the handler.
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
/// assert_eq!(*received.lock().unwrap(), [b"ping".to_vec()]);
/// assert_eq!(service.dispatch_status(), DispatchStatus::Complete);
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
    /// The periodic check of the idle and frame timeouts, if either is on.
    timer: Option<Timeout>,
    /// The timer's period.
    tick: Duration,
    wakeup: WakeupHook,
    status: StatusNotifier,
    config: ConnectionConfig,
    /// The server's memory cap this connection reads under, if a server accepted it.
    budget: Option<Arc<Budget>>,
    /// The longest payload accepted from the peer: the configured maximum, or the memory cap
    /// if that is lower.
    max_frame: usize,
    fd: RawFd,
    /// The thread that last ran one of this connection's handlers or `dispatch` (a
    /// [`thread_key`]), 0 before any did.
    loop_thread: AtomicU64,
    /// This connection, for the budget's queue of waiters.
    me: Weak<Shared>,
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
    /// Bytes reserved under the budget for the frame being received (its whole payload).
    partial_charged: usize,
    /// Waiting in the budget's queue for room for the next frame.
    budget_wait: bool,
    read_end: ReadEnd,
    end: End,
    /// A `dispatch` call, or a delivery from the read handler, is delivering.
    dispatching: bool,
    /// What the glue was last told: the watches' enabled states and the dispatch status.
    applied: Applied,
    /// A `settle` is telling the glue; others leave the telling to it.
    settling: bool,
    handlers: Handlers,
    stats: ConnectionStats,
    /// Bytes moved since the timer last looked.
    activity: bool,
    idle_ticks: u32,
    frame_ticks: u32,
    /// Whether a frame was in progress when the timer last looked, and how many frames had
    /// been received then.
    frame_seen: bool,
    frame_mark: u64,
}

/// How the peer ended its side of the stream.
#[derive(Clone, Copy, Debug)]
enum Eof {
    /// Between two frames.
    Clean,
    /// Inside a frame (wire bytes, prefix included).
    Truncated { have: usize, need: usize },
}

impl Eof {
    fn reason(self) -> DisconnectReason {
        match self {
            Eof::Clean => DisconnectReason::PeerClosed,
            Eof::Truncated { have, need } => DisconnectReason::TruncatedFrame { have, need },
        }
    }
}

/// Where the read side stands.
#[derive(Clone, Copy, Debug)]
enum ReadEnd {
    Open,
    /// End of file was read; the read-closed event waits behind the messages read before it.
    Pending(Eof),
    Delivered(Eof),
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
    /// Bumped by every `set_message_handler`, so a running delivery notices a replacement.
    generation: u64,
    read_closed: Option<ReadClosedHandler>,
    disconnect: Option<DisconnectHandler>,
    /// The disconnect event was delivered: handlers are dropped, new ones refused.
    finished: bool,
}

/// What the connection wants its glue to know: the watches' enabled states and the status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Applied {
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
    ReadClosed(Option<ReadClosedHandler>),
    /// The reason, its handler, and the message and read-closed handlers to drop.
    Disconnect(
        DisconnectReason,
        Option<DisconnectHandler>,
        Option<MessageHandler>,
        Option<ReadClosedHandler>,
    ),
}

/// Why a read pass stopped early.
enum ReadStop {
    Eof(Eof),
    Fail(DisconnectReason),
}

/// A small number naming the calling thread, never 0.
fn thread_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        // Const-initialised (no lazy-init check on each access), assigned on first use.
        static KEY: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    KEY.with(|key| match key.get() {
        0 => {
            let new = NEXT.fetch_add(1, Ordering::Relaxed);
            key.set(new);
            new
        }
        known => known,
    })
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
    /// the read watch enabled) and its timeout, if a timeout is configured, in its timeout
    /// list, enabled: glue that attaches it is told about them all at once (C7).
    ///
    /// # Errors
    ///
    /// As [`from_stream`](Self::from_stream).
    pub fn from_stream_with(
        stream: UnixStream,
        config: ConnectionConfig,
    ) -> io::Result<Connection> {
        Connection::with_budget(stream, config, None)
    }

    /// A connection reading under a server's memory cap.
    pub(crate) fn with_budget(
        stream: UnixStream,
        config: ConnectionConfig,
        budget: Option<Arc<Budget>>,
    ) -> io::Result<Connection> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let max_frame = budget.as_ref().map_or(config.max_frame_size, |b| {
            config.max_frame_size.min(b.cap())
        });
        let whole = budget.is_some();
        let idle = config.idle_timeout.flatten();
        let frame = config.frame_timeout.flatten();
        let shortest = match (idle, frame) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A quarter of the shorter timeout: a disconnect comes at most that late.
        let tick = shortest.map_or(Duration::MAX, |t| (t / 4).max(Duration::from_millis(1)));
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let on_read = weak.clone();
            let read_watch = Watch::new_disabled(fd, WatchFlags::READABLE, move |condition| {
                if let Some(shared) = on_read.upgrade() {
                    Connection { shared }.on_readable(condition);
                }
            });
            let on_write = weak.clone();
            let write_watch = Watch::new_disabled(fd, WatchFlags::WRITABLE, move |condition| {
                if let Some(shared) = on_write.upgrade() {
                    shared.on_writable(condition);
                }
            });
            let timer = shortest.map(|_| {
                let on_tick = weak.clone();
                Timeout::new_disabled(tick, move || {
                    if let Some(shared) = on_tick.upgrade() {
                        shared.on_tick();
                    }
                })
            });
            Shared {
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                read_watch,
                write_watch,
                timer,
                tick,
                wakeup: WakeupHook::new(),
                status: StatusNotifier::new(),
                budget,
                max_frame,
                fd,
                loop_thread: AtomicU64::new(0),
                me: weak.clone(),
                state: Mutex::new(State {
                    stream: Some(stream),
                    closing: None,
                    decoder: if whole {
                        FrameDecoder::new_whole(max_frame)
                    } else {
                        FrameDecoder::new(max_frame)
                    },
                    outbox: Outbox::default(),
                    inbound: VecDeque::new(),
                    inbound_bytes: 0,
                    partial_charged: 0,
                    budget_wait: false,
                    read_end: ReadEnd::Open,
                    end: End::Open,
                    dispatching: false,
                    applied: Applied {
                        read: true,
                        write: false,
                        status: DispatchStatus::Complete,
                    },
                    settling: false,
                    handlers: Handlers::default(),
                    stats: ConnectionStats::default(),
                    activity: false,
                    idle_ticks: 0,
                    frame_ticks: 0,
                    frame_seen: false,
                    frame_mark: 0,
                }),
                config,
            }
        });
        // No glue is installed yet, so none of this can be refused; the lists replay it all
        // to the first set installed.
        shared.watches.add(&shared.write_watch)?;
        shared.watches.add(&shared.read_watch)?;
        shared.watches.toggle(&shared.read_watch, true)?;
        if let Some(timer) = &shared.timer {
            shared.timeouts.add(timer)?;
            shared.timeouts.toggle(timer, true)?;
        }
        Ok(Connection { shared })
    }

    /// Queues `payload` as one frame for the peer, from any thread.
    ///
    /// On the loop's thread (the one that last ran this connection's handlers or
    /// [`dispatch`](Self::dispatch)), and before any loop ran them, a payload that finds the
    /// queue empty is written at once with one system call, as far as the socket takes it.
    /// Whatever cannot be written waits in the outbound queue, and the write watch is enabled
    /// until the queue drains. From any other thread the frame is only queued, with the write
    /// watch enabled, so that the loop's thread does the writing. Whenever output is left
    /// queued by a thread that is not known to be the loop's, the loop is woken through the
    /// wakeup function (C16).
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

    /// Delivers up to [`ConnectionConfig::dispatch_batch`] received events, oldest first:
    /// messages to the message handler, then — once every message read before it is
    /// delivered — the read-closed event, then the disconnect event; returns what remains
    /// (C16).
    ///
    /// Glue calls this while [`dispatch_status`](Self::dispatch_status) is
    /// [`DataRemains`](DispatchStatus::DataRemains). Events are delivered with no lock held;
    /// a handler may call any method of this connection — send, close, even `dispatch`,
    /// which then returns at once and leaves the delivering to the running call. A `dispatch`
    /// on another thread while one runs (or while the read handler delivers) also returns at
    /// once. Messages that find no handler set are discarded and counted
    /// ([`ConnectionStats::messages_unhandled`]), as libdbus drops a message nobody handles;
    /// use [`pop_message`](Self::pop_message) to pull messages instead. Taking the inbound
    /// queue below its limit re-enables the read watch. The dispatch status is reported to
    /// the glue once per call, not once per message.
    ///
    /// # Panics
    ///
    /// If a handler panics; the message it was given is consumed, the rest stay queued, and
    /// the connection stays usable.
    #[doc(alias = "dbus_connection_dispatch")]
    pub fn dispatch(&self) -> DispatchStatus {
        self.shared.mark_loop_thread();
        let state = self.shared.state.lock();
        if state.dispatching {
            return state.status();
        }
        self.deliver(state, 0, false)
    }

    /// Whether received messages (or the read-closed or disconnect event) wait for
    /// [`dispatch`](Self::dispatch).
    #[doc(alias = "dbus_connection_get_dispatch_status")]
    pub fn dispatch_status(&self) -> DispatchStatus {
        self.shared.state.lock().status()
    }

    /// Takes the oldest received message out of the inbound queue without calling the
    /// message handler — pull-style use instead of [`dispatch`](Self::dispatch). The
    /// read-closed and disconnect events are left for `dispatch`. Messages are queued for
    /// this only while no message handler is set (with a handler, a message read when
    /// nothing is queued goes straight to it). Pull-style users who reply after reading
    /// should choose [`HalfClose::Keep`], so that end of file does not close the connection
    /// before they have replied.
    #[doc(alias = "dbus_connection_pop_message")]
    pub fn pop_message(&self) -> Option<Vec<u8>> {
        let shared = &*self.shared;
        let (message, settle) = {
            let mut state = shared.state.lock();
            let message = state.pop_inbound();
            (message, state.needs_settle(&shared.config))
        };
        if let Some(message) = &message {
            shared.release(message.len());
        }
        if settle {
            shared.settle();
        }
        message
    }

    /// Sets the function that each received message is handed to, replacing (and dropping)
    /// the previous one; a delivery in progress uses the new one from its next message.
    ///
    /// The handler runs from [`dispatch`](Self::dispatch), or straight from the read watch's
    /// handler for messages read while nothing is queued before them. It gets this connection
    /// as its first argument, so it needs no clone of it: a handler that owns a clone keeps
    /// the connection alive until the disconnect event is delivered (after which all handlers
    /// are dropped). Set after the disconnect event was delivered, the handler is dropped at
    /// once.
    #[doc(alias = "dbus_connection_add_filter")]
    pub fn set_message_handler(&self, handler: impl FnMut(&Connection, Vec<u8>) + Send + 'static) {
        let handler: MessageHandler = Box::new(handler);
        let dropped = {
            let mut state = self.shared.state.lock();
            let handlers = &mut state.handlers;
            if handlers.finished {
                Some(handler)
            } else {
                handlers.generation += 1;
                handlers.message.replace(handler)
            }
        };
        drop(dropped);
    }

    /// Sets the function told, once, that the peer has ended its side of the stream (end of
    /// file: it will send no more messages), replacing (and dropping) the previous one.
    ///
    /// It runs after every message read before the end of file, with no lock held, and gets
    /// this connection: it may still [`send`](Self::send) — under the default
    /// [`HalfClose::Flush`] what it sends is flushed before the connection closes — or
    /// [`close`](Self::close). The disconnect event follows when the connection closes. Not
    /// called when the connection ends any other way (an error, a timeout, `close`).
    pub fn set_read_closed_handler(&self, handler: impl FnOnce(&Connection) + Send + 'static) {
        let handler: ReadClosedHandler = Box::new(handler);
        let dropped = {
            let mut state = self.shared.state.lock();
            if state.handlers.finished {
                Some(handler)
            } else {
                state.handlers.read_closed.replace(handler)
            }
        };
        drop(dropped);
    }

    /// Sets the function that receives the one disconnect event, replacing (and dropping) the
    /// previous one. It runs after every message received before the disconnect, with no lock
    /// held. Set after the event was delivered, it is dropped at once and never called.
    pub fn set_disconnect_handler(&self, handler: impl FnOnce(DisconnectReason) + Send + 'static) {
        let handler: DisconnectHandler = Box::new(handler);
        let dropped = {
            let mut state = self.shared.state.lock();
            if state.handlers.finished {
                Some(handler)
            } else {
                state.handlers.disconnect.replace(handler)
            }
        };
        drop(dropped);
    }

    /// Closes the connection from this side: queued output is discarded (counted in
    /// [`ConnectionStats::messages_unsent`]), the watches and the timeout are removed from
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

    /// Whether the peer has ended its side of the stream (end of file was read). The
    /// connection may still be open for writing; see [`HalfClose`].
    pub fn is_read_closed(&self) -> bool {
        !matches!(self.shared.state.lock().read_end, ReadEnd::Open)
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

    /// The periodic timeout that checks the idle and frame timeouts
    /// ([`ConnectionConfig::idle_timeout`], [`ConnectionConfig::frame_timeout`]), if either
    /// is on; its interval is a quarter of the shorter one. See
    /// [`read_watch`](Self::read_watch).
    pub fn timeout(&self) -> Option<Timeout> {
        self.shared.timer.clone()
    }

    /// A snapshot of the connection's counters.
    pub fn stats(&self) -> ConnectionStats {
        self.shared.state.lock().stats
    }
}

// The read path and delivery: these hand `&Connection` to the handlers, so they live on the
// handle rather than on `Shared`.
impl Connection {
    /// The read watch's handler: reads up to the read budget, then hands what it completed
    /// to the handlers at once if nothing was queued before it, else leaves it queued for
    /// `dispatch`.
    fn on_readable(&self, condition: WatchFlags) {
        let shared = &*self.shared;
        shared.mark_loop_thread();
        let mut state = shared.state.lock();
        if !matches!(state.read_end, ReadEnd::Open) || state.budget_wait {
            return;
        }
        let Some(stream) = state.stream.take() else {
            return;
        };
        let (stop, give_back) = shared.read_some(&mut state, &stream, condition);
        state.stream = Some(stream);
        match stop {
            Some(ReadStop::Fail(reason)) => {
                drop(state);
                shared.release(give_back);
                shared.shut(reason);
                return;
            }
            Some(ReadStop::Eof(eof)) => {
                state.read_end = ReadEnd::Pending(eof);
                if shared.config.half_close == HalfClose::Close {
                    drop(state);
                    shared.release(give_back);
                    shared.shut(eof.reason());
                    return;
                }
            }
            None => {}
        }
        let direct = !state.dispatching
            && state.remains()
            && (state.handlers.message.is_some() || state.inbound.is_empty());
        if direct {
            self.deliver(state, give_back, true);
        } else {
            let settle = state.needs_settle(&shared.config);
            drop(state);
            shared.release(give_back);
            if settle {
                shared.settle();
            }
        }
    }

    /// Delivers up to a batch of events with the handlers, starting from a locked state in
    /// which no delivery runs; gives `give_back` bytes back to the budget once unlocked.
    /// Returns the status after the batch.
    fn deliver(
        &self,
        mut state: MutexGuard<'_, State>,
        give_back: usize,
        direct: bool,
    ) -> DispatchStatus {
        let shared = &*self.shared;
        let batch = shared.config.dispatch_batch as u64;
        state.dispatching = true;
        let mut turn = Turn {
            shared,
            handler: state.handlers.message.take(),
            generation: state.handlers.generation,
            release: 0,
            ended: false,
        };
        let mut release = 0;
        let mut event = state.next_event(&mut release);
        drop(state);
        shared.release(give_back);
        let mut delivered = 0u64;
        let mut messages = 0u64;
        while let Some(current) = event.take() {
            // A message counts under the budget until its handler returns (even by a panic:
            // the turn gives the bytes back then).
            turn.release = std::mem::take(&mut release);
            let mut unhandled = 0;
            match current {
                Event::Message(message) => {
                    messages += 1;
                    match turn.handler.as_mut() {
                        Some(handler) => handler(self, message),
                        None => unhandled = 1,
                    }
                }
                Event::ReadClosed(handler) => {
                    if let Some(handler) = handler {
                        handler(self);
                    }
                }
                Event::Disconnect(reason, handler, stale, read_closed) => {
                    drop(turn.handler.take());
                    drop(stale);
                    drop(read_closed);
                    if let Some(handler) = handler {
                        handler(reason);
                    }
                    break;
                }
            }
            delivered += 1;
            shared.release(std::mem::take(&mut turn.release));
            let stale = {
                let mut state = shared.state.lock();
                state.stats.messages_unhandled += unhandled;
                let stale = turn.refresh(&mut state);
                if delivered < batch {
                    event = state.next_event(&mut release);
                }
                if event.is_none() {
                    // The common end: restore in this same critical section.
                    let direct = if direct { messages } else { 0 };
                    let (restored, settle, status) = turn.restore_locked(&mut state, direct);
                    drop(state);
                    drop(stale);
                    drop(restored);
                    return if settle {
                        shared.settle_status()
                    } else {
                        status
                    };
                }
                stale
            };
            drop(stale);
        }
        // Here when there was nothing to deliver, or after the disconnect event (which
        // carries no bytes): `release` is 0, given back for form's sake.
        shared.release(release);
        turn.end(if direct { messages } else { 0 })
    }
}

/// One delivery's hold on the message handler. Ending it — also while a handler panic
/// unwinds — puts the handler back (unless it was replaced meanwhile) and lets the next
/// delivery in.
struct Turn<'a> {
    shared: &'a Shared,
    handler: Option<MessageHandler>,
    generation: u64,
    /// The budget bytes of the message being handled.
    release: usize,
    ended: bool,
}

impl Turn<'_> {
    /// Switches to a handler set since the last message; returns the one to drop (with no
    /// lock held).
    fn refresh(&mut self, state: &mut State) -> Option<MessageHandler> {
        if state.handlers.generation == self.generation || state.handlers.finished {
            return None;
        }
        self.generation = state.handlers.generation;
        std::mem::replace(&mut self.handler, state.handlers.message.take())
    }

    /// Puts the handler back and tells the glue what changed; returns the status.
    fn end(mut self, direct: u64) -> DispatchStatus {
        let (stale, settle, status) = {
            let mut state = self.shared.state.lock();
            self.restore_locked(&mut state, direct)
        };
        drop(stale);
        if settle {
            self.shared.settle_status()
        } else {
            status
        }
    }

    /// Ends the turn: the handler back in its slot unless replaced meanwhile (that one is
    /// returned, to drop with no lock held), the next delivery let in. Returns it, whether the
    /// glue must be told something, and the status.
    fn restore_locked(
        &mut self,
        state: &mut State,
        direct: u64,
    ) -> (Option<MessageHandler>, bool, DispatchStatus) {
        self.ended = true;
        state.dispatching = false;
        state.stats.direct_deliveries += direct;
        let handlers = &mut state.handlers;
        let stale = match self.handler.take() {
            Some(handler) if !handlers.finished && handlers.generation == self.generation => {
                handlers.message = Some(handler);
                None
            }
            other => other,
        };
        (
            stale,
            state.needs_settle(&self.shared.config),
            state.status(),
        )
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Bytes of a message whose handler panicked.
        self.shared.release(std::mem::take(&mut self.release));
        if !self.ended {
            // A handler panicked: restore, and leave telling the glue to the next call.
            let (stale, _, _) = {
                let mut state = self.shared.state.lock();
                self.restore_locked(&mut state, 0)
            };
            drop(stale);
        }
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
            .field("read_closed", &!matches!(state.read_end, ReadEnd::Open))
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

    /// Whether the connection wants bytes from the peer right now.
    fn wants_read(&self, config: &ConnectionConfig) -> bool {
        self.stream.is_some()
            && matches!(self.read_end, ReadEnd::Open)
            && !self.budget_wait
            && !self.inbound_full(config)
    }

    /// Whether events wait for delivery.
    fn remains(&self) -> bool {
        !self.inbound.is_empty()
            || matches!(self.read_end, ReadEnd::Pending(_))
            || matches!(self.end, End::Pending(_))
    }

    fn status(&self) -> DispatchStatus {
        if self.remains() {
            DispatchStatus::DataRemains
        } else {
            DispatchStatus::Complete
        }
    }

    /// What the glue should know. While a delivery runs the status is left as it was: the
    /// delivery reports it once, when it ends.
    fn wanted(&self, config: &ConnectionConfig) -> Applied {
        Applied {
            read: self.wants_read(config),
            write: self.stream.is_some() && !self.outbox.is_empty(),
            status: if self.dispatching {
                self.applied.status
            } else {
                self.status()
            },
        }
    }

    /// A half-closed connection under [`HalfClose::Flush`] that has delivered everything and
    /// written everything: time to close, and why.
    fn finished_half_close(&self, config: &ConnectionConfig) -> Option<Eof> {
        match self.read_end {
            ReadEnd::Delivered(eof)
                if config.half_close == HalfClose::Flush
                    && self.stream.is_some()
                    && !self.dispatching
                    && self.inbound.is_empty()
                    && self.outbox.is_empty() =>
            {
                Some(eof)
            }
            _ => None,
        }
    }

    /// Whether the glue must be told something (or the connection closed): the check every
    /// change ends with, in the same critical section, so that an unchanged connection costs
    /// no further lock or call.
    fn needs_settle(&self, config: &ConnectionConfig) -> bool {
        !self.settling
            && (self.wanted(config) != self.applied
                || self.finished_half_close(config).is_some()
                || self.closing.is_some())
    }

    /// The next thing to deliver: a message, else the read-closed event once, else the
    /// disconnect event once. A message's bytes are added to `release` for the budget.
    fn next_event(&mut self, release: &mut usize) -> Option<Event> {
        if let Some(message) = self.pop_inbound() {
            *release += message.len();
            return Some(Event::Message(message));
        }
        if let ReadEnd::Pending(eof) = self.read_end {
            self.read_end = ReadEnd::Delivered(eof);
            return Some(Event::ReadClosed(self.handlers.read_closed.take()));
        }
        match std::mem::replace(&mut self.end, End::Delivered) {
            End::Pending(reason) => {
                let handlers = &mut self.handlers;
                handlers.finished = true;
                Some(Event::Disconnect(
                    reason,
                    handlers.disconnect.take(),
                    handlers.message.take(),
                    handlers.read_closed.take(),
                ))
            }
            other => {
                self.end = other;
                None
            }
        }
    }

    /// How the stream ended here: inside a frame, or between two.
    fn eof(&self) -> Eof {
        match self.decoder.unfinished() {
            Some((have, need)) => Eof::Truncated { have, need },
            None => Eof::Clean,
        }
    }

    /// Bytes this connection holds under the budget.
    fn charged(&self) -> usize {
        self.inbound_bytes + self.partial_charged + self.outbox.queued_bytes()
    }
}

/// Why a socket that poll reported with ERROR or HANGUP, but that neither read nor write
/// could make progress on, is unusable.
fn condition_reason(state: &State, stream: &UnixStream, condition: WatchFlags) -> DisconnectReason {
    match stream.take_error() {
        Ok(Some(error)) | Err(error) => DisconnectReason::from_io(error),
        Ok(None) if condition.contains(WatchFlags::HANGUP) => state.eof().reason(),
        Ok(None) => DisconnectReason::Io(io::Error::other("poll reported an error on the socket")),
    }
}

impl Shared {
    fn mark_loop_thread(&self) {
        let key = thread_key();
        if self.loop_thread.load(Ordering::Relaxed) != key {
            self.loop_thread.store(key, Ordering::Relaxed);
        }
    }

    fn caller(&self) -> Caller {
        match self.loop_thread.load(Ordering::Relaxed) {
            0 => Caller::Unknown,
            key if key == thread_key() => Caller::Loop,
            _ => Caller::Other,
        }
    }

    /// Gives bytes back to the budget. Never called with the state locked: it may let a
    /// waiting connection in, which runs that connection's glue.
    fn release(&self, bytes: usize) {
        if let Some(budget) = &self.budget {
            budget.release(bytes);
        }
    }

    /// Brings the watches and the glue's idea of the dispatch status in line with the state,
    /// closes a half-closed connection that is done, and closes the socket of a shut one once
    /// the glue has let go of its watches.
    ///
    /// One call at a time tells the glue (`settling`); a change made meanwhile — on another
    /// thread, or from inside the glue's callback — is picked up by that call, which looks
    /// again after each round and repeats until what it told matches the state. Every change
    /// is followed by a `settle` on the changing thread unless `needs_settle` says nothing
    /// changed, so the last word the glue hears is the current state.
    fn settle(&self) {
        loop {
            let (wanted, closing) = {
                let mut state = self.state.lock();
                if state.settling {
                    return;
                }
                let closing = if state.closing.is_some()
                    && self.read_watch.fd().is_none()
                    && self.write_watch.fd().is_none()
                {
                    state.closing.take()
                } else {
                    None
                };
                if let Some(eof) = state.finished_half_close(&self.config) {
                    drop(state);
                    drop(closing);
                    self.shut(eof.reason());
                    return;
                }
                let wanted = state.wanted(&self.config);
                if wanted == state.applied {
                    drop(state);
                    drop(closing);
                    return;
                }
                // A pause, not the end of reading.
                let reading = state.stream.is_some() && matches!(state.read_end, ReadEnd::Open);
                if state.applied.read && !wanted.read && reading {
                    state.stats.read_watch_disabled += 1;
                }
                if !state.applied.write && wanted.write {
                    state.stats.write_watch_enabled += 1;
                }
                state.settling = true;
                (wanted, closing)
            };
            drop(closing);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.apply(wanted)));
            let mut state = self.state.lock();
            state.settling = false;
            match outcome {
                Ok(()) => state.applied = wanted,
                Err(payload) => {
                    state.applied = Applied {
                        read: self.read_watch.is_enabled(),
                        write: self.write_watch.is_enabled(),
                        status: self.status.status(),
                    };
                    drop(state);
                    panic::resume_unwind(payload);
                }
            }
        }
    }

    /// `settle`, then the status it left.
    fn settle_status(&self) -> DispatchStatus {
        self.settle();
        self.state.lock().status()
    }

    /// Tells the glue `wanted` (no lock held).
    fn apply(&self, wanted: Applied) {
        // Toggling only fails for a watch of another list, which these are not; a removed
        // watch ignores it.
        if wanted.read != self.read_watch.is_enabled() {
            let _ = self.watches.toggle(&self.read_watch, wanted.read);
        }
        if wanted.write != self.write_watch.is_enabled() {
            let _ = self.watches.toggle(&self.write_watch, wanted.write);
        }
        self.status.update(wanted.status);
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
        let (stream, release) = {
            let mut state = self.state.lock();
            let Some(stream) = state.stream.take() else {
                return false;
            };
            state.end = End::Pending(reason);
            let release = state.partial_charged + state.outbox.queued_bytes();
            state.partial_charged = 0;
            state.stats.messages_unsent += state.outbox.discard() as u64;
            state.decoder.reset();
            (stream, release)
        };
        self.release(release);
        // The glue lets go of the fd before it is closed (C15). Each step runs even if glue
        // code panics in an earlier one; the first panic is resumed at the end.
        let mut panic = None;
        defer_panic(&mut panic, || {
            let _ = self.watches.remove(&self.read_watch);
        });
        defer_panic(&mut panic, || {
            let _ = self.watches.remove(&self.write_watch);
        });
        if let Some(timer) = &self.timer {
            defer_panic(&mut panic, || {
                let _ = self.timeouts.remove(timer);
            });
        }
        self.state.lock().closing = Some(stream);
        defer_panic(&mut panic, || self.settle());
        self.reap();
        if self.caller() != Caller::Loop {
            self.state.lock().stats.wakeups += 1;
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
        if queued == 0 && caller != Caller::Other {
            // Nothing queued before it: straight to the socket, one system call.
            match send_frame(stream, &payload) {
                Ok(written) => {
                    state.stats.bytes_sent += written as u64;
                    if written > 0 {
                        state.activity = true;
                    }
                    if written == HEADER_LEN + len {
                        // All out, nothing queued: nothing the glue or the budget must hear.
                        state.stats.messages_sent += 1;
                        state.stats.direct_writes += 1;
                        return Ok(());
                    } else {
                        state.outbox.push_rest(payload, written);
                    }
                }
                Err(error) => {
                    drop(guard);
                    self.shut(DisconnectReason::from_io(error));
                    return Err(SendError::Disconnected);
                }
            }
        } else {
            state.outbox.push(payload);
        }
        let charge = state.outbox.queued_bytes() - queued;
        if let Some(budget) = &self.budget {
            // Charged before the lock is let go, so before a write can release any of it.
            budget.charge(charge);
        }
        let wake = charge > 0 && caller != Caller::Loop;
        if wake {
            state.stats.wakeups += 1;
        }
        let settle = state.needs_settle(&self.config);
        drop(guard);
        if settle {
            self.settle();
        }
        if wake {
            self.wakeup.wake();
        }
        Ok(())
    }

    /// Reads up to the read budget into the decoder, under the memory cap if there is one.
    /// Returns why reading stopped early, if it did, and the bytes to give back to the budget
    /// once the state is unlocked.
    ///
    /// Under a cap, a read that might complete frames must first reserve room for all they
    /// could hold: the bytes it reads, plus the whole of a frame it might leave unfinished.
    /// When that does not fit, the connection reads only what is already reserved (the rest
    /// of the frame in progress) or up to the next length prefix, then reserves that frame
    /// whole — or waits for room with its read watch off.
    fn read_some(
        &self,
        state: &mut State,
        stream: &UnixStream,
        condition: WatchFlags,
    ) -> (Option<ReadStop>, usize) {
        let mut stop = None;
        let mut give_back = 0;
        let mut moved = 0;
        let mut frames = 0u64;
        READ_BUFFER.with(|cell| {
            let mut owned;
            let mut borrowed = cell.try_borrow_mut().ok();
            let chunk: &mut [u8] = match borrowed.as_deref_mut() {
                Some(buffer) => {
                    if buffer.len() < READ_CHUNK {
                        buffer.resize(READ_CHUNK, 0);
                    }
                    buffer
                }
                None => {
                    owned = vec![0u8; READ_CHUNK];
                    &mut owned
                }
            };
            while moved < self.config.read_budget && !state.inbound_full(&self.config) {
                let room = (self.config.read_budget - moved).min(READ_CHUNK);
                let mut ticket = 0;
                let limit = match &self.budget {
                    None => room,
                    Some(budget) => {
                        let missing = state.decoder.partial_missing();
                        if room <= missing {
                            room
                        } else if budget.try_take(room - missing + self.max_frame) {
                            ticket = room - missing + self.max_frame;
                            room
                        } else if missing > 0 {
                            missing
                        } else {
                            HEADER_LEN - state.decoder.prefix_have()
                        }
                    }
                };
                match (&*stream).read(&mut chunk[..limit]) {
                    Ok(0) => {
                        give_back += ticket;
                        let eof = state.eof();
                        // A cut frame will never finish: its buffer and reservation go.
                        give_back += std::mem::take(&mut state.partial_charged);
                        state.decoder.reset();
                        stop = Some(ReadStop::Eof(eof));
                        break;
                    }
                    Ok(n) => {
                        moved += n;
                        let before = state.inbound_bytes + state.partial_charged;
                        let inbound = &mut state.inbound;
                        let mut bytes = 0;
                        let mut completed = 0;
                        let fed = state.decoder.feed(&chunk[..n], &mut |message| {
                            bytes += message.len();
                            completed += 1;
                            inbound.push_back(message);
                        });
                        state.inbound_bytes += bytes;
                        frames += completed;
                        if let Some(budget) = &self.budget {
                            if completed > 0 {
                                // The frame in progress, if there was one, is complete: its
                                // reservation now counts in `inbound_bytes`.
                                state.partial_charged = 0;
                            }
                            let unreserved = state
                                .decoder
                                .partial_need()
                                .filter(|_| state.partial_charged == 0);
                            if let Some(need) = unreserved {
                                if ticket > 0 || budget.try_take(need) {
                                    state.partial_charged = need;
                                } else {
                                    let me: Weak<dyn BudgetWaiter> = self.me.clone();
                                    if budget.wait(need, me) {
                                        state.partial_charged = need;
                                    } else {
                                        state.budget_wait = true;
                                        state.stats.budget_waits += 1;
                                    }
                                }
                            }
                            let taken = state.inbound_bytes + state.partial_charged - before;
                            give_back += ticket.saturating_sub(taken);
                        }
                        if let Err(TooLarge { len, max }) = fed {
                            stop =
                                Some(ReadStop::Fail(DisconnectReason::FrameTooLarge { len, max }));
                            break;
                        }
                        // A short read emptied the socket: another read would only say
                        // "would block" (a system call for nothing); level-triggered glue
                        // reports the socket again if more arrives (C17).
                        if state.budget_wait || n < limit {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        give_back += ticket;
                        if moved == 0 && condition.intersects(WatchFlags::ALWAYS) {
                            stop = Some(ReadStop::Fail(condition_reason(state, stream, condition)));
                        }
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => give_back += ticket,
                    Err(e) => {
                        give_back += ticket;
                        stop = Some(ReadStop::Fail(DisconnectReason::from_io(e)));
                        break;
                    }
                }
            }
        });
        state.stats.bytes_received += moved as u64;
        state.stats.messages_received += frames;
        if moved > 0 {
            state.activity = true;
        }
        (stop, give_back)
    }

    /// The write watch's handler: writes queued output up to the write budget.
    fn on_writable(&self, condition: WatchFlags) {
        self.mark_loop_thread();
        let mut guard = self.state.lock();
        let state = &mut *guard;
        let Some(stream) = state.stream.as_ref() else {
            return;
        };
        let mut ended = None;
        let written = match state.outbox.write_to(stream, self.config.write_budget) {
            Ok(written) => {
                let stuck = written.bytes == 0 && !state.outbox.is_empty();
                if stuck && condition.intersects(WatchFlags::ALWAYS) {
                    ended = Some(condition_reason(state, stream, condition));
                }
                written
            }
            Err(error) => {
                ended = Some(DisconnectReason::from_io(error));
                Default::default()
            }
        };
        state.stats.bytes_sent += written.bytes as u64;
        state.stats.messages_sent += written.frames as u64;
        if written.bytes > 0 {
            state.activity = true;
        }
        let settle = state.needs_settle(&self.config);
        drop(guard);
        self.release(written.bytes);
        match ended {
            Some(reason) => {
                self.shut(reason);
            }
            None if settle => self.settle(),
            None => {}
        }
    }

    /// The timer's handler: counts the periods the peer kept the connection waiting — silent,
    /// or inside one frame — and closes the connection once either reaches its timeout.
    fn on_tick(&self) {
        self.mark_loop_thread();
        let reason = {
            let mut state = self.state.lock();
            if state.stream.is_none() {
                return;
            }
            let reading = state.wants_read(&self.config);
            let waiting_on_peer = reading || !state.outbox.is_empty();
            if state.activity || !waiting_on_peer {
                state.idle_ticks = 0;
            } else {
                state.idle_ticks = state.idle_ticks.saturating_add(1);
            }
            state.activity = false;
            let in_frame = reading && state.decoder.unfinished().is_some();
            if in_frame && state.frame_seen && state.frame_mark == state.stats.messages_received {
                state.frame_ticks = state.frame_ticks.saturating_add(1);
            } else {
                state.frame_ticks = 0;
            }
            state.frame_seen = in_frame;
            state.frame_mark = state.stats.messages_received;
            let reached = |ticks: u32, limit: Option<Option<Duration>>| {
                limit
                    .flatten()
                    .is_some_and(|limit| self.tick.saturating_mul(ticks) >= limit)
            };
            if reached(state.idle_ticks, self.config.idle_timeout) {
                Some(DisconnectReason::IdleTimeout)
            } else if reached(state.frame_ticks, self.config.frame_timeout) {
                Some(DisconnectReason::FrameTimeout)
            } else {
                None
            }
        };
        if let Some(reason) = reason {
            self.shut(reason);
        }
    }
}

impl BudgetWaiter for Shared {
    fn granted(&self, bytes: usize) -> bool {
        let settle = {
            let mut state = self.state.lock();
            if state.stream.is_none() || !state.budget_wait {
                return false;
            }
            state.budget_wait = false;
            state.partial_charged = bytes;
            state.needs_settle(&self.config)
        };
        if settle {
            self.settle();
        }
        if self.caller() != Caller::Loop {
            self.wakeup.wake();
        }
        true
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.release(self.state.get_mut().charged());
        }
    }
}
