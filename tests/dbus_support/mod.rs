//! Shared by the libdbus bridge tests: a peer that answers and records messages through
//! libdbus filters, a bounded "run the loop until" helper, and the loops every bus test runs
//! on ([`loops`]: `MainLoop` and each adapter whose feature is on).
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libdbus_sys as sys;
use loopglue::dbus::{ffi, Connection};

#[cfg(feature = "tokio")]
#[path = "../tokio_loop/mod.rs"]
mod tokio_loop;
#[cfg(feature = "tokio")]
use tokio_loop::{Flavor, TokioLoop};

pub const IFACE: &str = "org.loopglue.Test";
pub const PATH: &str = "/org/loopglue/Test";
const DISCONNECTED_IFACE: &str = "org.freedesktop.DBus.Local";

/// How long a test waits for something that should happen at once before it calls it a hang.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What a call's reply was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Number(u32),
    Bytes(Vec<u8>),
    Error(String),
}

/// Everything a peer saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub replies: HashMap<u32, Reply>,
    pub signals: Vec<String>,
    pub calls: usize,
    /// Error messages that reached the filter: (error name, reply serial).
    pub filtered_errors: Vec<(String, u32)>,
    pub disconnected: bool,
    /// Calls to "Stall" that were never answered.
    pub stalled: usize,
}

