//! MockLoop's own behaviour: virtual time, fire order, periodic re-arm, restart on enable,
//! failure injection, readiness injection, real-fd polling and the exact call log.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::testing::{MockEvent, MockLoop};
use loopglue::{Delivery, Error, Timeout, TimeoutList, Watch, WatchFlags, WatchList};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lists(mock: &MockLoop) -> (WatchList, TimeoutList) {
    let (w, t) = (WatchList::new(), TimeoutList::new());
    w.set_functions(Some(mock.watch_functions())).unwrap();
    t.set_functions(Some(mock.timeout_functions())).unwrap();
    (w, t)
}

type Fired = Arc<Mutex<Vec<&'static str>>>;

fn named(fired: &Fired, name: &'static str, every: u64) -> Timeout {
    let f = Arc::clone(fired);
    Timeout::new(ms(every), move || f.lock().unwrap().push(name))
}

#[test]
fn timeouts_fire_in_deadline_order_ties_by_registration() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let fired: Fired = Arc::default();
    for t in [
        named(&fired, "b30", 30),
        named(&fired, "a10", 10),
        named(&fired, "c30", 30),
    ] {
        timeouts.add(&t).unwrap();
    }
    // a10 every 10 ms; b30 and c30 at 30 and 60. At 30 and 60 all three are due, and they
    // fire in registration order: b30, a10, c30.
    assert_eq!(mock.advance(ms(60)), 10);
    assert_eq!(
        *fired.lock().unwrap(),
        ["a10", "a10", "b30", "a10", "c30", "a10", "a10", "b30", "a10", "c30"]
    );
    assert_eq!(mock.now(), ms(60));
}

#[test]
fn fires_carry_their_virtual_time() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let t = Timeout::new(ms(25), || {});
    timeouts.add(&t).unwrap();
    mock.take_log();
    mock.advance(ms(60));
    assert_eq!(
        mock.take_log(),
        [
            MockEvent::TimeoutFired {
                id: t.id(),
                at: ms(25)
            },
            MockEvent::TimeoutFired {
                id: t.id(),
                at: ms(50)
            },
        ]
    );
    assert_eq!(mock.next_deadline(), Some(ms(75)));
}

#[test]
fn enabling_restarts_the_period_and_disabled_never_fires() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let fired: Fired = Arc::default();
    let t = named(&fired, "t", 10);
    timeouts.add(&t).unwrap();
    mock.advance(ms(7));
    timeouts.toggle(&t, false).unwrap();
    assert_eq!(mock.next_deadline(), None);
    assert_eq!(mock.advance(ms(100)), 0);
    timeouts.toggle(&t, true).unwrap(); // at 107: due at 117, not at 10-aligned times
    assert_eq!(mock.next_deadline(), Some(ms(117)));
    assert_eq!(mock.advance(ms(9)), 0);
    assert_eq!(mock.advance(ms(1)), 1);
}

#[test]
fn a_handler_may_remove_its_own_timeout() {
    let mock = MockLoop::new();
    let (_w, timeouts) = lists(&mock);
    let timeouts = Arc::new(timeouts);
    let slot: Arc<Mutex<Option<Timeout>>> = Arc::default();
    let (l, s) = (Arc::clone(&timeouts), Arc::clone(&slot));
    let t = Timeout::new(ms(5), move || {
        let me = s.lock().unwrap().take().unwrap();
        l.remove(&me).unwrap();
    });
    *slot.lock().unwrap() = Some(t.clone());
    timeouts.add(&t).unwrap();
    assert_eq!(mock.advance(ms(50)), 1, "fired once, then gone");
    assert!(mock.timeouts().is_empty());
}

#[test]
fn ready_reaches_every_enabled_watch_of_the_fd_with_its_own_flags() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let seen: Arc<Mutex<Vec<(&str, WatchFlags)>>> = Arc::default();
    let make = |name: &'static str, flags| {
        let s = Arc::clone(&seen);
        Watch::new(9, flags, move |c| s.lock().unwrap().push((name, c)))
    };
    let (r, w, off) = (
        make("r", WatchFlags::READABLE),
        make("w", WatchFlags::WRITABLE),
        make("off", WatchFlags::READABLE),
    );
    for x in [&r, &w, &off] {
        watches.add(x).unwrap();
    }
    watches.toggle(&off, false).unwrap();
    assert_eq!(mock.enabled_watches_for(9), [r.clone(), w.clone()]);
    mock.take_log();
    // HANGUP is always reported, so the write watch hears it too (without READABLE).
    assert_eq!(mock.ready(9, WatchFlags::READABLE | WatchFlags::HANGUP), 2);
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("r", WatchFlags::READABLE | WatchFlags::HANGUP),
            ("w", WatchFlags::HANGUP)
        ]
    );
    assert_eq!(
        mock.take_log(),
        [
            MockEvent::WatchHandled {
                id: r.id(),
                condition: WatchFlags::READABLE | WatchFlags::HANGUP,
                delivery: Delivery::Delivered
            },
            MockEvent::WatchHandled {
                id: w.id(),
                condition: WatchFlags::READABLE | WatchFlags::HANGUP,
                delivery: Delivery::Delivered
            },
        ]
    );
    assert_eq!(mock.ready(8, WatchFlags::READABLE), 0, "other fds: nothing");
}

