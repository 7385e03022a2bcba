//! `ThreadCpuClock`: the CPU time one thread has used, for bounds that hold on a loaded
//! machine.

use std::thread::{self, ThreadId};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// The CPU time one thread has used — user and system time, not wall time.
///
/// A bound on CPU time holds however loaded the machine is: a loop that sleeps in its poll
/// uses almost none over a quiet second, while a loop that spins uses whatever share of a core
/// it is given. The conformance scenarios bound the CPU time of the loop's thread over quiet
/// windows with it (see [`Harness::loop_cpu_time`](super::Harness::loop_cpu_time)); a harness
/// whose loop runs on a thread of its own creates the clock on that thread and reads it from
/// the scenarios' thread.
///
/// # Examples
///
/// ```
/// use loopglue::testing::ThreadCpuClock;
///
/// let clock = ThreadCpuClock::current();
/// let before = clock.cpu_time();
/// let spent: u64 = (0..100_000u64).map(|i| i.wrapping_mul(i)).sum();
/// # let _ = spent;
/// if let (Some(before), Some(after)) = (before, clock.cpu_time()) {
///     assert!(after >= before);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ThreadCpuClock {
    thread: ThreadId,
    /// The kernel's id of the thread, through which other threads read its clock.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    tid: Option<u32>,
}

impl ThreadCpuClock {
    /// The clock of the calling thread.
    pub fn current() -> ThreadCpuClock {
        ThreadCpuClock {
            thread: thread::current().id(),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            tid: own_tid(),
        }
    }

    /// The CPU time the thread has used so far, or `None` if the platform cannot tell.
    ///
    /// On the thread itself this is `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`; from another
    /// thread it is read from `/proc/self/task/<tid>/schedstat` on Linux, and `None`
    /// elsewhere (and once the thread has exited).
    pub fn cpu_time(&self) -> Option<Duration> {
        if thread::current().id() == self.thread {
            let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
            return Some(Duration::from(now));
        }
        self.other_thread()
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn other_thread(&self) -> Option<Duration> {
        // The first field is the time the thread has spent on a CPU, in nanoseconds.
        let path = format!("/proc/self/task/{}/schedstat", self.tid?);
        let text = std::fs::read_to_string(path).ok()?;
        let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
        Some(Duration::from_nanos(nanos))
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn other_thread(&self) -> Option<Duration> {
        None
    }
}

/// The calling thread's kernel id: `/proc/thread-self` links to `<pid>/task/<tid>`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn own_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}
