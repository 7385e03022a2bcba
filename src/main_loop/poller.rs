//! `Poller`: the OS readiness interface the loop runs on, epoll or poll(2).

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use nix::poll::PollTimeout;

use crate::flags::WatchFlags;

#[cfg(any(target_os = "linux", target_os = "android"))]
use super::epoll::EpollPoller;
use super::poll::PollPoller;

/// Which readiness interface a [`MainLoop`](super::MainLoop) uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// epoll(7): one registration per fd in the kernel, `O(ready)` per wait. Linux only.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Epoll,
    /// poll(2): the interest set is passed on every wait, `O(registered)` per wait. Every Unix.
    Poll,
}

impl Default for Backend {
    /// epoll where there is epoll, poll(2) elsewhere.
    fn default() -> Backend {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            Backend::Epoll
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            Backend::Poll
        }
    }
}

/// One registration's readiness from a wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ready {
    /// The token the fd was registered with: an index, so a report costs no lookup by fd.
    pub(crate) token: u64,
    pub(crate) condition: WatchFlags,
    /// The fd is not open (`POLLNVAL`): it must be dropped from the set, not handled (C15).
    pub(crate) closed: bool,
}

/// The runner's buffer for one wait's raw events (kept across iterations).
#[derive(Default)]
pub(crate) struct Events {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    epoll: Vec<nix::sys::epoll::EpollEvent>,
}

pub(crate) enum Poller {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    Epoll(EpollPoller),
    Poll(PollPoller),
}

impl Poller {
    pub(crate) fn new(backend: Backend) -> io::Result<Poller> {
        Ok(match backend {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Backend::Epoll => Poller::Epoll(EpollPoller::new()?),
            Backend::Poll => Poller::Poll(PollPoller::default()),
        })
    }

    pub(crate) fn backend(&self) -> Backend {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Poller::Epoll(_) => Backend::Epoll,
            Poller::Poll(_) => Backend::Poll,
        }
    }

    /// Starts reporting `interest` (plus errors and hang-ups) on `fd`, tagged with `token`.
    pub(crate) fn register(&self, fd: RawFd, token: u64, interest: WatchFlags) -> io::Result<()> {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Poller::Epoll(p) => p.register(fd, token, interest),
            Poller::Poll(p) => p.set(fd, token, interest),
        }
    }

    pub(crate) fn reregister(&self, fd: RawFd, token: u64, interest: WatchFlags) -> io::Result<()> {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Poller::Epoll(p) => p.reregister(fd, token, interest),
            Poller::Poll(p) => p.set(fd, token, interest),
        }
    }

    pub(crate) fn deregister(&self, fd: RawFd) -> io::Result<()> {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Poller::Epoll(p) => p.deregister(fd),
            Poller::Poll(p) => {
                p.unset(fd);
                Ok(())
            }
        }
    }

    /// Waits up to `timeout` (`None`: forever) and appends what is ready to `out`. An
    /// interrupted wait returns with nothing.
    pub(crate) fn wait(
        &self,
        events: &mut Events,
        out: &mut Vec<Ready>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        match self {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Poller::Epoll(p) => p.wait(&mut events.epoll, out, timeout),
            Poller::Poll(p) => {
                let _ = events;
                p.wait(out, timeout)
            }
        }
    }
}

/// A wait timeout in whole milliseconds, rounded up so the loop never wakes just before a
/// deadline and spins until it passes.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> PollTimeout {
    match timeout {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000);
            u32::try_from(ms)
                .ok()
                .and_then(|ms| PollTimeout::try_from(ms).ok())
                .unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Borrows a watch's fd for one system call.
///
/// # Safety
///
/// `fd` must stay open for the call. The loop only passes fds of watches still registered,
/// and producers remove a watch before closing its fd (C15); an fd closed in breach of that
/// makes the kernel answer EBADF or POLLNVAL, which the loop handles — it is never
/// dereferenced in user space.
// SAFETY: an `unsafe fn` so that each call site states why its fd is open (see above).
pub(crate) unsafe fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the caller's promise above.
    unsafe { BorrowedFd::borrow_raw(fd) }
}
