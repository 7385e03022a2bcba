//! `Recheck`: whether an fd is still ready after its handlers ran, for edge-triggered loops.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::flags::WatchFlags;

/// What a zero-timeout `poll(2)` of one fd found, after its handlers ran: the level-triggered
/// re-check an edge-triggered glue (tokio, mio, calloop in edge mode) needs so that a producer
/// which reads only part of what is ready per `handle` (libdbus reads 2 KiB) never stalls with
/// data pending (C17).
///
/// Get one from [`FdRegistry::recheck`](super::FdRegistry::recheck), which polls for what the
/// fd's enabled watches want, or from [`Recheck::poll`] for any fd.
///
/// * [`again`](Self::again): run the fd's handlers again with [`ready`](Self::ready) — after
///   yielding to the host loop, so one busy fd cannot starve the others.
/// * [`clear`](Self::clear): the directions that were polled and found not ready; the glue may
///   clear its cached readiness for these (tokio's `clear_ready_matching`) and wait for the
///   next edge. Never clear a direction that is not in `clear`: it was not polled (no enabled
///   watch wants it), and an edge that passed meanwhile would be lost when it is wanted again.
///
/// # Examples
///
/// ```
/// use std::io::Write;
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
/// use loopglue::glue::Recheck;
/// use loopglue::WatchFlags;
///
/// let (a, mut b) = UnixStream::pair()?;
/// let idle = Recheck::poll(a.as_raw_fd(), WatchFlags::READABLE)?;
/// assert!(!idle.again());
/// assert_eq!(idle.clear(), WatchFlags::READABLE);
///
/// b.write_all(b"x")?;
/// let busy = Recheck::poll(a.as_raw_fd(), WatchFlags::READABLE)?;
/// assert!(busy.again());
/// assert_eq!(busy.ready(), WatchFlags::READABLE);
/// assert!(busy.clear().is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Recheck {
    ready: WatchFlags,
    clear: WatchFlags,
    closed: bool,
}

impl Recheck {
    pub(crate) fn nothing() -> Recheck {
        Recheck::default()
    }

    pub(crate) fn closed() -> Recheck {
        Recheck {
            closed: true,
            ..Recheck::default()
        }
    }

    /// Polls `fd` once, without blocking, for `interest` (errors and hang-ups are always
    /// reported). An empty `interest` polls only for errors and hang-ups.
    ///
    /// # Errors
    ///
    /// What `poll(2)` reports (never `EINTR`, which is retried). A closed fd is not an error:
    /// it comes back as [`is_closed`](Self::is_closed).
    pub fn poll(fd: RawFd, interest: WatchFlags) -> io::Result<Recheck> {
        if fd < 0 {
            return Ok(Recheck::closed());
        }
        let events = PollFlags::from_bits_truncate(interest.to_poll_events());
        // SAFETY: poll(2) only reads the fd table; a closed fd comes back as POLLNVAL, which
        // is reported as closed. The borrow lives for this one call.
        let mut fds = [PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, events)];
        poll_now(&mut fds)?;
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        Ok(Recheck::found(interest, revents))
    }

    /// [`poll`](Self::poll) for every `(fd, interest)` of `fds` in one `poll(2)`: appends one
    /// `Recheck` per entry to `out`, in order — for a glue that re-checks all the fds of a
    /// round together, one system call instead of one per fd.
    ///
    /// # Errors
    ///
    /// What `poll(2)` reports (never `EINTR`, which is retried); nothing is appended then.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    /// use loopglue::glue::Recheck;
    /// use loopglue::WatchFlags;
    ///
    /// let (idle, _peer) = UnixStream::pair()?;
    /// let (busy, mut writer) = UnixStream::pair()?;
    /// writer.write_all(b"x")?;
    /// let mut found = Vec::new();
    /// Recheck::poll_many(
    ///     &[(idle.as_raw_fd(), WatchFlags::READABLE), (busy.as_raw_fd(), WatchFlags::READABLE)],
    ///     &mut found,
    /// )?;
    /// assert!(!found[0].again() && found[1].again());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn poll_many(fds: &[(RawFd, WatchFlags)], out: &mut Vec<Recheck>) -> io::Result<()> {
        // A negative number is closed; poll(2) would skip it, and it cannot be borrowed.
        let mut poll_fds: Vec<PollFd<'_>> = fds
            .iter()
            .filter(|(fd, _)| *fd >= 0)
            .map(|&(fd, interest)| {
                let events = PollFlags::from_bits_truncate(interest.to_poll_events());
                // SAFETY: poll(2) only reads the fd table; a closed fd comes back as POLLNVAL,
                // which is reported as closed. The borrows live for this one call.
                PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, events)
            })
            .collect();
        if !poll_fds.is_empty() {
            poll_now(&mut poll_fds)?;
        }
        let mut polled = poll_fds.iter();
        out.extend(fds.iter().map(|&(fd, interest)| {
            if fd < 0 {
                return Recheck::closed();
            }
            let revents = polled
                .next()
                .and_then(PollFd::revents)
                .unwrap_or(PollFlags::empty());
            Recheck::found(interest, revents)
        }));
        Ok(())
    }

    /// What `revents` says of an fd polled for `interest`.
    fn found(interest: WatchFlags, revents: PollFlags) -> Recheck {
        if revents.contains(PollFlags::POLLNVAL) {
            return Recheck::closed();
        }
        let ready = WatchFlags::from_poll_revents(revents.bits());
        Recheck {
            ready,
            clear: interest & WatchFlags::INTEREST & !ready,
            closed: false,
        }
    }

    /// Whether the handlers should run again: something the watches want, or an error or a
    /// hang-up, is still pending.
    pub fn again(&self) -> bool {
        !self.ready.is_empty()
    }

    /// What is still ready: the condition to pass to the handlers' next round.
    pub fn ready(&self) -> WatchFlags {
        self.ready
    }

    /// The directions polled and found not ready: readiness the glue may clear.
    pub fn clear(&self) -> WatchFlags {
        self.clear
    }

    /// The fd is closed (`POLLNVAL`): the registry has dropped it (C15); do not poll it again.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// One `poll(2)` of `fds` that does not block, retried on `EINTR`.
fn poll_now(fds: &mut [PollFd<'_>]) -> io::Result<()> {
    loop {
        match nix::poll::poll(fds, PollTimeout::ZERO) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
