//! The simulator's report: per network size, the figures and every lookup's own sample.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    Join,
    network::{Measured, Observed},
    node::{Asked, NodeStats},
    path,
};
use crate::run::{Latency, percentile};

/// A simulator run (`capmesh-testnet sim`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub started_ms: u64,
    pub seed: u64,
    /// Lookups per network.
    pub lookups: usize,
    /// Nodes announcing each lookup's key.
    pub providers: usize,
    /// How the routing tables were filled.
    pub join: Join,
    pub kademlia: KadSettings,
    pub networks: Vec<NetworkReport>,
}

/// What every simulated node runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KadSettings {
    pub protocol: String,
    /// Replication factor (libp2p's `K_VALUE`): answers name up to k peers.
    pub k: usize,
    /// Requests in flight per query (libp2p's `ALPHA_VALUE`).
    pub alpha: usize,
    pub query_timeout_s: f64,
    pub transport: String,
}

/// One simulated network of `nodes` nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkReport {
    pub nodes: usize,
    /// log₂(nodes): the order of hops Kademlia promises.
    pub log2_nodes: f64,
    /// Start, join and routing tables populated, in seconds.
    pub setup_s: f64,
    /// FIND_NODE requests all nodes answered during setup (joining's cost in requests).
    pub setup_find_node_requests: u64,
    /// The lookups (with their announcements and baselines), in seconds. Past 300 s the
    /// node's periodic bootstrap would add its own traffic.
    pub lookups_s: f64,
    /// Peers in each node's routing table after setup.
    pub routing_table: Spread,
    /// Connections each node holds after setup.
    pub connections: Spread,
    /// Resident memory of the whole process before this network was built, after its setup,
    /// and after its lookups (the allocator may keep what earlier networks freed).
    pub rss_mib_before: Option<f64>,
    pub rss_mib_after_setup: Option<f64>,
    pub rss_mib_after_lookups: Option<f64>,
    pub lookups: usize,
    /// Lookups that found at least one provider.
    pub found: usize,
    pub not_found: usize,
    /// Query errors by message (a query can find providers and still time out).
    pub errors: BTreeMap<String, u64>,
    /// Lookups whose querier held a provider record itself (0 hops).
    pub querier_held_record: usize,
    /// Found lookups whose path could not be rebuilt (no responder seen holding a record, or the
    /// first one not placed).
    pub path_unknown: usize,
    /// Responders not named by the querier's candidates nor by an earlier answer.
    pub unplaced_responders: u64,
    /// GET_PROVIDERS requests received by all nodes, per lookup.
    pub kad_requests: Figures,
    /// libp2p's `QueryStats` of the querier: requests issued, and those answered.
    pub query_stats_requests: Figures,
    pub query_stats_successes: Figures,
    /// Connections the querier had to dial during a lookup (the rest of its requests went over
    /// connections already open).
    pub dials: Figures,
    /// Peers on the path to the first responder holding a provider record, over lookups with a
    /// known path (querier-held records count 0).
    pub hops: Figures,
    pub hops_histogram: BTreeMap<u32, u64>,
    /// Issued → first provider found (found lookups), and → query finished (all lookups).
    pub latency_first_provider_ms: Latency,
    pub latency_complete_ms: Latency,
    /// One GET_PROVIDERS round trip to a directly connected peer, same transport and Kademlia,
    /// measured after each lookup.
    pub baseline_rtt_ms: Latency,
    /// The same request to a peer not connected: dial, Noise and Yamux, then the round trip.
    pub baseline_dial_rtt_ms: Latency,
    /// Lookup p50 / baseline p50.
    pub ratio_first_provider_p50: Option<f64>,
    pub ratio_complete_p50: Option<f64>,
    /// Inbound provider records stored before each lookup was issued.
    pub provider_records_stored: Figures,
    /// Lookups issued before every expected record (providers × min(k, N − 1)) was stored.
    pub lookups_short_of_records: usize,
    pub start_providing_failed: usize,
    /// GET_PROVIDERS requests received while no lookup was published.
    pub stray_requests: u64,
    /// Observations lost to a full queue (the figures above miss them).
    pub dropped_observations: u64,
    pub samples: Vec<Sample>,
}

