//! One caller floods a provider (issue 17 item 7): calls at a multiple of the rate the
//! provider's policy admits, and adverts as fast as they publish, while another caller makes
//! paced calls and publishes one advert. [`run`] measures; the system test asserts the bounds on
//! its [`Report`], the `overload` example prints it as figures from a release build.

use std::time::{Duration, Instant};

use capmesh_exec::Builtin;
use capmesh_market::{CallError, CallRequest};
use capmesh_net::GossipCounters;
use capmesh_types::Cid;
use capmesh_wire::Code;
use serde_json::json;
use tokio::task::JoinSet;

use crate::{TestNode, Testnet, wait_for};

/// The scenario's knobs; [`Flood::default`] is the test's.
#[derive(Debug, Clone)]
pub struct Flood {
    /// The provider's policy for each caller: calls a second after a burst.
    pub rate: f64,
    pub burst: u32,
    /// The flood's rate as a multiple of `rate`, for `duration`.
    pub factor: f64,
    pub duration: Duration,
    /// The flooder's calls in flight at once (its own node refuses more with Busy).
    pub in_flight: usize,
    /// Adverts the flooder publishes during the flood.
    pub adverts: usize,
    /// The provider's gossip limit for each peer: adverts a second after a burst.
    pub gossip_rate: u32,
    pub gossip_burst: u32,
    /// Paced calls of the other caller, before the flood and during it.
    pub calls: usize,
    pub pace: Duration,
}

impl Default for Flood {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 20,
            factor: 10.0,
            duration: Duration::from_secs(3),
            in_flight: 64,
            adverts: 300,
            gossip_rate: 5,
            gossip_burst: 20,
            calls: 20,
            pace: Duration::from_millis(100),
        }
    }
}

/// What one run saw. `net` is left running (provider 0, flooder 1, other caller 2) for checks
/// after the flood.
#[derive(Debug)]
pub struct Report {
    pub net: Testnet,
    pub cap: Cid,
    /// The flooder's calls: how each ended.
    pub flood: Vec<Result<(), CallError>>,
    pub flood_secs: f64,
    /// Adverts the flooder published, and the provider's gossip verdicts after the flood.
    pub published: usize,
    pub gossip: GossipCounters,
    /// The provider's refusals by code.
    pub refused_by_provider: std::collections::BTreeMap<String, u64>,
    /// The other caller's call latencies, unloaded then under the flood.
    pub unloaded: Vec<Duration>,
    pub loaded: Vec<Duration>,
    /// The advert the other caller published during the flood.
    pub behaved_advert: Cid,
    /// This process's resident memory before and after the flood, and its peak, in MiB.
    pub rss_before: f64,
    pub rss_after: f64,
    pub rss_peak: f64,
}

impl Report {
    pub fn served(&self) -> usize {
        self.flood.iter().filter(|r| r.is_ok()).count()
    }

    /// The flooder's refusals that were not for load (RateLimited or Busy), as text.
    pub fn not_for_load(&self) -> Vec<String> {
        self.flood
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|e| !refused_for_load(e))
            .map(|e| format!("{e} ({})", e.code()))
            .collect()
    }
}

/// Whether a refused call was refused for load, and only for load.
pub fn refused_for_load(e: &CallError) -> bool {
    let load = |c: &Code| matches!(c, Code::RateLimited | Code::Busy);
    load(&e.code()) || (!e.attempts().is_empty() && e.attempts().iter().all(|a| load(&a.code)))
}

/// The `q` quantile of `took`, in milliseconds.
pub fn quantile_ms(took: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = took.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms.get(((ms.len().saturating_sub(1)) as f64 * q).round() as usize).copied().unwrap_or(0.0)
}

