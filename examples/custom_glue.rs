//! The porting pattern: glue written by hand for a poll(2) loop, in closure form, the way C
//! applications wrote it for libdbus. Each glue function is annotated with the libdbus glue
//! function it mirrors; the producer is a tiny echo service on a socketpair, with libdbus's
//! read watch + write watch on one fd and a periodic timeout.
//!
//! Run it with `cargo run --example custom_glue`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use loopglue::{
    SetFunctionsError, Source, SourceData, Timeout, TimeoutFunctionSet, TimeoutFunctions,
    TimeoutList, Watch, WatchFlags, WatchFunctionSet, WatchFunctions, WatchList,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

// ---------------------------------------------------------------------------------------------
// The glue: what a C program keeps behind the `void *data` it passes to
// dbus_connection_set_watch_functions / dbus_connection_set_timeout_functions.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct PollLoop {
    watches: Vec<Watch>,
    timeouts: Vec<(Timeout, Instant)>,
}

type Shared = Arc<Mutex<PollLoop>>;

fn watch_functions(lp: &Shared) -> WatchFunctionSet<Shared> {
    WatchFunctionSet::new(
        // static dbus_bool_t add_watch (DBusWatch *watch, void *data)
        // C glue appends the watch to its array and returns TRUE; an error here is its FALSE.
        |watch: &Watch, lp: &mut Shared| {
            lp.lock().unwrap().watches.push(watch.clone());
            Ok(())
        },
        // static void remove_watch (DBusWatch *watch, void *data)
        // watch.fd() still answers here (C4), so glue keyed by fd can unregister.
        |watch: &Watch, lp: &mut Shared| lp.lock().unwrap().watches.retain(|w| w != watch),
        // static void watch_toggled (DBusWatch *watch, void *data)
        // This loop rebuilds its pollfd array from dbus_watch_get_enabled() every round, so
        // there is nothing to do — the same choice as glue that passes NULL here.
        |_watch: &Watch, _lp: &mut Shared| {},
        // void *data
        Arc::clone(lp),
        // DBusFreeFunction free_data: dropping our Arc is all the freeing needed.
        drop,
    )
}

fn timeout_functions(lp: &Shared) -> TimeoutFunctionSet<Shared> {
    TimeoutFunctionSet::new(
        // static dbus_bool_t add_timeout (DBusTimeout *timeout, void *data)
        // Arm at now + dbus_timeout_get_interval(); disabled ones are kept but never due.
        |timeout: &Timeout, lp: &mut Shared| {
            let due = Instant::now() + timeout.interval();
            lp.lock().unwrap().timeouts.push((timeout.clone(), due));
            Ok(())
        },
        // static void remove_timeout (DBusTimeout *timeout, void *data)
        |timeout: &Timeout, lp: &mut Shared| {
            lp.lock().unwrap().timeouts.retain(|(t, _)| t != timeout);
        },
        // static void timeout_toggled (DBusTimeout *timeout, void *data)
        // Enabling restarts the period from now (C9) — the bug fd.o #95619 was forgetting to.
        |timeout: &Timeout, lp: &mut Shared| {
            let mut lp = lp.lock().unwrap();
            if let Some(armed) = lp.timeouts.iter_mut().find(|(t, _)| t == timeout) {
                armed.1 = Instant::now() + timeout.interval();
            }
        },
        Arc::clone(lp),
        drop,
    )
}

