//! The glue conformance scenarios against every loop the crate ships.

use loopglue::testing::{run_all, MockLoop};

fn report(failures: Vec<loopglue::testing::ScenarioFailure>) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn mock_loop_passes_every_scenario() {
    run_all(MockLoop::new).unwrap_or_else(|f| panic!("{}", report(f)));
}

mod real_loop {
    use std::io;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use loopglue::main_loop::{Backend, MainLoop};
    use loopglue::testing::{run_all, Harness};
    use loopglue::Source;

    /// MainLoop as the scenarios drive it: real time, bounded waits.
    struct LoopHarness {
        main_loop: MainLoop,
        start: Instant,
    }

    impl LoopHarness {
        fn new(backend: Backend) -> LoopHarness {
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
            let end = Instant::now() + limit;
            loop {
                if done() {
                    return true;
                }
                let now = Instant::now();
                if now >= end {
                    return false;
                }
                // Short waits: `done` may make progress possible (by reading the other end).
                let wait = (end - now).min(Duration::from_millis(5));
                self.main_loop.run_once(Some(wait)).expect("run_once");
            }
        }

        fn elapsed(&self) -> Duration {
            self.start.elapsed()
        }
    }

    #[test]
    fn main_loop_epoll_passes_every_scenario() {
        run_all(|| LoopHarness::new(Backend::Epoll))
            .unwrap_or_else(|f| panic!("{}", super::report(f)));
    }

    #[test]
    fn main_loop_poll_passes_every_scenario() {
        run_all(|| LoopHarness::new(Backend::Poll))
            .unwrap_or_else(|f| panic!("{}", super::report(f)));
    }
}
