//! Which function sets this thread is calling into right now.
//!
//! Two questions need it, and both are about the current thread only:
//!
//! * "Is this a reentrant call?" A list that is busy delivering call-outs queues a call made
//!   from inside one of its own callbacks (C11) but makes a call from another thread wait.
//!   Recording the running call-outs per thread answers this without storing thread ids.
//! * "Whose data slot is this?" (C5) While a set's callback runs, [`Watch::data`] and
//!   friends address that set's slot, even while another set is the installed one (the new
//!   set's `add` runs before the switch, the old set's `remove` after it).
//!
//! [`Watch::data`]: crate::Watch::data

use std::cell::RefCell;

/// A list, and the generation of function set installed on it, identified by numbers that are
/// never reused within a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Callout {
    pub(crate) list: u64,
    pub(crate) set: u64,
}

thread_local! {
    static RUNNING: RefCell<Vec<Callout>> = const { RefCell::new(Vec::new()) };
}

/// Marks a call into user code for as long as it lives; unwinding pops it too.
pub(crate) struct CalloutGuard(());

impl CalloutGuard {
    pub(crate) fn enter(callout: Callout) -> CalloutGuard {
        RUNNING.with(|running| running.borrow_mut().push(callout));
        CalloutGuard(())
    }
}

impl Drop for CalloutGuard {
    fn drop(&mut self) {
        RUNNING.with(|running| {
            running.borrow_mut().pop();
        });
    }
}

/// The set whose callback is innermost on this thread for `list`, if any.
pub(crate) fn running_set(list: u64) -> Option<u64> {
    RUNNING.with(|running| {
        running
            .borrow()
            .iter()
            .rev()
            .find(|callout| callout.list == list)
            .map(|callout| callout.set)
    })
}

/// Whether this thread is inside a callback of `list`.
pub(crate) fn is_inside(list: u64) -> bool {
    running_set(list).is_some()
}
