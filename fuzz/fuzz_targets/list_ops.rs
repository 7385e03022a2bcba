//! Random operations on a `WatchList` and a `TimeoutList` — add, remove, toggle, restart,
//! handle, replace or uninstall the function set — with glue that refuses or panics where
//! the input says, handlers that call back into the list, and glue that calls back into the
//! list from inside its own callbacks. After every operation:
//!
//! * `len`, `objects` and `contains` agree, for every object ever made;
//! * every set heard, per object, `add (toggled)* remove` — or a refusal — in order, and the
//!   installed set holds exactly the tracked objects with their real state;
//! * no set is freed twice.
//!
//! At the end the lists are dropped: every history is closed, every set freed exactly once,
//! every glue data value dropped exactly once. The only panics allowed are the injected ones.

#![no_main]

use std::collections::HashMap;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use loopglue::{
    Object, ObjectList, Timeout, TimeoutFunctions, TimeoutList, Watch, WatchFlags, WatchFunctions,
    WatchList,
};

/// Panic payloads of injected panics start with this; any other panic is a finding.
const INJECTED: &str = "fuzz: injected";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Add(bool),
    Refused,
    Toggled(bool),
    Remove,
}

#[derive(Default)]
struct Record {
    history: HashMap<(u64, u64), Vec<Event>>,
    freed: HashMap<u64, usize>,
    sets: Vec<u64>,
}

/// What a set does on its k-th call, as the input decided.
#[derive(Clone, Copy, Debug)]
enum Trick {
    Refuse,
    Panic,
    /// From inside the callback: toggle the object (a queued call).
    Toggle,
    /// From inside the callback: remove the object (a queued call).
    Remove,
}

struct Shared {
    record: Mutex<Record>,
    stored: AtomicUsize,
    dropped: AtomicUsize,
}

struct Tag(Arc<Shared>);

impl Drop for Tag {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// The operations a recorder needs from its list, for both kinds.
trait Kind: Object {
    fn id(&self) -> u64;
    fn enabled(&self) -> bool;
    fn store(&self, tag: Tag);
}

impl Kind for Watch {
    fn id(&self) -> u64 {
        Watch::id(self)
    }
    fn enabled(&self) -> bool {
        self.is_enabled()
    }
    fn store(&self, tag: Tag) {
        self.set_data(tag);
    }
}

impl Kind for Timeout {
    fn id(&self) -> u64 {
        Timeout::id(self)
    }
    fn enabled(&self) -> bool {
        self.is_enabled()
    }
    fn store(&self, tag: Tag) {
        self.set_data(tag);
    }
}

struct Recorder<O: Kind> {
    set: u64,
    shared: Arc<Shared>,
    /// Weak: the list holds the set.
    list: Weak<ObjectList<O>>,
    calls: usize,
    tricks: Vec<(usize, Trick)>,
}

impl<O: Kind> Recorder<O> {
    fn new(shared: &Arc<Shared>, list: &Arc<ObjectList<O>>, tricks: Vec<(usize, Trick)>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let set = NEXT.fetch_add(1, Ordering::Relaxed);
        shared.record.lock().unwrap().sets.push(set);
        Recorder {
            set,
            shared: Arc::clone(shared),
            list: Arc::downgrade(list),
            calls: 0,
            tricks,
        }
    }

    fn note(&self, object: u64, event: Event) {
        let mut record = self.shared.record.lock().unwrap();
        record
            .history
            .entry((self.set, object))
            .or_default()
            .push(event);
    }

    fn trick(&mut self) -> Option<Trick> {
        self.calls += 1;
        self.tricks
            .iter()
            .find(|(k, _)| *k == self.calls)
            .map(|(_, trick)| *trick)
    }

    fn on_add(&mut self, o: &O) -> io::Result<()> {
        self.shared.stored.fetch_add(1, Ordering::SeqCst);
        o.store(Tag(Arc::clone(&self.shared)));
        match self.trick() {
            Some(Trick::Refuse) => {
                self.note(o.id(), Event::Refused);
                Err(io::Error::other("refused"))
            }
            Some(Trick::Panic) => {
                self.note(o.id(), Event::Refused);
                panic!("{INJECTED} in add");
            }
            trick => {
                self.note(o.id(), Event::Add(o.enabled()));
                self.nested(trick, o);
                Ok(())
            }
        }
    }

    fn on_remove(&mut self, o: &O) {
        self.note(o.id(), Event::Remove);
        if let Some(Trick::Panic) = self.trick() {
            panic!("{INJECTED} in remove");
        }
    }

    fn on_toggled(&mut self, o: &O) {
        self.note(o.id(), Event::Toggled(o.enabled()));
        match self.trick() {
            Some(Trick::Panic) => panic!("{INJECTED} in toggled"),
            trick => self.nested(trick, o),
        }
    }

