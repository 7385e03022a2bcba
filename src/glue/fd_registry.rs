//! `FdRegistry`: the watches of a glue merged into one host registration per fd (C18).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::RawFd;

use slab::Slab;

use super::file_identity::FileIdentity;
use super::recheck::Recheck;
use super::registrar::Registrar;
use super::token::Token;
use crate::delivery::Delivery;
use crate::flags::WatchFlags;
use crate::watch::Watch;

/// Every watch a glue was given, merged per fd into one host-loop registration (C18), with
/// the bookkeeping every glue otherwise repeats and gets wrong.
///
/// The glue keeps one `FdRegistry` per host loop (behind its own lock) and forwards its
/// [`WatchFunctions`](crate::WatchFunctions) calls to [`add`](Self::add),
/// [`remove`](Self::remove) and [`toggled`](Self::toggled), passing a [`Registrar`] that
/// executes what the registry decides on the host loop. When the host loop reports an fd
/// ready, the glue calls [`ready`](Self::ready) with the [`Token`] it was given, releases its
/// lock, and calls [`Watch::handle`] for each watch it got back (C11).
///
/// What the registry takes care of:
///
/// * **One registration per fd** (C18), for the union of what the fd's *enabled* watches want
///   (C9): epoll, mio, tokio's `AsyncFd` and libuv accept an fd only once.
/// * **Cheap toggling.** A registration is widened at once when an enabled watch wants more,
///   but narrowed lazily: at [`flush`](Self::flush) (call it before the host loop blocks, if
///   it has such a point) or when a report arrives that no enabled watch wants. An fd whose
///   watches are all disabled stays registered until it reports something, and is
///   deregistered then: so a watch switched off and on between two waits costs no system call
///   (libvirt does that for every RPC), and a disabled fd that hangs up costs one report, not
///   a busy loop (epoll reports errors and hang-ups whatever the interest).
/// * **Recycled fd numbers** (C15 broken by a producer). The file's identity (`fstat` device
///   and inode) is remembered at registration. A watch joining an fd that now names another
///   file — its producer closed it without removing its watches, and the number was reused —
///   starts a new registration; the old watches are stale and never delivered to again. A
///   registration the host forgot (`ENOENT` on modify) is re-registered if the file is the
///   same. A closed fd (`EBADF`, `POLLNVAL`: [`closed`](Self::closed)) is dropped. Each of
///   these is warned about once per fd, on standard error.
/// * **Removed and disabled watches never polled again**, even when the glue missed the
///   `remove` or `toggled` call (a wrapper around it panicked, say): [`ready`](Self::ready)
///   reads each watch's live state, and [`report`](Self::report) acts on what
///   [`Watch::handle`] answered.
/// * **Stale reports ignored**: a token names a slot and a generation, so a report queued for
///   a registration that has since been dropped reaches nobody.
///
/// # Examples
///
/// Two watches on one socket become one registration, which follows their enabled state:
///
/// ```
/// use std::collections::HashMap;
/// use std::io;
/// use std::os::fd::{AsRawFd, RawFd};
/// use std::os::unix::net::UnixStream;
/// use loopglue::glue::{FdRegistry, Registrar, Token};
/// use loopglue::{Watch, WatchFlags};
///
/// // A host loop that records what it is told.
/// #[derive(Default)]
/// struct Host(HashMap<RawFd, WatchFlags>);
/// impl Registrar for Host {
///     type Registration = ();
///     fn register(&mut self, fd: RawFd, _: Token, interest: WatchFlags) -> io::Result<()> {
///         self.0.insert(fd, interest);
///         Ok(())
///     }
///     fn reregister(&mut self, _: &mut (), fd: RawFd, _: Token, interest: WatchFlags) -> io::Result<()> {
///         self.0.insert(fd, interest);
///         Ok(())
///     }
///     fn deregister(&mut self, _: (), fd: RawFd, _: Token) {
///         self.0.remove(&fd);
///     }
/// }
///
/// let (socket, _peer) = UnixStream::pair()?;
/// let fd = socket.as_raw_fd();
/// let read = Watch::new(fd, WatchFlags::READABLE, |_| {});
/// let write = Watch::new_disabled(fd, WatchFlags::WRITABLE, |_| {});
///
/// let mut host = Host::default();
/// let mut registry = FdRegistry::new();
/// registry.add(&read, &mut host)?;
/// registry.add(&write, &mut host)?;
/// assert_eq!(host.0[&fd], WatchFlags::READABLE); // one registration, enabled watches only
///
/// // The host loop reports the fd readable and writable: only the read watch is handed back.
/// let token = registry.token_of(fd).unwrap();
/// let mut ready = Vec::new();
/// registry.ready(token, WatchFlags::READABLE | WatchFlags::WRITABLE, &mut host, &mut ready);
/// assert_eq!(ready, [(read.clone(), WatchFlags::READABLE | WatchFlags::WRITABLE)]);
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FdRegistry<R = ()> {
    entries: Slab<Entry<R>>,
    /// Live entries by fd number; retired ones are only in `retired`.
    by_fd: HashMap<RawFd, usize>,
    /// Entries no longer polled (fd closed, or its number now names another file) whose
    /// watches the producer has not removed yet.
    retired: Vec<usize>,
    /// Entries that may be registered for more than their enabled watches want.
    dirty: Vec<usize>,
    next_generation: u32,
    dropped: usize,
}

