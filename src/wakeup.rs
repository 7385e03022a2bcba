//! The wakeup hook: how a producer asks its loop to look again (C16).

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

/// A wakeup function as glue installs it.
#[doc(alias = "DBusWakeupMainFunction")]
pub type WakeupFn = Box<dyn Fn() + Send + Sync>;

/// The producer side of `dbus_connection_set_wakeup_main_function`: holds the glue's wakeup
/// function and calls it, with no lock held, when work is queued that the loop must notice —
/// typically output queued from a thread other than the loop's.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use loopglue::WakeupHook;
///
/// let wakeups = Arc::new(AtomicUsize::new(0));
/// let hook = WakeupHook::new();
/// hook.wake(); // no function yet: nothing happens
/// let count = Arc::clone(&wakeups);
/// hook.set_function(Some(Box::new(move || {
///     count.fetch_add(1, Ordering::Relaxed);
/// })));
/// hook.wake();
/// assert_eq!(wakeups.load(Ordering::Relaxed), 1);
/// ```
#[derive(Default)]
pub struct WakeupHook {
    function: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl WakeupHook {
    /// A hook with no function.
    pub fn new() -> WakeupHook {
        WakeupHook::default()
    }

    /// Installs (or with `None` removes) the glue's function; the replaced one is dropped with
    /// no lock held.
    #[doc(alias = "dbus_connection_set_wakeup_main_function")]
    pub fn set_function(&self, function: Option<WakeupFn>) {
        let old = std::mem::replace(&mut *self.function.lock(), function.map(Arc::from));
        drop(old);
    }

    /// Calls the glue's function, if any.
    ///
    /// # Panics
    ///
    /// If the glue's function panics.
    pub fn wake(&self) {
        let function = self.function.lock().clone();
        if let Some(function) = function {
            function();
        }
    }
}

impl fmt::Debug for WakeupHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeupHook")
            .field("has_function", &self.function.lock().is_some())
            .finish()
    }
}
