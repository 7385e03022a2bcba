//! The adversarial add-failure sweep (C7, C8, C14): a replacement of N objects fails — by a
//! refusal or a panic — at every position k, and the exact calls each set heard, the
//! free-data and every glue data value are counted. Then the list must go on as if the
//! replacement had never been tried.

use std::io;
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::testing::{MockEvent, MockLoop, SocketPeer};
use loopglue::{Error, Source, Watch, WatchFlags, WatchFunctions, WatchList};

/// What one set heard, by object id, in order.
#[derive(Default, Debug)]
struct Heard {
    adds: Vec<u64>,
    refused: Vec<u64>,
    removes: Vec<u64>,
    toggles: Vec<u64>,
    frees: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Refuse,
    Panic,
}

/// Glue data stored by every `add` — before it decides to accept — whose drops are counted.
struct Tag(Arc<AtomicUsize>);

impl Drop for Tag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Counting {
    heard: Arc<Mutex<Heard>>,
    calls: usize,
    fail: Option<(usize, Failure)>,
    tags: Arc<AtomicUsize>,
}

impl Counting {
    fn new(
        fail: Option<(usize, Failure)>,
        tags: &Arc<AtomicUsize>,
    ) -> (Counting, Arc<Mutex<Heard>>) {
        let heard: Arc<Mutex<Heard>> = Arc::default();
        let set = Counting {
            heard: Arc::clone(&heard),
            calls: 0,
            fail,
            tags: Arc::clone(tags),
        };
        (set, heard)
    }
}

impl WatchFunctions for Counting {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        self.calls += 1;
        // Adversarial: the data is stored before the glue decides; refused or not, it must be
        // dropped exactly once.
        watch.set_data(Tag(Arc::clone(&self.tags)));
        let mut heard = self.heard.lock().unwrap();
        match self.fail {
            Some((k, failure)) if k == self.calls => {
                heard.refused.push(watch.id());
                drop(heard);
                match failure {
                    Failure::Refuse => Err(io::Error::other("refused at k")),
                    Failure::Panic => panic!("add panics at k"),
                }
            }
            _ => {
                heard.adds.push(watch.id());
                Ok(())
            }
        }
    }

    fn remove(&mut self, watch: &Watch) {
        self.heard.lock().unwrap().removes.push(watch.id());
    }

    fn toggled(&mut self, watch: &Watch) {
        self.heard.lock().unwrap().toggles.push(watch.id());
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.heard.lock().unwrap().frees += 1;
    }
}

fn ids(watches: &[Watch]) -> Vec<u64> {
    watches.iter().map(Watch::id).collect()
}

/// One replacement of `n` objects that fails at `k` with `failure`, then the list's life after.
fn sweep_one(n: usize, k: usize, failure: Failure) {
    let tags = Arc::new(AtomicUsize::new(0));
    let list = WatchList::new();
    let watches: Vec<Watch> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                Watch::new(i as i32, WatchFlags::READABLE, |_| {})
            } else {
                Watch::new_disabled(i as i32, WatchFlags::WRITABLE, |_| {})
            }
        })
        .collect();
    for w in &watches {
        list.add(w).unwrap();
    }
    let (a, heard_a) = Counting::new(None, &tags);
    list.set_functions(Some(Box::new(a))).unwrap();
    assert_eq!(heard_a.lock().unwrap().adds, ids(&watches));

    let (b, heard_b) = Counting::new(Some((k, failure)), &tags);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| list.set_functions(Some(Box::new(b)))));
    match (failure, outcome) {
        (Failure::Refuse, Ok(Err(refused))) => {
            assert!(matches!(refused.error(), Error::Refused(_)), "{refused:?}");
            assert_eq!(
                heard_b.lock().unwrap().frees,
                0,
                "handed back, not freed yet"
            );
            drop(refused.into_functions().expect("the set comes back"));
        }
        (Failure::Panic, Err(_)) => {}
        (failure, outcome) => panic!(
            "n={n} k={k} {failure:?}: unexpected {:?}",
            outcome.map(|r| r.is_ok())
        ),
    }
    {
        let b = heard_b.lock().unwrap();
        assert_eq!(b.adds, ids(&watches[..k - 1]), "n={n} k={k} {failure:?}");
        assert_eq!(b.refused, [watches[k - 1].id()]);
        assert_eq!(b.removes, ids(&watches[..k - 1]), "rollback, in order");
        assert!(b.toggles.is_empty());
        assert_eq!(b.frees, 1, "the failed set is freed exactly once");
    }
    {
        let a = heard_a.lock().unwrap();
        assert_eq!(a.adds, ids(&watches));
        assert!(a.removes.is_empty() && a.toggles.is_empty(), "{a:?}");
        assert_eq!(a.frees, 0, "the old set stays installed, untouched");
    }
    assert_eq!(
        tags.load(Ordering::SeqCst),
        k,
        "B's data values, all dropped once"
    );
    assert_eq!(list.len(), n);
    assert!(list.has_functions());
    assert!(watches.iter().all(|w| list.contains(w)));
    assert!(watches
        .iter()
        .enumerate()
        .all(|(i, w)| w.is_enabled() == (i % 2 == 0)));

    // The list goes on with A.
    list.toggle(&watches[0], false).unwrap();
    assert_eq!(heard_a.lock().unwrap().toggles, [watches[0].id()]);
    let (c, heard_c) = Counting::new(None, &tags);
    list.set_functions(Some(Box::new(c))).unwrap();
    assert_eq!(heard_c.lock().unwrap().adds, ids(&watches));
    {
        let a = heard_a.lock().unwrap();
        assert_eq!(a.removes, ids(&watches));
        assert_eq!(a.frees, 1);
    }
    assert_eq!(
        tags.load(Ordering::SeqCst),
        k + n,
        "A's values dropped with A's removes"
    );
    drop(list);
    let c = heard_c.lock().unwrap();
    assert_eq!(c.removes, ids(&watches));
    assert_eq!(c.frees, 1);
    assert_eq!(
        tags.load(Ordering::SeqCst),
        k + 2 * n,
        "every value dropped exactly once"
    );
}

