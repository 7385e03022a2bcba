//! The echo workload of `benches/net.rs` on a current-thread tokio runtime: through the tokio
//! adapter (two `net::Connection`s per socketpair, each attached with its own driver task),
//! and natively (a task per socket end on `tokio::net::UnixStream`, the framing written by
//! hand, reading whatever is there and writing each frame with one write). Ping-pong per
//! connection, both ends in the same runtime. Included by `benches/adapters.rs`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loopglue::adapters::tokio::attach;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::echo::{self, Frames};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The echo through the tokio adapter and `net::Connection`.
pub fn via_adapter(connections: usize, messages_per_connection: u64) -> Duration {
    runtime().block_on(async {
        let finished = Arc::new(AtomicUsize::new(0));
        let all_done = Arc::new(Notify::new());
        let (done, notify) = (Arc::clone(&finished), Arc::clone(&all_done));
        let pairs = echo::connection_pairs(connections, messages_per_connection, move || {
            if done.fetch_add(1, Ordering::Relaxed) + 1 == connections {
                notify.notify_one();
            }
        });
        let _attached = echo::attach_all(&pairs, |source| attach(source).unwrap());
        let start = echo::start(&pairs);
        all_done.notified().await;
        start.elapsed()
    })
}

/// Reads frames from `stream` and hands each to `on_frame` (which writes it back, or not);
/// returns when `on_frame` says stop.
async fn serve(
    stream: &mut tokio::net::UnixStream,
    mut on_frame: impl FnMut(&[u8]) -> Option<bool>,
) {
    let mut frames = Frames::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        stream.readable().await.unwrap();
        let got = match stream.try_read(&mut chunk) {
            Ok(0) => return,
            Ok(got) => got,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("{e}"),
        };
        frames.push(&chunk[..got]);
        while let Some(frame) = frames.next_frame() {
            match on_frame(&frame) {
                Some(true) => stream.write_all(&frame).await.unwrap(),
                Some(false) => {}
                None => return,
            }
        }
    }
}

/// The echo on the same runtime with `tokio::net::UnixStream` and the framing written by
/// hand.
pub fn native(connections: usize, messages_per_connection: u64) -> Duration {
    runtime().block_on(async {
        let wire = echo::frame();
        let mut services = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..connections {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            services.push(tokio::spawn(async move {
                let mut b = b;
                serve(&mut b, |_| Some(true)).await;
            }));
            clients.push(a);
        }
        let start = Instant::now();
        let runs: Vec<_> = clients
            .into_iter()
            .map(|mut a| {
                let wire = wire.clone();
                tokio::spawn(async move {
                    a.write_all(&wire).await.unwrap();
                    let mut count = 0u64;
                    serve(&mut a, |_| {
                        count += 1;
                        (count < messages_per_connection).then_some(true)
                    })
                    .await;
                })
            })
            .collect();
        for run in runs {
            run.await.unwrap();
        }
        let took = start.elapsed();
        for service in services {
            service.abort();
        }
        took
    })
}