#[test]
fn fail_next_add_and_fail_add_at() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let ws: Vec<Watch> = (0..4)
        .map(|fd| Watch::new(fd, WatchFlags::READABLE, |_| {}))
        .collect();
    mock.fail_next_add(io::Error::other("full"));
    assert!(matches!(watches.add(&ws[0]), Err(Error::Refused(_))));
    watches.add(&ws[0]).unwrap();
    mock.fail_add_at(2);
    watches.add(&ws[1]).unwrap();
    assert!(matches!(watches.add(&ws[2]), Err(Error::Refused(_))));
    watches.add(&ws[3]).unwrap();
    let ids: Vec<u64> = mock.watches().iter().map(Watch::id).collect();
    assert_eq!(ids, [ws[0].id(), ws[1].id(), ws[3].id()]);
    let refused: Vec<MockEvent> = mock
        .log()
        .into_iter()
        .filter(|e| matches!(e, MockEvent::AddRefused { .. }))
        .collect();
    assert_eq!(
        refused,
        [
            MockEvent::AddRefused { id: ws[0].id() },
            MockEvent::AddRefused { id: ws[2].id() }
        ]
    );
}

#[test]
fn the_log_records_adds_toggles_and_removes_exactly() {
    let mock = MockLoop::new();
    let (watches, timeouts) = lists(&mock);
    let w = Watch::new_disabled(3, WatchFlags::WRITABLE, |_| {});
    let t = Timeout::new_disabled(ms(40), || {});
    watches.add(&w).unwrap();
    timeouts.add(&t).unwrap();
    watches.toggle(&w, true).unwrap();
    timeouts.toggle(&t, true).unwrap();
    watches.remove(&w).unwrap();
    timeouts.remove(&t).unwrap();
    assert_eq!(
        mock.take_log(),
        [
            MockEvent::WatchAdded {
                id: w.id(),
                fd: 3,
                flags: WatchFlags::WRITABLE,
                enabled: false
            },
            MockEvent::TimeoutAdded {
                id: t.id(),
                interval: ms(40),
                enabled: false
            },
            MockEvent::WatchToggled {
                id: w.id(),
                enabled: true
            },
            MockEvent::TimeoutToggled {
                id: t.id(),
                enabled: true
            },
            MockEvent::WatchRemoved { id: w.id(), fd: 3 },
            MockEvent::TimeoutRemoved { id: t.id() },
        ]
    );
    assert!(mock.log().is_empty());
}

#[test]
fn poll_fds_delivers_real_readiness() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let (a, b) = UnixStream::pair().unwrap();
    let got: Arc<Mutex<Vec<WatchFlags>>> = Arc::default();
    let g = Arc::clone(&got);
    let w = Watch::new(a.as_raw_fd(), WatchFlags::READABLE, move |c| {
        g.lock().unwrap().push(c)
    });
    watches.add(&w).unwrap();
    assert_eq!(mock.poll_fds(), 0, "nothing to read yet");
    (&b).write_all(b"x").unwrap();
    assert_eq!(mock.poll_fds(), 1);
    assert_eq!(*got.lock().unwrap(), [WatchFlags::READABLE]);
    watches.remove(&w).unwrap();
}

#[test]
fn poll_fds_drops_a_closed_fd_instead_of_spinning() {
    let mock = MockLoop::new();
    let (watches, _t) = lists(&mock);
    let (a, _b) = UnixStream::pair().unwrap();
    let fd = a.into_raw_fd();
    let w = Watch::new(fd, WatchFlags::READABLE, |_| {
        panic!("a closed fd is never handled")
    });
    watches.add(&w).unwrap();
    nix::unistd::close(fd).unwrap(); // breaks C15 on purpose
    mock.take_log();
    assert_eq!(mock.poll_fds(), 0);
    assert_eq!(mock.poll_fds(), 0);
    assert_eq!(mock.take_log(), [MockEvent::FdClosed { fd }], "logged once");
    watches.remove(&w).unwrap();
}