/// A connection with a filter that answers `Ping(u) -> u+1` and `Echo(ay) -> ay`, leaves
/// `Stall` unanswered, closes its connection on `Hangup` (from inside the filter, so from
/// inside `dbus_connection_dispatch` on the loop's thread), and records signals, replies and
/// errors.
pub struct Peer {
    pub conn: Connection,
    pub seen: Arc<Mutex<Seen>>,
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

unsafe fn str_of(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

unsafe fn read_number(msg: *mut sys::DBusMessage) -> Option<u32> {
    let mut iter: sys::DBusMessageIter = std::mem::zeroed();
    if sys::dbus_message_iter_init(msg, &mut iter) == 0
        || sys::dbus_message_iter_get_arg_type(&mut iter) != sys::DBUS_TYPE_UINT32
    {
        return None;
    }
    let mut n: u32 = 0;
    sys::dbus_message_iter_get_basic(&mut iter, (&mut n as *mut u32).cast());
    Some(n)
}

unsafe fn read_bytes(msg: *mut sys::DBusMessage) -> Option<Vec<u8>> {
    let mut iter: sys::DBusMessageIter = std::mem::zeroed();
    if sys::dbus_message_iter_init(msg, &mut iter) == 0
        || sys::dbus_message_iter_get_arg_type(&mut iter) != sys::DBUS_TYPE_ARRAY
    {
        return None;
    }
    let mut sub: sys::DBusMessageIter = std::mem::zeroed();
    sys::dbus_message_iter_recurse(&mut iter, &mut sub);
    let mut data: *const u8 = std::ptr::null();
    let mut n: i32 = 0;
    sys::dbus_message_iter_get_fixed_array(&mut sub, (&mut data as *mut *const u8).cast(), &mut n);
    if n == 0 {
        return Some(Vec::new());
    }
    Some(std::slice::from_raw_parts(data, n as usize).to_vec())
}

unsafe fn append_number(msg: *mut sys::DBusMessage, n: u32) {
    let mut iter: sys::DBusMessageIter = std::mem::zeroed();
    sys::dbus_message_iter_init_append(msg, &mut iter);
    assert_ne!(
        sys::dbus_message_iter_append_basic(
            &mut iter,
            sys::DBUS_TYPE_UINT32,
            (&n as *const u32).cast()
        ),
        0
    );
}

unsafe fn append_bytes(msg: *mut sys::DBusMessage, bytes: &[u8]) {
    let mut iter: sys::DBusMessageIter = std::mem::zeroed();
    sys::dbus_message_iter_init_append(msg, &mut iter);
    let mut sub: sys::DBusMessageIter = std::mem::zeroed();
    let y = c("y");
    assert_ne!(
        sys::dbus_message_iter_open_container(
            &mut iter,
            sys::DBUS_TYPE_ARRAY,
            y.as_ptr(),
            &mut sub
        ),
        0
    );
    let data = bytes.as_ptr();
    assert_ne!(
        sys::dbus_message_iter_append_fixed_array(
            &mut sub,
            sys::DBUS_TYPE_BYTE,
            (&data as *const *const u8).cast(),
            bytes.len() as i32
        ),
        0
    );
    assert_ne!(
        sys::dbus_message_iter_close_container(&mut iter, &mut sub),
        0
    );
}

extern "C" fn filter(
    conn: *mut sys::DBusConnection,
    msg: *mut sys::DBusMessage,
    data: *mut c_void,
) -> sys::DBusHandlerResult {
    // SAFETY: `data` is the Arc<Mutex<Seen>> leaked in `Peer::new`, freed by `free_seen`.
    let seen = unsafe { &*data.cast::<Mutex<Seen>>() };
    unsafe {
        let iface = str_of(sys::dbus_message_get_interface(msg));
        let member = str_of(sys::dbus_message_get_member(msg));
        match sys::dbus_message_get_type(msg) {
            4 if iface == DISCONNECTED_IFACE && member == "Disconnected" => {
                seen.lock().unwrap().disconnected = true;
                return sys::DBusHandlerResult::Handled;
            }
            4 if iface == IFACE => {
                seen.lock().unwrap().signals.push(member);
                return sys::DBusHandlerResult::Handled;
            }
            1 if iface == IFACE => {
                seen.lock().unwrap().calls += 1;
                let reply = match member.as_str() {
                    "Ping" => {
                        let n = read_number(msg).unwrap_or(0);
                        let reply = sys::dbus_message_new_method_return(msg);
                        append_number(reply, n.wrapping_add(1));
                        reply
                    }
                    "Echo" => {
                        let bytes = read_bytes(msg).unwrap_or_default();
                        let reply = sys::dbus_message_new_method_return(msg);
                        append_bytes(reply, &bytes);
                        reply
                    }
                    "Stall" => {
                        seen.lock().unwrap().stalled += 1;
                        return sys::DBusHandlerResult::Handled;
                    }
                    "Hangup" => {
                        sys::dbus_connection_close(conn);
                        return sys::DBusHandlerResult::Handled;
                    }
                    _ => return sys::DBusHandlerResult::NotYetHandled,
                };
                sys::dbus_connection_send(conn, reply, std::ptr::null_mut());
                sys::dbus_message_unref(reply);
                return sys::DBusHandlerResult::Handled;
            }
            3 => {
                let name = str_of(ffi::dbus_message_get_error_name(msg));
                let serial = sys::dbus_message_get_reply_serial(msg);
                seen.lock().unwrap().filtered_errors.push((name, serial));
                return sys::DBusHandlerResult::Handled;
            }
            _ => {}
        }
    }
    sys::DBusHandlerResult::NotYetHandled
}

extern "C" fn free_seen(data: *mut c_void) {
    // SAFETY: the Arc leaked in `Peer::new`.
    drop(unsafe { Arc::from_raw(data.cast::<Mutex<Seen>>()) });
}

struct Waiting {
    seen: Arc<Mutex<Seen>>,
    serial: u32,
    /// The reply was taken: `reply_ready` may be called twice (see `Peer::call`).
    taken: std::sync::atomic::AtomicBool,
}

extern "C" fn reply_ready(pending: *mut sys::DBusPendingCall, data: *mut c_void) {
    // SAFETY: `data` is the Box<Waiting> set in `Peer::call`, freed by `free_waiting` when
    // the pending call is finalized; both callers hold a reference to the call.
    let waiting = unsafe { &*data.cast::<Waiting>() };
    if waiting
        .taken
        .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        return;
    }
    unsafe {
        let reply = sys::dbus_pending_call_steal_reply(pending);
        let outcome = if reply.is_null() {
            Reply::Error("no reply".into())
        } else if sys::dbus_message_get_type(reply) == 3 {
            Reply::Error(str_of(ffi::dbus_message_get_error_name(reply)))
        } else if let Some(n) = read_number(reply) {
            Reply::Number(n)
        } else {
            Reply::Bytes(read_bytes(reply).unwrap_or_default())
        };
        if !reply.is_null() {
            sys::dbus_message_unref(reply);
        }
        waiting
            .seen
            .lock()
            .unwrap()
            .replies
            .insert(waiting.serial, outcome);
    }
}

extern "C" fn free_waiting(data: *mut c_void) {
    // SAFETY: the box made in `Peer::call`.
    drop(unsafe { Box::from_raw(data.cast::<Waiting>()) });
}

impl Peer {
    pub fn new(conn: Connection) -> Peer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let data = Arc::into_raw(Arc::clone(&seen)).cast_mut().cast();
        // SAFETY: a live connection; the filter's data is freed by libdbus with `free_seen`.
        let added = unsafe {
            sys::dbus_connection_add_filter(conn.as_ptr(), Some(filter), data, Some(free_seen))
        };
        assert_ne!(added, 0);
        Peer { conn, seen }
    }

