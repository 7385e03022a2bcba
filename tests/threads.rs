//! C13 under load: 8 threads × 10,000 random operations on shared lists, with glue that
//! records, per function set and per object, the order of the calls it sees. Afterwards every
//! (set, object) history must read `add (toggled)* remove`, or be still open on the installed
//! set with the state the object really has; every set is freed exactly once.

mod support;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::{ObjectList, Timeout, TimeoutFunctions, Watch, WatchFlags, WatchFunctions};

use support::history::{Event, Rng, SetLog, Shared};

const THREADS: u64 = 8;
const OPS: usize = 10_000;

trait Obj: Clone + Send + Sync + 'static {
    fn id(&self) -> u64;
    fn enabled(&self) -> bool;
    fn poke(&self);
}

impl Obj for Watch {
    fn id(&self) -> u64 {
        Watch::id(self)
    }
    fn enabled(&self) -> bool {
        self.is_enabled()
    }
    fn poke(&self) {
        let _ = self.handle(WatchFlags::READABLE);
    }
}

impl Obj for Timeout {
    fn id(&self) -> u64 {
        Timeout::id(self)
    }
    fn enabled(&self) -> bool {
        self.is_enabled()
    }
    fn poke(&self) {
        let _ = self.handle();
    }
}

struct Recorder {
    log: SetLog,
}

impl Recorder {
    fn new(record: &Shared) -> Recorder {
        Recorder {
            log: SetLog::new(record),
        }
    }

    fn note(&self, object: u64, event: Event) {
        self.log.note(object, event);
    }
}

impl WatchFunctions for Recorder {
    fn add(&mut self, w: &Watch) -> io::Result<()> {
        self.note(w.id(), Event::Add(w.is_enabled()));
        Ok(())
    }
    fn remove(&mut self, w: &Watch) {
        self.note(w.id(), Event::Remove);
    }
    fn toggled(&mut self, w: &Watch) {
        self.note(w.id(), Event::Toggled(w.is_enabled()));
    }
}

impl TimeoutFunctions for Recorder {
    fn add(&mut self, t: &Timeout) -> io::Result<()> {
        self.note(t.id(), Event::Add(t.is_enabled()));
        Ok(())
    }
    fn remove(&mut self, t: &Timeout) {
        self.note(t.id(), Event::Remove);
    }
    fn toggled(&mut self, t: &Timeout) {
        self.note(t.id(), Event::Toggled(t.is_enabled()));
    }
}

/// Which set is installed now, so the checker knows whose histories may stay open.
type Installed = Arc<Mutex<Option<u64>>>;

