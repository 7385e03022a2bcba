//! Detaching a source by any of its handles (issue 7, defect 1).
//!
//! A file of its own: these tests open and close thousands of sockets, and fd numbers they
//! recycle would disturb the closed-fd tests of other files if they ran in the same process.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use loopglue::main_loop::{Backend, MainLoop};
use loopglue::testing::{MockLoop, SocketPeer};

fn backends() -> Vec<Backend> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    return vec![Backend::Epoll, Backend::Poll];
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    return vec![Backend::Poll];
}

/// A source attached through one cheap handle and detached through another clone is found by
/// its identity (`Source::data().id()`), so the loop keeps nothing.
#[test]
fn main_loop_detach_by_a_clone_releases_the_source() {
    for backend in backends() {
        let lp = MainLoop::with_backend(backend).unwrap();
        for _ in 0..10_000 {
            let (ours, _theirs) = UnixStream::pair().unwrap();
            let peer = SocketPeer::new(ours, 4096).unwrap();
            lp.attach(Arc::new(peer.clone())).unwrap();
            let other_clone = peer.clone();
            lp.detach(&other_clone).unwrap();
            peer.close();
        }
        assert_eq!(lp.sources(), 0, "{backend:?}");
        assert_eq!(lp.registered_fds(), 0, "{backend:?}");
    }
}

#[test]
fn mock_loop_detach_by_a_clone_releases_the_source() {
    let mock = MockLoop::new();
    for _ in 0..10_000 {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let peer = SocketPeer::new(ours, 4096).unwrap();
        mock.attach(Arc::new(peer.clone())).unwrap();
        let other_clone = peer.clone();
        mock.detach(&other_clone).unwrap();
        peer.close();
    }
    assert_eq!(mock.sources(), 0);
    assert!(mock.watches().is_empty());
}