    fn method(&self, dest: Option<&str>, member: &str) -> *mut sys::DBusMessage {
        let dest = dest.map(c);
        let (path, iface, member) = (c(PATH), c(IFACE), c(member));
        // SAFETY: valid C strings.
        let msg = unsafe {
            sys::dbus_message_new_method_call(
                dest.as_ref().map_or(std::ptr::null(), |d| d.as_ptr()),
                path.as_ptr(),
                iface.as_ptr(),
                member.as_ptr(),
            )
        };
        assert!(!msg.is_null());
        msg
    }

    /// Sends `msg` with a reply expected; returns its serial. The reply lands in `seen`.
    ///
    /// On a loop whose handlers run on other threads (tokio's multi-thread runtime), the reply
    /// can be read and dispatched between `dbus_connection_send_with_reply` and
    /// `dbus_pending_call_set_notify`, and libdbus 1.14 never calls a notify set on a call
    /// already completed. So the call is checked after the notify is set; if it completed,
    /// the notify runs here — and since libdbus may also call it (completion started before
    /// the notify was set and finished after), `reply_ready` takes the reply once.
    fn call(&self, msg: *mut sys::DBusMessage) -> u32 {
        let mut pending: *mut sys::DBusPendingCall = std::ptr::null_mut();
        // SAFETY: a live connection and message; `pending` is ours until the unref below.
        unsafe {
            assert_ne!(
                sys::dbus_connection_send_with_reply(self.conn.as_ptr(), msg, &mut pending, -1),
                0
            );
            let serial = sys::dbus_message_get_serial(msg);
            sys::dbus_message_unref(msg);
            assert!(!pending.is_null(), "connection already closed");
            let waiting = Box::into_raw(Box::new(Waiting {
                seen: Arc::clone(&self.seen),
                serial,
                taken: std::sync::atomic::AtomicBool::new(false),
            }));
            assert_ne!(
                sys::dbus_pending_call_set_notify(
                    pending,
                    Some(reply_ready),
                    waiting.cast(),
                    Some(free_waiting)
                ),
                0
            );
            if ffi::dbus_pending_call_get_completed(pending) != 0 {
                reply_ready(pending, waiting.cast());
            }
            sys::dbus_pending_call_unref(pending);
            serial
        }
    }

    pub fn ping(&self, dest: Option<&str>, n: u32) -> u32 {
        let msg = self.method(dest, "Ping");
        // SAFETY: a fresh message.
        unsafe { append_number(msg, n) };
        self.call(msg)
    }

    pub fn echo(&self, dest: Option<&str>, bytes: &[u8]) -> u32 {
        let msg = self.method(dest, "Echo");
        // SAFETY: a fresh message.
        unsafe { append_bytes(msg, bytes) };
        self.call(msg)
    }

    pub fn stall(&self, dest: Option<&str>) -> u32 {
        let msg = self.method(dest, "Stall");
        self.call(msg)
    }

    /// Asks the other end to close its connection from inside its message handler.
    pub fn hangup(&self, dest: Option<&str>) -> u32 {
        let msg = self.method(dest, "Hangup");
        self.call(msg)
    }

