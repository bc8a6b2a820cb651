//! Measures overload (issue 17 item 7), in one run: three in-process nodes; a provider whose
//! policy admits 20 calls/s per caller and 5 adverts/s per peer; a flooder calling at 10x that
//! rate with 64 in flight and publishing adverts as fast as it can; another caller making paced
//! calls. The baseline is the other caller's latency before the flood, in the same run.
//!
//! Prints a report; asserts nothing.
//! `cargo run --release -p capmesh-testkit --example overload -- [FLOOD_SECS] [CALLS]`

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Duration;

use capmesh_testkit::overload::{Flood, quantile_ms, run};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>().expect("a number"));
    let secs = args.next().unwrap_or(10);
    let calls = args.next().unwrap_or(100) as usize;
    let flood = Flood {
        duration: Duration::from_secs(secs),
        calls,
        // The paced calls fit in the flood.
        pace: Duration::from_millis((secs * 1000 / calls as u64 / 2).max(1)),
        ..Flood::default()
    };
    let r = run(flood.clone()).await.unwrap();
    let (ok, total) = (r.served(), r.flood.len());
    let (u50, u99) = (quantile_ms(&r.unloaded, 0.5), quantile_ms(&r.unloaded, 0.99));
    let (l50, l99) = (quantile_ms(&r.loaded, 0.5), quantile_ms(&r.loaded, 0.99));
    println!(
        "# overload: 3 in-process nodes, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "flood: {total} calls at {}/s over {:.1} s: {ok} served (policy admits {:.0}), {} refused, {} not for load",
        flood.rate * flood.factor,
        r.flood_secs,
        f64::from(flood.burst) + flood.rate * r.flood_secs,
        total - ok,
        r.not_for_load().len()
    );
    println!("provider refusals by code: {:?}", r.refused_by_provider);
    println!(
        "adverts: {} published; provider gossip accepted {}, rate limited {}, ignored {}, rejected {}",
        r.published, r.gossip.accepted, r.gossip.rate_limited, r.gossip.ignored, r.gossip.rejected
    );
    println!("| the other caller ({} calls each) | p50 ms | p99 ms |", flood.calls);
    println!("|---|---|---|");
    println!("| before the flood (baseline) | {u50:.2} | {u99:.2} |");
    println!("| during the flood | {l50:.2} | {l99:.2} |");
    println!("| ratio | {:.2} | {:.2} |", l50 / u50, l99 / u99);
    println!(
        "process RSS: {:.1} MiB before the flood, {:.1} MiB after, peak {:.1} MiB (ratio after/before {:.2})",
        r.rss_before,
        r.rss_after,
        r.rss_peak,
        r.rss_after / r.rss_before
    );
    r.net.shutdown().await.unwrap();
}
