//! `Harness`: a loop under test, as the conformance scenarios drive it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::source::Source;

/// A loop under test, as the conformance scenarios in [`testing`](crate::testing) drive it.
///
/// Implement it for your glue (three or four lines over your loop's API) and the scenarios
/// check that the glue keeps the contract: merged registrations per fd, enabled state
/// honoured, level-triggered delivery, periodic timeouts restarted on enable, clean removal,
/// wakeups and dispatch.
pub trait Harness {
    /// Attaches `source`: installs the glue's watch and timeout functions, and its wakeup and
    /// dispatch-status functions, as the loop's own `attach` would.
    ///
    /// # Errors
    ///
    /// What the loop's attach reports (a refused watch, say).
    fn attach(&mut self, source: Arc<dyn Source>) -> io::Result<()>;

    /// Detaches `source`: uninstalls every function the harness installed.
    ///
    /// # Errors
    ///
    /// What the loop's detach reports.
    fn detach(&mut self, source: &Arc<dyn Source>) -> io::Result<()>;

    /// Runs the loop until `done` returns true or `limit` of the loop's own time has passed,
    /// whichever comes first; returns whether `done` held. `done` is checked before the first
    /// iteration and after each one.
    ///
    /// A virtual-time loop advances its clock to the next due timeout (never past `limit`)
    /// whenever there is nothing else to do; a real loop blocks in its poll.
    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool;

    /// The loop's clock, as time since the harness was created: virtual for a mock, monotonic
    /// for a real loop.
    fn elapsed(&self) -> Duration;
}