    /// Sends the signal `member` (peer to peer: to the other end; on a bus: broadcast).
    pub fn signal(&self, member: &str) {
        let (path, iface, member) = (c(PATH), c(IFACE), c(member));
        // SAFETY: valid C strings, a live connection.
        unsafe {
            let msg = sys::dbus_message_new_signal(path.as_ptr(), iface.as_ptr(), member.as_ptr());
            assert_ne!(
                sys::dbus_connection_send(self.conn.as_ptr(), msg, std::ptr::null_mut()),
                0
            );
            sys::dbus_message_unref(msg);
        }
    }

    pub fn reply(&self, serial: u32) -> Option<Reply> {
        self.seen.lock().unwrap().replies.get(&serial).cloned()
    }

    pub fn authenticated(&self) -> bool {
        // SAFETY: a live connection.
        unsafe { ffi::dbus_connection_get_is_authenticated(self.conn.as_ptr()) != 0 }
    }
}

/// The two ways the bridge can run a connection: `false` for any thread (watches handled with
/// `dbus_connection_read_write`), `true` promised to its loop's thread
/// (`Connection::assume_loop_thread_only`: `dbus_watch_handle`). The promise holds in the
/// tests that use it because [`loops_for`] the second mode leaves out the loops that run
/// handlers on threads other than the one that calls `turn` (and sends): tokio's
/// multi-thread runtime.
pub const MODES: [(&str, bool); 2] = [("any thread", false), ("loop thread only", true)];

/// Runs `test` once per mode (the mode is printed first, so a failure names it).
pub fn every_mode(test: impl Fn(bool)) {
    for (mode, confined) in MODES {
        eprintln!("mode: {mode}");
        test(confined);
    }
}

/// Promises `conn` to the loop's thread if `confined`.
pub fn confine(conn: &Connection, confined: bool) {
    if confined {
        // SAFETY: the tests that ask for it send, call, close and drop the connection only on
        // the thread that runs its loop (or while no loop runs it).
        unsafe { conn.assume_loop_thread_only() };
        assert!(conn.is_loop_thread_only());
    }
}

/// A private connection to `address`, confined if asked.
pub fn open_private(address: &str, confined: bool) -> Connection {
    let conn = Connection::open_private(address).expect("open");
    confine(&conn, confined);
    conn
}

/// A bus connection to `address`, confined if asked.
pub fn open_bus(address: &str, confined: bool) -> Connection {
    let conn = Connection::open_bus(address).expect("open the bus");
    confine(&conn, confined);
    conn
}

/// Runs `step` (one loop iteration) until `done` holds; panics after [`DEADLINE`] — a hang,
/// not a slow machine.
pub fn run_until(what: &str, mut step: impl FnMut(), mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "hung waiting for {what}");
        step();
    }
}

/// A pseudo-random payload that shows corruption and reordering.
pub fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A private `dbus-daemon` in a temporary directory, killed on drop.
pub struct Daemon {
    child: std::process::Child,
    pub address: String,
    dir: std::path::PathBuf,
}

impl Daemon {
    /// Starts `dbus-daemon --config-file=<temp session config> --print-address --nofork`.
    ///
    /// # Panics
    ///
    /// If `dbus-daemon` is not installed (`.ci/run` installs it: `apt-get install dbus-daemon`).
    pub fn start() -> Daemon {
        use std::io::BufRead;
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopglue-dbus-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("session.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>session</type><listen>unix:dir={}</listen><auth>EXTERNAL</auth>
<limit name="max_message_size">134217728</limit>
<limit name="max_incoming_bytes">268435456</limit>
<limit name="max_outgoing_bytes">268435456</limit>
<limit name="max_completed_connections">1000</limit>
<limit name="max_connections_per_user">1000</limit>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/></policy></busconfig>
"#,
                dir.display()
            ),
        )
        .unwrap();
        let mut child = std::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--print-address")
            .arg("--nofork")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dbus-daemon is not installed (apt-get install dbus-daemon)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_string();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        Daemon {
            child,
            address,
            dir,
        }
    }

    /// Kills the daemon (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Requests `name` on the bus (`dbus_bus_request_name`, blocking); returns libdbus's answer
