//! `Attachments`: the sources attached to one loop, attached all-or-nothing and detached by
//! identity.

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

use super::dispatch_queue::{DispatchKey, DispatchQueue};
use crate::error::Error;
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::object::next_id;
use crate::source::Source;
use crate::wakeup::WakeupFn;

/// What a toolkit-based glue leaves in a source's [`SourceData`](crate::SourceData) while the
/// source is attached: which table holds it, and under which key. One slot type for every
/// glue built on the toolkit, so a source cannot be attached to two loops at once (its lists
/// take one function set each).
struct Mark {
    table: u64,
    /// Told apart from a mark left by a concurrent attach of the same source.
    nonce: u64,
    /// Filled in once the slot exists; `None` while an attach is in progress.
    key: Mutex<Option<DispatchKey>>,
}

/// The sources attached to one host loop: attach all-or-nothing, "already attached" refused,
/// detach by identity whatever handle is given, and dispatch scheduling (through a
/// [`DispatchQueue`]) — the `attach` / `detach` that every glue otherwise writes.
///
/// [`attach`](Self::attach) takes the glue's function sets and wakeup function, installs
/// them, then the dispatch-status function, and reads the status once (C16). It either
/// installs everything or nothing: a refused registration (`EEXIST`, `EBADF`, `EPERM`) or a
/// panic in the middle leaves no function installed and no trace in the table, and comes
/// back as a clear [`io::Error`] (or the panic). [`detach`](Self::detach) finds the source by
/// its [`SourceData`](crate::SourceData) identity — a clone of the handle that was attached
/// does — and finishes every step even if a free-data panics.
///
/// The table holds attached sources strongly (attaching keeps a source running) and installs
/// nothing that holds the table, so there is no cycle; the glue's functions should hold its
/// loop weakly (NOTES 13). Dropping the table detaches every source still attached.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use loopglue::glue::Attachments;
/// use loopglue::testing::{MockLoop, SocketPeer};
///
/// let mock = MockLoop::new(); // stands in for the host loop's watch and timeout glue
/// let attachments = Attachments::new(|| { /* wake the host loop */ });
/// let (ours, _theirs) = std::os::unix::net::UnixStream::pair()?;
/// let peer = SocketPeer::new(ours, 1024)?;
///
/// attachments.attach(
///     Arc::new(peer.clone()),
///     mock.watch_functions(),
///     mock.timeout_functions(),
///     None,
/// )?;
/// assert_eq!(mock.watches().len(), 2);
/// // Twice is refused, and changes nothing.
/// let again = attachments.attach(
///     Arc::new(peer.clone()),
///     mock.watch_functions(),
///     mock.timeout_functions(),
///     None,
/// );
/// assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
///
/// // Any clone detaches it.
/// assert!(attachments.detach(&peer.clone())?);
/// assert!(mock.watches().is_empty());
/// assert!(attachments.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Attachments {
    id: u64,
    queue: DispatchQueue,
}

impl Attachments {
    /// An empty table; `wake` is called whenever an attached source has work to dispatch, as
    /// for [`DispatchQueue::new`].
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Attachments {
        Attachments {
            id: next_id(),
            queue: DispatchQueue::new(wake),
        }
    }

    /// The dispatch queue of the attached sources: call [`DispatchQueue::run`] from the host
    /// loop, and check [`DispatchQueue::is_pending`] before it blocks.
    pub fn queue(&self) -> &DispatchQueue {
        &self.queue
    }

