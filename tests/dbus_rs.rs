//! The `dbus` crate's non-blocking connection through `ChannelSource` on every loop in
//! `dbus_support::loops()`, talking to a libdbus bridge peer through a private
//! `dbus-daemon`. Needs the `dbus-rs` feature.

mod dbus_support;

use std::sync::{Arc, Mutex};

use dbus_crate::channel::Channel;
use dbus_crate::nonblock::NonblockReply;
use dbus_crate::Message;
use dbus_support::{loops, payload, request_name, run_until, Daemon, Peer, IFACE, PATH};
use loopglue::dbus::{ChannelSource, Connection};

const NAME: &str = "org.loopglue.Responder";

type Replies = Arc<Mutex<Vec<Result<Message, String>>>>;

fn call(
    source: &ChannelSource,
    replies: &Replies,
    method: &str,
    fill: impl FnOnce(Message) -> Message,
) {
    let msg = fill(Message::new_method_call(NAME, PATH, IFACE, method).unwrap());
    let sink = Arc::clone(replies);
    source
        .connection()
        .send_with_reply(
            msg,
            Box::new(move |mut reply: Message, _| {
                let outcome = match reply.msg_type() {
                    dbus_crate::MessageType::Error => Err(reply
                        .as_result()
                        .err()
                        .map(|e| e.name().unwrap_or("").to_string())
                        .unwrap_or_default()),
                    _ => Ok(reply),
                };
                sink.lock().unwrap().push(outcome);
            }),
        )
        .expect("send");
}

#[test]
fn a_dbus_rs_connection_runs_on_every_loop() {
    for (name, make) in loops() {
        let daemon = Daemon::start();
        let lp = make();
        let responder = Peer::new(Connection::open_bus(&daemon.address).unwrap());
        assert_eq!(request_name(&responder.conn, NAME, 4), 1);
        lp.attach(Arc::new(responder.conn.clone()));

        let mut channel = Channel::open_private(&daemon.address).unwrap();
        channel.register().unwrap();
        let source = ChannelSource::new(channel);
        lp.attach(Arc::new(source.clone()));

        // Calls answered in order, values checked.
        let replies: Replies = Arc::default();
        for n in 0..100u32 {
            call(&source, &replies, "Ping", |m| m.append1(n));
        }
        run_until(
            "100 replies",
            || lp.turn(),
            || replies.lock().unwrap().len() == 100,
        );
        let numbers: Vec<u32> = replies
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.as_ref().unwrap().read1::<u32>().unwrap())
            .collect();
        assert_eq!(numbers, (1..=100).collect::<Vec<_>>(), "{name}");

        // 16 MiB each way, read 2 KiB per readiness.
        replies.lock().unwrap().clear();
        let big = payload(16 << 20, 5);
        call(&source, &replies, "Echo", |m| m.append1(big.clone()));
        run_until(
            "the 16 MiB echo",
            || lp.turn(),
            || replies.lock().unwrap().len() == 1,
        );
        let echoed: Vec<u8> = replies.lock().unwrap()[0]
            .as_ref()
            .unwrap()
            .read1()
            .unwrap();
        assert!(echoed == big, "{name}: payload corrupted");

        // A send from another thread that leaves output queued (4 MiB does not fit the
        // socket): only the crate's waker tells the loop to flush it.
        replies.lock().unwrap().clear();
        let (source2, sink) = (source.clone(), Arc::clone(&replies));
        let medium = payload(4 << 20, 9);
        let sent = medium.clone();
        std::thread::spawn(move || call(&source2, &sink, "Echo", |m| m.append1(sent)))
            .join()
            .unwrap();
        run_until(
            "the other thread's call",
            || lp.turn(),
            || replies.lock().unwrap().len() == 1,
        );
        let echoed: Vec<u8> = replies.lock().unwrap()[0]
            .as_ref()
            .unwrap()
            .read1()
            .unwrap();
        assert!(echoed == medium, "{name}: payload corrupted");
    }
}

