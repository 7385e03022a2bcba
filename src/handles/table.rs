//! `HandleTable`: libvirt's event implementation on loopglue watches and timeouts.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::os::fd::RawFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::error::EventError;
use super::event_impl::{EventImpl, HandleCallback, TimerCallback, TimerInterval};
use super::id::{HandleId, IdCounter, TimerId};
use crate::error::SetFunctionsError;
use crate::flags::WatchFlags;
use crate::functions::{TimeoutFunctions, WatchFunctions};
use crate::list::{TimeoutList, WatchList};
use crate::source::Source;
use crate::source_data::SourceData;
use crate::status::{DispatchStatus, DispatchStatusFn};
use crate::timeout::Timeout;
use crate::watch::Watch;

type SharedHandleCallback = Arc<dyn Fn(HandleId, RawFd, WatchFlags) + Send + Sync>;
type SharedTimerCallback = Arc<dyn Fn(TimerId) + Send + Sync>;
type StatusFn = Arc<dyn Fn(DispatchStatus) + Send + Sync>;

/// libvirt's event implementation (`virEventRegisterImpl`'s six functions) built on loopglue
/// objects: a [`Source`] whose watches and timeouts mirror the registered handles and timers,
/// so code written to libvirt's shape runs on [`MainLoop`](crate::MainLoop),
/// [`MockLoop`](crate::testing::MockLoop) and every other glue, with no glue of its own.
///
/// A handle is two watches on its fd, one [`READABLE`](WatchFlags::READABLE) and one
/// [`WRITABLE`](WatchFlags::WRITABLE), enabled as its event mask says (glue merges them into
/// one registration per fd, C18), plus, only for a mask of `ERROR`/`HANGUP` alone, a watch
/// that asks for nothing and so hears only errors and hang-ups. A timer is a [`Timeout`],
/// enabled while it has a period and re-armed with
/// [`TimeoutList::restart`](crate::TimeoutList::restart); a timer that fires on every
/// iteration is run from [`dispatch`](Source::dispatch). The table is a cheap handle: clones
/// share one table, so attach a clone to the loop and keep (or register) another. Dropping
/// the last clone drops every callback it still holds, live or removed, running their free
/// functions then.
///
/// See the [module docs](super) for the semantics, which are libvirt's.
///
/// # Examples
///
/// A pipe watched through the table on `MainLoop`:
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use loopglue::handles::HandleTable;
/// use loopglue::{MainLoop, WatchFlags};
///
/// let main_loop = MainLoop::new()?;
/// let table = HandleTable::new();
/// main_loop.attach(Arc::new(table.clone()))?;
///
/// let (reader, mut writer) = UnixStream::pair()?;
/// let fd = reader.as_raw_fd();
/// let reads = Arc::new(AtomicUsize::new(0));
/// let seen = Arc::clone(&reads);
/// let id = table.add_handle(
///     fd,
///     WatchFlags::READABLE,
///     Box::new(move |_id, _fd, events| {
///         assert!(events.contains(WatchFlags::READABLE));
///         let mut byte = [0u8; 1];
///         (&reader).read_exact(&mut byte).unwrap();
///         seen.fetch_add(1, Ordering::SeqCst);
///     }),
/// )?;
/// writer.write_all(b"x")?;
/// while reads.load(Ordering::SeqCst) == 0 {
///     main_loop.run_once(Some(Duration::from_secs(10)))?;
/// }
/// table.remove_handle(id)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[doc(alias = "virEventRegisterImpl")]
#[derive(Clone)]
pub struct HandleTable {
    shared: Arc<Shared>,
}

struct Shared {
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    handles: HashMap<i32, Handle>,
    timers: HashMap<i32, Timer>,
    handle_ids: IdCounter,
    timer_ids: IdCounter,
    /// Callbacks of removed handles and timers, to drop (libvirt's free functions) from
    /// `dispatch`.
    retired: Vec<Retired>,
    /// How many timers are [`TimerInterval::EachIteration`].
    each_iteration: usize,
    /// Those timers are to fire at the end of this loop round.
    iteration_due: bool,
    /// The glue's dispatch-status function.
    status_fn: Option<StatusFn>,
    /// The glue knows work remains: it was told `DataRemains` (by the status function or
    /// `dispatch_status`) and has not been answered `Complete` since (by `dispatch` or
    /// `dispatch_status`), so it will call `dispatch`. Cleared in the same critical section
    /// that reads the state as complete, so work queued afterwards is always announced.
    announced: bool,
}

