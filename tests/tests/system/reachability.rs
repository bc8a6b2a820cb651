//! Reachability in the node (issue 13 item 2), in-process on 127.0.0.1: a node forced private,
//! listening on nothing (as behind a NAT), reserves relay slots by itself on relays it meets
//! through its bootstrap peers, announces its circuit addresses, is called through them, and
//! replaces a reservation whose relay went away. `status` and `peers` show it.

use capmesh::config::Reachability;
use capmesh_exec::Builtin;
use capmesh_market::CallRequest;
use capmesh_testkit::{NodeOpts, TestNode, Testnet, wait_for};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::{Advert, Signed, cbor::Limits};
use serde_json::json;

use crate::common::{T, cap_of};

fn api(node: &TestNode) -> capmesh_api::Client {
    capmesh_api::Client::new(node.node.api_addr, node.node.api_token.clone()).unwrap()
}

/// A node behind a NAT: forced private, listening on nothing, announcing nothing.
fn private() -> NodeOpts {
    NodeOpts::new().reachability(Reachability::Private).no_listen().announce(false)
}

/// Waits until `node`'s status shows a reservation on one of `relays`; returns that relay.
async fn reserved_on(node: &TestNode, relays: &[PeerId]) -> (PeerId, capmesh_api::Status) {
    let client = api(node);
    wait_for("a relay reservation in status", T, || async {
        let s = client.status().await.map_err(|e| e.to_string())?;
        let on = relays.iter().find(|r| {
            let r = r.to_string();
            s.relay_reservations.iter().any(|c| c.contains(&r) && c.contains("/p2p-circuit"))
        });
        match on {
            Some(r) => Ok((*r, s)),
            None => Err(format!("{s:?}")),
        }
    })
    .await
}

/// The addresses in the newest advert `node`'s replica holds from `provider` for `cap`.
fn advert_addrs(node: &TestNode, cap: Cid, provider: PeerId) -> Vec<String> {
    let q = capmesh_store::Query { capability: Some(cap), ..Default::default() };
    let page = node.node.store.query(&q, capmesh::now_ms()).unwrap();
    let limits = Limits::default();
    page.hits
        .iter()
        .filter(|h| h.summary.provider == provider)
        .filter_map(|h| {
            let (_, bytes) = node.node.store.record(&h.id).ok()??;
            Signed::<Advert>::from_bytes(&bytes, limits).and_then(|s| s.decode(limits)).ok()
        })
        .max_by_key(|a| a.seq)
        .map(|a| a.addrs)
        .unwrap_or_default()
}

/// Waits until `node` holds an advert of `provider` for `cap` naming a circuit through `relay`.
async fn sees_circuit(node: &TestNode, cap: Cid, provider: PeerId, relay: PeerId) {
    let relay = relay.to_string();
    wait_for("an advert with a circuit address through the relay", T, || async {
        let addrs = advert_addrs(node, cap, provider);
        if addrs.iter().any(|a| a.contains("/p2p-circuit") && a.contains(&relay)) {
            Ok(())
        } else {
            Err(addrs)
        }
    })
    .await;
}

