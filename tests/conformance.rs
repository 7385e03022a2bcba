//! The glue conformance scenarios against every loop the crate ships, against a glue written
//! on the public API alone (also on a loop running on a thread of its own), and against
//! deliberately broken glue, which they must reject.

mod glues;
mod support;

use loopglue::testing::{run_all, MockLoop};

use glues::{Defects, PollGlue};
use support::assert_passes_every_scenario;

#[test]
fn mock_loop_passes_every_scenario() {
    assert_passes_every_scenario(MockLoop::new);
}

#[test]
fn mock_loop_without_not_requested_entries_passes_every_scenario() {
    assert_passes_every_scenario(|| {
        let mock = MockLoop::new();
        mock.set_log_not_requested(false);
        mock
    });
}

mod real_loop {
    use loopglue::main_loop::Backend;
    use loopglue::testing::run_all;

    use super::glues::ThreadedLoop;
    use super::support::main_loop::LoopHarness;
    use super::support::{assert_passes_every_scenario, report};

    #[test]
    fn main_loop_epoll_passes_every_scenario() {
        assert_passes_every_scenario(|| LoopHarness::new(Backend::Epoll));
    }

    #[test]
    fn main_loop_poll_passes_every_scenario() {
        assert_passes_every_scenario(|| LoopHarness::new(Backend::Poll));
    }

    /// The loop runs on its own thread; the scenarios drive the producers from theirs, and
    /// the CPU bounds read the loop thread's clock.
    #[test]
    fn main_loop_on_its_own_thread_passes_every_scenario() {
        for backend in [Backend::Epoll, Backend::Poll] {
            run_all(|| ThreadedLoop::new(backend))
                .unwrap_or_else(|f| panic!("{backend:?}: {}", report(&f)));
        }
    }
}

/// A glue written on the public API alone passes — the scenarios are usable by anyone's glue.
#[test]
fn a_correct_poll_glue_passes_every_scenario() {
    assert_passes_every_scenario(|| PollGlue::new(Defects::default()));
}

/// Runs every scenario on a glue with `defects` and returns the names of those that failed.
fn rejected_by(defects: Defects) -> Vec<&'static str> {
    match run_all(|| PollGlue::new(defects)) {
        Ok(()) => Vec::new(),
        Err(failures) => failures.iter().map(|f| f.scenario).collect(),
    }
}

fn assert_rejected_by(defects: Defects, scenario: &str) {
    let rejected = rejected_by(defects);
    assert!(
        rejected.iter().any(|name| name.contains(scenario)),
        "{defects:?} must fail the scenario `{scenario}`; failed: {rejected:?}"
    );
}

/// A glue that polls disabled watches spins on a writable socket whose write watch is off;
/// `handle` answers `Disabled`, so only the CPU bound of a quiet window sees it.
#[test]
fn a_glue_that_ignores_the_enabled_flag_is_rejected() {
    assert_rejected_by(
        Defects {
            ignore_enabled: true,
            ..Defects::default()
        },
        "a disabled write watch on a writable socket stays silent",
    );
}

/// A glue that keeps polling an fd its producer closed gets `POLLNVAL` at once, every time.
#[test]
fn a_glue_that_keeps_a_closed_fd_and_spins_is_rejected() {
    assert_rejected_by(
        Defects {
            keep_closed_fds: true,
            ..Defects::default()
        },
        "fd closed while its watch is registered",
    );
}

/// A glue that arms a re-enabled timer only when some other timer falls due.
#[test]
fn a_glue_that_arms_the_timer_late_is_rejected() {
    assert_rejected_by(
        Defects {
            arm_late: true,
            ..Defects::default()
        },
        "periodic timeout restarts on enable",
    );
}

/// A glue that reports readiness `poll` never gave: the producer's handlers run on a quiet
/// socket, which the handler-call bound of a quiet window sees.
#[test]
fn a_glue_that_reports_unpolled_readiness_is_rejected() {
    assert_rejected_by(
        Defects {
            report_unpolled: true,
            ..Defects::default()
        },
        "a disabled write watch on a writable socket stays silent",
    );
}