struct Entry<R> {
    fd: RawFd,
    identity: FileIdentity,
    generation: u32,
    watches: Vec<Watch>,
    /// Further adds of a watch already in `watches`, each undone by one remove: two function
    /// sets of the same loop both hold the watch while one replaces the other (C7 calls the
    /// new `add` before the old `remove`).
    extra: Vec<Watch>,
    /// The host's registration and what it reports; `None` while not registered.
    registration: Option<(R, WatchFlags)>,
    /// What the enabled watches wanted when last looked at.
    wanted: WatchFlags,
    live: bool,
    dirty: bool,
}

/// Why a registration is being brought in line with its watches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Watches or their enabled state changed: widen now, narrow later.
    Change,
    /// A watch joined: re-validate the registration with the host even if nothing changed.
    Join,
    /// Before the host blocks: narrow what is wider than wanted (but keep an fd nobody wants).
    Flush,
    /// The host reported something: narrow now, and drop an fd nobody wants.
    Report,
}

/// How a registration failed: the entry cannot be used any more, or the host refused.
enum Failure {
    Closed,
    Reused,
    Refused(io::Error),
}

impl Failure {
    fn into_error(self, fd: RawFd) -> io::Error {
        match self {
            Failure::Refused(e) => e,
            unusable => unusable.to_error(fd),
        }
    }

    /// The error to report while the failure itself is kept (to retire the entry with).
    fn to_error(&self, fd: RawFd) -> io::Error {
        match self {
            Failure::Closed => io::Error::from_raw_os_error(nix::libc::EBADF),
            Failure::Reused => io::Error::new(
                io::ErrorKind::NotFound,
                format!("fd {fd} now names another file"),
            ),
            Failure::Refused(e) => io::Error::new(e.kind(), e.to_string()),
        }
    }
}

fn classify(error: io::Error) -> Failure {
    if error.raw_os_error() == Some(nix::libc::EBADF) {
        Failure::Closed
    } else {
        Failure::Refused(error)
    }
}

fn wanted_by(watches: &[Watch]) -> WatchFlags {
    watches
        .iter()
        .filter(|w| w.is_enabled())
        .fold(WatchFlags::empty(), |acc, w| acc | w.flags())
}

impl<R> FdRegistry<R> {
    /// An empty registry.
    pub fn new() -> FdRegistry<R> {
        FdRegistry {
            entries: Slab::new(),
            by_fd: HashMap::new(),
            retired: Vec::new(),
            dirty: Vec::new(),
            next_generation: 0,
            dropped: 0,
        }
    }

