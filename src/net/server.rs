//! `Server`: a listening Unix socket that hands each accepted client to the application as a
//! [`Connection`] — the shape of `dbus-server.h`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::panic::{self, AssertUnwindSafe};

use super::defer_panic;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::budget::Budget;
use super::config::ServerConfig;
use super::connection::Connection;
use crate::{
    SetFunctionsError, Source, SourceData, Timeout, TimeoutFunctions, TimeoutList, Watch,
    WatchFlags, WatchFunctions, WatchList,
};

type NewConnectionFn = Box<dyn FnMut(Connection) + Send>;
type AcceptErrorFn = Box<dyn FnMut(&io::Error) + Send>;

/// Adds `n` to a counter.
fn bump(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A listening Unix socket that runs inside any event loop and hands each client it accepts
/// to the application — libdbus's `DBusServer`.
///
/// Like a `DBusServer` it has a [`WatchList`] (one READABLE watch on the listening socket) and
/// a [`TimeoutList`], and glue attaches it through [`Source`]. When the socket is readable the
/// server accepts clients until `accept` would block, at most
/// [`ServerConfig::accept_budget`] per report (C17), wraps each in a [`Connection`] with
/// [`ServerConfig::connection`], and calls the new-connection function with it. That function
/// sets the connection up — message handler, attaching it to a loop — and keeps it; a
/// connection it drops is closed. If `accept` fails (say `EMFILE`), the server tells the
/// accept-error function ([`set_accept_error_function`](Self::set_accept_error_function)),
/// disables its watch, so as not to spin on a client it cannot take, and enables its one
/// timeout, which turns the watch back on after [`ServerConfig::accept_retry`].
///
/// All of a server's connections share one memory cap
/// ([`ServerConfig::max_buffered_bytes`]): reaching it pauses reading, and nothing is
/// dropped. Accepted connections get the server's idle and frame timeouts unless their
/// configuration sets its own, so a silent or trickling client ("slowloris") is dropped.
///
/// `Server` is a cheap handle: clones share one server, usable from any thread and from
/// inside any callback. The socket closes on [`disconnect`](Self::disconnect) or when the
/// last handle drops; the socket file is then unlinked unless
/// [`ServerConfig::unlink_on_close`] says otherwise.
///
/// # Examples
///
/// A server and a client driven by hand:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use loopglue::net::{Connection, Server};
/// use loopglue::WatchFlags;
///
/// let path = std::env::temp_dir().join(format!("loopglue-doc-server-{}", std::process::id()));
/// let server = Server::bind(&path)?;
/// let accepted = Arc::new(Mutex::new(Vec::new()));
/// let keep = Arc::clone(&accepted);
/// server.set_new_connection_function(move |connection| keep.lock().unwrap().push(connection));
///
/// let client = Connection::connect(&path)?;
/// server.watch().handle(WatchFlags::READABLE); // glue: the listening socket is readable
/// assert_eq!(accepted.lock().unwrap().len(), 1);
///
/// server.disconnect(); // the watch is removed, then the socket closed and its file unlinked
/// assert!(!path.exists());
/// # drop(client);
/// # Ok::<(), std::io::Error>(())
/// ```
#[doc(alias = "DBusServer")]
#[derive(Clone)]
pub struct Server {
    shared: Arc<ServerShared>,
}

struct ServerShared {
    // Declared first so that they drop first: the glue lets go of the watch while the
    // listening socket, owned by `state` below, is still open (C15).
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    watch: Watch,
    retry: Timeout,
    config: ServerConfig,
    fd: RawFd,
    accepted: AtomicU64,
    accept_errors: AtomicU64,
    refused: AtomicU64,
    budget: Arc<Budget>,
    on_accept_error: Mutex<Option<AcceptErrorFn>>,
    handoff: Mutex<Handoff>,
    state: Mutex<ServerState>,
}

struct ServerState {
    listener: Option<UnixListener>,
    /// A disconnected server's socket whose watch the glue has not let go of yet (C15).
    closing: Option<UnixListener>,
    /// The socket file to unlink once the socket is closed.
    file: Option<SocketFile>,
}

/// A socket file and the identity it had when the server took it, so that closing never
/// unlinks a file that someone else has bound at the same path since.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// Accepted connections on their way to the new-connection function. One thread at a time
/// delivers; connections accepted meanwhile (on another thread, or from inside the function)
/// are queued for it, so none is dropped for finding the function busy.
#[derive(Default)]
struct Handoff {
    function: Option<NewConnectionFn>,
    generation: u64,
    pending: VecDeque<Connection>,
    delivering: bool,
}

/// A snapshot of a [`Server`]'s counters, from [`Server::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServerStats {
    /// Clients accepted and wrapped in a [`Connection`].
    pub accepted: u64,
    /// Failed `accept` calls (and accepted sockets that could not be set up), each followed
    /// by a pause of [`ServerConfig::accept_retry`].
    pub accept_errors: u64,
    /// Connections closed at once because no new-connection function was set.
    pub refused: u64,
    /// Bytes reserved under the memory cap right now ([`ServerConfig::max_buffered_bytes`]):
    /// what the connections buffer — received messages not yet dispatched, partly received
    /// frames at their full announced length, queued output — plus the allowance of a read
    /// in progress. Never less than what is actually buffered.
    pub reserved_bytes: u64,
    /// The most bytes ever reserved at once; at most the cap, unless queued output (never
    /// refused for the cap) pushed it over.
    pub peak_reserved_bytes: u64,
    /// Times a connection stopped reading to wait for room under the cap.
    pub budget_waits: u64,
}