    fn nested(&self, trick: Option<Trick>, o: &O) {
        let Some(list) = self.list.upgrade() else {
            return;
        };
        match trick {
            Some(Trick::Toggle) => {
                let _ = list.toggle(o, !o.enabled());
            }
            Some(Trick::Remove) => {
                let _ = list.remove(o);
            }
            _ => {}
        }
    }
}

impl WatchFunctions for Recorder<Watch> {
    fn add(&mut self, w: &Watch) -> io::Result<()> {
        self.on_add(w)
    }
    fn remove(&mut self, w: &Watch) {
        self.on_remove(w)
    }
    fn toggled(&mut self, w: &Watch) {
        self.on_toggled(w)
    }
}

impl TimeoutFunctions for Recorder<Timeout> {
    fn add(&mut self, t: &Timeout) -> io::Result<()> {
        self.on_add(t)
    }
    fn remove(&mut self, t: &Timeout) {
        self.on_remove(t)
    }
    fn toggled(&mut self, t: &Timeout) {
        self.on_toggled(t)
    }
}

impl<O: Kind> Drop for Recorder<O> {
    fn drop(&mut self) {
        *self
            .shared
            .record
            .lock()
            .unwrap()
            .freed
            .entry(self.set)
            .or_default() += 1;
    }
}

/// Input bytes, read one at a time (zero once used up).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }
}

fn tricks(input: &mut Input<'_>) -> Vec<(usize, Trick)> {
    (0..input.below(3))
        .map(|_| {
            let k = 1 + input.below(8);
            let trick = match input.below(4) {
                0 => Trick::Refuse,
                1 => Trick::Panic,
                2 => Trick::Toggle,
                _ => Trick::Remove,
            };
            (k, trick)
        })
        .collect()
}

/// Runs `f`, letting only injected panics through.
fn guarded(f: impl FnOnce()) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !message.starts_with(INJECTED) {
            panic::resume_unwind(payload);
        }
    }
}

/// One list under test, with every object made for it and the set believed installed.
struct Subject<O: Kind> {
    list: Arc<ObjectList<O>>,
    made: Vec<O>,
}

impl<O: Kind + Poke> Subject<O> {
    fn step(
        &mut self,
        input: &mut Input<'_>,
        shared: &Arc<Shared>,
        make: &dyn Fn(&mut Input<'_>, &Arc<ObjectList<O>>) -> O,
        install: &dyn Fn(&ObjectList<O>, Option<Recorder<O>>),
    ) {
        let pick = |input: &mut Input<'_>, made: &[O]| {
            (!made.is_empty()).then(|| made[input.below(made.len())].clone())
        };
        match input.below(6) {
            0 => {
                let o = make(input, &self.list);
                self.made.push(o.clone());
                let list = Arc::clone(&self.list);
                guarded(move || {
                    let _ = list.add(&o);
                });
            }
            1 => {
                if let Some(o) = pick(input, &self.made) {
                    let list = Arc::clone(&self.list);
                    guarded(move || {
                        let _ = list.remove(&o);
                    });
                }
            }
            2 => {
                if let Some(o) = pick(input, &self.made) {
                    let on = input.below(2) == 0;
                    let list = Arc::clone(&self.list);
                    guarded(move || {
                        let _ = list.toggle(&o, on);
                    });
                }
            }
            3 => {
                let set =
                    (input.below(8) != 0).then(|| Recorder::new(shared, &self.list, tricks(input)));
                let list = Arc::clone(&self.list);
                guarded(move || install(&list, set));
            }
            _ => {
                if let Some(o) = pick(input, &self.made) {
                    // Handlers call back into the list (see `make`).
                    guarded(move || poke(&o));
                }
            }
        }
    }

    fn check(&self, shared: &Shared) {
        let objects = self.list.objects();
        assert_eq!(self.list.len(), objects.len(), "len and objects agree");
        for o in &self.made {
            assert_eq!(
                self.list.contains(o),
                objects.iter().any(|x| x.id() == o.id()),
                "contains and objects agree"
            );
        }
        let record = shared.record.lock().unwrap();
        let mut holders: HashMap<u64, usize> = HashMap::new();
        for (&(set, object), events) in &record.history {
            let Some(o) = self.made.iter().find(|o| o.id() == object) else {
                continue; // the other list's object
            };
            let mut state = match events[0] {
                Event::Add(on) => on,
                Event::Refused => {
                    assert_eq!(events.len(), 1, "calls after a refusal: {events:?}");
                    continue;
                }
                _ => panic!("history starts without add: {events:?}"),
            };
            let mut closed = false;
            for event in &events[1..] {
                assert!(!closed, "calls after remove: {events:?}");
                match *event {
                    Event::Toggled(on) => state = on,
                    Event::Remove => closed = true,
                    _ => panic!("a second add: {events:?}"),
                }
            }
            if !closed {
                assert!(
                    self.list.contains(o),
                    "an open history for an untracked object: {events:?}"
                );
                assert_eq!(
                    state,
                    o.enabled(),
                    "the glue's last word is the real state: {events:?}"
                );
                *holders.entry(set).or_default() += 1;
            }
        }
        assert!(
            holders.len() <= 1,
            "objects held by several sets: {holders:?}"
        );
        if let Some((set, held)) = holders.iter().next() {
            assert!(!record.freed.contains_key(set), "a freed set holds objects");
            assert_eq!(*held, objects.len(), "the installed set holds every object");
        }
        assert!(record.freed.values().all(|n| *n == 1), "a set freed twice");
    }
}

