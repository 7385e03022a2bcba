//! `TimerQueue`: periodic timers for glue whose host loop has none of its own (C9, C10).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use super::deadline::Deadline;
use super::id_hasher::IdMap;
use crate::timeout::Timeout;

/// The timeouts of a glue, as a heap of deadlines with the contract's periodic rules built
/// in — for host loops without timers of their own (mio, a hand-written poll loop). Glue over
/// a loop with timers (GLib, tokio, calloop) needs only [`Deadline`] and the same rules.
///
/// The rules:
///
/// * a timeout is armed for `now + interval()` when added enabled, and whenever it is toggled
///   while enabled — a `toggled` call with `is_enabled()` true always means "(re)start the
///   period from now", and `interval()` is read again because it may have changed (C9);
/// * periods are **fixed-delay** (C10): the next period starts when the glue calls `handle()`,
///   so consecutive calls are at least `interval()` apart, and a loop that fell behind fires
///   once, not once per missed period;
/// * an interval too large for the clock, [`Duration::MAX`] among them, is never due.
///
/// Use it in two steps per loop iteration, so that no lock is held while handlers run
/// (C11): under the glue's lock, [`collect_due`](Self::collect_due); then, repeatedly, take
/// the lock, [`next_due`](Self::next_due), release it and call `handle()` on what it returned.
/// `next_due` re-arms each timeout as it hands it out, and skips one that a handler removed,
/// disabled or restarted meanwhile. If a handler panics, the timeouts not yet handed out stay
/// collected and come first next time: a panic loses no firing.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use loopglue::glue::TimerQueue;
/// use loopglue::Timeout;
///
/// let mut timers = TimerQueue::new();
/// let start = Instant::now();
/// let tick = Timeout::new(Duration::from_millis(10), || {});
/// timers.add(&tick, start);
/// assert_eq!(timers.wait_time(start), Some(Duration::from_millis(10)));
///
/// // 25 ms later (the loop was busy): due once, not twice.
/// let now = start + Duration::from_millis(25);
/// assert_eq!(timers.collect_due(now), 1);
/// let due = timers.next_due(now).unwrap();
/// assert_eq!(due, tick);
/// assert!(timers.next_due(now).is_none());
/// let _ = due.handle(); // with no lock held
/// // Fixed delay: the next period started when it was handed out.
/// assert_eq!(timers.wait_time(now), Some(Duration::from_millis(10)));
/// ```
#[derive(Default)]
pub struct TimerQueue {
    timers: IdMap<Timer>,
    heap: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    /// Collected as due and not handed out yet: (deadline, id, generation).
    collected: VecDeque<(Instant, u64, u64)>,
}

struct Timer {
    timeout: Timeout,
    deadline: Deadline,
    /// How many adds are not yet undone by a remove: two function sets of the same loop
    /// both hold the timeout while one replaces the other (C7 adds before it removes).
    adds: u32,
    /// Bumped on every re-arm and disarm: heap and collected entries of an older generation
    /// are stale and skipped, so a toggle costs O(log n) and never a search.
    generation: u64,
}

impl TimerQueue {
    /// An empty queue.
    pub fn new() -> TimerQueue {
        TimerQueue::default()
    }

    /// Tracks `timeout`, armed for `now + interval()` if it is enabled — the glue's
    /// [`TimeoutFunctions::add`](crate::TimeoutFunctions::add).
    pub fn add(&mut self, timeout: &Timeout, now: Instant) {
        if let Some(timer) = self.timers.get_mut(&timeout.id()) {
            timer.adds += 1;
            return;
        }
        let mut timer = Timer {
            timeout: timeout.clone(),
            deadline: Deadline::NEVER,
            adds: 1,
            generation: 0,
        };
        if timeout.is_enabled() {
            Self::arm(
                &mut self.heap,
                &mut timer,
                Deadline::after(now, timeout.interval()),
            );
        }
        self.timers.insert(timeout.id(), timer);
    }

