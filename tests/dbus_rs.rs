//! The `dbus` crate's non-blocking connection on `MainLoop` through `ChannelSource`, talking
//! to a libdbus bridge peer through a private `dbus-daemon`. Needs the `dbus-rs` feature.

mod dbus_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dbus_crate::channel::Channel;
use dbus_crate::nonblock::NonblockReply;
use dbus_crate::Message;
use dbus_support::{payload, request_name, run_until, Daemon, Peer, IFACE, PATH};
use loopglue::dbus::{ChannelSource, Connection};
use loopglue::MainLoop;

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
fn a_dbus_rs_connection_runs_on_main_loop() {
    let daemon = Daemon::start();
    let main_loop = MainLoop::new().unwrap();
    let responder = Peer::new(Connection::open_bus(&daemon.address).unwrap());
    assert_eq!(request_name(&responder.conn, NAME, 4), 1);
    main_loop.attach(Arc::new(responder.conn.clone())).unwrap();

    let mut channel = Channel::open_private(&daemon.address).unwrap();
    channel.register().unwrap();
    let source = ChannelSource::new(channel);
    main_loop.attach(Arc::new(source.clone())).unwrap();
    let turn = || {
        main_loop
            .run_once(Some(Duration::from_millis(200)))
            .unwrap();
    };

    // Calls answered in order, values checked.
    let replies: Replies = Arc::default();
    for n in 0..100u32 {
        call(&source, &replies, "Ping", |m| m.append1(n));
    }
    run_until("100 replies", turn, || replies.lock().unwrap().len() == 100);
    let numbers: Vec<u32> = replies
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.as_ref().unwrap().read1::<u32>().unwrap())
        .collect();
    assert_eq!(numbers, (1..=100).collect::<Vec<_>>());

    // 16 MiB each way, read 2 KiB per readiness.
    replies.lock().unwrap().clear();
    let big = payload(16 << 20, 5);
    call(&source, &replies, "Echo", |m| m.append1(big.clone()));
    run_until("the 16 MiB echo", turn, || {
        replies.lock().unwrap().len() == 1
    });
    let echoed: Vec<u8> = replies.lock().unwrap()[0]
        .as_ref()
        .unwrap()
        .read1()
        .unwrap();
    assert!(echoed == big, "payload corrupted");

    // A send from another thread that leaves output queued (4 MiB does not fit the
    // socket): only the crate's waker tells the loop to flush it.
    replies.lock().unwrap().clear();
    let (source2, sink) = (source.clone(), Arc::clone(&replies));
    let medium = payload(4 << 20, 9);
    let sent = medium.clone();
    std::thread::spawn(move || call(&source2, &sink, "Echo", |m| m.append1(sent)))
        .join()
        .unwrap();
    run_until("the other thread's call", turn, || {
        replies.lock().unwrap().len() == 1
    });
    let echoed: Vec<u8> = replies.lock().unwrap()[0]
        .as_ref()
        .unwrap()
        .read1()
        .unwrap();
    assert!(echoed == medium, "payload corrupted");
}
