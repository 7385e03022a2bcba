//! Dispatch status, and the notifier that tells glue when it changes (C16).

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

/// Whether a producer has received work that it has not dispatched yet — libdbus's
/// `DBusDispatchStatus` (without `NeedMemory`, which Rust reports by aborting).
#[doc(alias = "DBusDispatchStatus")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum DispatchStatus {
    /// Nothing queued (`DBUS_DISPATCH_COMPLETE`).
    #[default]
    Complete,
    /// Queued work remains: glue should call [`Source::dispatch`](crate::Source::dispatch)
    /// (`DBUS_DISPATCH_DATA_REMAINS`).
    DataRemains,
}

/// A dispatch-status function as glue installs it.
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
    /// # Panics
    ///
    /// If the glue's function panics; the notifier stays usable.
    pub fn update(&self, status: DispatchStatus) {
        let mut state = self.state.lock();
        state.current = status;
        if state.notifying {
            return; // the running notification delivers it
        }
        state.notifying = true;
        while state.told != state.current {
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
