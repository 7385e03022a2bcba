//! The main job: a `net::Server` and a few `net::Connection` clients on one event loop, in
//! one process. Every client sends a numbered message, waits for its echo, checks it, and
//! sends the next; at the end the example prints a short report and exits 0.
//!
//! ```sh
//! cargo run --example echo
//! cargo run --release --example echo -- --clients 100 --messages 10000
//! ```
//!
//! `--loop main|tokio|mio|calloop|glib` picks the event loop (the adapters need their cargo
//! features: `cargo run --features tokio,mio,calloop,glib --example echo -- --loop glib`).
//! The loop is chosen in one place, [`event_loop`]: everything else talks to it through the
//! three things an application does with a loop — attach a source, detach it (both from any
//! thread, and from inside handlers), and run a turn on its own thread.

use std::collections::HashMap;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopglue::net::{Connection, ConnectionStats, Server};
use loopglue::{MainLoop, Source};

/// Attaching and detaching sources: shared with the handlers, so `Send + Sync`.
trait Attach: Send + Sync {
    fn attach(&self, source: Arc<dyn Source>) -> io::Result<()>;
    fn detach(&self, source: &dyn Source) -> io::Result<()>;
}

/// A loop: the half handlers share, and the half its thread runs.
type Loop = (Arc<dyn Attach>, Box<dyn Turn>);

/// Running the loop, on the thread that owns it.
trait Turn {
    /// Waits at most about `timeout` for something to do, and does it.
    fn turn(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Attach for MainLoop {
    fn attach(&self, source: Arc<dyn Source>) -> io::Result<()> {
        MainLoop::attach(self, source)
    }

    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        MainLoop::detach(self, source)
    }
}

impl Turn for Arc<MainLoop> {
    fn turn(&mut self, timeout: Duration) -> io::Result<()> {
        self.run_once(Some(timeout)).map(drop)
    }
}

/// The adapters hand out an attachment per source, which detaches it when dropped: keep them
/// by source identity.
#[allow(dead_code)] // unused when no adapter feature is on
struct Attachments<A, F> {
    attach: F,
    attached: Mutex<HashMap<u64, A>>,
}

#[allow(dead_code)]
impl<A, F> Attachments<A, F> {
    fn new(attach: F) -> Attachments<A, F> {
        Attachments {
            attach,
            attached: Mutex::default(),
        }
    }
}

impl<A, F> Attach for Attachments<A, F>
where
    A: Send,
    F: Fn(Arc<dyn Source>) -> io::Result<A> + Send + Sync,
{
    fn attach(&self, source: Arc<dyn Source>) -> io::Result<()> {
        let id = source.data().id();
        let attachment = (self.attach)(source)?;
        let replaced = lock(&self.attached).insert(id, attachment);
        drop(replaced);
        Ok(())
    }

    fn detach(&self, source: &dyn Source) -> io::Result<()> {
        // Dropped outside the lock: detaching runs glue code.
        let attachment = lock(&self.attached).remove(&source.data().id());
        drop(attachment);
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(feature = "tokio")]
mod tokio_loop {
    use super::*;
    use loopglue::adapters::tokio::attach_to;

    pub(super) fn new() -> io::Result<Loop> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let attach = Attachments::new(move |source| attach_to(&handle, source));
        Ok((Arc::new(attach), Box::new(Runtime(runtime))))
    }

    struct Runtime(tokio::runtime::Runtime);

    impl Turn for Runtime {
        fn turn(&mut self, timeout: Duration) -> io::Result<()> {
            // The sources' driver tasks run while the runtime waits; come back often to let
            // the caller check its progress.
            let nap = timeout.min(Duration::from_millis(1));
            self.0.block_on(async { tokio::time::sleep(nap).await });
            Ok(())
        }
    }
}

#[cfg(feature = "mio")]
mod mio_loop {
    use super::*;
    use loopglue::adapters::mio::MioGlue;

    pub(super) fn new() -> io::Result<Loop> {
        let poll = mio::Poll::new()?;
        let glue = Arc::new(MioGlue::new(
            poll.registry(),
            mio::Token(0)..mio::Token(usize::MAX),
        )?);
        let attacher = Arc::clone(&glue);
        let attach = Attachments::new(move |source| attacher.attach(source));
        let events = mio::Events::with_capacity(1024);
        Ok((Arc::new(attach), Box::new(Poll { poll, glue, events })))
    }

    struct Poll {
        poll: mio::Poll,
        glue: Arc<MioGlue>,
        events: mio::Events,
    }

    impl Turn for Poll {
        fn turn(&mut self, timeout: Duration) -> io::Result<()> {
            let wait = self.glue.poll_timeout().map_or(timeout, |t| t.min(timeout));
            match self.poll.poll(&mut self.events, Some(wait)) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => return Err(e),
                _ => {}
            }
            self.glue.process(&self.events);
            Ok(())
        }
    }
}

