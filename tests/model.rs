//! A model check of the list: random operation sequences — adds, removes, toggles, set
//! replacements that fail at the k-th add, uninstalls, injected add failures, and reentrant
//! operations run from inside the glue's `toggled` — are run against a plain model that
//! predicts the exact glue call log (C7–C12). After every step the real log must equal the
//! model's, and `contains`, `len`, `objects()` and invalidation must agree with it.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use loopglue::{Error, Watch, WatchFlags, WatchFunctions, WatchList};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Nested {
    Toggle(bool),
    Remove,
    /// Toggle the target away from its state and back: queued toggles that cancel out must
    /// reach the glue as nothing (C9).
    Flip,
}

#[derive(Clone, Debug)]
enum Op {
    AddNew {
        enabled: bool,
    },
    AddAgain(usize),
    Remove(usize),
    Toggle(usize, bool),
    /// Toggle `.0`; the first `toggled` call it causes runs `.3` on object `.2` from inside.
    ToggleNested(usize, bool, usize, Nested),
    Install {
        fail_at: Option<usize>,
    },
    Uninstall,
    FailNextAdd,
}

fn op() -> impl Strategy<Value = Op> {
    let nested = prop_oneof![
        any::<bool>().prop_map(Nested::Toggle),
        Just(Nested::Remove),
        Just(Nested::Flip),
    ];
    prop_oneof![
        4 => any::<bool>().prop_map(|enabled| Op::AddNew { enabled }),
        1 => any::<usize>().prop_map(Op::AddAgain),
        2 => any::<usize>().prop_map(Op::Remove),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(i, on)| Op::Toggle(i, on)),
        2 => (any::<usize>(), any::<bool>(), any::<usize>(), nested)
            .prop_map(|(i, on, t, n)| Op::ToggleNested(i, on, t, n)),
        2 => proptest::option::weighted(0.4, 1usize..6).prop_map(|fail_at| Op::Install { fail_at }),
        1 => Just(Op::Uninstall),
        1 => Just(Op::FailNextAdd),
    ]
}

type Log = Arc<Mutex<Vec<String>>>;
type Hook = Arc<Mutex<Option<(Watch, Nested)>>>;

/// The real glue: logs `g{gen}.{call} {fd} [on|off]`, refuses its `fail_at`-th add or any add
/// while `fail_next` is set (consuming it), and runs the armed nested op from `toggled`.
struct Glue {
    gen: usize,
    log: Log,
    adds: usize,
    fail_at: Option<usize>,
    fail_next: Arc<AtomicBool>,
    hook: Hook,
    list: Weak<WatchList>,
}

