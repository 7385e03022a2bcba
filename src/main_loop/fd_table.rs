//! `FdTable`: the loop's watches merged per fd (C18), kept in step with the poller.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use slab::Slab;

use super::poller::Poller;
use crate::flags::WatchFlags;
use crate::watch::Watch;

struct FdEntry {
    fd: RawFd,
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
    fn sync(&mut self, poller: &Poller, token: usize) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let (fd, token) = (self.fd, token as u64);
        let want = self.interest();
        match (self.registered, want.is_empty()) {
            (None, true) => {}
            (None, false) => {
                poller.register(fd, token, want)?;
                self.registered = Some(want);
            }
            (Some(_), true) => {
                self.registered = None;
                poller.deregister(fd)?;
            }
            (Some(now), false) if now != want => {
                poller.reregister(fd, token, want)?;
                self.registered = Some(want);
            }
            (Some(_), false) => {}
        }
        Ok(())
    }
}

/// Every watch the loop polls, one entry per fd. Entries live in a slab whose keys are the
/// poller tokens, so a readiness report finds its watches by index; the fd map is used only
/// when watches come and go.
#[derive(Default)]
pub(crate) struct FdTable {
    entries: Slab<FdEntry>,
    by_fd: HashMap<RawFd, usize>,
    dropped: usize,
}

impl FdTable {
    /// Adds `watch`, registering its fd if that changes the fd's interest.
    pub(crate) fn add(&mut self, poller: &Poller, watch: &Watch) -> io::Result<()> {
        let fd = watch
            .fd()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "watch was removed"))?;
        let key = match self.by_fd.get(&fd) {
            Some(&key) => key,
            None => {
                let key = self.entries.insert(FdEntry {
                    fd,
                    watches: Vec::new(),
                    registered: None,
                    closed: false,
                });
                self.by_fd.insert(fd, key);
                key
            }
        };
        let entry = &mut self.entries[key];
        entry.watches.push(watch.clone());
        if let Err(error) = entry.sync(poller, key) {
            // Refused: the watch is not tracked (C8), and the table is as it was.
            entry.watches.pop();
            if entry.watches.is_empty() {
                self.entries.remove(key);
                self.by_fd.remove(&fd);
            }
            return Err(error);
        }
        Ok(())
    }

    /// Removes `watch`; the fd is deregistered when its last watch goes.
    pub(crate) fn remove(&mut self, poller: &Poller, watch: &Watch) {
        let Some(key) = watch.fd().and_then(|fd| self.by_fd.get(&fd).copied()) else {
            return;
        };
        let entry = &mut self.entries[key];
        entry.watches.retain(|w| w != watch);
        if entry.watches.is_empty() {
            let entry = self.entries.remove(key);
            self.by_fd.remove(&entry.fd);
            if entry.registered.is_some() {
                if let Err(e) = poller.deregister(entry.fd) {
                    warn(entry.fd, "deregister", &e);
                }
            }
        } else {
            self.refresh(poller, key);
        }
    }

    /// Re-syncs `watch`'s fd after its enabled state changed.
    pub(crate) fn toggled(&mut self, poller: &Poller, watch: &Watch) {
        if let Some(key) = watch.fd().and_then(|fd| self.by_fd.get(&fd).copied()) {
            self.refresh(poller, key);
        }
    }

    fn refresh(&mut self, poller: &Poller, key: usize) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if let Err(e) = entry.sync(poller, key) {
            warn(entry.fd, "update", &e);
            self.drop_fd(poller, key);
        }
    }

    /// Stops polling a registration whose fd was found closed, with a warning (C15).
    pub(crate) fn drop_fd(&mut self, poller: &Poller, key: usize) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let fd = entry.fd;
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

    /// The enabled watches of registration `key`, each paired with `condition`, appended to
    /// `out`.
    pub(crate) fn ready_watches(
        &self,
        key: usize,
        condition: WatchFlags,
        out: &mut Vec<(Watch, WatchFlags)>,
    ) {
        if let Some(entry) = self.entries.get(key) {
            out.extend(
                entry
                    .watches
                    .iter()
                    .filter(|w| w.is_enabled())
                    .map(|w| (w.clone(), condition)),
            );
        }
    }

    /// How many fds are registered with the poller.
    pub(crate) fn registered(&self) -> usize {
        self.entries
            .iter()
            .filter(|(_, e)| e.registered.is_some())
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
