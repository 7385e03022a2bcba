//! What became of one `handle` call.

/// What [`Watch::handle`](crate::Watch::handle) or [`Timeout::handle`](crate::Timeout::handle)
/// did with a readiness report or a due time.
///
/// libdbus returns `TRUE` in all of these cases and aborts on an invalid object; loopglue
/// tells glue which case it was so that glue can, say, drop a registration it still holds for
/// a removed object instead of polling it again (C3).
///
/// # Examples
///
/// ```
/// use loopglue::{Delivery, Watch, WatchFlags};
///
/// let watch = Watch::new(0, WatchFlags::READABLE, |_| {});
/// assert_eq!(watch.handle(WatchFlags::READABLE), Delivery::Delivered);
/// // Asked only for READABLE: a bare WRITABLE report reaches nobody.
/// assert_eq!(watch.handle(WatchFlags::WRITABLE), Delivery::NotRequested);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The producer's handler ran.
    Delivered,
    /// Nothing the watch asked for was in the condition (C3): no handler ran.
    NotRequested,
    /// The object is disabled right now (the report raced with a toggle): no handler ran.
    Disabled,
    /// The object was removed from its list (C4): no handler ran, and none ever will.
    Removed,
}

impl Delivery {
    /// Whether the producer's handler ran.
    pub fn is_delivered(self) -> bool {
        self == Delivery::Delivered
    }
}
