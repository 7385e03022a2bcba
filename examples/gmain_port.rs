//! dbus-glib's `dbus-gmain.c` — the glue that runs a libdbus connection or server on a GLib
//! `GMainContext` — ported to loopglue: the `dbus` feature's bridge and the `glib` adapter.
//!
//! `dbus-gmain.c` (in dbus-glib, dbus-python and several other projects that vendor it) is
//! about 600 lines of C. Almost all of it is the work every libdbus glue repeats, and with
//! loopglue it collapses into one call,
//!
//! ```text
//! GlibGlue::new(&context).attach(Arc::new(connection.clone()))
//! ```
//!
//! What is left is what makes dbus-gmain an API rather than a loop: the per-connection state
//! kept in a libdbus data slot, so that setting a connection up again finds the existing setup
//! and moves it to another context. This file ports that part function by function and says,
//! next to each C name, where the rest went. The C it mirrors:
//!
//! | `dbus-gmain.c` | what it does | with loopglue |
//! |---|---|---|
//! | `DBusGMessageQueue`, `message_queue_prepare` / `_check` / `_dispatch`, `message_queue_funcs` | a custom `GSource` that is ready while `dbus_connection_get_dispatch_status` says `DATA_REMAINS`, and dispatches one message per iteration | gone: the adapter dispatches right after the fd's handlers ran, in the same GLib dispatch, and otherwise from an idle source attached only while the bridge has announced `DataRemains` (up to 64 messages per round, then the other sources get a turn) |
//! | `ConnectionSetup` (`context`, `ios`, `timeouts`, `connection`, `message_queue_source`) | one per connection or server and context | a [`GlibAttachment`] (the sources on the context, owned) plus, here, a [`Setup`] in the source's data slot |
//! | `IOHandler`, `io_handler_dispatch`, `io_handler_destroy_source`, `io_handler_source_finalized`, `io_handler_watch_freed` | one `GIOChannel` watch per *enabled* `DBusWatch`, created and destroyed on every toggle, unhooked by the watch's free-data | the adapter's watch functions: one unix fd `GSource` per *fd* for what its enabled watches want (libdbus's read and write watch share one socket), re-registered when that changes; the bridge mirrors each `DBusWatch` as a loopglue `Watch` and keeps its own data on it |
//! | `connection_setup_add_watch`, `connection_setup_remove_watch`, `add_watch`, `remove_watch`, `watch_toggled` | toggling is handled as adding or removing, since the C code gives up on out-of-memory anyway | `WatchFunctions::{add, remove, toggled}` inside the adapter; a refused add reaches libdbus as FALSE instead of `g_error` |
//! | `TimeoutHandler`, `timeout_handler_dispatch`, `connection_setup_add_timeout`, `connection_setup_remove_timeout`, `add_timeout`, `remove_timeout`, `timeout_toggled` | a `g_timeout_source_new` per enabled `DBusTimeout`, periodic by GLib's clock | the adapter's timeout functions: a one-shot timeout source re-armed before each `handle()` (fixed delay, C10), milliseconds rounded up; an interval change restarts the period |
//! | `wakeup_main` | `g_main_context_wakeup` for every message libdbus queues | `MainContext::wakeup`, only from threads that do not own the context, and not at all while the bridge serves the context's own thread |
//! | `connection_setup_new` | allocates the setup, attaches the message-queue source | [`GlibGlue::new`] + [`GlibGlue::attach`] |
//! | `connection_setup_free` | destroys every source, unrefs the context (the slot's free function, when libdbus finalizes the connection) | dropping the [`GlibAttachment`] — [`tear_down`] here |
//! | `connection_setup_new_from_old` | re-adds every watch and timeout of the old setup to a new one, stealing their data | detach from the old context, attach to the new: the bridge hands every `DBusWatch` and `DBusTimeout` (a pending call's timer too) to the new glue |
//! | `_dbus_gmain_connection_slot`, `server_slot`, `dbus_*_allocate_data_slot` / `get_data` / `set_data` | where a setup is found again | [`SourceData`](loopglue::SourceData): `source.data().get::<Setup>()`, a slot named by a type |
//! | `dbus_gmain_set_up_connection` (`dbus_connection_setup_with_g_main`) | sets up, or moves to `context`, or nothing if already there | [`connection_setup_with_g_main`] |
//! | `dbus_gmain_set_up_server` (`dbus_server_setup_with_g_main`) | the same for a `DBusServer` | [`server_setup_with_g_main`] |
//!
//! Where loopglue behaves differently, and this program checks it:
//!
//! * **The fd.o #30574 context switch.** The bug: libdbus installs new watch functions by
//!   calling the new `add` for every watch before the old `remove`, and a `DBusWatch` has one
//!   data pointer, so when dbus-gmain moved a connection, the old setup's `remove_watch` found
//!   the *new* setup's handler there and destroyed the new context's source (dbus-gmain's
//!   `handler->cs != cs` test is the fix). With loopglue that cannot happen: glue data belongs
//!   to the function set that stored it, and a move detaches every `GSource` of the old
//!   context before the new attach. What does differ is *where* a move may be made:
//!   dbus-gmain's regression test moves the connection from inside a pending call's reply
//!   notification — inside `dbus_connection_dispatch`, where libdbus holds no lock, so the C
//!   code works there. The bridge refuses to replace a connection's functions from inside
//!   any libdbus call-out of that connection, a message handler included (one rule for all of
//!   them, since from the locked ones a replacement would re-enter libdbus under its own
//!   lock): the move returns `InvalidInput` (`Error::Reentrant`) and the attachment is handed
//!   back untouched. A port records the wish and moves the connection once the handler has
//!   returned; this program checks the refusal, that it changed nothing, and the move after.
//! * **Reentrancy.** A glue that dispatches from inside libdbus (`toggled`, the status
//!   function) would hang libdbus; the bridge defers such calls to a zero-interval timeout
//!   of its own. The adapter's fd sources may recurse, so a handler that iterates the context
//!   (a nested `GMainLoop` waiting for a reply) is still served.
//! * **Panics.** dbus-gmain is C: nothing unwinds. A panic in Rust code the bridge calls from
//!   inside libdbus (a glue function, the new-connection closure) is kept and raised at the
//!   next bridge call the loop makes; the GLib adapter catches it at GLib's C boundary,
//!   after the panic hook has printed it, and the context carries on. A refused setup is an
//!   error here, where dbus-gmain calls `g_error` and aborts.
//! * **`dbus_watch_handle`.** dbus-gmain calls it with the `DBusWatch`; the bridge does so
//!   only for a connection promised to the threads that iterate its contexts
//!   (`Connection::assume_loop_thread_only`, as the client below is), and otherwise runs
//!   `dbus_connection_read_write`, which a disconnect on another thread cannot turn into a
//!   use of a freed watch.
//! * **Ownership.** dbus-gmain's setup borrows the connection and libdbus frees it with the
//!   connection. A [`GlibAttachment`] owns a handle of the source, so a setup kept in the
//!   source's own slot keeps the source alive: [`tear_down`] takes it out (here, when the
//!   connection has disconnected).
//!
//! The program: a `dbus::Server` on a service context iterated by a thread of its own, and a
//! client connection set up on context A, iterated by the main thread; checked method calls
//! on A; the #30574 move attempted from a reply notification (refused, nothing changed); the
//! client moved to context B between iterations, with checked calls there; set up on B
//! again (nothing to do); moved back to A while a call is pending (its timeout moves too);
//! then disconnected, and the server's end torn down. Any failure exits non-zero.
//!
//! ```sh
//! cargo run --example gmain_port --features dbus,glib
//! ```

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use glib::{ControlFlow, MainContext};
use libdbus_sys as sys;
use loopglue::adapters::glib::{GlibAttachment, GlibGlue};
use loopglue::dbus::{Connection, Server};
use loopglue::Source;

