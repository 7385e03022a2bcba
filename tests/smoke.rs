use loopglue::*;
use std::io;
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<String>>>;

fn glue(name: &'static str, log: &Log, fail_at: Option<usize>) -> Box<dyn WatchFunctions> {
    let l1 = log.clone();
    let l2 = log.clone();
    let l3 = log.clone();
    let l4 = log.clone();
    let mut n = 0;
    Box::new(WatchFunctionSet::new(
        move |w: &Watch, _: &mut ()| {
            n += 1;
            l1.lock()
                .unwrap()
                .push(format!("{name}.add {}", w.fd().unwrap()));
            if Some(n) == fail_at {
                Err(io::Error::other("no"))
            } else {
                Ok(())
            }
        },
        move |w: &Watch, _: &mut ()| {
            l2.lock()
                .unwrap()
                .push(format!("{name}.remove {}", w.fd().unwrap()))
        },
        move |w: &Watch, _: &mut ()| {
            l3.lock().unwrap().push(format!(
                "{name}.toggled {} {}",
                w.fd().unwrap(),
                w.is_enabled()
            ))
        },
        (),
        move |_| l4.lock().unwrap().push(format!("{name}.free")),
    ))
}

#[test]
fn smoke() {
    let log: Log = Arc::default();
    let list = Arc::new(WatchList::new());
    let ws: Vec<Watch> = (0..3)
        .map(|i| Watch::new(i, WatchFlags::READABLE, |_| {}))
        .collect();
    for w in &ws {
        list.add(w).unwrap();
    }
    list.set_functions(Some(glue("a", &log, None))).unwrap();
    let err = list
        .set_functions(Some(glue("b", &log, Some(2))))
        .unwrap_err();
    drop(err);
    list.toggle(&ws[1], false).unwrap();
    list.toggle(&ws[1], false).unwrap();
    // reentrant: toggled of glue c removes watch 0 and adds a new one
    let l = list.clone();
    let w0 = ws[0].clone();
    let extra = Watch::new(9, WatchFlags::WRITABLE, |_| {});
    let ex = extra.clone();
    let log2 = log.clone();
    list.set_functions(Some(Box::new(WatchFunctionSet::new(
        move |w: &Watch, _: &mut ()| {
            log2.lock()
                .unwrap()
                .push(format!("c.add {}", w.fd().unwrap()));
            if w.fd() == Some(2) {
                l.remove(&w0).unwrap();
                l.add(&ex).unwrap();
            }
            Ok(())
        },
        |_: &Watch, _: &mut ()| {},
        |_: &Watch, _: &mut ()| {},
        (),
        drop,
    ))))
    .unwrap();
    let got = log.lock().unwrap().clone();
    println!("{got:#?}");
    assert_eq!(
        got,
        [
            "a.add 0",
            "a.add 1",
            "a.add 2",
            "b.add 0",
            "b.add 1",
            "b.remove 0",
            "b.free",
            "a.toggled 1 false",
            "c.add 0",
            "c.add 1",
            "c.add 2",
            "a.remove 0",
            "a.remove 1",
            "a.remove 2",
            "c.add 9",
            "a.free"
        ]
    );
    assert_eq!(list.len(), 3);
    assert!(!list.contains(&ws[0]));
    assert_eq!(ws[0].fd(), None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        list.set_functions(Some(Box::new(WatchFunctionSet::new(
            |_: &Watch, _: &mut ()| panic!("boom"),
            |_: &Watch, _: &mut ()| {},
            |_: &Watch, _: &mut ()| {},
            (),
            drop,
        ))))
        .ok();
    }));
    assert!(r.is_err());
    assert!(list.has_functions());
    list.toggle(&ws[1], true).unwrap();
}
