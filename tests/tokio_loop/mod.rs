//! A tokio runtime that a test turns one iteration at a time, as it turns `MainLoop` with
//! `run_once`: shared by the bridge tests that run on tokio (`libvirt_tokio`, the bus tests).
//!
//! tokio has no "iteration" a test can ask for, but its scheduler has the shape of one: a
//! thread parks in the driver until an fd is ready, a timer is due or a task is woken, runs
//! what that woke, and parks again. The runtime's park and unpark hooks mark where one such
//! round ends (a park that follows an unpark on the same thread), and [`TokioLoop::turn`]
//! waits for that, bounded. A turn never ends on its own clock alone when the runtime did
//! something, and never returns at once when it did nothing — so a driver that spins, or
//! wakes without cause, shows as many short turns and as CPU time on the runtime's threads
//! ([`TokioLoop::cpu_time`]), exactly as it would on `MainLoop`.
//!
//! A turn's own time bound is kept off tokio's clock: registering a timer that is earlier than
//! anything the runtime waits for unparks it at once (the driver must recompute its wait), and
//! that spurious round would end every turn immediately. An alarm thread wakes the turn instead.
#![allow(dead_code)]

use std::cell::Cell;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loopglue::testing::ThreadCpuClock;
use tokio::runtime::{Builder, Handle, Runtime};

thread_local! {
    /// This runtime thread was unparked and has not parked since: its next park ends a round.
    static WOKE: Cell<bool> = const { Cell::new(false) };
}

/// Which runtime: the drivers run on the thread that turns it, or on worker threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    CurrentThread,
    MultiThread,
}

/// Rounds the runtime finished, for the thread that waits for one.
#[derive(Default)]
struct Rounds {
    count: Mutex<u64>,
    changed: Condvar,
    /// The current-thread turn's future, woken from the park hook or by the alarm.
    waker: Mutex<Option<Waker>>,
    /// When the alarm thread wakes the turn's future; `None`: not set.
    alarm: Mutex<Option<Instant>>,
    alarm_changed: Condvar,
    quit: AtomicBool,
}

impl Rounds {
    fn count(&self) -> u64 {
        *self.count.lock().unwrap()
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }

    fn finished(&self) {
        *self.count.lock().unwrap() += 1;
        self.changed.notify_all();
        self.wake();
    }

    fn set_alarm(&self, at: Instant) {
        *self.alarm.lock().unwrap() = Some(at);
        self.alarm_changed.notify_all();
    }

    /// The alarm thread: wakes the turn's future when its time is up.
    fn ring(&self) {
        let mut alarm = self.alarm.lock().unwrap();
        while !self.quit.load(Ordering::SeqCst) {
            match *alarm {
                None => alarm = self.alarm_changed.wait(alarm).unwrap(),
                Some(at) => {
                    let now = Instant::now();
                    if now >= at {
                        *alarm = None;
                        drop(alarm);
                        self.wake();
                        alarm = self.alarm.lock().unwrap();
                    } else {
                        alarm = self.alarm_changed.wait_timeout(alarm, at - now).unwrap().0;
                    }
                }
            }
        }
    }
}

/// A runtime, its round counter and the CPU clocks of the threads it runs on.
pub struct TokioLoop {
    runtime: Runtime,
    flavor: Flavor,
    rounds: Arc<Rounds>,
    /// The worker threads' clocks (multi-thread); the turning thread's otherwise.
    clocks: Arc<Mutex<Vec<ThreadCpuClock>>>,
    alarm: Option<JoinHandle<()>>,
}

impl Drop for TokioLoop {
    fn drop(&mut self) {
        self.rounds.quit.store(true, Ordering::SeqCst);
        self.rounds.alarm_changed.notify_all();
        if let Some(alarm) = self.alarm.take() {
            let _ = alarm.join();
        }
    }
}

impl TokioLoop {
    pub fn new(flavor: Flavor) -> TokioLoop {
        let rounds = Arc::new(Rounds::default());
        let clocks: Arc<Mutex<Vec<ThreadCpuClock>>> = Arc::default();
        let mut builder = match flavor {
            Flavor::CurrentThread => {
                clocks.lock().unwrap().push(ThreadCpuClock::current());
                Builder::new_current_thread()
            }
            Flavor::MultiThread => {
                let mut builder = Builder::new_multi_thread();
                let sink = Arc::clone(&clocks);
                builder
                    .worker_threads(2)
                    .on_thread_start(move || sink.lock().unwrap().push(ThreadCpuClock::current()));
                builder
            }
        };
        let ended = Arc::clone(&rounds);
        let runtime = builder
            .enable_all()
            .on_thread_unpark(|| WOKE.with(|woke| woke.set(true)))
            .on_thread_park(move || {
                if WOKE.with(|woke| woke.replace(false)) {
                    ended.finished();
                }
            })
            .build()
            .expect("tokio runtime");
        let alarm = (flavor == Flavor::CurrentThread).then(|| {
            let rounds = Arc::clone(&rounds);
            std::thread::spawn(move || rounds.ring())
        });
        TokioLoop {
            runtime,
            flavor,
            rounds,
            clocks,
            alarm,
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn handle(&self) -> &Handle {
        self.runtime.handle()
    }

    /// Lets the runtime run until it has finished a round — woken for something, ran what
    /// that woke, about to wait again — or `max` has passed. `Duration::ZERO`: run what is
    /// ready now, without waiting.
    pub fn turn(&self, max: Duration) {
        let start = self.rounds.count();
        match self.flavor {
            Flavor::CurrentThread => {
                // This thread is the runtime's: a park not preceded by an unpark within this
                // turn (the one that ended the last turn) ends nothing.
                WOKE.with(|woke| woke.set(false));
                let rounds = &self.rounds;
                let end = Instant::now() + max;
                if !max.is_zero() {
                    rounds.set_alarm(end);
                }
                self.runtime.block_on(async {
                    let over = || rounds.count() != start || Instant::now() >= end;
                    poll_fn(|cx| {
                        if over() {
                            return Poll::Ready(());
                        }
                        *rounds.waker.lock().unwrap() = Some(cx.waker().clone());
                        if over() {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                    // Whatever the round left queued (a driver that yielded between rounds)
                    // runs before the turn returns; the runtime also polls its fds once.
                    tokio::task::yield_now().await;
                });
                *rounds.alarm.lock().unwrap() = None;
                rounds.waker.lock().unwrap().take();
            }
            Flavor::MultiThread => {
                let end = Instant::now() + max;
                let mut count = self.rounds.count.lock().unwrap();
                while *count == start {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    count = self
                        .rounds
                        .changed
                        .wait_timeout(count, end - now)
                        .unwrap()
                        .0;
                }
            }
        }
    }

    /// The CPU time of the threads the runtime runs its tasks on.
    pub fn cpu_time(&self) -> Duration {
        self.clocks
            .lock()
            .unwrap()
            .iter()
            .map(|clock| clock.cpu_time().expect("thread CPU time"))
            .sum()
    }
}
