//! What a watch and a timeout have in common: identity, membership, the enabled flag and the
//! glue data slot.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::callout;

/// A value glue keeps on an object, shared so that reading it never holds a lock.
pub(crate) type DataValue = Arc<dyn Any + Send + Sync>;

/// Numbers for objects, lists and function-set generations. Never reused, never zero (zero
/// means "none" wherever one is stored).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Where an object stands with respect to its list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Phase {
    /// Never added, or its glue refused the add: it may be added.
    Fresh = 0,
    /// Tracked by a list.
    Member = 1,
    /// The producer removed it; the glue's `remove` has not returned yet. `handle` is already a
    /// no-op, but `fd()` still answers so that glue can unregister it (C4, C15).
    Detaching = 2,
    /// Removed for good: no fd, no flags, `handle` does nothing (C4).
    Invalid = 3,
}

thread_local! {
    /// The objects whose handler is running on this thread, innermost last.
    static HANDLING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Where removers wait for handlers on other threads to finish. One for the process: waiting
/// is rare (a remove racing a handler), so a shared condvar costs nothing per object.
struct HandlersDone {
    lock: Mutex<()>,
    done: Condvar,
}

static HANDLERS_DONE: HandlersDone = HandlersDone {
    lock: Mutex::new(()),
    done: Condvar::new(),
};

/// A `handle` call in progress; see [`ObjectCore::enter_handler`].
pub(crate) struct HandlerGuard<'a>(&'a ObjectCore);

impl Drop for HandlerGuard<'_> {
    fn drop(&mut self) {
        HANDLING.with(|ids| {
            let mut ids = ids.borrow_mut();
            if let Some(i) = ids.iter().rposition(|&id| id == self.0.id) {
                ids.remove(i);
            }
        });
        self.0.leave_handler();
    }
}

/// The state behind a [`Watch`](crate::Watch) or [`Timeout`](crate::Timeout) handle.
/// Public only so the sealed list trait can name it; not reachable from outside the crate.
pub struct ObjectCore {
    id: u64,
    phase: AtomicU8,
    enabled: AtomicBool,
    /// Bumped each time the object is (re)armed: an enable, or a timeout restart. A queued
    /// toggle compares it with what the glue was last told, so a restart that coalesced with
    /// a disable inside a callback still reaches the glue (C9).
    arms: AtomicU32,
    /// `handle` calls of this object in progress, on any thread: `remove` waits for those on
    /// other threads (C4, C15).
    running: AtomicU32,
    /// The list that tracks this object, and its key there; written under that list's lock.
    list: AtomicU64,
    key: AtomicU32,
    /// The set whose `add` accepted this object and whose `remove` has not run yet: its data
    /// slot is the one glue code outside any callback sees.
    owner: AtomicU64,
    /// Glue data, one value per function set (C5). Rarely more than one entry: two only while
    /// a set replacement is in flight.
    data: Mutex<Vec<(u64, DataValue)>>,
}