/// How long anything may take before the program calls it a hang.
const DEADLINE: Duration = Duration::from_secs(30);
const IFACE: &str = "org.loopglue.GmainPort";
const PATH: &str = "/org/loopglue/GmainPort";

// ---- dbus-gmain, ported ------------------------------------------------------------------

/// dbus-gmain's `ConnectionSetup`, kept in the source's data slot (its
/// `_dbus_gmain_connection_slot` / `server_slot`). The C struct's `ios`, `timeouts` and
/// `message_queue_source` live inside the attachment's glue; `connection` is the attachment's
/// source.
struct Setup {
    context: MainContext,
    glue: GlibGlue,
    /// `None` once torn down.
    attachment: Mutex<Option<GlibAttachment>>,
}

/// What a set-up call did.
#[derive(Debug, PartialEq, Eq)]
enum SetUp {
    /// First setup: `connection_setup_new`.
    Attached,
    /// Set up on another context before: `connection_setup_new_from_old`.
    Moved,
    /// Already set up on this context: the C function returns without doing anything.
    Unchanged,
}

/// `dbus_gmain_set_up_connection` (dbus-glib's `dbus_connection_setup_with_g_main`).
///
/// # Errors
///
/// The adapter's, when the glue cannot be installed; and `Error::Reentrant` (as an
/// `io::Error`) when called from inside one of the connection's own libdbus call-outs — a
/// message handler or pending-call notification included — in which case nothing changed.
fn connection_setup_with_g_main(
    connection: &Connection,
    context: &MainContext,
) -> std::io::Result<SetUp> {
    set_up(connection, context)
}