    /// Starts tracking `watch` — the glue's [`WatchFunctions::add`](crate::WatchFunctions::add).
    /// Registers its fd, or widens or re-validates the fd's registration, as needed.
    ///
    /// # Errors
    ///
    /// `EBADF` if the fd is closed; otherwise what the host refused (`EPERM` for a regular
    /// file under epoll, say). The watch is then not tracked (C8), and every registration is
    /// as it was — return the error from the glue's `add`.
    pub fn add<H>(&mut self, watch: &Watch, host: &mut H) -> io::Result<()>
    where
        H: Registrar<Registration = R>,
    {
        let fd = watch
            .fd()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the watch was removed"))?;
        let identity = match FileIdentity::of(fd) {
            Ok(identity) => identity,
            Err(error) => {
                // Closed: watches still on it were never removed before the close (C15).
                if let Some(&key) = self.by_fd.get(&fd) {
                    self.retire(key, Failure::Closed, host);
                }
                return Err(error);
            }
        };
        if let Some(&key) = self.by_fd.get(&fd) {
            if self.entries[key].identity == identity {
                return self.join(key, watch, host);
            }
            // The producer of the old watches closed their fd without removing them, and the
            // number now names another file: those watches must not hear about this one.
            self.retire(key, Failure::Reused, host);
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = self.entries.insert(Entry {
            fd,
            identity,
            generation,
            watches: vec![watch.clone()],
            extra: Vec::new(),
            registration: None,
            wanted: WatchFlags::empty(),
            live: true,
            dirty: false,
        });
        if let Err(failure) = self.sync(key, Sync::Change, host) {
            if let Some((registration, _)) = self.entries.remove(key).registration {
                host.deregister(registration, fd, Token::new(key, generation));
            }
            return Err(failure.into_error(fd));
        }
        self.by_fd.insert(fd, key);
        Ok(())
    }

    fn join<H>(&mut self, key: usize, watch: &Watch, host: &mut H) -> io::Result<()>
    where
        H: Registrar<Registration = R>,
    {
        let entry = &mut self.entries[key];
        if entry.watches.contains(watch) {
            entry.extra.push(watch.clone());
            return Ok(());
        }
        entry.watches.push(watch.clone());
        match self.sync(key, Sync::Join, host) {
            Ok(()) => Ok(()),
            Err(failure) => {
                let fd = self.entries[key].fd;
                self.entries[key].watches.pop();
                let error = match failure {
                    Failure::Refused(e) => e,
                    unusable => {
                        let error = unusable.to_error(fd);
                        self.retire(key, unusable, host);
                        error
                    }
                };
                Err(error)
            }
        }
    }

    /// Stops tracking `watch` — the glue's
    /// [`WatchFunctions::remove`](crate::WatchFunctions::remove). The fd is deregistered when
    /// its last watch goes, before this returns, so the producer may close it (C15).
    pub fn remove<H>(&mut self, watch: &Watch, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        if let Some(key) = self.find(watch) {
            self.forget(key, watch, host);
        }
    }

    /// Follows `watch`'s new enabled state — the glue's
    /// [`WatchFunctions::toggled`](crate::WatchFunctions::toggled). Widens the registration at
    /// once (and tells [`Registrar::widened`]); narrowing waits for [`flush`](Self::flush) or
    /// the next report.
    pub fn toggled<H>(&mut self, watch: &Watch, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        if let Some(key) = self.find(watch) {
            if self.entries[key].live {
                self.resync(key, Sync::Change, host);
            }
        }
    }

    /// The host loop reported `condition` on the registration `token`: appends to `out` each
    /// enabled watch of the fd that asked for part of it (errors and hang-ups go to every
    /// enabled watch), paired with `condition`, and returns how many. Call
    /// [`Watch::handle`] on them after releasing the lock around the registry.
    ///
    /// Reports for a dropped registration are ignored. Watches removed meanwhile are dropped
    /// here; a report that no enabled watch wants narrows the registration, and one on an fd
    /// with no enabled watch deregisters it (so a disabled fd cannot make the loop spin).
    pub fn ready<H>(
        &mut self,
        token: Token,
        condition: WatchFlags,
        host: &mut H,
        out: &mut Vec<(Watch, WatchFlags)>,
    ) -> usize
    where
        H: Registrar<Registration = R>,
    {
        let Some(key) = self.live_key(token) else {
            return 0;
        };
        // The common case in one pass: every watch live, some enabled watch wants part of the
        // report, nothing unwanted in it.
        let before = out.len();
        let entry = &self.entries[key];
        let mut wanted = WatchFlags::empty();
        let mut removed = false;
        for watch in &entry.watches {
            removed |= watch.is_removed();
            if watch.is_enabled() {
                let flags = watch.flags();
                wanted |= flags;
                if condition.intersects(flags | WatchFlags::ALWAYS) {
                    out.push((watch.clone(), condition));
                }
            }
        }
        let registered = entry.registration.as_ref().map(|(_, r)| *r);
        let unwanted = !(condition & WatchFlags::INTEREST & !wanted).is_empty();
        if !removed && !wanted.is_empty() && (!unwanted || registered == Some(wanted)) {
            // Remember what was wanted, so that a later enable is seen to widen it even if
            // a disable in between never reached the registry.
            self.entries[key].wanted = wanted;
            return out.len() - before;
        }
        out.truncate(before);
        self.ready_slow(key, condition, host, out)
    }

    /// `ready` when the entry needs attention first: removed watches, nothing wanted, or a
    /// registration to narrow.
    fn ready_slow<H>(
        &mut self,
        key: usize,
        condition: WatchFlags,
        host: &mut H,
        out: &mut Vec<(Watch, WatchFlags)>,
    ) -> usize
    where
        H: Registrar<Registration = R>,
    {
        if self.prune(key, host) {
            return 0;
        }
        let entry = &self.entries[key];
        let wanted = wanted_by(&entry.watches);
        let registered = entry.registration.as_ref().map(|(_, r)| *r);
        let unwanted = !(condition & WatchFlags::INTEREST & !wanted).is_empty();
        if wanted.is_empty() || (unwanted && registered != Some(wanted)) {
            self.resync(key, Sync::Report, host);
            if wanted.is_empty() {
                return 0;
            }
        }
        let Some(entry) = self.entries.get(key).filter(|e| e.live) else {
            return 0;
        };
        let before = out.len();
        for watch in &entry.watches {
            if watch.is_enabled() && condition.intersects(watch.flags() | WatchFlags::ALWAYS) {
                out.push((watch.clone(), condition));
            }
        }
        out.len() - before
    }

    /// Acts on what [`Watch::handle`] answered for a watch that [`ready`](Self::ready)
    /// handed out: [`Delivery::Removed`] drops the watch (the glue missed its `remove`, or it
    /// is on its way), [`Delivery::Disabled`] narrows the registration at once (the glue missed
    /// or raced a `toggled`). Other answers need nothing.
    pub fn report<H>(&mut self, token: Token, watch: &Watch, delivery: Delivery, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        let Some(key) = self.key(token) else {
            return;
        };
        match delivery {
            Delivery::Removed => self.forget(key, watch, host),
            Delivery::Disabled if self.entries[key].live => {
                self.resync(key, Sync::Report, host);
            }
            _ => {}
        }
    }

    /// The host loop found the fd of `token` closed (`POLLNVAL`, `G_IO_NVAL`, `EBADF`): stops
    /// polling it, with a warning, until every watch on it is removed (C15).
    pub fn closed<H>(&mut self, token: Token, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        if let Some(key) = self.live_key(token) {
            self.retire(key, Failure::Closed, host);
        }
    }

    /// The host loop refused `token`'s registration after the registrar had accepted it — a
    /// host that applies registrations later, on its own thread (calloop's loop handle is
    /// single-threaded), learns of `EEXIST` or `EPERM` only then: stops polling the fd, with a
    /// warning naming `error`, until every watch on it is removed. A registration the host
    /// refuses inside [`Registrar::register`] needs no such call: the registry sees the error.
    pub fn refused<H>(&mut self, token: Token, error: io::Error, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        if let Some(key) = self.live_key(token) {
            self.retire(key, Failure::Refused(error), host);
        }
    }

    /// Narrows every registration that is wider than what its enabled watches want (an fd
    /// whose watches are all disabled keeps its registration until it reports something).
    /// Call it before the host loop blocks, if it has such a point; without it narrowing
    /// happens when an unwanted report arrives.
    pub fn flush<H>(&mut self, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        while let Some(key) = self.dirty.pop() {
            match self.entries.get_mut(key) {
                Some(entry) if entry.dirty => {
                    entry.dirty = false;
                    if entry.live {
                        self.resync(key, Sync::Flush, host);
                    }
                }
                _ => {}
            }
        }
    }

    /// For edge-triggered host loops (C17): after the handlers of `token` ran, polls the fd
    /// without blocking for what its enabled watches want. If [`Recheck::again`], run the
    /// handlers again (after yielding to the host loop); clear cached readiness only for
    /// [`Recheck::clear`]. A closed fd is dropped as by [`closed`](Self::closed). If the poll
    /// itself fails (short of `ENOMEM`, it does not), nothing is found: wait for the next edge.
    pub fn recheck<H>(&mut self, token: Token, host: &mut H) -> Recheck
    where
        H: Registrar<Registration = R>,
    {
        let Some((key, fd, wanted)) = self.recheck_target(token) else {
            return Recheck::nothing();
        };
        match Recheck::poll(fd, wanted) {
            Ok(found) => self.rechecked(key, found, host),
            Err(_) => Recheck::nothing(),
        }
    }

    /// [`recheck`](Self::recheck) of every token in `tokens` in one `poll(2)`: for an
    /// edge-triggered glue that re-checks the fds of a whole round together. Appends
    /// `(token, recheck)` to `out` for each token whose registration is live and whose enabled
    /// watches want something; closed fds are dropped as by [`closed`](Self::closed) (and
    /// appended as [`Recheck::is_closed`]).
    ///
    /// # Errors
    ///
    /// What `poll(2)` reports (short of `ENOMEM`, it does not); nothing is appended or
    /// dropped then: wait for the next edge.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::{self, Write};
    /// use std::os::fd::{AsRawFd, RawFd};
    /// use std::os::unix::net::UnixStream;
    /// use loopglue::glue::{FdRegistry, Registrar, Token};
    /// use loopglue::{Watch, WatchFlags};
    ///
    /// struct Host; // an edge-triggered host loop, such as mio's
    /// impl Registrar for Host {
    ///     type Registration = ();
    ///     fn register(&mut self, _: RawFd, _: Token, _: WatchFlags) -> io::Result<()> {
    ///         Ok(())
    ///     }
    ///     fn reregister(&mut self, _: &mut (), _: RawFd, _: Token, _: WatchFlags) -> io::Result<()> {
    ///         Ok(())
    ///     }
    ///     fn deregister(&mut self, _: (), _: RawFd, _: Token) {}
    /// }
    ///
    /// let (idle, _peer) = UnixStream::pair()?;
    /// let (busy, mut writer) = UnixStream::pair()?;
    /// let mut registry = FdRegistry::new();
    /// for socket in [&idle, &busy] {
    ///     let watch = Watch::new(socket.as_raw_fd(), WatchFlags::READABLE, |_| {});
    ///     registry.add(&watch, &mut Host)?;
    /// }
    /// writer.write_all(b"left behind by a handler that read part")?;
    /// // The handlers of both fds ran this round: which must run again?
    /// let token = |socket: &UnixStream| registry.token_of(socket.as_raw_fd()).unwrap();
    /// let round = [token(&idle), token(&busy)];
    /// let mut found = Vec::new();
    /// registry.recheck_many(&round, &mut Host, &mut found)?;
    /// let again: Vec<Token> = found.iter().filter(|(_, r)| r.again()).map(|(t, _)| *t).collect();
    /// assert_eq!(again, [round[1]]);
    /// # Ok::<(), io::Error>(())
    /// ```
    pub fn recheck_many<H>(
        &mut self,
        tokens: &[Token],
        host: &mut H,
        out: &mut Vec<(Token, Recheck)>,
    ) -> io::Result<()>
    where
        H: Registrar<Registration = R>,
    {
        let mut targets = Vec::with_capacity(tokens.len());
        let mut polled = Vec::with_capacity(tokens.len());
        for &token in tokens {
            if let Some((key, fd, wanted)) = self.recheck_target(token) {
                targets.push((token, key));
                polled.push((fd, wanted));
            }
        }
        if polled.is_empty() {
            return Ok(());
        }
        let mut found = Vec::with_capacity(polled.len());
        Recheck::poll_many(&polled, &mut found)?;
        for ((token, key), found) in targets.into_iter().zip(found) {
            let found = self.rechecked(key, found, host);
            out.push((token, found));
        }
        Ok(())
    }

    /// What to poll for `token`'s re-check: its entry, fd and what its enabled watches want;
    /// `None` if it is not live or nothing is wanted.
    fn recheck_target(&mut self, token: Token) -> Option<(usize, RawFd, WatchFlags)> {
        let key = self.live_key(token)?;
        let entry = &mut self.entries[key];
        let wanted = wanted_by(&entry.watches);
        // As in `ready`: a direction no longer wanted must count as new when wanted again,
        // so that `Registrar::widened` asks for the re-check an edge-triggered loop needs.
        entry.wanted = wanted;
        (!wanted.is_empty()).then_some((key, entry.fd, wanted))
    }

    /// Drops entry `key` if its re-check found the fd closed.
    fn rechecked<H>(&mut self, key: usize, found: Recheck, host: &mut H) -> Recheck
    where
        H: Registrar<Registration = R>,
    {
        if found.is_closed() {
            self.retire(key, Failure::Closed, host);
        }
        found
    }

    /// Deregisters every fd and forgets every watch — for a glue that is shutting down while
    /// watches are still installed.
    pub fn clear<H>(&mut self, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        for (key, entry) in std::mem::take(&mut self.entries) {
            if let Some((registration, _)) = entry.registration {
                host.deregister(registration, entry.fd, Token::new(key, entry.generation));
            }
        }
        self.by_fd.clear();
        self.retired.clear();
        self.dirty.clear();
    }

    /// The token of `fd`'s live registration entry, if the registry tracks watches on it.
    pub fn token_of(&self, fd: RawFd) -> Option<Token> {
        let key = *self.by_fd.get(&fd)?;
        Some(Token::new(key, self.entries[key].generation))
    }

    /// The host's registration value of a live `token` (what [`Registrar::register`]
    /// returned), while the fd is registered — for a glue that polls its registrations
    /// itself, such as tokio's `AsyncFd` per fd, and so needs no side table keyed by token.
    pub fn registration(&self, token: Token) -> Option<&R> {
        let key = self.live_key(token)?;
        self.entries[key].registration.as_ref().map(|(r, _)| r)
    }

    /// The fd a live `token` stands for.
    pub fn fd(&self, token: Token) -> Option<RawFd> {
        self.live_key(token).map(|key| self.entries[key].fd)
    }

    /// How many fds are registered with the host loop now.
    pub fn registered(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| e.registration.is_some())
            .count()
    }

