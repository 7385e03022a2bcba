//! The core contract, C1–C14 (and the C16 helpers), one or more tests per item. Each test
//! asserts the exact call log its glue saw: which set, which call, which object, which state.

mod common;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{bounded, disabled_watch, log, take, timeout, watch, Glue, Log};
use loopglue::{
    Delivery, DispatchStatus, Error, StatusNotifier, Timeout, TimeoutList, WakeupHook, Watch,
    WatchFlags, WatchFunctionSet, WatchFunctions, WatchList,
};

fn glue(name: &'static str, log: &Log) -> Box<dyn WatchFunctions> {
    Box::new(Glue::<Watch>::new(name, log))
}

fn install(list: &WatchList, set: Box<dyn WatchFunctions>) {
    list.set_functions(Some(set)).expect("set installs");
}

fn list_of(fds: &[i32]) -> (WatchList, Vec<Watch>) {
    let list = WatchList::new();
    let watches: Vec<Watch> = fds.iter().map(|&fd| watch(fd)).collect();
    for w in &watches {
        list.add(w).unwrap();
    }
    (list, watches)
}

/// A value that counts its drops.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

// ---- C1: flags ------------------------------------------------------------------------------

#[test]
fn c1_flag_bits_equal_libdbus() {
    assert_eq!(WatchFlags::READABLE.bits(), 1);
    assert_eq!(WatchFlags::WRITABLE.bits(), 2);
    assert_eq!(WatchFlags::ERROR.bits(), 4);
    assert_eq!(WatchFlags::HANGUP.bits(), 8);
    assert_eq!(WatchFlags::from_bits_truncate(0x1f), WatchFlags::all());
}

#[test]
fn c1_flags_hold_only_readable_writable_fixed_at_creation() {
    let w = Watch::new(3, WatchFlags::all(), |_| {});
    assert_eq!(w.flags(), WatchFlags::READABLE | WatchFlags::WRITABLE);
    let r = Watch::new(3, WatchFlags::READABLE | WatchFlags::HANGUP, |_| {});
    assert_eq!(r.flags(), WatchFlags::READABLE);
}

// ---- C2: handles ------------------------------------------------------------------------------

#[test]
// Watch hashes and compares by identity, which never changes; the interior mutability clippy
// sees (the enabled flag, the data slot) takes no part in Hash or Eq.
#[allow(clippy::mutable_key_type)]
fn c2_handles_are_send_sync_clones_share_one_object() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    send_sync::<Watch>();
    send_sync::<Timeout>();
    fn send_sync_list<T: Send + Sync>() {}
    send_sync_list::<WatchList>();
    send_sync_list::<TimeoutList>();

    let list = WatchList::new();
    let w = disabled_watch(4);
    let clone = w.clone();
    list.add(&w).unwrap();
    list.toggle(&clone, true).unwrap();
    assert!(
        w.is_enabled(),
        "a toggle through a clone shows in the original"
    );
    assert_eq!(w, clone);
    assert_eq!(w.id(), clone.id());
    let twin = watch(4);
    assert_ne!(w, twin, "equality is identity, not fd");
    let set: HashSet<Watch> = [w.clone(), clone, twin].into_iter().collect();
    assert_eq!(set.len(), 2);
}

#[test]
fn c2_glue_reads_fd_flags_enabled_interval() {
    let w = Watch::new_disabled(9, WatchFlags::WRITABLE, |_| {});
    assert_eq!(
        (w.fd(), w.flags(), w.is_enabled()),
        (Some(9), WatchFlags::WRITABLE, false)
    );
    let t = Timeout::new(Duration::from_millis(25), || {});
    assert_eq!(
        (t.interval(), t.is_enabled()),
        (Duration::from_millis(25), true)
    );
}

// ---- C3: handle ------------------------------------------------------------------------------

fn recording_watch(fd: i32, flags: WatchFlags) -> (Watch, Arc<Mutex<Vec<WatchFlags>>>) {
    let seen: Arc<Mutex<Vec<WatchFlags>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let w = Watch::new(fd, flags, move |c| sink.lock().unwrap().push(c));
    (w, seen)
}

#[test]
fn c3_handle_drops_unrequested_bits_keeps_error_and_hangup() {
    let (w, seen) = recording_watch(3, WatchFlags::READABLE);
    assert_eq!(w.handle(WatchFlags::WRITABLE), Delivery::NotRequested);
    assert_eq!(w.handle(WatchFlags::empty()), Delivery::NotRequested);
    assert_eq!(w.handle(WatchFlags::all()), Delivery::Delivered);
    assert_eq!(
        w.handle(WatchFlags::WRITABLE | WatchFlags::ERROR),
        Delivery::Delivered
    );
    assert_eq!(w.handle(WatchFlags::HANGUP), Delivery::Delivered);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            WatchFlags::READABLE | WatchFlags::ERROR | WatchFlags::HANGUP,
            WatchFlags::ERROR,
            WatchFlags::HANGUP
        ]
    );
}

#[test]
fn c3_handle_on_removed_or_disabled_object_runs_nothing_and_says_so() {
    let list = WatchList::new();
    let (w, seen) = recording_watch(3, WatchFlags::READABLE);
    list.add(&w).unwrap();
    list.toggle(&w, false).unwrap();
    assert_eq!(w.handle(WatchFlags::READABLE), Delivery::Disabled);
    list.remove(&w).unwrap();
    assert_eq!(w.handle(WatchFlags::READABLE), Delivery::Removed);
    assert!(seen.lock().unwrap().is_empty());

    let tlist = TimeoutList::new();
    let fired = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&fired);
    let t = Timeout::new(Duration::from_millis(1), move || {
        count.fetch_add(1, Ordering::SeqCst);
    });
    tlist.add(&t).unwrap();
    assert_eq!(t.handle(), Delivery::Delivered);
    tlist.remove(&t).unwrap();
    assert_eq!(t.handle(), Delivery::Removed);
    assert_eq!(fired.load(Ordering::SeqCst), 1);
}

#[test]
fn c3_handler_may_remove_its_own_watch_and_others() {
    let list = Arc::new(WatchList::new());
    let other = watch(8);
    let slot: Arc<Mutex<Option<Watch>>> = Arc::default();
    let (l, s, o) = (Arc::clone(&list), Arc::clone(&slot), other.clone());
    let me = Watch::new(7, WatchFlags::READABLE, move |_| {
        let me = s.lock().unwrap().clone().unwrap();
        l.remove(&me).unwrap();
        l.remove(&o).unwrap();
    });
    *slot.lock().unwrap() = Some(me.clone());
    let events = log();
    list.add(&me).unwrap();
    list.add(&other).unwrap();
    install(&list, glue("a", &events));
    take(&events);
    assert_eq!(
        bounded(move || me.handle(WatchFlags::READABLE)),
        Delivery::Delivered
    );
    assert_eq!(take(&events), ["a.remove 7", "a.remove 8"]);
    assert!(list.is_empty());
}