/// `dbus_gmain_set_up_server` (dbus-glib's `dbus_server_setup_with_g_main`).
///
/// # Errors
///
/// As [`connection_setup_with_g_main`].
fn server_setup_with_g_main(server: &Server, context: &MainContext) -> std::io::Result<SetUp> {
    set_up(server, context)
}

/// The body both C entry points share.
fn set_up<S: Source + Clone + 'static>(
    source: &S,
    context: &MainContext,
) -> std::io::Result<SetUp> {
    // `old_setup = dbus_connection_get_data (connection, _dbus_gmain_connection_slot)`
    let old = source.data().get::<Setup>();
    let outcome = match &old {
        Some(old) if old.context == *context => {
            if old.attachment.lock().unwrap().is_some() {
                return Ok(SetUp::Unchanged);
            }
            SetUp::Attached // torn down before: set up afresh
        }
        Some(old) => {
            // `connection_setup_new_from_old`, then the old setup is dropped. The C code
            // builds the new setup first and lets `dbus_*_set_watch_functions` swap them; a
            // loopglue source runs on one glue at a time, so the old one goes first.
            // Detaching is the step that can be refused, and a refusal hands the attachment
            // back untouched.
            let mut slot = old.attachment.lock().unwrap();
            if let Some(attachment) = slot.take() {
                if let Err((attachment, error)) = attachment.detach() {
                    *slot = Some(attachment);
                    return Err(error);
                }
            }
            SetUp::Moved
        }
        None => SetUp::Attached,
    };
    // `connection_setup_new` + `dbus_connection_set_data` + the four `dbus_connection_set_*`
    // calls: one attach installs the watch, timeout, wakeup and dispatch-status functions,
    // replays every existing `DBusWatch` and `DBusTimeout` to the new context, and reads the
    // dispatch status once (the message-queue source's first `prepare`).
    let glue = GlibGlue::new(context);
    let attachment = glue.attach(Arc::new(source.clone()))?;
    source.data().set(Setup {
        context: context.clone(),
        glue,
        attachment: Mutex::new(Some(attachment)),
    });
    Ok(outcome)
}

/// `connection_setup_free`: every `GSource` of the source is destroyed before this returns.
/// dbus-gmain runs it when libdbus finalizes the connection; here the setup owns a handle of
/// the source, so the program calls it — from the loop, not from inside a handler (where the
/// detach would be refused just like a move).
fn tear_down(source: &dyn Source) -> std::io::Result<()> {
    let Some(setup) = source.data().take::<Setup>() else {
        return Ok(());
    };
    let attachment = setup.attachment.lock().unwrap().take();
    match attachment.map(GlibAttachment::detach) {
        Some(Err((attachment, error))) => {
            *setup.attachment.lock().unwrap() = Some(attachment);
            source.data().replace(setup);
            Err(error)
        }
        _ => Ok(()),
    }
}

/// The glue a source's setup runs on, for the checks below.
fn glue_of(source: &dyn Source) -> Option<GlibGlue> {
    source.data().get::<Setup>().map(|setup| setup.glue.clone())
}

// ---- messages, with libdbus as a C program would use it --------------------------------

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

/// `Ping(u) -> u+1`, sent with a pending call whose notification stores the answer.
struct Client {
    connection: Connection,
    replies: Replies,
    disconnected: Arc<AtomicBool>,
}