thread_local! {
    /// This thread's next `DataRemains` notification stays in flight until released.
    static HOLD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A `ChannelSource` whose glue status function, when a thread marked with [`HOLD`] calls it
/// with `DataRemains`, passes the status on and then waits — a notification still in flight
/// on another thread while the loop runs — and whose dispatches are counted.
#[derive(Clone)]
struct Held {
    source: ChannelSource,
    dispatches: Arc<std::sync::atomic::AtomicUsize>,
    /// Signalled once the held notification reached the glue; waited on for the release.
    in_flight: Arc<std::sync::Barrier>,
    release: Arc<std::sync::Barrier>,
}

impl loopglue::Source for Held {
    fn data(&self) -> &loopglue::SourceData {
        self.source.data()
    }
    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn loopglue::WatchFunctions>>,
    ) -> Result<(), loopglue::SetFunctionsError<dyn loopglue::WatchFunctions>> {
        self.source.set_watch_functions(functions)
    }
    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn loopglue::TimeoutFunctions>>,
    ) -> Result<(), loopglue::SetFunctionsError<dyn loopglue::TimeoutFunctions>> {
        self.source.set_timeout_functions(functions)
    }
    fn set_wakeup_main_function(&self, wakeup: Option<loopglue::WakeupFn>) {
        self.source.set_wakeup_main_function(wakeup);
    }
    fn set_dispatch_status_function(&self, function: Option<loopglue::DispatchStatusFn>) {
        let (in_flight, release) = (Arc::clone(&self.in_flight), Arc::clone(&self.release));
        self.source.set_dispatch_status_function(function.map(
            |glue| -> loopglue::DispatchStatusFn {
                Box::new(move |status| {
                    glue(status);
                    if status == loopglue::DispatchStatus::DataRemains
                        && HOLD.with(|hold| hold.replace(false))
                    {
                        in_flight.wait();
                        release.wait();
                    }
                })
            },
        ));
    }
    fn dispatch_status(&self) -> loopglue::DispatchStatus {
        self.source.dispatch_status()
    }
    fn dispatch(&self) -> loopglue::DispatchStatus {
        self.dispatches
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.source.dispatch()
    }
}

/// A send from another thread that leaves output queued calls the crate's waker there, and
/// the glue hears `DataRemains` from that thread. While that notification is still in flight
/// the loop dispatches (and is answered `Complete`), writes the call and reads the whole
/// reply; every "data remains" of that I/O meets the notification in flight. The reply must
/// still be dispatched: the glue, which believes `Complete`, has to be told again. (With a
/// status notifier that only remembers what it last told, the I/O's `DataRemains` compared
/// equal to the in-flight one and the reply stayed queued for good; on tokio's multi-thread
/// runtime this happened on its own, in most runs of the 1 MiB echo.)
#[test]
fn a_reply_read_while_another_threads_notification_is_in_flight_is_dispatched() {
    let daemon = Daemon::start();
    let main_loop = loopglue::MainLoop::new().unwrap();
    let responder = Peer::new(Connection::open_bus(&daemon.address).unwrap());
    assert_eq!(request_name(&responder.conn, NAME, 4), 1);
    main_loop.attach(Arc::new(responder.conn.clone())).unwrap();
    let mut channel = Channel::open_private(&daemon.address).unwrap();
    channel.register().unwrap();
    let held = Held {
        source: ChannelSource::new(channel),
        dispatches: Arc::default(),
        in_flight: Arc::new(std::sync::Barrier::new(2)),
        release: Arc::new(std::sync::Barrier::new(2)),
    };
    main_loop.attach(Arc::new(held.clone())).unwrap();
    let turn = || {
        main_loop
            .run_once(Some(std::time::Duration::from_millis(200)))
            .unwrap();
    };

    let replies: Replies = Arc::default();
    let medium = payload(4 << 20, 13);
    let sender = {
        let (source, sink, sent) = (held.source.clone(), Arc::clone(&replies), medium.clone());
        std::thread::spawn(move || {
            HOLD.with(|hold| hold.set(true));
            // 4 MiB does not fit the socket: the send leaves output queued and wakes the glue.
            call(&source, &sink, "Echo", |m| m.append1(sent));
        })
    };
    held.in_flight.wait();
    // The loop dispatches, answers the glue `Complete`, sends the call, and the responder
    // answers it — all while the notification is in flight.
    let dispatched = held.dispatches.load(std::sync::atomic::Ordering::SeqCst);
    run_until(
        "the loop's dispatch and the responder's answer",
        turn,
        || {
            held.dispatches.load(std::sync::atomic::Ordering::SeqCst) > dispatched
                && responder.seen.lock().unwrap().calls == 1
        },
    );
    held.release.wait();
    sender.join().unwrap();
    run_until("the reply", turn, || replies.lock().unwrap().len() == 1);
    let echoed: Vec<u8> = replies.lock().unwrap()[0]
        .as_ref()
        .unwrap()
        .read1()
        .unwrap();
    assert!(echoed == medium, "payload corrupted");
}