trait Poke {
    fn poke(&self);
}

impl Poke for Watch {
    fn poke(&self) {
        let _ = self.handle(WatchFlags::READABLE);
    }
}

impl Poke for Timeout {
    fn poke(&self) {
        let _ = self.handle();
    }
}

fn poke<O: Poke>(o: &O) {
    o.poke();
}

/// libFuzzer's panic hook aborts on every panic, caught or not; injected panics are caught on
/// purpose, so they pass by it. Any other panic still aborts: a finding.
fn let_injected_panics_through() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with(INJECTED) {
                abort(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    let_injected_panics_through();
    let mut input = Input(data);
    let shared = Arc::new(Shared {
        record: Mutex::default(),
        stored: AtomicUsize::new(0),
        dropped: AtomicUsize::new(0),
    });
    let mut watches = Subject::<Watch> {
        list: Arc::new(WatchList::new()),
        made: Vec::new(),
    };
    let mut timeouts = Subject::<Timeout> {
        list: Arc::new(TimeoutList::new()),
        made: Vec::new(),
    };
    let make_watch = |input: &mut Input<'_>, list: &Arc<WatchList>| -> Watch {
        let fd = input.below(16) as i32;
        let weak = Arc::downgrade(list);
        let action = input.below(4);
        let handler = move |_: WatchFlags| {
            let Some(list) = weak.upgrade() else { return };
            // A handler that reaches back into its list: toggles or removes a sibling.
            if let Some(sibling) = list.objects().into_iter().nth(action) {
                if action % 2 == 0 {
                    let _ = list.toggle(&sibling, !sibling.is_enabled());
                } else {
                    let _ = list.remove(&sibling);
                }
            }
        };
        if input.below(2) == 0 {
            Watch::new(fd, WatchFlags::READABLE, handler)
        } else {
            Watch::new_disabled(fd, WatchFlags::WRITABLE, handler)
        }
    };
    let make_timeout = |input: &mut Input<'_>, list: &Arc<TimeoutList>| -> Timeout {
        let interval = Duration::from_millis(input.below(50) as u64);
        let weak = Arc::downgrade(list);
        let restart_to = Duration::from_millis(input.below(50) as u64);
        Timeout::new(interval, move || {
            let Some(list) = weak.upgrade() else { return };
            if let Some(first) = list.objects().into_iter().next() {
                let _ = list.restart(&first, restart_to);
            }
        })
    };
    let install_watches = |list: &WatchList, set: Option<Recorder<Watch>>| {
        let set = set.map(|s| Box::new(s) as Box<dyn WatchFunctions>);
        let _ = list.set_functions(set);
    };
    let install_timeouts = |list: &TimeoutList, set: Option<Recorder<Timeout>>| {
        let set = set.map(|s| Box::new(s) as Box<dyn TimeoutFunctions>);
        let _ = list.set_functions(set);
    };

    for _ in 0..256 {
        if input.0.is_empty() {
            break;
        }
        if input.below(2) == 0 {
            watches.step(&mut input, &shared, &make_watch, &install_watches);
        } else {
            timeouts.step(&mut input, &shared, &make_timeout, &install_timeouts);
        }
        watches.check(&shared);
        timeouts.check(&shared);
    }

    // Dropping a list uninstalls its set, whose `remove` may panic on purpose (C14).
    guarded(move || drop(watches));
    guarded(move || drop(timeouts));
    let record = shared.record.lock().unwrap();
    for (key, events) in &record.history {
        assert!(
            matches!(events.last(), Some(Event::Remove | Event::Refused)),
            "{key:?} left open after the lists dropped: {events:?}"
        );
    }
    for set in &record.sets {
        assert_eq!(
            record.freed.get(set),
            Some(&1),
            "set {set} not freed exactly once"
        );
    }
    drop(record);
    assert_eq!(
        shared.dropped.load(Ordering::SeqCst),
        shared.stored.load(Ordering::SeqCst),
        "every glue data value dropped exactly once"
    );
});
