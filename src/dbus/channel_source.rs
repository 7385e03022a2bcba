//! `ChannelSource`: the `dbus` crate's non-blocking connection on any loopglue loop (feature
//! `dbus-rs`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dbus_crate::channel::Channel;
use dbus_crate::nonblock::{NonblockReply, Process, SyncConnection};
use parking_lot::Mutex;

use super::announcer::Announcer;
use crate::{
    DispatchStatus, DispatchStatusFn, SetFunctionsError, Source, SourceData, TimeoutFunctions,
    TimeoutList, WakeupFn, WakeupHook, Watch, WatchFlags, WatchFunctions, WatchList,
};

/// A `dbus::nonblock::SyncConnection` (the `dbus` crate, dbus-rs) run by a loopglue loop,
/// through that crate's own public API — the way `dbus-tokio` drives it, but on any loop.
///
/// The bridge proper ([`Connection`](super::Connection)) cannot take a dbus-rs connection
/// (see the [module notes](super)); this source drives one from outside instead: a read and
/// a write [`Watch`] on the channel's fd, enabled as [`Channel::watch`] says, each readiness
/// answered with [`Channel::read_write`] and the interest re-read; [`Source::dispatch`] is
/// the crate's `process_all`, which runs its match and reply callbacks. The crate's waker
/// (called when a `send` from any thread leaves output queued) makes the glue dispatch, and
/// dispatching flushes. Messages are read 2 KiB per readiness, so an edge-triggered glue must
/// re-check readiness (C17) — which every loopglue glue does.
///
/// What this route cannot do, because the crate does not let anyone do it:
///
/// * the fd is closed by libdbus inside `read_write` when the peer goes away, before this
///   source can remove its watches (C15 is kept by the bridge, not here): glue sees the
///   removal of an fd that is already closed, which it tolerates;
/// * toggles made inside libdbus are recorded by the crate in an atomic that notifies no one;
///   the interest is re-read after every I/O and dispatch, and the waker covers sends from
///   other threads, but a libdbus toggle from elsewhere (a message freed on another thread
///   re-enabling reading) waits for the next event;
/// * libdbus's pending-call timeouts are not used by the crate (it installs no timeout
///   functions); replies without a timeout maker never time out.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use dbus_crate::channel::Channel;
/// use loopglue::dbus::ChannelSource;
/// use loopglue::MainLoop;
///
/// let main_loop = MainLoop::new()?;
/// let mut channel = Channel::open_private("unix:path=/run/user/1000/bus")?;
/// channel.register()?;
/// let source = ChannelSource::new(channel);
/// let connection = source.connection(); // send, match, reply with the crate's API
/// main_loop.attach(Arc::new(source))?;
/// # let _ = connection;
/// main_loop.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ChannelSource {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Arc<SyncConnection>,
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    wakeup: WakeupHook,
    /// Keyed to what the glue believes, not to what it was last told: a send on another
    /// thread announces `DataRemains` concurrently with the loop's own I/O and dispatches,
    /// and a notifier that dedups against its last notification strands a reply read
    /// meanwhile (see `Announcer`).
    announcer: Announcer,
    read: Watch,
    write: Watch,
    /// `process_all` may not run on two threads at once.
    processing: Mutex<()>,
    closed: AtomicBool,
}

impl ChannelSource {
    /// Takes over `channel`: enables its watch tracking and wraps it in a `SyncConnection`
    /// whose waker reaches this source.
    pub fn new(mut channel: Channel) -> ChannelSource {
        channel.set_watch_enabled(true);
        let interest = channel.watch();
        let inner = Arc::new_cyclic(|me: &Weak<Inner>| {
            let mut connection = SyncConnection::from(channel);
            let waker = me.clone();
            connection.set_waker(Some(Box::new(move || {
                if let Some(inner) = waker.upgrade() {
                    inner.announcer.data_remains();
                    inner.wakeup.wake();
                }
                Ok(())
            })));
            let handler = {
                let me = me.clone();
                move |_: WatchFlags| {
                    if let Some(inner) = me.upgrade() {
                        inner.io();
                    }
                }
            };
            let read = if interest.read {
                Watch::new(interest.fd, WatchFlags::READABLE, handler.clone())
            } else {
                Watch::new_disabled(interest.fd, WatchFlags::READABLE, handler.clone())
            };
            let write = if interest.write {
                Watch::new(interest.fd, WatchFlags::WRITABLE, handler)
            } else {
                Watch::new_disabled(interest.fd, WatchFlags::WRITABLE, handler)
            };
            Inner {
                connection: Arc::new(connection),
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                wakeup: WakeupHook::new(),
                announcer: Announcer::default(),
                read,
                write,
                processing: Mutex::new(()),
                closed: AtomicBool::new(false),
            }
        });
        let _ = inner.watches.add(&inner.write);
        let _ = inner.watches.add(&inner.read);
        ChannelSource { inner }
    }

    /// The connection, for the crate's API: `send`, `send_with_reply`, `start_receive`.
    pub fn connection(&self) -> Arc<SyncConnection> {
        Arc::clone(&self.inner.connection)
    }
}

impl Inner {
    fn channel(&self) -> &Channel {
        let connection: &SyncConnection = &self.connection;
        connection.as_ref()
    }

    /// Readiness: one libdbus I/O step, then the interest as libdbus now sees it.
    fn io(&self) {
        if self.channel().read_write(Some(Duration::ZERO)).is_err() {
            self.close();
        } else {
            self.sync();
        }
        self.announcer.data_remains();
    }

    fn sync(&self) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let interest = self.channel().watch();
        let _ = self.watches.toggle(&self.read, interest.read);
        let _ = self.watches.toggle(&self.write, interest.write);
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.watches.remove(&self.read);
            let _ = self.watches.remove(&self.write);
        }
    }
}

impl Source for ChannelSource {
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
        self.inner.announcer.set_function(function);
    }

    fn dispatch_status(&self) -> DispatchStatus {
        self.inner.announcer.believed()
    }

    /// Flushes queued output, then runs the crate's callbacks for every queued message
    /// (`process_all`).
    fn dispatch(&self) -> DispatchStatus {
        let inner = &self.inner;
        let Some(_processing) = inner.processing.try_lock() else {
            return inner.announcer.complete(); // the running call drains the queue
        };
        inner.announcer.begin();
        // The watch handlers read; here only output queued by a send (on any thread) needs
        // flushing, so a dispatch with nothing to send costs no `poll(2)`.
        if !inner.closed.load(Ordering::Acquire)
            && inner.channel().has_messages_to_send()
            && inner.channel().read_write(Some(Duration::ZERO)).is_err()
        {
            inner.close();
        }
        inner.connection.process_all();
        inner.sync();
        // `DataRemains` if a send on another thread, or the I/O of a handler on another
        // thread, queued something since `begin`.
        inner.announcer.answer(DispatchStatus::Complete)
    }
}

impl fmt::Debug for ChannelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSource")
            .field("read", &self.inner.read)
            .field("write", &self.inner.write)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
