//! `SocketPeer`: a small producer on one end of a Unix socket, for the conformance scenarios.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::error::SetFunctionsError;
use crate::flags::WatchFlags;
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::list::{TimeoutList, WatchList};
use crate::source::Source;
use crate::source_data::SourceData;
use crate::status::{DispatchStatus, DispatchStatusFn, StatusNotifier};
use crate::timeout::Timeout;
use crate::wakeup::{WakeupFn, WakeupHook};
use crate::watch::Watch;

/// A producer on one end of a Unix socket with libdbus's watch pattern: a read watch and a
/// write watch on the one fd, the write watch enabled only while output is queued.
///
/// It reads at most `budget` bytes per `handle` (so it relies on level-triggered glue, C17),
/// keeps what it reads, writes what it is given, takes work posted from other threads through
/// its dispatch queue (wakeup + dispatch status, C16), and removes its watches before it
/// closes its fd (C15). The conformance scenarios drive it; producer authors may read it as a
/// compact example of a [`Source`].
///
/// # Examples
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use loopglue::testing::SocketPeer;
/// use loopglue::WatchFlags;
///
/// let (ours, mut theirs) = UnixStream::pair()?;
/// let peer = SocketPeer::new(ours, 1024)?;
/// std::io::Write::write_all(&mut theirs, b"hi")?;
/// let _ = peer.read_watch().handle(WatchFlags::READABLE); // what glue does when ready
/// assert_eq!(peer.received(), b"hi");
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct SocketPeer {
    inner: Arc<PeerInner>,
}

struct PeerInner {
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    wakeup: WakeupHook,
    status: StatusNotifier,
    read_watch: Watch,
    write_watch: Watch,
    budget: usize,
    state: Mutex<PeerState>,
}

#[derive(Default)]
struct PeerState {
    stream: Option<UnixStream>,
    received: Vec<u8>,
    outbound: VecDeque<u8>,
    posted: Vec<u8>,
    write_enables: usize,
    handler_calls: usize,
    closed: bool,
}

impl SocketPeer {
    /// Wraps `stream` (made non-blocking), reading at most `budget` bytes per `handle`.
    ///
    /// # Errors
    ///
    /// If the stream cannot be made non-blocking.
    pub fn new(stream: UnixStream, budget: usize) -> io::Result<SocketPeer> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let inner = Arc::new_cyclic(|weak: &Weak<PeerInner>| {
            let (r, w) = (weak.clone(), weak.clone());
            PeerInner {
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                wakeup: WakeupHook::new(),
                status: StatusNotifier::new(),
                read_watch: Watch::new(fd, WatchFlags::READABLE, move |ready| {
                    if let Some(inner) = r.upgrade() {
                        inner.on_readable(ready);
                    }
                }),
                write_watch: Watch::new_disabled(fd, WatchFlags::WRITABLE, move |_| {
                    if let Some(inner) = w.upgrade() {
                        inner.on_writable();
                    }
                }),
                budget: budget.max(1),
                state: Mutex::new(PeerState {
                    stream: Some(stream),
                    ..PeerState::default()
                }),
            }
        });
        // libdbus's order: the write watch, then the read watch.
        for watch in [&inner.write_watch, &inner.read_watch] {
            inner.watches.add(watch).map_err(io::Error::from)?;
        }
        Ok(SocketPeer { inner })
    }

    /// The socket's fd, while open.
    pub fn fd(&self) -> Option<RawFd> {
        self.inner.lock().stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The read watch.
    pub fn read_watch(&self) -> Watch {
        self.inner.read_watch.clone()
    }

    /// The write watch.
    pub fn write_watch(&self) -> Watch {
        self.inner.write_watch.clone()
    }

    /// Everything read so far.
    pub fn received(&self) -> Vec<u8> {
        self.inner.lock().received.clone()
    }

    /// How many bytes were read so far.
    pub fn received_len(&self) -> usize {
        self.inner.lock().received.len()
    }

    /// Bytes queued and not yet written.
    pub fn pending_output(&self) -> usize {
        self.inner.lock().outbound.len()
    }

    /// How many times the glue ran one of the peer's watch handlers (read or write).
    pub fn handler_calls(&self) -> usize {
        self.inner.lock().handler_calls
    }

    /// How many times the write watch was switched on.
    pub fn write_enables(&self) -> usize {
        self.inner.lock().write_enables
    }

    /// Whether the peer closed its end (after EOF, an error, or [`close`](Self::close)).
    pub fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }

    /// Queues `bytes` for writing and switches the write watch on. Call it from the loop's
    /// thread; from another thread use [`post`](Self::post).
    pub fn queue(&self, bytes: &[u8]) {
        self.inner.queue(bytes);
    }

    /// Hands `bytes` over from another thread: they are stashed, the dispatch status turns
    /// `DataRemains` and the loop is woken; the loop's `dispatch` then queues them (C16).
    pub fn post(&self, bytes: &[u8]) {
        self.inner.lock().posted.extend_from_slice(bytes);
        self.inner.status.update(DispatchStatus::DataRemains);
        self.inner.wakeup.wake();
    }

    /// Adds a periodic timeout; the counter counts its firings.
    ///
    /// # Errors
    ///
    /// If the glue refuses it.
    pub fn add_timeout(&self, interval: Duration) -> io::Result<(Timeout, Arc<AtomicUsize>)> {
        let fired = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&fired);
        let timeout = Timeout::new(interval, move || {
            count.fetch_add(1, Ordering::SeqCst);
        });
        self.inner.timeouts.add(&timeout).map_err(io::Error::from)?;
        Ok((timeout, fired))
    }

    /// The peer's watch list, for scenarios that add or remove watches themselves.
    pub fn watches(&self) -> &WatchList {
        &self.inner.watches
    }

    /// The peer's timeout list.
    pub fn timeouts(&self) -> &TimeoutList {
        &self.inner.timeouts
    }

    /// Removes every watch and timeout, then closes the socket (C15).
    pub fn close(&self) {
        self.inner.close();
    }
}

