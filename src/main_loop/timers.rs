//! `TimerHeap`: the loop's timeouts, due times in a binary heap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use crate::timeout::Timeout;

struct Timer {
    timeout: Timeout,
    due: Option<Instant>,
    /// Bumped on every re-arm and disarm: heap entries carrying an older generation are stale
    /// and skipped when they surface, so a toggle costs O(log n) and never a heap search.
    generation: u64,
}

/// Periodic timers (C10) keyed by timeout id; enabling restarts the period (C9).
#[derive(Default)]
pub(crate) struct TimerHeap {
    timers: HashMap<u64, Timer>,
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
}

impl TimerHeap {
    pub(crate) fn insert(&mut self, timeout: &Timeout, now: Instant) {
        let mut timer = Timer {
            timeout: timeout.clone(),
            due: None,
            generation: 0,
        };
        if timeout.is_enabled() {
            self.arm(&mut timer, now + timeout.interval());
        }
        self.timers.insert(timeout.id(), timer);
    }

    pub(crate) fn remove(&mut self, timeout: &Timeout) {
        self.timers.remove(&timeout.id());
        self.compact();
    }

    pub(crate) fn toggled(&mut self, timeout: &Timeout, now: Instant) {
        let Some(mut timer) = self.timers.remove(&timeout.id()) else {
            return;
        };
        if timeout.is_enabled() {
            self.arm(&mut timer, now + timeout.interval());
        } else {
            timer.due = None;
            timer.generation += 1;
        }
        self.timers.insert(timeout.id(), timer);
        self.compact();
    }

    fn arm(&mut self, timer: &mut Timer, due: Instant) {
        timer.generation += 1;
        timer.due = Some(due);
        self.heap
            .push(Reverse((due, timer.timeout.id(), timer.generation)));
    }

    /// When the earliest live timer is due.
    pub(crate) fn next_due(&mut self) -> Option<Instant> {
        while let Some(Reverse((due, id, generation))) = self.heap.peek().copied() {
            match self.timers.get(&id) {
                Some(timer) if timer.generation == generation && timer.due.is_some() => {
                    return Some(due)
                }
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Takes every timer due at `now`, re-arming each one period later (a timer that fell more
    /// than a period behind skips the missed periods instead of firing in a burst).
    pub(crate) fn take_due(&mut self, now: Instant, due: &mut Vec<Timeout>) {
        let mut rearm = Vec::new();
        while let Some(Reverse((at, id, generation))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some(timer) = self.timers.get_mut(&id) else {
                continue;
            };
            if timer.generation != generation || timer.due.is_none() {
                continue;
            }
            due.push(timer.timeout.clone());
            let period = timer.timeout.interval().max(Duration::from_micros(1));
            let mut next = at + period;
            if next <= now {
                next = now + period;
            }
            rearm.push(id);
            timer.due = Some(next);
        }
        // Pushed after the scan so a zero-length period fires once per pass, not forever.
        for id in rearm {
            if let Some(timer) = self.timers.get_mut(&id) {
                timer.generation += 1;
                if let Some(next) = timer.due {
                    self.heap.push(Reverse((next, id, timer.generation)));
                }
            }
        }
    }

    /// Drops stale heap entries once they outnumber live timers, bounding memory under
    /// toggle storms.
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.timers.len() + 64 {
            self.heap = self
                .timers
                .iter()
                .filter_map(|(id, t)| t.due.map(|due| Reverse((due, *id, t.generation))))
                .collect();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.timers.len()
    }
}