/// (1 primary owner, 2 in queue, 3 exists, 4 already owner).
pub fn request_name(conn: &Connection, name: &str, flags: u32) -> i32 {
    let name = c(name);
    let mut error: sys::DBusError = unsafe { std::mem::zeroed() };
    // SAFETY: a live connection, a valid name, an initialised error.
    unsafe {
        sys::dbus_error_init(&mut error);
        let answer = sys::dbus_bus_request_name(conn.as_ptr(), name.as_ptr(), flags, &mut error);
        sys::dbus_error_free(&mut error);
        answer
    }
}

/// Attaches a source to a loop from any thread, or from inside one of the loop's handlers (a
/// server's new-connection function); the attachment lives until the loop is dropped or the
/// source detached. It holds the loop weakly: a source may keep it without a cycle.
pub type Attacher = Arc<dyn Fn(Arc<dyn loopglue::Source>) + Send + Sync>;

/// A loop the bus tests run on. Adding an adapter to every bus test is one impl of this and
/// one line in [`loops`].
pub trait TestLoop {
    /// Runs `source` on this loop until the loop is dropped or the source detached.
    fn attach(&self, source: Arc<dyn loopglue::Source>);
    /// See [`Attacher`].
    fn attacher(&self) -> Attacher;
    /// Stops running `source` (found by its identity; any clone will do).
    fn detach(&self, source: &dyn loopglue::Source);
    /// One iteration, waiting at most a short while.
    fn turn(&self);
    /// One iteration waiting at most `wait`: how many handlers and dispatches ran, where the
    /// loop tells (`MainLoop::run_once`, `MioGlue::process`); `None` where the count stays
    /// inside the host loop (tokio, calloop, GLib).
    fn turn_counting(&self, wait: Duration) -> Option<usize>;
    /// How many fds the glue has registered with the loop, over every source.
    fn registered_fds(&self) -> usize;
    /// The CPU time used so far by the threads that run the loop's handlers; the default is
    /// the calling thread's, right for a loop turned on it.
    fn cpu_time(&self) -> Duration {
        thread_cpu()
    }
}

/// CPU time the calling thread has used.
pub fn thread_cpu() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// `MainLoop`; it keeps what it runs.
struct OnMainLoop(Arc<loopglue::MainLoop>);

impl TestLoop for OnMainLoop {
    fn attach(&self, source: Arc<dyn loopglue::Source>) {
        self.0.attach(source).expect("attach");
    }
    fn attacher(&self) -> Attacher {
        let main_loop = Arc::downgrade(&self.0);
        Arc::new(move |source| {
            if let Some(main_loop) = main_loop.upgrade() {
                main_loop.attach(source).expect("attach");
            }
        })
    }
    fn detach(&self, source: &dyn loopglue::Source) {
        self.0.detach(source).expect("detach");
    }
    fn turn(&self) {
        self.0
            .run_once(Some(Duration::from_millis(200)))
            .expect("run_once");
    }
    fn turn_counting(&self, wait: Duration) -> Option<usize> {
        Some(self.0.run_once(Some(wait)).expect("run_once"))
    }
    fn registered_fds(&self) -> usize {
        self.0.registered_fds()
    }
}

/// The attachments an adapter handed out, shared with its [`Attacher`]s.
struct Kept<A>(Arc<Mutex<Vec<A>>>);

impl<A: Send + 'static> Kept<A> {
    fn new() -> Kept<A> {
        Kept(Arc::default())
    }

    fn push(&self, attachment: A) {
        self.0.lock().unwrap().push(attachment);
    }

    /// An attacher that attaches with `attach` and keeps the attachment here.
    fn attacher(
        &self,
        attach: impl Fn(Arc<dyn loopglue::Source>) -> std::io::Result<A> + Send + Sync + 'static,
    ) -> Attacher {
        let kept = Arc::downgrade(&self.0);
        Arc::new(move |source| {
            if let Some(kept) = kept.upgrade() {
                let attachment = attach(source).expect("attach");
                kept.lock().unwrap().push(attachment);
            }
        })
    }

    /// Takes out the attachment of `source` (by identity), if any.
    fn take(&self, source: &dyn loopglue::Source, id: impl Fn(&A) -> u64) -> Option<A> {
        let mut kept = self.0.lock().unwrap();
        let at = kept.iter().position(|a| id(a) == source.data().id())?;
        Some(kept.swap_remove(at))
    }
}

