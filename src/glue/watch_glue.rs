//! `WatchGlue`: the watch functions of a glue that keeps its watches in an `FdRegistry`.

use std::fmt;
use std::io;
use std::sync::{Arc, Weak};

use super::fd_registry::FdRegistry;
use super::registrar::Registrar;
use crate::functions::WatchFunctions;
use crate::watch::Watch;

/// A glue that keeps its watches in an [`FdRegistry`] behind a lock of its own: say how to
/// reach the registry ([`with_fds`](Self::with_fds)), and [`watch_functions`](Self::watch_functions)
/// is the glue's [`WatchFunctions`] — the `add`, `remove` and `toggled` that every such glue
/// otherwise writes out, forwarding each call to the registry.
///
/// The functions hold the glue weakly: a source holds its functions, and the glue holds the
/// source while it is attached, so a strong reference would be a cycle. Once the glue is gone,
/// `add` refuses with [`io::ErrorKind::NotConnected`] and `remove` and `toggled` do nothing.
///
/// # Examples
///
/// ```
/// use std::io;
/// use std::os::fd::{AsRawFd, RawFd};
/// use std::sync::{Arc, Mutex};
/// use loopglue::glue::{FdRegistry, Registrar, Token, WatchGlue};
/// use loopglue::{Watch, WatchFlags, WatchList};
///
/// /// The host loop: a count of registered fds stands in for it.
/// struct Host<'a>(&'a mut usize);
/// impl Registrar for Host<'_> {
///     type Registration = ();
///     fn register(&mut self, _: RawFd, _: Token, _: WatchFlags) -> io::Result<()> {
///         *self.0 += 1;
///         Ok(())
///     }
///     fn reregister(&mut self, _: &mut (), _: RawFd, _: Token, _: WatchFlags) -> io::Result<()> {
///         Ok(())
///     }
///     fn deregister(&mut self, _: (), _: RawFd, _: Token) {
///         *self.0 -= 1;
///     }
/// }
///
/// #[derive(Default)]
/// struct Loop(Mutex<(FdRegistry, usize)>);
/// impl WatchGlue for Loop {
///     type Registration = ();
///     type Host<'a> = Host<'a>;
///     fn with_fds<T>(
///         self: &Arc<Self>,
///         f: impl FnOnce(&mut FdRegistry, &mut Host<'_>) -> T,
///     ) -> T {
///         let (fds, registered) = &mut *self.0.lock().unwrap();
///         f(fds, &mut Host(registered))
///         // (a real loop would wake itself here if it blocks on another thread)
///     }
/// }
///
/// let glue = Arc::new(Loop::default());
/// let list = WatchList::new();
/// list.set_functions(Some(Loop::watch_functions(&glue))).unwrap();
/// let (socket, _peer) = std::os::unix::net::UnixStream::pair()?;
/// let watch = Watch::new(socket.as_raw_fd(), WatchFlags::READABLE, |_| {});
/// list.add(&watch)?;
/// assert_eq!(glue.0.lock().unwrap().1, 1);
/// list.remove(&watch)?;
/// assert_eq!(glue.0.lock().unwrap().1, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait WatchGlue: Send + Sync + Sized + 'static {
    /// What the glue's registrar hands back for a registration.
    type Registration;

    /// The glue's registrar, borrowing what it needs while the glue's lock is held.
    type Host<'a>: Registrar<Registration = Self::Registration>
    where
        Self: 'a;

    /// What the glue is called in the error `add` returns once the glue is gone: "the
    /// {GONE} was dropped".
    const GONE: &'static str = "glue";

    /// Runs `f` on the glue's registry and registrar, under the glue's lock; then, with the
    /// lock released, does what a change may need (wake a loop that blocks on another thread,
    /// schedule the re-check an edge-triggered loop needs after [`Registrar::widened`]).
    fn with_fds<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut FdRegistry<Self::Registration>, &mut Self::Host<'_>) -> T,
    ) -> T;

    /// The glue's watch functions: each call forwarded to the registry through
    /// [`with_fds`](Self::with_fds), the glue held weakly.
    fn watch_functions(glue: &Arc<Self>) -> Box<dyn WatchFunctions> {
        Box::new(RegistryWatches(Arc::downgrade(glue)))
    }
}

/// What [`WatchGlue::watch_functions`] returns.
struct RegistryWatches<G>(Weak<G>);

impl<G: WatchGlue> WatchFunctions for RegistryWatches<G> {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        let glue = self.0.upgrade().ok_or_else(|| gone(G::GONE))?;
        glue.with_fds(|fds, host| fds.add(watch, host))
    }

    fn remove(&mut self, watch: &Watch) {
        if let Some(glue) = self.0.upgrade() {
            glue.with_fds(|fds, host| fds.remove(watch, host));
        }
    }

    fn toggled(&mut self, watch: &Watch) {
        if let Some(glue) = self.0.upgrade() {
            glue.with_fds(|fds, host| fds.toggled(watch, host));
        }
    }
}

impl<G> fmt::Debug for RegistryWatches<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryWatches")
            .field("glue_alive", &(self.0.strong_count() > 0))
            .finish()
    }
}

/// The error a glue's `add` returns once the glue named `what` is gone.
pub(super) fn gone(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        format!("the {what} was dropped"),
    )
}
