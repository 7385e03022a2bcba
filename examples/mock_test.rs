//! How a producer author unit-tests with `MockLoop`: no real loop, no sleeping — inject
//! readiness, move virtual time, and assert the exact calls the glue received.
//!
//! The producer here is an `Outbox`: it queues messages and keeps libdbus's write-watch
//! discipline — the watch is enabled only while something is queued. The test checks that
//! discipline from the mock's log. Run it with `cargo run --example mock_test`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use loopglue::testing::{MockEvent, MockLoop};
use loopglue::{
    Delivery, SetFunctionsError, Source, SourceData, TimeoutFunctions, TimeoutList, Watch,
    WatchFlags, WatchFunctions, WatchList,
};

/// The producer under test.
struct Outbox {
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    write_watch: Watch,
    queue: Mutex<(UnixStream, VecDeque<Vec<u8>>)>,
}

impl Outbox {
    fn new(stream: UnixStream) -> io::Result<Arc<Outbox>> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let outbox = Arc::new_cyclic(|me: &Weak<Outbox>| {
            let me = me.clone();
            Outbox {
                watches: WatchList::new(),
                timeouts: TimeoutList::new(),
                data: SourceData::new(),
                write_watch: Watch::new_disabled(fd, WatchFlags::WRITABLE, move |_| {
                    if let Some(outbox) = me.upgrade() {
                        outbox.flush_one();
                    }
                }),
                queue: Mutex::new((stream, VecDeque::new())),
            }
        });
        outbox.watches.add(&outbox.write_watch)?;
        Ok(outbox)
    }

    fn send(&self, message: &[u8]) {
        self.queue.lock().unwrap().1.push_back(message.to_vec());
        let _ = self.watches.toggle(&self.write_watch, true);
    }

    /// One message per handle: the glue must keep calling while the watch stays enabled.
    fn flush_one(&self) {
        let empty = {
            let mut guard = self.queue.lock().unwrap();
            let (stream, queue) = &mut *guard;
            if let Some(message) = queue.pop_front() {
                stream.write_all(&message).expect("socket buffer has room");
            }
            queue.is_empty()
        };
        if empty {
            let _ = self.watches.toggle(&self.write_watch, false);
        }
    }
}

impl Source for Outbox {
    fn data(&self) -> &SourceData {
        &self.data
    }

    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        self.watches.set_functions(functions)
    }
    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        self.timeouts.set_functions(functions)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (ours, mut theirs) = UnixStream::pair()?;
    let outbox = Outbox::new(ours)?;
    let fd = outbox.write_watch.fd().expect("open");
    let id = outbox.write_watch.id();

    let mock = MockLoop::new();
    mock.attach(outbox.clone())?;

    // 1. Attached with nothing queued: the write watch is added disabled.
    assert_eq!(
        mock.take_log(),
        [MockEvent::WatchAdded {
            id,
            fd,
            flags: WatchFlags::WRITABLE,
            enabled: false
        }]
    );

    // 2. Two messages queued: the watch is enabled once, not twice (toggled only on change).
    outbox.send(b"one ");
    outbox.send(b"two");
    assert_eq!(
        mock.take_log(),
        [MockEvent::WatchToggled { id, enabled: true }]
    );

    // 3. The fd is writable twice: one message per handle, then the watch turns itself off.
    mock.ready(fd, WatchFlags::WRITABLE);
    mock.ready(fd, WatchFlags::WRITABLE);
    let handled = MockEvent::WatchHandled {
        id,
        condition: WatchFlags::WRITABLE,
        delivery: Delivery::Delivered,
    };
    assert_eq!(
        mock.take_log(),
        [
            handled.clone(),
            handled,
            MockEvent::WatchToggled { id, enabled: false }
        ]
    );

    // 4. Disabled now, so a spurious report reaches no one.
    assert_eq!(mock.ready(fd, WatchFlags::WRITABLE), 0);

    // 5. Virtual time passes without any timeout registered: nothing happens, instantly.
    assert_eq!(mock.advance(Duration::from_secs(3600)), 0);

    let mut got = [0u8; 7];
    theirs.read_exact(&mut got)?;
    assert_eq!(&got, b"one two");

    // 6. Removing the watch reaches the glue while the fd is still open (C15).
    outbox.watches.remove(&outbox.write_watch)?;
    assert_eq!(mock.take_log(), [MockEvent::WatchRemoved { id, fd }]);

    println!("mock_test: the Outbox keeps libdbus's write-watch discipline (6 checks passed)");
    Ok(())
}
