//! Gossip on the registry topic: validation decides forwarding; per-peer rate limits.

use std::time::{Duration, Instant};

use capmesh_net::KadMode;

use crate::{
    init_logs,
    util::{GUARD, Node, cfg, guard, show, tcp, wait_for},
};

/// Publishes `A-warm-<n>` from `from` until `to`'s handler has seen one: gossipsub needs the
/// subscriptions exchanged (and, for forwarding, the mesh built) before a message goes anywhere,
/// and publishing to nobody is not an error.
async fn warm_up(from: &Node, to: &Node) {
    let deadline = tokio::time::Instant::now() + GUARD;
    for n in 0u32.. {
        let msg = format!("A-warm-{n}").into_bytes();
        guard("publish", from.handle.publish(msg)).await.expect("publish");
        let arrived = async {
            loop {
                if to.seen.gossip().iter().any(|m| m.starts_with(b"A-warm-")) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(Duration::from_millis(200), arrived).await.is_ok() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "gossip never arrived in {GUARD:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_is_forwarded_only_when_accepted() {
    init_logs();
    // Kademlia clients: no peer discovery, so the line 0-1-2 stays a line and node 2 can only
    // hear node 0 through node 1.
    let config = || cfg().with_kad_mode(KadMode::Client);
    let n0 = Node::start(50, config(), &[tcp()]).await;
    let n1 = Node::start(51, config(), &[tcp()]).await;
    let n2 = Node::start(52, config(), &[tcp()]).await;
    n1.connect(&n0).await;
    n2.connect(&n1).await;
    warm_up(&n0, &n2).await;

    guard("publish", n0.handle.publish(b"A1 accepted".to_vec())).await.expect("publish");
    n2.seen.wait_gossip("A1 at node 2", |seen| seen.iter().any(|m| m == b"A1 accepted")).await;

    guard("publish", n0.handle.publish(b"R1 rejected".to_vec())).await.expect("publish");
    n1.seen.wait_gossip("R1 at node 1", |seen| seen.iter().any(|m| m == b"R1 rejected")).await;
    // Node 1's verdict is reported (its forwarding decision made) before the follow-up is sent.
    wait_for("node 1 rejected R1", GUARD, async || {
        let info = n1.handle.info().await.map_err(|e| e.to_string())?;
        if info.gossip.rejected >= 1 { Ok(()) } else { Err(format!("{:?}", info.gossip)) }
    })
    .await;
    guard("publish", n0.handle.publish(b"A2 accepted".to_vec())).await.expect("publish");
    n2.seen.wait_gossip("A2 at node 2", |seen| seen.iter().any(|m| m == b"A2 accepted")).await;
    // A2 came the same way after R1 would have: R1 was not forwarded.
    let at2 = n2.seen.gossip();
    assert!(
        !n2.seen.saw_gossip(b"R1 rejected"),
        "node 1 forwarded a rejected message: {:?}",
        show(&at2)
    );
    let info2 = n2.handle.info().await.expect("info");
    assert_eq!(info2.gossip.rejected, 0, "{:?}", info2.gossip);

    let info1 = n1.handle.info().await.expect("info");
    assert!(info1.gossip.accepted >= 1, "{:?}", info1.gossip);
    assert!(info1.gossip.rejected >= 1, "{:?}", info1.gossip);
    // The line held: node 2 heard node 0 only through node 1.
    assert!(!n0.connected_to(&n2.id).await, "nodes 0 and 2 connected directly");
    assert!(!n2.connected_to(&n0.id).await, "nodes 0 and 2 connected directly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_over_a_peers_rate_is_dropped() {
    init_logs();
    const RATE: u64 = 1;
    const BURST: u64 = 3;
    let n0 = Node::start(53, cfg(), &[tcp()]).await;
    let n1 = Node::start(54, cfg().with_gossip_rate(RATE as u32, BURST as u32), &[tcp()]).await;
    let start = Instant::now();
    n1.connect(&n0).await;
    // The warm-up messages count against node 0's budget at node 1 too; they are included in
    // what node 1's handler saw below.
    warm_up(&n0, &n1).await;
    for i in 0..20 {
        let msg = format!("A-burst-{i}").into_bytes();
        guard("publish", n0.handle.publish(msg)).await.expect("publish");
    }
    let info = wait_for("all 20 judged or dropped at node 1", GUARD, async || {
        let info = n1.handle.info().await.map_err(|e| e.to_string())?;
        let bursts = n1.seen.gossip().iter().filter(|m| m.starts_with(b"A-burst-")).count() as u64;
        // Every burst message arrived: either the handler saw it or the limiter dropped it.
        if info.gossip.rate_limited > 0 && bursts + info.gossip.rate_limited >= 20 {
            Ok(info)
        } else {
            Err(format!("{:?}, burst messages seen {bursts}", info.gossip))
        }
    })
    .await;
    let seen = n1.seen.gossip().len() as u64;
    let elapsed = start.elapsed().as_secs_f64().ceil() as u64;
    assert!(info.gossip.rate_limited > 0, "{:?}", info.gossip);
    assert!(
        seen <= BURST + elapsed * RATE + 1,
        "node 1's handler saw {seen} messages in {elapsed} s at {RATE}/s after a burst of {BURST}"
    );
    assert!(seen >= 1);
}