// ---- C4: removal invalidates -------------------------------------------------------------------

#[test]
fn c4_fd_answers_inside_remove_and_is_gone_after() {
    let events = log();
    let (list, ws) = list_of(&[5]);
    type Seen = Arc<Mutex<Vec<(Option<i32>, WatchFlags)>>>;
    let seen_inside: Seen = Arc::default();
    let sink = Arc::clone(&seen_inside);
    let set = Glue::<Watch>::new("a", &events).hook(move |call, w: &Watch| {
        if call == "remove" {
            sink.lock().unwrap().push((w.fd(), w.flags()));
        }
    });
    install(&list, Box::new(set));
    list.remove(&ws[0]).unwrap();
    assert_eq!(
        *seen_inside.lock().unwrap(),
        [(Some(5), WatchFlags::READABLE)]
    );
    assert_eq!(take(&events), ["a.add 5 on", "a.remove 5"]);
    assert_eq!(ws[0].fd(), None);
    assert_eq!(ws[0].flags(), WatchFlags::empty());
    assert!(ws[0].is_removed());
    assert_eq!(ws[0].handle(WatchFlags::READABLE), Delivery::Removed);
}

// ---- C5: data slots ----------------------------------------------------------------------------

#[test]
fn c5_new_set_sees_empty_slot_old_set_keeps_its_value() {
    let (list, ws) = list_of(&[3]);
    let seen: Log = log();
    let (s1, s2) = (Arc::clone(&seen), Arc::clone(&seen));
    let a = WatchFunctionSet::new(
        |w: &Watch, _: &mut ()| {
            w.set_data(String::from("A"));
            Ok(())
        },
        move |w: &Watch, _: &mut ()| {
            let got = w.data::<String>().map(|s| (*s).clone());
            s1.lock().unwrap().push(format!("a.remove sees {got:?}"));
        },
        |_: &Watch, _: &mut ()| {},
        (),
        drop,
    );
    install(&list, Box::new(a));
    assert_eq!(
        ws[0].data::<String>().as_deref().map(String::as_str),
        Some("A")
    );
    let b = WatchFunctionSet::new(
        move |w: &Watch, _: &mut ()| {
            let got = w.data::<String>().map(|s| (*s).clone());
            s2.lock().unwrap().push(format!("b.add sees {got:?}"));
            w.set_data(String::from("B"));
            Ok(())
        },
        |_: &Watch, _: &mut ()| {},
        |_: &Watch, _: &mut ()| {},
        (),
        drop,
    );
    install(&list, Box::new(b));
    assert_eq!(
        take(&seen),
        ["b.add sees None", "a.remove sees Some(\"A\")"],
        "fd.o #30574: the new set must not see, nor the old set lose, its own value"
    );
    assert_eq!(
        ws[0].data::<String>().as_deref().map(String::as_str),
        Some("B")
    );
}

#[test]
fn c5_values_drop_exactly_once_after_their_sets_remove() {
    let (list, ws) = list_of(&[3]);
    let drops_a = Arc::new(AtomicUsize::new(0));
    let drops_b = Arc::new(AtomicUsize::new(0));
    let (da, db) = (Arc::clone(&drops_a), Arc::clone(&drops_b));
    let events = log();
    let order = Arc::clone(&events);
    let a = Glue::<Watch>::new("a", &events).hook(move |call, w: &Watch| match call {
        "add" => w.set_data(Counted(Arc::clone(&da))),
        "remove" => order.lock().unwrap().push(format!(
            "a value alive in remove: {}",
            w.data::<Counted>().is_some()
        )),
        _ => {}
    });
    install(&list, Box::new(a));
    let b = Glue::<Watch>::new("b", &events).hook(move |call, w: &Watch| {
        if call == "add" {
            w.set_data(Counted(Arc::clone(&db)));
        }
    });
    install(&list, Box::new(b));
    assert_eq!(
        drops_a.load(Ordering::SeqCst),
        1,
        "A's value drops after A's remove"
    );
    assert_eq!(drops_b.load(Ordering::SeqCst), 0);
    // Replacing the value drops the old one once.
    ws[0].set_data(Counted(Arc::clone(&drops_b)));
    assert_eq!(drops_b.load(Ordering::SeqCst), 1);
    list.remove(&ws[0]).unwrap();
    assert_eq!(drops_b.load(Ordering::SeqCst), 2);
    assert_eq!(drops_a.load(Ordering::SeqCst), 1);
    assert_eq!(
        take(&events),
        [
            "a.add 3 on",
            "b.add 3 on",
            "a.remove 3",
            "a value alive in remove: true",
            "a.free",
            "b.remove 3"
        ]
    );
}

#[test]
fn c5_take_data_hands_the_value_over() {
    let w = watch(3);
    w.set_data(17u32);
    assert_eq!(
        w.take_data::<String>(),
        None,
        "wrong type leaves it in place"
    );
    assert_eq!(w.take_data::<u32>().as_deref(), Some(&17));
    assert_eq!(w.data::<u32>(), None);
}

/// A value whose drop calls back into the list: it must run with no lock held.
struct Reentrant {
    list: Arc<WatchList>,
    other: Watch,
    drops: Arc<AtomicUsize>,
}

