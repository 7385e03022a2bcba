//! `HandleId` and `TimerId`: libvirt's integer watch and timer numbers.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(i32);

        impl $name {
            /// The id as libvirt passes it: a positive `int`.
            pub fn get(self) -> i32 {
                self.0
            }

            /// An id from libvirt's `int`, for lookups. Any value is accepted: one that no
            #[doc = concat!("live ", $what, " has is reported as unknown by the table, never a crash.")]
            pub fn from_raw(raw: i32) -> $name {
                $name(raw)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// The number of a registered fd handle — libvirt's `watch`, returned by `addHandle` and
    /// passed to the handle's callback. Positive; never reused while the handle is live.
    HandleId,
    "handle"
);

id_type!(
    /// The number of a registered timer — libvirt's `timer`, returned by `addTimeout` and
    /// passed to the timer's callback. Positive; never reused while the timer is live.
    TimerId,
    "timer"
);

/// Hands out positive ids in increasing order, wrapping past `i32::MAX` back to 1 and skipping
/// ids still live, so an id is never reused while live (libvirt counts up from 1 and never
/// wraps in practice).
#[derive(Debug)]
pub(crate) struct IdCounter {
    next: i32,
}

impl IdCounter {
    pub(crate) fn new() -> IdCounter {
        IdCounter { next: 1 }
    }

    /// The next id not `live`, or `None` if all 2³¹−1 are live.
    pub(crate) fn next(&mut self, live: impl Fn(i32) -> bool, count: usize) -> Option<i32> {
        if count >= i32::MAX as usize {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id == i32::MAX { 1 } else { id + 1 };
            if !live(id) {
                return Some(id);
            }
        }
    }
}

impl Default for IdCounter {
    fn default() -> IdCounter {
        IdCounter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::IdCounter;

    #[test]
    fn wraps_past_the_largest_id_skipping_live_ones() {
        let mut ids = IdCounter { next: i32::MAX - 1 };
        let live = [i32::MAX, 1, 2];
        let pick = |ids: &mut IdCounter| ids.next(|id| live.contains(&id), live.len());
        assert_eq!(pick(&mut ids), Some(i32::MAX - 1));
        assert_eq!(pick(&mut ids), Some(3), "MAX, 1 and 2 are live");
        assert_eq!(pick(&mut ids), Some(4));
    }

    #[test]
    fn refuses_when_every_id_is_live() {
        let mut ids = IdCounter::new();
        assert_eq!(ids.next(|_| true, i32::MAX as usize), None);
    }
}
