//! `EventImpl`: libvirt's six event functions as a Rust trait.

use std::os::fd::RawFd;
use std::time::Duration;

use super::error::EventError;
use super::id::{HandleId, TimerId};
use crate::flags::WatchFlags;

/// What a handle's callback receives: its id, its fd, and what the fd reported — libvirt's
/// `virEventHandleCallback(watch, fd, events, opaque)`, with the opaque captured by the
/// closure.
///
/// Dropping the closure is libvirt's `virFreeCallback`: the table drops it exactly once, after
/// the handle was removed and no call of it is running, on the loop's thread with no lock held.
#[doc(alias = "virEventHandleCallback")]
pub type HandleCallback = Box<dyn Fn(HandleId, RawFd, WatchFlags) + Send + Sync>;

/// What a timer's callback receives: its id — libvirt's `virEventTimeoutCallback(timer,
/// opaque)`. Dropping it is the free function, as for [`HandleCallback`].
#[doc(alias = "virEventTimeoutCallback")]
pub type TimerCallback = Box<dyn Fn(TimerId) + Send + Sync>;

/// When a timer fires — libvirt's `int timeout` in milliseconds, where `-1` disables and `0`
/// means "on every loop iteration".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerInterval {
    /// Never (`-1`, or any negative number).
    Off,
    /// On every iteration of the loop (`0`); see the [module docs](super) for what an
    /// iteration is here.
    EachIteration,
    /// Every period, counted from the add or update (`n` > 0 milliseconds). A zero period is
    /// [`EachIteration`](Self::EachIteration).
    Period(Duration),
}

impl TimerInterval {
    /// libvirt's number: negative is [`Off`](Self::Off), zero
    /// [`EachIteration`](Self::EachIteration), `n` a period of `n` ms.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use loopglue::handles::TimerInterval;
    ///
    /// assert_eq!(TimerInterval::from_millis(-1), TimerInterval::Off);
    /// assert_eq!(TimerInterval::from_millis(0), TimerInterval::EachIteration);
    /// assert_eq!(
    ///     TimerInterval::from_millis(5000),
    ///     TimerInterval::Period(Duration::from_secs(5))
    /// );
    /// ```
    pub fn from_millis(ms: i32) -> TimerInterval {
        match u64::try_from(ms) {
            Err(_) => TimerInterval::Off,
            Ok(0) => TimerInterval::EachIteration,
            Ok(ms) => TimerInterval::Period(Duration::from_millis(ms)),
        }
    }

    /// `Period(0)` as `EachIteration`; everything else unchanged.
    pub(crate) fn normalized(self) -> TimerInterval {
        match self {
            TimerInterval::Period(d) if d.is_zero() => TimerInterval::EachIteration,
            other => other,
        }
    }
}

/// libvirt's event implementation — the six functions an application hands to
/// `virEventRegisterImpl` so that a library can have fds and timers watched without running a
/// loop of its own.
///
/// [`HandleTable`](super::HandleTable) implements it on loopglue objects, so it runs on every
/// loop; with the `libvirt` feature, `loopglue::libvirt::register` hands any `EventImpl` to
/// the real libvirt. The semantics every implementation must keep are libvirt's, written out
/// in the [module docs](super).
///
/// Every method may be called from any thread and from inside any callback of the same
/// implementation, including a handle's own callback.
#[doc(alias = "virEventRegisterImpl")]
pub trait EventImpl: Send + Sync {
    /// Starts watching `fd` for `events` (any of the four bits; `READABLE` and `WRITABLE`
    /// select what is polled, and nothing is polled while neither `READABLE`, `WRITABLE`,
    /// `ERROR` nor `HANGUP` is set), calling `callback` with what the fd reports.
    ///
    /// # Errors
    ///
    /// [`EventError::Refused`] if the loop cannot poll `fd`; the callback is then dropped.
    #[doc(alias = "virEventAddHandleFunc")]
    #[doc(alias = "addHandle")]
    fn add_handle(
        &self,
        fd: RawFd,
        events: WatchFlags,
        callback: HandleCallback,
    ) -> Result<HandleId, EventError>;

    /// Changes what handle `id` is watched for; `events` empty stops reporting anything.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownHandle`] (libvirt ignores it).
    #[doc(alias = "virEventUpdateHandleFunc")]
    #[doc(alias = "updateHandle")]
    fn update_handle(&self, id: HandleId, events: WatchFlags) -> Result<(), EventError>;

    /// Stops watching handle `id`: no call of its callback starts after this returns, and the
    /// callback is dropped (libvirt's free function) once no call of it is running — later,
    /// never inside this call.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownHandle`] (libvirt's `-1`), for a second removal too.
    #[doc(alias = "virEventRemoveHandleFunc")]
    #[doc(alias = "removeHandle")]
    fn remove_handle(&self, id: HandleId) -> Result<(), EventError>;

    /// Starts a timer that calls `callback` as `interval` says.
    ///
    /// # Errors
    ///
    /// [`EventError::Refused`] if the loop refused the timer.
    #[doc(alias = "virEventAddTimeoutFunc")]
    #[doc(alias = "addTimeout")]
    fn add_timeout(
        &self,
        interval: TimerInterval,
        callback: TimerCallback,
    ) -> Result<TimerId, EventError>;

    /// Re-arms timer `id`: a period restarts from now (even if unchanged), `Off` disables,
    /// `EachIteration` fires on the next iteration and every one after.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownTimer`] (libvirt ignores it).
    #[doc(alias = "virEventUpdateTimeoutFunc")]
    #[doc(alias = "updateTimeout")]
    fn update_timeout(&self, id: TimerId, interval: TimerInterval) -> Result<(), EventError>;

    /// Stops timer `id`, as [`remove_handle`](Self::remove_handle) stops a handle.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownTimer`] (libvirt's `-1`).
    #[doc(alias = "virEventRemoveTimeoutFunc")]
    #[doc(alias = "removeTimeout")]
    fn remove_timeout(&self, id: TimerId) -> Result<(), EventError>;
}