struct Handle {
    fd: RawFd,
    events: WatchFlags,
    readable: Watch,
    writable: Watch,
    /// Asks for nothing, so hears only ERROR and HANGUP: enabled for a mask of those alone.
    alarm: Option<Watch>,
    callback: SharedHandleCallback,
}

struct Timer {
    interval: TimerInterval,
    /// Enabled while `interval` is a period, with that period.
    timeout: Timeout,
    callback: SharedTimerCallback,
}

/// A removed handle's or timer's callback, waiting to be dropped.
type Retired = Box<dyn Any + Send + Sync>;

impl State {
    fn status(&self) -> DispatchStatus {
        if self.retired.is_empty() && !self.iteration_due {
            DispatchStatus::Complete
        } else {
            DispatchStatus::DataRemains
        }
    }

    /// The status as the glue now learns it (from `dispatch` or `dispatch_status`).
    fn tell(&mut self) -> DispatchStatus {
        let status = self.status();
        self.announced = status == DispatchStatus::DataRemains;
        status
    }

    /// Something of the table ran this round: every-iteration timers are due at its end.
    /// Returns whether the glue must be told.
    fn mark_iteration(&mut self) -> bool {
        if self.each_iteration > 0 {
            self.iteration_due = true;
        }
        self.iteration_due && !self.announced
    }

    /// Sets a live timer's interval, keeping the every-iteration count; `None` if the id is
    /// not live.
    fn set_interval(&mut self, id: i32, interval: TimerInterval) -> Option<Timeout> {
        let timer = self.timers.get_mut(&id)?;
        let was = std::mem::replace(&mut timer.interval, interval);
        let timeout = timer.timeout.clone();
        let each = TimerInterval::EachIteration;
        match (was == each, interval == each) {
            (true, false) => self.each_iteration -= 1,
            (false, true) => {
                self.each_iteration += 1;
                self.iteration_due = true;
            }
            (true, true) => self.iteration_due = true,
            (false, false) => {}
        }
        Some(timeout)
    }
}

/// Which of a handle's watches a mask enables: readable, writable, alarm.
fn wanted(events: WatchFlags) -> [bool; 3] {
    let readable = events.contains(WatchFlags::READABLE);
    let writable = events.contains(WatchFlags::WRITABLE);
    let alarm = !readable && !writable && events.intersects(WatchFlags::ALWAYS);
    [readable, writable, alarm]
}

