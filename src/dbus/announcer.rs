//! `Announcer`: tells the glue that messages wait, from any thread, without stranding one.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{DispatchStatus, DispatchStatusFn};

/// The bridge's dispatch-status function holder (C16), keyed to what the *glue* believes.
///
/// A glue learns `DataRemains` from the status function and `Complete` from the answers of
/// `dispatch` and `dispatch_status`. A notifier that remembers only what it last *told* can
/// strand a message: the glue consumes a `DataRemains`, dispatches, is answered `Complete`,
/// and a message queued by another thread meanwhile compares equal to the stale "told
/// `DataRemains`" and is never announced. Here every answer goes through
/// [`answer`](Self::answer), under the same lock as the arrivals, so:
///
/// * a message queued after the glue was answered `Complete` is announced (the glue's belief
///   flips to `DataRemains` and the function is called);
/// * a message queued while a dispatch ran turns that dispatch's `Complete` into
///   `DataRemains`, so the glue dispatches again instead of sleeping on it.
///
/// The function runs with no lock held, only on a change of the glue's belief, never nested;
/// it may call `dispatch`.
#[derive(Default)]
pub(crate) struct Announcer {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    function: Option<Arc<dyn Fn(DispatchStatus) + Send + Sync>>,
    /// What the glue believes now.
    glue: DispatchStatus,
    /// A message was queued since the last `begin`.
    arrived: bool,
    notifying: bool,
    /// The belief flipped back to `DataRemains` while the function ran: call it again.
    again: bool,
}

impl Announcer {
    pub(crate) fn set_function(&self, function: Option<DispatchStatusFn>) {
        let old = std::mem::replace(&mut self.state.lock().function, function.map(Arc::from));
        drop(old);
    }

    /// A message was queued (any thread, possibly inside a libdbus call-out).
    ///
    /// # Panics
    ///
    /// If the glue's function panics.
    pub(crate) fn data_remains(&self) {
        let mut state = self.state.lock();
        state.arrived = true;
        if state.glue == DispatchStatus::DataRemains {
            return;
        }
        state.glue = DispatchStatus::DataRemains;
        if state.notifying {
            state.again = true;
            return;
        }
        state.notifying = true;
        loop {
            let function = state.function.clone();
            drop(state);
            let outcome = match function {
                Some(function) => {
                    panic::catch_unwind(AssertUnwindSafe(|| function(DispatchStatus::DataRemains)))
                }
                None => Ok(()),
            };
            state = self.state.lock();
            if let Err(payload) = outcome {
                state.notifying = false;
                state.again = false;
                drop(state);
                panic::resume_unwind(payload);
            }
            if !std::mem::take(&mut state.again) {
                break;
            }
        }
        state.notifying = false;
    }

    /// A dispatch (or status read) for the glue starts: arrivals before it are its business.
    pub(crate) fn begin(&self) {
        self.state.lock().arrived = false;
    }

    /// What to answer the glue for `status` read since [`begin`](Self::begin); the glue
    /// believes the answer.
    pub(crate) fn answer(&self, status: DispatchStatus) -> DispatchStatus {
        let mut state = self.state.lock();
        let answer = if state.arrived {
            DispatchStatus::DataRemains
        } else {
            status
        };
        state.glue = answer;
        answer
    }

    /// Answers `Complete` whatever arrived: the bridge took the work over itself.
    pub(crate) fn complete(&self) -> DispatchStatus {
        self.state.lock().glue = DispatchStatus::Complete;
        DispatchStatus::Complete
    }

    /// What the glue believes.
    pub(crate) fn believed(&self) -> DispatchStatus {
        self.state.lock().glue
    }
}

impl fmt::Debug for Announcer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("Announcer")
            .field("glue", &state.glue)
            .field("has_function", &state.function.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    fn recording() -> (Announcer, Arc<StdMutex<Vec<DispatchStatus>>>) {
        let heard = Arc::new(StdMutex::new(Vec::new()));
        let announcer = Announcer::default();
        let sink = Arc::clone(&heard);
        announcer.set_function(Some(Box::new(move |s| sink.lock().unwrap().push(s))));
        (announcer, heard)
    }

    #[test]
    fn a_message_after_a_complete_answer_is_announced_again() {
        let (announcer, heard) = recording();
        announcer.data_remains();
        announcer.data_remains(); // the glue already knows
        announcer.begin();
        assert_eq!(
            announcer.answer(DispatchStatus::Complete),
            DispatchStatus::Complete
        );
        announcer.data_remains();
        assert_eq!(*heard.lock().unwrap(), [DispatchStatus::DataRemains; 2]);
    }

    /// The stranding a told-based notifier allows: the glue consumed the announcement, and a
    /// message queued during its dispatch must not be lost behind a `Complete` answer.
    #[test]
    fn a_message_during_a_dispatch_turns_its_complete_into_data_remains() {
        let (announcer, heard) = recording();
        announcer.data_remains();
        announcer.begin();
        announcer.data_remains(); // another thread, mid-dispatch: the glue believes DataRemains
        assert_eq!(
            announcer.answer(DispatchStatus::Complete),
            DispatchStatus::DataRemains
        );
        assert_eq!(heard.lock().unwrap().len(), 1);
        announcer.begin();
        assert_eq!(
            announcer.answer(DispatchStatus::Complete),
            DispatchStatus::Complete
        );
    }
}
