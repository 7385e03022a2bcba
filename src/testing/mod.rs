//! Tools for testing producers and glue: the glue conformance scenarios.
//!
//! Any glue — the crate's loops, an adapter, or an application's own — implements
//! [`Harness`] and runs every scenario against itself with one call:
//! [`run_all`]`(|| MyHarness::new())`.

mod harness;
mod scenarios;

pub use harness::Harness;
pub use scenarios::{run_all, Scenario, ScenarioFailure, SCENARIOS};