/// Answers by call serial.
type Replies = Arc<Mutex<HashMap<u32, Result<u32, String>>>>;

/// What a pending call's notification needs.
struct Waiting {
    replies: Replies,
    serial: u32,
    /// Runs inside the notification (inside `dbus_connection_dispatch`).
    then: Option<Box<dyn FnOnce() + Send>>,
}

/// # Safety
///
/// `message` is a live message.
unsafe fn first_u32(message: *mut sys::DBusMessage) -> Option<u32> {
    let mut iter: sys::DBusMessageIter = std::mem::zeroed();
    if sys::dbus_message_iter_init(message, &mut iter) == 0
        || sys::dbus_message_iter_get_arg_type(&mut iter) != sys::DBUS_TYPE_UINT32
    {
        return None;
    }
    let mut n = 0u32;
    sys::dbus_message_iter_get_basic(&mut iter, (&mut n as *mut u32).cast());
    Some(n)
}

/// # Safety
///
/// `message` is a live message being built.
unsafe fn append_u32(message: *mut sys::DBusMessage, n: u32) -> bool {
    let mut iter: sys::DBusMessageIter = std::mem::zeroed();
    sys::dbus_message_iter_init_append(message, &mut iter);
    sys::dbus_message_iter_append_basic(&mut iter, sys::DBUS_TYPE_UINT32, (&n as *const u32).cast())
        != 0
}

/// # Safety
///
/// `p` is null or a C string.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// # Safety
///
/// `message` is a live message.
unsafe fn is_disconnected(message: *mut sys::DBusMessage) -> bool {
    let (iface, member) = (c("org.freedesktop.DBus.Local"), c("Disconnected"));
    sys::dbus_message_is_signal(message, iface.as_ptr(), member.as_ptr()) != 0
}

extern "C" fn reply_ready(pending: *mut sys::DBusPendingCall, data: *mut c_void) {
    // SAFETY: `data` is the Box<Waiting> set in `Client::ping`, freed by `free_waiting`; the
    // pending call is live for this call. The closure cannot panic across this C frame: it
    // only records.
    unsafe {
        let waiting = &mut *data.cast::<Waiting>();
        let reply = sys::dbus_pending_call_steal_reply(pending);
        let answer = if reply.is_null() {
            Err("no reply".to_string())
        } else if sys::dbus_message_get_type(reply) == 3 {
            Err(text(loopglue::dbus::ffi::dbus_message_get_error_name(
                reply,
            )))
        } else {
            first_u32(reply).ok_or_else(|| "reply without a number".to_string())
        };
        if !reply.is_null() {
            sys::dbus_message_unref(reply);
        }
        waiting
            .replies
            .lock()
            .unwrap()
            .insert(waiting.serial, answer);
        if let Some(then) = waiting.then.take() {
            then();
        }
    }
}

extern "C" fn free_waiting(data: *mut c_void) {
    // SAFETY: the box made in `Client::ping`, handed to libdbus once.
    drop(unsafe { Box::from_raw(data.cast::<Waiting>()) });
}

extern "C" fn client_filter(
    _: *mut sys::DBusConnection,
    message: *mut sys::DBusMessage,
    data: *mut c_void,
) -> sys::DBusHandlerResult {
    // SAFETY: `data` is the AtomicBool leaked in `Client::new`, freed by `free_flag`.
    let disconnected = unsafe { &*data.cast::<AtomicBool>() };
    // SAFETY: a live message.
    if unsafe { is_disconnected(message) } {
        disconnected.store(true, Ordering::SeqCst);
        return sys::DBusHandlerResult::Handled;
    }
    sys::DBusHandlerResult::NotYetHandled
}

extern "C" fn free_flag(data: *mut c_void) {
    // SAFETY: the Arc leaked in `Client::new` (or `serve`), released once.
    drop(unsafe { Arc::from_raw(data.cast::<AtomicBool>()) });
}

impl Client {
    fn new(connection: Connection) -> Result<Client, String> {
        let disconnected = Arc::new(AtomicBool::new(false));
        let data = Arc::into_raw(Arc::clone(&disconnected)).cast_mut().cast();
        // SAFETY: a live connection; libdbus frees the data with `free_flag`.
        let added = unsafe {
            sys::dbus_connection_add_filter(
                connection.as_ptr(),
                Some(client_filter),
                data,
                Some(free_flag),
            )
        };
        if added == 0 {
            return Err("dbus_connection_add_filter: no memory".into());
        }
        Ok(Client {
            connection,
            replies: Arc::default(),
            disconnected,
        })
    }