impl PeerInner {
    fn lock(&self) -> MutexGuard<'_, PeerState> {
        // A panicking handler must not make the peer unusable for the rest of a scenario.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn queue(&self, bytes: &[u8]) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.outbound.extend(bytes);
            if !self.write_watch.is_enabled() {
                state.write_enables += 1;
            }
        }
        // With our lock released: the glue's toggled runs inside.
        let _ = self.watches.toggle(&self.write_watch, true);
    }

    fn on_readable(&self, ready: WatchFlags) {
        let mut buf = vec![0u8; self.budget];
        let eof = {
            let mut state = self.lock();
            state.handler_calls += 1;
            let Some(stream) = state.stream.as_mut() else {
                return;
            };
            match stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    state.received.extend_from_slice(&buf[..n]);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready.intersects(WatchFlags::HANGUP | WatchFlags::ERROR)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(_) => true,
            }
        };
        if eof {
            self.close();
        }
    }

    fn on_writable(&self) {
        enum After {
            Nothing,
            Drained,
            Failed,
        }
        let after = {
            let mut guard = self.lock();
            let state = &mut *guard;
            state.handler_calls += 1;
            let Some(stream) = state.stream.as_mut() else {
                return;
            };
            let (front, _) = state.outbound.as_slices();
            let chunk = &front[..front.len().min(self.budget)];
            match stream.write(chunk) {
                Ok(n) => {
                    state.outbound.drain(..n);
                    if state.outbound.is_empty() {
                        After::Drained
                    } else {
                        After::Nothing
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    After::Nothing
                }
                Err(_) => After::Failed,
            }
        };
        // Our lock is released before calling into the list (its glue runs inside).
        match after {
            After::Drained => drop(self.watches.toggle(&self.write_watch, false)),
            After::Failed => self.close(),
            After::Nothing => {}
        }
    }

    fn close(&self) {
        if std::mem::replace(&mut self.lock().closed, true) {
            return;
        }
        for watch in [&self.write_watch, &self.read_watch] {
            let _ = self.watches.remove(watch);
        }
        for timeout in self.timeouts.objects() {
            let _ = self.timeouts.remove(&timeout);
        }
        // Only now, with the glue told, may the fd number be reused (C15).
        let stream = self.lock().stream.take();
        drop(stream);
    }
}

impl Source for SocketPeer {
    fn data(&self) -> &SourceData {
        &self.inner.data
    }

    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        self.inner.watches.set_functions(functions)
    }

    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        self.inner.timeouts.set_functions(functions)
    }

    fn set_wakeup_main_function(&self, wakeup: Option<WakeupFn>) {
        self.inner.wakeup.set_function(wakeup);
    }

    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        self.inner.status.set_function(function);
    }

    fn dispatch_status(&self) -> DispatchStatus {
        self.inner.status.status()
    }

    fn dispatch(&self) -> DispatchStatus {
        let posted = std::mem::take(&mut self.inner.lock().posted);
        if !posted.is_empty() {
            self.inner.queue(&posted);
        }
        self.inner.status.update(DispatchStatus::Complete);
        DispatchStatus::Complete
    }
}

impl fmt::Debug for SocketPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.lock();
        f.debug_struct("SocketPeer")
            .field("received", &state.received.len())
            .field("outbound", &state.outbound.len())
            .field("closed", &state.closed)
            .finish()
    }
}