/// One lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub kad_requests: u32,
    pub stats_requests: u32,
    pub stats_successes: u32,
    pub stats_failures: u32,
    pub dials: u64,
    pub held_record: bool,
    /// Distinct providers found.
    pub providers_found: usize,
    pub hops: Option<u32>,
    pub unplaced: u32,
    pub first_provider_ms: Option<f64>,
    pub complete_ms: f64,
    pub baseline_ms: f64,
    pub baseline_dial_ms: f64,
    /// Requests of the baseline queries (one each when the pair is as meant).
    pub baseline_requests: u32,
    pub baseline_dial_requests: u32,
    pub records_stored: usize,
    pub records_expected: usize,
    pub start_providing_failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Mean, nearest-rank p50 and p99, and max.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Figures {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Figures {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v = sorted(values);
        Self {
            mean: mean(&v),
            p50: percentile(&v, 0.5).unwrap_or(0.0),
            p99: percentile(&v, 0.99).unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let v = sorted(values);
        Self {
            mean: mean(&v),
            min: v.first().copied().unwrap_or(0.0),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

/// p50, p90, p99 and max of `values`, in ms.
pub(crate) fn latency(values: impl IntoIterator<Item = f64>) -> Latency {
    let v = sorted(values);
    let p = |q| percentile(&v, q).unwrap_or(0.0);
    Latency { p50: p(0.5), p90: p(0.9), p99: p(0.99), max: v.last().copied().unwrap_or(0.0) }
}

/// `a / b`, when `b` is not zero.
pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn sorted(values: impl IntoIterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    v
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

impl Report {
    /// The figures as text tables, one row per network size.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{:>5} {:>5} {:>7} {:>6} {:>7} {:>8} {:>20} {:>10} {:>20}",
            "N",
            "log2N",
            "setup s",
            "table",
            "RSS MiB",
            "found",
            "kad req mean/p50/p99/max",
            "QS req",
            "hops mean/p50/p99/max",
        );
        for n in &self.networks {
            let r = &n.kad_requests;
            let h = &n.hops;
            let _ = writeln!(
                t,
                "{:>5} {:>5.2} {:>7.1} {:>6.1} {:>7.0} {:>8} {:>20} {:>10.1} {:>20}",
                n.nodes,
                n.log2_nodes,
                n.setup_s,
                n.routing_table.mean,
                n.rss_mib_after_lookups.unwrap_or(f64::NAN),
                format!("{}/{}", n.found, n.lookups),
                format!("{:.1}/{}/{}/{}", r.mean, r.p50, r.p99, r.max),
                n.query_stats_requests.mean,
                format!("{:.2}/{}/{}/{}", h.mean, h.p50, h.p99, h.max),
            );
        }
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:>5} {:>22} {:>22} {:>9} {:>9} {:>13} {:>13} {:>6}  hops histogram",
            "N",
            "first ms p50/p90/p99",
            "done ms p50/p90/p99",
            "RTT p50",
            "dial+RTT",
            "first/RTT p50",
            "done/RTT p50",
            "dials",
        );
        for n in &self.networks {
            let f = &n.latency_first_provider_ms;
            let d = &n.latency_complete_ms;
            let histogram: Vec<String> =
                n.hops_histogram.iter().map(|(h, c)| format!("{h}:{c}")).collect();
            let _ = writeln!(
                t,
                "{:>5} {:>22} {:>22} {:>9.3} {:>9.3} {:>13} {:>13} {:>6.1}  {}",
                n.nodes,
                format!("{:.2}/{:.2}/{:.2}", f.p50, f.p90, f.p99),
                format!("{:.2}/{:.2}/{:.2}", d.p50, d.p90, d.p99),
                n.baseline_rtt_ms.p50,
                n.baseline_dial_rtt_ms.p50,
                n.ratio_first_provider_p50.map_or("-".into(), |r| format!("{r:.1}")),
                n.ratio_complete_p50.map_or("-".into(), |r| format!("{r:.1}")),
                n.dials.mean,
                histogram.join(" "),
            );
        }
        for n in &self.networks {
            let anomalies = [
                ("not found", n.not_found as u64),
                ("query errors", n.errors.values().sum()),
                ("path unknown", n.path_unknown as u64),
                ("unplaced responders", n.unplaced_responders),
                ("short of records", n.lookups_short_of_records as u64),
                ("start_providing failed", n.start_providing_failed as u64),
                ("stray requests", n.stray_requests),
                ("dropped observations", n.dropped_observations),
                // The node's periodic bootstrap (every 5 min) may have run during the lookups.
                (
                    "seconds past the periodic bootstrap (300 s)",
                    (n.setup_s + n.lookups_s - 300.0).max(0.0) as u64,
                ),
            ];
            let shown: Vec<String> = anomalies
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(what, c)| format!("{what} {c}"))
                .collect();
            if !shown.is_empty() {
                let _ = writeln!(t, "N = {}: {}", n.nodes, shown.join(", "));
            }
        }
        t
    }
}