impl Server {
    /// Listens on a new socket file at `path`, with the default configuration.
    ///
    /// # Errors
    ///
    /// The error of `bind(2)` — [`io::ErrorKind::AddrInUse`] if the file exists — or of
    /// switching the socket to non-blocking mode.
    #[doc(alias = "dbus_server_listen")]
    pub fn bind(path: impl AsRef<Path>) -> io::Result<Server> {
        Server::bind_with(path, ServerConfig::default())
    }

    /// Listens on a new socket file at `path`, with `config`.
    ///
    /// # Errors
    ///
    /// As [`bind`](Self::bind).
    #[doc(alias = "dbus_server_listen")]
    pub fn bind_with(path: impl AsRef<Path>, config: ServerConfig) -> io::Result<Server> {
        Server::from_listener(UnixListener::bind(path)?, config)
    }

    /// Serves on a listening socket the application created. The socket is switched to
    /// non-blocking mode.
    ///
    /// # Errors
    ///
    /// The error of switching the socket to non-blocking mode, or of reading its address.
    pub fn from_listener(listener: UnixListener, config: ServerConfig) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let file = match (config.unlink_on_close, listener.local_addr()?.as_pathname()) {
            (true, Some(path)) => {
                let meta = std::fs::symlink_metadata(path)?;
                Some(SocketFile {
                    path: path.to_path_buf(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                })
            }
            _ => None,
        };
        let fd = listener.as_raw_fd();
        let budget = Arc::new(Budget::new(config.max_buffered_bytes));
        let shared = Arc::new_cyclic(|weak: &Weak<ServerShared>| {
            let on_ready = weak.clone();
            let watch = Watch::new_disabled(fd, WatchFlags::READABLE, move |condition| {
                if let Some(shared) = on_ready.upgrade() {
                    shared.on_acceptable(condition);
                }
            });
            let on_retry = weak.clone();
            let retry = Timeout::new_disabled(config.accept_retry, move || {
                if let Some(shared) = on_retry.upgrade() {
                    shared.resume();
                }
            });
            ServerShared {
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                watch,
                retry,
                config,
                fd,
                accepted: AtomicU64::new(0),
                accept_errors: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                budget,
                on_accept_error: Mutex::new(None),
                handoff: Mutex::new(Handoff::default()),
                state: Mutex::new(ServerState {
                    listener: Some(listener),
                    closing: None,
                    file,
                }),
            }
        });
        // No glue yet: tracked now, replayed to the first set installed.
        shared.watches.add(&shared.watch)?;
        shared.watches.toggle(&shared.watch, true)?;
        shared.timeouts.add(&shared.retry)?;
        Ok(Server { shared })
    }

    /// Sets the function that receives each accepted connection, replacing (and dropping) the
    /// previous one. It runs with no lock held, from the server's watch handler, and may call
    /// anything — set the connection up, attach it to a loop, even disconnect the server.
    /// While no function is set, accepted connections are closed at once (as libdbus does)
    /// and counted in [`ServerStats::refused`].
    ///
    /// If the function panics, the panic passes through the watch handler to the glue; the
    /// function stays installed, and connections accepted in the same report wait for the
    /// next one.
    #[doc(alias = "dbus_server_set_new_connection_function")]
    pub fn set_new_connection_function(&self, function: impl FnMut(Connection) + Send + 'static) {
        let function: NewConnectionFn = Box::new(function);
        let replaced = {
            let mut handoff = self.shared.handoff.lock();
            handoff.generation += 1;
            handoff.function.replace(function)
        };
        drop(replaced);
    }

