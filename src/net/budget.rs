//! `Budget`: one server's cap on the bytes its connections buffer, shared by all of them.
//!
//! What is counted ("reserved"): payload bytes in inbound queues, every partially received
//! frame at its full announced length (reserved when its length prefix arrives, before a byte
//! of it is buffered), bytes in outbound queues, and — for the length of one read call — the
//! most that read could add. The bytes actually buffered never exceed what is reserved.
//!
//! Inbound bytes are admitted only within the cap: a connection that cannot reserve what a
//! read might need reads just up to the next frame's length prefix, then asks for that frame
//! whole; if it does not fit, the connection waits in a FIFO queue with its read watch off
//! until released bytes let it in. Reserving a frame whole before any of it is buffered is
//! what keeps this deadlock-free: a connection never holds half a frame it has no room to
//! finish, and every frame admitted can complete. Outbound bytes are the application's own
//! and are never refused here ([`ConnectionConfig::max_outbound_bytes`] bounds them per
//! connection); they count against the cap, so a server whose replies pile up stops reading
//! requests until they drain.
//!
//! [`ConnectionConfig::max_outbound_bytes`]: super::ConnectionConfig::max_outbound_bytes

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Weak;

use parking_lot::Mutex;

/// A connection waiting for a frame's reservation.
pub(crate) trait BudgetWaiter: Send + Sync {
    /// `bytes` were reserved for the waiter's frame. Returns false if the waiter no longer
    /// wants them (it closed meanwhile); the budget then takes them back.
    fn granted(&self, bytes: usize) -> bool;
}

struct Waiter {
    need: usize,
    connection: Weak<dyn BudgetWaiter>,
}

/// The shared cap; see the module documentation.
pub(crate) struct Budget {
    cap: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    /// How many connections wait in `queue`: checked without the lock on every release.
    waiting: AtomicUsize,
    pauses: AtomicU64,
    queue: Mutex<VecDeque<Waiter>>,
}

impl Budget {
    pub(crate) fn new(cap: usize) -> Budget {
        Budget {
            cap,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            pauses: AtomicU64::new(0),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes reserved right now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes ever reserved at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// How many times a connection had to wait for room.
    pub(crate) fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }

    fn note_peak(&self, used: usize) {
        if used > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(used, Ordering::Relaxed);
        }
    }

    /// Reserves `bytes` if they fit under the cap, ignoring the queue.
    fn take_unchecked(&self, bytes: usize) -> bool {
        let mut current = self.used.load(Ordering::SeqCst);
        loop {
            let Some(next) = current.checked_add(bytes).filter(|next| *next <= self.cap) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(current, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.note_peak(next);
                    return true;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Reserves `bytes` if they fit and nobody waits ahead (FIFO: a small request never
    /// overtakes a waiting large one).
    pub(crate) fn try_take(&self, bytes: usize) -> bool {
        self.waiting.load(Ordering::SeqCst) == 0 && self.take_unchecked(bytes)
    }

    /// Reserves `bytes` unconditionally: output the application queued.
    pub(crate) fn charge(&self, bytes: usize) {
        if bytes > 0 {
            let used = self.used.fetch_add(bytes, Ordering::SeqCst) + bytes;
            self.note_peak(used);
        }
    }

    /// Gives `bytes` back, and lets waiting connections in if they now fit.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::SeqCst);
        // Pairs with the increment in `wait`: either this load sees the waiter, or the
        // waiter's own attempt sees the bytes just released.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.grant();
        }
    }

    /// Reserves `need` bytes now if it can, else queues `connection` for them and returns
    /// false; [`BudgetWaiter::granted`] is called once they are reserved for it.
    pub(crate) fn wait(&self, need: usize, connection: Weak<dyn BudgetWaiter>) -> bool {
        let mut queue = self.queue.lock();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        if queue.is_empty() && self.take_unchecked(need) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return true;
        }
        queue.push_back(Waiter { need, connection });
        self.pauses.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Reserves for the waiters at the head of the queue while they fit, then tells them —
    /// with no lock held, since telling one re-enables its read watch through glue code.
    fn grant(&self) {
        let granted: Vec<Waiter> = {
            let mut queue = self.queue.lock();
            let mut granted = Vec::new();
            while let Some(front) = queue.front() {
                if !self.take_unchecked(front.need) {
                    break;
                }
                granted.extend(queue.pop_front());
                self.waiting.fetch_sub(1, Ordering::SeqCst);
            }
            granted
        };
        for waiter in granted {
            let taken = waiter
                .connection
                .upgrade()
                .is_some_and(|connection| connection.granted(waiter.need));
            if !taken {
                self.release(waiter.need);
            }
        }
    }
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("cap", &self.cap)
            .field("used", &self.used())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Recorder(Mutex<Vec<usize>>);

    impl BudgetWaiter for Recorder {
        fn granted(&self, bytes: usize) -> bool {
            self.0.lock().push(bytes);
            true
        }
    }

    #[test]
    fn waiters_are_let_in_first_come_first_served() {
        let budget = Budget::new(100);
        assert!(budget.try_take(60));
        let big = Arc::new(Recorder(Mutex::new(Vec::new())));
        let small = Arc::new(Recorder(Mutex::new(Vec::new())));
        let weak: Weak<dyn BudgetWaiter> = Arc::downgrade(&big) as Weak<dyn BudgetWaiter>;
        assert!(!budget.wait(50, weak));
        // 40 free, but the queue is not empty: a newcomer may not overtake.
        assert!(!budget.try_take(10));
        let weak: Weak<dyn BudgetWaiter> = Arc::downgrade(&small) as Weak<dyn BudgetWaiter>;
        assert!(!budget.wait(10, weak));
        budget.release(60);
        assert_eq!(*big.0.lock(), [50]);
        assert_eq!(*small.0.lock(), [10]);
        assert_eq!(budget.used(), 60);
        assert_eq!(budget.peak(), 60);
        assert_eq!(budget.pauses(), 2);
        assert!(budget.try_take(40));
        assert!(!budget.try_take(1));
    }

    #[test]
    fn a_waiter_that_went_away_gives_its_grant_back() {
        let budget = Budget::new(10);
        budget.charge(10);
        let gone = Arc::new(Recorder(Mutex::new(Vec::new())));
        let weak: Weak<dyn BudgetWaiter> = Arc::downgrade(&gone) as Weak<dyn BudgetWaiter>;
        drop(gone);
        assert!(!budget.wait(5, weak));
        budget.release(10);
        assert_eq!(budget.used(), 0);
        assert!(budget.try_take(10));
    }
}
