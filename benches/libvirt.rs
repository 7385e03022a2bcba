//! Lifecycle events per second: libvirt's create/destroy workload delivered through loopglue's
//! `MainLoop` (via `loopglue::libvirt::register`) and through libvirt's own default loop
//! (`virEventRegisterDefaultImpl` + `virEventRunDefaultImpl`), same run, alternating.
//!
//! libvirt takes one event implementation per process, so each measurement is a child
//! process (this binary, re-run with `LOOPGLUE_LIBVIRT_BENCH_SIDE` set) running the workload
//! of the anchor `libvirt_events.c`: create and destroy a transient domain, then turn the loop
//! until its STARTED and STOPPED events have arrived, N times. Both sides run the same Rust
//! code except for the loop. Done for the in-process driver (`test:///default`) and for the
//! remote driver through a private `libvirtd` (started here, test driver only).
//!
//! Run: `cargo bench --features libvirt --bench libvirt`
//! Knobs: `LOOPGLUE_LIBVIRT_ROUNDS` (default 7), `LOOPGLUE_LIBVIRT_CYCLES` (in-process,
//! default 5000), `LOOPGLUE_LIBVIRT_REMOTE_CYCLES` (default 2000).

#[path = "../tests/libvirt_common/mod.rs"]
mod libvirt_common;

use std::env;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libvirt_common::ffi::{virEventRegisterDefaultImpl, virEventRunDefaultImpl};
use libvirt_common::{Connection, Daemon, LoopUnderTest};
use loopglue::handles::HandleTable;
use loopglue::MainLoop;

const SIDE: &str = "LOOPGLUE_LIBVIRT_BENCH_SIDE";

struct OnMainLoop(MainLoop);

impl LoopUnderTest for OnMainLoop {
    fn name(&self) -> &'static str {
        "loopglue MainLoop"
    }
    fn attach(&mut self, table: &HandleTable) {
        self.0.attach(Arc::new(table.clone())).unwrap();
    }
    fn turn(&mut self, max: Duration) -> usize {
        self.0.run_once(Some(max)).unwrap()
    }
}

struct DefaultImpl;

impl LoopUnderTest for DefaultImpl {
    fn name(&self) -> &'static str {
        "libvirt default impl"
    }
    fn attach(&mut self, _table: &HandleTable) {}
    fn turn(&mut self, _max: Duration) -> usize {
        // SAFETY: one iteration of libvirt's own loop, registered in `child`.
        unsafe { virEventRunDefaultImpl() };
        0
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One measurement, in a process of its own: prints `RESULT <seconds> <events>`.
fn child(side: &str) {
    let uri = env::var("LOOPGLUE_LIBVIRT_URI").unwrap();
    let cycles = env_usize("LOOPGLUE_LIBVIRT_N", 1000);
    let mut lp: Box<dyn LoopUnderTest> = match side {
        "loopglue" => {
            let mut lp = OnMainLoop(MainLoop::new().unwrap());
            let table = HandleTable::new();
            lp.attach(&table);
            loopglue::libvirt::register(table).unwrap();
            Box::new(lp)
        }
        _ => {
            // SAFETY: registers libvirt's own loop, once, before any connection.
            assert_eq!(unsafe { virEventRegisterDefaultImpl() }, 0);
            Box::new(DefaultImpl)
        }
    };
    let conn = Connection::open(&uri);
    let start = Instant::now();
    conn.cycles(&mut *lp, cycles);
    let elapsed = start.elapsed();
    let events = conn.events.lock().unwrap().len();
    assert_eq!(events, 2 * cycles);
    println!("RESULT {} {}", elapsed.as_secs_f64(), events);
    conn.close();
}

/// Microseconds per event of one child run.
fn measure(side: &str, uri: &str, cycles: usize) -> f64 {
    let out = Command::new(env::current_exe().unwrap())
        .env(SIDE, side)
        .env("LOOPGLUE_LIBVIRT_URI", uri)
        .env("LOOPGLUE_LIBVIRT_N", cycles.to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "{side} child failed: {}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut fields = line.split_whitespace().skip(1);
    let seconds: f64 = fields.next().unwrap().parse().unwrap();
    let events: f64 = fields.next().unwrap().parse().unwrap();
    seconds / events * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    if let Ok(side) = env::var(SIDE) {
        child(&side);
        return;
    }
    if env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list`: nothing to list
    }
    let rounds = env_usize("LOOPGLUE_LIBVIRT_ROUNDS", 7);
    let local = env_usize("LOOPGLUE_LIBVIRT_CYCLES", 5000);
    let remote = env_usize("LOOPGLUE_LIBVIRT_REMOTE_CYCLES", 2000);
    let daemon = Daemon::start();
    println!(
        "libvirt lifecycle events, median of {rounds} alternating runs (µs per event; lower is \
         better)\n"
    );
    println!("| driver | cycles | libvirt default impl | loopglue MainLoop | loopglue / libvirt |");
    println!("|---|---:|---:|---:|---:|");
    for (label, uri, cycles) in [
        (
            "test:///default (in process)",
            "test:///default".to_string(),
            local,
        ),
        (
            "remote, libvirtd over a Unix socket",
            daemon.uri.clone(),
            remote,
        ),
    ] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so drift on a busy machine hits both alike.
            if round % 2 == 0 {
                ours.push(measure("loopglue", &uri, cycles));
                theirs.push(measure("default", &uri, cycles));
            } else {
                theirs.push(measure("default", &uri, cycles));
                ours.push(measure("loopglue", &uri, cycles));
            }
        }
        let (ours, theirs) = (median(&mut ours), median(&mut theirs));
        println!(
            "| {label} | {cycles} | {theirs:.2} ({:.0}/s) | {ours:.2} ({:.0}/s) | {:.3}x |",
            1e6 / theirs,
            1e6 / ours,
            ours / theirs
        );
    }
    drop(daemon);
}
