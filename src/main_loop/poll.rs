//! `PollPoller`: the portable poll(2) backend.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use parking_lot::Mutex;

use super::poller::{borrow, timeout_ms, Ready};
use crate::flags::WatchFlags;

/// The interest set, passed whole to every poll(2): a vector (building the pollfd array is
/// one pass) indexed by fd (changing one entry is O(1)).
#[derive(Default)]
pub(crate) struct PollPoller {
    interest: Mutex<InterestSet>,
}

#[derive(Default)]
struct InterestSet {
    entries: Vec<(RawFd, u64, WatchFlags)>,
    index: HashMap<RawFd, usize>,
}

impl PollPoller {
    pub(crate) fn set(&self, fd: RawFd, token: u64, interest: WatchFlags) -> io::Result<()> {
        let mut set = self.interest.lock();
        let set = &mut *set;
        match set.index.get(&fd) {
            Some(&i) => set.entries[i] = (fd, token, interest),
            None => {
                set.index.insert(fd, set.entries.len());
                set.entries.push((fd, token, interest));
            }
        }
        Ok(())
    }

    pub(crate) fn unset(&self, fd: RawFd) {
        let mut set = self.interest.lock();
        let set = &mut *set;
        if let Some(i) = set.index.remove(&fd) {
            set.entries.swap_remove(i);
            if let Some((moved, _, _)) = set.entries.get(i) {
                set.index.insert(*moved, i);
            }
        }
    }

    pub(crate) fn wait(&self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        // Snapshot: registrations made while we block take effect at the next wait, and the
        // loop wakes itself when they are made from another thread.
        let snapshot: Vec<(RawFd, u64, WatchFlags)> = self.interest.lock().entries.clone();
        let mut fds: Vec<PollFd<'_>> = snapshot
            .iter()
            .map(|(fd, _, interest)| {
                let events = PollFlags::from_bits_truncate(interest.to_poll_events());
                // SAFETY: see `borrow`; a closed fd comes back as POLLNVAL, handled below.
                PollFd::new(unsafe { borrow(*fd) }, events)
            })
            .collect();
        match poll(&mut fds, timeout_ms(timeout)) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        for ((_, token, _), pollfd) in snapshot.iter().zip(&fds) {
            let revents = pollfd.revents().unwrap_or(PollFlags::empty());
            if revents.is_empty() {
                continue;
            }
            out.push(Ready {
                token: *token,
                condition: WatchFlags::from_poll_revents(revents.bits()),
                closed: revents.contains(PollFlags::POLLNVAL),
            });
        }
        Ok(())
    }
}