impl Drop for Reentrant {
    fn drop(&mut self) {
        self.list.toggle(&self.other, false).unwrap();
        let _ = self.other.data::<u8>();
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn c5_data_drop_runs_with_no_lock_held() {
    let list = Arc::new(WatchList::new());
    let (w, other) = (watch(3), watch(4));
    list.add(&w).unwrap();
    list.add(&other).unwrap();
    let events = log();
    let drops = Arc::new(AtomicUsize::new(0));
    let (l, o, d) = (Arc::clone(&list), other.clone(), Arc::clone(&drops));
    let set = Glue::<Watch>::new("a", &events).hook(move |call, x: &Watch| {
        if call == "add" && x.fd() == Some(3) {
            x.set_data(Reentrant {
                list: Arc::clone(&l),
                other: o.clone(),
                drops: Arc::clone(&d),
            });
        }
    });
    install(&list, Box::new(set));
    let l = Arc::clone(&list);
    bounded(move || l.remove(&w).unwrap());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    assert_eq!(
        take(&events),
        ["a.add 3 on", "a.add 4 on", "a.remove 3", "a.toggled 4 off"]
    );
}

// ---- C6: function sets ---------------------------------------------------------------------------

#[test]
fn c6_closure_form_passes_data_and_frees_it_exactly_once() {
    let (list, _ws) = list_of(&[3, 4]);
    let frees = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&frees);
    let set = WatchFunctionSet::new(
        |w: &Watch, seen: &mut Vec<i32>| {
            seen.push(w.fd().unwrap());
            Ok(())
        },
        |w: &Watch, seen: &mut Vec<i32>| seen.push(-w.fd().unwrap()),
        |_: &Watch, _: &mut Vec<i32>| {},
        Vec::new(),
        move |seen: Vec<i32>| {
            assert_eq!(
                seen,
                [3, 4, -3, -4],
                "data reaches every callback, then free"
            );
            f.fetch_add(1, Ordering::SeqCst);
        },
    );
    install(&list, Box::new(set));
    list.set_functions(None).unwrap();
    assert_eq!(frees.load(Ordering::SeqCst), 1);
    drop(list);
    assert_eq!(frees.load(Ordering::SeqCst), 1);
}

#[test]
fn c6_add_error_means_the_loop_cannot_take_it() {
    let events = log();
    let list = WatchList::new();
    install(&list, Box::new(Glue::<Watch>::new("a", &events).fail_at(1)));
    let w = watch(3);
    match list.add(&w) {
        Err(Error::Refused(e)) => assert_eq!(e.kind(), std::io::ErrorKind::OutOfMemory),
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(!list.contains(&w));
}

// ---- C7: replacing a set -------------------------------------------------------------------------

fn rollback_at(k: usize) {
    let events = log();
    let (list, ws) = list_of(&[1, 2, 3]);
    install(&list, glue("a", &events));
    take(&events);
    let err = list
        .set_functions(Some(Box::new(Glue::<Watch>::new("b", &events).fail_at(k))))
        .unwrap_err();
    assert!(matches!(err.error(), Error::Refused(_)));
    let mut expected: Vec<String> = (1..=k).map(|fd| format!("b.add {fd} on")).collect();
    expected.extend((1..k).map(|fd| format!("b.remove {fd}")));
    assert_eq!(take(&events), expected, "rollback at {k}");
    // The old set is untouched and still installed.
    list.toggle(&ws[1], false).unwrap();
    assert_eq!(take(&events), ["a.toggled 2 off"]);
    // The handed-back set is freed exactly once, when dropped.
    let handed_back = err.into_functions().expect("the set comes back");
    assert!(take(&events).is_empty(), "not freed while handed back");
    drop(handed_back);
    assert_eq!(take(&events), ["b.free"]);
}

#[test]
fn c7_rollback_when_add_fails_at_first_object() {
    rollback_at(1);
}

#[test]
fn c7_rollback_when_add_fails_at_middle_object() {
    rollback_at(2);
}

#[test]
fn c7_rollback_when_add_fails_at_last_object() {
    rollback_at(3);
}

#[test]
fn c7_handed_back_set_can_be_retried() {
    let events = log();
    let (list, ws) = list_of(&[1]);
    let err = list
        .set_functions(Some(Box::new(Glue::<Watch>::new("b", &events).fail_at(1))))
        .unwrap_err();
    list.set_functions(err.into_functions()).unwrap();
    assert_eq!(take(&events), ["b.add 1 on", "b.add 1 on"]);
    list.remove(&ws[0]).unwrap();
    assert_eq!(take(&events), ["b.remove 1"]);
}

#[test]
fn c7_success_runs_new_adds_then_old_removes_then_old_free() {
    let events = log();
    let (list, _ws) = list_of(&[1, 2]);
    install(&list, glue("a", &events));
    install(&list, glue("b", &events));
    assert_eq!(
        take(&events),
        [
            "a.add 1 on",
            "a.add 2 on",
            "b.add 1 on",
            "b.add 2 on",
            "a.remove 1",
            "a.remove 2",
            "a.free"
        ]
    );
}

#[test]
fn c7_replacing_a_set_with_an_equal_one_still_frees_the_old_once() {
    // libdbus: the old free_data runs even if the new data pointer equals the old.
    let (list, _ws) = list_of(&[1]);
    let shared = Arc::new(Mutex::new(Vec::<String>::new()));
    let make = |tag: &'static str| {
        let out = Arc::clone(&shared);
        WatchFunctionSet::new(
            move |_: &Watch, d: &mut Arc<Mutex<Vec<String>>>| {
                d.lock().unwrap().push(format!("{tag}.add"));
                Ok(())
            },
            move |_: &Watch, d: &mut Arc<Mutex<Vec<String>>>| {
                d.lock().unwrap().push(format!("{tag}.remove"))
            },
            |_: &Watch, _: &mut Arc<Mutex<Vec<String>>>| {},
            out,
            move |d: Arc<Mutex<Vec<String>>>| d.lock().unwrap().push(format!("{tag}.free")),
        )
    };
    install(&list, Box::new(make("x")));
    install(&list, Box::new(make("x")));
    assert_eq!(
        *shared.lock().unwrap(),
        ["x.add", "x.add", "x.remove", "x.free"]
    );
}

#[test]
fn c7_disabled_objects_are_replayed_and_tracked_without_a_set() {
    let events = log();
    let list = WatchList::new();
    let (on, off) = (watch(1), disabled_watch(2));
    list.add(&on).unwrap();
    list.add(&off).unwrap();
    list.toggle(&on, false).unwrap(); // no set: state tracked silently
    list.toggle(&off, true).unwrap();
    assert_eq!(list.objects(), [on.clone(), off.clone()]);
    install(&list, glue("a", &events));
    assert_eq!(take(&events), ["a.add 1 off", "a.add 2 on"]);
    list.set_functions(None).unwrap();
    assert_eq!(take(&events), ["a.remove 1", "a.remove 2", "a.free"]);
    assert_eq!(list.len(), 2, "uninstalling keeps tracking");
    assert!(!list.has_functions());
    install(&list, glue("b", &events));
    assert_eq!(take(&events), ["b.add 1 off", "b.add 2 on"]);
}

// ---- C8: add and remove with a set installed --------------------------------------------------

#[test]
fn c8_refused_add_is_not_tracked_and_no_remove_follows() {
    let events = log();
    let list = WatchList::new();
    install(&list, Box::new(Glue::<Watch>::new("a", &events).fail_at(1)));
    let w = watch(3);
    assert!(matches!(list.add(&w), Err(Error::Refused(_))));
    assert!(!list.contains(&w));
    assert!(matches!(list.remove(&w), Err(Error::NotAdded)));
    assert_eq!(take(&events), ["a.add 3 on"]);
    list.add(&w).unwrap(); // a refused object may be offered again
    list.remove(&w).unwrap();
    assert_eq!(take(&events), ["a.add 3 on", "a.remove 3"]);
}

#[test]
fn c8_remove_is_called_for_disabled_objects_too() {
    let events = log();
    let list = WatchList::new();
    install(&list, glue("a", &events));
    let w = disabled_watch(3);
    list.add(&w).unwrap();
    list.remove(&w).unwrap();
    assert_eq!(take(&events), ["a.add 3 off", "a.remove 3"]);
}

#[test]
fn c8_object_state_errors() {
    let (a, b) = (WatchList::new(), WatchList::new());
    let w = watch(3);
    assert!(matches!(a.remove(&w), Err(Error::NotAdded)));
    a.add(&w).unwrap();
    assert!(matches!(a.add(&w), Err(Error::AlreadyAdded)));
    assert!(matches!(b.add(&w), Err(Error::ForeignObject)));
    assert!(matches!(b.remove(&w), Err(Error::ForeignObject)));
    assert!(matches!(b.toggle(&w, false), Err(Error::ForeignObject)));
    a.remove(&w).unwrap();
    a.remove(&w).unwrap(); // removing twice is a no-op
    a.toggle(&w, false).unwrap(); // so is toggling a removed object
    assert!(matches!(a.add(&w), Err(Error::Removed)));
    assert!(matches!(b.add(&w), Err(Error::Removed)));
    // Errors convert to io::Error with a sensible kind.
    let io: std::io::Error = Error::NotAdded.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

// ---- C9: toggled -------------------------------------------------------------------------------

#[test]
fn c9_toggled_only_on_change_with_new_state_visible() {
    let events = log();
    let (list, ws) = list_of(&[3]);
    install(&list, glue("a", &events));
    list.toggle(&ws[0], true).unwrap(); // unchanged
    list.toggle(&ws[0], false).unwrap();
    list.toggle(&ws[0], false).unwrap(); // unchanged
    list.toggle(&ws[0], true).unwrap();
    assert_eq!(
        take(&events),
        ["a.add 3 on", "a.toggled 3 off", "a.toggled 3 on"]
    );
}

#[test]
fn c9_timeouts_toggle_the_same_way() {
    let events = log();
    let list = TimeoutList::new();
    let t = timeout(25);
    list.add(&t).unwrap();
    list.set_functions(Some(Box::new(Glue::<Timeout>::new("t", &events))))
        .unwrap();
    list.toggle(&t, false).unwrap();
    list.toggle(&t, false).unwrap();
    list.toggle(&t, true).unwrap();
    list.remove(&t).unwrap();
    assert_eq!(
        take(&events),
        [
            "t.add 25ms on",
            "t.toggled 25ms off",
            "t.toggled 25ms on",
            "t.remove 25ms"
        ]
    );
}

#[test]
fn c9_toggling_before_add_sets_the_initial_state() {
    let events = log();
    let list = WatchList::new();
    install(&list, glue("a", &events));
    let w = watch(3);
    list.toggle(&w, false).unwrap();
    list.add(&w).unwrap();
    assert_eq!(take(&events), ["a.add 3 off"]);
}

// ---- C10: timeouts -----------------------------------------------------------------------------

#[test]
fn c10_interval_is_fixed_and_handle_repeats_until_removed() {
    let list = TimeoutList::new();
    let fired = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fired);
    let t = Timeout::new(Duration::from_millis(40), move || {
        f.fetch_add(1, Ordering::SeqCst);
    });
    list.add(&t).unwrap();
    for _ in 0..3 {
        assert_eq!(t.handle(), Delivery::Delivered);
    }
    list.toggle(&t, false).unwrap();
    list.toggle(&t, true).unwrap();
    assert_eq!(t.interval(), Duration::from_millis(40));
    list.remove(&t).unwrap();
    assert_eq!(t.handle(), Delivery::Removed);
    assert_eq!(fired.load(Ordering::SeqCst), 3);
    assert_eq!(t.interval(), Duration::from_millis(40));
}

// ---- C11 / C12: reentrancy ---------------------------------------------------------------------

#[test]
fn c11_calls_from_inside_a_callback_are_delivered_after_it_in_order() {
    let events = log();
    let list = Arc::new(WatchList::new());
    let (w1, w2, w3, w4) = (watch(1), watch(2), watch(3), watch(4));
    for w in [&w1, &w2, &w3] {
        list.add(w).unwrap();
    }
    install(&list, glue("a", &events));
    take(&events);
    let l = Arc::clone(&list);
    let (x2, x3, x4) = (w2.clone(), w3.clone(), w4.clone());
    let set = Glue::<Watch>::new("b", &events).hook(move |call, w: &Watch| {
        if call == "add" && w.fd() == Some(1) {
            l.toggle(&x2, false).unwrap();
            l.remove(&x3).unwrap();
            l.add(&x4).unwrap();
            assert!(x3.is_removed(), "bookkeeping is updated at once");
        }
    });
    let l = Arc::clone(&list);
    bounded(move || l.set_functions(Some(Box::new(set))).unwrap());
    assert_eq!(
        take(&events),
        [
            "b.add 1 on",
            "b.add 2 off",
            "a.remove 1",
            "a.remove 2",
            "a.remove 3",
            // w3 was removed before the new set reached it: the new set never hears of it.
            // Queued calls are delivered before the old set's free-data, which runs once the
            // token is released.
            "b.add 4 on",
            "a.free"
        ]
    );
    assert_eq!(list.objects(), [w1, w2, w4]);
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("REENTERED")));
}

