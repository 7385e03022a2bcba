//! `DispatchQueue`: change-only status notifications turned into dispatches (C16).

use std::collections::VecDeque;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use slab::Slab;

use crate::source::Source;
use crate::status::{DispatchStatus, DispatchStatusFn};

/// Names one source in a [`DispatchQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DispatchKey {
    index: usize,
    generation: u64,
}

/// The sources of one loop that have queued work, and the dispatching of them (C16).
///
/// A producer calls its dispatch-status function only when the status *changes*, from any
/// thread, and setting the function never calls it. Glue must turn that into "exactly one
/// pending dispatch while data remains" — which every glue used to write by hand, and which
/// is easy to get wrong:
///
/// * the function must not hold the source strongly: the source owns the function, so that
///   would be a cycle (source → notifier → function → source) that leaks a connection never
///   detached. [`status_function`](Self::status_function) holds the queue weakly and names
///   the source by key;
/// * a notification may arrive while the loop is dispatching that very source, on another
///   thread: the source is marked idle *before* its status is read, so a change after the
///   read queues it again and none is lost;
/// * the status is read once after the function is installed ([`watch`](Self::watch)), since
///   the producer will not report the status it already has;
/// * a source still `DataRemains` after a batch of dispatches is queued again by the queue
///   itself: its status did not change, so no notification will come;
/// * a panic in `dispatch` (a message handler) leaves the panicking source and the rest of
///   the batch queued, and a panic in a status function is covered by
///   [`schedule_all`](Self::schedule_all): nothing is left with `DataRemains` undispatched
///   forever.
///
/// The queue holds each source strongly until [`remove`](Self::remove): attaching is what
/// keeps a source running. The `wake` function given to [`new`](Self::new) runs (with no
/// lock held) whenever a source becomes pending, from whatever thread: it should make the
/// host loop call [`run`](Self::run) soon — wake it if it is blocked, or schedule an idle
/// callback.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use loopglue::glue::DispatchQueue;
/// use loopglue::testing::SocketPeer;
///
/// let wakes = Arc::new(AtomicUsize::new(0));
/// let w = Arc::clone(&wakes);
/// let queue = DispatchQueue::new(move || {
///     w.fetch_add(1, Ordering::Relaxed);
/// });
///
/// let (ours, _theirs) = std::os::unix::net::UnixStream::pair()?;
/// let peer = SocketPeer::new(ours, 1024)?;
/// let key = queue.insert(Arc::new(peer.clone()));
/// queue.watch(key); // installs the status function, reads the status once
///
/// peer.post(b"work"); // from any thread: the status turns DataRemains
/// assert_eq!(wakes.load(Ordering::Relaxed), 1);
/// assert!(queue.is_pending());
/// assert_eq!(queue.run(64), 1); // from the loop: one dispatch, and the work is done
/// assert!(!queue.is_pending());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct DispatchQueue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Whether `state.queue` may be non-empty: lets `run` and the host loop skip the lock.
    pending: AtomicBool,
    wake: Box<dyn Fn() + Send + Sync>,
}

#[derive(Default)]
struct State {
    slots: Slab<Slot>,
    queue: VecDeque<usize>,
    next_generation: u64,
    /// The batch buffer, kept between runs so a dispatch round allocates nothing.
    spare: Vec<(DispatchKey, Arc<dyn Source>)>,
}

struct Slot {
    source: Arc<dyn Source>,
    generation: u64,
    queued: bool,
}

impl Shared {
    fn schedule(&self, key: DispatchKey) {
        let newly = {
            let mut state = self.state.lock();
            let state = &mut *state;
            match state.slots.get_mut(key.index) {
                Some(slot) if slot.generation == key.generation && !slot.queued => {
                    slot.queued = true;
                    state.queue.push_back(key.index);
                    // SeqCst pairs with the host loop's "I am about to block" flag: either
                    // it sees this, or `wake` sees that it is blocking.
                    self.pending.store(true, Ordering::SeqCst);
                    true
                }
                _ => false,
            }
        };
        if newly {
            (self.wake)();
        }
    }
}

