//! `SourceData`: the identity of a source and the glue's per-source data slots.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::object::next_id;

/// What every handle of one [`Source`](crate::Source) shares: a process-unique identity and
/// one data slot per glue type — libdbus's `dbus_connection_set_data` /
/// `dbus_connection_get_data`, with the slot named by a Rust type instead of an allocated
/// integer.
///
/// A producer keeps one `SourceData` next to its lists (in the shared state its cheap handles
/// point to) and returns it from [`Source::data`](crate::Source::data). Glue uses it to
///
/// * recognise a source whatever handle it is given: two clones of a connection handle are
///   the same source ([`id`](Self::id)), so `detach(&clone)` finds what `attach(clone)` stored;
/// * keep its per-source state on the source itself, under a type private to the glue, so it
///   can tell "already attached here" (dbus-gmain's `connection_slot`).
///
/// Values are read as `Arc<T>`, so no lock is held while glue uses one, and a replaced or taken
/// value is dropped with no lock held.
///
/// # Examples
///
/// ```
/// use loopglue::SourceData;
///
/// // A glue's private slot type.
/// struct AttachedHere { key: usize }
///
/// let data = SourceData::new();
/// assert!(data.get::<AttachedHere>().is_none());
/// data.set(AttachedHere { key: 7 });
/// assert_eq!(data.get::<AttachedHere>().map(|a| a.key), Some(7));
/// assert_eq!(data.take::<AttachedHere>().map(|a| a.key), Some(7));
/// assert!(data.get::<AttachedHere>().is_none());
/// ```
#[doc(alias = "dbus_connection_set_data")]
#[doc(alias = "dbus_connection_get_data")]
#[doc(alias = "dbus_connection_allocate_data_slot")]
#[doc(alias = "dbus_connection_free_data_slot")]
#[doc(alias = "dbus_server_set_data")]
#[doc(alias = "dbus_server_get_data")]
#[doc(alias = "dbus_server_allocate_data_slot")]
#[doc(alias = "dbus_server_free_data_slot")]
pub struct SourceData {
    id: u64,
    slots: Mutex<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>,
}

impl SourceData {
    /// A fresh identity with every slot empty.
    pub fn new() -> SourceData {
        SourceData {
            id: next_id(),
            slots: Mutex::new(Vec::new()),
        }
    }

    /// A number that identifies the source for the life of the process; never reused, never
    /// zero.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Stores `value` in the slot of type `T` and returns what it replaced.
    #[doc(alias = "dbus_connection_set_data")]
    pub fn set<T: Any + Send + Sync>(&self, value: T) -> Option<Arc<T>> {
        self.replace(Arc::new(value))
    }

    /// Stores an already shared `value` in the slot of type `T` and returns what it replaced.
    pub fn replace<T: Any + Send + Sync>(&self, value: Arc<T>) -> Option<Arc<T>> {
        let mut slots = self.slots.lock();
        let value: Arc<dyn Any + Send + Sync> = value;
        let old = match slots.iter_mut().find(|(ty, _)| *ty == TypeId::of::<T>()) {
            Some((_, slot)) => Some(std::mem::replace(slot, value)),
            None => {
                slots.push((TypeId::of::<T>(), value));
                None
            }
        };
        drop(slots);
        old.and_then(|old| old.downcast::<T>().ok())
    }

    /// The value in the slot of type `T`, if any.
    #[doc(alias = "dbus_connection_get_data")]
    pub fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let slots = self.slots.lock();
        let value = slots
            .iter()
            .find(|(ty, _)| *ty == TypeId::of::<T>())
            .map(|(_, value)| Arc::clone(value))?;
        drop(slots);
        value.downcast::<T>().ok()
    }

    /// The value in the slot of type `T`, stored first by `make` if the slot is empty. `make`
    /// runs with no lock held; if another thread fills the slot meanwhile, its value wins and
    /// the one `make` built is dropped.
    pub fn get_or_insert_with<T: Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(value) = self.get::<T>() {
            return value;
        }
        let made = Arc::new(make());
        let mut slots = self.slots.lock();
        let existing = match slots.iter().find(|(ty, _)| *ty == TypeId::of::<T>()) {
            Some((_, value)) => Some(Arc::clone(value)),
            None => {
                slots.push((
                    TypeId::of::<T>(),
                    Arc::clone(&made) as Arc<dyn Any + Send + Sync>,
                ));
                None
            }
        };
        drop(slots);
        // Slots are keyed by their value's type, so the downcast cannot fail.
        existing
            .and_then(|value| value.downcast::<T>().ok())
            .unwrap_or(made)
    }

    /// Empties the slot of type `T` and returns its value.
    pub fn take<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let mut slots = self.slots.lock();
        let i = slots.iter().position(|(ty, _)| *ty == TypeId::of::<T>())?;
        let (_, value) = slots.swap_remove(i);
        drop(slots);
        value.downcast::<T>().ok()
    }
}

impl Default for SourceData {
    fn default() -> SourceData {
        SourceData::new()
    }
}

impl fmt::Debug for SourceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceData")
            .field("id", &self.id)
            .field("slots", &self.slots.lock().len())
            .finish()
    }
}