/// tokio: a runtime of the loop's own, turned by the calling thread (current-thread) or run
/// by two workers (multi-thread); see `tests/tokio_loop`.
#[cfg(feature = "tokio")]
struct OnTokio {
    // Detached before the runtime goes.
    kept: Kept<loopglue::adapters::tokio::TokioAttachment>,
    tokio: TokioLoop,
}

#[cfg(feature = "tokio")]
impl OnTokio {
    fn new(flavor: Flavor) -> OnTokio {
        OnTokio {
            kept: Kept::new(),
            tokio: TokioLoop::new(flavor),
        }
    }
}

#[cfg(feature = "tokio")]
impl TestLoop for OnTokio {
    fn attach(&self, source: Arc<dyn loopglue::Source>) {
        (self.attacher())(source);
    }
    fn attacher(&self) -> Attacher {
        let handle = self.tokio.handle().clone();
        self.kept
            .attacher(move |source| loopglue::adapters::tokio::attach_to(&handle, source))
    }
    fn detach(&self, source: &dyn loopglue::Source) {
        if let Some(attachment) = self.kept.take(source, |a| a.source().data().id()) {
            attachment.detach().map_err(|(_, e)| e).expect("detach");
        }
    }
    /// A round of the runtime, or at most 20 ms: a runtime that never finishes a round (a
    /// driver that spins) fails the CPU bounds in seconds, not at the deadlines.
    fn turn(&self) {
        self.tokio.turn(Duration::from_millis(20));
    }
    fn turn_counting(&self, wait: Duration) -> Option<usize> {
        self.tokio.turn(wait);
        None
    }
    fn registered_fds(&self) -> usize {
        self.kept
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.registered_fds())
            .sum()
    }
    fn cpu_time(&self) -> Duration {
        self.tokio.cpu_time()
    }
}

/// mio: a `Poll` of the loop's own, polled by the calling thread, the glue on tokens
/// 1000..3000.
#[cfg(feature = "mio")]
struct OnMio {
    kept: Kept<loopglue::adapters::mio::MioAttachment>,
    glue: Arc<loopglue::adapters::mio::MioGlue>,
    poll: std::cell::RefCell<(mio::Poll, mio::Events)>,
}

#[cfg(feature = "mio")]
impl OnMio {
    fn new() -> OnMio {
        let poll = mio::Poll::new().expect("poll");
        let glue = loopglue::adapters::mio::MioGlue::new(
            poll.registry(),
            mio::Token(1000)..mio::Token(3000),
        )
        .expect("glue");
        OnMio {
            kept: Kept::new(),
            glue: Arc::new(glue),
            poll: std::cell::RefCell::new((poll, mio::Events::with_capacity(256))),
        }
    }
}

#[cfg(feature = "mio")]
impl TestLoop for OnMio {
    fn attach(&self, source: Arc<dyn loopglue::Source>) {
        (self.attacher())(source);
    }
    fn attacher(&self) -> Attacher {
        let glue = Arc::downgrade(&self.glue);
        self.kept.attacher(move |source| match glue.upgrade() {
            Some(glue) => glue.attach(source),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        })
    }
    fn detach(&self, source: &dyn loopglue::Source) {
        if let Some(attachment) = self.kept.take(source, |a| a.source().data().id()) {
            attachment.detach().map_err(|(_, e)| e).expect("detach");
        }
    }
    fn turn(&self) {
        self.turn_counting(Duration::from_millis(200));
    }
    fn turn_counting(&self, wait: Duration) -> Option<usize> {
        let mut poll = self.poll.borrow_mut();
        let (poll, events) = &mut *poll;
        let timeout = self.glue.poll_timeout().map_or(wait, |t| t.min(wait));
        match poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => events.clear(),
            Err(e) => panic!("poll: {e}"),
        }
        Some(self.glue.process(events))
    }
    fn registered_fds(&self) -> usize {
        self.glue.registered_fds()
    }
}

