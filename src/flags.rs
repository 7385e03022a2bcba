//! Readiness conditions of a watch, bit for bit those of libdbus.

bitflags::bitflags! {
    /// What a [`Watch`](crate::Watch) asks for, and what glue reports to
    /// [`Watch::handle`](crate::Watch::handle).
    ///
    /// The values equal libdbus's `DBusWatchFlags` (C1), so glue ported from C can pass its
    /// numbers through [`WatchFlags::from_bits_truncate`] unchanged. A watch asks only for
    /// [`READABLE`](Self::READABLE) and/or [`WRITABLE`](Self::WRITABLE); glue always
    /// reports [`ERROR`](Self::ERROR) and [`HANGUP`](Self::HANGUP) whether asked or not.
    ///
    /// # Examples
    ///
    /// ```
    /// use loopglue::WatchFlags;
    ///
    /// assert_eq!(WatchFlags::READABLE.bits(), 1); // DBUS_WATCH_READABLE
    /// assert_eq!(WatchFlags::HANGUP.bits(), 8); // DBUS_WATCH_HANGUP
    /// let asked = WatchFlags::READABLE | WatchFlags::WRITABLE;
    /// assert!(asked.contains(WatchFlags::WRITABLE));
    /// ```
    #[doc(alias = "DBusWatchFlags")]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct WatchFlags: u8 {
        /// The fd has data to read (`DBUS_WATCH_READABLE`, `POLLIN`).
        #[doc(alias = "DBUS_WATCH_READABLE")]
        const READABLE = 1;
        /// The fd can take more output (`DBUS_WATCH_WRITABLE`, `POLLOUT`).
        #[doc(alias = "DBUS_WATCH_WRITABLE")]
        const WRITABLE = 2;
        /// An error condition (`DBUS_WATCH_ERROR`, `POLLERR`); always reported, never asked.
        #[doc(alias = "DBUS_WATCH_ERROR")]
        const ERROR = 4;
        /// The peer hung up (`DBUS_WATCH_HANGUP`, `POLLHUP`); always reported, never asked.
        #[doc(alias = "DBUS_WATCH_HANGUP")]
        const HANGUP = 8;
    }
}

impl WatchFlags {
    /// The bits a watch may ask for: [`READABLE`](Self::READABLE) | [`WRITABLE`](Self::WRITABLE).
    pub const INTEREST: WatchFlags = WatchFlags::READABLE.union(WatchFlags::WRITABLE);

    /// The bits glue reports without being asked: [`ERROR`](Self::ERROR) | [`HANGUP`](Self::HANGUP).
    pub const ALWAYS: WatchFlags = WatchFlags::ERROR.union(WatchFlags::HANGUP);
}

impl WatchFlags {
    /// The `poll(2)` events to ask for on behalf of watches wanting `self`: `POLLIN` for
    /// READABLE, `POLLOUT` for WRITABLE (`POLLERR` and `POLLHUP` are always reported).
    ///
    /// # Examples
    ///
    /// ```
    /// use loopglue::WatchFlags;
    /// use nix::libc::{POLLIN, POLLOUT};
    ///
    /// let both = WatchFlags::READABLE | WatchFlags::WRITABLE;
    /// assert_eq!(both.to_poll_events(), POLLIN | POLLOUT);
    /// ```
    pub fn to_poll_events(self) -> i16 {
        let mut events = 0;
        if self.contains(WatchFlags::READABLE) {
            events |= nix::libc::POLLIN;
        }
        if self.contains(WatchFlags::WRITABLE) {
            events |= nix::libc::POLLOUT;
        }
        events
    }

    /// The condition to report for `poll(2)` `revents`, as libdbus glue maps it: `POLLIN` to
    /// READABLE, `POLLOUT` to WRITABLE, `POLLERR` to ERROR, `POLLHUP` to HANGUP. `POLLNVAL`
    /// (a closed fd) maps to nothing: glue must drop the fd instead (C15).
    ///
    /// # Examples
    ///
    /// ```
    /// use loopglue::WatchFlags;
    /// use nix::libc::{POLLHUP, POLLIN, POLLNVAL};
    ///
    /// assert_eq!(
    ///     WatchFlags::from_poll_revents(POLLIN | POLLHUP),
    ///     WatchFlags::READABLE | WatchFlags::HANGUP
    /// );
    /// assert!(WatchFlags::from_poll_revents(POLLNVAL).is_empty());
    /// ```
    pub fn from_poll_revents(revents: i16) -> WatchFlags {
        let mut condition = WatchFlags::empty();
        condition.set(WatchFlags::READABLE, revents & nix::libc::POLLIN != 0);
        condition.set(WatchFlags::WRITABLE, revents & nix::libc::POLLOUT != 0);
        condition.set(WatchFlags::ERROR, revents & nix::libc::POLLERR != 0);
        condition.set(WatchFlags::HANGUP, revents & nix::libc::POLLHUP != 0);
        condition
    }
}