impl ObjectCore {
    pub(crate) fn new(enabled: bool) -> ObjectCore {
        ObjectCore {
            id: next_id(),
            phase: AtomicU8::new(Phase::Fresh as u8),
            enabled: AtomicBool::new(enabled),
            arms: AtomicU32::new(0),
            running: AtomicU32::new(0),
            list: AtomicU64::new(0),
            key: AtomicU32::new(0),
            owner: AtomicU64::new(0),
            data: Mutex::new(Vec::new()),
        }
    }

    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Fresh,
            1 => Phase::Member,
            2 => Phase::Detaching,
            _ => Phase::Invalid,
        }
    }

    #[inline]
    pub(crate) fn set_phase(&self, phase: Phase) {
        // SeqCst: paired with `enter_handler`, so that either a handler sees the object
        // detaching and does not start, or `wait_for_handlers` sees it running (C4).
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Marks a `handle` call in progress, or refuses if the object is being removed. The guard
    /// ends the call, also on unwind.
    #[inline]
    pub(crate) fn enter_handler(&self) -> Option<HandlerGuard<'_>> {
        self.running.fetch_add(1, Ordering::SeqCst);
        if self.phase.load(Ordering::SeqCst) >= Phase::Detaching as u8 {
            self.leave_handler();
            return None;
        }
        HANDLING.with(|ids| ids.borrow_mut().push(self.id));
        Some(HandlerGuard(self))
    }

    fn leave_handler(&self) {
        let before = self.running.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.phase.load(Ordering::SeqCst) >= Phase::Detaching as u8 {
            // A remover may be waiting: wake it. Taking the lock orders this with its check.
            let _lock = HANDLERS_DONE.lock.lock();
            HANDLERS_DONE.done.notify_all();
        }
    }

    /// Waits until no `handle` call of this object is in progress on another thread; calls on
    /// this thread (a handler removing its own object) are not waited for. The object must
    /// already be detaching, so no new call starts.
    pub(crate) fn wait_for_handlers(&self) {
        let own = HANDLING.with(|ids| ids.borrow().iter().filter(|&&id| id == self.id).count());
        let own = u32::try_from(own).unwrap_or(u32::MAX);
        if self.running.load(Ordering::SeqCst) <= own {
            return; // the usual case: nobody else is in a handler of this object
        }
        let mut lock = HANDLERS_DONE.lock.lock();
        while self.running.load(Ordering::SeqCst) > own {
            HANDLERS_DONE.done.wait(&mut lock);
        }
    }

    /// Counts an arming (an enable or a restart) and returns the new count.
    #[inline]
    pub(crate) fn bump_arms(&self) -> u32 {
        self.arms.fetch_add(1, Ordering::AcqRel).wrapping_add(1)
    }

    #[inline]
    pub(crate) fn arms(&self) -> u32 {
        self.arms.load(Ordering::Acquire)
    }

    /// Moves a fresh object into a list; false if another list got there first.
    #[inline]
    pub(crate) fn claim(&self) -> bool {
        self.phase
            .compare_exchange(
                Phase::Fresh as u8,
                Phase::Member as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    #[inline]
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
    }

    #[inline]
    pub(crate) fn list(&self) -> u64 {
        self.list.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn key(&self) -> usize {
        self.key.load(Ordering::Acquire) as usize
    }

    #[inline]
    pub(crate) fn join(&self, list: u64, key: u32) {
        self.key.store(key, Ordering::Release);
        self.list.store(list, Ordering::Release);
    }

    #[inline]
    pub(crate) fn leave(&self) {
        self.list.store(0, Ordering::Release);
    }

    #[inline]
    pub(crate) fn set_owner(&self, set: u64) {
        self.owner.store(set, Ordering::Release);
    }

    /// The set a data access from this thread addresses: the set whose callback is running on
    /// this thread for this object's list, else the set that owns the object.
    fn addressed_set(&self) -> u64 {
        let list = self.list();
        if list != 0 {
            if let Some(set) = callout::running_set(list) {
                return set;
            }
        }
        self.owner.load(Ordering::Acquire)
    }

    /// Stores `value` for the addressed set and hands back what it replaces, for the caller to
    /// drop with no lock held.
    pub(crate) fn replace_data(&self, value: Option<DataValue>) -> Option<DataValue> {
        let set = self.addressed_set();
        let mut slots = self.data.lock();
        let position = slots.iter().position(|(owner, _)| *owner == set);
        match (position, value) {
            (Some(i), Some(value)) => Some(std::mem::replace(&mut slots[i].1, value)),
            (Some(i), None) => Some(slots.swap_remove(i).1),
            (None, Some(value)) => {
                slots.push((set, value));
                None
            }
            (None, None) => None,
        }
    }

    pub(crate) fn data(&self) -> Option<DataValue> {
        let set = self.addressed_set();
        let slots = self.data.lock();
        slots
            .iter()
            .find(|(owner, _)| *owner == set)
            .map(|(_, value)| Arc::clone(value))
    }

    /// Takes the addressed set's value if it is a `T`.
    pub(crate) fn take_data_of<T: std::any::Any>(&self) -> Option<DataValue> {
        let set = self.addressed_set();
        let mut slots = self.data.lock();
        let i = slots
            .iter()
            .position(|(owner, value)| *owner == set && (**value).is::<T>())?;
        Some(slots.swap_remove(i).1)
    }

    /// Takes the value a set left behind once that set is done with this object.
    pub(crate) fn release_data(&self, set: u64) -> Option<DataValue> {
        let mut slots = self.data.lock();
        let i = slots.iter().position(|(owner, _)| *owner == set)?;
        Some(slots.swap_remove(i).1)
    }

    pub(crate) fn set_data<T: Any + Send + Sync>(&self, value: T) {
        // The replaced value drops here, after the slot lock is released.
        drop(self.replace_data(Some(Arc::new(value))));
    }

    pub(crate) fn data_of<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.data()?.downcast::<T>().ok()
    }

    pub(crate) fn take_typed<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.take_data_of::<T>()?.downcast::<T>().ok()
    }

    pub(crate) fn fmt_fields(&self, out: &mut fmt::DebugStruct<'_, '_>) {
        out.field("id", &self.id)
            .field("phase", &self.phase())
            .field("enabled", &self.is_enabled());
    }
}

impl fmt::Debug for ObjectCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("ObjectCore");
        self.fmt_fields(&mut out);
        out.finish()
    }
}

/// Equality and hashing by identity, shared by the two object handles.
macro_rules! identity_eq {
    ($handle:ty) => {
        impl PartialEq for $handle {
            fn eq(&self, other: &$handle) -> bool {
                std::sync::Arc::ptr_eq(&self.inner, &other.inner)
            }
        }

        impl Eq for $handle {}

        impl std::hash::Hash for $handle {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.core().id().hash(state);
            }
        }
    };
}
pub(crate) use identity_eq;
