//! Accept failures are reported, not only counted (issue 8, defect 3): with the process out
//! of file descriptors, `accept` fails with EMFILE and the server's accept-error function is
//! told. One test in this file: it lowers the process's descriptor limit.

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use loopglue::net::Server;
use loopglue::{Delivery, WatchFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// An error as the function saw it: its OS code and its text.
type Reported = (Option<i32>, String);

/// The lowest descriptor number not in use: with the soft limit set to it, the next
/// descriptor the process opens fails with EMFILE.
fn lowest_free_fd() -> u64 {
    let probe = std::fs::File::open("/dev/null").unwrap();
    use std::os::fd::AsRawFd;
    probe.as_raw_fd() as u64
}

#[test]
fn emfile_on_accept_reaches_the_accept_error_function_and_the_counter() {
    let path = std::env::temp_dir().join(format!("loopglue-emfile-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let server = Server::bind(&path).unwrap();
    let errors: Arc<Mutex<Vec<Reported>>> = Arc::default();
    let sink = Arc::clone(&errors);
    server.set_accept_error_function(move |error: &io::Error| {
        sink.lock()
            .unwrap()
            .push((error.raw_os_error(), error.to_string()));
    });
    let _client = UnixStream::connect(&path).unwrap(); // waits in the backlog

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let limit = lowest_free_fd();
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).unwrap();
    let delivery = server.watch().handle(WatchFlags::READABLE);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();

    assert_eq!(delivery, Delivery::Delivered);
    let errors = errors.lock().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, Some(nix::libc::EMFILE), "{errors:?}");
    assert_eq!(server.stats().accept_errors, 1);
    assert!(!server.watch().is_enabled(), "paused, not spinning");
    assert!(server.retry_timeout().is_enabled());
    server.disconnect();
}