/// calloop: an `EventLoop` of the loop's own, dispatched by the calling thread.
#[cfg(feature = "calloop")]
struct OnCalloop {
    kept: Kept<loopglue::adapters::calloop::CalloopAttachment>,
    glue: loopglue::adapters::calloop::CalloopGlue<'static, ()>,
    event_loop: std::cell::RefCell<calloop::EventLoop<'static, ()>>,
}

#[cfg(feature = "calloop")]
impl OnCalloop {
    fn new() -> OnCalloop {
        let event_loop = calloop::EventLoop::try_new().expect("event loop");
        let glue =
            loopglue::adapters::calloop::CalloopGlue::insert(&event_loop.handle()).expect("glue");
        OnCalloop {
            kept: Kept::new(),
            glue,
            event_loop: std::cell::RefCell::new(event_loop),
        }
    }
}

#[cfg(feature = "calloop")]
impl TestLoop for OnCalloop {
    fn attach(&self, source: Arc<dyn loopglue::Source>) {
        self.kept.push(self.glue.attach(source).expect("attach"));
    }
    fn attacher(&self) -> Attacher {
        let attacher = self.glue.attacher();
        self.kept.attacher(move |source| attacher.attach(source))
    }
    fn detach(&self, source: &dyn loopglue::Source) {
        if let Some(attachment) = self.kept.take(source, |a| a.source().data().id()) {
            attachment.detach().map_err(|(_, e)| e).expect("detach");
        }
    }
    fn turn(&self) {
        self.turn_counting(Duration::from_millis(200));
    }
    fn turn_counting(&self, wait: Duration) -> Option<usize> {
        self.event_loop
            .borrow_mut()
            .dispatch(Some(wait), &mut ())
            .expect("dispatch");
        None
    }
    fn registered_fds(&self) -> usize {
        self.glue.registered_fds()
    }
}

/// GLib: a `MainContext` of the loop's own, iterated by the calling thread.
#[cfg(feature = "glib")]
struct OnGlib {
    kept: Kept<loopglue::adapters::glib::GlibAttachment>,
    glue: loopglue::adapters::glib::GlibGlue,
    context: glib::MainContext,
}

#[cfg(feature = "glib")]
impl OnGlib {
    fn new() -> OnGlib {
        let context = glib::MainContext::new();
        OnGlib {
            kept: Kept::new(),
            glue: loopglue::adapters::glib::GlibGlue::new(&context),
            context,
        }
    }
}

#[cfg(feature = "glib")]
impl TestLoop for OnGlib {
    fn attach(&self, source: Arc<dyn loopglue::Source>) {
        (self.attacher())(source);
    }
    fn attacher(&self) -> Attacher {
        let glue = self.glue.clone();
        self.kept.attacher(move |source| glue.attach(source))
    }
    fn detach(&self, source: &dyn loopglue::Source) {
        if let Some(attachment) = self.kept.take(source, |a| a.source().data().id()) {
            attachment.detach().map_err(|(_, e)| e).expect("detach");
        }
    }
    fn turn(&self) {
        self.turn_counting(Duration::from_millis(200));
    }
    /// One `g_main_context_iteration`, its wait bounded by a timeout source of the test's
    /// own below the glue's priority.
    fn turn_counting(&self, wait: Duration) -> Option<usize> {
        let bound =
            glib::timeout_source_new(wait, None, glib::Priority::LOW, || glib::ControlFlow::Break);
        bound.attach(Some(&self.context));
        self.context.iteration(true);
        bound.destroy();
        None
    }
    fn registered_fds(&self) -> usize {
        self.glue.registered_fds()
    }
}

/// Makes a fresh loop of one kind.
pub type MakeLoop = fn() -> Box<dyn TestLoop>;

