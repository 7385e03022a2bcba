//! A recording glue shared by the integration tests: every call becomes one line of a log,
//! so tests can assert exact call sequences (order and arguments).
#![allow(dead_code)]

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use loopglue::{Timeout, TimeoutFunctions, Watch, WatchFlags, WatchFunctions};

pub type Log = Arc<Mutex<Vec<String>>>;

pub fn log() -> Log {
    Arc::default()
}

pub fn take(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// How an object shows in the log: a watch by its fd, a timeout by its interval.
pub trait Labeled: Clone + Send + 'static {
    fn label(&self) -> String;
    fn enabled(&self) -> bool;
}

impl Labeled for Watch {
    fn label(&self) -> String {
        self.fd()
            .map_or_else(|| "gone".to_string(), |fd| fd.to_string())
    }
    fn enabled(&self) -> bool {
        self.is_enabled()
    }
}

impl Labeled for Timeout {
    fn label(&self) -> String {
        format!("{}ms", self.interval().as_millis())
    }
    fn enabled(&self) -> bool {
        self.is_enabled()
    }
}

fn state(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

pub type Hook<O> = Box<dyn FnMut(&str, &O) + Send>;

/// A function set that logs `"{name}.add {label} {on|off}"`, `"{name}.remove {label}"`,
/// `"{name}.toggled {label} {on|off}"` and `"{name}.free"`, and can be told to refuse or
/// panic at the k-th add, or to run a hook after logging a call.
pub struct Glue<O> {
    name: &'static str,
    log: Log,
    adds: usize,
    fail_at: Option<usize>,
    panic_in: Option<&'static str>,
    hook: Option<Hook<O>>,
    depth: Arc<AtomicUsize>,
}

impl<O: Labeled> Glue<O> {
    pub fn new(name: &'static str, log: &Log) -> Glue<O> {
        Glue {
            name,
            log: Arc::clone(log),
            adds: 0,
            fail_at: None,
            panic_in: None,
            hook: None,
            depth: Arc::default(),
        }
    }

    /// Refuse the k-th add (1-based) with an error.
    pub fn fail_at(mut self, k: usize) -> Glue<O> {
        self.fail_at = Some(k);
        self
    }

    /// Panic (after logging), once, in the named call: "add", "remove", "toggled" or "free".
    pub fn panic_in(mut self, call: &'static str) -> Glue<O> {
        self.panic_in = Some(call);
        self
    }

    /// Run `hook(call, object)` after logging each call.
    pub fn hook(mut self, hook: impl FnMut(&str, &O) + Send + 'static) -> Glue<O> {
        self.hook = Some(Box::new(hook));
        self
    }

    fn record(&mut self, call: &'static str, object: &O) {
        // C12: a set is never re-entered. The guard keeps the count right when a hook panics.
        struct Depth(Arc<AtomicUsize>);
        impl Drop for Depth {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let depth = self.depth.fetch_add(1, Ordering::SeqCst);
        let _depth = Depth(Arc::clone(&self.depth));
        let line = match call {
            "remove" => format!("{}.remove {}", self.name, object.label()),
            _ => format!(
                "{}.{} {} {}",
                self.name,
                call,
                object.label(),
                state(object.enabled())
            ),
        };
        self.log.lock().unwrap().push(line);
        if depth != 0 {
            self.log
                .lock()
                .unwrap()
                .push(format!("{}.REENTERED", self.name));
        }
        if let Some(hook) = self.hook.as_mut() {
            hook(call, object);
        }
        if self.panic_in == Some(call) {
            self.panic_in = None; // once: later calls behave
            panic!("{} panics in {}", self.name, call);
        }
    }

    fn add_call(&mut self, object: &O) -> io::Result<()> {
        self.adds += 1;
        self.record("add", object);
        if self.fail_at == Some(self.adds) {
            return Err(io::Error::new(io::ErrorKind::OutOfMemory, "glue full"));
        }
        Ok(())
    }

    pub fn boxed_watch(self) -> Box<dyn WatchFunctions>
    where
        Glue<O>: WatchFunctions,
    {
        Box::new(self)
    }
}

impl WatchFunctions for Glue<Watch> {
    fn add(&mut self, watch: &Watch) -> io::Result<()> {
        self.add_call(watch)
    }
    fn remove(&mut self, watch: &Watch) {
        self.record("remove", watch);
    }
    fn toggled(&mut self, watch: &Watch) {
        self.record("toggled", watch);
    }
}

impl TimeoutFunctions for Glue<Timeout> {
    fn add(&mut self, timeout: &Timeout) -> io::Result<()> {
        self.add_call(timeout)
    }
    fn remove(&mut self, timeout: &Timeout) {
        self.record("remove", timeout);
    }
    fn toggled(&mut self, timeout: &Timeout) {
        self.record("toggled", timeout);
    }
}

impl<O> Drop for Glue<O> {
    fn drop(&mut self) {
        self.log.lock().unwrap().push(format!("{}.free", self.name));
        if self.panic_in == Some("free") && !std::thread::panicking() {
            panic!("{} panics in free", self.name);
        }
    }
}

pub fn watch(fd: i32) -> Watch {
    Watch::new(fd, WatchFlags::READABLE, |_| {})
}

pub fn disabled_watch(fd: i32) -> Watch {
    Watch::new_disabled(fd, WatchFlags::READABLE, |_| {})
}

pub fn timeout(ms: u64) -> Timeout {
    Timeout::new(Duration::from_millis(ms), || {})
}

/// Runs `f` on a fresh thread and fails the test if it does not finish within 10 s — how the
/// tests detect a deadlock without sleeping.
pub fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(out);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(value)) => value,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("deadlock: the call did not return within 10 s"),
    }
}
