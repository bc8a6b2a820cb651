//! Multi-node scenarios with real libp2p nodes on 127.0.0.1, in-process (capmesh-testkit).

use std::time::Duration;

use capmesh_mesh::{FindEvent, Source};
use capmesh_testkit::{Testnet, wait_for};
use capmesh_types::{Cid, Codec, NodeKey};
use capmesh_wire::{Advert, AdvertiseCapability, Envelope, Price, Signed, cbor};

const T: Duration = Duration::from_secs(30);

/// Runs a find and collects its results and final event.
async fn find(node: &capmesh_testkit::TestNode, cap: Cid) -> (Vec<capmesh_mesh::Found>, FindEvent) {
    let mut rx = node.node.mesh.find(cap, 10, Some(Duration::from_secs(20)));
    let mut found = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            FindEvent::Found(f) => found.push(*f),
            done @ FindEvent::Done { .. } => return (found, done),
        }
    }
    panic!("find ended without Done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_in_a_line_find_by_id_through_kademlia_alone() {
    // The searcher (node 9) neither gossips nor syncs, and is connected only to node 8; the
    // provider is node 0. Only Kademlia can tell it who provides the capability.
    let net = Testnet::line(10, |i, o| if i == 9 { o.gossip(false).sync(false) } else { o })
        .await
        .unwrap();
    let searcher = net.node(9);
    let provider = net.node(0);
    let peers = searcher.node.net.peers().await.unwrap();
    assert!(!peers.iter().any(|p| p.peer == provider.peer_id() && p.connected));
    let cap = provider.publish_contract("line-echo").await.unwrap();
    // Provider records are in the DHT once another node can get them (start_providing's own
    // count is only what was sent).
    let (found, done) = wait_for("a Kademlia find from node 9", T, || async {
        let (found, done) = find(searcher, cap).await;
        if found.is_empty() { Err(format!("{done:?}")) } else { Ok((found, done)) }
    })
    .await;
    assert_eq!(found.len(), 1, "{found:?}");
    let hit = &found[0];
    assert_eq!(hit.source, Source::Kademlia);
    assert_eq!(hit.advert.provider, provider.peer_id());
    assert_eq!(hit.advert.capability, cap);
    assert!(hit.kad_requests >= 1, "{hit:?}");
    let FindEvent::Done { hits, kad_requests, .. } = done else { unreachable!() };
    assert_eq!(hits, 1);
    assert!(kad_requests >= hit.kad_requests);
    // What Discover brought back was verified and stored: the next find is answered locally.
    wait_for("the discovered advert stored", T, || async {
        searcher.has_capability(&cap).then_some(()).ok_or(())
    })
    .await;
    let (again, _) = find(searcher, cap).await;
    assert_eq!(again[0].source, Source::Replica);
    // The provider record lives on other nodes, not only on the provider: with the provider
    // gone, a lookup still names it.
    let mut net = net;
    let provider_id = net.node(0).peer_id();
    net.stop(0).await.unwrap();
    let mut lookup = net.node(9).node.net.get_providers(capmesh_mesh::kad_key(&cap)).await.unwrap();
    let mut named = false;
    while let Some(event) = lookup.recv().await {
        match event {
            capmesh_net::ProviderEvent::Found { providers, .. } => {
                named |= providers.iter().any(|(p, _)| *p == provider_id);
            }
            capmesh_net::ProviderEvent::Done { .. } => break,
        }
    }
    assert!(named, "no other node holds the provider record");
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advert_reaches_every_replica_by_gossip_and_a_retirement_removes_it_everywhere() {
    // Sync off everywhere: only gossip can carry the records.
    let net = Testnet::line(5, |_, o| o.sync(false)).await.unwrap();
    wait_for("gossip meshes formed", T, || async {
        let info = net.node(4).node.net.info().await.unwrap();
        if info.gossip_peers > 0 { Ok(()) } else { Err(info.gossip_peers) }
    })
    .await;
    let cap = net.node(0).publish_contract("gossip-echo").await.unwrap();
    wait_for("the advert in every replica", T, || async {
        let missing: Vec<usize> =
            net.nodes().filter(|n| !n.has_capability(&cap)).map(|n| n.index).collect();
        if missing.is_empty() { Ok(()) } else { Err(missing) }
    })
    .await;
    for n in net.nodes().skip(1) {
        let status = n.node.net.info().await.unwrap();
        assert!(status.gossip.accepted >= 1, "node {}: {:?}", n.index, status.gossip);
    }
    net.node(0).node.mesh.retire(cap).await.unwrap();
    wait_for("the capability gone from every replica", T, || async {
        let still: Vec<usize> =
            net.nodes().filter(|n| n.has_capability(&cap)).map(|n| n.index).collect();
        if still.is_empty() { Ok(()) } else { Err(still) }
    })
    .await;
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_during_a_publish_catches_up_through_sync() {
    let mut net = Testnet::line(3, |_, o| o).await.unwrap();
    let (dir, opts) = net.stop(2).await.unwrap();
    let cap = net.node(0).publish_contract("while-you-were-out").await.unwrap();
    wait_for("the advert at node 1", T, || async {
        net.node(1).has_capability(&cap).then_some(()).ok_or(())
    })
    .await;
    // Gossip only carries what is published while a node listens: node 2 must sync.
    net.restart(2, dir, opts).await.unwrap();
    wait_for("the advert at node 2 after restart", T, || async {
        let n = net.node(2);
        if n.has_capability(&cap) { Ok(()) } else { Err(n.node.mesh.stats()) }
    })
    .await;
    let stats = net.node(2).node.mesh.stats();
    assert!(stats.synced_records >= 1, "{stats:?}");
    net.shutdown().await.unwrap();
}

/// A gossip envelope signed by `key` around `body`.
fn gossip_envelope(key: &NodeKey, body: AdvertiseCapability) -> Vec<u8> {
    Envelope::builder(body).sign(key, capmesh::now_ms()).unwrap().to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_adverts_and_wrong_contracts_are_refused_everywhere_and_never_forwarded() {
    let net = Testnet::line(2, |_, o| o.sync(false)).await.unwrap();
    // The attacker is a bare network node that listens nowhere and dials only node 1: whatever
    // node 0 receives of its messages must have been forwarded by node 1.
    let attacker = NodeKey::from_seed([77; 32]);
    let config = capmesh_net::Config::default()
        .with_gossip_heartbeat(Duration::from_millis(100))
        .with_kad_mode(capmesh_net::KadMode::Client);
    let (service, sender) = capmesh_net::NetworkService::new(&attacker, config).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn(service.run(Silent, cancel.clone()));
    sender.dial(net.node(1).addr().await.unwrap()).await.unwrap();
    wait_for("gossip meshes formed", T, || async {
        let a = sender.info().await.unwrap();
        let i1 = net.node(1).node.net.info().await.unwrap();
        let i0 = net.node(0).node.net.info().await.unwrap();
        if a.gossip_peers >= 1 && i1.gossip_peers >= 2 && i0.gossip_peers >= 1 {
            Ok(())
        } else {
            Err((a.gossip_peers, i1.gossip_peers, i0.gossip_peers))
        }
    })
    .await;
    let now = capmesh::now_ms();
    let contract = capmesh_contract::scaffold("forged").unwrap();
    let cap = Cid::of(Codec::DagCbor, &cbor::to_vec(&contract).unwrap());
    let advert = Advert {
        capability: cap,
        provider: attacker.peer_id(),
        addrs: vec![],
        price: Price { amount: 0, unit: "free".into() },
        limits: capmesh_mesh::default_limits(),
        attestations: vec![],
        seq: 1,
        issued: now,
        expires: now + 3_600_000,
    };
    // 1. A bad signature on the advert.
    let good = Signed::sign(&attacker, &advert).unwrap();
    let mut sig = *good.sig();
    sig[0] ^= 1;
    let forged = Signed::<Advert>::from_parts(good.payload().to_vec(), sig);
    let bad_sig = gossip_envelope(
        &attacker,
        AdvertiseCapability { advert: forged, contract: contract.clone() },
    );
    // 2. A correctly signed advert sent with a contract that is not the one it names.
    let other = capmesh_contract::scaffold("not-the-named-one").unwrap();
    let wrong_contract =
        gossip_envelope(&attacker, AdvertiseCapability { advert: good.clone(), contract: other });
    sender.publish(bad_sig).await.unwrap();
    sender.publish(wrong_contract).await.unwrap();
    wait_for("node 1 rejects both", T, || async {
        let g = net.node(1).node.net.info().await.unwrap().gossip;
        if g.rejected >= 2 { Ok(()) } else { Err(g) }
    })
    .await;
    // A valid advert published by node 1 afterwards is a barrier: once it reached node 0,
    // anything node 1 had forwarded before it would have arrived too.
    let barrier = net.node(1).publish_contract("barrier").await.unwrap();
    wait_for("the barrier at node 0", T, || async {
        net.node(0).has_capability(&barrier).then_some(()).ok_or(())
    })
    .await;
    for n in net.nodes() {
        assert!(!n.has_capability(&cap), "node {} stored the forged advert", n.index);
    }
    let g0 = net.node(0).node.net.info().await.unwrap().gossip;
    assert_eq!(g0.rejected, 0, "node 1 forwarded a refused message: {g0:?}");
    assert!(
        !net.node(0)
            .node
            .net
            .peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer == attacker.peer_id() && p.connected)
    );
    cancel.cancel();
    net.shutdown().await.unwrap();
}

/// A network handler that answers nothing (the attacker's).
struct Silent;

impl capmesh_net::Handler for Silent {
    async fn request(&self, _: capmesh_types::PeerId, _: Vec<u8>) -> Option<Vec<u8>> {
        None
    }
    async fn gossip(&self, _: capmesh_types::PeerId, _: Vec<u8>) -> capmesh_net::Verdict {
        capmesh_net::Verdict::Ignore
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reachable_only_through_a_relay_is_found_and_reached() {
    let mut net = Testnet::default();
    let relay = net.add(capmesh_testkit::NodeOpts::default().relay_server()).await.unwrap();
    // The provider listens on nothing but a circuit through the relay.
    let provider = net
        .add(
            capmesh_testkit::NodeOpts::default()
                .relayed_through(&[relay])
                .bootstrap(&[relay])
                .sync(false),
        )
        .await
        .unwrap();
    let searcher = net
        .add(capmesh_testkit::NodeOpts::default().bootstrap(&[relay]).gossip(false).sync(false))
        .await
        .unwrap();
    let info = net.node(provider).node.net.info().await.unwrap();
    assert!(
        info.listen_addrs.iter().all(|a| a.to_string().contains("p2p-circuit")),
        "the provider must be reachable only through the relay: {:?}",
        info.listen_addrs
    );
    let cap = net.node(provider).publish_contract("behind-nat").await.unwrap();
    let (found, _) = wait_for("a find through the relay", T, || async {
        let (found, done) = find(net.node(searcher), cap).await;
        if found.is_empty() { Err(format!("{done:?}")) } else { Ok((found, done)) }
    })
    .await;
    assert_eq!(found[0].advert.provider, net.node(provider).peer_id());
    assert_eq!(found[0].source, Source::Kademlia);
    assert!(
        found[0].advert.addrs.iter().all(|a| a.contains("p2p-circuit")),
        "{:?}",
        found[0].advert.addrs
    );
    net.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_requests_without_the_token() {
    let echo = capmesh_exec::Builtin::Echo;
    let net = Testnet::line(1, |_, o| o.serve_builtin(echo, 0, 5)).await.unwrap();
    let node = &net.node(0).node;
    let wrong = capmesh_api::Client::new(node.api_addr, "0".repeat(64)).unwrap();
    match wrong.status().await {
        Err(capmesh_api::ClientError::Api(e)) => {
            assert_eq!(e.code, capmesh_api::ErrorCode::Unauthorized)
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let right = capmesh_api::Client::from_data_dir(net.node(0).data_dir()).unwrap();
    let status = right.status().await.unwrap();
    assert_eq!(status.peer_id, net.node(0).peer_id());
    // The served builtin's contract, from the node's replica, as the builtin defines it.
    let cap = capmesh_contract::check(&echo.contract()).unwrap();
    let info = right.contract(cap).await.unwrap();
    assert_eq!(info.contract, serde_json::to_value(echo.contract()).unwrap());
    assert_eq!((info.capability, info.source), (cap, capmesh_api::Source::Replica));
    net.shutdown().await.unwrap();
}
