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
