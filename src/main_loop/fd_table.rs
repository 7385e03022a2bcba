//! `FdTable`: the loop's watches merged per fd (C18), kept in step with the poller.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use super::poller::Poller;
use crate::flags::WatchFlags;
use crate::watch::Watch;

#[derive(Default)]
struct FdEntry {
    watches: Vec<Watch>,
    /// What the poller was last told for this fd; `None` while not registered.
    registered: Option<WatchFlags>,
    /// The fd was found closed (EBADF, POLLNVAL): never registered again until every watch on
    /// it is removed, so a producer that broke C15 costs a warning, not a busy loop.
    closed: bool,
}

impl FdEntry {
    /// The union of what the enabled watches ask for.
    fn interest(&self) -> WatchFlags {
        self.watches
            .iter()
            .filter(|w| w.is_enabled())
            .fold(WatchFlags::empty(), |acc, w| acc | w.flags())
    }

    /// Brings the poller's registration in line with the enabled watches. epoll reports
    /// errors and hang-ups even for an empty interest set, so an fd with no enabled watch is
    /// deregistered rather than registered for nothing.
    fn sync(&mut self, poller: &Poller, fd: RawFd) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let want = self.interest();
        match (self.registered, want.is_empty()) {
            (None, true) => {}
            (None, false) => {
                poller.register(fd, want)?;
                self.registered = Some(want);
            }
            (Some(_), true) => {
                self.registered = None;
                poller.deregister(fd)?;
            }
            (Some(now), false) if now != want => {
                poller.reregister(fd, want)?;
                self.registered = Some(want);
            }
            (Some(_), false) => {}
        }
        Ok(())
    }
}

/// Every watch the loop polls, by fd.
#[derive(Default)]
pub(crate) struct FdTable {
    entries: HashMap<RawFd, FdEntry>,
    dropped: usize,
}

impl FdTable {
    /// Adds `watch`, registering its fd if that changes the fd's interest.
    pub(crate) fn add(&mut self, poller: &Poller, watch: &Watch) -> io::Result<()> {
        let fd = watch
            .fd()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "watch was removed"))?;
        let entry = self.entries.entry(fd).or_default();
        entry.watches.push(watch.clone());
        if let Err(error) = entry.sync(poller, fd) {
            // Refused: the watch is not tracked (C8), and the table is as it was.
            entry.watches.pop();
            if entry.watches.is_empty() {
                self.entries.remove(&fd);
            }
            return Err(error);
        }
        Ok(())
    }

    /// Removes `watch`; the fd is deregistered when its last watch goes.
    pub(crate) fn remove(&mut self, poller: &Poller, watch: &Watch) {
        let Some(fd) = watch.fd() else { return };
        let Some(entry) = self.entries.get_mut(&fd) else {
            return;
        };
        entry.watches.retain(|w| w != watch);
        if entry.watches.is_empty() {
            if entry.registered.is_some() {
                if let Err(e) = poller.deregister(fd) {
                    warn(fd, "deregister", &e);
                }
            }
            self.entries.remove(&fd);
        } else {
            self.refresh(poller, fd);
        }
    }

    /// Re-syncs `watch`'s fd after its enabled state changed.
    pub(crate) fn toggled(&mut self, poller: &Poller, watch: &Watch) {
        if let Some(fd) = watch.fd() {
            self.refresh(poller, fd);
        }
    }

    fn refresh(&mut self, poller: &Poller, fd: RawFd) {
        let Some(entry) = self.entries.get_mut(&fd) else {
            return;
        };
        if let Err(e) = entry.sync(poller, fd) {
            warn(fd, "update", &e);
            self.drop_fd(poller, fd);
        }
    }

    /// Stops polling an fd found closed, with a warning (C15).
    pub(crate) fn drop_fd(&mut self, poller: &Poller, fd: RawFd) {
        let Some(entry) = self.entries.get_mut(&fd) else {
            return;
        };
        if entry.closed {
            return;
        }
        eprintln!(
            "loopglue: warning: fd {fd} is closed but {} watch(es) still use it; it is no longer \
             polled (remove a watch before closing its fd)",
            entry.watches.len()
        );
        entry.closed = true;
        if entry.registered.take().is_some() {
            let _ = poller.deregister(fd);
        }
        self.dropped += 1;
    }

    /// The enabled watches on `fd`, appended to `out`.
    pub(crate) fn enabled_watches(&self, fd: RawFd, out: &mut Vec<Watch>) {
        if let Some(entry) = self.entries.get(&fd) {
            out.extend(entry.watches.iter().filter(|w| w.is_enabled()).cloned());
        }
    }

    /// How many fds are registered with the poller.
    pub(crate) fn registered(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.registered.is_some())
            .count()
    }

    /// How many fds were dropped as closed.
    pub(crate) fn dropped(&self) -> usize {
        self.dropped
    }
}

fn warn(fd: RawFd, what: &str, error: &io::Error) {
    eprintln!("loopglue: warning: cannot {what} fd {fd}: {error}");
}