    /// Sends `Ping(n)`; `then` runs inside the reply's notification.
    fn ping(&self, n: u32, then: Option<Box<dyn FnOnce() + Send>>) -> Result<u32, String> {
        let (path, iface, member) = (c(PATH), c(IFACE), c("Ping"));
        // SAFETY: valid C strings, a live connection, a fresh message; the waiting box is
        // handed to libdbus with its free function.
        unsafe {
            let message = sys::dbus_message_new_method_call(
                std::ptr::null(),
                path.as_ptr(),
                iface.as_ptr(),
                member.as_ptr(),
            );
            if message.is_null() || !append_u32(message, n) {
                return Err("building a message: no memory".into());
            }
            let mut pending = std::ptr::null_mut();
            let sent = sys::dbus_connection_send_with_reply(
                self.connection.as_ptr(),
                message,
                &mut pending,
                -1,
            );
            let serial = sys::dbus_message_get_serial(message);
            sys::dbus_message_unref(message);
            if sent == 0 || pending.is_null() {
                return Err("dbus_connection_send_with_reply failed (disconnected?)".into());
            }
            let waiting = Box::into_raw(Box::new(Waiting {
                replies: Arc::clone(&self.replies),
                serial,
                then,
            }));
            let set = sys::dbus_pending_call_set_notify(
                pending,
                Some(reply_ready),
                waiting.cast(),
                Some(free_waiting),
            );
            // The notification holds what it needs; libdbus keeps the call.
            sys::dbus_pending_call_unref(pending);
            if set == 0 {
                return Err("dbus_pending_call_set_notify: no memory".into());
            }
            Ok(serial)
        }
    }

    fn reply(&self, serial: u32) -> Option<Result<u32, String>> {
        self.replies.lock().unwrap().get(&serial).cloned()
    }
}

/// The service's filter: answers `Ping(u) -> u+1` and records the disconnect.
extern "C" fn service_filter(
    connection: *mut sys::DBusConnection,
    message: *mut sys::DBusMessage,
    data: *mut c_void,
) -> sys::DBusHandlerResult {
    // SAFETY: `data` is the AtomicBool leaked in `serve`, freed by `free_flag`; the message
    // and the connection are live for this call.
    unsafe {
        if is_disconnected(message) {
            (*data.cast::<AtomicBool>()).store(true, Ordering::SeqCst);
            return sys::DBusHandlerResult::Handled;
        }
        let (iface, member) = (c(IFACE), c("Ping"));
        if sys::dbus_message_is_method_call(message, iface.as_ptr(), member.as_ptr()) == 0 {
            return sys::DBusHandlerResult::NotYetHandled;
        }
        let n = first_u32(message).unwrap_or(0);
        let reply = sys::dbus_message_new_method_return(message);
        if reply.is_null() || !append_u32(reply, n.wrapping_add(1)) {
            return sys::DBusHandlerResult::NeedMemory;
        }
        sys::dbus_connection_send(connection, reply, std::ptr::null_mut());
        sys::dbus_message_unref(reply);
        sys::DBusHandlerResult::Handled
    }
}

// ---- the program --------------------------------------------------------------------------

/// Iterates `context` until `done` holds; a hang is an error. A 50 ms tick on the context
/// wakes the blocking iteration so the deadline is checked.
fn iterate_until(
    context: &MainContext,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let tick =
        glib::timeout_source_new(Duration::from_millis(50), None, glib::Priority::LOW, || {
            ControlFlow::Continue
        });
    tick.attach(Some(context));
    let start = Instant::now();
    let outcome = loop {
        if done() {
            break Ok(());
        }
        if start.elapsed() > DEADLINE {
            break Err(format!("timed out waiting for {what}"));
        }
        context.iteration(true);
    };
    tick.destroy();
    outcome
}

/// A checked round trip on whatever context the client is set up on now.
fn call(client: &Client, context: &MainContext, n: u32) -> Result<(), String> {
    let serial = client.ping(n, None)?;
    iterate_until(context, "a reply", || client.reply(serial).is_some())?;
    match client.reply(serial) {
        Some(Ok(m)) if m == n + 1 => Ok(()),
        other => Err(format!("Ping({n}) answered {other:?}")),
    }
}

