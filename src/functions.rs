//! What glue installs on a list: the add / remove / toggled functions, in trait and closure
//! form.

use std::fmt;
use std::io;
use std::marker::PhantomData;

use crate::timeout::Timeout;
use crate::watch::Watch;

/// The glue side of a [`WatchList`](crate::WatchList): how an event loop hears about the
/// watches of a producer — libdbus's `DBusAddWatchFunction`, `DBusRemoveWatchFunction` and
/// `DBusWatchToggledFunction` as one trait (C6).
///
/// The list calls these with no lock held (C11), never re-enters a set (C12), and may call
/// them from any thread, one call at a time (C13). Dropping the set is its free-data: the
/// list drops it exactly once, after its last `remove`, when it is replaced or uninstalled or
/// the list goes away. For the closure form that ports a libdbus call one to one, see
/// [`WatchFunctionSet`].
///
/// # Examples
///
/// A glue that only logs; a real one registers the fd with its loop.
///
/// ```
/// use std::io;
/// use loopglue::{Watch, WatchFunctions, WatchList, WatchFlags};
///
/// struct Logger;
///
/// impl WatchFunctions for Logger {
///     fn add(&mut self, watch: &Watch) -> io::Result<()> {
///         println!("poll fd {:?} for {:?}", watch.fd(), watch.flags());
///         Ok(())
///     }
///     fn remove(&mut self, watch: &Watch) {
///         println!("forget fd {:?}", watch.fd());
///     }
///     fn toggled(&mut self, watch: &Watch) {
///         println!("fd {:?} enabled: {}", watch.fd(), watch.is_enabled());
///     }
/// }
///
/// let list = WatchList::new();
/// list.add(&Watch::new(0, WatchFlags::READABLE, |_| {}))?;
/// list.set_functions(Some(Box::new(Logger))).map_err(|e| e.into_error())?;
/// # Ok::<(), loopglue::Error>(())
/// ```
#[doc(alias = "DBusAddWatchFunction")]
#[doc(alias = "DBusRemoveWatchFunction")]
#[doc(alias = "DBusWatchToggledFunction")]
pub trait WatchFunctions: Send {
    /// Starts monitoring `watch` — its fd, flags and enabled state. A disabled watch is added
    /// too, and must not be polled until toggled on.
    ///
    /// # Errors
    ///
    /// Any error means "this loop cannot take the watch now" (C6): the list then does not
    /// track it, calls no `remove` for it (C8) and, during a set replacement, rolls the
    /// replacement back (C7).
    fn add(&mut self, watch: &Watch) -> io::Result<()>;

    /// Stops monitoring `watch`. Its fd is still answered and still open (C4, C15).
    fn remove(&mut self, watch: &Watch);

    /// `watch.is_enabled()` changed and already tells the new state (C9).
    fn toggled(&mut self, watch: &Watch);
}

/// The glue side of a [`TimeoutList`](crate::TimeoutList) — libdbus's
/// `DBusAddTimeoutFunction`, `DBusRemoveTimeoutFunction` and `DBusTimeoutToggledFunction`
/// as one trait (C6). The same rules as [`WatchFunctions`] apply.
#[doc(alias = "DBusAddTimeoutFunction")]
#[doc(alias = "DBusRemoveTimeoutFunction")]
#[doc(alias = "DBusTimeoutToggledFunction")]
pub trait TimeoutFunctions: Send {
    /// Starts a periodic timer for `timeout` if it is enabled (C10).
    ///
    /// # Errors
    ///
    /// As for [`WatchFunctions::add`].
    fn add(&mut self, timeout: &Timeout) -> io::Result<()>;

    /// Stops the timer of `timeout`.
    fn remove(&mut self, timeout: &Timeout);

    /// `timeout.is_enabled()` changed; on enable, the period restarts from now (C9).
    fn toggled(&mut self, timeout: &Timeout);
}

type AddFn<O, D> = Box<dyn FnMut(&O, &mut D) -> io::Result<()> + Send>;
type CallFn<O, D> = Box<dyn FnMut(&O, &mut D) + Send>;
type FreeFn<D> = Box<dyn FnOnce(D) + Send>;

/// A function set built from closures and a data value, the shape of
/// `dbus_connection_set_watch_functions(add, remove, toggled, data, free_data)` (C6).
///
/// Each closure gets the object and the data; `free_data` gets the data back, exactly once,
/// when the set is replaced, uninstalled, handed back and dropped, or its list goes away.
/// Use the aliases [`WatchFunctionSet`] and [`TimeoutFunctionSet`].
#[doc(alias = "DBusFreeFunction")]
pub struct FunctionSet<O, D: Send + 'static> {
    add: AddFn<O, D>,
    remove: CallFn<O, D>,
    toggled: CallFn<O, D>,
    // Some until the set drops; then handed to `free_data`.
    data: Option<D>,
    free_data: Option<FreeFn<D>>,
    object: PhantomData<fn(&O)>,
}

