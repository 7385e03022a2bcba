//! Core micro-benchmarks: toggle, add + remove, set replacement at 1,000 and 100,000 watches,
//! and `handle` dispatch; plus the memory an installed watch costs, measured with a counting
//! allocator and printed before the timings.
//!
//! `cargo bench --bench core`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use loopglue::{Timeout, Watch, WatchFlags, WatchFunctions, WatchList};

/// Counts live heap bytes so the bench can report the cost of an installed watch.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a side
// effect that never touches the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Glue that does nothing: what is measured is the list's own cost.
struct Noop;

impl WatchFunctions for Noop {
    fn add(&mut self, _: &Watch) -> io::Result<()> {
        Ok(())
    }
    fn remove(&mut self, _: &Watch) {}
    fn toggled(&mut self, _: &Watch) {}
}

fn noop() -> Option<Box<dyn WatchFunctions>> {
    Some(Box::new(Noop))
}

fn watch(fd: i32) -> Watch {
    Watch::new(fd, WatchFlags::READABLE, |_| {})
}

fn filled(n: usize) -> (WatchList, Vec<Watch>) {
    let list = WatchList::new();
    let watches: Vec<Watch> = (0..n).map(|i| watch(i as i32)).collect();
    for w in &watches {
        list.add(w).unwrap();
    }
    list.set_functions(noop()).unwrap();
    (list, watches)
}

fn bytes_per_installed_watch() {
    const N: usize = 100_000;
    let mut handles: Vec<Watch> = Vec::with_capacity(N);
    let list = WatchList::new();
    list.set_functions(noop()).unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..N {
        let w = watch(i as i32);
        list.add(&w).unwrap();
        handles.push(w);
    }
    let after = LIVE.load(Ordering::Relaxed);
    println!(
        "memory: {:.1} bytes per installed watch ({} watches, list + objects, \
         the producer's own handle vector excluded)",
        (after - before) as f64 / N as f64,
        N
    );
    drop(list);
    drop(handles);
}

fn core(c: &mut Criterion) {
    let (list, watches) = filled(1);
    let w = &watches[0];
    let mut on = false;
    c.bench_function("toggle (no-op glue)", |b| {
        b.iter(|| {
            list.toggle(w, on).unwrap();
            on = !on;
        })
    });

    let list = WatchList::new();
    list.set_functions(noop()).unwrap();
    c.bench_function("add + remove (no-op glue)", |b| {
        b.iter_batched(
            || watch(3),
            |w| {
                list.add(&w).unwrap();
                list.remove(&w).unwrap();
                w
            },
            BatchSize::SmallInput,
        )
    });

    let w = watch(3);
    c.bench_function("Watch::handle (no-op handler)", |b| {
        b.iter(|| black_box(w.handle(black_box(WatchFlags::READABLE))))
    });
    let t = Timeout::new(Duration::from_millis(1), || {});
    c.bench_function("Timeout::handle (no-op handler)", |b| {
        b.iter(|| black_box(t.handle()))
    });

    let mut group = c.benchmark_group("replace set");
    for n in [1_000usize, 100_000] {
        let (list, _watches) = filled(n);
        group.throughput(Throughput::Elements(n as u64));
        if n >= 100_000 {
            group.sample_size(10);
        }
        group.bench_function(format!("{n} watches"), |b| {
            b.iter(|| list.set_functions(noop()).unwrap())
        });
    }
    group.finish();
}

fn main() {
    bytes_per_installed_watch();
    let mut criterion = Criterion::default().configure_from_args();
    core(&mut criterion);
    criterion.final_summary();
}