    /// Attaches `source`: installs `watches` and `timeouts` (together: C7 per list, and the
    /// watch set is uninstalled again if the timeout set is refused), then `wakeup` and a
    /// dispatch-status function, then reads the dispatch status once (C16).
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::AlreadyExists`] if the source is attached here or to another loop
    /// whose glue is built on this toolkit; otherwise the glue's refusal of a watch or
    /// timeout (`EBADF` for a closed fd, `EPERM` for a regular file under epoll, `EEXIST`…).
    /// Nothing is installed then.
    ///
    /// # Panics
    ///
    /// If the source's or the glue's code panics, after undoing everything as for an error.
    pub fn attach(
        &self,
        source: Arc<dyn Source>,
        watches: Box<dyn WatchFunctions>,
        timeouts: Box<dyn TimeoutFunctions>,
        wakeup: Option<WakeupFn>,
    ) -> io::Result<DispatchKey> {
        let nonce = next_id();
        let mark = source.data().get_or_insert_with(|| Mark {
            table: self.id,
            nonce,
            key: Mutex::new(None),
        });
        if mark.nonce != nonce {
            let here = if mark.table == self.id {
                "this loop"
            } else {
                "another loop"
            };
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the source is already attached to {here}; detach it first"),
            ));
        }
        let key = self.queue.insert(Arc::clone(&source));
        *mark.key.lock() = Some(key);

        let installed = panic::catch_unwind(AssertUnwindSafe(|| -> Result<(), Error> {
            source.set_functions(watches, timeouts)?;
            source.set_wakeup_main_function(wakeup);
            self.queue.watch(key);
            Ok(())
        }));
        match installed {
            Ok(Ok(())) => Ok(key),
            Ok(Err(refused)) => {
                // `set_functions` installed nothing (C7), and nothing else was installed yet.
                self.forget(&source, key, nonce);
                Err(io::Error::from(refused))
            }
            Err(payload) => {
                // Where it stopped is unknown: uninstall everything.
                let _ = catch_all(|| {
                    let _ = uninstall(&*source);
                });
                self.forget(&source, key, nonce);
                panic::resume_unwind(payload);
            }
        }
    }

    /// Drops the slot and the mark of an attach that did not complete.
    fn forget(&self, source: &Arc<dyn Source>, key: DispatchKey, nonce: u64) {
        let slot = self.queue.remove(key);
        unmark(&**source, nonce);
        drop(slot);
    }

    /// Detaches `source` — any handle of it: found by its
    /// [`SourceData`](crate::SourceData) identity — by uninstalling every function
    /// [`attach`](Self::attach) installed, and releases the table's reference. Returns whether
    /// it was attached here; a source attached elsewhere is left alone.
    ///
    /// Every step runs even if one panics (a free-data, say); the first panic is resumed at
    /// the end, with the source detached.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] (from [`Error::Reentrant`]) when called from inside
    /// one of the source's own watch-list callbacks (a glue function or free-data, not a
    /// watch handler): nothing is changed then; detach once the callback returns.
    pub fn detach(&self, source: &dyn Source) -> io::Result<bool> {
        let Some((key, nonce)) = self.key_of(source) else {
            return Ok(false);
        };
        // The one step that can be refused goes first, so a refusal changes nothing.
        let mut first_panic = None;
        match panic::catch_unwind(AssertUnwindSafe(|| source.set_watch_functions(None))) {
            Ok(Err(refused)) => return Err(io::Error::from(refused.into_error())),
            Ok(Ok(())) => {}
            Err(payload) => first_panic = Some(payload),
        }
        let mut refused = None;
        let rest = catch_all(|| {
            if let Err(e) = uninstall(source) {
                refused = Some(e);
            }
        });
        first_panic = first_panic.or(rest);
        let slot = self.queue.remove(key);
        unmark(source, nonce);
        if let Some(payload) = catch_all(move || drop(slot)) {
            first_panic.get_or_insert(payload);
        }
        if let Some(payload) = first_panic {
            panic::resume_unwind(payload);
        }
        match refused {
            Some(e) => Err(io::Error::from(e)),
            None => Ok(true),
        }
    }

    fn key_of(&self, source: &dyn Source) -> Option<(DispatchKey, u64)> {
        let mark = source.data().get::<Mark>()?;
        if mark.table != self.id {
            return None;
        }
        // `None`: an attach still in progress on another thread.
        let key = (*mark.key.lock())?;
        Some((key, mark.nonce))
    }

    /// Whether `source` (any handle of it) is attached here.
    pub fn contains(&self, source: &dyn Source) -> bool {
        self.key_of(source)
            .is_some_and(|(key, _)| self.queue.get(key).is_some())
    }

    /// How many sources are attached.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no source is attached.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Detaches every source, as [`detach`](Self::detach) does each — for a loop that is
    /// shutting down.
    ///
    /// # Panics
    ///
    /// After every source is detached, if one of the steps panicked.
    pub fn detach_all(&self) {
        let mut first_panic = None;
        for source in self.queue.drain() {
            let outcome = catch_all(|| {
                let _ = source.set_watch_functions(None);
                let _ = uninstall(&*source);
                if source
                    .data()
                    .get::<Mark>()
                    .is_some_and(|m| m.table == self.id)
                {
                    drop(source.data().take::<Mark>());
                }
            });
            first_panic = first_panic.or(outcome);
            first_panic = first_panic.or(catch_all(move || drop(source)));
        }
        if let Some(payload) = first_panic {
            panic::resume_unwind(payload);
        }
    }
}

/// Takes the mark that the attach `nonce` left on `source`, unless another attach's mark is
/// there now.
fn unmark(source: &dyn Source, nonce: u64) {
    if source
        .data()
        .get::<Mark>()
        .is_some_and(|m| m.nonce == nonce)
    {
        drop(source.data().take::<Mark>());
    }
}

/// Uninstalls what `attach` installs besides the watch set, each step even if an earlier one
/// panicked (the first panic is resumed at the end).
fn uninstall(source: &dyn Source) -> Result<(), Error> {
    let mut first_panic = None;
    let mut refused = None;
    first_panic = first_panic.or(catch_all(|| {
        if let Err(e) = source.set_watch_functions(None) {
            refused.get_or_insert(e.into_error());
        }
    }));
    first_panic = first_panic.or(catch_all(|| {
        if let Err(e) = source.set_timeout_functions(None) {
            refused.get_or_insert(e.into_error());
        }
    }));
    first_panic = first_panic.or(catch_all(|| source.set_wakeup_main_function(None)));
    first_panic = first_panic.or(catch_all(|| source.set_dispatch_status_function(None)));
    if let Some(payload) = first_panic {
        panic::resume_unwind(payload);
    }
    refused.map_or(Ok(()), Err)
}

fn catch_all(f: impl FnOnce()) -> Option<Box<dyn std::any::Any + Send>> {
    panic::catch_unwind(AssertUnwindSafe(f)).err()
}

impl Drop for Attachments {
    /// Detaches every source still attached, so that none keeps functions of a loop that is
    /// gone, nor a mark that would refuse its next attach. A panic in a step is swallowed
    /// here (there is no caller to resume it in).
    fn drop(&mut self) {
        if !self.queue.is_empty() {
            let _ = panic::catch_unwind(AssertUnwindSafe(|| self.detach_all()));
        }
    }
}

impl fmt::Debug for Attachments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachments")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .finish()
    }
}
