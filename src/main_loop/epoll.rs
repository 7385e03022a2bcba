//! `EpollPoller`: the Linux backend.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use super::poller::{borrow, timeout_ms, Ready};
use crate::flags::WatchFlags;

/// How many readiness reports one wait collects; more wait for the next round.
const BATCH: usize = 1024;

pub(crate) struct EpollPoller {
    epoll: Epoll,
}

fn events_for(interest: WatchFlags) -> EpollFlags {
    // Level-triggered (no EPOLLET): a producer may consume only part of what is ready (C17).
    let mut flags = EpollFlags::empty();
    flags.set(EpollFlags::EPOLLIN, interest.contains(WatchFlags::READABLE));
    flags.set(
        EpollFlags::EPOLLOUT,
        interest.contains(WatchFlags::WRITABLE),
    );
    flags
}

fn condition_of(events: EpollFlags) -> WatchFlags {
    let mut condition = WatchFlags::empty();
    condition.set(WatchFlags::READABLE, events.contains(EpollFlags::EPOLLIN));
    condition.set(WatchFlags::WRITABLE, events.contains(EpollFlags::EPOLLOUT));
    condition.set(WatchFlags::ERROR, events.contains(EpollFlags::EPOLLERR));
    condition.set(
        WatchFlags::HANGUP,
        events.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLRDHUP),
    );
    condition
}

impl EpollPoller {
    pub(crate) fn new() -> io::Result<EpollPoller> {
        Ok(EpollPoller {
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
        })
    }

    pub(crate) fn register(&self, fd: RawFd, token: u64, interest: WatchFlags) -> io::Result<()> {
        let event = EpollEvent::new(events_for(interest), token);
        // SAFETY: see `borrow`: fds of registered watches are open (C15).
        match self.epoll.add(unsafe { borrow(fd) }, event) {
            Ok(()) => Ok(()),
            // The kernel still has this (file, fd) from a registration the loop lost track of
            // (a stale entry of a recycled number): take it over.
            Err(Errno::EEXIST) => self.reregister(fd, token, interest),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn reregister(&self, fd: RawFd, token: u64, interest: WatchFlags) -> io::Result<()> {
        let mut event = EpollEvent::new(events_for(interest), token);
        // SAFETY: as in `register`.
        self.epoll.modify(unsafe { borrow(fd) }, &mut event)?;
        Ok(())
    }

    pub(crate) fn deregister(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: as in `register`.
        match self.epoll.delete(unsafe { borrow(fd) }) {
            // Closed (and so dropped by the kernel) or never added: nothing to undo.
            Ok(()) | Err(Errno::EBADF) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits into `events` (the runner's buffer: no lock of its own), then appends to `out`.
    pub(crate) fn wait(
        &self,
        events: &mut Vec<EpollEvent>,
        out: &mut Vec<Ready>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        if events.len() < BATCH {
            events.resize(BATCH, EpollEvent::empty());
        }
        let n = match self.epoll.wait(events, timeout_ms(timeout)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        out.extend(events[..n].iter().map(|event| Ready {
            token: event.data(),
            condition: condition_of(event.events()),
            closed: false,
        }));
        Ok(())
    }
}
