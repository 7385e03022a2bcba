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
//!
//! On a busy machine wall and CPU time are noisy; `LOOPGLUE_LIBVIRT_INSTRUCTIONS=1` adds a
//! load-independent count: user-space instructions per event under valgrind's callgrind
//! (`apt-get install valgrind`), from runs of 200 and 600 cycles, so start-up cancels out.
//! It counts no kernel work (both loops make about the same system calls per event).

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

/// CPU time (user + system) of this process, all threads.
fn cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

/// One measurement, in a process of its own: prints `RESULT <wall s> <cpu s> <events>`.
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
    let (start, cpu) = (Instant::now(), cpu_time());
    conn.cycles(&mut *lp, cycles);
    let (elapsed, cpu) = (start.elapsed(), cpu_time() - cpu);
    let events = conn.events.lock().unwrap().len();
    assert_eq!(events, 2 * cycles);
    println!(
        "RESULT {} {} {}",
        elapsed.as_secs_f64(),
        cpu.as_secs_f64(),
        events
    );
    conn.close();
}

/// Microseconds per event of one child run: wall clock, and CPU time.
fn measure(side: &str, uri: &str, cycles: usize) -> (f64, f64) {
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
    let mut next = || -> f64 { fields.next().unwrap().parse().unwrap() };
    let (wall, cpu, events) = (next(), next(), next());
    (wall / events * 1e6, cpu / events * 1e6)
}

/// User-space instructions of one child run under callgrind.
fn instructions(side: &str, uri: &str, cycles: usize) -> f64 {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(env::current_exe().unwrap())
        .env(SIDE, side)
        .env("LOOPGLUE_LIBVIRT_URI", uri)
        .env("LOOPGLUE_LIBVIRT_N", cycles.to_string())
        .output()
        .expect("valgrind (apt-get install valgrind)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no callgrind count: {stderr}"))
}

/// Instructions per event: the difference of a long and a short run, so start-up cancels.
fn instructions_per_event(side: &str, uri: &str) -> f64 {
    let (short, long) = (200, 600);
    (instructions(side, uri, long) - instructions(side, uri, short)) / (2 * (long - short)) as f64
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
        "libvirt lifecycle events, median of {rounds} alternating runs, µs per event (lower is \
         better): wall clock, and CPU time of the whole process\n"
    );
    println!(
        "| driver | cycles | libvirt default impl: wall | loopglue: wall | ratio | \
         libvirt: CPU | loopglue: CPU | ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
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
        let column = |runs: &[(f64, f64)], cpu: bool| {
            let mut v: Vec<f64> = runs.iter().map(|r| if cpu { r.1 } else { r.0 }).collect();
            median(&mut v)
        };
        let (ours_wall, theirs_wall) = (column(&ours, false), column(&theirs, false));
        let (ours_cpu, theirs_cpu) = (column(&ours, true), column(&theirs, true));
        println!(
            "| {label} | {cycles} | {theirs_wall:.2} ({:.0}/s) | {ours_wall:.2} ({:.0}/s) | \
             {:.3}x | {theirs_cpu:.2} | {ours_cpu:.2} | {:.3}x |",
            1e6 / theirs_wall,
            1e6 / ours_wall,
            ours_wall / theirs_wall,
            ours_cpu / theirs_cpu
        );
    }
    if env::var("LOOPGLUE_LIBVIRT_INSTRUCTIONS").is_ok_and(|v| v == "1") {
        println!("\nuser-space instructions per event (callgrind; lower is better)\n");
        println!("| driver | libvirt default impl | loopglue MainLoop | loopglue / libvirt |");
        println!("|---|---:|---:|---:|");
        for (label, uri) in [
            (
                "test:///default (in process)",
                "test:///default".to_string(),
            ),
            ("remote, libvirtd over a Unix socket", daemon.uri.clone()),
        ] {
            let theirs = instructions_per_event("default", &uri);
            let ours = instructions_per_event("loopglue", &uri);
            println!(
                "| {label} | {theirs:.0} | {ours:.0} | {:.3}x |",
                ours / theirs
            );
        }
    }
    drop(daemon);
}