/// How `node` is connected to `peer`, as `GET /v1/peers` says.
async fn connection(node: &TestNode, peer: PeerId) -> String {
    let peers = api(node).peers().await.unwrap();
    peers.into_iter().find(|p| p.peer_id == peer).map(|p| p.connection).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_reserves_on_a_relay_by_itself_and_is_called_through_it() {
    let mut net = Testnet::default();
    let r = net.add(NodeOpts::new().relay_server()).await.unwrap();
    // C listens on loopback but announces nothing and answers no Kademlia queries, so P never
    // learns where C is: the only way between them is P's circuit.
    let c = net
        .add(
            NodeOpts::new()
                .bootstrap(&[r])
                .announce(false)
                .kad_mode(capmesh::config::KadMode::Client),
        )
        .await
        .unwrap();
    // P knows R only as a bootstrap peer: no relay is configured.
    let p = net.add(private().bootstrap(&[r]).serve_builtin(Builtin::Echo, 1, 5)).await.unwrap();
    let (rid, cid, pid) = (net.node(r).peer_id(), net.node(c).peer_id(), net.node(p).peer_id());

    let (_, status) = reserved_on(net.node(p), &[rid]).await;
    assert_eq!(status.reachability, "private");
    // The circuit is a confirmed external address, and `listen_addrs` has nothing direct.
    assert!(status.external_addrs.iter().any(|a| a.contains("/p2p-circuit")), "{status:?}");
    assert!(status.listen_addrs.iter().all(|a| a.contains("/p2p-circuit")), "{status:?}");

    // The advert published at start had no address: the mesh republishes it once the node's
    // addresses changed (the circuit), and C's replica gets the new one.
    let cap = cap_of(Builtin::Echo);
    sees_circuit(net.node(c), cap, pid, rid).await;
    assert!(
        !net.node(c).node.net.peers().await.unwrap().iter().any(|x| x.peer == pid && x.connected)
    );

    let outcome = net
        .node(c)
        .node
        .market
        .call(CallRequest::new(cap, json!({"text": "through the relay"})))
        .await
        .unwrap();
    assert_eq!(outcome.provider, pid);
    assert_eq!(outcome.output, Some(json!({"text": "through the relay"})));

    // Relayed: P listens on nothing, so DCUtR has no address of P's to offer C, and C's
    // address never reaches P (C announces none, and its AutoNAT has not confirmed one this
    // early); nothing upgrades the connection on loopback. Real punches need the NAT lab.
    assert_eq!(connection(net.node(p), cid).await, "relayed");
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_whose_relay_stops_is_replaced_and_the_node_stays_callable() {
    let mut net = Testnet::default();
    let r1 = net.add(NodeOpts::new().relay_server()).await.unwrap();
    let r2 = net.add(NodeOpts::new().relay_server().bootstrap(&[r1])).await.unwrap();
    // C can only dial out (it listens on nothing) and never reserves (forced public).
    let c = net
        .add(
            NodeOpts::new()
                .no_listen()
                .announce(false)
                .kad_mode(capmesh::config::KadMode::Client)
                .reachability(Reachability::Public)
                .bootstrap(&[r1, r2]),
        )
        .await
        .unwrap();
    // One reservation at a time, so losing it must bring a new one.
    let p = net
        .add(private().relay_reservations(1).bootstrap(&[r1, r2]).serve_builtin(
            Builtin::Echo,
            1,
            5,
        ))
        .await
        .unwrap();
    let relays = [net.node(r1).peer_id(), net.node(r2).peer_id()];
    let (cid, pid) = (net.node(c).peer_id(), net.node(p).peer_id());
    let cap = cap_of(Builtin::Echo);

    let (first, status) = reserved_on(net.node(p), &relays).await;
    assert_eq!(status.relay_reservations.len(), 1, "{status:?}");
    sees_circuit(net.node(c), cap, pid, first).await;
    let market = net.node(c).node.market.clone();
    let call = |text: &'static str| {
        let market = market.clone();
        async move { market.call(CallRequest::new(cap, json!({ "text": text }))).await }
    };
    let outcome = call("before").await.unwrap();
    assert_eq!(outcome.provider, pid);
    // C cannot be dialed and P offers no address to punch from: relayed, and it stays so.
    assert_eq!(connection(net.node(p), cid).await, "relayed");

    // The relay P chose stops: P reserves on the other one.
    let (stopped, other) = if first == relays[0] { (r1, relays[1]) } else { (r2, relays[0]) };
    net.stop(stopped).await.unwrap();
    let (second, status) = reserved_on(net.node(p), &[other]).await;
    assert_eq!(second, other);
    assert_eq!(status.relay_reservations.len(), 1, "{status:?}");
    assert_eq!(status.reachability, "private");

    // Republished by itself with the new circuit.
    sees_circuit(net.node(c), cap, pid, other).await;
    let outcome = call("after").await.unwrap();
    assert_eq!(outcome.provider, pid);
    assert_eq!(outcome.output, Some(json!({"text": "after"})));
    net.shutdown().await.unwrap();
}