#[test]
fn a_replacement_refused_at_every_position_changes_nothing() {
    for n in 1..=7 {
        for k in 1..=n {
            sweep_one(n, k, Failure::Refuse);
        }
    }
}

#[test]
fn a_replacement_whose_add_panics_at_every_position_changes_nothing() {
    for n in 1..=7 {
        for k in 1..=n {
            sweep_one(n, k, Failure::Panic);
        }
    }
}

/// An `add` refused while a set is installed: no `remove` follows, the object is not tracked
/// and may be added again; its data value is dropped once.
#[test]
fn a_refused_add_leaves_no_trace() {
    let tags = Arc::new(AtomicUsize::new(0));
    let list = WatchList::new();
    let (set, heard) = Counting::new(Some((2, Failure::Refuse)), &tags);
    list.set_functions(Some(Box::new(set))).unwrap();
    let (w1, w2) = (
        Watch::new(1, WatchFlags::READABLE, |_| {}),
        Watch::new(2, WatchFlags::READABLE, |_| {}),
    );
    list.add(&w1).unwrap();
    assert!(matches!(list.add(&w2), Err(Error::Refused(_))));
    assert!(!list.contains(&w2));
    assert_eq!(list.len(), 1);
    assert_eq!(tags.load(Ordering::SeqCst), 1);
    list.add(&w2).unwrap(); // the third add: accepted
    list.remove(&w2).unwrap();
    let heard = heard.lock().unwrap();
    assert_eq!(heard.adds, [w1.id(), w2.id()]);
    assert_eq!(heard.refused, [w2.id()]);
    assert_eq!(heard.removes, [w2.id()]);
    drop(heard);
    assert_eq!(tags.load(Ordering::SeqCst), 2);
}

/// The same sweep through a loop's `attach`: a peer's two watches and `t` timeouts, the k-th
/// add refused by MockLoop. Nothing stays registered, every accepted add is taken back, and a
/// second attach works.
#[test]
fn an_attach_refused_at_every_position_leaves_nothing_registered() {
    for timeouts in 0..=3usize {
        let total = 2 + timeouts;
        for k in 1..=total {
            let mock = MockLoop::new();
            let (ours, theirs) = UnixStream::pair().unwrap();
            let peer = SocketPeer::new(ours, 4096).unwrap();
            for i in 0..timeouts {
                peer.add_timeout(Duration::from_millis(10 * (i as u64 + 1)))
                    .unwrap();
            }
            mock.fail_add_at(k);
            let source: Arc<dyn Source> = Arc::new(peer.clone());
            assert!(
                mock.attach(Arc::clone(&source)).is_err(),
                "k={k} of {total}"
            );
            assert!(mock.watches().is_empty() && mock.timeouts().is_empty());
            assert_eq!(mock.sources(), 0);
            let log = mock.take_log();
            let added = log
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        MockEvent::WatchAdded { .. } | MockEvent::TimeoutAdded { .. }
                    )
                })
                .count();
            let removed = log
                .iter()
                .filter(|e| {
                    matches!(
                        e,
                        MockEvent::WatchRemoved { .. } | MockEvent::TimeoutRemoved { .. }
                    )
                })
                .count();
            let refused = log
                .iter()
                .filter(|e| matches!(e, MockEvent::AddRefused { .. }))
                .count();
            assert_eq!((added, refused), (k - 1, 1), "k={k}: {log:?}");
            assert_eq!(removed, k - 1, "every accepted add taken back: {log:?}");

            mock.attach(source).unwrap();
            assert_eq!(mock.watches().len(), 2);
            assert_eq!(mock.timeouts().len(), timeouts);
            std::io::Write::write_all(&mut &theirs, b"ok").unwrap();
            assert_eq!(mock.poll_fds(), 1);
            assert_eq!(peer.received(), b"ok");
            peer.close();
        }
    }
}
