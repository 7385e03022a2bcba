//! Support shared by integration tests (a test file declares `mod support;` and uses what it
//! needs; the recording glue of the contract tests is `tests/common`):
//!
//! * [`run_until`]: the bounded loop of every harness's `Harness::run_until`;
//! * [`assert_passes_every_scenario`]: `testing::run_all`, its failures in the panic message;
//! * [`main_loop::LoopHarness`]: `MainLoop` as the scenarios drive it;
//! * [`Bare`]: a producer with one watch list, one timeout list, and no dispatch queue;
//! * [`PanicOnFree`]: watch functions whose free-data panics;
//! * [`fds_shared`] / [`fds_exclusive`]: tests that reuse a closed fd's number run alone;
//! * [`adapter`]: the scenarios and harness parts every adapter's tests share;
//! * [`history`]: per-set call histories for the multi-threaded list probes.
#![allow(dead_code)]

pub mod adapter;
pub mod history;
pub mod main_loop;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use loopglue::testing::{run_all, Harness, ScenarioFailure};
use loopglue::{
    DispatchStatusFn, SetFunctionsError, Source, SourceData, TimeoutFunctions, TimeoutList, Watch,
    WatchFunctions, WatchList,
};

/// Runs `step` until `done` holds or `limit` has passed: `done` is checked first and after
/// every step, and each step is told how long it may wait at most (the time left).
pub fn run_until(
    limit: Duration,
    done: &mut dyn FnMut() -> bool,
    mut step: impl FnMut(Duration),
) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= end {
            return false;
        }
        step(end - now);
    }
}

/// Runs every conformance scenario on harnesses from `make`; panics with the failures.
pub fn assert_passes_every_scenario<H: Harness>(make: impl FnMut() -> H) {
    if let Err(failures) = run_all(make) {
        panic!("{}", report(&failures));
    }
}

/// The failures of `run_all`, one a line.
pub fn report(failures: &[ScenarioFailure]) -> String {
    let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// A bare producer: one watch list, one timeout list, no dispatch queue. With `explode` set,
/// uninstalling its dispatch-status function panics: a detach step that panics.
#[derive(Default)]
pub struct Bare {
    pub watches: WatchList,
    pub timeouts: TimeoutList,
    pub data: SourceData,
    pub explode: AtomicBool,
}

impl Bare {
    pub fn new() -> Bare {
        Bare::default()
    }
}

impl Source for Bare {
    fn data(&self) -> &SourceData {
        &self.data
    }

    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        self.watches.set_functions(functions)
    }

    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        self.timeouts.set_functions(functions)
    }

    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        if function.is_none() && self.explode.load(Ordering::SeqCst) {
            panic!("uninstall (expected by the test)");
        }
    }
}

/// Watch functions that pass every call on and whose drop (their free-data) panics, unless the
/// thread is unwinding already.
pub struct PanicOnFree(pub Box<dyn WatchFunctions>);

impl WatchFunctions for PanicOnFree {
    fn add(&mut self, w: &Watch) -> std::io::Result<()> {
        self.0.add(w)
    }

    fn remove(&mut self, w: &Watch) {
        self.0.remove(w)
    }

    fn toggled(&mut self, w: &Watch) {
        self.0.toggled(w)
    }
}

impl Drop for PanicOnFree {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("free-data");
        }
    }
}

/// Tests that close an fd and then use its number take this exclusively: no other test of the
/// same file may open an fd meanwhile and be handed that number.
static FD_NUMBERS: RwLock<()> = RwLock::new(());

/// For a test that opens fds: none of it runs while a test holds [`fds_exclusive`].
pub fn fds_shared() -> RwLockReadGuard<'static, ()> {
    FD_NUMBERS.read().unwrap_or_else(|e| e.into_inner())
}

/// For a test that closes an fd and then uses its number.
pub fn fds_exclusive() -> RwLockWriteGuard<'static, ()> {
    FD_NUMBERS.write().unwrap_or_else(|e| e.into_inner())
}
