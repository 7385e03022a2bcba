//! Why a list refused an operation.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// Why a [`WatchList`](crate::WatchList) or [`TimeoutList`](crate::TimeoutList) refused an
/// operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The glue's `add` refused the object: its loop cannot take it now (C6, C8). The object
    /// is not tracked and may be added again later.
    Refused(io::Error),
    /// The object is already in this list.
    AlreadyAdded,
    /// The object is tracked by another list; an object belongs to one list at a time.
    ForeignObject,
    /// The object is not in this list (never added, or its add was refused).
    NotAdded,
    /// The object was removed; removal is final (C4), so create a new one.
    Removed,
    /// Replacing a list's function set from inside one of that list's own callbacks, whose
    /// outcome cannot be known before the callback returns (C11). Replace it after the
    /// callback returns.
    Reentrant,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(e) => write!(f, "the glue refused the object: {e}"),
            Error::AlreadyAdded => f.write_str("the object is already in this list"),
            Error::ForeignObject => f.write_str("the object belongs to another list"),
            Error::NotAdded => f.write_str("the object is not in this list"),
            Error::Removed => f.write_str("the object was removed and cannot be used again"),
            Error::Reentrant => {
                f.write_str("cannot replace a function set from inside a callback of the same list")
            }
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Refused(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(error: Error) -> io::Error {
        match error {
            Error::Refused(e) => e,
            Error::AlreadyAdded => io::Error::new(io::ErrorKind::AlreadyExists, error),
            Error::NotAdded => io::Error::new(io::ErrorKind::NotFound, error),
            Error::ForeignObject | Error::Removed | Error::Reentrant => {
                io::Error::new(io::ErrorKind::InvalidInput, error)
            }
        }
    }
}

/// A function set that was not installed, handed back with the reason (C7).
///
/// Dropping it drops the set, which runs the set's free-data — so a refused set is freed
/// exactly once whichever way the caller goes.
pub struct SetFunctionsError<F: ?Sized> {
    error: Error,
    functions: Option<Box<F>>,
}

impl<F: ?Sized> SetFunctionsError<F> {
    /// A refusal of `functions` for `error`: what a [`Source`](crate::Source) that does not
    /// forward to an [`ObjectList`](crate::ObjectList) — a bridge to a C library, say — returns
    /// to hand a set back (C7), for instance [`Error::Reentrant`] when its C library is calling
    /// out and cannot take new functions now.
    ///
    /// # Examples
    ///
    /// ```
    /// use loopglue::{Error, SetFunctionsError, WatchFunctions};
    ///
    /// let refused: SetFunctionsError<dyn WatchFunctions> =
    ///     SetFunctionsError::new(Error::Reentrant, None);
    /// assert!(matches!(refused.error(), Error::Reentrant));
    /// ```
    pub fn new(error: Error, functions: Option<Box<F>>) -> SetFunctionsError<F> {
        SetFunctionsError { error, functions }
    }

    /// Why the set was not installed.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The set that was not installed (`None` if the call was an uninstall), for a retry.
    pub fn into_functions(self) -> Option<Box<F>> {
        self.functions
    }

    /// The reason, dropping the set (and so running its free-data).
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl<F: ?Sized> fmt::Debug for SetFunctionsError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetFunctionsError")
            .field("error", &self.error)
            .field("functions", &self.functions.as_ref().map(|_| "..."))
            .finish()
    }
}

impl<F: ?Sized> fmt::Display for SetFunctionsError<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "function set not installed: {}", self.error)
    }
}

impl<F: ?Sized> StdError for SetFunctionsError<F> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

impl<F: ?Sized> From<SetFunctionsError<F>> for Error {
    fn from(error: SetFunctionsError<F>) -> Error {
        error.error
    }
}