fn state(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

impl WatchFunctions for Glue {
    fn add(&mut self, w: &Watch) -> io::Result<()> {
        self.adds += 1;
        let line = format!(
            "g{}.add {} {}",
            self.gen,
            w.fd().unwrap(),
            state(w.is_enabled())
        );
        self.log.lock().unwrap().push(line);
        let forced = self.fail_next.swap(false, Ordering::SeqCst);
        if forced || self.fail_at == Some(self.adds) {
            return Err(io::Error::other("refused"));
        }
        Ok(())
    }
    fn remove(&mut self, w: &Watch) {
        let line = format!("g{}.remove {}", self.gen, w.fd().unwrap());
        self.log.lock().unwrap().push(line);
    }
    fn toggled(&mut self, w: &Watch) {
        let line = format!(
            "g{}.toggled {} {}",
            self.gen,
            w.fd().unwrap(),
            state(w.is_enabled())
        );
        self.log.lock().unwrap().push(line);
        let armed = self.hook.lock().unwrap().take();
        if let (Some((target, nested)), Some(list)) = (armed, self.list.upgrade()) {
            match nested {
                Nested::Toggle(on) => list.toggle(&target, on).unwrap(),
                // A never-added target answers NotAdded; the model treats it as a no-op.
                Nested::Remove => drop(list.remove(&target)),
                Nested::Flip => {
                    let was = target.is_enabled();
                    list.toggle(&target, !was).unwrap();
                    list.toggle(&target, was).unwrap();
                }
            }
        }
    }
}

impl Drop for Glue {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(format!("g{}.free", self.gen));
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Fresh,
    Member,
    Removed,
}

#[derive(Clone, Debug)]
struct MObject {
    phase: Phase,
    enabled: bool,
    known: bool,
}

struct MSet {
    gen: usize,
    fail_at: Option<usize>,
    adds: usize,
}

/// The model: what the glue must be told, with no concurrency and no deferral in sight.
#[derive(Default)]
struct Model {
    objects: Vec<MObject>,
    order: Vec<usize>,
    set: Option<MSet>,
    fail_next: bool,
    log: Vec<String>,
}

impl Model {
    /// Calls the set's add as the glue would answer it; true if accepted.
    fn glue_add(&mut self, i: usize) -> bool {
        let Some(set) = self.set.as_mut() else {
            return true;
        };
        set.adds += 1;
        let line = format!("g{}.add {} {}", set.gen, i, state(self.objects[i].enabled));
        self.log.push(line);
        let refused = std::mem::take(&mut self.fail_next) || set.fail_at == Some(set.adds);
        !refused
    }

    fn add(&mut self, i: usize) -> Result<(), &'static str> {
        match self.objects[i].phase {
            Phase::Member => return Err("already"),
            Phase::Removed => return Err("removed"),
            Phase::Fresh => {}
        }
        if !self.glue_add(i) {
            return Err("refused");
        }
        let known = self.set.is_some();
        let o = &mut self.objects[i];
        o.phase = Phase::Member;
        o.known = known;
        self.order.push(i);
        Ok(())
    }

    fn remove(&mut self, i: usize) {
        if self.objects[i].phase != Phase::Member {
            return;
        }
        if let (true, Some(set)) = (self.objects[i].known, self.set.as_ref()) {
            self.log.push(format!("g{}.remove {}", set.gen, i));
        }
        self.objects[i].phase = Phase::Removed;
        self.order.retain(|&j| j != i);
    }

    /// Returns whether the glue's toggled ran.
    fn toggle(&mut self, i: usize, on: bool) -> bool {
        let o = &mut self.objects[i];
        match o.phase {
            Phase::Fresh => {
                o.enabled = on;
                false
            }
            Phase::Removed => false,
            Phase::Member if o.enabled == on => false,
            Phase::Member => {
                o.enabled = on;
                match (o.known, self.set.as_ref()) {
                    (true, Some(set)) => {
                        self.log
                            .push(format!("g{}.toggled {} {}", set.gen, i, state(on)));
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    fn install(&mut self, gen: usize, fail_at: Option<usize>) -> bool {
        let mut new = MSet {
            gen,
            fail_at,
            adds: 0,
        };
        let mut accepted = Vec::new();
        for &i in &self.order {
            new.adds += 1;
            self.log.push(format!(
                "g{gen}.add {} {}",
                i,
                state(self.objects[i].enabled)
            ));
            let refused = std::mem::take(&mut self.fail_next) || new.fail_at == Some(new.adds);
            if refused {
                for j in accepted {
                    self.log.push(format!("g{gen}.remove {j}"));
                }
                self.log.push(format!("g{gen}.free"));
                return false;
            }
            accepted.push(i);
        }
        self.uninstall();
        self.set = Some(new);
        for &i in &self.order {
            self.objects[i].known = true;
        }
        true
    }

    fn uninstall(&mut self) {
        if let Some(old) = self.set.take() {
            for &i in &self.order {
                if self.objects[i].known {
                    self.log.push(format!("g{}.remove {}", old.gen, i));
                }
            }
            self.log.push(format!("g{}.free", old.gen));
        }
        for &i in &self.order {
            self.objects[i].known = false;
        }
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let log: Log = Arc::default();
    let hook: Hook = Arc::default();
    let fail_next = Arc::new(AtomicBool::new(false));
    let list = Arc::new(WatchList::new());
    let mut watches: Vec<Watch> = Vec::new();
    let mut model = Model::default();
    let mut gen = 0;

    for (step, op) in ops.into_iter().enumerate() {
        let pick = |i: usize, n: usize| (n > 0).then(|| i % n);
        match op {
            Op::AddNew { enabled } => {
                let fd = watches.len() as i32;
                let w = if enabled {
                    Watch::new(fd, WatchFlags::READABLE, |_| {})
                } else {
                    Watch::new_disabled(fd, WatchFlags::READABLE, |_| {})
                };
                watches.push(w.clone());
                model.objects.push(MObject {
                    phase: Phase::Fresh,
                    enabled,
                    known: false,
                });
                let expect = model.add(watches.len() - 1);
                let got = list.add(&w);
                prop_assert_eq!(expect.is_ok(), got.is_ok(), "step {}: {:?}", step, got);
            }
            Op::AddAgain(i) => {
                let Some(i) = pick(i, watches.len()) else {
                    continue;
                };
                let expect = model.add(i);
                let got = list.add(&watches[i]);
                let same = matches!(
                    (expect, &got),
                    (Ok(()), Ok(()))
                        | (Err("already"), Err(Error::AlreadyAdded))
                        | (Err("removed"), Err(Error::Removed))
                        | (Err("refused"), Err(Error::Refused(_)))
                );
                prop_assert!(same, "step {}: model {:?}, real {:?}", step, expect, got);
            }
            Op::Remove(i) => {
                let Some(i) = pick(i, watches.len()) else {
                    continue;
                };
                let fresh = model.objects[i].phase == Phase::Fresh;
                model.remove(i);
                let got = list.remove(&watches[i]);
                prop_assert_eq!(fresh, matches!(got, Err(Error::NotAdded)));
            }
            Op::Toggle(i, on) => {
                let Some(i) = pick(i, watches.len()) else {
                    continue;
                };
                model.toggle(i, on);
                list.toggle(&watches[i], on).unwrap();
            }
            Op::ToggleNested(i, on, t, nested) => {
                let (Some(i), Some(t)) = (pick(i, watches.len()), pick(t, watches.len())) else {
                    continue;
                };
                if model.toggle(i, on) {
                    match nested {
                        Nested::Toggle(v) => {
                            model.toggle(t, v);
                        }
                        Nested::Remove => model.remove(t),
                        Nested::Flip => {} // cancels out
                    }
                }
                *hook.lock().unwrap() = Some((watches[t].clone(), nested));
                list.toggle(&watches[i], on).unwrap();
                hook.lock().unwrap().take(); // disarm if no toggled ran
            }
            Op::Install { fail_at } => {
                gen += 1;
                let ok = model.install(gen, fail_at);
                let set = Glue {
                    gen,
                    log: Arc::clone(&log),
                    adds: 0,
                    fail_at,
                    fail_next: Arc::clone(&fail_next),
                    hook: Arc::clone(&hook),
                    list: Arc::downgrade(&list),
                };
                let got = list.set_functions(Some(Box::new(set)));
                prop_assert_eq!(ok, got.is_ok(), "step {}", step);
                drop(got); // a refused set frees here
            }
            Op::Uninstall => {
                model.uninstall();
                list.set_functions(None).unwrap();
            }
            Op::FailNextAdd => {
                model.fail_next = true;
                fail_next.store(true, Ordering::SeqCst);
            }
        }
        let real = log.lock().unwrap().clone();
        prop_assert_eq!(&real, &model.log, "call log after step {}", step);
        prop_assert_eq!(list.len(), model.order.len());
        let order: Vec<Watch> = model.order.iter().map(|&i| watches[i].clone()).collect();
        prop_assert_eq!(list.objects(), order);
        for (i, w) in watches.iter().enumerate() {
            let o = &model.objects[i];
            prop_assert_eq!(list.contains(w), o.phase == Phase::Member);
            prop_assert_eq!(w.is_enabled(), o.enabled);
            prop_assert_eq!(w.fd().is_none(), o.phase == Phase::Removed);
        }
    }

    // Dropping the list is an uninstall: every known object removed, the set freed once.
    model.uninstall();
    drop(list);
    let real = log.lock().unwrap().clone();
    prop_assert_eq!(real, model.log);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn list_call_log_equals_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