    /// How many fds the registry has stopped polling because they were closed or reused while
    /// watches still used them (C15).
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// How many watches the registry tracks, stale ones included.
    pub fn watches(&self) -> usize {
        self.entries.iter().map(|(_, e)| e.watches.len()).sum()
    }

    fn key(&self, token: Token) -> Option<usize> {
        let entry = self.entries.get(token.index())?;
        (entry.generation == token.generation()).then_some(token.index())
    }

    fn live_key(&self, token: Token) -> Option<usize> {
        self.key(token).filter(|&key| self.entries[key].live)
    }

    /// The entry holding `watch`: the live one of its fd, else a retired one.
    fn find(&self, watch: &Watch) -> Option<usize> {
        if let Some(&key) = watch.fd().and_then(|fd| self.by_fd.get(&fd)) {
            if self.entries[key].watches.contains(watch) {
                return Some(key);
            }
        }
        self.retired
            .iter()
            .copied()
            .find(|&key| self.entries[key].watches.contains(watch))
    }

    /// Drops `watch` from entry `key`, and the entry with its registration if it was the last.
    fn forget<H>(&mut self, key: usize, watch: &Watch, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        let entry = &mut self.entries[key];
        if let Some(i) = entry.extra.iter().position(|w| w == watch) {
            entry.extra.swap_remove(i); // another add of it still stands
            return;
        }
        let before = entry.watches.len();
        entry.watches.retain(|w| w != watch);
        if entry.watches.len() == before {
            return;
        }
        if entry.watches.is_empty() {
            self.free(key, host);
        } else if entry.live {
            self.resync(key, Sync::Change, host);
        }
    }