/// What a network's setup produced.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) nodes: usize,
    pub(crate) took: Duration,
    pub(crate) stats: Vec<NodeStats>,
    pub(crate) lookups_took: Duration,
    pub(crate) rss_before: Option<f64>,
    pub(crate) rss_after: Option<f64>,
    pub(crate) rss_end: Option<f64>,
}

/// The figures of one network from its lookups and what the nodes observed.
pub(crate) fn summarize(
    setup: &Setup,
    measured: Vec<Measured>,
    observed: Observed,
) -> NetworkReport {
    let mut asked = observed.asked;
    let samples: Vec<Sample> = measured
        .into_iter()
        .enumerate()
        .map(|(i, m)| sample(m, asked.remove(&(i as u64)).unwrap_or_default()))
        .collect();
    let found: Vec<&Sample> = samples.iter().filter(|s| s.providers_found > 0).collect();
    let f64s = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let first = latency(found.iter().filter_map(|s| s.first_provider_ms));
    let complete = latency(f64s(|s| s.complete_ms));
    let baseline = latency(f64s(|s| s.baseline_ms));
    NetworkReport {
        nodes: setup.nodes,
        log2_nodes: (setup.nodes as f64).log2(),
        setup_s: setup.took.as_secs_f64(),
        setup_find_node_requests: setup.stats.iter().map(|s| s.find_node_served).sum(),
        lookups_s: setup.lookups_took.as_secs_f64(),
        routing_table: Spread::of(setup.stats.iter().map(|s| s.routing_table as f64)),
        connections: Spread::of(setup.stats.iter().map(|s| s.connected as f64)),
        rss_mib_before: setup.rss_before,
        rss_mib_after_setup: setup.rss_after,
        rss_mib_after_lookups: setup.rss_end,
        lookups: samples.len(),
        found: found.len(),
        not_found: samples.len() - found.len(),
        errors: count(samples.iter().filter_map(|s| s.error.clone())),
        querier_held_record: samples.iter().filter(|s| s.held_record).count(),
        path_unknown: found.iter().filter(|s| s.hops.is_none()).count(),
        unplaced_responders: samples.iter().map(|s| u64::from(s.unplaced)).sum(),
        kad_requests: Figures::of(f64s(|s| f64::from(s.kad_requests))),
        query_stats_requests: Figures::of(f64s(|s| f64::from(s.stats_requests))),
        query_stats_successes: Figures::of(f64s(|s| f64::from(s.stats_successes))),
        dials: Figures::of(f64s(|s| s.dials as f64)),
        hops: Figures::of(samples.iter().filter_map(|s| s.hops).map(f64::from)),
        hops_histogram: count(samples.iter().filter_map(|s| s.hops)),
        latency_first_provider_ms: first,
        latency_complete_ms: complete,
        baseline_rtt_ms: baseline,
        baseline_dial_rtt_ms: latency(f64s(|s| s.baseline_dial_ms)),
        ratio_first_provider_p50: ratio(first.p50, baseline.p50),
        ratio_complete_p50: ratio(complete.p50, baseline.p50),
        provider_records_stored: Figures::of(f64s(|s| s.records_stored as f64)),
        lookups_short_of_records: samples
            .iter()
            .filter(|s| s.records_stored < s.records_expected)
            .count(),
        start_providing_failed: samples.iter().map(|s| s.start_providing_failed).sum(),
        stray_requests: observed.stray,
        dropped_observations: observed.dropped,
        samples,
    }
}

/// One lookup's sample: its path rebuilt from the answers `asked`.
fn sample(m: Measured, mut asked: Vec<Asked>) -> Sample {
    asked.sort_by_key(|a| a.at);
    let path = path::reconstruct(&m.lookup.initial, &asked, m.lookup.held_record);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Sample {
        kad_requests: u32::try_from(asked.len()).unwrap_or(u32::MAX),
        stats_requests: m.lookup.stats.requests,
        stats_successes: m.lookup.stats.successes,
        stats_failures: m.lookup.stats.failures,
        dials: m.lookup.dials,
        held_record: m.lookup.held_record,
        providers_found: m.lookup.providers,
        hops: path.hops,
        unplaced: path.unplaced,
        first_provider_ms: m.lookup.first_provider.map(ms),
        complete_ms: ms(m.lookup.finished),
        baseline_ms: ms(m.warm.finished),
        baseline_dial_ms: ms(m.cold.finished),
        baseline_requests: m.warm.stats.requests,
        baseline_dial_requests: m.cold.stats.requests,
        records_stored: m.stored,
        records_expected: m.expected,
        start_providing_failed: m.failed,
        error: m.lookup.error,
    }
}

fn count<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, u64> {
    let mut counts = BTreeMap::new();
    for item in items {
        *counts.entry(item).or_insert(0) += 1;
    }
    counts
}