impl DispatchQueue {
    /// An empty queue; `wake` is called whenever a source becomes pending (see above).
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> DispatchQueue {
        DispatchQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                pending: AtomicBool::new(false),
                wake: Box::new(wake),
            }),
        }
    }

    /// Adds `source`, idle; the queue holds it until [`remove`](Self::remove). Install its
    /// status function with [`watch`](Self::watch) once the rest of the glue is installed.
    pub fn insert(&self, source: Arc<dyn Source>) -> DispatchKey {
        let mut state = self.shared.state.lock();
        let generation = state.next_generation;
        state.next_generation += 1;
        let index = state.slots.insert(Slot {
            source,
            generation,
            queued: false,
        });
        DispatchKey { index, generation }
    }

    /// Removes the source of `key` and hands it back (drop it with no lock held). Its status
    /// function, if still installed, does nothing from now on.
    pub fn remove(&self, key: DispatchKey) -> Option<Arc<dyn Source>> {
        let mut state = self.shared.state.lock();
        match state.slots.get(key.index) {
            Some(slot) if slot.generation == key.generation => {
                let slot = state.slots.remove(key.index);
                if slot.queued {
                    state.queue.retain(|&i| i != key.index);
                }
                Some(slot.source)
            }
            _ => None,
        }
    }

    /// The source of `key`, if it is in the queue.
    pub fn get(&self, key: DispatchKey) -> Option<Arc<dyn Source>> {
        let state = self.shared.state.lock();
        state
            .slots
            .get(key.index)
            .filter(|slot| slot.generation == key.generation)
            .map(|slot| Arc::clone(&slot.source))
    }

    /// A dispatch-status function for the source of `key`: on `DataRemains` it queues the
    /// source and wakes the loop. It holds the queue weakly (no cycle through the source) and
    /// does nothing once the queue or the key is gone.
    pub fn status_function(&self, key: DispatchKey) -> DispatchStatusFn {
        let shared: Weak<Shared> = Arc::downgrade(&self.shared);
        Box::new(move |status| {
            if status == DispatchStatus::DataRemains {
                if let Some(shared) = shared.upgrade() {
                    shared.schedule(key);
                }
            }
        })
    }

    /// Installs [`status_function`](Self::status_function) on the source of `key`, then reads
    /// its status once and queues it if work is already waiting (C16: setting the function
    /// never calls it).
    ///
    /// # Panics
    ///
    /// If the source's `set_dispatch_status_function` or `dispatch_status` panics.
    pub fn watch(&self, key: DispatchKey) {
        let Some(source) = self.get(key) else {
            return;
        };
        source.set_dispatch_status_function(Some(self.status_function(key)));
        if source.dispatch_status() == DispatchStatus::DataRemains {
            self.schedule(key);
        }
    }

    /// Queues the source of `key` for dispatch (if it is not queued already) and wakes the
    /// loop.
    pub fn schedule(&self, key: DispatchKey) {
        self.shared.schedule(key);
    }

    /// Queues every source, for the next [`run`](Self::run) to read each one's status — after
    /// a panic escaped from a producer's code, in case it came from a status function and took
    /// a `DataRemains` notification with it. A source with nothing queued costs one
    /// `dispatch_status` call.
    pub fn schedule_all(&self) {
        let keys: Vec<DispatchKey> = {
            let state = self.shared.state.lock();
            state
                .slots
                .iter()
                .map(|(index, slot)| DispatchKey {
                    index,
                    generation: slot.generation,
                })
                .collect()
        };
        for key in keys {
            self.shared.schedule(key);
        }
    }

    /// Whether some source may be waiting for [`run`](Self::run): one atomic load, so a host
    /// loop can decide whether to block without taking a lock.
    pub fn is_pending(&self) -> bool {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// Dispatches the queued sources, each up to `batch` times while it reports
    /// `DataRemains`, and returns how many `dispatch` calls ran. A source with work left after
    /// its batch is queued again (it yields to the others). Call it from the host loop, with
    /// no lock held: `dispatch` runs the producer's handlers.
    ///
    /// # Panics
    ///
    /// If a source's `dispatch` or `dispatch_status` panics — after queuing that source and
    /// the rest of the batch again, so the next `run` carries on where this one stopped.
    #[inline]
    pub fn run(&self, batch: usize) -> usize {
        // The common case, nothing queued, costs one load and no call.
        if !self.shared.pending.load(Ordering::SeqCst) {
            return 0;
        }
        self.run_pending(batch)
    }

    fn run_pending(&self, batch: usize) -> usize {
        let mut taken = {
            let mut state = self.shared.state.lock();
            let state = &mut *state;
            self.shared.pending.store(false, Ordering::SeqCst);
            let mut taken = std::mem::take(&mut state.spare);
            while let Some(index) = state.queue.pop_front() {
                let slot = &mut state.slots[index];
                // Idle before its status is read: a change from now on queues it again.
                slot.queued = false;
                let key = DispatchKey {
                    index,
                    generation: slot.generation,
                };
                taken.push((key, Arc::clone(&slot.source)));
            }
            taken
        };
        let mut ran = 0;
        let mut panicked = None;
        let mut next = 0;
        while next < taken.len() {
            let (key, source) = &taken[next];
            next += 1;
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                let mut calls = 0;
                for _ in 0..batch {
                    if source.dispatch_status() != DispatchStatus::DataRemains {
                        return (calls, false);
                    }
                    calls += 1;
                    if source.dispatch() != DispatchStatus::DataRemains {
                        return (calls, false);
                    }
                }
                (calls, batch > 0)
            }));
            match outcome {
                Ok((calls, remains)) => {
                    ran += calls;
                    if remains {
                        self.shared.schedule(*key);
                    }
                }
                Err(payload) => {
                    // This source and those not reached yet go round again.
                    for (key, _) in &taken[next - 1..] {
                        self.shared.schedule(*key);
                    }
                    panicked = Some(payload);
                    break;
                }
            }
        }
        // The sources drop here, with no lock held; then the buffer goes back for next time.
        taken.clear();
        {
            let mut state = self.shared.state.lock();
            if state.spare.capacity() < taken.capacity() {
                state.spare = taken;
            }
        }
        if let Some(payload) = panicked {
            panic::resume_unwind(payload);
        }
        ran
    }

    /// How many sources the queue holds.
    pub fn len(&self) -> usize {
        self.shared.state.lock().slots.len()
    }

    /// Whether the queue holds no source.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every source and hands them back (to drop with no lock held).
    pub fn drain(&self) -> Vec<Arc<dyn Source>> {
        let mut state = self.shared.state.lock();
        state.queue.clear();
        self.shared.pending.store(false, Ordering::SeqCst);
        state.slots.drain().map(|slot| slot.source).collect()
    }
}

impl fmt::Debug for DispatchQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("DispatchQueue")
            .field("sources", &state.slots.len())
            .field("queued", &state.queue.len())
            .finish()
    }
}