/// An accepted connection and the flag its filter raises on `Disconnected`.
type Accepted = (Connection, Arc<AtomicBool>);

/// The service: a `DBusServer` and the connections it accepts, on a context of their own
/// iterated by this thread until `stop`. Accepted connections that disconnect are torn down
/// from the loop (not from inside their filter, where the detach would be refused).
fn serve(
    context: MainContext,
    ready: mpsc::Sender<Result<Server, String>>,
    torn: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
) -> Result<usize, String> {
    let server = Server::listen("unix:tmpdir=/tmp").map_err(|e| format!("listen: {e}"))?;
    let accepted: Arc<Mutex<Vec<Accepted>>> = Arc::default();
    let (sink, service_context) = (Arc::clone(&accepted), context.clone());
    server.set_new_connection_function(move |connection: Connection| {
        let gone = Arc::new(AtomicBool::new(false));
        let data = Arc::into_raw(Arc::clone(&gone)).cast_mut().cast();
        // SAFETY: a live connection; libdbus frees the data with `free_flag`.
        let filtered = unsafe {
            sys::dbus_connection_add_filter(
                connection.as_ptr(),
                Some(service_filter),
                data,
                Some(free_flag),
            )
        };
        // A C server sets each new connection up inside this callback; so does the port.
        match connection_setup_with_g_main(&connection, &service_context) {
            Ok(_) if filtered != 0 => sink.lock().unwrap().push((connection, gone)),
            Ok(_) => eprintln!("service: no memory for a filter; dropping the connection"),
            Err(e) => eprintln!("service: cannot set a new connection up: {e}"),
        }
    });
    server_setup_with_g_main(&server, &context).map_err(|e| format!("set up the server: {e}"))?;
    let _ = ready.send(Ok(server.clone()));

    let mut torn_down = 0;
    let tick =
        glib::timeout_source_new(Duration::from_millis(50), None, glib::Priority::LOW, || {
            ControlFlow::Continue
        });
    tick.attach(Some(&context));
    while !stop.load(Ordering::SeqCst) {
        context.iteration(true);
        let ended: Vec<_> = {
            let mut accepted = accepted.lock().unwrap();
            let (ended, live) = accepted
                .drain(..)
                .partition(|(_, gone)| gone.load(Ordering::SeqCst));
            *accepted = live;
            ended
        };
        for (connection, _) in ended {
            tear_down(&connection).map_err(|e| format!("tear down a connection: {e}"))?;
            torn_down += 1; // the last handle goes here: the bridge closes its end
            let _ = torn.send(());
        }
    }
    tick.destroy();
    for (connection, _) in accepted.lock().unwrap().drain(..) {
        tear_down(&connection).map_err(|e| format!("tear down a connection: {e}"))?;
    }
    server.disconnect();
    tear_down(&server).map_err(|e| format!("tear down the server: {e}"))?;
    Ok(torn_down)
}

fn run() -> Result<String, String> {
    let service_context = MainContext::new();
    let (ready, server) = mpsc::channel();
    let (torn, torn_down) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let service = {
        let (context, stop) = (service_context.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let outcome = serve(context, ready.clone(), torn, stop);
            if let Err(e) = &outcome {
                let _ = ready.send(Err(e.clone()));
            }
            outcome
        })
    };
    let server = server
        .recv_timeout(DEADLINE)
        .map_err(|_| "the service did not start".to_string())??;
    let outcome = client_side(&server.address()).and_then(|report| {
        // The service saw the client's disconnect and tore its end down.
        torn_down
            .recv_timeout(DEADLINE)
            .map(|()| report)
            .map_err(|_| "the service never tore the disconnected connection down".to_string())
    });
    stop.store(true, Ordering::SeqCst);
    service_context.wakeup();
    let torn_down = service
        .join()
        .map_err(|_| "the service thread panicked".to_string())??;
    let report = outcome?;
    if torn_down != 1 {
        return Err(format!(
            "the service tore down {torn_down} disconnected connections, not 1"
        ));
    }
    Ok(report)
}

