//! `Backoff`: how long to wait before retrying after libdbus ran out of memory.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// The first retry after an out-of-memory report.
const FIRST: Duration = Duration::from_millis(10);
/// The longest wait between retries (libdbus's own loop waits 500 ms).
const LONGEST: Duration = Duration::from_secs(1);

/// Exponential backoff for `DBUS_DISPATCH_NEED_MEMORY` and `dbus_watch_handle` returning
/// FALSE: 10 ms, doubling to 1 s, back to 10 ms after a success. A retry goes through a
/// timeout of the glue's loop, so an allocator that keeps failing costs a wakeup per
/// interval, never a busy loop.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Mutex<Duration>,
    /// Whether a failure raised `next` above the first delay: a success (every dispatch)
    /// reads only this.
    raised: AtomicBool,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: Mutex::new(FIRST),
            raised: AtomicBool::new(false),
        }
    }

    /// Another failure: the delay before the next try.
    pub(crate) fn failed(&self) -> Duration {
        let mut next = self.next.lock();
        let delay = *next;
        *next = (delay * 2).min(LONGEST);
        self.raised.store(true, Ordering::Release);
        delay
    }

    /// A success: the next failure starts from the shortest delay again.
    pub(crate) fn succeeded(&self) {
        if self.raised.load(Ordering::Acquire) && self.raised.swap(false, Ordering::AcqRel) {
            *self.next.lock() = FIRST;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_ceiling_and_resets_on_success() {
        let backoff = Backoff::new();
        let delays: Vec<_> = (0..9).map(|_| backoff.failed()).collect();
        assert_eq!(delays[0], FIRST);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), LONGEST);
        backoff.succeeded();
        assert_eq!(backoff.failed(), FIRST);
    }
}