/// Every loop the bus tests run on: (name, constructor) — `MainLoop` on both backends, and
/// each adapter whose feature is on. `LOOPGLUE_TEST_LOOPS=tokio,mio` (names containing one of
/// the words) runs the tests on those alone. Each loop's name is printed as its turn comes,
/// so a failing test's output says which loop it failed on.
pub fn loops() -> impl Iterator<Item = (&'static str, MakeLoop)> {
    loops_for(false)
}

/// The loops of [`loops`] that can run connections promised to their loop's thread
/// (`confined`, see [`MODES`]): those that run handlers on the thread that turns them. With
/// `confined` false, every loop.
pub fn loops_for(confined: bool) -> impl Iterator<Item = (&'static str, MakeLoop)> {
    let only = std::env::var("LOOPGLUE_TEST_LOOPS").unwrap_or_default();
    let mut loops = every_loop();
    if !only.is_empty() {
        loops.retain(|kind| only.split(',').any(|word| kind.name.contains(word.trim())));
        assert!(
            !loops.is_empty(),
            "LOOPGLUE_TEST_LOOPS={only} names no loop"
        );
    }
    loops
        .into_iter()
        .filter(move |kind| !confined || kind.handlers_on_turning_thread)
        .map(|kind| (kind.name, kind.make))
        .inspect(|(name, _)| eprintln!("-- on {name}"))
}

/// One kind of loop.
struct LoopKind {
    name: &'static str,
    make: MakeLoop,
    /// Handlers run on the thread that calls `turn`, never on another.
    handlers_on_turning_thread: bool,
}

fn every_loop() -> Vec<LoopKind> {
    fn kind(name: &'static str, make: MakeLoop) -> LoopKind {
        LoopKind {
            name,
            make,
            handlers_on_turning_thread: true,
        }
    }
    // Mutated only with adapter features on.
    #[allow(unused_mut)]
    let mut loops = vec![
        kind("MainLoop/epoll", || {
            Box::new(OnMainLoop(Arc::new(
                loopglue::MainLoop::with_backend(loopglue::Backend::Epoll).unwrap(),
            )))
        }),
        kind("MainLoop/poll", || {
            Box::new(OnMainLoop(Arc::new(
                loopglue::MainLoop::with_backend(loopglue::Backend::Poll).unwrap(),
            )))
        }),
    ];
    #[cfg(feature = "tokio")]
    {
        loops.push(kind("tokio/current-thread", || {
            Box::new(OnTokio::new(Flavor::CurrentThread))
        }));
        loops.push(LoopKind {
            handlers_on_turning_thread: false,
            ..kind("tokio/multi-thread", || {
                Box::new(OnTokio::new(Flavor::MultiThread))
            })
        });
    }
    #[cfg(feature = "mio")]
    loops.push(kind("mio", || Box::new(OnMio::new())));
    #[cfg(feature = "calloop")]
    loops.push(kind("calloop", || Box::new(OnCalloop::new())));
    #[cfg(feature = "glib")]
    loops.push(kind("GLib", || Box::new(OnGlib::new())));
    loops
}

/// `Ping(n)` to `dest` with `dbus_connection_send_with_reply_and_block` (libdbus does the
/// I/O on the calling thread); the answer, or `None` on error.
pub fn blocking_ping(conn: &Connection, dest: &str, n: u32) -> Option<u32> {
    let (dest, path, iface, member) = (c(dest), c(PATH), c(IFACE), c("Ping"));
    // SAFETY: valid C strings and a live connection.
    unsafe {
        let msg = sys::dbus_message_new_method_call(
            dest.as_ptr(),
            path.as_ptr(),
            iface.as_ptr(),
            member.as_ptr(),
        );
        append_number(msg, n);
        let mut error: sys::DBusError = std::mem::zeroed();
        sys::dbus_error_init(&mut error);
        let reply =
            sys::dbus_connection_send_with_reply_and_block(conn.as_ptr(), msg, 25_000, &mut error);
        sys::dbus_message_unref(msg);
        sys::dbus_error_free(&mut error);
        if reply.is_null() {
            return None;
        }
        let answer = read_number(reply);
        sys::dbus_message_unref(reply);
        answer
    }
}
