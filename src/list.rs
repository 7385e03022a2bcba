//! `WatchList` and `TimeoutList`: the registries a producer embeds, and the deferred call-out
//! that lets every callback call back in.
//!
//! # How call-out works
//!
//! A list has one *call-out token* (`State::busy`). Whoever holds it is the only thread that
//! may call the installed function set; it takes the set out of the state, releases the lock,
//! calls, relocks and puts the set back. Every operation is an [`Op`] that the token holder
//! delivers:
//!
//! * a caller on a thread that is not inside this list's callbacks waits for the token, takes
//!   it, applies its op at once and then drains whatever its callbacks queued;
//! * a caller inside one of this list's callbacks (found through [`callout`]) cannot take the
//!   token its own thread holds: it updates the list's bookkeeping, queues the op and returns,
//!   and the token holder delivers the op, in order, before the outermost call returns (C11).
//!
//! So a set is never re-entered (C12), no lock is held while user code runs, and per object
//! the glue sees add → toggled* → remove in order whatever the threads (C13). Values that
//! user code owns — replaced sets (their free-data), glue data — are collected while the
//! token is held and dropped after it is released, with no lock held (C5, C6). A panic in
//! user code is caught, the remaining work is still done, and the first panic is resumed
//! once the list is consistent again (C14).

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};
use slab::Slab;

use crate::callout::{self, Callout, CalloutGuard};
use crate::error::{Error, SetFunctionsError};
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::object::{next_id, DataValue, ObjectCore, Phase};
use crate::timeout::Timeout;
use crate::watch::Watch;

/// A kind of object a list can hold: [`Watch`] or [`Timeout`]. Sealed.
pub trait Object: Clone + Send + Sync + fmt::Debug + 'static + sealed::Listed {
    /// The function-set trait object glue installs for this kind:
    /// `dyn` [`WatchFunctions`] or `dyn` [`TimeoutFunctions`].
    type Functions: ?Sized + Send + 'static;
}

mod sealed {
    use std::io;

    use crate::object::ObjectCore;

    pub trait Listed {
        /// Whether enabling again restarts something the glue runs (a timeout's period), so
        /// that an off-and-on must reach the glue even when it coalesces.
        const RESTARTS: bool;
        fn core(&self) -> &ObjectCore;
        fn call_add(set: &mut <Self as super::Object>::Functions, object: &Self) -> io::Result<()>
        where
            Self: super::Object;
        fn call_remove(set: &mut <Self as super::Object>::Functions, object: &Self)
        where
            Self: super::Object;
        fn call_toggled(set: &mut <Self as super::Object>::Functions, object: &Self)
        where
            Self: super::Object;
    }
}