#[test]
fn c11_replacing_a_set_from_inside_its_callback_is_refused_with_the_set_back() {
    let events = log();
    let list = Arc::new(WatchList::new());
    list.add(&watch(1)).unwrap();
    let outcome: Arc<Mutex<Vec<String>>> = Arc::default();
    let (l, out, ev) = (Arc::clone(&list), Arc::clone(&outcome), Arc::clone(&events));
    let set = Glue::<Watch>::new("a", &events).hook(move |call, _: &Watch| {
        if call == "add" {
            let err = l
                .set_functions(Some(Box::new(Glue::<Watch>::new("b", &ev))))
                .unwrap_err();
            out.lock().unwrap().push(err.to_string());
            assert!(matches!(err.error(), Error::Reentrant));
            assert!(err.into_functions().is_some());
        }
    });
    let l = Arc::clone(&list);
    bounded(move || l.set_functions(Some(Box::new(set))).unwrap());
    assert_eq!(take(&events), ["a.add 1 on", "b.free"]);
    assert_eq!(outcome.lock().unwrap().len(), 1);
    assert!(list.has_functions());
}

#[test]
fn c11_deferred_add_refused_by_glue_leaves_the_list() {
    let events = log();
    let list = Arc::new(WatchList::new());
    list.add(&watch(1)).unwrap();
    let late = watch(2);
    let (l, x) = (Arc::clone(&list), late.clone());
    // The glue refuses its 2nd add: the one queued from inside the 1st.
    let set = Glue::<Watch>::new("a", &events)
        .fail_at(2)
        .hook(move |call, w: &Watch| {
            if call == "add" && w.fd() == Some(1) {
                assert!(l.add(&x).is_ok(), "the answer is not known yet");
            }
        });
    list.set_functions(Some(Box::new(set))).unwrap();
    assert_eq!(take(&events), ["a.add 1 on", "a.add 2 on"]);
    assert!(!list.contains(&late));
    list.add(&late).unwrap();
    assert!(list.contains(&late));
}

