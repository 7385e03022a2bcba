//! `Source`: what a producer implements so that any glue can attach it.

use std::panic::{self, AssertUnwindSafe};

use crate::error::{Error, SetFunctionsError};
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::source_data::SourceData;
use crate::status::{DispatchStatus, DispatchStatusFn};
use crate::wakeup::WakeupFn;

/// A connection-like object that glue can attach to an event loop: the producer-facing half
/// of `dbus-connection.h` that concerns main-loop integration.
///
/// A producer embeds a [`WatchList`](crate::WatchList), a
/// [`TimeoutList`](crate::TimeoutList) and a [`SourceData`], returns the latter from
/// [`data`](Self::data), and forwards the two `set_*_functions` methods to the lists'
/// `set_functions`. Producers with a dispatch queue also forward the wakeup and status
/// functions to a [`WakeupHook`](crate::WakeupHook) and a
/// [`StatusNotifier`](crate::StatusNotifier); the defaults suit a producer that handles
/// everything inside its watch and timeout handlers.
///
/// Glue that attaches a source installs its functions, then reads
/// [`dispatch_status`](Self::dispatch_status) once (setting a status function never calls
/// it) and calls [`dispatch`](Self::dispatch) from its loop while the status is
/// [`DispatchStatus::DataRemains`] (C16).
///
/// # Examples
///
/// A producer with one watch and no dispatch queue:
///
/// ```
/// use loopglue::{
///     SetFunctionsError, Source, SourceData, TimeoutFunctions, TimeoutList, Watch,
///     WatchFlags, WatchFunctions, WatchList,
/// };
///
/// struct Pipe {
///     watches: WatchList,
///     timeouts: TimeoutList,
///     data: SourceData,
/// }
///
/// impl Source for Pipe {
///     fn data(&self) -> &SourceData {
///         &self.data
///     }
///     fn set_watch_functions(
///         &self,
///         functions: Option<Box<dyn WatchFunctions>>,
///     ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
///         self.watches.set_functions(functions)
///     }
///     fn set_timeout_functions(
///         &self,
///         functions: Option<Box<dyn TimeoutFunctions>>,
///     ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
///         self.timeouts.set_functions(functions)
///     }
/// }
///
/// let pipe = Pipe {
///     watches: WatchList::new(),
///     timeouts: TimeoutList::new(),
///     data: SourceData::new(),
/// };
/// pipe.watches.add(&Watch::new(0, WatchFlags::READABLE, |_| {}))?;
/// assert_eq!(pipe.dispatch_status(), loopglue::DispatchStatus::Complete);
/// # Ok::<(), loopglue::Error>(())
/// ```
pub trait Source: Send + Sync {
    /// The source's identity and glue data slots, shared by every handle of this source: glue
    /// finds a source by `data().id()`, whatever clone it is given, and keeps its per-source
    /// state in a slot.
    #[doc(alias = "dbus_connection_get_data")]
    fn data(&self) -> &SourceData;

    /// Installs the glue's watch functions (C7); see
    /// [`ObjectList::set_functions`](crate::ObjectList::set_functions).
    ///
    /// # Errors
    ///
    /// As `set_functions`: the set is handed back if it refused a watch or the call was
    /// reentrant.
    #[doc(alias = "dbus_connection_set_watch_functions")]
    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>>;

    /// Installs the glue's timeout functions (C7).
    ///
    /// # Errors
    ///
    /// As [`set_watch_functions`](Self::set_watch_functions).
    #[doc(alias = "dbus_connection_set_timeout_functions")]
    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>>;

    /// Installs the function the producer calls to wake the loop when work is queued from
    /// another thread (C16). The default ignores it: the producer never needs a wakeup.
    #[doc(alias = "dbus_connection_set_wakeup_main_function")]
    fn set_wakeup_main_function(&self, wakeup: Option<WakeupFn>) {
        drop(wakeup);
    }

    /// Installs the function the producer calls when its dispatch status changes (C16); it is
    /// not called by this method. The default ignores it: the status is always `Complete`.
    #[doc(alias = "dbus_connection_set_dispatch_status_function")]
    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        drop(function);
    }

    /// Whether queued work remains to be dispatched.
    #[doc(alias = "dbus_connection_get_dispatch_status")]
    fn dispatch_status(&self) -> DispatchStatus {
        DispatchStatus::Complete
    }

    /// Processes some queued work and tells what remains. May be called from inside the
    /// dispatch-status function (C16).
    #[doc(alias = "dbus_connection_dispatch")]
    fn dispatch(&self) -> DispatchStatus {
        DispatchStatus::Complete
    }

    /// Installs a watch set and a timeout set as one step, as glue's `attach` does: if the
    /// timeout set is refused, the watch set is uninstalled again, so nothing stays half
    /// attached.
    ///
    /// # Errors
    ///
    /// Why a set was refused (the refused sets are dropped, running their free-data).
    fn set_functions(
        &self,
        watches: Box<dyn WatchFunctions>,
        timeouts: Box<dyn TimeoutFunctions>,
    ) -> Result<(), Error> {
        self.set_watch_functions(Some(watches))?;
        if let Err(refused) = self.set_timeout_functions(Some(timeouts)) {
            let _ = self.set_watch_functions(None);
            return Err(refused.into_error());
        }
        Ok(())
    }

    /// Uninstalls everything glue installs — wakeup and dispatch-status functions, then the
    /// watch and timeout sets — as glue's `detach` does. Every step runs even if an earlier
    /// one fails or panics (a free-data that panics, say), so nothing stays installed.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] from inside one of the source's own list callbacks (the first
    /// error, once every step has run).
    ///
    /// # Panics
    ///
    /// If a step panics (glue code: a `remove`, a free-data, a dropped function), once every
    /// step has run; the first panic is resumed.
    fn clear_functions(&self) -> Result<(), Error> {
        let mut panicked = None;
        let mut step = |f: &mut dyn FnMut() -> Result<(), Error>| match panic::catch_unwind(
            AssertUnwindSafe(f),
        ) {
            Ok(outcome) => outcome,
            Err(payload) => {
                panicked.get_or_insert(payload);
                Ok(())
            }
        };
        let outcomes = [
            step(&mut || {
                self.set_wakeup_main_function(None);
                Ok(())
            }),
            step(&mut || {
                self.set_dispatch_status_function(None);
                Ok(())
            }),
            step(&mut || self.set_watch_functions(None).map_err(|e| e.into_error())),
            step(&mut || self.set_timeout_functions(None).map_err(|e| e.into_error())),
        ];
        if let Some(payload) = panicked {
            panic::resume_unwind(payload);
        }
        outcomes.into_iter().collect()
    }
}