macro_rules! listed {
    ($object:ty, $functions:path, $restarts:expr) => {
        impl Object for $object {
            type Functions = dyn $functions;
        }

        impl sealed::Listed for $object {
            const RESTARTS: bool = $restarts;
            fn core(&self) -> &ObjectCore {
                <$object>::core(self)
            }
            fn call_add(set: &mut (dyn $functions + 'static), object: &Self) -> io::Result<()> {
                set.add(object)
            }
            fn call_remove(set: &mut (dyn $functions + 'static), object: &Self) {
                set.remove(object)
            }
            fn call_toggled(set: &mut (dyn $functions + 'static), object: &Self) {
                set.toggled(object)
            }
        }
    };
}

listed!(Watch, WatchFunctions, false);
listed!(Timeout, TimeoutFunctions, true);

/// The watches of a producer: libdbus's `DBusWatchList`, with the call-out rules of C7–C14.
///
/// A connection type embeds one and forwards its `set_watch_functions` to
/// [`set_functions`](ObjectList::set_functions); it registers its watches with
/// [`add`](ObjectList::add), flips them with [`toggle`](ObjectList::toggle) and unregisters
/// them with [`remove`](ObjectList::remove) before closing their fd (C15).
///
/// # Examples
///
/// ```
/// use loopglue::{Watch, WatchFlags, WatchList};
///
/// let list = WatchList::new();
/// let watch = Watch::new_disabled(5, WatchFlags::WRITABLE, |_| {});
/// list.add(&watch)?; // no glue yet: tracked, replayed to the first set installed
/// list.toggle(&watch, true)?;
/// assert!(watch.is_enabled());
/// list.remove(&watch)?;
/// assert_eq!(watch.fd(), None); // removal invalidates (C4)
/// # Ok::<(), loopglue::Error>(())
/// ```
#[doc(alias = "DBusWatchList")]
pub type WatchList = ObjectList<Watch>;

/// The timeouts of a producer: libdbus's `DBusTimeoutList`. See [`WatchList`]; the same
/// rules apply.
#[doc(alias = "DBusTimeoutList")]
pub type TimeoutList = ObjectList<Timeout>;

/// A registry of watches or timeouts with an optional glue function set; use it as
/// [`WatchList`] or [`TimeoutList`].
///
/// Every method may be called from any thread (C13) and from inside any callback — glue
/// functions, free-data, data drops, object handlers — without deadlock (C11). A call made
/// from inside one of this list's own function-set callbacks cannot run at once without
/// re-entering the set (C12); it is applied to the list's bookkeeping at once and delivered to
/// the glue, in order, before the outermost call returns. A call from another thread while a
/// callback runs waits for it, as it would for libdbus's connection lock; so glue functions
/// must not block on a thread that may be calling into the same list.
pub struct ObjectList<O: Object> {
    id: u64,
    state: Mutex<State<O>>,
    idle: Condvar,
}

const NIL: usize = usize::MAX;

struct State<O: Object> {
    /// The installed set; `None` also while the token holder has it out for a call.
    set: Option<Box<O::Functions>>,
    /// The generation of the installed set, 0 when there is none.
    set_id: u64,
    /// The call-out token.
    busy: bool,
    waiting: usize,
    nodes: Slab<Node<O>>,
    head: usize,
    tail: usize,
    /// Ops queued from inside callbacks, delivered by the token holder.
    queue: VecDeque<Op<O>>,
    /// Nodes whose object is still a member: removed objects keep their node until their
    /// queued `Remove` is delivered, but no longer count (C11: `len` agrees with `contains`).
    members: usize,
}

struct Node<O> {
    object: O,
    prev: usize,
    next: usize,
    /// Whether the installed set's `add` accepted the object (and no `remove` followed).
    known: bool,
    /// The enabled state last told to the installed set, by `add` or `toggled`.
    told: bool,
    /// The object's arming count when the set was last told (see `ObjectCore::arms`).
    told_arms: u32,
}

enum Op<O> {
    Add(O),
    /// The object, and whether its removal waits for handlers on other threads.
    Remove(O, bool),
    Toggle(O),
}

/// What user code left behind while the token was held: dropped after it is released.
struct Trash<O: Object> {
    sets: Vec<Box<O::Functions>>,
    data: Vec<DataValue>,
    /// Objects removed by this call: it returns only once their handlers running on other
    /// threads have finished (C4, C15).
    removed: Vec<O>,
    panic: Option<Box<dyn Any + Send>>,
}

impl<O: Object> Trash<O> {
    fn new() -> Trash<O> {
        Trash {
            sets: Vec::new(),
            data: Vec::new(),
            removed: Vec::new(),
            panic: None,
        }
    }

    fn catch<R>(&mut self, f: impl FnOnce() -> R) -> Option<R> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(value) => Some(value),
            Err(payload) => {
                self.panic.get_or_insert(payload);
                None
            }
        }
    }

    fn release(&mut self, core: &ObjectCore, set: u64) {
        if set != 0 {
            self.data.extend(core.release_data(set));
        }
    }

    /// Drops everything and waits for the handlers of removed objects (no lock may be held),
    /// then resumes the first panic, if any (C14).
    fn empty(mut self) {
        if self.sets.is_empty()
            && self.data.is_empty()
            && self.removed.is_empty()
            && self.panic.is_none()
        {
            return; // the usual case, kept off the hot path of toggle/add/remove
        }
        for set in std::mem::take(&mut self.sets) {
            self.catch(move || drop(set));
        }
        for value in std::mem::take(&mut self.data) {
            self.catch(move || drop(value));
        }
        for object in std::mem::take(&mut self.removed) {
            object.core().wait_for_handlers();
        }
        if let Some(payload) = self.panic.take() {
            if !std::thread::panicking() {
                panic::resume_unwind(payload);
            }
        }
    }
}

enum Entry<'a, O: Object> {
    /// This thread holds the token.
    Owner(MutexGuard<'a, State<O>>),
    /// This thread is inside one of the list's callbacks: queue, do not call.
    Nested(MutexGuard<'a, State<O>>),
}

impl<O: Object> State<O> {
    fn link(&mut self, object: O) -> usize {
        let told = object.core().is_enabled();
        let told_arms = object.core().arms();
        let key = self.nodes.insert(Node {
            object,
            prev: self.tail,
            next: NIL,
            known: false,
            told,
            told_arms,
        });
        self.members += 1;
        match self.tail {
            NIL => self.head = key,
            tail => self.nodes[tail].next = key,
        }
        self.tail = key;
        key
    }

    fn unlink(&mut self, key: usize) -> Node<O> {
        let node = self.nodes.remove(key);
        match node.prev {
            NIL => self.head = node.next,
            prev => self.nodes[prev].next = node.next,
        }
        match node.next {
            NIL => self.tail = node.prev,
            next => self.nodes[next].prev = node.prev,
        }
        node
    }

    /// The key of `object` if it is (still) a node of this list.
    fn key_of(&self, list: u64, object: &O) -> Option<usize> {
        let core = object.core();
        if core.list() != list {
            return None;
        }
        let key = core.key();
        match self.nodes.get(key) {
            Some(node) if node.object.core().id() == core.id() => Some(key),
            _ => None,
        }
    }

    fn objects(&self) -> Vec<(usize, O)> {
        let mut out = Vec::with_capacity(self.nodes.len());
        let mut key = self.head;
        while key != NIL {
            let node = &self.nodes[key];
            out.push((key, node.object.clone()));
            key = node.next;
        }
        out
    }
}

impl<O: Object> ObjectList<O> {
    /// Creates an empty list with no function set.
    pub fn new() -> ObjectList<O> {
        ObjectList {
            id: next_id(),
            state: Mutex::new(State {
                set: None,
                set_id: 0,
                busy: false,
                waiting: 0,
                nodes: Slab::new(),
                head: NIL,
                tail: NIL,
                queue: VecDeque::new(),
                members: 0,
            }),
            idle: Condvar::new(),
        }
    }

    /// Starts tracking `object` and, if a set is installed, calls its `add` (C8).
    ///
    /// Called from inside one of this list's own function-set callbacks, the glue's answer
    /// cannot be known yet: the object is tracked at once, `Ok(())` is returned and the `add`
    /// is delivered when the callback returns. Should the glue refuse it then, the object is
    /// dropped from the list as if this call had failed, and [`contains`](Self::contains)
    /// turns false.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] with the glue's error, after which the object is not tracked and no
    /// `remove` follows; [`Error::AlreadyAdded`], [`Error::ForeignObject`] or
    /// [`Error::Removed`] for an object in the wrong state.
    ///
    /// # Panics
    ///
    /// If the glue's `add` panics, once the list is consistent: the object is then not
    /// tracked, as after a refusal (C14).
    #[doc(alias = "_dbus_watch_list_add_watch")]
    #[doc(alias = "_dbus_timeout_list_add_timeout")]
    pub fn add(&self, object: &O) -> Result<(), Error> {
        let core = object.core();
        let (mut state, owner) = match self.enter() {
            Entry::Owner(state) => (state, true),
            Entry::Nested(state) => (state, false),
        };
        match core.phase() {
            Phase::Fresh => {}
            Phase::Member | Phase::Detaching if core.list() == self.id => {
                return self.leave(state, Err(Error::AlreadyAdded), owner);
            }
            Phase::Member | Phase::Detaching => {
                return self.leave(state, Err(Error::ForeignObject), owner);
            }
            Phase::Invalid => return self.leave(state, Err(Error::Removed), owner),
        }
        let Ok(key) = u32::try_from(state.nodes.vacant_key()) else {
            // Objects keep their key in 32 bits: 2^32 objects would take hundreds of GiB.
            let full = io::Error::new(io::ErrorKind::OutOfMemory, "the list holds 2^32 objects");
            return self.leave(state, Err(Error::Refused(full)), owner);
        };
        if !core.claim() {
            // Another list took it between our look and our claim.
            return self.leave(state, Err(Error::ForeignObject), owner);
        }
        let linked = state.link(object.clone());
        debug_assert_eq!(linked, key as usize);
        core.join(self.id, key);
        self.run(state, Op::Add(object.clone()), owner)
            .map_err(Error::Refused)
    }

    /// Stops tracking `object`, calling the set's `remove` if its `add` accepted it (C8), and
    /// invalidates it (C4): from now on its `handle` does nothing, and once the glue's `remove`
    /// returns its fd and flags are gone. Close the fd only after this returns (C15).
    ///
    /// Before returning, it waits for calls of the object's handler that are running on other
    /// threads (a `handle` that started before the removal), like Linux's `del_timer_sync`,
    /// so that no handler reads the fd once the producer closes it. A handler running on the
    /// calling thread — one that removes its own object — is not waited for. So do not call it
    /// while holding a lock that the object's handler takes, or use
    /// [`remove_nowait`](Self::remove_nowait). Called from inside one of this list's own
    /// function-set callbacks, the wait happens when the outermost call into the list returns.
    ///
    /// Removing an object that was already removed does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::NotAdded`] or [`Error::ForeignObject`] if the object is not in this list.
    ///
    /// # Panics
    ///
    /// If the glue's `remove` panics, once the object is removed and the list consistent.
    #[doc(alias = "_dbus_watch_list_remove_watch")]
    #[doc(alias = "_dbus_timeout_list_remove_timeout")]
    pub fn remove(&self, object: &O) -> Result<(), Error> {
        self.remove_object(object, true)
    }

    /// Like [`remove`](Self::remove), but does not wait for handler calls running on other
    /// threads: after it returns, a handler that had already started may still be running.
    ///
    /// For producers whose handlers take a lock that the producer holds while it removes
    /// objects — libdbus calls its remove functions with its connection lock held, and
    /// `dbus_watch_handle` takes that lock — where waiting would deadlock; such a producer
    /// makes its own guarantee that a late handler does no harm.
    ///
    /// # Errors
    ///
    /// As [`remove`](Self::remove).
    ///
    /// # Panics
    ///
    /// As [`remove`](Self::remove).
    pub fn remove_nowait(&self, object: &O) -> Result<(), Error> {
        self.remove_object(object, false)
    }

    fn remove_object(&self, object: &O, wait: bool) -> Result<(), Error> {
        let core = object.core();
        let (state, owner) = match self.enter() {
            Entry::Owner(state) => (state, true),
            Entry::Nested(state) => (state, false),
        };
        let outcome = match core.phase() {
            Phase::Member if core.list() == self.id => None,
            Phase::Detaching | Phase::Invalid => Some(Ok(())),
            Phase::Member => Some(Err(Error::ForeignObject)),
            Phase::Fresh => Some(Err(Error::NotAdded)),
        };
        if let Some(outcome) = outcome {
            return self.leave(state, outcome, owner);
        }
        let mut state = state;
        core.set_phase(Phase::Detaching);
        state.members -= 1;
        self.run(state, Op::Remove(object.clone(), wait), owner)
            .map_err(Error::Refused)
    }

    /// Enables or disables `object`; the set's `toggled` runs only if the state really changes,
    /// and `is_enabled()` tells the new state inside it (C9).
    ///
    /// An object not yet added may be toggled too: it is added in that state. Toggling a
    /// removed object does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::ForeignObject`] if the object is in another list.
    ///
    /// # Panics
    ///
    /// If the glue's `toggled` panics, once the list is consistent; the new state stands.
    #[doc(alias = "_dbus_watch_list_toggle_watch")]
    #[doc(alias = "_dbus_timeout_list_toggle_timeout")]
    pub fn toggle(&self, object: &O, enabled: bool) -> Result<(), Error> {
        let core = object.core();
        let (state, owner) = match self.enter() {
            Entry::Owner(state) => (state, true),
            Entry::Nested(state) => (state, false),
        };
        let outcome = match core.phase() {
            Phase::Member if core.list() == self.id => None,
            Phase::Member => Some(Err(Error::ForeignObject)),
            Phase::Fresh => {
                core.set_enabled(enabled);
                Some(Ok(()))
            }
            Phase::Detaching | Phase::Invalid => Some(Ok(())),
        };
        if let Some(outcome) = outcome {
            return self.leave(state, outcome, owner);
        }
        if core.is_enabled() == enabled {
            return self.leave(state, Ok(()), owner);
        }
        core.set_enabled(enabled);
        if enabled {
            core.bump_arms();
        }
        self.run(state, Op::Toggle(object.clone()), owner)
            .map_err(Error::Refused)
    }

    /// Installs `functions` as the glue of this list, or uninstalls the current set with
    /// `None` — libdbus's `set_watch_functions` transaction (C7).
    ///
    /// The new set's `add` runs for every tracked object in insertion order, disabled ones too.
    /// If all succeed, the old set's `remove` runs for every object it had, then the old set
    /// is dropped (its free-data), and the new set is installed. If the new `add` fails for
    /// some object, the new set's `remove` runs for the objects it had accepted, the old set
    /// stays installed untouched, and the new set is handed back in the error.
    ///
    /// # Errors
    ///
    /// [`Error::Refused`] when the new set's `add` failed, and [`Error::Reentrant`] when
    /// called from inside a callback of this list; in both cases the error carries the set
    /// (dropping it runs its free-data).
    ///
    /// # Panics
    ///
    /// If the glue panics, once the list is consistent: a panic in the new `add` acts as a
    /// refusal (the new set is dropped), a panic in the old `remove` does not stop the switch.
    #[doc(alias = "dbus_connection_set_watch_functions")]
    #[doc(alias = "dbus_connection_set_timeout_functions")]
    #[doc(alias = "dbus_server_set_watch_functions")]
    #[doc(alias = "dbus_server_set_timeout_functions")]
    pub fn set_functions(
        &self,
        functions: Option<Box<O::Functions>>,
    ) -> Result<(), SetFunctionsError<O::Functions>> {
        let mut state = match self.enter() {
            Entry::Owner(state) => state,
            Entry::Nested(state) => {
                drop(state);
                return Err(SetFunctionsError::new(Error::Reentrant, functions));
            }
        };
        let mut trash = Trash::new();
        let snapshot = state.objects();
        let new_id = next_id();

        let mut accepted: Vec<(usize, (bool, u32))> = Vec::with_capacity(snapshot.len());
        let mut refusal: Option<io::Error> = None;
        let mut new_set = functions;
        if let Some(set) = new_set.as_mut() {
            let scope = Callout {
                list: self.id,
                set: new_id,
            };
            for (key, object) in &snapshot {
                let core = object.core();
                if core.phase() != Phase::Member {
                    continue; // removed from inside an earlier add: its Remove op is queued
                }
                let told = (core.is_enabled(), core.arms());
                let result = MutexGuard::unlocked(&mut state, || {
                    let _scope = CalloutGuard::enter(scope);
                    trash.catch(|| O::call_add(set, object))
                });
                match result {
                    Some(Ok(())) => accepted.push((*key, told)),
                    Some(Err(e)) => {
                        refusal = Some(e);
                        trash.release(core, new_id);
                        break;
                    }
                    None => {
                        trash.release(core, new_id);
                        break;
                    }
                }
            }
        }

        let failed = refusal.is_some() || trash.panic.is_some();
        if failed {
            // Roll back: the new set forgets what it accepted; the old set never noticed.
            if let Some(set) = new_set.as_mut() {
                let scope = Callout {
                    list: self.id,
                    set: new_id,
                };
                for (key, _) in &accepted {
                    let object = state.nodes[*key].object.clone();
                    MutexGuard::unlocked(&mut state, || {
                        let _scope = CalloutGuard::enter(scope);
                        trash.catch(|| O::call_remove(set, &object));
                    });
                    trash.release(object.core(), new_id);
                }
            }
        } else {
            let old_id = state.set_id;
            let mut old_set = state.set.take();
            let scope = Callout {
                list: self.id,
                set: old_id,
            };
            let mut accepted = accepted.into_iter().peekable();
            for (key, object) in &snapshot {
                let core = object.core();
                if let (Some(set), true) = (old_set.as_mut(), state.nodes[*key].known) {
                    MutexGuard::unlocked(&mut state, || {
                        let _scope = CalloutGuard::enter(scope);
                        trash.catch(|| O::call_remove(set, object));
                    });
                    trash.release(core, old_id);
                }
                let node = &mut state.nodes[*key];
                match accepted.next_if(|(k, _)| k == key) {
                    Some((_, (told, told_arms))) => {
                        node.known = true;
                        node.told = told;
                        node.told_arms = told_arms;
                        core.set_owner(new_id);
                    }
                    None => {
                        node.known = false;
                        core.set_owner(0);
                    }
                }
            }
            trash.sets.extend(old_set);
            state.set_id = if new_set.is_some() { new_id } else { 0 };
            state.set = new_set.take();
        }

        state = self.drain(state, &mut trash);
        self.release(state);
        if failed {
            if trash.panic.is_some() {
                // A set whose add panicked is freed like the rest before the panic resumes.
                trash.sets.extend(new_set.take());
            }
            trash.empty();
            let error = Error::Refused(refusal.unwrap_or_else(|| io::Error::other("add panicked")));
            return Err(SetFunctionsError::new(error, new_set));
        }
        trash.empty();
        Ok(())
    }

    /// Whether `object` is tracked by this list (added, not removed).
    pub fn contains(&self, object: &O) -> bool {
        let state = self.state.lock();
        state.key_of(self.id, object).is_some() && object.core().phase() == Phase::Member
    }

    /// How many objects the list tracks: those for which [`contains`](Self::contains) is true.
    pub fn len(&self) -> usize {
        self.state.lock().members
    }

    /// Whether the list tracks no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tracked objects, in insertion order: those for which [`contains`](Self::contains)
    /// is true.
    pub fn objects(&self) -> Vec<O> {
        let state = self.state.lock();
        state
            .objects()
            .into_iter()
            .map(|(_, object)| object)
            .filter(|object| object.core().phase() == Phase::Member)
            .collect()
    }

    /// Whether a function set is installed.
    pub fn has_functions(&self) -> bool {
        let state = self.state.lock();
        state.set_id != 0
    }

    /// Takes the call-out token, or finds that this thread is inside a callback that holds it.
    fn enter(&self) -> Entry<'_, O> {
        let mut state = self.state.lock();
        if state.busy {
            if callout::is_inside(self.id) {
                return Entry::Nested(state);
            }
            state.waiting += 1;
            while state.busy {
                self.idle.wait(&mut state);
            }
            state.waiting -= 1;
        }
        state.busy = true;
        Entry::Owner(state)
    }

    /// Gives the token back if this call took it.
    fn leave<T>(&self, state: MutexGuard<'_, State<O>>, outcome: T, owner: bool) -> T {
        if owner {
            self.release(state);
        }
        outcome
    }

    fn release(&self, mut state: MutexGuard<'_, State<O>>) {
        debug_assert!(state.queue.is_empty());
        state.busy = false;
        if state.waiting > 0 {
            self.idle.notify_one();
        }
    }

    /// Delivers `op` now if this call holds the token (then drains what it queued), or queues
    /// it for the holder. Returns the glue's refusal of an `Add` delivered now.
    fn run(&self, mut state: MutexGuard<'_, State<O>>, op: Op<O>, owner: bool) -> io::Result<()> {
        if !owner {
            state.queue.push_back(op);
            return Ok(());
        }
        let mut trash = Trash::new();
        let (state, outcome) = self.deliver(state, op, &mut trash);
        let state = self.drain(state, &mut trash);
        self.release(state);
        trash.empty();
        outcome
    }

    fn drain<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<O>>,
        trash: &mut Trash<O>,
    ) -> MutexGuard<'a, State<O>> {
        while let Some(op) = state.queue.pop_front() {
            // A queued add that the glue refuses has no caller left to tell; the object leaves
            // the list, which `contains` shows.
            state = self.deliver(state, op, trash).0;
        }
        state
    }

    /// Calls the installed set for one op, with the lock released around the call.
    fn deliver<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<O>>,
        op: Op<O>,
        trash: &mut Trash<O>,
    ) -> (MutexGuard<'a, State<O>>, io::Result<()>) {
        let scope = Callout {
            list: self.id,
            set: state.set_id,
        };
        let mut outcome = Ok(());
        match op {
            Op::Add(object) => {
                let Some(key) = state.key_of(self.id, &object) else {
                    return (state, outcome);
                };
                let core = object.core();
                if core.phase() != Phase::Member {
                    return (state, outcome); // removed before its add went out
                }
                let Some(mut set) = state.set.take() else {
                    return (state, outcome); // tracked; replayed to the next set
                };
                let (told, told_arms) = (core.is_enabled(), core.arms());
                let result = MutexGuard::unlocked(&mut state, || {
                    let _scope = CalloutGuard::enter(scope);
                    trash.catch(|| O::call_add(&mut set, &object))
                });
                state.set = Some(set);
                match result {
                    Some(Ok(())) => {
                        let node = &mut state.nodes[key];
                        node.known = true;
                        node.told = told;
                        node.told_arms = told_arms;
                        core.set_owner(scope.set);
                    }
                    refused => {
                        state.unlink(key);
                        if core.phase() == Phase::Member {
                            state.members -= 1; // a removed one was uncounted by `remove`
                        }
                        core.leave();
                        // Removed from inside its own add: that remove returned Ok, so the
                        // object stays removed (C4) rather than becoming addable again.
                        core.set_phase(match core.phase() {
                            Phase::Detaching => Phase::Invalid,
                            _ => Phase::Fresh,
                        });
                        trash.release(core, scope.set);
                        if let Some(Err(e)) = refused {
                            outcome = Err(e);
                        }
                    }
                }
            }
            Op::Remove(object, wait) => {
                let Some(key) = state.key_of(self.id, &object) else {
                    return (state, outcome);
                };
                let core = object.core();
                if state.nodes[key].known {
                    if let Some(mut set) = state.set.take() {
                        MutexGuard::unlocked(&mut state, || {
                            let _scope = CalloutGuard::enter(scope);
                            trash.catch(|| O::call_remove(&mut set, &object));
                        });
                        state.set = Some(set);
                    }
                }
                state.unlink(key);
                core.leave();
                core.set_owner(0);
                core.set_phase(Phase::Invalid);
                trash.release(core, scope.set);
                if wait {
                    trash.removed.push(object);
                }
            }
            Op::Toggle(object) => {
                let Some(key) = state.key_of(self.id, &object) else {
                    return (state, outcome);
                };
                let core = object.core();
                let (enabled, arms) = (core.is_enabled(), core.arms());
                let node = &mut state.nodes[key];
                // Toggles that cancel out before delivery reach the glue as nothing (C9) —
                // except that a timeout disabled and enabled again, or restarted, must restart
                // its period: the glue hears `toggled` with the timeout enabled.
                let restart = enabled && O::RESTARTS && node.told_arms != arms;
                if !node.known
                    || (node.told == enabled && !restart)
                    || core.phase() != Phase::Member
                {
                    return (state, outcome);
                }
                node.told = enabled;
                node.told_arms = arms;
                if let Some(mut set) = state.set.take() {
                    MutexGuard::unlocked(&mut state, || {
                        let _scope = CalloutGuard::enter(scope);
                        trash.catch(|| O::call_toggled(&mut set, &object));
                    });
                    state.set = Some(set);
                }
            }
        }
        (state, outcome)
    }
}