#[test]
fn c12_a_set_is_never_reentered() {
    let events = log();
    let list = Arc::new(WatchList::new());
    let ws: Vec<Watch> = (1..=4).map(watch).collect();
    for w in &ws {
        list.add(w).unwrap();
    }
    let (l, all) = (Arc::clone(&list), ws.clone());
    // The first 50 callbacks toggle every other watch: a storm of nested calls.
    let mut budget = 50;
    let set = Glue::<Watch>::new("a", &events).hook(move |_, w: &Watch| {
        if budget == 0 {
            return;
        }
        budget -= 1;
        for other in &all {
            if other != w {
                let _ = l.toggle(other, !other.is_enabled());
            }
        }
    });
    let l = Arc::clone(&list);
    bounded(move || l.set_functions(Some(Box::new(set))).unwrap());
    let got = take(&events);
    assert!(!got.iter().any(|l| l.contains("REENTERED")), "{got:?}");
    // Whatever the storm did, the glue's last word per watch matches its state.
    for w in &ws {
        let last = got
            .iter()
            .rev()
            .find(|l| l.split(' ').nth(1) == Some(&w.fd().unwrap().to_string()))
            .unwrap();
        let state = if w.is_enabled() { "on" } else { "off" };
        assert!(last.ends_with(state), "{last} vs {state}");
    }
}

// ---- C13: threads ------------------------------------------------------------------------------

#[test]
fn c13_one_object_used_from_three_threads_in_order() {
    let events = log();
    let list = Arc::new(WatchList::new());
    install(&list, glue("a", &events));
    let w = watch(3);
    let (l, x) = (Arc::clone(&list), w.clone());
    std::thread::spawn(move || l.add(&x).unwrap())
        .join()
        .unwrap();
    let (l, x) = (Arc::clone(&list), w.clone());
    std::thread::spawn(move || l.toggle(&x, false).unwrap())
        .join()
        .unwrap();
    let (l, x) = (Arc::clone(&list), w.clone());
    std::thread::spawn(move || l.remove(&x).unwrap())
        .join()
        .unwrap();
    assert_eq!(
        take(&events),
        ["a.add 3 on", "a.toggled 3 off", "a.remove 3"]
    );
}

#[test]
fn c13_a_caller_on_another_thread_waits_for_a_running_callback() {
    let events = log();
    let list = Arc::new(WatchList::new());
    let (w1, w2) = (watch(1), watch(2));
    list.add(&w1).unwrap();
    list.add(&w2).unwrap();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let set = Glue::<Watch>::new("a", &events).hook(move |call, w: &Watch| {
        if call == "add" && w.fd() == Some(1) {
            entered_tx.send(()).unwrap();
            go_rx
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(10))
                .unwrap();
        }
    });
    let l = Arc::clone(&list);
    let installer = std::thread::spawn(move || l.set_functions(Some(Box::new(set))).unwrap());
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (l, x) = (Arc::clone(&list), w2.clone());
    let toggler = std::thread::spawn(move || l.toggle(&x, false).unwrap());
    go_tx.send(()).unwrap();
    installer.join().unwrap();
    toggler.join().unwrap();
    assert_eq!(
        take(&events),
        ["a.add 1 on", "a.add 2 on", "a.toggled 2 off"],
        "the other thread's toggle waited for the transaction"
    );
}

// ---- C14: panics --------------------------------------------------------------------------------

fn panics(f: impl FnOnce()) -> bool {
    catch_unwind(AssertUnwindSafe(f)).is_err()
}

#[test]
fn c14_panic_in_new_add_rolls_back_frees_new_set_keeps_old() {
    let events = log();
    let (list, ws) = list_of(&[1, 2]);
    install(&list, glue("a", &events));
    take(&events);
    assert!(panics(|| {
        let _ = list.set_functions(Some(Box::new(
            Glue::<Watch>::new("b", &events).panic_in("add"),
        )));
    }));
    assert_eq!(take(&events), ["b.add 1 on", "b.free"]);
    list.toggle(&ws[0], false).unwrap();
    assert_eq!(
        take(&events),
        ["a.toggled 1 off"],
        "old set still installed"
    );
}

#[test]
fn c14_panic_in_remove_still_removes() {
    let events = log();
    let (list, ws) = list_of(&[1, 2]);
    install(
        &list,
        Box::new(Glue::<Watch>::new("a", &events).panic_in("remove")),
    );
    take(&events);
    assert!(panics(|| list.remove(&ws[0]).unwrap()));
    assert_eq!(ws[0].fd(), None);
    assert_eq!(list.objects(), [ws[1].clone()]);
    list.toggle(&ws[1], false).unwrap();
    assert_eq!(take(&events), ["a.remove 1", "a.toggled 2 off"]);
}

#[test]
fn c14_panic_in_toggled_keeps_the_new_state() {
    let events = log();
    let (list, ws) = list_of(&[1]);
    install(
        &list,
        Box::new(Glue::<Watch>::new("a", &events).panic_in("toggled")),
    );
    assert!(panics(|| list.toggle(&ws[0], false).unwrap()));
    assert!(!ws[0].is_enabled());
    list.toggle(&ws[0], false).unwrap(); // unchanged: silent, the glue was told
    assert_eq!(take(&events), ["a.add 1 on", "a.toggled 1 off"]);
}

#[test]
fn c14_panic_in_free_data_runs_it_once_and_the_list_stays_usable() {
    let events = log();
    let (list, ws) = list_of(&[1]);
    install(
        &list,
        Box::new(Glue::<Watch>::new("a", &events).panic_in("free")),
    );
    assert!(panics(|| list.set_functions(None).unwrap()));
    assert_eq!(take(&events), ["a.add 1 on", "a.remove 1", "a.free"]);
    install(&list, glue("b", &events));
    list.remove(&ws[0]).unwrap();
    assert_eq!(take(&events), ["b.add 1 on", "b.remove 1"]);
}

