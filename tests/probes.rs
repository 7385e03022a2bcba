//! Reliability probes kept from the outside review (issue 7), bounded in time and
//! deterministic in what they assert:
//!
//! * two threads replacing function sets — some of which refuse or panic at a random add —
//!   while four others add, remove, toggle and handle objects (C7, C13, C14): every set hears
//!   `add (toggled)* remove` per object, or a refusal, or still holds the object when it is
//!   the installed set; every set is freed exactly once and every glue data value dropped
//!   exactly once.
//!
//! The other probes live beside their subject: `tests/add_failures.rs` (the add-failure sweep),
//! `tests/panics.rs` (a panic in every callback), and the fd-reuse cases in
//! `tests/mock_loop.rs`.

mod support;

use std::collections::{HashMap, HashSet};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use loopglue::{Watch, WatchFlags, WatchFunctions, WatchList};

use support::history::{Event, Record, Rng, SetLog, Shared};

const WORKERS: u64 = 4;
const WORKER_OPS: usize = 3_000;
const REPLACERS: u64 = 2;
const REPLACEMENTS: usize = 200;
const ANCHORS: usize = 16;

/// Glue data stored by every add (accepted or not); stores and drops are counted.
struct Tag(Arc<AtomicUsize>);

impl Drop for Tag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy)]
enum Fail {
    Never,
    Refuse(usize),
    Panic(usize),
}

struct Recorder {
    log: SetLog,
    adds: usize,
    fail: Fail,
    stored: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Recorder {
    fn new(
        record: &Shared,
        fail: Fail,
        stored: &Arc<AtomicUsize>,
        dropped: &Arc<AtomicUsize>,
    ) -> Recorder {
        Recorder {
            log: SetLog::new(record),
            adds: 0,
            fail,
            stored: Arc::clone(stored),
            dropped: Arc::clone(dropped),
        }
    }

    fn note(&self, object: u64, event: Event) {
        self.log.note(object, event);
    }
}

impl WatchFunctions for Recorder {
    fn add(&mut self, w: &Watch) -> io::Result<()> {
        self.adds += 1;
        self.stored.fetch_add(1, Ordering::SeqCst);
        w.set_data(Tag(Arc::clone(&self.dropped)));
        match self.fail {
            Fail::Refuse(k) if k == self.adds => {
                self.note(w.id(), Event::Refused);
                Err(io::Error::other("probe refuses"))
            }
            Fail::Panic(k) if k == self.adds => {
                self.note(w.id(), Event::Refused);
                panic!("probe: add panics");
            }
            _ => {
                self.note(w.id(), Event::Add(w.is_enabled()));
                Ok(())
            }
        }
    }
    fn remove(&mut self, w: &Watch) {
        self.note(w.id(), Event::Remove);
    }
    fn toggled(&mut self, w: &Watch) {
        self.note(w.id(), Event::Toggled(w.is_enabled()));
    }
}

/// Checks every history; returns the sets still holding objects.
fn check(record: &Record, objects: &[Watch], list: &WatchList) -> HashSet<u64> {
    let by_id: HashMap<u64, &Watch> = objects.iter().map(|o| (o.id(), o)).collect();
    let mut open: HashMap<u64, Vec<u64>> = HashMap::new();
    for (&(set, object), events) in &record.history {
        let mut state = match events[0] {
            Event::Add(on) => on,
            Event::Refused => {
                assert_eq!(
                    events.len(),
                    1,
                    "set {set}: calls after a refusal: {events:?}"
                );
                continue;
            }
            first => panic!("set {set} object {object}: starts with {first:?}: {events:?}"),
        };
        let mut closed = false;
        for event in &events[1..] {
            assert!(
                !closed,
                "set {set} object {object}: calls after remove: {events:?}"
            );
            match *event {
                Event::Toggled(on) => {
                    assert_ne!(on, state, "toggled without a change (C9): {events:?}");
                    state = on;
                }
                Event::Remove => closed = true,
                Event::Add(_) | Event::Refused => panic!("a second add: {events:?}"),
            }
        }
        if !closed {
            let o = by_id[&object];
            assert!(
                list.contains(o),
                "an open history belongs to a tracked object"
            );
            assert_eq!(
                state,
                o.is_enabled(),
                "the glue's last word is the real state"
            );
            open.entry(set).or_default().push(object);
        }
    }
    assert!(
        open.len() <= 1,
        "only the installed set may hold objects: {open:?}"
    );
    if let Some((set, held)) = open.iter().next() {
        assert!(
            !record.freed.contains_key(set),
            "the installed set is not freed"
        );
        assert_eq!(
            held.len(),
            list.len(),
            "the installed set knows every object"
        );
    }
    for (set, &n) in &record.freed {
        assert_eq!(n, 1, "set {set} freed {n} times");
    }
    open.into_keys().collect()
}

/// Keeps the deliberate panics (messages starting with "probe:") out of the output, and
/// quick; every other panic is reported as usual.
fn quiet_probes() {
    let report = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
        if !message.is_some_and(|m| m.starts_with("probe:")) {
            report(info);
        }
    }));
}