    /// Sets the function told about every failed `accept` (say `EMFILE`: the process is out
    /// of file descriptors) and every accepted socket that could not be set up, replacing
    /// (and dropping) the previous one. Each failure is also counted in
    /// [`ServerStats::accept_errors`] and followed by a pause of [`ServerConfig::accept_retry`].
    /// The function runs from the server's watch handler with no lock held; without one, the
    /// counter is the only trace.
    ///
    /// # Examples
    ///
    /// ```
    /// use loopglue::net::Server;
    ///
    /// let path = std::env::temp_dir().join(format!("loopglue-doc-errors-{}", std::process::id()));
    /// let server = Server::bind(&path)?;
    /// server.set_accept_error_function(|error| eprintln!("server: cannot accept: {error}"));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn set_accept_error_function(&self, function: impl FnMut(&io::Error) + Send + 'static) {
        let function: AcceptErrorFn = Box::new(function);
        let replaced = self.shared.on_accept_error.lock().replace(function);
        drop(replaced);
    }

    /// Stops listening: the watch and the retry timeout are removed from their lists, then
    /// the socket is closed (C15) and its file unlinked if so configured. Connections already
    /// accepted are not affected. Does nothing if the server is already disconnected.
    ///
    /// # Panics
    ///
    /// If glue code called from here panics — once the server is fully disconnected.
    #[doc(alias = "dbus_server_disconnect")]
    pub fn disconnect(&self) {
        self.shared.shut();
    }

    /// Whether the server is still listening.
    #[doc(alias = "dbus_server_get_is_connected")]
    pub fn is_connected(&self) -> bool {
        self.shared.state.lock().listener.is_some()
    }

    /// The filesystem path the server listens on, if it has one and is still listening.
    #[doc(alias = "dbus_server_get_address")]
    pub fn path(&self) -> Option<PathBuf> {
        let state = self.shared.state.lock();
        let listener = state.listener.as_ref()?;
        let address = listener.local_addr().ok()?;
        address.as_pathname().map(Path::to_path_buf)
    }

    /// The watch on the listening socket. Glue receives it through
    /// [`set_watch_functions`](Source::set_watch_functions); this handle is for tests and
    /// hand-driven use.
    pub fn watch(&self) -> Watch {
        self.shared.watch.clone()
    }

    /// The timeout that re-enables the watch after a failed `accept`; disabled otherwise.
    pub fn retry_timeout(&self) -> Timeout {
        self.shared.retry.clone()
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> ServerStats {
        let get = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        ServerStats {
            accepted: get(&self.shared.accepted),
            accept_errors: get(&self.shared.accept_errors),
            refused: get(&self.shared.refused),
            reserved_bytes: self.shared.budget.used() as u64,
            peak_reserved_bytes: self.shared.budget.peak() as u64,
            budget_waits: self.shared.budget.pauses(),
        }
    }
}

impl Source for Server {
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
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("Server")
            .field("fd", &self.shared.fd)
            .field("listening", &state.listener.is_some())
            .field(
                "path",
                &state
                    .listener
                    .as_ref()
                    .and_then(|listener| listener.local_addr().ok())
                    .and_then(|address| address.as_pathname().map(Path::to_path_buf)),
            )
            .finish_non_exhaustive()
    }
}