#[test]
fn c14_queued_calls_are_delivered_even_when_the_callback_panics() {
    let events = log();
    let list = Arc::new(WatchList::new());
    let (w1, w2) = (watch(1), watch(2));
    list.add(&w1).unwrap();
    list.add(&w2).unwrap();
    let (l, x) = (Arc::clone(&list), w2.clone());
    let set = Glue::<Watch>::new("a", &events).hook(move |call, w: &Watch| {
        if call == "toggled" && w.fd() == Some(1) {
            l.remove(&x).unwrap();
            panic!("after queueing a remove");
        }
    });
    install(&list, Box::new(set));
    take(&events);
    assert!(panics(|| list.toggle(&w1, false).unwrap()));
    assert_eq!(take(&events), ["a.toggled 1 off", "a.remove 2"]);
    assert!(w2.is_removed());
}

#[test]
fn c14_free_data_runs_exactly_once_on_every_path() {
    let count = |events: &Log, name: &str| {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|l| **l == format!("{name}.free"))
            .count()
    };
    let events = log();
    let (list, _ws) = list_of(&[1]);
    install(&list, glue("ok", &events)); // success, then replaced
    install(&list, glue("next", &events));
    assert_eq!(count(&events, "ok"), 1, "replaced");
    drop(list.set_functions(Some(Box::new(
        Glue::<Watch>::new("refused", &events).fail_at(1),
    ))));
    assert_eq!(count(&events, "refused"), 1, "refused then dropped");
    assert!(panics(|| {
        let _ = list.set_functions(Some(Box::new(
            Glue::<Watch>::new("panicky", &events).panic_in("add"),
        )));
    }));
    assert_eq!(count(&events, "panicky"), 1, "panicked in add");
    list.set_functions(None).unwrap();
    assert_eq!(count(&events, "next"), 1, "uninstalled");
    install(&list, glue("last", &events));
    drop(list);
    assert_eq!(count(&events, "last"), 1, "list dropped");
    let got = take(&events);
    assert_eq!(got.last().map(String::as_str), Some("last.free"));
    assert!(
        got.contains(&"last.remove 1".to_string()),
        "drop removes first"
    );
}

#[test]
fn c14_panic_in_a_handler_passes_through() {
    let w = Watch::new(1, WatchFlags::READABLE, |_| panic!("handler"));
    assert!(panics(|| {
        let _ = w.handle(WatchFlags::READABLE);
    }));
    assert_eq!(w.handle(WatchFlags::WRITABLE), Delivery::NotRequested);
}

#[test]
fn c14_dropping_the_list_invalidates_every_object() {
    let events = log();
    let (list, ws) = list_of(&[1, 2]);
    install(&list, glue("a", &events));
    drop(list);
    assert!(ws.iter().all(|w| w.is_removed() && w.fd().is_none()));
    assert_eq!(
        take(&events),
        [
            "a.add 1 on",
            "a.add 2 on",
            "a.remove 1",
            "a.remove 2",
            "a.free"
        ]
    );
}

// ---- C16 helpers ---------------------------------------------------------------------------------

#[test]
fn c16_status_function_is_not_called_when_set_and_only_on_change() {
    let notifier = StatusNotifier::new();
    notifier.update(DispatchStatus::DataRemains); // no function yet
    let seen: Arc<Mutex<Vec<DispatchStatus>>> = Arc::default();
    let s = Arc::clone(&seen);
    notifier.set_function(Some(Box::new(move |st| s.lock().unwrap().push(st))));
    assert!(seen.lock().unwrap().is_empty(), "setting never calls");
    assert_eq!(notifier.status(), DispatchStatus::DataRemains);
    notifier.update(DispatchStatus::DataRemains);
    notifier.update(DispatchStatus::Complete);
    notifier.update(DispatchStatus::Complete);
    assert_eq!(*seen.lock().unwrap(), [DispatchStatus::Complete]);
}

#[test]
fn c16_status_function_may_dispatch_from_inside_without_nesting() {
    let notifier = Arc::new(StatusNotifier::new());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (n, s) = (Arc::downgrade(&notifier), Arc::clone(&seen));
    notifier.set_function(Some(Box::new(move |st| {
        s.lock().unwrap().push(format!("enter {st:?}"));
        if st == DispatchStatus::DataRemains {
            // "dispatch": drains the queue, reporting Complete from inside.
            n.upgrade().unwrap().update(DispatchStatus::Complete);
        }
        s.lock().unwrap().push(format!("leave {st:?}"));
    })));
    let n = Arc::clone(&notifier);
    bounded(move || n.update(DispatchStatus::DataRemains));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "enter DataRemains",
            "leave DataRemains",
            "enter Complete",
            "leave Complete"
        ]
    );
}

#[test]
fn c16_wakeup_hook_calls_the_installed_function() {
    let hook = WakeupHook::new();
    let wakes = Arc::new(AtomicUsize::new(0));
    hook.wake();
    let w = Arc::clone(&wakes);
    hook.set_function(Some(Box::new(move || {
        w.fetch_add(1, Ordering::SeqCst);
    })));
    hook.wake();
    hook.wake();
    hook.set_function(None);
    hook.wake();
    assert_eq!(wakes.load(Ordering::SeqCst), 2);
}

#[test]
fn c4_an_object_removed_inside_its_own_refused_add_stays_removed() {
    // remove() returned Ok inside the add, so the refusal must not make the object new again.
    let events = log();
    let list = Arc::new(WatchList::new());
    let w = watch(3);
    let (l, x) = (Arc::clone(&list), w.clone());
    let set = Glue::<Watch>::new("a", &events)
        .fail_at(1)
        .hook(move |call, _: &Watch| {
            if call == "add" {
                l.remove(&x).unwrap();
            }
        });
    install(&list, Box::new(set));
    assert!(matches!(list.add(&w), Err(Error::Refused(_))));
    assert_eq!(
        take(&events),
        ["a.add 3 on"],
        "no remove: the glue refused it"
    );
    assert!(w.is_removed());
    assert_eq!(w.fd(), None);
    assert!(matches!(list.add(&w), Err(Error::Removed)));
}

// ---- Regressions found by outside testing (issue 7) ---------------------------------------------

