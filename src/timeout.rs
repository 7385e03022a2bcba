//! `Timeout`: a period after which a producer wants to be called, again and again.

use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::delivery::Delivery;
use crate::object::{identity_eq, ObjectCore, Phase};

type TimeoutHandler = Box<dyn Fn() + Send + Sync>;

/// An interval and whether it is running — libdbus's `DBusTimeout`.
///
/// A producer registers timeouts in its [`TimeoutList`](crate::TimeoutList); glue arms a
/// timer for [`interval`](Self::interval) while the timeout [`is_enabled`](Self::is_enabled)
/// and calls [`handle`](Self::handle) each time it falls due. Timeouts are periodic (C10):
/// glue re-arms after every `handle` until the timeout is removed, and restarts the period
/// from now when the timeout is enabled again (C9). Clones share one object (C2).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use loopglue::{Delivery, Timeout};
///
/// let timeout = Timeout::new(Duration::from_millis(25), || println!("due"));
/// assert_eq!(timeout.interval(), Duration::from_millis(25));
/// assert_eq!(timeout.handle(), Delivery::Delivered);
/// ```
#[doc(alias = "DBusTimeout")]
#[derive(Clone)]
pub struct Timeout {
    inner: Arc<TimeoutInner>,
}

struct TimeoutInner {
    core: ObjectCore,
    /// Nanoseconds; `u64::MAX` stands for `Duration::MAX` (never). Changed only by
    /// [`TimeoutList::restart`](crate::TimeoutList::restart).
    interval: AtomicU64,
    handler: TimeoutHandler,
}

impl Timeout {
    /// Creates an enabled timeout that wants `handler` called every `interval` — enabled,
    /// as libdbus creates them.
    pub fn new(interval: Duration, handler: impl Fn() + Send + Sync + 'static) -> Timeout {
        Timeout::with_state(interval, true, Box::new(handler))
    }

    /// Like [`new`](Self::new), but created disabled.
    pub fn new_disabled(interval: Duration, handler: impl Fn() + Send + Sync + 'static) -> Timeout {
        Timeout::with_state(interval, false, Box::new(handler))
    }

    fn with_state(interval: Duration, enabled: bool, handler: TimeoutHandler) -> Timeout {
        Timeout {
            inner: Arc::new(TimeoutInner {
                core: ObjectCore::new(enabled),
                interval: AtomicU64::new(nanos(interval)),
                handler,
            }),
        }
    }

    /// The period (C10). It changes only through
    /// [`TimeoutList::restart`](crate::TimeoutList::restart), which glue hears as `toggled`:
    /// glue reads it again there. An interval too long for the clock — over 584 years, such as
    /// [`Duration::MAX`] — reads back as `Duration::MAX` and means "never".
    #[doc(alias = "dbus_timeout_get_interval")]
    pub fn interval(&self) -> Duration {
        match self.inner.interval.load(Ordering::Acquire) {
            u64::MAX => Duration::MAX,
            ns => Duration::from_nanos(ns),
        }
    }

    pub(crate) fn set_interval(&self, interval: Duration) {
        self.inner
            .interval
            .store(nanos(interval), Ordering::Release);
    }

    /// Whether glue should run the timer now. Inside the glue's `toggled` call it already tells
    /// the new state, and an enable restarts the period from now (C9).
    #[doc(alias = "dbus_timeout_get_enabled")]
    pub fn is_enabled(&self) -> bool {
        self.core().is_enabled()
    }

    /// Whether the producer has removed this timeout from its list: glue should forget it.
    pub fn is_removed(&self) -> bool {
        matches!(self.core().phase(), Phase::Detaching | Phase::Invalid)
    }

    /// A number that identifies this timeout for the life of the process (logs, maps).
    pub fn id(&self) -> u64 {
        self.core().id()
    }

    /// Reports that the timeout fell due; glue calls this once per period.
    ///
    /// The handler runs with no lock held and may add, toggle or remove any timeout, this one
    /// included. On a removed or disabled timeout nothing runs and the return value says why.
    ///
    /// # Panics
    ///
    /// Only if the producer's handler panics; the panic passes through unchanged.
    #[doc(alias = "dbus_timeout_handle")]
    pub fn handle(&self) -> Delivery {
        let core = self.core();
        if core.phase() >= Phase::Detaching {
            return Delivery::Removed;
        }
        if !core.is_enabled() {
            return Delivery::Disabled;
        }
        // Counted while it runs, so that `remove` on another thread waits for it (C4).
        let Some(_running) = core.enter_handler() else {
            return Delivery::Removed;
        };
        (self.inner.handler)();
        Delivery::Delivered
    }

    /// Stores glue data on this timeout for the calling function set (C5); see
    /// [`Watch::set_data`](crate::Watch::set_data) for whose value it is and when it drops.
    #[doc(alias = "dbus_timeout_set_data")]
    pub fn set_data<T: Any + Send + Sync>(&self, value: T) {
        self.core().set_data(value);
    }

    /// The calling set's data, if it stored a `T` (C5).
    #[doc(alias = "dbus_timeout_get_data")]
    pub fn data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.core().data_of()
    }

    /// Takes the calling set's data out of the timeout, if it is a `T` (C5).
    pub fn take_data<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.core().take_typed()
    }

    pub(crate) fn core(&self) -> &ObjectCore {
        &self.inner.core
    }
}

identity_eq!(Timeout);

impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Timeout");
        out.field("interval", &self.interval());
        self.core().fmt_fields(&mut out);
        out.finish()
    }
}

/// An interval in nanoseconds, saturating: what does not fit stands for "never".
fn nanos(interval: Duration) -> u64 {
    u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX)
}