/// One round of the loop: poll the enabled watches, merged per fd (C18), then handle what is
/// ready and fire what is due. No lock is held while calling `handle`, because handlers may
/// add, toggle or remove watches and timeouts — which calls back into this glue (C11).
fn iterate(lp: &Shared, max_wait: Duration) -> io::Result<()> {
    let (by_fd, wait) = {
        let lp = lp.lock().unwrap();
        let mut by_fd: Vec<(RawFd, WatchFlags, Vec<Watch>)> = Vec::new();
        for watch in lp.watches.iter().filter(|w| w.is_enabled()) {
            let Some(fd) = watch.fd() else { continue };
            match by_fd.iter_mut().find(|(f, _, _)| *f == fd) {
                Some((_, flags, watches)) => {
                    *flags |= watch.flags();
                    watches.push(watch.clone());
                }
                None => by_fd.push((fd, watch.flags(), vec![watch.clone()])),
            }
        }
        let now = Instant::now();
        let next_due = lp
            .timeouts
            .iter()
            .filter(|(t, _)| t.is_enabled())
            .map(|(_, due)| due.saturating_duration_since(now))
            .min();
        (by_fd, next_due.map_or(max_wait, |d| d.min(max_wait)))
    };

    let mut pollfds: Vec<PollFd<'_>> = by_fd
        .iter()
        .map(|(fd, flags, _)| {
            let mut events = PollFlags::empty();
            events.set(PollFlags::POLLIN, flags.contains(WatchFlags::READABLE));
            events.set(PollFlags::POLLOUT, flags.contains(WatchFlags::WRITABLE));
            // SAFETY: the producer removes a watch before closing its fd (C15), and removal
            // happens only inside this loop's own calls below, after this poll returns; so the
            // fd stays open for the lifetime of `pollfds`.
            PollFd::new(unsafe { BorrowedFd::borrow_raw(*fd) }, events)
        })
        .collect();
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
    poll(&mut pollfds, timeout)?;
    let ready: Vec<PollFlags> = pollfds
        .iter()
        .map(|p| p.revents().unwrap_or(PollFlags::empty()))
        .collect();
    drop(pollfds);

    for ((_, _, watches), revents) in by_fd.iter().zip(ready) {
        // dbus_watch_handle(watch, flags): map poll's bits to libdbus's, ERR and HUP always.
        let mut condition = WatchFlags::empty();
        condition.set(WatchFlags::READABLE, revents.contains(PollFlags::POLLIN));
        condition.set(WatchFlags::WRITABLE, revents.contains(PollFlags::POLLOUT));
        condition.set(WatchFlags::ERROR, revents.contains(PollFlags::POLLERR));
        condition.set(WatchFlags::HANGUP, revents.contains(PollFlags::POLLHUP));
        if !condition.is_empty() {
            for watch in watches {
                // `handle` filters what the watch did not ask for and ignores a watch an
                // earlier handler removed, so each watch of the fd may simply be offered it.
                let _ = watch.handle(condition);
            }
        }
    }

    // dbus_timeout_handle for every due timeout; re-arm first, since timeouts are periodic.
    let due: Vec<Timeout> = {
        let mut lp = lp.lock().unwrap();
        let now = Instant::now();
        lp.timeouts
            .iter_mut()
            .filter(|(t, due)| t.is_enabled() && *due <= now)
            .map(|(t, due)| {
                *due = now + t.interval();
                t.clone()
            })
            .collect()
    };
    for timeout in due {
        let _ = timeout.handle();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The producer: an echo service with libdbus's watch pattern on one socket.
// ---------------------------------------------------------------------------------------------

struct Echo {
    watches: WatchList,
    timeouts: TimeoutList,
    data: SourceData,
    state: Mutex<EchoState>,
}

struct EchoState {
    stream: Option<UnixStream>,
    outbound: VecDeque<u8>,
    read_watch: Option<Watch>,
    write_watch: Option<Watch>,
    echoed: usize,
    ticks: usize,
    reads: usize,
}

impl Echo {
    fn new(stream: UnixStream) -> io::Result<Arc<Echo>> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        let echo = Arc::new(Echo {
            watches: WatchList::new(),
            timeouts: TimeoutList::new(),
            data: SourceData::new(),
            state: Mutex::new(EchoState {
                stream: Some(stream),
                outbound: VecDeque::new(),
                read_watch: None,
                write_watch: None,
                echoed: 0,
                ticks: 0,
                reads: 0,
            }),
        });
        // Handlers hold the producer weakly: the watch owns its handler, the producer owns
        // the watch.
        let weak = Arc::downgrade(&echo);
        let write_watch = Watch::new_disabled(fd, WatchFlags::WRITABLE, move |ready| {
            with(&weak, |echo| echo.on_writable(ready));
        });
        let weak = Arc::downgrade(&echo);
        let read_watch = Watch::new(fd, WatchFlags::READABLE, move |ready| {
            with(&weak, |echo| echo.on_readable(ready));
        });
        let weak = Arc::downgrade(&echo);
        let tick = Timeout::new(Duration::from_millis(5), move || {
            with(&weak, |echo| echo.state.lock().unwrap().ticks += 1);
        });
        // libdbus adds the write watch, then the read watch.
        echo.watches.add(&write_watch).map_err(io::Error::from)?;
        echo.watches.add(&read_watch).map_err(io::Error::from)?;
        echo.timeouts.add(&tick).map_err(io::Error::from)?;
        {
            let mut state = echo.state.lock().unwrap();
            state.read_watch = Some(read_watch);
            state.write_watch = Some(write_watch);
        }
        Ok(echo)
    }

    fn on_readable(&self, ready: WatchFlags) {
        let mut buf = [0u8; 256]; // bounded work per handle: the loop is level-triggered (C17)
        let (got, write_watch) = {
            let mut state = self.state.lock().unwrap();
            let Some(stream) = state.stream.as_mut() else {
                return;
            };
            match stream.read(&mut buf) {
                Ok(0) => (None, None),
                Ok(n) => {
                    state.outbound.extend(&buf[..n]);
                    state.reads += 1;
                    (Some(n), state.write_watch.clone())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => (None, None),
            }
        };
        match (got, write_watch) {
            // Toggle with our own lock released: the glue's toggled runs inside.
            (Some(_), Some(w)) => drop(self.watches.toggle(&w, true)),
            _ if ready.contains(WatchFlags::HANGUP) || got.is_none() => self.shut_down(),
            _ => {}
        }
    }

    fn on_writable(&self, _ready: WatchFlags) {
        let drained = {
            let mut state = self.state.lock().unwrap();
            let state = &mut *state;
            let Some(stream) = state.stream.as_mut() else {
                return;
            };
            let (front, _) = state.outbound.as_slices();
            match stream.write(front) {
                Ok(n) => {
                    state.outbound.drain(..n);
                    state.echoed += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return,
            }
            state
                .outbound
                .is_empty()
                .then(|| state.write_watch.clone())
                .flatten()
        };
        if let Some(w) = drained {
            drop(self.watches.toggle(&w, false));
        }
    }

    /// Removes the watches before closing the fd (C15), then closes it.
    fn shut_down(&self) {
        let (watches, timeouts) = (self.watches.objects(), self.timeouts.objects());
        for w in watches {
            drop(self.watches.remove(&w));
        }
        for t in timeouts {
            drop(self.timeouts.remove(&t));
        }
        self.state.lock().unwrap().stream = None;
    }
}

fn with(weak: &Weak<Echo>, f: impl FnOnce(&Echo)) {
    if let Some(echo) = weak.upgrade() {
        f(&echo);
    }
}

impl Source for Echo {
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
    let (service_end, mut client) = UnixStream::pair()?;
    let echo = Echo::new(service_end)?;

    // dbus_connection_set_watch_functions (conn, add_watch, remove_watch, watch_toggled,
    //                                      loop, NULL);
    let lp: Shared = Arc::default();
    echo.set_watch_functions(Some(Box::new(watch_functions(&lp))))?;
    echo.set_timeout_functions(Some(Box::new(timeout_functions(&lp))))?;

    let message = b"hello through a hand-written poll loop\n".repeat(50);
    client.write_all(&message)?;

    let deadline = Instant::now() + Duration::from_secs(10);
    while echo.state.lock().unwrap().echoed < message.len() {
        if Instant::now() > deadline {
            return Err("echo did not complete within 10 s".into());
        }
        iterate(&lp, Duration::from_millis(100))?;
    }
    let mut back = vec![0u8; message.len()];
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    client.read_exact(&mut back)?;
    assert_eq!(back, message, "the echo came back altered");

    // Let the periodic timeout fire a few times (C10).
    while echo.state.lock().unwrap().ticks < 3 {
        if Instant::now() > deadline {
            return Err("the 5 ms timeout did not fire 3 times within 10 s".into());
        }
        iterate(&lp, Duration::from_millis(100))?;
    }

    // Hang up; the producer sees EOF, removes its watches, then closes its fd.
    drop(client);
    while !lp.lock().unwrap().watches.is_empty() {
        if Instant::now() > deadline {
            return Err("the producer did not remove its watches after hang-up".into());
        }
        iterate(&lp, Duration::from_millis(100))?;
    }

    let state = echo.state.lock().unwrap();
    println!(
        "echoed {} bytes in {} reads of at most 256 bytes; {} ticks of a 5 ms timeout; \
         watches left after hang-up: {}",
        state.echoed,
        state.reads,
        state.ticks,
        lp.lock().unwrap().watches.len()
    );
    Ok(())
}
