//! `Waker`: how another thread interrupts a loop blocked in its poll.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

/// An fd that becomes readable when woken: an eventfd on Linux, a socket pair elsewhere.
pub(crate) struct Waker {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    event: nix::sys::eventfd::EventFd,
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pair: (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use nix::sys::eventfd::{EfdFlags, EventFd};
            let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
            Ok(Waker {
                event: EventFd::from_flags(flags)?,
            })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let pair = std::os::unix::net::UnixStream::pair()?;
            pair.0.set_nonblocking(true)?;
            pair.1.set_nonblocking(true)?;
            Ok(Waker { pair })
        }
    }

    /// The fd to poll for readability.
    pub(crate) fn fd(&self) -> RawFd {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            self.event.as_raw_fd()
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            self.pair.0.as_raw_fd()
        }
    }

    /// Makes the fd readable. A wake that finds it readable already is merged with it.
    pub(crate) fn wake(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // EAGAIN means the counter is saturated: the loop is woken anyway.
            let _ = self.event.write(1);
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            use std::io::Write;
            let _ = (&self.pair.1).write(&[1]);
        }
    }

    /// Consumes pending wakes so the fd stops being readable.
    pub(crate) fn reset(&self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let _ = self.event.read();
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            use std::io::Read;
            let mut buf = [0u8; 64];
            while matches!((&self.pair.0).read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}