    /// Forgets `timeout` — the glue's
    /// [`TimeoutFunctions::remove`](crate::TimeoutFunctions::remove).
    pub fn remove(&mut self, timeout: &Timeout) {
        if let Some(timer) = self.timers.get_mut(&timeout.id()) {
            timer.adds -= 1;
            if timer.adds == 0 {
                self.timers.remove(&timeout.id());
                self.compact();
            }
        }
    }

    /// Follows `timeout`'s enabled state — the glue's
    /// [`TimeoutFunctions::toggled`](crate::TimeoutFunctions::toggled): enabled restarts the
    /// period from `now` with the current `interval()`; disabled disarms it.
    pub fn toggled(&mut self, timeout: &Timeout, now: Instant) {
        let deadline = if timeout.is_enabled() {
            Deadline::after(now, timeout.interval())
        } else {
            Deadline::NEVER
        };
        if let Some(timer) = self.timers.get_mut(&timeout.id()) {
            Self::arm(&mut self.heap, timer, deadline);
            self.compact();
        }
    }

    /// Sets `timer`'s deadline, pushing a heap entry of a new generation (older entries go
    /// stale); `NEVER` disarms.
    fn arm(
        heap: &mut BinaryHeap<Reverse<(Instant, u64, u64)>>,
        timer: &mut Timer,
        deadline: Deadline,
    ) {
        timer.generation += 1;
        timer.deadline = deadline;
        if let Some(at) = deadline.instant() {
            heap.push(Reverse((at, timer.timeout.id(), timer.generation)));
        }
    }

    fn is_current(&self, id: u64, generation: u64) -> bool {
        self.timers
            .get(&id)
            .is_some_and(|t| t.generation == generation && !t.deadline.is_never())
    }

    /// When the earliest armed timeout falls due (in the past if some are collected and not
    /// handed out yet), or [`Deadline::NEVER`].
    pub fn next_deadline(&mut self) -> Deadline {
        while let Some(&(at, id, generation)) = self.collected.front() {
            if self.is_current(id, generation) {
                return Deadline::at(at);
            }
            self.collected.pop_front();
        }
        while let Some(Reverse((at, id, generation))) = self.heap.peek().copied() {
            if self.is_current(id, generation) {
                return Deadline::at(at);
            }
            self.heap.pop();
        }
        Deadline::NEVER
    }

    /// How long a wait starting at `now` may block before a timeout is due (zero if one is
    /// due already), or `None` if none is armed.
    pub fn wait_time(&mut self, now: Instant) -> Option<Duration> {
        self.next_deadline().remaining(now)
    }

    /// Collects every timeout due at `now` for [`next_due`](Self::next_due) to hand out, and
    /// returns how many are waiting to be handed out. Each is collected once per round even
    /// with a zero interval.
    pub fn collect_due(&mut self, now: Instant) -> usize {
        while let Some(Reverse((at, id, generation))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.is_current(id, generation) {
                self.collected.push_back((at, id, generation));
            }
        }
        self.collected.len()
    }

    /// Hands out the next collected timeout that is still armed as it was when collected,
    /// re-arming it for `now + interval()` (fixed delay: call this just before `handle()`,
    /// with the current time). Call `handle()` on it with no lock held.
    pub fn next_due(&mut self, now: Instant) -> Option<Timeout> {
        while let Some((_, id, generation)) = self.collected.pop_front() {
            if !self.is_current(id, generation) {
                continue; // removed, disabled or restarted since it was collected
            }
            let timer = self.timers.get_mut(&id)?;
            let deadline = Deadline::after(now, timer.timeout.interval());
            Self::arm(&mut self.heap, timer, deadline);
            return Some(timer.timeout.clone());
        }
        None
    }

    /// How many timeouts are tracked, disabled ones included.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether no timeout is tracked.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// Drops stale heap entries once they outnumber live timers, bounding memory under
    /// toggle storms.
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.timers.len() + 64 {
            self.heap = self
                .timers
                .iter()
                .filter_map(|(id, t)| {
                    t.deadline
                        .instant()
                        .map(|at| Reverse((at, *id, t.generation)))
                })
                .collect();
        }
    }
}

impl fmt::Debug for TimerQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerQueue")
            .field("timeouts", &self.timers.len())
            .field("collected", &self.collected.len())
            .finish()
    }
}
