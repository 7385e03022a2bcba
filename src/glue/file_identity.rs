//! `FileIdentity`: which open file an fd number names, so a recycled number is noticed.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// The device and inode of the file an fd names, from `fstat`: what tells a recycled fd
/// number from the file it named before.
///
/// [`FdRegistry`](super::FdRegistry) remembers it for every fd it registers (C15). A
/// [`Registrar`](super::Registrar) whose host loop is shared with other code (a mio `Poll`
/// the application also registers with, a tokio runtime) needs it too: its `deregister`
/// must not deregister by number once the number names another file — a registration the
/// application may have made for it. Take the identity in `register`, and deregister only
/// while [`is_named_by`](Self::is_named_by) the fd.
///
/// Two different sockets or pipes never share an identity; files without an inode of their
/// own (eventfd, timerfd, signalfd share the anonymous inode) do, and for those only the host
/// loop's own errors (`ENOENT`, `EBADF`) reveal a recycled number.
///
/// # Examples
///
/// ```
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
/// use loopglue::glue::FileIdentity;
///
/// let (a, b) = UnixStream::pair()?;
/// let identity = FileIdentity::of(a.as_raw_fd())?;
/// assert!(identity.is_named_by(a.as_raw_fd()));
/// assert!(!identity.is_named_by(b.as_raw_fd()));
///
/// let number = a.as_raw_fd();
/// drop(a);
/// assert!(!identity.is_named_by(number)); // closed (or, by now, another file)
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    /// The identity of the file `fd` names now.
    ///
    /// # Errors
    ///
    /// `EBADF` if `fd` is closed (or negative); what `fstat` reports otherwise.
    pub fn of(fd: RawFd) -> io::Result<FileIdentity> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(nix::libc::EBADF));
        }
        // SAFETY: fstat only reads the fd table entry; a closed or recycled number makes the
        // kernel answer EBADF or describe the new file, never touches memory we own. The
        // borrow lives for this one call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let stat = nix::sys::stat::fstat(fd)?;
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Ok(FileIdentity {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        })
    }

    /// Whether `fd` names this file now: false once it is closed, or its number names
    /// another file.
    pub fn is_named_by(self, fd: RawFd) -> bool {
        FileIdentity::of(fd).is_ok_and(|now| now == self)
    }
}