    /// Drops watches whose producer removed them (the glue may have missed the `remove`).
    /// True if the entry went with them.
    fn prune<H>(&mut self, key: usize, host: &mut H) -> bool
    where
        H: Registrar<Registration = R>,
    {
        let entry = &mut self.entries[key];
        if !entry.watches.iter().any(Watch::is_removed) {
            return false;
        }
        entry.watches.retain(|w| !w.is_removed());
        entry.extra.retain(|w| !w.is_removed());
        if entry.watches.is_empty() {
            self.free(key, host);
            return true;
        }
        false
    }

    fn free<H>(&mut self, key: usize, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        let entry = self.entries.remove(key);
        if let Some((registration, _)) = entry.registration {
            host.deregister(registration, entry.fd, Token::new(key, entry.generation));
        }
        if self.by_fd.get(&entry.fd) == Some(&key) {
            self.by_fd.remove(&entry.fd);
        }
        self.retired.retain(|&k| k != key);
    }

    /// `sync`, retiring the entry if the host can no longer use its fd.
    fn resync<H>(&mut self, key: usize, why: Sync, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        if let Err(failure) = self.sync(key, why, host) {
            self.retire(key, failure, host);
        }
    }

    /// Brings entry `key`'s registration in line with its enabled watches, as `why` allows,
    /// and tells the host when they want more than before (edge-triggered loops re-check).
    fn sync<H>(&mut self, key: usize, why: Sync, host: &mut H) -> Result<(), Failure>
    where
        H: Registrar<Registration = R>,
    {
        let entry = &self.entries[key];
        let grew = wanted_by(&entry.watches) & !entry.wanted;
        self.apply(key, why, host)?;
        if !grew.is_empty() {
            let entry = &self.entries[key];
            if entry.registration.is_some() {
                let token = Token::new(key, entry.generation);
                host.widened(entry.fd, token, entry.wanted);
            }
        }
        Ok(())
    }

