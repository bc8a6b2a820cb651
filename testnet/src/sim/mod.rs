//! In-process Kademlia simulator: N nodes in one process, each a libp2p swarm on the memory
//! transport (Noise, Yamux) running the node's own Kademlia (`capmesh_net::kademlia`, server
//! mode, the node's defaults), one task per swarm. It measures provider lookups as the mesh's
//! `find` runs them and reports, per network size, Kademlia requests per lookup, the peers on
//! the path to the first provider record, and lookup latency beside a baseline round trip
//! measured in the same run.
//!
//! **Setup.** Node keys come from the seed as `up`'s do (same seed, same peer ids). The routing
//! tables are filled one of two ways ([`Join`]): `table` (the default) gives every node the
//! table of a converged network at once (per bucket, up to k random peers at that distance), no
//! traffic, connections opened when queries first need them; `bootstrap` makes nodes join as
//! the node does, in batches, each told of 3 to 8 earlier nodes and running a Kademlia
//! bootstrap, which reaches a few hundred nodes on 2 cores (about ten lookups a join, and every
//! connection they open stays). Setup ends when every routing table holds at least
//! min(k, N − 1) peers. Connections are never closed for idleness during the run. The node's
//! identify, left out, is stood in for by an address book: a connected peer's listen address
//! goes into the routing table when its bucket has room (see `node::Node::learn` for why only
//! then).
//!
//! **A lookup.** A fresh random key; `providers` random nodes `start_providing` it; the
//! simulator waits until the providers' ADD_PROVIDER records are stored (providers ×
//! min(k, N − 1) of them; lookups issued short of that are counted), then a random
//! non-provider runs `get_providers` to the query's end. Lookups run one at a time, so every
//! GET_PROVIDERS request is one of the current lookup's (the setup and the announcements send
//! FIND_NODE and ADD_PROVIDER only).
//!
//! **Requests per lookup**: GET_PROVIDERS requests received by all nodes (libp2p's inbound
//! request event), beside the querier's own `QueryStats` (requests issued, answers received):
//! answered ≤ received ≤ issued.
//!
//! **Peers on the path to the first provider.** libp2p does not expose a query's path, so it
//! is rebuilt. Before issuing, the querier notes its query's first candidates (its k closest
//! local peers to the key). Each node answering a GET_PROVIDERS request of the lookup notes the
//! time, itself, the peers its answer names (its k closest local peers to the key without the
//! querier, and the providers whose records it holds) and whether it holds a record. In the
//! order the requests were answered: depth(responder) = 1 if it was a first candidate, else 1 +
//! the least depth of the earlier responders whose answer named it. Hops = the depth of the
//! first responder that held a provider record; 0 when the querier held one itself. Hops are
//! thus the peers on the path including the record holder; a first candidate holding a record
//! is one hop.
//!
//! Approximations: the answer is recomputed from the responder's routing table and store when
//! the simulator sees the request, not taken off the wire; libp2p builds it in the same poll, so
//! only a routing-table change in between (another connection's event handled first) can make
//! them differ. "First" is by the time the responder answered, which can differ from the order
//! the querier read the answers in by less than one round trip. A responder no earlier answer
//! named cannot be placed (counted, never guessed). A request still in flight when the query
//! ends is counted with its lookup if it arrives before the next lookup is published (the next
//! announcements take longer than that); otherwise it is counted as stray.
//!
//! **Latency**: `get_providers` issued → first provider found, and → the query's end, measured
//! on the querier's task. In `table` networks most requests of a lookup first dial their peer
//! (counted: dials per lookup), so latency is mostly Noise handshakes, which in one process are
//! CPU, not wire. **Baselines**, after each lookup: one `get_providers` from one node of a
//! separate pair to the other, whose routing tables hold only each other, so exactly one
//! GET_PROVIDERS request, same transport, same Kademlia, same load; once with the pair
//! disconnected first (dial + handshake + round trip), once over the connection that leaves
//! (the round trip). Ratios are lookup p50 / round-trip p50.
//!
//! The node's periodic bootstrap (every 5 min) is left on; a network whose setup and lookups
//! take longer than that is flagged in the table.

mod network;
mod node;
mod path;
mod report;
mod table;

pub use report::{Figures, KadSettings, NetworkReport, Report, Sample, Spread};

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use anyhow::Context;
use libp2p::{Multiaddr, kad, multiaddr::Protocol};
use serde::{Deserialize, Serialize};

use crate::{procs, rng::Rng};
use network::Network;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Network sizes, each simulated in turn (at least 2 nodes each).
    pub nodes: Vec<usize>,
    /// Lookups per network.
    pub lookups: usize,
    /// Nodes announcing each lookup's key (at most N − 1).
    pub providers: usize,
    /// Seeds the node keys, the tables, the keys looked up and every random choice.
    pub seed: u64,
    pub join: Join,
}

/// How a simulated network's routing tables are filled before the lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Join {
    /// As a converged network holds them, without traffic: per bucket, up to k peers drawn at
    /// random (seeded) among all the nodes at that distance. Connections open when a query
    /// first needs them. Reaches 1 000 nodes in seconds.
    #[default]
    Table,
    /// As nodes join: in batches of 50, each node told of 3 to 8 random earlier nodes runs a
    /// Kademlia bootstrap (a lookup of its own id, then one per bucket beyond its closest
    /// neighbour's: about ten lookups a node). The real process, at N × ten lookups: about
    /// 100 s for 300 nodes on 2 cores, too slow and too memory-hungry (every connection it
    /// opens stays open) for 1 000.
    Bootstrap,
}

impl std::str::FromStr for Join {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Self::Table),
            "bootstrap" => Ok(Self::Bootstrap),
            other => Err(format!("unknown join {other:?}: table or bootstrap")),
        }
    }
}