impl ObjectList<Timeout> {
    /// Gives `timeout` a new interval, enables it and restarts its period from now — what
    /// libdbus does when a timeout's interval changes (it disables and re-enables the
    /// timeout), and libvirt's `virEventUpdateTimeout`.
    ///
    /// The glue hears it as one `toggled` call in which `is_enabled()` is true and
    /// `interval()` tells the new interval; glue restarts the period from then (C9, C10). This
    /// is the only way a timeout's interval changes. A timeout not yet added just takes the
    /// new interval and state; a removed one is left alone.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use loopglue::testing::MockLoop;
    /// use loopglue::{Timeout, TimeoutList};
    ///
    /// let mock = MockLoop::new();
    /// let list = TimeoutList::new();
    /// list.set_functions(Some(mock.timeout_functions())).map_err(|e| e.into_error())?;
    /// let keepalive = Timeout::new(Duration::from_secs(5), || {});
    /// list.add(&keepalive)?;
    /// mock.advance(Duration::from_secs(4));
    /// list.restart(&keepalive, Duration::from_secs(2))?; // due 2 s from now, not at 5 s
    /// assert_eq!(keepalive.interval(), Duration::from_secs(2));
    /// assert_eq!(mock.next_deadline(), Some(Duration::from_secs(6)));
    /// # Ok::<(), loopglue::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ForeignObject`] if the timeout is in another list.
    ///
    /// # Panics
    ///
    /// If the glue's `toggled` panics, once the list is consistent; the new state stands.
    pub fn restart(&self, timeout: &Timeout, interval: Duration) -> Result<(), Error> {
        let core = timeout.core();
        let (state, owner) = match self.enter() {
            Entry::Owner(state) => (state, true),
            Entry::Nested(state) => (state, false),
        };
        match core.phase() {
            Phase::Member if core.list() == self.id => {}
            Phase::Member => return self.leave(state, Err(Error::ForeignObject), owner),
            Phase::Fresh => {
                timeout.set_interval(interval);
                core.set_enabled(true);
                return self.leave(state, Ok(()), owner);
            }
            Phase::Detaching | Phase::Invalid => return self.leave(state, Ok(()), owner),
        }
        timeout.set_interval(interval);
        core.set_enabled(true);
        core.bump_arms();
        self.run(state, Op::Toggle(timeout.clone()), owner)
            .map_err(Error::Refused)
    }
}