#[cfg(feature = "calloop")]
mod calloop_loop {
    use super::*;
    use loopglue::adapters::calloop::CalloopGlue;

    pub(super) fn new() -> io::Result<Loop> {
        let event_loop = calloop::EventLoop::try_new().map_err(io::Error::other)?;
        let glue = CalloopGlue::insert(&event_loop.handle())?;
        // The loop and the glue stay on this thread; the attacher goes to the handlers.
        let attacher = glue.attacher();
        let attach = Attachments::new(move |source| attacher.attach(source));
        Ok((
            Arc::new(attach),
            Box::new(Calloop {
                event_loop,
                _glue: glue,
            }),
        ))
    }

    struct Calloop {
        event_loop: calloop::EventLoop<'static, ()>,
        _glue: CalloopGlue<'static, ()>,
    }

    impl Turn for Calloop {
        fn turn(&mut self, timeout: Duration) -> io::Result<()> {
            self.event_loop
                .dispatch(timeout, &mut ())
                .map_err(io::Error::other)
        }
    }
}

#[cfg(feature = "glib")]
mod glib_loop {
    use super::*;
    use loopglue::adapters::glib::GlibGlue;

    pub(super) fn new() -> io::Result<Loop> {
        let context = glib::MainContext::new();
        let glue = GlibGlue::new(&context);
        let attach = Attachments::new(move |source| glue.attach(source));
        Ok((Arc::new(attach), Box::new(Context(context))))
    }

    struct Context(glib::MainContext);

    impl Turn for Context {
        fn turn(&mut self, timeout: Duration) -> io::Result<()> {
            // A one-shot timeout bounds the wait; it is gone again once the turn is over.
            let tick = glib::timeout_source_new(timeout, None, glib::Priority::LOW, || {
                glib::ControlFlow::Break
            });
            tick.attach(Some(&self.0));
            self.0.iteration(true);
            tick.destroy();
            Ok(())
        }
    }
}

/// The loop the example runs on: the one place to choose it.
fn event_loop(name: &str) -> Result<Loop, String> {
    let made = match name {
        "main" => MainLoop::new().map(|lp| {
            let lp = Arc::new(lp);
            (
                Arc::clone(&lp) as Arc<dyn Attach>,
                Box::new(lp) as Box<dyn Turn>,
            )
        }),
        #[cfg(feature = "tokio")]
        "tokio" => tokio_loop::new(),
        #[cfg(feature = "mio")]
        "mio" => mio_loop::new(),
        #[cfg(feature = "calloop")]
        "calloop" => calloop_loop::new(),
        #[cfg(feature = "glib")]
        "glib" => glib_loop::new(),
        #[allow(unreachable_patterns)] // with every feature on
        "tokio" | "mio" | "calloop" | "glib" => {
            return Err(format!(
                "--loop {name} needs the `{name}` feature: \
                 cargo run --features {name} --example echo -- --loop {name}"
            ))
        }
        other => {
            return Err(format!(
                "unknown loop {other:?}: main, tokio, mio, calloop or glib"
            ))
        }
    };
    made.map_err(|e| format!("{name} loop: {e}"))
}

struct Options {
    clients: usize,
    messages: u64,
    event_loop: String,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        clients: 4,
        messages: 5_000,
        event_loop: "main".to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{name} takes a positive number"))
        };
        match arg.as_str() {
            "--clients" => options.clients = value("--clients")? as usize,
            "--messages" => options.messages = value("--messages")?,
            "--loop" => {
                options.event_loop = args.next().ok_or("--loop takes a name")?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: echo [--clients N] [--messages M] [--loop main|tokio|mio|calloop|glib]"
                        .to_string(),
                );
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(options)
}

/// A message: which client, which round trip, and some padding so frames are not trivial.
fn message(client: usize, seq: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(48);
    m.extend_from_slice(&(client as u64).to_le_bytes());
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(b"loopglue echo payload: 32 bytes!");
    m
}

fn add(total: &mut ConnectionStats, s: ConnectionStats) {
    total.messages_received += s.messages_received;
    total.messages_sent += s.messages_sent;
    total.write_watch_enabled += s.write_watch_enabled;
    total.read_watch_disabled += s.read_watch_disabled;
    total.direct_writes += s.direct_writes;
}

