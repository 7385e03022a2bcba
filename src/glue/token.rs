//! `Token`: how a host loop names one fd registration back to the registry.

use std::fmt;

/// The name of one per-fd registration in an [`FdRegistry`](super::FdRegistry): the value a
/// glue hands its host loop with the fd (epoll's `data.u64`, mio's `Token`, a closure capture)
/// and passes back with every readiness report.
///
/// A token is a slot index and a generation in one `u64`: a report that arrives for a
/// registration that has since been dropped — even if a new fd took over the same slot in the
/// meantime, as can happen within one batch of events — carries the old generation and is
/// ignored instead of being delivered to the wrong watches.
///
/// # Examples
///
/// ```
/// use loopglue::glue::Token;
///
/// let token = Token::from_raw(42);
/// assert_eq!(Token::from_raw(token.into_raw()), token);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(u64);

impl Token {
    pub(crate) fn new(index: usize, generation: u32) -> Token {
        debug_assert!(index <= u32::MAX as usize);
        Token(u64::from(generation) << 32 | index as u64)
    }

    /// Rebuilds a token from what [`into_raw`](Self::into_raw) returned (what the host loop
    /// carried).
    pub fn from_raw(raw: u64) -> Token {
        Token(raw)
    }

    /// The token as a number for the host loop to carry. It never equals `u64::MAX`, so a
    /// glue may use that value for a registration of its own (a wakeup fd, say).
    pub fn into_raw(self) -> u64 {
        self.0
    }

    pub(crate) fn index(self) -> usize {
        (self.0 & u64::from(u32::MAX)) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}#{})", self.index(), self.generation())
    }
}