/// A line of this process's /proc/self/status, in MiB (Linux; 0 elsewhere).
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn paced_calls(caller: &TestNode, cap: Cid, flood: &Flood, tag: &str) -> Vec<Duration> {
    let mut took = Vec::with_capacity(flood.calls);
    for i in 0..flood.calls {
        let start = Instant::now();
        let req = CallRequest::new(cap, json!({ "who": tag, "i": i }));
        let out = caller.node.market.call(req).await;
        let out = out.unwrap_or_else(|e| panic!("{tag} call {i} failed: {e} ({})", e.code()));
        assert_eq!(out.output, Some(json!({ "who": tag, "i": i })), "{tag} call {i}");
        took.push(start.elapsed());
        // Well below the policy's rate: this caller is never the one limited.
        tokio::time::sleep(flood.pace).await;
    }
    took
}

/// Starts the three nodes, measures the other caller unloaded, then floods.
pub async fn run(flood: Flood) -> anyhow::Result<Report> {
    let (gossip_rate, gossip_burst) = (flood.gossip_rate, flood.gossip_burst);
    let net = Testnet::line(3, |i, o| match i {
        0 => o.serve_builtin(Builtin::Echo, 0, 5).gossip_rate(gossip_rate, gossip_burst),
        _ => o.bootstrap(&[0]),
    })
    .await?;
    let cap = capmesh_contract::check(&Builtin::Echo.contract())?;
    let (provider, flooder, caller) = (net.node(0), net.node(1), net.node(2));
    std::fs::write(
        provider.data_dir().join("policy.toml"),
        format!(
            "[provider]\nrate_per_sec = {}\nburst = {}\nconcurrency = 4\n",
            flood.rate, flood.burst
        ),
    )?;
    provider.node.market.policy().reload()?;
    for node in [flooder, caller] {
        wait_for("the provider's advert", Duration::from_secs(20), || async {
            if node.has_capability(&cap) { Ok(()) } else { Err("not yet") }
        })
        .await;
    }

    let unloaded = paced_calls(caller, cap, &flood, "unloaded").await;
    let rss_before = status_mib("VmRSS:");

    let started = Instant::now();
    let rate = flood.rate * flood.factor;
    let total = (rate * flood.duration.as_secs_f64()) as usize;
    let (market, in_flight) = (flooder.node.market.clone(), flood.in_flight);
    let calls = tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / rate);
        let mut running = JoinSet::new();
        let mut results = Vec::with_capacity(total);
        for i in 0..total {
            while running.len() >= in_flight {
                if let Some(r) = running.join_next().await {
                    results.push(r.unwrap_or_else(|e| panic!("a flood call panicked: {e}")));
                }
            }
            let market = market.clone();
            running.spawn(async move {
                market.call(CallRequest::new(cap, json!({ "flood": i }))).await.map(|_| ())
            });
            tokio::time::sleep(gap).await;
        }
        while let Some(r) = running.join_next().await {
            results.push(r.unwrap_or_else(|e| panic!("a flood call panicked: {e}")));
        }
        results
    });
    let (mesh, adverts) = (flooder.node.mesh.clone(), flood.adverts);
    let published = tokio::spawn(async move {
        let mut published = 0;
        for i in 0..adverts {
            let Ok(contract) = capmesh_contract::scaffold(&format!("flood{i}")) else { continue };
            if mesh.publish(contract, None, None, None).await.is_ok() {
                published += 1;
            }
        }
        published
    });
    // The other caller publishes during the flood too: its own bucket at the provider is full.
    let behaved_advert = caller.publish_contract("behaved").await?;
    let loaded = paced_calls(caller, cap, &flood, "loaded").await;
    let flood_results = calls.await?;
    let published = published.await?;
    let flood_secs = started.elapsed().as_secs_f64();
    let rss_after = status_mib("VmRSS:");
    let gossip = provider.node.net.info().await?.gossip;
    let refused_by_provider = provider.node.market.stats().refused;
    Ok(Report {
        cap,
        flood: flood_results,
        flood_secs,
        published,
        gossip,
        refused_by_provider,
        unloaded,
        loaded,
        behaved_advert,
        rss_before,
        rss_after,
        rss_peak: status_mib("VmHWM:"),
        net,
    })
}
