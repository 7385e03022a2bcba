//! Tools for testing producers and glue: the glue conformance scenarios.
//!
//! Any glue — the crate's loops, an adapter, or an application's own — implements
//! [`Harness`] and runs every scenario against itself with one call each.

mod harness;

pub use harness::Harness;