/// Watch functions from closures: see [`FunctionSet`].
///
/// # Examples
///
/// The C call
/// `dbus_connection_set_watch_functions(conn, add_watch, remove_watch, watch_toggled, loop, loop_unref)`
/// becomes:
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use loopglue::{Watch, WatchFlags, WatchFunctionSet, WatchList};
///
/// let polled: Arc<Mutex<Vec<i32>>> = Arc::default(); // stands in for "loop"
/// let set = WatchFunctionSet::new(
///     |watch: &Watch, fds: &mut Arc<Mutex<Vec<i32>>>| {
///         fds.lock().unwrap().extend(watch.fd());
///         Ok(())
///     },
///     |watch: &Watch, fds: &mut Arc<Mutex<Vec<i32>>>| {
///         fds.lock().unwrap().retain(|fd| Some(*fd) != watch.fd());
///     },
///     |_watch: &Watch, _fds: &mut Arc<Mutex<Vec<i32>>>| {},
///     Arc::clone(&polled),
///     drop, // free_data
/// );
/// let list = WatchList::new();
/// list.add(&Watch::new(7, WatchFlags::READABLE, |_| {}))?;
/// list.set_functions(Some(Box::new(set))).map_err(|e| e.into_error())?;
/// assert_eq!(*polled.lock().unwrap(), [7]);
/// # Ok::<(), loopglue::Error>(())
/// ```
#[doc(alias = "dbus_connection_set_watch_functions")]
pub type WatchFunctionSet<D> = FunctionSet<Watch, D>;

/// Timeout functions from closures: see [`FunctionSet`].
#[doc(alias = "dbus_connection_set_timeout_functions")]
pub type TimeoutFunctionSet<D> = FunctionSet<Timeout, D>;

impl<O, D: Send + 'static> FunctionSet<O, D> {
    /// Builds a set from the three functions, the data they share and the data's destructor,
    /// in libdbus's argument order. Pass `drop` as `free_data` when the data's own `Drop`
    /// is enough, and `|_, _| {}` as `toggled` where the C glue passed `NULL` (then glue
    /// must re-read `is_enabled` itself).
    pub fn new(
        add: impl FnMut(&O, &mut D) -> io::Result<()> + Send + 'static,
        remove: impl FnMut(&O, &mut D) + Send + 'static,
        toggled: impl FnMut(&O, &mut D) + Send + 'static,
        data: D,
        free_data: impl FnOnce(D) + Send + 'static,
    ) -> FunctionSet<O, D> {
        FunctionSet {
            add: Box::new(add),
            remove: Box::new(remove),
            toggled: Box::new(toggled),
            data: Some(data),
            free_data: Some(Box::new(free_data)),
            object: PhantomData,
        }
    }

    fn call_add(&mut self, object: &O) -> io::Result<()> {
        match self.data.as_mut() {
            Some(data) => (self.add)(object, data),
            None => Ok(()),
        }
    }

    // The data stays in place during a call: a panicking callback must not lose it, since
    // free-data still runs exactly once (C14).
    fn call_remove(&mut self, object: &O) {
        if let Some(data) = self.data.as_mut() {
            (self.remove)(object, data);
        }
    }

    fn call_toggled(&mut self, object: &O) {
        if let Some(data) = self.data.as_mut() {
            (self.toggled)(object, data);
        }
    }
}

impl<D: Send + 'static> WatchFunctions for FunctionSet<Watch, D> {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        self.call_add(watch)
    }
    fn remove(&mut self, watch: &Watch) {
        self.call_remove(watch);
    }
    fn toggled(&mut self, watch: &Watch) {
        self.call_toggled(watch);
    }
}

impl<D: Send + 'static> TimeoutFunctions for FunctionSet<Timeout, D> {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        self.call_add(timeout)
    }
    fn remove(&mut self, timeout: &Timeout) {
        self.call_remove(timeout);
    }
    fn toggled(&mut self, timeout: &Timeout) {
        self.call_toggled(timeout);
    }
}

impl<O, D: Send + 'static> Drop for FunctionSet<O, D> {
    fn drop(&mut self) {
        if let (Some(data), Some(free_data)) = (self.data.take(), self.free_data.take()) {
            free_data(data);
        }
    }
}

impl<O, D: Send + 'static> fmt::Debug for FunctionSet<O, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionSet")
            .field("object", &std::any::type_name::<O>())
            .field("data", &std::any::type_name::<D>())
            .finish_non_exhaustive()
    }
}
