//! The reentrancy matrix (C11, C12, C14): from inside each kind of callback, call each public
//! method, and check that every cell terminates and leaves exactly the call log C11 promises.
//!
//! Rules the expected logs follow:
//! * inside one of the list's own set callbacks (add, remove, toggled) a list call is applied
//!   to the bookkeeping at once and its glue call is delivered after the callback returns,
//!   before the outermost call does; replacing the set there is refused (`Reentrant`);
//! * inside free-data, a data drop, a watch handler or a timeout handler no call-out is running,
//!   so every call runs synchronously.
//!
//! Every cell runs under `bounded`: a deadlock fails the cell after 10 s instead of hanging.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use common::{bounded, log, take, Log};
use loopglue::{Error, Timeout, TimeoutList, Watch, WatchFlags, WatchFunctions, WatchList};

/// The callback a cell's action runs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inside {
    Add,
    Remove,
    Toggled,
    FreeData,
    DataDrop,
    WatchHandler,
    TimeoutHandler,
}

/// What the callback calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Add,
    Remove,
    Toggle,
    Handle,
    Install,
    Uninstall,
    DropList,
}

/// Runs the cell's action once, from wherever it is triggered.
struct Action {
    call: Call,
    list: Weak<WatchList>,
    /// A list handle the `DropList` action drops.
    spare: Mutex<Option<Arc<WatchList>>>,
    target: Watch,
    fresh: Watch,
    log: Log,
    done: AtomicBool,
}

impl Action {
    fn run(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let list = self.list.upgrade().expect("the test holds the list");
        let say = |line: String| self.log.lock().unwrap().push(line);
        match self.call {
            Call::Add => list.add(&self.fresh).unwrap(),
            Call::Remove => list.remove(&self.target).unwrap(),
            Call::Toggle => list.toggle(&self.target, false).unwrap(),
            Call::Handle => {
                let _ = self.target.handle(WatchFlags::READABLE);
            }
            Call::Install => {
                match list.set_functions(Some(Box::new(CellGlue::plain("b", &self.log)))) {
                    Ok(()) => say("install: ok".into()),
                    Err(e) => {
                        assert!(matches!(e.error(), Error::Reentrant));
                        say("install: Reentrant".into());
                        drop(e); // hands the set back; dropping frees it
                    }
                }
            }
            Call::Uninstall => match list.set_functions(None) {
                Ok(()) => say("uninstall: ok".into()),
                Err(e) => say(format!("uninstall: {:?}", e.error())),
            },
            Call::DropList => drop(self.spare.lock().unwrap().take()),
        }
    }
}

/// A glue that logs like the shared one and runs the action from one callback on fd 1.
struct CellGlue {
    name: &'static str,
    log: Log,
    trigger: Option<(Inside, Arc<Action>)>,
}

impl CellGlue {
    fn plain(name: &'static str, log: &Log) -> CellGlue {
        CellGlue {
            name,
            log: Arc::clone(log),
            trigger: None,
        }
    }

    fn say(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn fire(&self, inside: Inside, watch: &Watch) {
        if let Some((at, action)) = &self.trigger {
            if *at == inside && watch.fd() == Some(1) {
                action.run();
            }
        }
    }
}

fn on(w: &Watch) -> &'static str {
    if w.is_enabled() {
        "on"
    } else {
        "off"
    }
}

impl WatchFunctions for CellGlue {
    fn add(&mut self, w: &Watch) -> std::io::Result<()> {
        self.say(format!("{}.add {} {}", self.name, w.fd().unwrap(), on(w)));
        if let Some((Inside::DataDrop, action)) = &self.trigger {
            if w.fd() == Some(1) {
                w.set_data(RunsOnDrop(Arc::clone(action)));
            }
        }
        self.fire(Inside::Add, w);
        Ok(())
    }
    fn remove(&mut self, w: &Watch) {
        self.say(format!("{}.remove {}", self.name, w.fd().unwrap()));
        self.fire(Inside::Remove, w);
    }
    fn toggled(&mut self, w: &Watch) {
        self.say(format!(
            "{}.toggled {} {}",
            self.name,
            w.fd().unwrap(),
            on(w)
        ));
        self.fire(Inside::Toggled, w);
    }
}

impl Drop for CellGlue {
    fn drop(&mut self) {
        self.say(format!("{}.free", self.name));
        if let Some((Inside::FreeData, action)) = &self.trigger {
            action.run();
        }
    }
}

struct RunsOnDrop(Arc<Action>);

