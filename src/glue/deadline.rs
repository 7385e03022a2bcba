//! `Deadline`: when a timeout falls due, with "never" for intervals the clock cannot reach.

use std::time::{Duration, Instant};

/// The instant a timeout falls due, or never — the arithmetic every timer glue needs and
/// easily gets wrong: `now + interval` panics on overflow, and [`Duration::MAX`] (or any
/// interval too large for the clock) must mean "never", not a panic (C10).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use loopglue::glue::Deadline;
///
/// let now = Instant::now();
/// let soon = Deadline::after(now, Duration::from_millis(10));
/// assert_eq!(soon.instant(), Some(now + Duration::from_millis(10)));
/// assert!(!soon.is_due(now));
/// assert_eq!(soon.remaining(now), Some(Duration::from_millis(10)));
///
/// let never = Deadline::after(now, Duration::MAX);
/// assert!(never.is_never());
/// assert_eq!(never.remaining(now), None); // block without a timeout
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// The deadline that never comes.
    pub const NEVER: Deadline = Deadline(None);

    /// `interval` after `now`, saturating: [`NEVER`](Self::NEVER) if the clock cannot
    /// represent it.
    pub fn after(now: Instant, interval: Duration) -> Deadline {
        Deadline(now.checked_add(interval))
    }

    /// The deadline at `instant`.
    pub fn at(instant: Instant) -> Deadline {
        Deadline(Some(instant))
    }

    /// The instant, or `None` for never.
    pub fn instant(self) -> Option<Instant> {
        self.0
    }

    /// Whether this is [`NEVER`](Self::NEVER).
    pub fn is_never(self) -> bool {
        self.0.is_none()
    }

    /// Whether the deadline has come at `now`.
    pub fn is_due(self, now: Instant) -> bool {
        self.0.is_some_and(|at| at <= now)
    }

    /// How long from `now` until the deadline (zero if it has passed), or `None` for never:
    /// the timeout to give a blocking wait.
    pub fn remaining(self, now: Instant) -> Option<Duration> {
        self.0.map(|at| at.saturating_duration_since(now))
    }

    /// `interval` as a whole number of `tick`s, rounded up — for host loops whose timers count
    /// in a coarser unit (GLib and libvirt in milliseconds). A non-zero interval never rounds
    /// down to zero (glue may round up to its resolution, never down: C10). `None` means the
    /// count does not fit a `u64`: treat the timeout as never due.
    ///
    /// # Panics
    ///
    /// If `tick` is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use loopglue::glue::Deadline;
    ///
    /// let ms = Duration::from_millis(1);
    /// assert_eq!(Deadline::ticks(Duration::from_micros(1), ms), Some(1));
    /// assert_eq!(Deadline::ticks(Duration::from_millis(25), ms), Some(25));
    /// assert_eq!(Deadline::ticks(Duration::ZERO, ms), Some(0));
    /// assert_eq!(Deadline::ticks(Duration::MAX, Duration::from_nanos(1)), None);
    /// // GLib takes a u32 of milliseconds: anything larger is never.
    /// let glib = Deadline::ticks(Duration::MAX, ms).and_then(|n| u32::try_from(n).ok());
    /// assert_eq!(glib, None);
    /// ```
    pub fn ticks(interval: Duration, tick: Duration) -> Option<u64> {
        assert!(!tick.is_zero(), "a tick of zero length");
        u64::try_from(interval.as_nanos().div_ceil(tick.as_nanos())).ok()
    }
}
