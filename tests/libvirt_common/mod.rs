//! The real-libvirt scenarios, shared by one test binary per loop (libvirt takes one event
//! implementation per process, so each loop needs a process of its own).
//!
//! Adding a loop is a few lines: a `tests/libvirt_<loop>.rs` whose one test implements
//! [`LoopUnderTest`] for it and calls [`run_all`], and a `[[test]]` entry with
//! `required-features = ["libvirt", "<loop feature>"]` in Cargo.toml. See
//! `tests/libvirt_main_loop.rs`. A binary with several tests (one loop in two
//! configurations) runs each in a process of its own with [`in_own_process`]; a loop that
//! cannot count the callbacks of an iteration sees the table through [`CountingTable`].
#![allow(dead_code)]

pub mod ffi;

use std::cell::Cell;
use std::ffi::{c_int, c_void, CString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::handles::HandleTable;
use loopglue::libvirt::{self, RegisterError};
use loopglue::{
    DispatchStatus, DispatchStatusFn, SetFunctionsError, Source, SourceData, TimeoutFunctions,
    WakeupFn, WatchFunctions,
};

use ffi::*;

/// A loop the scenarios drive: attach the table, then turn the loop one iteration at a time.
pub trait LoopUnderTest {
    /// For messages.
    fn name(&self) -> &'static str;
    /// Runs `table` on this loop (what an application does once at start-up).
    fn attach(&mut self, table: &HandleTable);
    /// Runs one iteration, waiting at most `max` for something to happen; returns how many
    /// callbacks ran (a loop that cannot count them: how many times the table was
    /// dispatched, which it is in every iteration in which any of its callbacks ran — see
    /// [`CountingTable`]).
    fn turn(&mut self, max: Duration) -> usize;
    /// The CPU time used so far by the threads the loop runs callbacks on; the default is
    /// this thread's, right for a loop turned on the test thread.
    fn cpu_time(&self) -> Duration {
        thread_cpu_time()
    }
}

/// Every wait is bounded, so a hang fails the test instead of stalling CI.
pub const BOUND: Duration = Duration::from_secs(60);

/// Turns the loop until `done`, failing after [`BOUND`]; returns how many turns it took.
pub fn run_until(lp: &mut dyn LoopUnderTest, what: &str, mut done: impl FnMut() -> bool) -> u64 {
    let deadline = Instant::now() + BOUND;
    let mut turns = 0;
    while !done() {
        let now = Instant::now();
        assert!(
            now < deadline,
            "{}: timed out waiting for {what}",
            lp.name()
        );
        lp.turn((deadline - now).min(Duration::from_secs(1)));
        turns += 1;
    }
    turns
}

/// The CPU time this thread has used: the loop's, since the loop runs on the test thread.
pub fn thread_cpu_time() -> Duration {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// Registers a fresh table on `lp` and runs every scenario, in one process.
pub fn run_all(mut lp: impl LoopUnderTest) {
    let table = HandleTable::new();
    lp.attach(&table);
    libvirt::register(table.clone()).expect("the first registration");
    assert!(libvirt::is_registered());
    assert_eq!(
        libvirt::register(HandleTable::new()),
        Err(RegisterError::AlreadyRegistered)
    );
    handle_removing_itself(&mut lp, &table);
    free_function_runs_outside_the_removal(&mut lp, &table);
    in_process_lifecycle(&mut lp, &table, 1000);
    remote_lifecycle_then_close(&mut lp, &table, 1000);
}

/// What a handle registered through libvirt's public API saw.
#[derive(Default)]
struct Probe {
    watch: AtomicI32,
    fd: AtomicI32,
    fired: AtomicUsize,
    /// The removal from inside the callback returned 0, and a second one -1.
    removals_ok: AtomicUsize,
    freed: AtomicUsize,
    /// Held by the remover, and taken by the free function, as libvirt's socket does.
    lock: Mutex<()>,
    /// The free function ran inside `virEventRemoveHandle`, on the removing thread.
    freed_inside_removal: AtomicUsize,
}

thread_local! {
    /// This thread is inside a `virEventRemoveHandle` of the test's, holding `Probe::lock`.
    static REMOVING: Cell<bool> = const { Cell::new(false) };
}

unsafe extern "C" fn probe_remove_self(
    watch: c_int,
    fd: c_int,
    _events: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: the opaque is the `Arc<Probe>` given at registration, alive until `probe_free`.
    let probe = unsafe { &*(opaque as *const Probe) };
    let mut byte = [0u8; 1];
    // SAFETY: `fd` is the probe's open socket; the read borrows it for one call.
    let mut stream = std::mem::ManuallyDrop::new(unsafe {
        <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    let _ = stream.read(&mut byte);
    probe.fired.fetch_add(1, Ordering::SeqCst);
    // SAFETY: plain libvirt calls with an int.
    let (first, second) = unsafe { (virEventRemoveHandle(watch), virEventRemoveHandle(watch)) };
    if (first, second) == (0, -1) {
        probe.removals_ok.fetch_add(1, Ordering::SeqCst);
    }
}

unsafe extern "C" fn probe_ignore(_watch: c_int, _fd: c_int, _events: c_int, _opaque: *mut c_void) {
}

unsafe extern "C" fn probe_free(opaque: *mut c_void) {
    // SAFETY: the `Arc<Probe>` leaked at registration; this is its one free.
    let probe = unsafe { Arc::from_raw(opaque as *const Probe) };
    if REMOVING.with(Cell::get) {
        // Taking the lock here would self-deadlock, as libvirt's socket free function does.
        probe.freed_inside_removal.fetch_add(1, Ordering::SeqCst);
    } else {
        // On a loop with threads of its own this may wait for the remover to let go.
        drop(probe.lock.lock().unwrap());
    }
    probe.freed.fetch_add(1, Ordering::SeqCst);
}

fn add_probe(probe: &Arc<Probe>, fd: c_int, cb: HandleCallback) -> c_int {
    let opaque = Arc::into_raw(Arc::clone(probe)) as *mut c_void;
    // SAFETY: a valid fd, callback and free function; the opaque is freed by `probe_free`.
    let watch = unsafe {
        virEventAddHandle(
            fd,
            VIR_EVENT_HANDLE_READABLE,
            Some(cb),
            opaque,
            Some(probe_free),
        )
    };
    assert!(watch > 0, "virEventAddHandle: {}", last_error());
    probe.watch.store(watch, Ordering::SeqCst);
    probe.fd.store(fd, Ordering::SeqCst);
    watch
}

/// A libvirt callback that calls `virEventRemoveHandle` on its own handle: runs once, the
/// second removal is refused, and the free function runs once, afterwards.
fn handle_removing_itself(lp: &mut dyn LoopUnderTest, table: &HandleTable) {
    let before = table.handles();
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let probe = Arc::new(Probe::default());
    add_probe(&probe, ours.as_raw_fd(), probe_remove_self);
    assert_eq!(table.handles(), before + 1);
    theirs.write_all(b"xx").unwrap();
    run_until(lp, "the probe's callback", || {
        probe.fired.load(Ordering::SeqCst) == 1
    });
    run_until(lp, "the probe's free function", || {
        probe.freed.load(Ordering::SeqCst) == 1
    });
    lp.turn(Duration::ZERO);
    assert_eq!(
        probe.fired.load(Ordering::SeqCst),
        1,
        "called after removing itself"
    );
    assert_eq!(probe.removals_ok.load(Ordering::SeqCst), 1);
    assert_eq!(probe.freed.load(Ordering::SeqCst), 1);
    assert_eq!((table.handles(), table.retired()), (before, 0));
}

/// libvirt removes a socket's handle with the socket's lock held, and the socket's free
/// function takes that lock: the free function must run later, not inside the removal. (On a
/// loop whose callbacks run on other threads it may run while the remover still holds the
/// lock; it then waits for it, as libvirt's would.)
fn free_function_runs_outside_the_removal(lp: &mut dyn LoopUnderTest, table: &HandleTable) {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let probe = Arc::new(Probe::default());
    let watch = add_probe(&probe, ours.as_raw_fd(), probe_ignore);
    {
        let _held = probe.lock.lock().unwrap();
        REMOVING.with(|removing| removing.set(true));
        // SAFETY: removing the handle just added.
        let removed = unsafe { virEventRemoveHandle(watch) };
        REMOVING.with(|removing| removing.set(false));
        assert_eq!(removed, 0);
    }
    run_until(lp, "the free function", || {
        probe.freed.load(Ordering::SeqCst) == 1
    });
    assert_eq!(
        probe.freed_inside_removal.load(Ordering::SeqCst),
        0,
        "freed inside the removal"
    );
    run_until(lp, "the table's frees", || table.retired() == 0);
}

/// A connection with a lifecycle callback recording every event.
pub struct Connection {
    pub conn: virConnectPtr,
    pub events: Arc<Mutex<Vec<c_int>>>,
    callback: c_int,
    /// The close callback's reason, -1 until it is called.
    pub closed: Arc<AtomicI32>,
}

unsafe extern "C" fn on_lifecycle(
    _conn: virConnectPtr,
    _dom: virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: the `Arc<Mutex<Vec>>` leaked at registration, freed by `free_events`.
    let events = unsafe { &*(opaque as *const Mutex<Vec<c_int>>) };
    events.lock().unwrap().push(event);
    0
}

unsafe extern "C" fn free_events(opaque: *mut c_void) {
    // SAFETY: the one free of the `Arc` leaked at registration.
    drop(unsafe { Arc::from_raw(opaque as *const Mutex<Vec<c_int>>) });
}

unsafe extern "C" fn on_close(_conn: virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: the `Arc<AtomicI32>` leaked at registration, freed by `free_closed`.
    let closed = unsafe { &*(opaque as *const AtomicI32) };
    closed.store(reason, Ordering::SeqCst);
}

unsafe extern "C" fn free_closed(opaque: *mut c_void) {
    // SAFETY: the one free of the `Arc` leaked at registration.
    drop(unsafe { Arc::from_raw(opaque as *const AtomicI32) });
}

impl Connection {
    /// Opens `uri` and registers the lifecycle callback (and the close callback).
    pub fn open(uri: &str) -> Connection {
        let name = CString::new(uri).unwrap();
        // SAFETY: a NUL-terminated URI.
        let conn = unsafe { virConnectOpen(name.as_ptr()) };
        assert!(!conn.is_null(), "virConnectOpen({uri}): {}", last_error());
        let events = Arc::new(Mutex::new(Vec::new()));
        let opaque = Arc::into_raw(Arc::clone(&events)) as *mut c_void;
        // SAFETY: the lifecycle callback cast to the generic type, as VIR_DOMAIN_EVENT_CALLBACK
        // does in C; libvirt calls it with the lifecycle signature for this event id.
        let callback = unsafe {
            let generic: GenericCallback = std::mem::transmute(on_lifecycle as LifecycleCallback);
            virConnectDomainEventRegisterAny(
                conn,
                std::ptr::null_mut(),
                VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                Some(generic),
                opaque,
                Some(free_events),
            )
        };
        assert!(
            callback >= 0,
            "virConnectDomainEventRegisterAny: {}",
            last_error()
        );
        let closed = Arc::new(AtomicI32::new(-1));
        let opaque = Arc::into_raw(Arc::clone(&closed)) as *mut c_void;
        // SAFETY: a live connection, a close callback and its free function.
        let rc = unsafe {
            virConnectRegisterCloseCallback(conn, Some(on_close), opaque, Some(free_closed))
        };
        if rc < 0 {
            // The in-process driver has no close callbacks; nothing was registered.
            // SAFETY: the one free of the Arc just leaked.
            unsafe { free_closed(opaque) };
        }
        Connection {
            conn,
            events,
            callback,
            closed,
        }
    }

    /// Creates and destroys a transient domain `n` times, turning the loop after each cycle
    /// until its STARTED and STOPPED events have arrived — the anchor's workload.
    pub fn cycles(&self, lp: &mut dyn LoopUnderTest, n: usize) {
        let xml = CString::new(
            "<domain type='test'><name>loopglue</name><memory>8192</memory>\
             <os><type>hvm</type></os></domain>",
        )
        .unwrap();
        let start = self.events.lock().unwrap().len();
        for i in 0..n {
            // SAFETY: a live connection and a NUL-terminated XML.
            let dom = unsafe { virDomainCreateXML(self.conn, xml.as_ptr(), 0) };
            assert!(!dom.is_null(), "virDomainCreateXML: {}", last_error());
            // SAFETY: the domain just created, freed once.
            unsafe {
                assert_eq!(
                    virDomainDestroy(dom),
                    0,
                    "virDomainDestroy: {}",
                    last_error()
                );
                virDomainFree(dom);
            }
            let want = start + 2 * (i + 1);
            run_until(lp, "lifecycle events", || {
                self.events.lock().unwrap().len() >= want
            });
        }
    }

    /// Deregisters the lifecycle callback and closes the connection.
    pub fn close(self) {
        // SAFETY: the callback id and connection from `open`, each released once.
        unsafe {
            virConnectDomainEventDeregisterAny(self.conn, self.callback);
            virConnectClose(self.conn);
        }
    }
}

fn assert_in_order(events: &[c_int], n: usize) {
    assert_eq!(events.len(), 2 * n, "every event arrives, once");
    for (i, pair) in events.chunks(2).enumerate() {
        assert_eq!(
            pair,
            [VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STOPPED],
            "cycle {i} out of order"
        );
    }
}

/// The in-process test driver: every STARTED and STOPPED event of `n` cycles, in order,
/// delivered through the table (its event queue runs on a timer updated to 0 and -1).
fn in_process_lifecycle(lp: &mut dyn LoopUnderTest, table: &HandleTable, n: usize) {
    let handles = table.handles();
    let conn = Connection::open("test:///default");
    conn.cycles(lp, n);
    assert_in_order(&conn.events.lock().unwrap(), n);
    conn.close();
    run_until(lp, "the connection's frees", || table.retired() == 0);
    assert_eq!(table.handles(), handles, "a handle leaked");
}

/// A private libvirtd with only the built-in test driver, on a socket in a fresh directory —
/// what the anchor start_libvirtd.sh starts.
pub struct Daemon {
    child: Child,
    dir: PathBuf,
    pub uri: String,
}

impl Daemon {
    pub fn start() -> Daemon {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "loopglue-libvirtd-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sock")).unwrap();
        fs::create_dir_all(dir.join("empty")).unwrap();
        let config = dir.join("libvirtd.conf");
        fs::write(
            &config,
            format!(
                "unix_sock_dir = \"{}\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n\
                 unix_sock_rw_perms = \"0777\"\n",
                dir.join("sock").display()
            ),
        )
        .unwrap();
        let program = ["/usr/sbin/libvirtd", "libvirtd"]
            .into_iter()
            .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
            .unwrap();
        let log = fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(program)
            .arg("--config")
            .arg(&config)
            .arg("--pid-file")
            .arg(dir.join("pid"))
            .env("LIBVIRT_DRIVER_DIR", dir.join("empty"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("libvirtd (apt-get install libvirt-daemon)");
        let socket = dir.join("sock").join("libvirt-sock");
        let mut daemon = Daemon {
            child,
            uri: format!("test+unix:///default?socket={}", socket.display()),
            dir,
        };
        // Readiness of another process: poll for its socket to accept, bounded. The pause
        // only paces the polling; nothing depends on its length.
        let deadline = Instant::now() + BOUND;
        while UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("libvirtd exited with {status}: {}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd did not start: {}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// SIGKILL: the connection sees its socket hang up, with no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The remote driver through a private libvirtd: the same events arrive through the socket's
/// handle; then the daemon is killed, and the connection's close callback runs — with no hang,
/// no spin (a bounded number of loop turns and bounded CPU time) and no leaked handle.
fn remote_lifecycle_then_close(lp: &mut dyn LoopUnderTest, table: &HandleTable, n: usize) {
    let handles = table.handles();
    let timers = table.timers();
    let mut daemon = Daemon::start();
    let conn = Connection::open(&daemon.uri);
    assert!(
        table.handles() > handles,
        "the socket is watched through the table"
    );
    conn.cycles(lp, n);
    assert_in_order(&conn.events.lock().unwrap(), n);

    daemon.kill();
    let cpu = lp.cpu_time();
    let turns = run_until(lp, "the close callback", || {
        conn.closed.load(Ordering::SeqCst) >= 0
    });
    let cpu = lp.cpu_time() - cpu;
    let reason = conn.closed.load(Ordering::SeqCst);
    assert!(
        [VIR_CONNECT_CLOSE_REASON_EOF, VIR_CONNECT_CLOSE_REASON_ERROR].contains(&reason),
        "close reason {reason}"
    );
    // A loop spinning on the hung-up socket would turn (and burn CPU) until the deadline.
    assert!(turns < 1000, "{turns} turns to notice the hang-up");
    assert!(
        cpu < Duration::from_secs(5),
        "{cpu:?} of CPU to notice the hang-up"
    );

    // The socket's handle is gone as soon as the close is seen; the rest once the connection
    // is released.
    assert_eq!(table.handles(), handles, "the socket's handle leaked");
    assert_idle(lp, "after the close callback");
    conn.close();
    run_until(lp, "the connection's frees", || table.retired() == 0);
    assert_eq!(
        (table.handles(), table.timers()),
        (handles, timers),
        "leaked"
    );
    assert_idle(lp, "after the connection is released");
}

/// Nothing left to do: over a quiet window the loop waits in every turn, runs no callback and
/// burns no CPU. (Load can only make the turns fewer and the CPU time smaller, so these
/// bounds cannot fail falsely; a loop that spins or wakes without cause breaks them.)
fn assert_idle(lp: &mut dyn LoopUnderTest, when: &str) {
    let window = Duration::from_millis(200);
    let (start, cpu) = (Instant::now(), lp.cpu_time());
    let (mut turns, mut ran) = (0, 0);
    while start.elapsed() < window {
        ran += lp.turn(Duration::from_millis(20));
        turns += 1;
    }
    let used = lp.cpu_time() - cpu;
    let name = lp.name();
    assert_eq!(ran, 0, "{name} {when}: the loop still runs callbacks");
    assert!(
        turns <= 15,
        "{name} {when}: {turns} turns in {window:?}: the loop does not wait"
    );
    assert!(
        used < window / 2,
        "{name} {when}: {used:?} of CPU in {window:?}: the loop spins"
    );
}

/// The table as a loop that cannot count callbacks sees it: every call goes straight to the
/// table (the loop registers the table's own watches and timeouts), and its dispatches are
/// counted. The table is dispatched in every iteration in which any of its handles or timers
/// fired (that is how timers of interval 0 fire), so a turn with no dispatch ran no callback.
#[derive(Clone)]
pub struct CountingTable {
    table: HandleTable,
    dispatches: Arc<AtomicUsize>,
}

impl CountingTable {
    pub fn new(table: &HandleTable) -> CountingTable {
        CountingTable {
            table: table.clone(),
            dispatches: Arc::default(),
        }
    }

    /// How many times the loop has dispatched the table so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches.load(Ordering::SeqCst)
    }
}

impl Source for CountingTable {
    fn data(&self) -> &SourceData {
        self.table.data()
    }
    fn set_watch_functions(
        &self,
        functions: Option<Box<dyn WatchFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn WatchFunctions>> {
        self.table.set_watch_functions(functions)
    }
    fn set_timeout_functions(
        &self,
        functions: Option<Box<dyn TimeoutFunctions>>,
    ) -> Result<(), SetFunctionsError<dyn TimeoutFunctions>> {
        self.table.set_timeout_functions(functions)
    }
    fn set_wakeup_main_function(&self, wakeup: Option<WakeupFn>) {
        self.table.set_wakeup_main_function(wakeup);
    }
    fn set_dispatch_status_function(&self, function: Option<DispatchStatusFn>) {
        self.table.set_dispatch_status_function(function);
    }
    fn dispatch_status(&self) -> DispatchStatus {
        self.table.dispatch_status()
    }
    fn dispatch(&self) -> DispatchStatus {
        self.dispatches.fetch_add(1, Ordering::SeqCst);
        self.table.dispatch()
    }
}

/// Runs `scenarios` in a child process of this test binary that runs only the test `name`
/// (libvirt takes one event implementation per process, and the test harness runs a binary's
/// tests as threads of one process); in that child, runs them here. Fails if the child fails
/// or did not run the test.
pub fn in_own_process(name: &str, scenarios: impl FnOnce()) {
    const CHILD: &str = "LOOPGLUE_LIBVIRT_TEST";
    if std::env::var(CHILD).as_deref() == Ok(name) {
        scenarios();
        return;
    }
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .stdin(Stdio::null())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Through the harness's capture: shown with --nocapture.
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in its own process: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}
