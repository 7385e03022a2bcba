//! Dispatch status, and the notifier that tells glue when it changes (C16).

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

/// Whether a producer has received work that it has not dispatched yet — libdbus's
/// `DBusDispatchStatus` (without `NeedMemory`, which Rust reports by aborting).
#[doc(alias = "DBusDispatchStatus")]
#[doc(alias = "DBUS_DISPATCH_NEED_MEMORY")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DispatchStatus {
    /// Nothing queued (`DBUS_DISPATCH_COMPLETE`).
    #[default]
    #[doc(alias = "DBUS_DISPATCH_COMPLETE")]
    Complete,
    /// Queued work remains: glue should call [`Source::dispatch`](crate::Source::dispatch)
    /// (`DBUS_DISPATCH_DATA_REMAINS`).
    #[doc(alias = "DBUS_DISPATCH_DATA_REMAINS")]
    DataRemains,
}

/// A dispatch-status function as glue installs it.
#[doc(alias = "DBusDispatchStatusFunction")]
pub type DispatchStatusFn = Box<dyn Fn(DispatchStatus) + Send + Sync>;

/// The producer side of `dbus_connection_set_dispatch_status_function`: holds the glue's
/// function and calls it when, and only when, the status changes (C16).
///
/// Setting a function never calls it, so glue reads the status once after installing. The
/// function runs with no lock held and may call the producer's `dispatch` (libdbus deadlocks
/// there): a change reported from inside the function, or from another thread while it runs,
/// is delivered by the running notification once the function returns, so the glue's last
/// word is always the latest status and calls never nest.
///
/// # Examples
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use loopglue::{DispatchStatus, StatusNotifier};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let notifier = StatusNotifier::new();
/// let log = Arc::clone(&seen);
/// notifier.set_function(Some(Box::new(move |s| log.lock().unwrap().push(s))));
/// notifier.update(DispatchStatus::Complete); // unchanged: silent
/// notifier.update(DispatchStatus::DataRemains);
/// notifier.update(DispatchStatus::DataRemains); // unchanged: silent
/// notifier.update(DispatchStatus::Complete);
/// assert_eq!(
///     *seen.lock().unwrap(),
///     [DispatchStatus::DataRemains, DispatchStatus::Complete]
/// );
/// ```
#[derive(Default)]
pub struct StatusNotifier {
    state: Mutex<NotifierState>,
}

#[derive(Default)]
struct NotifierState {
    function: Option<Arc<dyn Fn(DispatchStatus) + Send + Sync>>,
    current: DispatchStatus,
    told: DispatchStatus,
    notifying: bool,
}

impl StatusNotifier {
    /// A notifier with no function and status [`DispatchStatus::Complete`].
    pub fn new() -> StatusNotifier {
        StatusNotifier::default()
    }

    /// Installs (or with `None` removes) the glue's function without calling it; the replaced
    /// function is dropped with no lock held.
    #[doc(alias = "dbus_connection_set_dispatch_status_function")]
    pub fn set_function(&self, function: Option<DispatchStatusFn>) {
        let old = {
            let mut state = self.state.lock();
            std::mem::replace(&mut state.function, function.map(Arc::from))
        };
        drop(old);
    }

    /// The latest status the producer reported.
    #[doc(alias = "dbus_connection_get_dispatch_status")]
    pub fn status(&self) -> DispatchStatus {
        self.state.lock().current
    }

    /// Records the producer's status and tells the glue if it differs from what the glue was
    /// last told.
    ///
    /// The statuses must reach the notifier in the order they became true. A producer whose
    /// threads compute a status under their own lock and report it after releasing that lock
    /// can deliver them out of order — a stale `Complete` overtaking a fresh `DataRemains`
    /// strands queued work — and should use [`refresh`](Self::refresh) instead.
    ///
    /// # Panics
    ///
    /// If the glue's function panics; the notifier stays usable.
    pub fn update(&self, status: DispatchStatus) {
        self.notify(status, None);
    }

    /// Reads the producer's status from `live` and tells the glue if it differs from what the
    /// glue was last told — re-reading it after every notification, so that the glue's last
    /// word is the status as it is now, however the calls of several threads interleave.
    ///
    /// `live` runs under the notifier's lock: it may take the producer's own lock to read its
    /// queue, but must call nothing else of the producer's, and the producer must not hold
    /// that lock while calling `refresh`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::collections::VecDeque;
    /// use std::sync::Mutex;
    /// use loopglue::{DispatchStatus, StatusNotifier};
    ///
    /// let queue: Mutex<VecDeque<u32>> = Mutex::default();
    /// let notifier = StatusNotifier::new();
    /// let live = || match queue.lock().unwrap().is_empty() {
    ///     true => DispatchStatus::Complete,
    ///     false => DispatchStatus::DataRemains,
    /// };
    /// queue.lock().unwrap().push_back(7); // a reader thread queues a message...
    /// notifier.refresh(live); // ...and reports after releasing its lock
    /// assert_eq!(notifier.status(), DispatchStatus::DataRemains);
    /// ```
    ///
    /// # Panics
    ///
    /// If the glue's function panics; the notifier stays usable.
    pub fn refresh(&self, live: impl Fn() -> DispatchStatus) {
        self.notify(live(), Some(&live));
    }

    fn notify(&self, status: DispatchStatus, live: Option<&dyn Fn() -> DispatchStatus>) {
        let mut state = self.state.lock();
        state.current = live.map_or(status, |live| live());
        if state.notifying {
            // The running notification delivers it: it reads `current` again, and a live
            // status is re-read below only by the thread that notifies.
            return;
        }
        state.notifying = true;
        loop {
            if let Some(live) = live {
                state.current = live();
            }
            if state.told == state.current {
                break;
            }
            let told = state.current;
            state.told = told;
            let Some(function) = state.function.clone() else {
                continue;
            };
            drop(state);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| function(told)));
            state = self.state.lock();
            if let Err(payload) = outcome {
                state.notifying = false;
                drop(state);
                panic::resume_unwind(payload);
            }
        }
        state.notifying = false;
    }
}

impl fmt::Debug for StatusNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("StatusNotifier")
            .field("status", &state.current)
            .field("has_function", &state.function.is_some())
            .finish()
    }
}