/// C4/C15: `remove` returns only once handler calls already running on other threads have
/// finished, and no handler starts after it returned — the producer may close the fd then.
#[test]
fn c4_remove_waits_for_handlers_running_on_other_threads() {
    use std::sync::atomic::AtomicBool;
    for _round in 0..20 {
        let list = Arc::new(WatchList::new());
        let inside = Arc::new(AtomicUsize::new(0));
        let returned = Arc::new(AtomicBool::new(false));
        let late = Arc::new(AtomicUsize::new(0));
        let (i, r, l) = (
            Arc::clone(&inside),
            Arc::clone(&returned),
            Arc::clone(&late),
        );
        let w = Watch::new(3, WatchFlags::READABLE, move |_| {
            i.fetch_add(1, Ordering::SeqCst);
            if r.load(Ordering::SeqCst) {
                l.fetch_add(1, Ordering::SeqCst); // started after remove returned
            }
            for _ in 0..50 {
                std::thread::yield_now(); // stay inside a while: "reading the fd"
            }
            i.fetch_sub(1, Ordering::SeqCst);
        });
        list.add(&w).unwrap();
        let started = Arc::new(std::sync::Barrier::new(7));
        let handlers: Vec<_> = (0..6)
            .map(|_| {
                let (w, started) = (w.clone(), Arc::clone(&started));
                std::thread::spawn(move || {
                    started.wait();
                    while w.handle(WatchFlags::READABLE) == Delivery::Delivered {}
                })
            })
            .collect();
        started.wait();
        while inside.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now(); // until some handler is in flight
        }
        let remover = Arc::clone(&list);
        let w2 = w.clone();
        bounded(move || remover.remove(&w2).unwrap());
        assert_eq!(
            inside.load(Ordering::SeqCst),
            0,
            "a handler outlived remove"
        );
        returned.store(true, Ordering::SeqCst);
        for h in handlers {
            h.join().unwrap();
        }
        assert_eq!(
            late.load(Ordering::SeqCst),
            0,
            "a handler started after remove"
        );
        assert_eq!(w.handle(WatchFlags::READABLE), Delivery::Removed);
    }
}

/// C4: a remove that waits for another thread's handler does not return before it ends, but a
/// handler removing its own watch is not waited for (it would wait for itself), and dropping
/// the list waits like `remove`.
#[test]
fn c4_remove_blocks_on_a_running_handler_until_it_ends() {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let order = log();
    let o = Arc::clone(&order);
    let w = Watch::new(3, WatchFlags::READABLE, move |_| {
        entered_tx.send(()).unwrap();
        go_rx.lock().unwrap().recv().unwrap();
        o.lock().unwrap().push("handler ended".to_string());
    });
    let list = Arc::new(WatchList::new());
    list.add(&w).unwrap();
    let handler = {
        let w = w.clone();
        std::thread::spawn(move || w.handle(WatchFlags::READABLE))
    };
    entered_rx.recv().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let remover = {
        let (list, w, order) = (Arc::clone(&list), w.clone(), Arc::clone(&order));
        std::thread::spawn(move || {
            list.remove(&w).unwrap();
            order.lock().unwrap().push("remove returned".to_string());
            done_tx.send(()).unwrap();
        })
    };
    // Negative check, bounded: with the handler parked, remove must not come back.
    assert!(
        done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "remove returned while the handler was still running"
    );
    assert!(
        w.is_removed(),
        "removal has begun: new handle calls are refused"
    );
    go_tx.send(()).unwrap();
    done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(handler.join().unwrap(), Delivery::Delivered);
    remover.join().unwrap();
    assert_eq!(take(&order), ["handler ended", "remove returned"]);

    // Removing itself from inside its own handler returns at once.
    let list = Arc::new(WatchList::new());
    let l = Arc::downgrade(&list);
    let me: Arc<Mutex<Option<Watch>>> = Arc::default();
    let m = Arc::clone(&me);
    let w = Watch::new(4, WatchFlags::READABLE, move |_| {
        let w = m.lock().unwrap().clone().unwrap();
        l.upgrade().unwrap().remove(&w).unwrap();
    });
    *me.lock().unwrap() = Some(w.clone());
    list.add(&w).unwrap();
    let w2 = w.clone();
    assert_eq!(
        bounded(move || w2.handle(WatchFlags::READABLE)),
        Delivery::Delivered
    );
    assert!(w.fd().is_none());
}

/// C9: a timeout disabled and enabled again inside a callback must still restart its period,
/// although the two toggles coalesce: the glue hears one `toggled` with the timeout enabled.
#[test]
fn c9_off_and_on_inside_a_callback_still_restarts_a_timeout() {
    let events = log();
    let list = Arc::new(TimeoutList::new());
    let (a, b) = (timeout(100), timeout(200));
    list.add(&a).unwrap();
    let (l, a2) = (Arc::downgrade(&list), a.clone());
    let glue = Glue::<Timeout>::new("t", &events).hook(move |call, t| {
        if call == "add" && t.interval() == Duration::from_millis(200) {
            let list = l.upgrade().unwrap();
            list.toggle(&a2, false).unwrap();
            list.toggle(&a2, true).unwrap();
        }
    });
    list.set_functions(Some(Box::new(glue))).unwrap();
    take(&events);
    list.add(&b).unwrap();
    assert_eq!(take(&events), ["t.add 200ms on", "t.toggled 100ms on"]);

    // Watches have no period: their off-and-on still reaches the glue as nothing.
    let events = log();
    let watches = Arc::new(WatchList::new());
    let (w1, w2) = (watch(1), watch(2));
    watches.add(&w1).unwrap();
    let (l, w1c) = (Arc::downgrade(&watches), w1.clone());
    let glue = Glue::<Watch>::new("w", &events).hook(move |call, w| {
        if call == "add" && w.fd() == Some(2) {
            let list = l.upgrade().unwrap();
            list.toggle(&w1c, false).unwrap();
            list.toggle(&w1c, true).unwrap();
        }
    });
    watches.set_functions(Some(Box::new(glue))).unwrap();
    take(&events);
    watches.add(&w2).unwrap();
    assert_eq!(take(&events), ["w.add 2 on"]);
}

/// C9/C10: `TimeoutList::restart` changes the interval and restarts the period; the glue
/// hears `toggled` with the new interval, also when the timeout was enabled already, and
/// also when it is called from inside a callback.
#[test]
fn c10_restart_changes_the_interval_through_toggled() {
    let events = log();
    let list = Arc::new(TimeoutList::new());
    let t = timeout(100);
    list.add(&t).unwrap();
    list.set_functions(Some(Box::new(Glue::<Timeout>::new("t", &events))))
        .unwrap();
    list.restart(&t, Duration::from_millis(300)).unwrap();
    list.toggle(&t, false).unwrap();
    list.restart(&t, Duration::from_millis(50)).unwrap();
    assert_eq!(
        take(&events),
        [
            "t.add 100ms on",
            "t.toggled 300ms on",
            "t.toggled 300ms off",
            "t.toggled 50ms on"
        ]
    );
    // From inside a callback, a disable then a restart coalesce into one restart.
    let other = timeout(7);
    let (l, t2) = (Arc::downgrade(&list), t.clone());
    let hooked = Glue::<Timeout>::new("u", &events).hook(move |call, x| {
        if call == "add" && x.interval() == Duration::from_millis(7) {
            let list = l.upgrade().unwrap();
            list.toggle(&t2, false).unwrap();
            list.restart(&t2, Duration::from_millis(60)).unwrap();
        }
    });
    list.set_functions(Some(Box::new(hooked))).unwrap();
    take(&events);
    list.add(&other).unwrap();
    assert_eq!(take(&events), ["u.add 7ms on", "u.toggled 60ms on"]);
    // A removed timeout is left alone; a fresh one takes the interval.
    list.remove(&t).unwrap();
    list.restart(&t, Duration::from_millis(1)).unwrap();
    assert_eq!(take(&events), ["u.remove 60ms"]);
    let fresh = Timeout::new_disabled(Duration::from_millis(5), || {});
    list.restart(&fresh, Duration::MAX).unwrap();
    assert!(fresh.is_enabled());
    assert_eq!(
        fresh.interval(),
        Duration::MAX,
        "huge intervals read back as never"
    );
}

