//! `ThreadCpuClock`: the CPU time one thread has used and how often it blocked, for bounds
//! that hold on a loaded machine.

use std::thread::{self, ThreadId};
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// What one thread has used so far: see [`ThreadCpuClock::usage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadUsage {
    /// Time on a CPU, user and system — not wall time.
    pub cpu: Duration,
    /// How many times the thread blocked (its voluntary context switches: a wait in `poll`,
    /// on a lock, in a sleep), where the platform tells (Linux); `None` elsewhere.
    pub waits: Option<u64>,
}

/// The CPU time one thread has used, and how many times it blocked.
///
/// Bounds on these hold however loaded the machine is. A loop that sleeps in its poll uses
/// almost no CPU over a quiet window and blocks at every wait; a loop that spins uses whatever
/// share of a core it is given and never blocks — so even when a busy machine gives it little
/// CPU, the CPU it used per wait gives it away. The conformance scenarios check quiet windows
/// with it (see [`Harness::loop_thread_usage`](super::Harness::loop_thread_usage)); a harness
/// whose loop runs on a thread of its own creates the clock on that thread and reads it from
/// the scenarios' thread.
///
/// # Examples
///
/// ```
/// use loopglue::testing::ThreadCpuClock;
///
/// let clock = ThreadCpuClock::current();
/// let before = clock.usage();
/// let spent: u64 = (0..100_000u64).map(|i| i.wrapping_mul(i)).sum();
/// # let _ = spent;
/// if let (Some(before), Some(after)) = (before, clock.usage()) {
///     assert!(after.cpu >= before.cpu);
/// }
/// ```
#[derive(Clone, Debug)]
pub struct ThreadCpuClock {
    thread: ThreadId,
    /// The kernel's id of the thread, through which any thread reads its counters.
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

    /// What the thread has used so far, or `None` if the platform cannot tell.
    ///
    /// The thread itself reads its CPU time with `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`;
    /// other threads read it, and on Linux every thread reads the waits, from
    /// `/proc/self/task/<tid>/` (`schedstat`, `status`) until the thread exits. Elsewhere only
    /// the thread itself can read its usage, and `waits` is `None`.
    pub fn usage(&self) -> Option<ThreadUsage> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let from_proc = self.read_proc();
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let from_proc: Option<ThreadUsage> = None;
        if thread::current().id() == self.thread {
            // Exact to the call, where /proc is updated at scheduler ticks.
            let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
            return Some(ThreadUsage {
                cpu: Duration::from(now),
                waits: from_proc.and_then(|usage| usage.waits),
            });
        }
        from_proc
    }

    /// The CPU time the thread has used so far: [`usage`](Self::usage)`().cpu`.
    pub fn cpu_time(&self) -> Option<Duration> {
        self.usage().map(|usage| usage.cpu)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn read_proc(&self) -> Option<ThreadUsage> {
        let dir = format!("/proc/self/task/{}", self.tid?);
        // The first field is the time the thread has spent on a CPU, in nanoseconds.
        let schedstat = std::fs::read_to_string(format!("{dir}/schedstat")).ok()?;
        let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("{dir}/status")).ok();
        let waits = status.as_deref().and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse().ok())
        });
        Some(ThreadUsage {
            cpu: Duration::from_nanos(nanos),
            waits,
        })
    }
}

/// The calling thread's kernel id: `/proc/thread-self` links to `<pid>/task/<tid>`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn own_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}
