//! `Harness`: a loop under test, as the conformance scenarios drive it.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::cpu_clock::{ThreadCpuClock, ThreadUsage};
use crate::source::Source;

/// A loop under test, as the conformance scenarios in [`testing`](crate::testing) drive it.
///
/// Implement it for your glue (a few lines over your loop's API) and the scenarios check that
/// the glue keeps the contract: merged registrations per fd, enabled state honoured,
/// level-triggered delivery, periodic timeouts restarted on enable, clean removal, no
/// spinning on a quiet or closed fd, wakeups and dispatch.
///
/// # Loops that run elsewhere
///
/// The scenarios call the harness, and the producers they drive, from one thread; nothing
/// requires the loop to run on that thread. A loop driven by an async runtime implements
/// [`run_until`](Self::run_until) by running the runtime until `done` holds (with a
/// current-thread runtime, `block_on` of a future that checks `done` between short timer
/// waits — `done` need not be `Send`); a loop with a thread of its own waits for its
/// iterations (a condition variable it signals after each) and checks `done` on the calling
/// thread in between. Such a harness creates a [`ThreadCpuClock`] on the loop's thread and
/// returns its reading from [`loop_thread_usage`](Self::loop_thread_usage). Producers may be called
/// from any thread (C13), so scenario steps taken on the calling thread while the loop runs
/// are part of what is tested.
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
    /// iteration and after each one, at least every few milliseconds of loop time (it may be
    /// what makes progress possible, by reading the other end of a socket).
    ///
    /// A virtual-time loop advances its clock to the next due timeout (never past `limit`)
    /// whenever there is nothing else to do; a real loop blocks in its poll.
    fn run_until(&mut self, limit: Duration, done: &mut dyn FnMut() -> bool) -> bool;

    /// The loop's clock, as time since the harness was created: virtual for a mock, monotonic
    /// for a real loop.
    fn elapsed(&self) -> Duration;

    /// What the thread running the loop has used so far — CPU time, and how many times it
    /// blocked — or `None` if the harness cannot tell (the scenarios then skip their CPU
    /// bounds).
    ///
    /// The default reads the calling thread's [`ThreadCpuClock`], which is right when
    /// [`run_until`](Self::run_until) runs the loop on the calling thread. A harness whose
    /// loop runs on another thread returns that thread's; one whose loop runs on several
    /// returns their sums.
    fn loop_thread_usage(&self) -> Option<ThreadUsage> {
        ThreadCpuClock::current().usage()
    }
}