/// Simulates each network size of `options` in turn.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.providers >= 1, "at least one provider per lookup");
    anyhow::ensure!(options.nodes.iter().all(|&n| n >= 2), "every network needs 2 nodes or more");
    let started_ms = procs::now_ms();
    let config = kad_config();
    let mut networks = Vec::with_capacity(options.nodes.len());
    for &n in &options.nodes {
        networks.push(simulate(n, options, &config).await?);
    }
    Ok(Report {
        started_ms,
        seed: options.seed,
        lookups: options.lookups,
        providers: options.providers,
        join: options.join,
        kademlia: KadSettings {
            protocol: capmesh_net::KAD_PROTOCOL.to_string(),
            k: kad::K_VALUE.get(),
            alpha: kad::ALPHA_VALUE.get(),
            query_timeout_s: config.query_timeout.as_secs_f64(),
            transport: "memory + noise + yamux".into(),
        },
        networks,
    })
}

/// Creates the report's directory, so that a long run does not end unwritable.
pub fn prepare(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `report` as JSON.
pub fn save(report: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The node's Kademlia as a server (every simulated node is reachable).
fn kad_config() -> capmesh_net::Config {
    capmesh_net::Config::default().with_kad_mode(capmesh_net::KadMode::Server)
}

async fn simulate(
    n: usize,
    options: &Options,
    config: &capmesh_net::Config,
) -> anyhow::Result<NetworkReport> {
    let rss_before = rss_mib();
    let started = Instant::now();
    let mut rng = Rng::new(options.seed ^ (n as u64).rotate_left(32));
    let mut net = Network::build(n, options.seed, options.join, config, &mut rng).await?;
    let stats = net.populated().await?;
    let took = started.elapsed();
    let rss_after = rss_mib();
    eprintln!("N = {n}: set up in {:.1} s; {} lookups", took.as_secs_f64(), options.lookups);
    let mut measured = Vec::with_capacity(options.lookups);
    let lookups_started = Instant::now();
    for i in 0..options.lookups {
        measured.push(net.lookup(i as u64, &mut rng, options.providers).await?);
        if (i + 1) % 50 == 0 {
            let s = lookups_started.elapsed().as_secs_f64();
            eprintln!("N = {n}: {} lookups ({s:.1} s)", i + 1);
        }
    }
    let lookups_took = lookups_started.elapsed();
    let rss_end = rss_mib();
    let observed = net.finish().await;
    let setup =
        report::Setup { nodes: n, took, stats, lookups_took, rss_before, rss_after, rss_end };
    Ok(report::summarize(&setup, measured, observed))
}

/// A fresh memory-transport address: process-wide distinct, so networks (and tests) running
/// side by side in one process never collide.
fn memory_addr() -> Multiaddr {
    static NEXT: AtomicU64 = AtomicU64::new(0x5ca1_0000);
    Multiaddr::empty().with(Protocol::Memory(NEXT.fetch_add(1, Ordering::Relaxed)))
}

fn random_key(rng: &mut Rng) -> kad::RecordKey {
    let bytes: Vec<u8> = (0..4).flat_map(|_| rng.next().to_le_bytes()).collect();
    kad::RecordKey::new(&bytes)
}

/// This process's resident memory, in MiB.
fn rss_mib() -> Option<f64> {
    procs::usage(std::process::id()).map(|u| u.rss_kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small network end to end, its tables filled either way: every lookup finds a
    /// provider, the rebuilt path and the request counts agree with each other and with
    /// libp2p's own stats, and the report reads back. No time is asserted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_network_lookups_are_consistent() {
        for (join, lookups) in [(Join::Table, 20), (Join::Bootstrap, 10)] {
            let options = Options { nodes: vec![40], lookups, providers: 3, seed: 1, join };
            let report = run(&options).await.unwrap();
            check(&report.networks[0], lookups);
            let json = serde_json::to_string(&report).unwrap();
            let back: Report = serde_json::from_str(&json).unwrap();
            assert_eq!(back.join, join);
            assert_eq!(back.networks[0].samples.len(), lookups);
            assert_eq!(back.networks[0].hops_histogram, report.networks[0].hops_histogram);
        }
    }

    fn check(net: &NetworkReport, lookups: usize) {
        assert_eq!(net.lookups, lookups);
        assert_eq!(net.dropped_observations, 0);
        assert_eq!(net.start_providing_failed, 0);
        assert!(net.routing_table.min >= 20.0, "{:?}", net.routing_table);
        for (i, s) in net.samples.iter().enumerate() {
            let what = format!("lookup {i}: {s:?}");
            assert!(s.providers_found > 0, "{what}");
            assert!(s.error.is_none(), "{what}");
            assert!(s.kad_requests >= 1, "{what}");
            assert!(s.stats_successes <= s.kad_requests, "{what}");
            assert!(s.kad_requests <= s.stats_requests, "{what}");
            let hops = s.hops.unwrap_or_else(|| panic!("no path: {what}"));
            if s.held_record {
                assert_eq!(hops, 0, "{what}");
            } else {
                assert!(hops >= 1, "{what}");
            }
            assert!(hops <= s.kad_requests, "{what}");
            assert_eq!((s.baseline_requests, s.baseline_dial_requests), (1, 1), "{what}");
            assert_eq!(s.records_stored, s.records_expected, "{what}");
        }
    }

    #[test]
    fn seeded_choices_repeat() {
        let (mut a, mut b) = (Rng::new(5), Rng::new(5));
        assert_eq!(a.choose_below(100, 8), b.choose_below(100, 8));
        assert_eq!(random_key(&mut a), random_key(&mut b));
        let picked = Rng::new(9).choose_below(10, 10);
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    }
}
