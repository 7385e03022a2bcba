//! `Attachment`: one attached source, detached when dropped — the handle a glue's `attach`
//! returns.

use std::fmt;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Weak};

use super::attachments::Attachments;
use crate::source::Source;

/// What an [`Attachment`] detaches its source from: the glue's [`Attachments`] table, reached
/// however the glue keeps it. Implemented for `Attachments` itself, and through an [`Arc`]
/// or a [`Weak`] (a glue that is gone detached everything when it was dropped, so detaching
/// from it succeeds).
///
/// A glue implements it on its own shared state when a detach must do more than the table
/// does — tell a driver task to end, say.
pub trait Detach {
    /// Detaches `source` (any handle of it), as [`Attachments::detach`] does; detaching a
    /// source that is not attached succeeds and changes nothing.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] from inside one of the source's own glue callbacks
    /// (nothing changes then); otherwise what [`Attachments::detach`] reports.
    ///
    /// # Panics
    ///
    /// As [`Attachments::detach`]: after every step has run, if one panicked.
    fn detach(&self, source: &dyn Source) -> io::Result<()>;
}

impl Detach for Attachments {
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        Attachments::detach(self, source).map(drop)
    }
}

impl<T: Detach + ?Sized> Detach for Arc<T> {
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        (**self).detach(source)
    }
}

impl<T: Detach> Detach for Weak<T> {
    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        match self.upgrade() {
            Some(glue) => glue.detach(source),
            None => Ok(()), // the glue detached everything when it was dropped
        }
    }
}

/// A source attached to a glue, detached when dropped: what an adapter's `attach` returns
/// (each adapter wraps it in a type of its own: `MioAttachment`, `GlibAttachment`…), so that
/// every adapter detaches the same way.
///
/// * [`detach`](Self::detach) detaches now and says what went wrong; refused — from inside
///   one of the source's own glue callbacks — it hands the attachment back, still attached,
///   to detach later.
/// * Dropping it detaches too. A refusal then leaves the source attached, with a warning on
///   standard error; a panic of a step (a free-data, say) propagates, except while the thread
///   is already unwinding, when it is swallowed rather than aborting the process.
///
/// `glue` is whatever reaches the glue's [`Attachments`]: hold it weakly (a [`Weak`]) if
/// dropping the glue should detach its sources, strongly if the attachment keeps it running.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use loopglue::glue::{Attachment, Attachments};
/// use loopglue::testing::{MockLoop, SocketPeer};
///
/// let mock = MockLoop::new(); // the host loop's watch and timeout glue
/// let table = Arc::new(Attachments::new(|| {}));
/// let (ours, _theirs) = std::os::unix::net::UnixStream::pair()?;
/// let peer = SocketPeer::new(ours, 64)?;
/// table.attach(Arc::new(peer.clone()), mock.watch_functions(), mock.timeout_functions(), None)?;
/// let attachment = Attachment::new(Arc::downgrade(&table), Arc::new(peer.clone()));
/// assert_eq!(mock.watches().len(), 2);
///
/// drop(attachment); // detaches
/// assert!(mock.watches().is_empty() && table.is_empty());
/// # Ok::<(), std::io::Error>(())
/// ```
#[must_use = "dropping the attachment detaches the source"]
pub struct Attachment<G: Detach> {
    glue: G,
    source: Option<Arc<dyn Source>>,
}

impl<G: Detach> Attachment<G> {
    /// The handle of `source`, which the caller has just attached to `glue`.
    pub fn new(glue: G, source: Arc<dyn Source>) -> Attachment<G> {
        Attachment {
            glue,
            source: Some(source),
        }
    }

    /// The attached source.
    pub fn source(&self) -> &Arc<dyn Source> {
        self.source
            .as_ref()
            .expect("an attachment holds its source until it is dropped")
    }

    /// What the source is attached to.
    pub fn glue(&self) -> &G {
        &self.glue
    }

    /// Detaches the source now, as dropping the attachment does, and reports what went wrong.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::InvalidInput`] when called from inside one of the source's own glue
    /// callbacks (not a handler: detaching from inside a handler is fine): the source then
    /// stays attached, and the attachment is handed back to detach later. Otherwise what
    /// [`Detach::detach`] reports, with the source detached.
    ///
    /// # Panics
    ///
    /// If a step of the detach panics (a free-data, say), after every step has run.
    pub fn detach(mut self) -> Result<(), (Attachment<G>, io::Error)> {
        let source = self.source.take().expect("attached until dropped");
        match self.glue.detach(&*source) {
            Ok(()) => Ok(()),
            Err(error) => {
                // Still attached if refused; if not, detaching it again changes nothing.
                self.source = Some(source);
                Err((self, error))
            }
        }
    }
}

impl<G: Detach> Drop for Attachment<G> {
    fn drop(&mut self) {
        let Some(source) = self.source.take() else {
            return;
        };
        let detached = if std::thread::panicking() {
            // A second panic while unwinding would abort the process.
            panic::catch_unwind(AssertUnwindSafe(|| self.glue.detach(&*source))).unwrap_or(Ok(()))
        } else {
            self.glue.detach(&*source)
        };
        match detached {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::InvalidInput => super::warn(&format!(
                "an attachment dropped inside one of its source's glue callbacks stays attached \
                 ({error})"
            )),
            Err(error) => super::warn(&format!("detaching a dropped attachment: {error}")),
        }
    }
}

impl<G: Detach> fmt::Debug for Attachment<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("source", &self.source.as_ref().map(|s| s.data().id()))
            .finish_non_exhaustive()
    }
}
