//! What the multi-threaded list probes record: per function set and per object, the calls
//! the set heard, in order, and how many times each set was freed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One call a function set heard about one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Add(bool),
    /// The set refused the add (or panicked in it).
    Refused,
    Toggled(bool),
    Remove,
}

#[derive(Default)]
pub struct Record {
    /// (set, object) → what that set heard about that object, in order.
    pub history: HashMap<(u64, u64), Vec<Event>>,
    /// set → how many times it was freed.
    pub freed: HashMap<u64, usize>,
    /// Every set made.
    pub sets: HashSet<u64>,
}

pub type Shared = Arc<Mutex<Record>>;

/// A function set's own part of the record: its number, and its free counted when dropped.
pub struct SetLog {
    pub set: u64,
    record: Shared,
}

impl SetLog {
    /// A new set's log, numbered once per process.
    pub fn new(record: &Shared) -> SetLog {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let set = NEXT.fetch_add(1, Ordering::Relaxed);
        record.lock().unwrap().sets.insert(set);
        SetLog {
            set,
            record: Arc::clone(record),
        }
    }

    pub fn note(&self, object: u64, event: Event) {
        self.record
            .lock()
            .unwrap()
            .history
            .entry((self.set, object))
            .or_default()
            .push(event);
    }
}

impl Drop for SetLog {
    /// The set's free-data ran.
    fn drop(&mut self) {
        *self
            .record
            .lock()
            .unwrap()
            .freed
            .entry(self.set)
            .or_default() += 1;
    }
}

/// xorshift64*: deterministic per thread, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