/// C11: inside a callback, after a nested `remove` returned, `len`, `objects` and `contains`
/// tell the same bookkeeping.
#[test]
fn c11_len_objects_and_contains_agree_inside_callbacks() {
    let events = log();
    let list = Arc::new(WatchList::new());
    let (a, b, c) = (watch(1), watch(2), watch(3));
    list.add(&a).unwrap();
    list.add(&b).unwrap();
    type Seen = (usize, Vec<Watch>, bool); // len, objects, contains
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let (l, b2, s) = (Arc::downgrade(&list), b.clone(), Arc::clone(&seen));
    let glue = Glue::<Watch>::new("w", &events).hook(move |call, w| {
        if call == "add" && w.fd() == Some(3) {
            let list = l.upgrade().unwrap();
            list.remove(&b2).unwrap();
            s.lock()
                .unwrap()
                .push((list.len(), list.objects(), list.contains(&b2)));
        }
    });
    list.set_functions(Some(Box::new(glue))).unwrap();
    list.add(&c).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (len, objects, contains) = &seen[0];
    assert!(!contains);
    assert_eq!(objects, &[a.clone(), c.clone()]);
    assert_eq!(*len, objects.len());
    assert_eq!(list.len(), 2);
    assert_eq!(list.objects(), [a, c]);
}

/// C14: `Source::clear_functions` (what every glue's detach runs) finishes every step when
/// one panics — a watch set whose free-data panics still leaves the timeout set uninstalled —
/// and re-raises the panic at the end.
#[test]
fn c14_clear_functions_finishes_every_step_then_panics() {
    use loopglue::{SetFunctionsError, Source, SourceData, TimeoutFunctions};
    struct Pair {
        watches: WatchList,
        timeouts: TimeoutList,
        data: SourceData,
    }
    impl Source for Pair {
        fn data(&self) -> &SourceData {
            &self.data
        }
        fn set_watch_functions(
            &self,
            f: Option<Box<dyn WatchFunctions>>,
        ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
            self.watches.set_functions(f)
        }
        fn set_timeout_functions(
            &self,
            f: Option<Box<dyn TimeoutFunctions>>,
        ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
            self.timeouts.set_functions(f)
        }
    }
    let events = log();
    let pair = Pair {
        watches: WatchList::new(),
        timeouts: TimeoutList::new(),
        data: SourceData::new(),
    };
    pair.watches.add(&watch(1)).unwrap();
    pair.timeouts.add(&timeout(10)).unwrap();
    pair.set_functions(
        Box::new(Glue::<Watch>::new("w", &events).panic_in("free")),
        Box::new(Glue::<Timeout>::new("t", &events)),
    )
    .unwrap();
    take(&events);
    assert!(panics(|| {
        let _ = pair.clear_functions();
    }));
    assert!(!pair.watches.has_functions());
    assert!(
        !pair.timeouts.has_functions(),
        "the timeout set was left installed"
    );
    assert_eq!(
        take(&events),
        ["w.remove 1", "w.free", "t.remove 10ms", "t.free"]
    );
}

/// C4: `remove_nowait` is for producers whose handlers take a lock held while removing
/// (libdbus): it returns although a handler is still running on another thread.
#[test]
fn c4_remove_nowait_does_not_wait_for_a_running_handler() {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let w = Watch::new(3, WatchFlags::READABLE, move |_| {
        entered_tx.send(()).unwrap();
        go_rx.lock().unwrap().recv().unwrap();
    });
    let list = Arc::new(WatchList::new());
    list.add(&w).unwrap();
    let handler = {
        let w = w.clone();
        std::thread::spawn(move || w.handle(WatchFlags::READABLE))
    };
    entered_rx.recv().unwrap();
    let (l, w2) = (Arc::clone(&list), w.clone());
    bounded(move || l.remove_nowait(&w2).unwrap());
    assert!(w.fd().is_none());
    assert_eq!(w.handle(WatchFlags::READABLE), Delivery::Removed);
    go_tx.send(()).unwrap();
    assert_eq!(handler.join().unwrap(), Delivery::Delivered);
}

/// C16: a status computed under the producer's lock and reported after it can arrive out of
/// order — a consumer's stale `Complete` overtaking a producer's `DataRemains` strands the
/// message with `update`. `refresh` re-reads the live status, so the glue's last word is true.
#[test]
fn c16_refresh_reports_the_live_status_whatever_the_order() {
    let queue: Arc<Mutex<Vec<u32>>> = Arc::new(Mutex::new(vec![1]));
    let live = {
        let queue = Arc::clone(&queue);
        move || match queue.lock().unwrap().is_empty() {
            true => DispatchStatus::Complete,
            false => DispatchStatus::DataRemains,
        }
    };
    let told = Arc::new(Mutex::new(Vec::new()));
    let notifier = StatusNotifier::new();
    let t = Arc::clone(&told);
    notifier.set_function(Some(Box::new(move |s| t.lock().unwrap().push(s))));
    notifier.refresh(&live);
    // The consumer empties the queue and computes Complete, but is preempted before
    // reporting; a producer queues a message and reports; then the consumer reports.
    queue.lock().unwrap().clear();
    let consumer_saw = live();
    queue.lock().unwrap().push(2);
    let producer_saw = live();
    notifier.refresh(&live); // the producer's report
    notifier.refresh(&live); // the consumer's late report re-reads: a message is queued
    assert_eq!(
        (consumer_saw, producer_saw),
        (DispatchStatus::Complete, DispatchStatus::DataRemains)
    );
    assert_eq!(*told.lock().unwrap(), [DispatchStatus::DataRemains]);
    assert_eq!(
        notifier.status(),
        DispatchStatus::DataRemains,
        "nothing stranded"
    );

    // The same interleaving with `update` strands it: the glue's last word is Complete.
    let stale = StatusNotifier::new();
    stale.update(DispatchStatus::DataRemains);
    stale.update(producer_saw);
    stale.update(consumer_saw);
    assert_eq!(stale.status(), DispatchStatus::Complete);
}