    fn apply<H>(&mut self, key: usize, why: Sync, host: &mut H) -> Result<(), Failure>
    where
        H: Registrar<Registration = R>,
    {
        let entry = &mut self.entries[key];
        let token = Token::new(key, entry.generation);
        let fd = entry.fd;
        let wanted = wanted_by(&entry.watches);
        entry.wanted = wanted;
        match entry.registration.as_mut() {
            None if wanted.is_empty() => return Ok(()),
            None => {
                let registration = host.register(fd, token, wanted).map_err(classify)?;
                entry.registration = Some((registration, wanted));
            }
            Some((registration, interest)) => {
                let target = match why {
                    Sync::Report if wanted.is_empty() => None,
                    Sync::Join if wanted.is_empty() => Some(*interest),
                    _ if wanted.is_empty() => return Ok(()),
                    Sync::Join | Sync::Flush | Sync::Report => Some(wanted),
                    Sync::Change if interest.contains(wanted) => {
                        if *interest != wanted && !entry.dirty {
                            entry.dirty = true;
                            self.dirty.push(key);
                        }
                        return Ok(());
                    }
                    Sync::Change => Some(wanted),
                };
                match target {
                    None => {
                        if let Some((registration, _)) = entry.registration.take() {
                            host.deregister(registration, fd, token);
                        }
                        return Ok(());
                    }
                    Some(target) if target == *interest && why != Sync::Join => return Ok(()),
                    Some(target) => match host.reregister(registration, fd, token, target) {
                        Ok(()) => *interest = target,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            self.reregister_forgotten(key, target, host)?
                        }
                        Err(e) => return Err(classify(e)),
                    },
                }
            }
        }
        Ok(())
    }

    /// The host forgot entry `key`'s fd (`ENOENT`): the fd was closed, and its number may name
    /// another file now. Registers it again only if it is still the same file.
    fn reregister_forgotten<H>(
        &mut self,
        key: usize,
        interest: WatchFlags,
        host: &mut H,
    ) -> Result<(), Failure>
    where
        H: Registrar<Registration = R>,
    {
        let entry = &mut self.entries[key];
        let token = Token::new(key, entry.generation);
        match FileIdentity::of(entry.fd) {
            Ok(identity) if identity == entry.identity => {}
            Ok(_) => return Err(Failure::Reused),
            Err(_) => return Err(Failure::Closed),
        }
        if let Some((old, _)) = entry.registration.take() {
            host.deregister(old, entry.fd, token);
        }
        let registration = host.register(entry.fd, token, interest).map_err(classify)?;
        entry.registration = Some((registration, interest));
        Ok(())
    }

    /// Stops polling entry `key` for good, with one warning; its watches stay until removed.
    fn retire<H>(&mut self, key: usize, failure: Failure, host: &mut H)
    where
        H: Registrar<Registration = R>,
    {
        let entry = &mut self.entries[key];
        if !entry.live {
            return;
        }
        entry.live = false;
        let (fd, token) = (entry.fd, Token::new(key, entry.generation));
        let watches = entry.watches.len();
        if let Some((registration, _)) = entry.registration.take() {
            host.deregister(registration, fd, token);
        }
        if self.by_fd.get(&fd) == Some(&key) {
            self.by_fd.remove(&fd);
        }
        self.retired.push(key);
        self.dropped += 1;
        super::warn(&match failure {
            Failure::Closed => format!(
                "fd {fd} was closed while {watches} watch(es) still used it; it is no longer \
                 polled (remove a watch before closing its fd: C15)"
            ),
            Failure::Reused => format!(
                "fd {fd} now names another file, but {watches} watch(es) of the file it named \
                 before were never removed; they are no longer delivered to (remove a watch \
                 before closing its fd: C15)"
            ),
            Failure::Refused(e) => {
                format!("cannot update the registration of fd {fd} ({e}); it is no longer polled")
            }
        });
    }
}

impl<R> Default for FdRegistry<R> {
    fn default() -> FdRegistry<R> {
        FdRegistry::new()
    }
}

impl<R> fmt::Debug for FdRegistry<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FdRegistry")
            .field("fds", &self.by_fd.len())
            .field("registered", &self.registered())
            .field("retired", &self.retired.len())
            .field("dropped", &self.dropped)
            .finish()
    }
}
