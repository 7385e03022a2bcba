//! Ready glue for host event loops, one module per loop, each behind a Cargo feature of the
//! same name and built only on the crate's public API and the [`glue`](crate::glue) toolkit
//! (each could be its own crate).
//!
//! | feature | module | host loop | shape |
//! |---|---|---|---|
//! | `calloop` | `adapters::calloop` | a `calloop::EventLoop` | an inserted event source; one level-triggered `Generic` per fd, one `Timer` |
//! | `glib` | `adapters::glib` | any `glib::MainContext` | unix fd and timeout `GSource`s; dispatch after handlers or from an idle source |
//! | `mio` | `adapters::mio` | a `mio::Poll` the application runs | fds on tokens from the application's range; `process(&Events)` after each poll, `poll_timeout` before it |
//! | `tokio` | `adapters::tokio` | a tokio runtime (current-thread or multi-thread) | one driver task per source; one `AsyncFd` per fd; timers on tokio's clock |
//!
//! Every adapter has the same shape: `attach(source)` returns an attachment
//! (`TokioAttachment`, `MioAttachment`, `CalloopAttachment`, `GlibAttachment`), and dropping
//! it detaches the source, unregistering every fd before the producer can close it (C15).
//! `detach()` does the same and says what went wrong; refused (from inside one of the
//! source's own glue callbacks) it hands the attachment back, still attached, to detach later.
//! Each adapter passes [`testing::run_all`](crate::testing::run_all).

#[cfg(feature = "calloop")]
#[cfg_attr(docsrs, doc(cfg(feature = "calloop")))]
pub mod calloop;
#[cfg(feature = "glib")]
#[cfg_attr(docsrs, doc(cfg(feature = "glib")))]
pub mod glib;
#[cfg(feature = "mio")]
#[cfg_attr(docsrs, doc(cfg(feature = "mio")))]
pub mod mio;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;
