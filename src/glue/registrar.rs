//! `Registrar`: the three operations a host loop performs for an `FdRegistry`.

use std::io;
use std::os::fd::RawFd;

use super::token::Token;
use crate::flags::WatchFlags;

/// What a host loop does when an [`FdRegistry`](super::FdRegistry) tells it to: register an
/// fd, change what it is registered for, or forget it. The registry decides *when* (merging
/// watches per fd, following their enabled state, re-validating recycled fds); the registrar
/// only executes, so each host loop's part is three short methods.
///
/// The registry calls these while the glue holds whatever lock guards the registry; they are
/// the glue's own code, never the producer's, so that is allowed by C11 — but they must not
/// call back into a [`WatchList`](crate::WatchList).
///
/// `interest` is never empty: it is [`READABLE`](WatchFlags::READABLE) and/or
/// [`WRITABLE`](WatchFlags::WRITABLE). Errors and hang-ups are always wanted (C1): report them
/// whatever the interest. An fd that nobody wants is deregistered, not registered for nothing.
///
/// # Errors the registry understands
///
/// * `EBADF` from any method: the fd is closed. The registry stops using it, warns once, and
///   never registers it again until a watch on a new file arrives (C15).
/// * [`io::ErrorKind::NotFound`] (epoll's `ENOENT`) from [`reregister`](Self::reregister): the
///   host forgot the fd (it was closed and its number reused). If the fd still names the same
///   file, the registry calls [`register`](Self::register) instead; if not, the old watches
///   are stale and are no longer delivered to.
/// * Anything else from `register` during an `add` is the glue's refusal of the watch (C8);
///   later it makes the registry stop polling the fd, with a warning.
///
/// A host that can tell "already registered" (epoll's `EEXIST` on `ADD`) should take the
/// registration over with its modify operation inside `register`: the registry only asks to
/// register an fd that it believes is not registered.
///
/// # Examples
///
/// A registrar over a plain interest table, as a poll(2) loop keeps it:
///
/// ```
/// use std::collections::HashMap;
/// use std::io;
/// use std::os::fd::RawFd;
/// use loopglue::glue::{Registrar, Token};
/// use loopglue::WatchFlags;
///
/// #[derive(Default)]
/// struct PollSet(HashMap<RawFd, (Token, WatchFlags)>);
///
/// impl Registrar for PollSet {
///     type Registration = ();
///     fn register(&mut self, fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<()> {
///         self.0.insert(fd, (token, interest));
///         Ok(())
///     }
///     fn reregister(&mut self, _: &mut (), fd: RawFd, token: Token, interest: WatchFlags) -> io::Result<()> {
///         self.0.insert(fd, (token, interest));
///         Ok(())
///     }
///     fn deregister(&mut self, _: (), fd: RawFd, _token: Token) {
///         self.0.remove(&fd);
///     }
/// }
/// ```
pub trait Registrar {
    /// What the host loop hands back for a registration and needs again to change or remove
    /// it: `()` for epoll or mio (the fd and token suffice), a `glib::SourceId`, a calloop
    /// `RegistrationToken`, a tokio task handle. The registry keeps it per fd.
    type Registration;

    /// Starts reporting `interest` (plus errors and hang-ups) on `fd`, tagged with `token`.
    ///
    /// # Errors
    ///
    /// Why the host loop cannot take the fd (see the trait documentation).
    fn register(
        &mut self,
        fd: RawFd,
        token: Token,
        interest: WatchFlags,
    ) -> io::Result<Self::Registration>;

    /// Changes what `fd`'s registration reports to `interest`.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] if the host has no such registration any more; anything
    /// else if it cannot change it (see the trait documentation).
    fn reregister(
        &mut self,
        registration: &mut Self::Registration,
        fd: RawFd,
        token: Token,
        interest: WatchFlags,
    ) -> io::Result<()>;

    /// Stops reporting `fd`. Errors are the registrar's to ignore: the fd may already be
    /// closed (then the kernel forgot it) — the registry has stopped using it either way.
    fn deregister(&mut self, registration: Self::Registration, fd: RawFd, token: Token);

    /// The enabled watches of `fd` now want `interest`, which includes directions they did
    /// not want before. A level-triggered loop ignores this (the default): the registration
    /// already covers `interest` and reports whatever is ready. An edge-triggered glue must
    /// re-check `token` now ([`FdRegistry::recheck`](super::FdRegistry::recheck)): an edge
    /// that passed while the direction was unwanted will not come again (C17).
    fn widened(&mut self, fd: RawFd, token: Token, interest: WatchFlags) {
        let _ = (fd, token, interest);
    }
}
