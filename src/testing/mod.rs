//! Tools for testing producers and glue.
//!
//! * [`MockLoop`]: a deterministic loop for unit tests of any producer — virtual time, a call
//!   log, injected readiness and failures.
//! * The glue conformance scenarios: any glue — the crate's loops, an adapter, or an
//!   application's own — implements [`Harness`] and runs every scenario against itself with
//!   one call, [`run_all`]`(|| MyHarness::new())`.
//! * [`SocketPeer`]: the small socket producer the scenarios drive.
//! * [`ThreadCpuClock`]: a thread's CPU time and waits, for bounds that hold on a loaded
//!   machine.

mod cpu_clock;
mod harness;
mod mock_loop;
mod scenarios;
mod socket_peer;

pub use cpu_clock::{ThreadCpuClock, ThreadUsage};
pub use harness::Harness;
pub use mock_loop::{MockEvent, MockLoop};
pub use scenarios::{run_all, Scenario, ScenarioFailure, SCENARIOS};
pub use socket_peer::SocketPeer;
