//! `TimerGlue`: the timeout functions of a glue that keeps its timeouts in a `TimerQueue`.

use std::fmt;
use std::io;
use std::sync::{Arc, Weak};
use std::time::Instant;

use super::timer_queue::TimerQueue;
use super::watch_glue::gone;
use crate::delivery::Delivery;
use crate::functions::TimeoutFunctions;
use crate::timeout::Timeout;

/// A glue that keeps its timeouts in a [`TimerQueue`] behind a lock of its own: say how to
/// reach the queue ([`with_timers`](Self::with_timers)) and what a change needs
/// ([`timers_changed`](Self::timers_changed)), and
/// [`timeout_functions`](Self::timeout_functions) is the glue's [`TimeoutFunctions`] — `add`,
/// `remove` and `toggled` forwarded to the queue with the time now (C9, C10).
///
/// As for [`WatchGlue`](super::WatchGlue), the functions hold the glue weakly; once it is
/// gone, `add` refuses with [`io::ErrorKind::NotConnected`] and the rest do nothing.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
/// use loopglue::glue::{TimerGlue, TimerQueue};
/// use loopglue::{Timeout, TimeoutList};
///
/// #[derive(Default)]
/// struct Loop {
///     timers: Mutex<TimerQueue>,
///     wakes: AtomicUsize, // stands in for waking the loop
/// }
/// impl TimerGlue for Loop {
///     fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T {
///         f(&mut self.timers.lock().unwrap())
///     }
///     fn timers_changed(&self) {
///         self.wakes.fetch_add(1, Ordering::SeqCst);
///     }
/// }
///
/// let glue = Arc::new(Loop::default());
/// let list = TimeoutList::new();
/// list.set_functions(Some(Loop::timeout_functions(&glue))).unwrap();
/// let tick = Timeout::new(Duration::from_secs(1), || {});
/// list.add(&tick)?;
/// assert_eq!(glue.timers.lock().unwrap().len(), 1);
/// assert_eq!(glue.wakes.load(Ordering::SeqCst), 1, "the loop re-reads its deadline");
/// list.remove(&tick)?;
/// assert!(glue.timers.lock().unwrap().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TimerGlue: Send + Sync + Sized + 'static {
    /// What the glue is called in the error `add` returns once the glue is gone: "the
    /// {GONE} was dropped".
    const GONE: &'static str = "glue";

    /// Runs `f` on the glue's timer queue, under the glue's lock.
    fn with_timers<T>(&self, f: impl FnOnce(&mut TimerQueue) -> T) -> T;

    /// A timeout was added, or toggled (enabled, it restarts from now): with no lock held,
    /// have the loop read its next deadline again — wake it if it blocks on another thread,
    /// re-arm a host timer. Not called for `remove`: a removal never brings a deadline closer.
    fn timers_changed(&self);

    /// The time now on the glue's clock: [`Instant::now`] unless the host loop keeps a clock
    /// of its own (tokio's, which a test may pause).
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// The glue's timeout functions: each call forwarded to the queue through
    /// [`with_timers`](Self::with_timers), the glue held weakly.
    fn timeout_functions(glue: &Arc<Self>) -> Box<dyn TimeoutFunctions> {
        Box::new(QueueTimeouts(Arc::downgrade(glue)))
    }

    /// Fires the timeouts that [`TimerQueue::collect_due`] found due: takes them from the
    /// queue one at a time with [`TimerQueue::next_due`] — which starts each one's next period
    /// as it hands it out (fixed delay, C10) and skips one a handler removed, disabled or
    /// restarted meanwhile — and calls [`Timeout::handle`] with the lock released (C11).
    /// Returns how many were delivered.
    ///
    /// # Panics
    ///
    /// If a handler panics; the timeouts not fired yet stay collected, and come first next
    /// time.
    fn fire_due(&self) -> usize {
        let mut delivered = 0;
        loop {
            let now = self.now();
            let Some(timeout) = self.with_timers(|timers| timers.next_due(now)) else {
                return delivered;
            };
            if timeout.handle() == Delivery::Delivered {
                delivered += 1;
            }
        }
    }
}

/// What [`TimerGlue::timeout_functions`] returns.
struct QueueTimeouts<G>(Weak<G>);

impl<G: TimerGlue> TimeoutFunctions for QueueTimeouts<G> {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        let glue = self.0.upgrade().ok_or_else(|| gone(G::GONE))?;
        let now = glue.now();
        glue.with_timers(|timers| timers.add(timeout, now));
        glue.timers_changed();
        Ok(())
    }

    fn remove(&mut self, timeout: &Timeout) {
        if let Some(glue) = self.0.upgrade() {
            glue.with_timers(|timers| timers.remove(timeout));
        }
    }

    fn toggled(&mut self, timeout: &Timeout) {
        if let Some(glue) = self.0.upgrade() {
            let now = glue.now();
            glue.with_timers(|timers| timers.toggled(timeout, now));
            glue.timers_changed();
        }
    }
}

impl<G> fmt::Debug for QueueTimeouts<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueTimeouts")
            .field("glue_alive", &(self.0.strong_count() > 0))
            .finish()
    }
}