fn run(options: &Options) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("loopglue-echo-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let (looper, mut turner) = event_loop(&options.event_loop)?;

    // The server side: every accepted connection echoes what it receives.
    let server = Server::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    server.set_accept_error_function(|e| eprintln!("echo: server cannot accept: {e}"));
    let accepted: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let server_gone = Arc::new(AtomicUsize::new(0));
    {
        let (lp, accepted, gone) = (
            Arc::clone(&looper),
            Arc::clone(&accepted),
            Arc::clone(&server_gone),
        );
        server.set_new_connection_function(move |conn| {
            conn.set_message_handler(|conn, message| {
                if let Err(e) = conn.send(message) {
                    eprintln!("echo: server could not reply: {e}");
                }
            });
            // The loop keeps an attached connection until it is detached: detach it when it
            // ends. (The handler runs once and is dropped, so holding `conn` here is no cycle.)
            let (gone, lp2, me) = (Arc::clone(&gone), Arc::clone(&lp), conn.clone());
            conn.set_disconnect_handler(move |_| {
                gone.fetch_add(1, Ordering::Relaxed);
                let _ = lp2.detach(&me);
            });
            if let Err(e) = lp.attach(Arc::new(conn.clone())) {
                eprintln!("echo: cannot attach a client: {e}");
            }
            accepted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        });
    }
    let server_source: Arc<dyn Source> = Arc::new(server.clone());
    looper
        .attach(Arc::clone(&server_source))
        .map_err(|e| format!("attach server: {e}"))?;

    // The clients: each checks every echo and sends the next message.
    let finished = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::with_capacity(options.clients);
    for id in 0..options.clients {
        let client = Connection::connect(&path).map_err(|e| format!("connect: {e}"))?;
        let next = Arc::new(AtomicU64::new(0));
        let (finished, wrong, total) =
            (Arc::clone(&finished), Arc::clone(&wrong), options.messages);
        client.set_message_handler(move |conn, echo| {
            let seq = next.fetch_add(1, Ordering::Relaxed);
            if echo != message(id, seq) {
                wrong.fetch_add(1, Ordering::Relaxed);
            }
            if seq + 1 < total {
                if let Err(e) = conn.send(message(id, seq + 1)) {
                    eprintln!("echo: client {id} could not send: {e}");
                }
            } else {
                finished.fetch_add(1, Ordering::Relaxed);
            }
        });
        looper
            .attach(Arc::new(client.clone()))
            .map_err(|e| format!("attach client: {e}"))?;
        clients.push(client);
    }

    let start = Instant::now();
    for (id, client) in clients.iter().enumerate() {
        client
            .send(message(id, 0))
            .map_err(|e| format!("first send: {e}"))?;
    }
    let deadline = start + Duration::from_secs(300);
    while finished.load(Ordering::Relaxed) < clients.len() {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {} clients finished within 300 s",
                finished.load(Ordering::Relaxed),
                clients.len()
            ));
        }
        turner
            .turn(Duration::from_millis(100))
            .map_err(|e| format!("loop: {e}"))?;
    }
    let elapsed = start.elapsed();

    // Shut down: clients hang up, the server sees every hang-up, the server stops listening.
    let mut client_stats = ConnectionStats::default();
    for client in &clients {
        add(&mut client_stats, client.stats());
        client.close();
        looper
            .detach(client)
            .map_err(|e| format!("detach client: {e}"))?;
    }
    while server_gone.load(Ordering::Relaxed) < clients.len() {
        if Instant::now() > deadline {
            return Err("the server did not see every client hang up".into());
        }
        turner
            .turn(Duration::from_millis(100))
            .map_err(|e| format!("loop: {e}"))?;
    }
    let mut server_stats = ConnectionStats::default();
    for conn in accepted.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        add(&mut server_stats, conn.stats());
    }
    server.disconnect();
    looper
        .detach(&*server_source)
        .map_err(|e| format!("detach: {e}"))?;

    let round_trips = options.clients as u64 * options.messages;
    if wrong.load(Ordering::Relaxed) > 0 || client_stats.messages_received != round_trips {
        return Err(format!(
            "{} echoes wrong or out of order; {} of {round_trips} received",
            wrong.load(Ordering::Relaxed),
            client_stats.messages_received
        ));
    }
    Ok(format!(
        "echo: {clients} clients x {messages} messages on the {name} loop = {round_trips} round trips in {secs:.3} s \
         ({rate:.0} round trips/s)\n\
         echo: every echo checked, in order; {gone} hang-ups seen by the server\n\
         echo: write watch enabled {cw} times (clients) and {sw} times (server), \
         {direct} sends written directly; read watch paused {pauses} times",
        clients = options.clients,
        messages = options.messages,
        name = options.event_loop,
        secs = elapsed.as_secs_f64(),
        rate = round_trips as f64 / elapsed.as_secs_f64(),
        gone = server_gone.load(Ordering::Relaxed),
        cw = client_stats.write_watch_enabled,
        sw = server_stats.write_watch_enabled,
        direct = client_stats.direct_writes + server_stats.direct_writes,
        pauses = client_stats.read_watch_disabled + server_stats.read_watch_disabled,
    ))
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("echo failed: {message}");
            ExitCode::FAILURE
        }
    }
}