#[test]
fn sets_replaced_from_two_threads_while_four_others_use_the_list() {
    quiet_probes();
    let record: Shared = Arc::default();
    let stored = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let list = Arc::new(WatchList::new());
    let pool: Arc<Mutex<Vec<Watch>>> = Arc::default();
    let replacer_panics = Arc::new(AtomicUsize::new(0));
    // Watches the workers never touch: a set that panics at its k-th add (k <= ANCHORS) meets
    // its panic whatever the workers have done by then. Without them, on a loaded machine the
    // replacers could run while the list was nearly empty and meet no panic at all.
    let anchors: Vec<Watch> = (0..ANCHORS)
        .map(|fd| Watch::new(fd as i32, WatchFlags::READABLE, |_| {}))
        .collect();
    for anchor in &anchors {
        list.add(anchor).unwrap();
    }

    let mut threads = Vec::new();
    for seed in 0..WORKERS {
        let (list, pool) = (Arc::clone(&list), Arc::clone(&pool));
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
            for _ in 0..WORKER_OPS {
                let pick = |rng: &mut Rng| {
                    let pool = pool.lock().unwrap();
                    (!pool.is_empty()).then(|| pool[rng.below(pool.len())].clone())
                };
                match rng.below(100) {
                    0..=29 => {
                        let fd = rng.below(64) as i32;
                        let w = if rng.below(2) == 0 {
                            Watch::new(fd, WatchFlags::READABLE, |_| {})
                        } else {
                            Watch::new_disabled(fd, WatchFlags::WRITABLE, |_| {})
                        };
                        // A refusal or a panic of a set being installed meanwhile may make it
                        // refused here; it is then not tracked, which the check sees.
                        let added = panic::catch_unwind(AssertUnwindSafe(|| list.add(&w)));
                        if matches!(added, Ok(Ok(()))) {
                            pool.lock().unwrap().push(w);
                        }
                    }
                    30..=57 => {
                        if let Some(w) = pick(&mut rng) {
                            list.remove(&w).unwrap();
                        }
                    }
                    58..=89 => {
                        if let Some(w) = pick(&mut rng) {
                            list.toggle(&w, rng.below(2) == 0).unwrap();
                        }
                    }
                    _ => {
                        if let Some(w) = pick(&mut rng) {
                            let _ = w.handle(WatchFlags::READABLE);
                        }
                    }
                }
            }
        }));
    }
    for seed in 0..REPLACERS {
        let (list, record) = (Arc::clone(&list), Arc::clone(&record));
        let (stored, dropped, panics) = (
            Arc::clone(&stored),
            Arc::clone(&dropped),
            Arc::clone(&replacer_panics),
        );
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (seed + 1));
            for _ in 0..REPLACEMENTS {
                let fail = match rng.below(10) {
                    0..=5 => Fail::Never,
                    6..=7 => Fail::Refuse(1 + rng.below(40)),
                    _ => Fail::Panic(1 + rng.below(40)),
                };
                let set = (rng.below(20) != 0).then(|| {
                    Box::new(Recorder::new(&record, fail, &stored, &dropped))
                        as Box<dyn WatchFunctions>
                });
                match panic::catch_unwind(AssertUnwindSafe(|| list.set_functions(set))) {
                    Ok(Ok(())) => {}
                    Ok(Err(refused)) => drop(refused), // frees it
                    Err(_) => {
                        panics.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for t in threads {
        t.join().expect("no thread panics but on purpose");
    }

    let mut objects = pool.lock().unwrap().clone();
    objects.extend(anchors.iter().cloned());
    let installed = check(&record.lock().unwrap(), &objects, &list);
    {
        let record = record.lock().unwrap();
        let unfreed: Vec<u64> = record
            .sets
            .iter()
            .copied()
            .filter(|s| !record.freed.contains_key(s))
            .collect();
        assert!(unfreed.len() <= 1, "sets never freed: {unfreed:?}");
        assert_eq!(list.has_functions(), unfreed.len() == 1);
        assert!(installed.iter().all(|s| unfreed.contains(s)));
    }
    assert!(
        replacer_panics.load(Ordering::SeqCst) > 0,
        "the probe must have met panicking sets"
    );

    // Dropping the list closes every history, frees the last set and drops every value.
    drop(list);
    let record = record.lock().unwrap();
    for (key, events) in &record.history {
        assert!(
            matches!(events.last(), Some(Event::Remove | Event::Refused)),
            "{key:?} left open: {events:?}"
        );
    }
    assert!(record.sets.iter().all(|s| record.freed.get(s) == Some(&1)));
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        stored.load(Ordering::SeqCst),
        "every glue data value dropped exactly once"
    );
}
