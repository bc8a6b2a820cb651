//! Failover past the fan-out (issue 17 item 6): when the first providers of the ranking cannot
//! be reached, a call goes on down the ranking, a fan-out at a time, within its deadline and
//! its limit on providers, and lists every failed try.

use std::time::Duration;

use capmesh_exec::Builtin;
use capmesh_market::{CallError, CallEvent, CallRequest};
use capmesh_testkit::{NodeOpts, Testnet};
use capmesh_types::{Cid, PeerId};
use serde_json::json;

use crate::common::{cap_of, sees};

/// A caller (node 0) and providers 1..=n of `builtin` at `prices[i - 1]` credit, each
/// bootstrapped from the caller; once the caller holds every advert, the providers in `stop`
/// are stopped (their adverts stay in its replica). Returns the net, the capability and the
/// providers' peer ids (index 0: provider 1).
async fn providers(
    builtin: Builtin,
    prices: &[u64],
    stop: &[usize],
) -> (Testnet, Cid, Vec<PeerId>) {
    let mut net = Testnet::default();
    net.add(NodeOpts::new()).await.unwrap();
    for &price in prices {
        net.add(NodeOpts::new().bootstrap(&[0]).serve_builtin(builtin, price, 5)).await.unwrap();
    }
    let cap = cap_of(builtin);
    sees(net.node(0), cap, prices.len()).await;
    let ids = (1..=prices.len()).map(|i| net.node(i).peer_id()).collect();
    for &i in stop {
        net.stop(i).await.unwrap();
    }
    (net, cap, ids)
}

/// Ranked by price alone: provider 1 first.
fn by_price(cap: Cid, args: serde_json::Value) -> CallRequest {
    CallRequest::new(cap, args).with_weights("price=1".parse().unwrap())
}

fn tried(attempts: &[capmesh_market::Attempt]) -> Vec<(PeerId, &str, &str)> {
    attempts.iter().map(|a| (a.provider, a.code.as_str(), a.stage)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_best_ranked_providers_unreachable_the_fourth_serves_the_call() {
    // The default fan-out is 3: the first one asks exactly the three stopped providers.
    let (net, cap, p) = providers(Builtin::Echo, &[1, 2, 3, 4], &[1, 2, 3]).await;
    let caller = net.node(0);
    let (tx, mut events) = tokio::sync::mpsc::channel(64);
    let outcome = caller
        .node
        .market
        .call(by_price(cap, json!({"past": "the fan-out"})).with_events(tx))
        .await
        .unwrap();
    assert_eq!(outcome.provider, p[3]);
    assert_eq!(outcome.output, Some(json!({"past": "the fan-out"})));
    assert_eq!(outcome.price.amount, 4);
    assert!(!outcome.warm);
    assert_eq!(
        tried(&outcome.attempts),
        [
            (p[0], "Unreachable", "intent"),
            (p[1], "Unreachable", "intent"),
            (p[2], "Unreachable", "intent")
        ],
        "{:?}",
        outcome.attempts
    );
    assert_eq!(outcome.requests, 5, "two fan-outs (3 + 1 Intents), one TaskStart: {outcome:?}");
    let mut fanouts = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let CallEvent::Providers { providers } = event {
            fanouts.push(providers);
        }
    }
    assert_eq!(fanouts, [vec![p[0], p[1], p[2]], vec![p[3]]], "one event per fan-out");
    assert_eq!(net.node(4).node.market.stats().tasks_started, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_stops_at_its_limit_and_at_the_deadline_with_every_attempt_listed() {
    // Providers 1–3 stopped; 4 runs the call past the deadline; 5 would serve, last.
    let (net, cap, p) = providers(Builtin::Sleep, &[1, 2, 3, 4, 5], &[1, 2, 3]).await;
    let caller = net.node(0);
    let (fourth, fifth) = (net.node(4).node.market.clone(), net.node(5).node.market.clone());

    // At most two providers: the walk ends with the first two, both unreachable.
    let err = caller
        .node
        .market
        .call(by_price(cap, json!({"ms": 1})).with_max_providers(2))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Exhausted { .. }), "{err}");
    assert_eq!(err.code(), capmesh_wire::Code::Unreachable, "{err}");
    assert_eq!(
        tried(err.attempts()),
        [(p[0], "Unreachable", "intent"), (p[1], "Unreachable", "intent")],
        "{err}"
    );
    assert_eq!(fourth.stats().intents_served, 0, "not asked past the limit");
    assert_eq!(fifth.stats().intents_served, 0, "not asked past the limit");

    // Past the three unreachable ones, the fourth runs longer than the call may take: the walk
    // stops at the deadline and never starts the call at the fifth.
    let err = caller
        .node
        .market
        .call(by_price(cap, json!({"ms": 600_000})).with_deadline(Duration::from_secs(15)))
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Deadline { .. }), "{err}");
    assert_eq!(err.code(), capmesh_wire::Code::Timeout);
    assert_eq!(
        tried(err.attempts()),
        [
            (p[0], "Unreachable", "intent"),
            (p[1], "Unreachable", "intent"),
            (p[2], "Unreachable", "intent"),
            (p[3], "Timeout", "task"),
        ],
        "{err}"
    );
    assert_eq!(fourth.stats().tasks_started, 1);
    assert_eq!(fifth.stats().tasks_started, 0, "no try after the deadline");
}