impl Drop for RunsOnDrop {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// Builds the cell's world — watch T (fd 1, the trigger), watch X (fd 2, the target), a fresh
/// watch N (fd 3), a timeout — runs the outer call, and returns the log it produced.
fn run_cell(inside: Inside, call: Call) -> (Vec<String>, Arc<WatchList>, Watch, Watch) {
    let log = log();
    let list = Arc::new(WatchList::new());
    let say = |log: &Log, line: &'static str| {
        let log = Arc::clone(log);
        move || log.lock().unwrap().push(line.to_string())
    };
    let x_handled = say(&log, "X handled");
    let target = Watch::new(2, WatchFlags::READABLE, move |_| x_handled());
    let fresh = Watch::new(3, WatchFlags::READABLE, |_| {});
    let action = Arc::new(Action {
        call,
        list: Arc::downgrade(&list),
        spare: Mutex::new(Some(Arc::clone(&list))),
        target: target.clone(),
        fresh: fresh.clone(),
        log: Arc::clone(&log),
        done: AtomicBool::new(false),
    });
    let (a, t_handled) = (Arc::clone(&action), say(&log, "T handled"));
    let trigger = Watch::new(1, WatchFlags::READABLE, move |_| {
        t_handled();
        if inside == Inside::WatchHandler {
            a.run();
        }
    });
    let (a, fired) = (Arc::clone(&action), say(&log, "timeout fired"));
    let tick = Timeout::new(Duration::from_millis(10), move || {
        fired();
        a.run();
    });
    let timeouts = TimeoutList::new();
    timeouts.add(&tick).unwrap();

    list.add(&target).unwrap();
    if inside != Inside::Add {
        list.add(&trigger).unwrap();
    }
    let glue = CellGlue {
        name: "a",
        log: Arc::clone(&log),
        trigger: Some((inside, action)),
    };
    list.set_functions(Some(Box::new(glue))).unwrap();
    take(&log);

    let l = Arc::clone(&list);
    let t = trigger.clone();
    bounded(move || match inside {
        Inside::Add => l.add(&t).unwrap(),
        Inside::Remove | Inside::DataDrop => l.remove(&t).unwrap(),
        Inside::Toggled => l.toggle(&t, false).unwrap(),
        Inside::FreeData => l.set_functions(None).unwrap(),
        Inside::WatchHandler => assert!(t.handle(WatchFlags::READABLE).is_delivered()),
        Inside::TimeoutHandler => assert!(tick.handle().is_delivered()),
    });
    (take(&log), list, target, fresh)
}

/// The log C11 promises for a cell.
fn expected(inside: Inside, call: Call) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = match inside {
        Inside::Add => vec!["a.add 1 on"],
        Inside::Remove | Inside::DataDrop => vec!["a.remove 1"],
        Inside::Toggled => vec!["a.toggled 1 off"],
        Inside::FreeData => vec!["a.remove 2", "a.remove 1", "a.free"],
        Inside::WatchHandler => vec!["T handled"],
        Inside::TimeoutHandler => vec!["timeout fired"],
    };
    // What the set knows when the action runs, for an install or uninstall that goes through.
    let known: &[&'static str] = match inside {
        Inside::Remove | Inside::DataDrop => &["2"],
        _ => &["2", "1"],
    };
    let nested = matches!(inside, Inside::Add | Inside::Remove | Inside::Toggled);
    let set_gone = inside == Inside::FreeData;
    match call {
        Call::Add if !set_gone => out.push("a.add 3 on"),
        Call::Remove if !set_gone => out.push("a.remove 2"),
        Call::Toggle if !set_gone => out.push("a.toggled 2 off"),
        Call::Add | Call::Remove | Call::Toggle => {} // no set: tracked silently
        Call::Handle => out.push("X handled"),
        Call::Install if nested => out.extend(["install: Reentrant", "b.free"]),
        Call::Uninstall if nested => out.push("uninstall: Reentrant"),
        Call::Install if set_gone => out.extend(["b.add 2 on", "b.add 1 on", "install: ok"]),
        Call::Uninstall if set_gone => out.push("uninstall: ok"),
        Call::Install => {
            for fd in known {
                out.push(match *fd {
                    "2" => "b.add 2 on",
                    _ => "b.add 1 on",
                });
            }
            for fd in known {
                out.push(match *fd {
                    "2" => "a.remove 2",
                    _ => "a.remove 1",
                });
            }
            out.extend(["a.free", "install: ok"]);
        }
        Call::Uninstall => {
            for fd in known {
                out.push(match *fd {
                    "2" => "a.remove 2",
                    _ => "a.remove 1",
                });
            }
            out.extend(["a.free", "uninstall: ok"]);
        }
        Call::DropList => {}
    }
    out
}