impl ServerShared {
    /// The watch's handler: accepts up to the budget and hands the connections over.
    fn on_acceptable(&self, condition: WatchFlags) {
        let mut streams = Vec::new();
        let mut errors = Vec::new();
        let mut failed = false;
        {
            let state = self.state.lock();
            let Some(listener) = state.listener.as_ref() else {
                return;
            };
            for _ in 0..self.config.accept_budget {
                match listener.accept() {
                    Ok((stream, _)) => streams.push(stream),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Nothing to accept, yet poll reported an error or hang-up: polling
                        // again at once would spin.
                        if streams.is_empty() && condition.intersects(WatchFlags::ALWAYS) {
                            failed = true;
                            errors.push(listener.take_error().ok().flatten().unwrap_or_else(
                                || {
                                    io::Error::other(
                                        "poll reported an error on the listening socket",
                                    )
                                },
                            ));
                        }
                        break;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        failed = true;
                        errors.push(e);
                        break;
                    }
                }
            }
        }
        let mut connections = Vec::with_capacity(streams.len());
        let config = self.config.connection.clone().with_timeout_defaults(
            Some(ServerConfig::DEFAULT_IDLE_TIMEOUT),
            Some(ServerConfig::DEFAULT_FRAME_TIMEOUT),
        );
        for stream in streams {
            match Connection::with_budget(stream, config.clone(), Some(Arc::clone(&self.budget))) {
                Ok(connection) => connections.push(connection),
                Err(e) => {
                    failed = true;
                    errors.push(e);
                }
            }
        }
        bump(&self.accepted, connections.len());
        if failed {
            bump(&self.accept_errors, 1);
            let _ = self.watches.toggle(&self.watch, false);
            let _ = self.timeouts.toggle(&self.retry, true);
        }
        self.report(&errors);
        self.hand_over(connections);
    }

    /// Tells the accept-error function, with no lock held while it runs.
    fn report(&self, errors: &[io::Error]) {
        if errors.is_empty() {
            return;
        }
        let Some(mut function) = self.on_accept_error.lock().take() else {
            return;
        };
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            for error in errors {
                function(error);
            }
        }));
        // Put it back unless it was replaced meanwhile (then the replaced one is dropped).
        let stale = {
            let mut slot = self.on_accept_error.lock();
            if slot.is_none() {
                *slot = Some(function);
                None
            } else {
                Some(function)
            }
        };
        drop(stale);
        if let Err(payload) = outcome {
            panic::resume_unwind(payload);
        }
    }

    /// The retry timeout's handler: accept again.
    fn resume(&self) {
        let _ = self.timeouts.toggle(&self.retry, false);
        if self.state.lock().listener.is_some() {
            let _ = self.watches.toggle(&self.watch, true);
        }
    }

    /// Delivers `connections`, and any queued before them, to the new-connection function.
    fn hand_over(&self, connections: Vec<Connection>) {
        let mut handoff = self.handoff.lock();
        handoff.pending.extend(connections);
        if handoff.delivering {
            return; // the delivering call, on this thread or another, takes them
        }
        handoff.delivering = true;
        while let Some(connection) = handoff.pending.pop_front() {
            let Some(mut function) = handoff.function.take() else {
                bump(&self.refused, 1);
                drop(handoff);
                drop(connection); // closing it calls glue: no lock held
                handoff = self.handoff.lock();
                continue;
            };
            let generation = handoff.generation;
            drop(handoff);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| function(connection)));
            handoff = self.handoff.lock();
            let stale = if handoff.generation == generation {
                handoff.function = Some(function);
                None
            } else {
                Some(function) // replaced from inside: the new one takes the next connection
            };
            if let Err(payload) = outcome {
                handoff.delivering = false;
                drop(handoff);
                drop(stale);
                panic::resume_unwind(payload);
            }
            if stale.is_some() {
                drop(handoff);
                drop(stale); // user code: no lock held
                handoff = self.handoff.lock();
            }
        }
        handoff.delivering = false;
    }

    fn shut(&self) {
        let listener = {
            let mut state = self.state.lock();
            match state.listener.take() {
                Some(listener) => listener,
                None => return,
            }
        };
        // The glue lets go of the fd before it is closed (C15), even if its code panics.
        let mut panic = None;
        defer_panic(&mut panic, || drop(self.watches.remove(&self.watch)));
        defer_panic(&mut panic, || drop(self.timeouts.remove(&self.retry)));
        self.state.lock().closing = Some(listener);
        self.reap();
        if let Some(payload) = panic {
            panic::resume_unwind(payload);
        }
    }

    /// Closes a disconnected server's socket once the glue has let go of the watch, then
    /// unlinks its file.
    fn reap(&self) {
        if self.watch.fd().is_some() {
            return;
        }
        let (listener, file) = {
            let mut state = self.state.lock();
            match state.closing.take() {
                Some(listener) => (listener, state.file.take()),
                None => return,
            }
        };
        drop(listener);
        if let Some(file) = file {
            file.unlink();
        }
    }
}

impl SocketFile {
    /// Removes the file if it is still the socket the server listened on.
    fn unlink(&self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for ServerState {
    fn drop(&mut self) {
        // The socket closes before its file goes, as in `reap`.
        drop(self.listener.take());
        drop(self.closing.take());
        if let Some(file) = self.file.take() {
            file.unlink();
        }
    }
}
