//! `FileIdentity`: which open file an fd number names, so a recycled number is noticed.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// The device and inode of the file an fd names, from `fstat`. Two different sockets or pipes
/// never share one; files without an inode of their own (eventfd, timerfd, signalfd share the
/// anonymous inode) do, and for those only the host loop's own errors (`ENOENT`, `EBADF`)
/// reveal a recycled number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    /// The identity of what `fd` names now; `EBADF` if it is closed.
    pub(crate) fn of(fd: RawFd) -> io::Result<FileIdentity> {
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
}
