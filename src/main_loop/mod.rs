//! The built-in event loop, for applications that have none of their own.
