//! `MainLoop` as the scenarios drive it: real time, bounded waits.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::main_loop::{Backend, MainLoop};
use loopglue::testing::Harness;
use loopglue::Source;

/// A `MainLoop` on `backend`, run by the calling thread in waits of at most 5 ms (`done` may
/// be what makes progress possible, by reading the other end of a socket).
pub struct LoopHarness {
    pub main_loop: MainLoop,
    start: Instant,
}

impl LoopHarness {
    pub fn new(backend: Backend) -> LoopHarness {
        LoopHarness {
            main_loop: MainLoop::with_backend(backend).expect("loop"),
            start: Instant::now(),
        }
    }
}

impl Harness for LoopHarness {
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()> {
        self.main_loop.attach(source)
    }

    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()> {
        self.main_loop.detach(&**source)
    }

    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool {
        super::run_until(limit, done, |left| {
            let wait = left.min(Duration::from_millis(5));
            self.main_loop.run_once(Some(wait)).expect("run_once");
        })
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
