//! Each adapter side by side with its host loop used natively: the echo workload of
//! `benches/net.rs` (u32-LE length + 32-byte payload, ping-pong per connection over
//! socketpairs, both ends in one loop, one write per frame on both sides) through the adapter
//! with two `net::Connection`s per pair, and natively with the framing written by hand on the
//! host loop. For 1 and 100 connections, alternating adapter and native runs, medians; the
//! ratio is adapter time over native time (target ≤ 1.15×).
//!
//! ```sh
//! cargo bench --bench adapters --features tokio,mio,calloop,glib            # 200,000 messages a row
//! cargo bench --bench adapters --features tokio,mio,calloop,glib -- --quick # 20,000
//! ```
//!
//! Only the adapters whose features are on are measured. Each side lives in
//! `benches/adapters/<loop>.rs` as `via_adapter` / `native`; what they share, in
//! `benches/adapters/echo.rs`.

use std::time::Duration;

#[cfg(feature = "calloop")]
#[path = "adapters/calloop.rs"]
mod calloop_side;
#[cfg(any(
    feature = "calloop",
    feature = "glib",
    feature = "mio",
    feature = "tokio"
))]
#[path = "adapters/echo.rs"]
mod echo;
#[cfg(feature = "glib")]
#[path = "adapters/glib.rs"]
mod glib_side;
#[cfg(feature = "mio")]
#[path = "adapters/mio.rs"]
mod mio_side;
#[cfg(feature = "tokio")]
#[path = "adapters/tokio.rs"]
mod tokio_side;

/// One host loop: its name and its two sides, each `(connections, messages per connection)`
/// to wall time.
type Side = fn(usize, u64) -> Duration;

fn loops() -> Vec<(&'static str, Side, Side)> {
    [
        #[cfg(feature = "tokio")]
        (
            "tokio",
            tokio_side::via_adapter as Side,
            tokio_side::native as Side,
        ),
        #[cfg(feature = "mio")]
        (
            "mio",
            mio_side::via_adapter as Side,
            mio_side::native as Side,
        ),
        #[cfg(feature = "calloop")]
        (
            "calloop",
            calloop_side::via_adapter as Side,
            calloop_side::native as Side,
        ),
        #[cfg(feature = "glib")]
        (
            "glib",
            glib_side::via_adapter as Side,
            glib_side::native as Side,
        ),
    ]
    .into_iter()
    .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo bench -- --list` asks what is here; this harness has no named cases
    }
    let quick = args.iter().any(|a| a == "--quick");
    let messages: u64 = if quick { 20_000 } else { 200_000 };
    let runs = if quick { 3 } else { 5 };
    let loops = loops();
    if loops.is_empty() {
        println!("no adapter feature is on: --features tokio,mio,calloop,glib");
        return;
    }
    println!(
        "{messages} messages a row, median of {runs} alternating runs; ratio = adapter / native"
    );
    println!(
        "{:<8} {:>5} {:>12} {:>12} {:>7}",
        "loop", "conns", "adapter", "native", "ratio"
    );
    for (name, via_adapter, native) in loops {
        for connections in [1usize, 100] {
            let per_connection = messages / connections as u64;
            // Warm both sides once (page faults, lazy statics), then alternate.
            via_adapter(connections, per_connection / 10 + 1);
            native(connections, per_connection / 10 + 1);
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                ours.push(via_adapter(connections, per_connection));
                theirs.push(native(connections, per_connection));
            }
            let (ours, theirs) = (median(ours), median(theirs));
            println!(
                "{name:<8} {connections:>5} {:>10.1}ms {:>10.1}ms {:>6.3}x",
                ours.as_secs_f64() * 1e3,
                theirs.as_secs_f64() * 1e3,
                ours.as_secs_f64() / theirs.as_secs_f64()
            );
        }
    }
}
