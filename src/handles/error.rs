//! `EventError`: why an event implementation refused a call.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use super::id::{HandleId, TimerId};

/// Why an [`EventImpl`](super::EventImpl) call failed. libvirt reports all of these as `-1`
/// (or ignores them, for the two `update` calls).
#[derive(Debug)]
#[non_exhaustive]
pub enum EventError {
    /// No live handle has this id: never added, or already removed.
    UnknownHandle(HandleId),
    /// No live timer has this id: never added, or already removed.
    UnknownTimer(TimerId),
    /// The loop's glue refused the watch or timeout behind a new handle or timer (an fd it
    /// cannot poll: EBADF, or EPERM for a regular file under epoll). Nothing was registered.
    Refused(crate::Error),
    /// Every one of the 2³¹−1 ids is live.
    IdsExhausted,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventError::UnknownHandle(id) => write!(f, "no live handle has id {id}"),
            EventError::UnknownTimer(id) => write!(f, "no live timer has id {id}"),
            EventError::Refused(e) => write!(f, "the loop refused the registration: {e}"),
            EventError::IdsExhausted => f.write_str("every id is in use"),
        }
    }
}

impl StdError for EventError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            EventError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

impl From<EventError> for io::Error {
    fn from(error: EventError) -> io::Error {
        match error {
            EventError::Refused(e) => e.into(),
            EventError::UnknownHandle(_) | EventError::UnknownTimer(_) => {
                io::Error::new(io::ErrorKind::NotFound, error)
            }
            EventError::IdsExhausted => io::Error::new(io::ErrorKind::OutOfMemory, error),
        }
    }
}
