//! The glue conformance scenarios.

use std::fmt;

use super::harness::Harness;

/// One conformance scenario: a name and a check that drives a fresh [`Harness`].
#[derive(Clone, Copy)]
pub struct Scenario {
    /// A short name, for reports.
    pub name: &'static str,
    /// Runs the scenario; `Err` says what the glue got wrong.
    pub run: fn(&mut dyn Harness) -> Result<(), String>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .finish()
    }
}

/// Every scenario, in the order [`run_all`] runs them.
pub static SCENARIOS: &[Scenario] = &[];

/// A scenario that failed, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioFailure {
    /// The scenario's name.
    pub scenario: &'static str,
    /// What the glue got wrong.
    pub message: String,
}

impl fmt::Display for ScenarioFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scenario `{}` failed: {}", self.scenario, self.message)
    }
}

impl std::error::Error for ScenarioFailure {}

/// Runs every scenario, each on a fresh harness from `make`, and returns every failure.
///
/// # Errors
///
/// The scenarios that failed, in order.
pub fn run_all<H: Harness>(mut make: impl FnMut() -> H) -> Result<(), Vec<ScenarioFailure>> {
    let failures: Vec<ScenarioFailure> = SCENARIOS
        .iter()
        .filter_map(|scenario| {
            let mut harness = make();
            (scenario.run)(&mut harness)
                .err()
                .map(|message| ScenarioFailure {
                    scenario: scenario.name,
                    message,
                })
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}