fn hammer<O: Obj + loopglue::Object>(
    list: Arc<ObjectList<O>>,
    make: fn(&mut Rng) -> O,
    install: fn(&ObjectList<O>, Recorder) -> bool,
    record: &Shared,
    installed: &Installed,
) -> Vec<O> {
    let pool: Arc<Mutex<Vec<O>>> = Arc::default();
    let threads: Vec<_> = (0..THREADS)
        .map(|seed| {
            let (list, pool) = (Arc::clone(&list), Arc::clone(&pool));
            let (record, installed) = (Arc::clone(record), Arc::clone(installed));
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
                for _ in 0..OPS {
                    let pick = |rng: &mut Rng| {
                        let pool = pool.lock().unwrap();
                        (!pool.is_empty()).then(|| pool[rng.below(pool.len())].clone())
                    };
                    match rng.below(1000) {
                        0..=249 => {
                            let o = make(&mut rng);
                            list.add(&o).unwrap();
                            pool.lock().unwrap().push(o);
                        }
                        250..=499 => {
                            if let Some(o) = pick(&mut rng) {
                                list.remove(&o).unwrap();
                            }
                        }
                        500..=849 => {
                            if let Some(o) = pick(&mut rng) {
                                let on = rng.below(2) == 0;
                                list.toggle(&o, on).unwrap();
                            }
                        }
                        850..=995 => {
                            if let Some(o) = pick(&mut rng) {
                                o.poke();
                            }
                        }
                        996..=998 => {
                            // Install under the `installed` lock so the record of which set
                            // is current cannot interleave with another thread's install.
                            let mut current = installed.lock().unwrap();
                            let set = Recorder::new(&record);
                            let id = set.log.set;
                            if install(&list, set) {
                                *current = Some(id);
                            }
                        }
                        _ => {
                            let mut current = installed.lock().unwrap();
                            list.set_functions(None).unwrap();
                            *current = None;
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("no thread panics");
    }
    let all = pool.lock().unwrap().clone();
    all
}

fn check<O: Obj>(
    objects: &[O],
    list_has: impl Fn(&O) -> bool,
    record: &Shared,
    current: Option<u64>,
) {
    let record = record.lock().unwrap();
    let by_id: HashMap<u64, &O> = objects.iter().map(|o| (o.id(), o)).collect();
    let mut open_per_object: HashMap<u64, usize> = HashMap::new();
    for (&(set, object), events) in &record.history {
        let Some(Event::Add(mut state)) = events.first().copied() else {
            panic!("set {set} object {object}: history must start with add: {events:?}");
        };
        let mut closed = false;
        for (i, event) in events.iter().enumerate().skip(1) {
            assert!(
                !closed,
                "set {set} object {object}: calls after remove: {events:?}"
            );
            match *event {
                Event::Toggled(now) => {
                    assert_ne!(
                        now, state,
                        "toggled without a change (C9) at {i}: {events:?}"
                    );
                    state = now;
                }
                Event::Remove => closed = true,
                Event::Add(_) | Event::Refused => panic!("second add at {i}: {events:?}"),
            }
        }
        if !closed {
            assert_eq!(
                Some(set),
                current,
                "only the installed set may hold objects"
            );
            let o = by_id[&object];
            assert!(list_has(o), "an open history belongs to a tracked object");
            assert_eq!(state, o.enabled(), "the glue's last word is the real state");
            *open_per_object.entry(object).or_default() += 1;
        }
    }
    assert!(
        open_per_object.values().all(|&n| n == 1),
        "an object is known to one set at a time"
    );
    for (set, &n) in &record.freed {
        assert_eq!(n, 1, "set {set} freed {n} times");
    }
    if let Some(set) = current {
        assert!(
            !record.freed.contains_key(&set),
            "the installed set is not freed"
        );
        let tracked = objects.iter().filter(|o| list_has(o)).count();
        assert_eq!(
            open_per_object.len(),
            tracked,
            "the installed set knows every object"
        );
    }
}

fn run<O: Obj + loopglue::Object>(
    make: fn(&mut Rng) -> O,
    install: fn(&ObjectList<O>, Recorder) -> bool,
) {
    let record: Shared = Arc::default();
    let installed: Installed = Arc::default();
    let list = Arc::new(ObjectList::<O>::new());
    let first = Recorder::new(&record);
    *installed.lock().unwrap() = Some(first.log.set);
    assert!(install(&list, first));
    let objects = hammer(Arc::clone(&list), make, install, &record, &installed);
    let current = *installed.lock().unwrap();
    check(&objects, |o| list.contains(o), &record, current);

    // Dropping the list closes every history and frees the last set.
    drop(list);
    let record = record.lock().unwrap();
    assert!(record
        .history
        .values()
        .all(|events| events.last() == Some(&Event::Remove)));
    assert!(record.freed.values().all(|&n| n == 1));
    let sets = record
        .history
        .keys()
        .map(|(s, _)| *s)
        .collect::<std::collections::HashSet<_>>();
    assert!(sets.iter().all(|s| record.freed.contains_key(s)));
}

#[test]
fn c13_watch_lists_stay_consistent_under_8_threads() {
    run::<Watch>(
        |rng| {
            let fd = rng.below(64) as i32;
            if rng.below(2) == 0 {
                Watch::new(fd, WatchFlags::READABLE, |_| {})
            } else {
                Watch::new_disabled(fd, WatchFlags::WRITABLE, |_| {})
            }
        },
        |list, set| list.set_functions(Some(Box::new(set))).is_ok(),
    );
}

#[test]
fn c13_timeout_lists_stay_consistent_under_8_threads() {
    run::<Timeout>(
        |rng| {
            let ms = rng.below(100) as u64 + 1;
            Timeout::new(Duration::from_millis(ms), || {})
        },
        |list, set| list.set_functions(Some(Box::new(set))).is_ok(),
    );
}