impl<O: Object> Default for ObjectList<O> {
    fn default() -> ObjectList<O> {
        ObjectList::new()
    }
}

impl<O: Object> Drop for ObjectList<O> {
    /// Uninstalls the set as `set_functions(None)` would — its `remove` for every object it
    /// has, then its free-data — and invalidates every object.
    fn drop(&mut self) {
        let mut trash = Trash::<O>::new();
        let state = self.state.get_mut();
        let mut set = state.set.take();
        let set_id = state.set_id;
        let scope = Callout {
            list: self.id,
            set: set_id,
        };
        for (key, object) in state.objects() {
            let core = object.core();
            core.set_phase(Phase::Detaching); // no handler starts from here on
            if let (Some(set), true) = (set.as_mut(), state.nodes[key].known) {
                let _scope = CalloutGuard::enter(scope);
                trash.catch(|| O::call_remove(set, &object));
            }
            trash.release(core, set_id);
            core.leave();
            core.set_owner(0);
            core.set_phase(Phase::Invalid);
            trash.removed.push(object);
        }
        state.nodes.clear();
        state.members = 0;
        trash.sets.extend(set);
        trash.empty();
    }
}

impl<O: Object> fmt::Debug for ObjectList<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("ObjectList")
            .field("len", &state.nodes.len())
            .field("has_functions", &(state.set_id != 0))
            .field("busy", &state.busy)
            .finish()
    }
}