impl HandleTable {
    /// An empty table, attached to no loop yet.
    pub fn new() -> HandleTable {
        HandleTable {
            shared: Arc::new(Shared {
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Starts watching `fd` for `events` and returns the new handle's id — libvirt's
    /// `addHandle`. See [`EventImpl::add_handle`].
    ///
    /// # Errors
    ///
    /// [`EventError::Refused`] if the loop cannot poll `fd` (nothing stays registered, and the
    /// callback is dropped before this returns); [`EventError::IdsExhausted`].
    #[doc(alias = "virEventAddHandle")]
    pub fn add_handle(
        &self,
        fd: RawFd,
        events: WatchFlags,
        callback: HandleCallback,
    ) -> Result<HandleId, EventError> {
        let shared = &self.shared;
        let id = {
            let mut state = shared.state.lock();
            let state = &mut *state;
            let handles = &state.handles;
            state
                .handle_ids
                .next(|id| handles.contains_key(&id), handles.len())
                .ok_or(EventError::IdsExhausted)?
        };
        let [want_read, want_write, want_alarm] = wanted(events);
        let readable = self.handle_watch(id, fd, WatchFlags::READABLE, want_read);
        let writable = self.handle_watch(id, fd, WatchFlags::WRITABLE, want_write);
        let alarm = want_alarm.then(|| self.handle_watch(id, fd, WatchFlags::empty(), true));
        // In the table before the watches reach the loop, so a report right after an add finds
        // its handle.
        shared.state.lock().handles.insert(
            id,
            Handle {
                fd,
                events,
                readable: readable.clone(),
                writable: writable.clone(),
                alarm: alarm.clone(),
                callback: Arc::from(callback),
            },
        );
        let mut added = Vec::with_capacity(3);
        for watch in [Some(readable), Some(writable), alarm]
            .into_iter()
            .flatten()
        {
            if let Err(error) = shared.watches.add(&watch) {
                // Out of the table first, so that no call starts; then out of the loop, not
                // waiting for a report in progress (it finds no handle and runs nothing).
                let handle = shared.state.lock().handles.remove(&id);
                for watch in &added {
                    let _ = shared.watches.remove_nowait(watch);
                }
                drop(handle);
                return Err(EventError::Refused(error));
            }
            added.push(watch);
        }
        Ok(HandleId::from_raw(id))
    }

    fn handle_watch(&self, id: i32, fd: RawFd, flags: WatchFlags, enabled: bool) -> Watch {
        let shared = Arc::downgrade(&self.shared);
        let handler = move |condition| Shared::fire_handle(&shared, id, condition);
        if enabled {
            Watch::new(fd, flags, handler)
        } else {
            Watch::new_disabled(fd, flags, handler)
        }
    }

    /// Changes what handle `id` is watched for — libvirt's `updateHandle`. An unchanged mask
    /// costs one lock and a lookup (libvirt repeats its mask several times per RPC); a change
    /// toggles watches, creating nothing. See [`EventImpl::update_handle`].
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownHandle`]; [`EventError::Refused`] if the loop refused the watch a
    /// mask of `ERROR`/`HANGUP` alone needs (the mask is recorded all the same).
    #[doc(alias = "virEventUpdateHandle")]
    pub fn update_handle(&self, id: HandleId, events: WatchFlags) -> Result<(), EventError> {
        {
            let mut state = self.shared.state.lock();
            let handle = state
                .handles
                .get_mut(&id.get())
                .ok_or(EventError::UnknownHandle(id))?;
            if handle.events == events {
                return Ok(());
            }
            handle.events = events;
        }
        self.settle_handle(id.get())
    }

    /// Brings the handle's watches in line with its mask. Two threads updating one handle at
    /// once may toggle in either order, so each re-reads the mask after toggling and goes
    /// again if it moved: the last mask set wins.
    fn settle_handle(&self, id: i32) -> Result<(), EventError> {
        let shared = &self.shared;
        loop {
            let (events, fd, watches) = {
                let state = shared.state.lock();
                let Some(handle) = state.handles.get(&id) else {
                    return Ok(()); // removed: its watches are gone, toggles on them no-ops
                };
                (
                    handle.events,
                    handle.fd,
                    [
                        Some(handle.readable.clone()),
                        Some(handle.writable.clone()),
                        handle.alarm.clone(),
                    ],
                )
            };
            let want = wanted(events);
            if want[2] && watches[2].is_none() {
                let alarm = self.handle_watch(id, fd, WatchFlags::empty(), false);
                shared.watches.add(&alarm).map_err(EventError::Refused)?;
                let mut state = shared.state.lock();
                match state.handles.get_mut(&id) {
                    Some(handle) if handle.alarm.is_none() => handle.alarm = Some(alarm),
                    _ => {
                        drop(state);
                        let _ = shared.watches.remove_nowait(&alarm);
                    }
                }
                continue;
            }
            for (watch, want) in watches.iter().zip(want) {
                if let Some(watch) = watch {
                    if watch.is_enabled() != want {
                        let _ = shared.watches.toggle(watch, want);
                    }
                }
            }
            let state = shared.state.lock();
            match state.handles.get(&id) {
                Some(handle) if handle.events != events => continue,
                _ => return Ok(()),
            }
        }
    }

    /// Stops watching handle `id` — libvirt's `removeHandle`. See
    /// [`EventImpl::remove_handle`].
    ///
    /// When this returns the fd is no longer polled and no call of the callback starts; a
    /// call already running on another thread is not waited for — libvirt removes handles
    /// with locks held that their callbacks take, so waiting would deadlock. The callback is
    /// dropped (the free function runs) later, from [`dispatch`](Source::dispatch) on the
    /// loop's thread with no lock held, or when a call still running returns, whichever is
    /// last.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownHandle`], for a second removal too.
    #[doc(alias = "virEventRemoveHandle")]
    pub fn remove_handle(&self, id: HandleId) -> Result<(), EventError> {
        let shared = &self.shared;
        let handle = shared
            .state
            .lock()
            .handles
            .remove(&id.get())
            .ok_or(EventError::UnknownHandle(id))?;
        for watch in [
            Some(&handle.readable),
            Some(&handle.writable),
            handle.alarm.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = shared.watches.remove_nowait(watch);
        }
        self.retire(Box::new(handle.callback));
        Ok(())
    }

    /// Starts a timer and returns its id — libvirt's `addTimeout`. See
    /// [`EventImpl::add_timeout`].
    ///
    /// # Errors
    ///
    /// [`EventError::Refused`] if the loop refused the timeout (the callback is dropped before
    /// this returns); [`EventError::IdsExhausted`].
    #[doc(alias = "virEventAddTimeout")]
    pub fn add_timeout(
        &self,
        interval: TimerInterval,
        callback: TimerCallback,
    ) -> Result<TimerId, EventError> {
        let shared = &self.shared;
        let interval = interval.normalized();
        let (id, timeout) = {
            let mut state = shared.state.lock();
            let state = &mut *state;
            let timers = &state.timers;
            let id = state
                .timer_ids
                .next(|id| timers.contains_key(&id), timers.len())
                .ok_or(EventError::IdsExhausted)?;
            let weak = Arc::downgrade(&self.shared);
            let handler = move || Shared::fire_timer(&weak, id);
            let timeout = match interval {
                TimerInterval::Period(period) => Timeout::new(period, handler),
                // "Never" until a period is set (C10: saturates, never overflows).
                _ => Timeout::new_disabled(Duration::MAX, handler),
            };
            state.timers.insert(
                id,
                Timer {
                    interval: TimerInterval::Off,
                    timeout: timeout.clone(),
                    callback: Arc::from(callback),
                },
            );
            state.set_interval(id, interval);
            (id, timeout)
        };
        if let Err(error) = shared.timeouts.add(&timeout) {
            let timer = {
                let mut state = shared.state.lock();
                state.set_interval(id, TimerInterval::Off);
                state.timers.remove(&id)
            };
            drop(timer);
            return Err(EventError::Refused(error));
        }
        self.sync_status();
        Ok(TimerId::from_raw(id))
    }

    /// Re-arms timer `id` — libvirt's `updateTimeout`. See [`EventImpl::update_timeout`]. A
    /// period is set with [`TimeoutList::restart`](crate::TimeoutList::restart): one call to
    /// the glue, whether the period changed or not.
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownTimer`].
    #[doc(alias = "virEventUpdateTimeout")]
    pub fn update_timeout(&self, id: TimerId, interval: TimerInterval) -> Result<(), EventError> {
        let shared = &self.shared;
        let interval = interval.normalized();
        let timeout = shared
            .state
            .lock()
            .set_interval(id.get(), interval)
            .ok_or(EventError::UnknownTimer(id))?;
        // Two threads updating one timer at once may reach the list in either order: act on
        // the interval in the table, and go again if it moved meanwhile.
        let mut restart = true;
        let mut current = interval;
        loop {
            match current {
                TimerInterval::Period(period) => {
                    if restart || !timeout.is_enabled() || timeout.interval() != period {
                        let _ = shared.timeouts.restart(&timeout, period);
                    }
                }
                _ => {
                    if timeout.is_enabled() {
                        let _ = shared.timeouts.toggle(&timeout, false);
                    }
                }
            }
            restart = false;
            let state = shared.state.lock();
            match state.timers.get(&id.get()) {
                Some(timer) if timer.interval != current => current = timer.interval,
                _ => break,
            }
        }
        self.sync_status();
        Ok(())
    }

    /// Stops timer `id` — libvirt's `removeTimeout`; the free function runs later, as for
    /// [`remove_handle`](Self::remove_handle).
    ///
    /// # Errors
    ///
    /// [`EventError::UnknownTimer`], for a second removal too.
    #[doc(alias = "virEventRemoveTimeout")]
    pub fn remove_timeout(&self, id: TimerId) -> Result<(), EventError> {
        let shared = &self.shared;
        let timer = {
            let mut state = shared.state.lock();
            state
                .set_interval(id.get(), TimerInterval::Off)
                .ok_or(EventError::UnknownTimer(id))?;
            state.timers.remove(&id.get())
        };
        if let Some(timer) = timer {
            let _ = shared.timeouts.remove_nowait(&timer.timeout);
            self.retire(Box::new(timer.callback));
        }
        Ok(())
    }

    /// Queues a removed callback for `dispatch` to drop, and tells the glue.
    fn retire(&self, callback: Retired) {
        self.shared.state.lock().retired.push(callback);
        self.sync_status();
    }

    /// How many handles are live (added and not removed).
    pub fn handles(&self) -> usize {
        self.shared.state.lock().handles.len()
    }

    /// How many timers are live.
    pub fn timers(&self) -> usize {
        self.shared.state.lock().timers.len()
    }

    /// How many callbacks of removed handles and timers wait for
    /// [`dispatch`](Source::dispatch) to drop them (to run their free functions).
    pub fn retired(&self) -> usize {
        self.shared.state.lock().retired.len()
    }

    /// The mask handle `id` is watched for, if it is live.
    pub fn handle_events(&self, id: HandleId) -> Option<WatchFlags> {
        let state = self.shared.state.lock();
        state.handles.get(&id.get()).map(|h| h.events)
    }

    /// The interval of timer `id`, if it is live.
    pub fn timer_interval(&self, id: TimerId) -> Option<TimerInterval> {
        let state = self.shared.state.lock();
        state.timers.get(&id.get()).map(|t| t.interval)
    }

    /// Tells the glue that work remains — dispatch is due — unless it knows already. The
    /// glue learns "complete" from `dispatch`'s answer, not from this function, so the flag
    /// that says what it knows is kept with the state it describes, under one lock: work
    /// queued after the glue was answered "complete" is always announced. (A notifier that
    /// compared with what it last *told* stays silent here after an in-flight notification
    /// absorbed the "complete": the trial's lost frees.)
    fn sync_status(&self) {
        let function = {
            let mut state = self.shared.state.lock();
            if state.announced || state.status() == DispatchStatus::Complete {
                return;
            }
            state.announced = true;
            state.status_fn.clone()
        };
        // No lock held: the glue may call `dispatch` from inside (C16).
        if let Some(function) = function {
            function(DispatchStatus::DataRemains);
        }
    }
}

impl Shared {
    fn fire_handle(shared: &Weak<Shared>, id: i32, condition: WatchFlags) {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (callback, fd, wake) = {
            let mut state = shared.state.lock();
            let Some(handle) = state.handles.get(&id) else {
                return; // removed while this report was in flight
            };
            let callback = Arc::clone(&handle.callback);
            let fd = handle.fd;
            (callback, fd, state.mark_iteration())
        };
        if wake {
            HandleTable { shared }.sync_status();
        }
        callback(HandleId::from_raw(id), fd, condition);
    }

    fn fire_timer(shared: &Weak<Shared>, id: i32) {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let (callback, wake) = {
            let mut state = shared.state.lock();
            let Some(timer) = state.timers.get(&id) else {
                return;
            };
            if !matches!(timer.interval, TimerInterval::Period(_)) {
                return; // disabled while this firing was in flight
            }
            let callback = Arc::clone(&timer.callback);
            (callback, state.mark_iteration())
        };
        if wake {
            HandleTable { shared }.sync_status();
        }
        callback(TimerId::from_raw(id));
    }
}

/// Runs each step even if an earlier one panicked, then re-raises the first panic.
#[derive(Default)]
struct Steps {
    panic: Option<Box<dyn Any + Send>>,
}

impl Steps {
    fn run(&mut self, step: impl FnOnce()) {
        if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(step)) {
            self.panic.get_or_insert(payload);
        }
    }

    fn finish(self) {
        if let Some(payload) = self.panic {
            panic::resume_unwind(payload);
        }
    }
}

impl Default for HandleTable {
    fn default() -> HandleTable {
        HandleTable::new()
    }
}

impl Source for HandleTable {
    fn data(&self) -> &SourceData {
        &self.shared.data
    }

    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        self.shared.watches.set_functions(functions)
    }

    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        self.shared.timeouts.set_functions(functions)
    }

    /// Installs the glue's status function. The table calls it with `DataRemains` when work
    /// appears that the glue does not know of (never with a lock held); the glue learns
    /// `Complete` from [`dispatch`](Source::dispatch)'s answer.
    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        let old = std::mem::replace(
            &mut self.shared.state.lock().status_fn,
            function.map(StatusFn::from),
        );
        drop(old);
    }

    /// `DataRemains` while callbacks of removed handles and timers wait to be dropped, or
    /// timers that fire on every iteration are due.
    fn dispatch_status(&self) -> DispatchStatus {
        self.shared.state.lock().tell()
    }

    /// Drops the callbacks of removed handles and timers — libvirt's free functions, run here
    /// with no lock held — then fires the timers that fire on every iteration, if they are
    /// due. One pass per call: a timer that re-arms itself with `EachIteration` is due again
    /// on the next call.
    ///
    /// # Panics
    ///
    /// If a callback or a free function panics, once every other step of the pass has run.
    fn dispatch(&self) -> DispatchStatus {
        let shared = &self.shared;
        let mut steps = Steps::default();
        let retired = std::mem::take(&mut shared.state.lock().retired);
        for callback in retired {
            steps.run(|| drop(callback));
        }
        let due: Vec<(i32, SharedTimerCallback)> = {
            let mut state = shared.state.lock();
            if std::mem::take(&mut state.iteration_due) {
                let mut due: Vec<_> = state
                    .timers
                    .iter()
                    .filter(|(_, t)| t.interval == TimerInterval::EachIteration)
                    .map(|(id, t)| (*id, Arc::clone(&t.callback)))
                    .collect();
                due.sort_unstable_by_key(|(id, _)| *id);
                due
            } else {
                Vec::new()
            }
        };
        for (id, callback) in due {
            // An earlier callback may have disabled or removed this timer.
            let still = shared
                .state
                .lock()
                .timers
                .get(&id)
                .is_some_and(|t| t.interval == TimerInterval::EachIteration);
            if still {
                steps.run(|| callback(TimerId::from_raw(id)));
            }
        }
        let status = shared.state.lock().tell();
        steps.finish();
        status
    }
}

impl EventImpl for HandleTable {
    fn add_handle(
        &self,
        fd: RawFd,
        events: WatchFlags,
        callback: HandleCallback,
    ) -> Result<HandleId, EventError> {
        HandleTable::add_handle(self, fd, events, callback)
    }

    fn update_handle(&self, id: HandleId, events: WatchFlags) -> Result<(), EventError> {
        HandleTable::update_handle(self, id, events)
    }

    fn remove_handle(&self, id: HandleId) -> Result<(), EventError> {
        HandleTable::remove_handle(self, id)
    }

    fn add_timeout(
        &self,
        interval: TimerInterval,
        callback: TimerCallback,
    ) -> Result<TimerId, EventError> {
        HandleTable::add_timeout(self, interval, callback)
    }

    fn update_timeout(&self, id: TimerId, interval: TimerInterval) -> Result<(), EventError> {
        HandleTable::update_timeout(self, id, interval)
    }

    fn remove_timeout(&self, id: TimerId) -> Result<(), EventError> {
        HandleTable::remove_timeout(self, id)
    }
}

impl fmt::Debug for HandleTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("HandleTable")
            .field("handles", &state.handles.len())
            .field("timers", &state.timers.len())
            .field("retired", &state.retired.len())
            .field("status", &state.status())
            .finish()
    }
}
