//! Overload (issue 17 item 7): one caller floods a provider with ten times the calls its policy
//! admits while publishing adverts as fast as it can, far above the provider's gossip rate; the
//! excess calls get typed answers and the excess adverts are dropped by the per-peer limit,
//! another caller's calls and adverts are still served, and the flooder is served again once it
//! slows down. Latencies and memory are printed as figures, never asserted (shared, noisy
//! machines).

use std::time::{Duration, Instant};

use capmesh_exec::Builtin;
use capmesh_market::{CallError, CallRequest};
use capmesh_testkit::{TestNode, Testnet, wait_for};
use capmesh_wire::Code;
use serde_json::json;
use tokio::task::JoinSet;

use crate::common::{cap_of, sees};

/// The provider's policy for each caller: 20 calls a second after a burst of 20.
const RATE: f64 = 20.0;
const BURST: u32 = 20;
/// The flood: ten times the admitted rate, for FLOOD.
const FLOOD_RATE: f64 = 10.0 * RATE;
const FLOOD: Duration = Duration::from_secs(3);
/// Calls of the flooder in flight at once (its own node refuses more with Busy).
const FLOOD_IN_FLIGHT: usize = 64;
/// Adverts the flooder publishes during the flood.
const ADVERTS: usize = 300;
/// The provider's gossip limit for each peer: adverts a second after a burst.
const GOSSIP_RATE: u32 = 5;
const GOSSIP_BURST: u32 = 20;
/// Calls of the well-behaved caller, before and during the flood.
const CALLS: usize = 20;

async fn timed_calls(caller: &TestNode, cap: capmesh_types::Cid, tag: &str) -> Vec<Duration> {
    let mut took = Vec::with_capacity(CALLS);
    for i in 0..CALLS {
        let start = Instant::now();
        let req = CallRequest::new(cap, json!({ "who": tag, "i": i }));
        let out = caller.node.market.call(req).await;
        let out = out.unwrap_or_else(|e| panic!("{tag} call {i} failed: {e} ({})", e.code()));
        assert_eq!(out.output, Some(json!({ "who": tag, "i": i })));
        took.push(start.elapsed());
        // Well below the policy's rate: this caller is never the one limited.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took
}

fn p(took: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = took.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() - 1) as f64 * q).round() as usize]
}