fn client_side(address: &str) -> Result<String, String> {
    let (a, b) = (MainContext::new(), MainContext::new());
    let client = Client::new(Connection::open_private(address).map_err(|e| format!("{e}"))?)?;
    // SAFETY: this thread is the only one that uses the client: it sends, calls, closes and
    // drops it, and it iterates both contexts the client runs on. So no disconnect can
    // happen elsewhere while a watch handler runs, and the bridge may call
    // `dbus_watch_handle` on the client's watches, as dbus-gmain does.
    unsafe { client.connection.assume_loop_thread_only() };

    // dbus_connection_setup_with_g_main (connection, A)
    let first = connection_setup_with_g_main(&client.connection, &a)
        .map_err(|e| format!("set up on A: {e}"))?;
    check(first == SetUp::Attached, "the first setup attaches")?;
    for n in 0..100 {
        call(&client, &a, n)?;
    }

    // fd.o #30574: move from inside a reply notification. Refused, and nothing changes.
    let attempt: Arc<Mutex<Option<std::io::Result<SetUp>>>> = Arc::default();
    let (tried, connection, to) = (Arc::clone(&attempt), client.connection.clone(), b.clone());
    let serial = client.ping(
        1000,
        Some(Box::new(move || {
            let outcome = connection_setup_with_g_main(&connection, &to);
            *tried.lock().unwrap() = Some(outcome);
        })),
    )?;
    iterate_until(&a, "the reply whose notification moves", || {
        client.reply(serial).is_some()
    })?;
    check(
        client.reply(serial) == Some(Ok(1001)),
        "the notified call was answered",
    )?;
    let refused = attempt.lock().unwrap().take();
    check(
        matches!(&refused, Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput),
        &format!("a move from inside a message handler is refused (got {refused:?})"),
    )?;
    let glue_a = glue_of(&client.connection).ok_or("the setup is in the slot")?;
    check(
        glue_a.context() == &a && glue_a.sources() == 1,
        "the refused move left the client on A",
    )?;
    call(&client, &a, 2000)?;

    // The move, from the loop: dbus_connection_setup_with_g_main (connection, B).
    let moved = connection_setup_with_g_main(&client.connection, &b)
        .map_err(|e| format!("move to B: {e}"))?;
    check(moved == SetUp::Moved, "moving reports a move")?;
    check(
        glue_a.sources() == 0 && glue_a.registered_fds() == 0 && glue_a.armed_timeouts() == 0,
        "nothing of the client is left on A",
    )?;
    for n in 3000..3100 {
        call(&client, &b, n)?;
    }
    // Set up again on the context it is on: nothing to do (as in C).
    let again = connection_setup_with_g_main(&client.connection, &b)
        .map_err(|e| format!("set up on B again: {e}"))?;
    check(
        again == SetUp::Unchanged,
        "a second setup on B does nothing",
    )?;

    // Back to A with a call in flight (#30574's `switch_after_send`): its pending call's
    // timeout moves with it, and the reply is read on A.
    let serial = client.ping(4000, None)?;
    let back = connection_setup_with_g_main(&client.connection, &a)
        .map_err(|e| format!("move back to A: {e}"))?;
    check(back == SetUp::Moved, "moving back reports a move")?;
    let glue_a = glue_of(&client.connection).ok_or("the setup is in the slot")?;
    check(
        glue_a.armed_timeouts() >= 1,
        "the pending call's timeout is armed on A",
    )?;
    iterate_until(&a, "the reply after the move", || {
        client.reply(serial).is_some()
    })?;
    check(
        client.reply(serial) == Some(Ok(4001)),
        "the call sent before the move was answered after it",
    )?;

    // Disconnect: the client closes; its Disconnected arrives through the glue.
    client.connection.close();
    iterate_until(&a, "the client's Disconnected", || {
        client.disconnected.load(Ordering::SeqCst)
    })?;
    tear_down(&client.connection).map_err(|e| format!("tear down the client: {e}"))?;
    check(glue_a.sources() == 0, "the client's setup is gone")?;
    Ok(
        "gmain_port: 203 calls checked on two contexts, a refused move from a handler, \
        two moves (one with a call in flight), disconnect"
            .to_string(),
    )
}

fn check(holds: bool, what: &str) -> Result<(), String> {
    if holds {
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gmain_port failed: {e}");
            ExitCode::FAILURE
        }
    }
}