fn check(inside: Inside, call: Call) {
    let (got, list, target, fresh) = run_cell(inside, call);
    assert_eq!(
        got,
        expected(inside, call),
        "inside {inside:?}, calling {call:?}"
    );
    // The bookkeeping agrees with what the glue was told.
    match call {
        Call::Add => assert!(list.contains(&fresh)),
        Call::Remove => assert!(target.is_removed() && !list.contains(&target)),
        Call::Toggle => assert!(!target.is_enabled()),
        Call::DropList => assert_eq!(Arc::strong_count(&list), 1, "the clone was dropped"),
        _ => {}
    }
    // And the list is still usable: one more toggle reaches whatever set is installed.
    if !target.is_removed() && list.has_functions() {
        let before = target.is_enabled();
        list.toggle(&target, !before).unwrap();
        assert_eq!(target.is_enabled(), !before);
    }
}

macro_rules! every_call {
    ($inside:expr) => {
        use super::*;

        #[test]
        fn calls_add() {
            check($inside, Call::Add);
        }
        #[test]
        fn calls_remove() {
            check($inside, Call::Remove);
        }
        #[test]
        fn calls_toggle() {
            check($inside, Call::Toggle);
        }
        #[test]
        fn calls_handle() {
            check($inside, Call::Handle);
        }
        #[test]
        fn calls_set_functions() {
            check($inside, Call::Install);
        }
        #[test]
        fn calls_set_functions_none() {
            check($inside, Call::Uninstall);
        }
        #[test]
        fn drops_a_list_handle() {
            check($inside, Call::DropList);
        }
    };
}

mod inside_add {
    every_call!(Inside::Add);
}
mod inside_remove {
    every_call!(Inside::Remove);
}
mod inside_toggled {
    every_call!(Inside::Toggled);
}
mod inside_free_data {
    every_call!(Inside::FreeData);
}
mod inside_data_drop {
    every_call!(Inside::DataDrop);
}
mod inside_watch_handler {
    every_call!(Inside::WatchHandler);
}
mod inside_timeout_handler {
    every_call!(Inside::TimeoutHandler);
}

// ---- Beyond the matrix ----------------------------------------------------------------------

/// A callback of one list calling another list runs synchronously: only the list whose
/// call-out is running defers.
#[test]
fn a_callback_calling_another_list_runs_synchronously() {
    let events = log();
    let other = Arc::new(WatchList::new());
    other
        .set_functions(Some(Box::new(CellGlue::plain("c", &events))))
        .unwrap();
    let list = Arc::new(WatchList::new());
    let (o, e) = (Arc::clone(&other), Arc::clone(&events));
    let extra = Watch::new(9, WatchFlags::READABLE, |_| {});
    let set = common::Glue::<Watch>::new("a", &events).hook(move |call, _: &Watch| {
        if call == "add" {
            o.add(&extra).unwrap();
            let r = o.set_functions(Some(Box::new(CellGlue::plain("d", &e))));
            e.lock()
                .unwrap()
                .push(format!("other install ok: {}", r.is_ok()));
        }
    });
    list.add(&Watch::new(1, WatchFlags::READABLE, |_| {}))
        .unwrap();
    let l = Arc::clone(&list);
    bounded(move || l.set_functions(Some(Box::new(set))).unwrap());
    assert_eq!(
        take(&events),
        [
            "a.add 1 on",
            "c.add 9 on",
            "d.add 9 on",
            "c.remove 9",
            "c.free",
            "other install ok: true"
        ]
    );
}

/// A callback that queues a call and then panics: the queued call is still delivered, and the
/// panic reaches the outermost caller (C14).
#[test]
fn a_panicking_callback_still_gets_its_queued_call_delivered() {
    let events = log();
    let list = Arc::new(WatchList::new());
    let (t, x) = (
        Watch::new(1, WatchFlags::READABLE, |_| {}),
        Watch::new(2, WatchFlags::READABLE, |_| {}),
    );
    list.add(&x).unwrap();
    let (l, target) = (Arc::clone(&list), x.clone());
    let set = common::Glue::<Watch>::new("a", &events).hook(move |call, w: &Watch| {
        if call == "add" && w.fd() == Some(1) {
            l.toggle(&target, false).unwrap();
            panic!("after queueing a toggle");
        }
    });
    list.set_functions(Some(Box::new(set))).unwrap();
    take(&events);
    let l = Arc::clone(&list);
    let tt = t.clone();
    let outcome = bounded(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l.add(&tt))).is_err()
    });
    assert!(outcome, "the panic reached the caller");
    assert_eq!(take(&events), ["a.add 1 on", "a.toggled 2 off"]);
    assert!(!list.contains(&t), "a panicking add counts as refused");
}