/// Resident memory of this test process, in MiB (Linux).
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Whether a refused call of the flooder was refused for load, and only for load.
fn refused_for_load(e: &CallError) -> bool {
    let load = |c: &Code| matches!(c, Code::RateLimited | Code::Busy);
    load(&e.code()) || (!e.attempts().is_empty() && e.attempts().iter().all(|a| load(&a.code)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_caller_gets_typed_refusals_while_another_is_served_and_it_recovers() {
    // 0 provides echo; 1 floods; 2 behaves.
    let net = Testnet::line(3, |i, o| match i {
        0 => o.serve_builtin(Builtin::Echo, 0, 5).gossip_rate(GOSSIP_RATE, GOSSIP_BURST),
        _ => o.bootstrap(&[0]),
    })
    .await
    .unwrap();
    let cap = cap_of(Builtin::Echo);
    let (provider, flooder, caller) = (net.node(0), net.node(1), net.node(2));
    std::fs::write(
        provider.data_dir().join("policy.toml"),
        format!("[provider]\nrate_per_sec = {RATE}\nburst = {BURST}\nconcurrency = 4\n"),
    )
    .unwrap();
    provider.node.market.policy().reload().unwrap();
    sees(flooder, cap, 1).await;
    sees(caller, cap, 1).await;

    let unloaded = timed_calls(caller, cap, "unloaded").await;
    let rss_before = rss_mib();

    // The flood: calls at FLOOD_RATE for FLOOD, and adverts as fast as they publish.
    let started = Instant::now();
    let mut flood = JoinSet::new();
    let total = (FLOOD_RATE * FLOOD.as_secs_f64()) as usize;
    let market = flooder.node.market.clone();
    let flood_calls = tokio::spawn(async move {
        let gap = Duration::from_secs_f64(1.0 / FLOOD_RATE);
        let mut results = Vec::with_capacity(total);
        for i in 0..total {
            while flood.len() >= FLOOD_IN_FLIGHT {
                results.push(flood.join_next().await.unwrap().unwrap());
            }
            let market = market.clone();
            flood.spawn(async move {
                market.call(CallRequest::new(cap, json!({ "flood": i }))).await.map(|_| ())
            });
            tokio::time::sleep(gap).await;
        }
        while let Some(r) = flood.join_next().await {
            results.push(r.unwrap());
        }
        results
    });
    let mesh = flooder.node.mesh.clone();
    let adverts = tokio::spawn(async move {
        let mut published = 0;
        for i in 0..ADVERTS {
            let contract = capmesh_contract::scaffold(&format!("flood{i}")).unwrap();
            if mesh.publish(contract, None, None, None).await.is_ok() {
                published += 1;
            }
        }
        published
    });
    // The other caller publishes during the flood too: its own bucket at the provider is full.
    let behaved = caller.publish_contract("behaved").await.unwrap();
    let loaded = timed_calls(caller, cap, "loaded").await;
    let results = flood_calls.await.unwrap();
    let published = adverts.await.unwrap();
    let flood_secs = started.elapsed().as_secs_f64();
    let rss_after = rss_mib();

    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<&CallError> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let untyped: Vec<String> = refused
        .iter()
        .filter(|e| !refused_for_load(e))
        .map(|e| format!("{} ({})", e, e.code()))
        .collect();
    let stats = provider.node.market.stats();
    let info = provider.node.net.info().await.unwrap();
    eprintln!(
        "overload measurement: flood {total} calls at {FLOOD_RATE}/s over {flood_secs:.1} s: \
         {ok} ok, {} refused; provider refused {:?}; {published} adverts published, provider \
         gossip {:?}; the other caller p50 / p99 {:.1} / {:.1} ms unloaded, {:.1} / {:.1} ms \
         under the flood; test process RSS {rss_before:.1} → {rss_after:.1} MiB",
        refused.len(),
        stats.refused,
        info.gossip,
        p(&unloaded, 0.5),
        p(&unloaded, 0.99),
        p(&loaded, 0.5),
        p(&loaded, 0.99),
    );
    // Every refusal says it was load, by code.
    assert!(untyped.is_empty(), "refusals not for load: {untyped:?}");
    assert!(!refused.is_empty(), "ten times the admitted rate, and nothing was refused");
    // The provider admitted no more than its policy allows (offers spend tokens too, so
    // fewer calls get through than this bound).
    let admitted = f64::from(BURST) + RATE * flood_secs + 1.0;
    assert!((ok as f64) <= admitted, "{ok} flood calls served, the policy admits {admitted:.0}");
    // The refusals were the provider's, counted by code.
    let by_provider = stats.refused.get("RateLimited").copied().unwrap_or_default()
        + stats.refused.get("Busy").copied().unwrap_or_default();
    assert!(by_provider > 0, "{:?}", stats.refused);
    // The advert flood tripped the provider's per-peer gossip limit: it took no more than each
    // neighbour's bucket allows (a flooded advert may also come forwarded by the other caller,
    // under that peer's bucket), the rest was dropped.
    assert!(
        info.gossip.rate_limited > 0,
        "{published} adverts, none rate limited: {:?}",
        info.gossip
    );
    // Every other node of the testnet is a neighbour at most.
    let neighbours = (net.len() - 1) as f64;
    let took = neighbours * (f64::from(GOSSIP_BURST) + f64::from(GOSSIP_RATE) * flood_secs) + 1.0;
    assert!(
        (info.gossip.accepted as f64) <= took,
        "the provider accepted {} adverts; its limit lets in {took:.0} from {neighbours} peers",
        info.gossip.accepted
    );
    // The other caller's advert got through the flood.
    wait_for("the other caller's advert at the provider", Duration::from_secs(10), || async {
        if provider.has_capability(&behaved) { Ok(()) } else { Err("not yet") }
    })
    .await;

    // Recovery: at the policy's pace the flooder is served again.
    tokio::time::sleep(Duration::from_secs_f64(f64::from(BURST) / RATE)).await;
    for i in 0..3 {
        let out = flooder.node.market.call(CallRequest::new(cap, json!({ "after": i }))).await;
        out.unwrap_or_else(|e| panic!("after the flood, call {i}: {e}"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and its adverts are taken again once its bucket refilled (Ignore costs no score).
    tokio::time::sleep(Duration::from_secs_f64(f64::from(GOSSIP_BURST) / f64::from(GOSSIP_RATE)))
        .await;
    let again = flooder.publish_contract("after-flood").await.unwrap();
    wait_for("the flooder's advert after the flood", Duration::from_secs(10), || async {
        if provider.has_capability(&again) { Ok(()) } else { Err("not yet") }
    })
    .await;
    net.shutdown().await.unwrap();
}
