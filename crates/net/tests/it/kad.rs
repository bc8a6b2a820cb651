//! Kademlia: mode, routing table fed by identify, provider records, the provided-keys cap.

use std::time::Duration;

use capmesh_net::{KadMode, NetError, ProviderEvent};
use capmesh_types::PeerId;

use crate::{
    init_logs,
    util::{GUARD, Node, cfg, guard, tcp, wait_for},
};

/// Runs a provider lookup to its `Done`: every provider found (with the addresses reported),
/// the request count and error of `Done`.
async fn lookup(node: &Node, key: &[u8]) -> (Vec<(PeerId, usize)>, u32, Option<NetError>) {
    let mut rx = guard("get_providers", node.handle.get_providers(key.to_vec()))
        .await
        .expect("get_providers");
    let mut found = Vec::new();
    loop {
        match guard("provider event", rx.recv()).await {
            Some(ProviderEvent::Found { providers, .. }) => {
                found.extend(providers.into_iter().map(|(p, addrs)| (p, addrs.len())));
            }
            Some(ProviderEvent::Done { requests, error }) => return (found, requests, error),
            None => panic!("the lookup ended without Done; found so far: {found:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kad_is_server_when_announcing_and_not_otherwise() {
    init_logs();
    let server = Node::start(20, cfg(), &[tcp()]).await;
    let info = server.handle.info().await.expect("info");
    assert!(info.kad_server, "announcing node is not a Kademlia server");
    assert!(!info.external_addrs.is_empty(), "announced addresses missing: {info:?}");

    // Nothing announced, no external address: libp2p's automatic mode, a client until an
    // external address is confirmed.
    let quiet = Node::start(21, capmesh_net::Config::default(), &[tcp()]).await;
    let info = quiet.handle.info().await.expect("info");
    assert!(info.external_addrs.is_empty(), "{info:?}");
    assert!(!info.kad_server, "a node announcing nothing is a Kademlia server");

    // An explicit client stays one even when it announces its addresses.
    let client = Node::start(22, cfg().with_kad_mode(KadMode::Client), &[tcp()]).await;
    assert!(!client.handle.info().await.expect("info").kad_server);

    // After meeting the server (identify exchanged both ways), the quiet node is still a
    // client: the server put it in its book but not in its routing table, while the quiet node
    // did add the server to its own table.
    quiet.connect(&server).await;
    wait_for("the quiet node's table has the server", GUARD, async || {
        let info = quiet.handle.info().await.map_err(|e| e.to_string())?;
        if info.routing_table_peers == 1 { Ok(()) } else { Err(format!("{info:?}")) }
    })
    .await;
    wait_for("the server identified the quiet node", GUARD, async || {
        let peers = server.handle.peers().await.map_err(|e| e.to_string())?;
        match peers.iter().find(|p| p.peer == quiet.id) {
            Some(p) if !p.addrs.is_empty() => Ok(()),
            _ => Err(format!("{peers:?}")),
        }
    })
    .await;
    let info = quiet.handle.info().await.expect("info");
    assert!(!info.kad_server, "{info:?}");
    let info = server.handle.info().await.expect("info");
    assert_eq!(info.routing_table_peers, 0, "a Kademlia client entered the routing table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identify_puts_a_peer_that_dialed_us_in_the_routing_table() {
    init_logs();
    let a = Node::start(23, cfg(), &[tcp()]).await;
    let b = Node::start(24, cfg(), &[tcp()]).await;
    assert_eq!(a.handle.info().await.expect("info").routing_table_peers, 0);
    // Only B dials. A learns B's listen address from identify, never from dialing it.
    b.connect(&a).await;
    wait_for("B in A's routing table", GUARD, async || {
        let info = a.handle.info().await.map_err(|e| e.to_string())?;
        if info.routing_table_peers >= 1 { Ok(info) } else { Err(format!("{info:?}")) }
    })
    .await;
    // The entry is B, with B's listen address (not the ephemeral port B dialed from).
    let peers = a.handle.peers().await.expect("peers");
    let entry = peers.iter().find(|p| p.peer == b.id).expect("B is known to A");
    assert!(entry.addrs.contains(&b.addrs[0]), "A does not know B's listen address: {entry:?}");
    let info = a.handle.info().await.expect("info");
    assert_eq!(info.routing_table_peers, 1, "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_across_a_line_of_five_nodes() {
    init_logs();
    let mut nodes = Vec::new();
    for i in 0..5u8 {
        let node = Node::start(30 + i, cfg(), &[tcp()]).await;
        if let Some(prev) = nodes.last() {
            node.connect(prev).await; // each node dials only its predecessor
        }
        nodes.push(node);
    }
    // Every node has its neighbours in its routing table (the dialed one directly, the dialer
    // through identify): Kademlia can walk the line.
    for (i, node) in nodes.iter().enumerate() {
        let want = if i == 0 || i == 4 { 1 } else { 2 };
        wait_for(&format!("node {i} has its neighbours in its table"), GUARD, async || {
            let info = node.handle.info().await.map_err(|e| e.to_string())?;
            if info.routing_table_peers >= want { Ok(()) } else { Err(format!("{info:?}")) }
        })
        .await;
    }
    let key = b"capability/line-test".to_vec();

    // Control: before anyone provides the key, the lookup finds nobody.
    let (found, _, _) = lookup(&nodes[4], &key).await;
    assert!(found.is_empty(), "providers found before any was announced: {found:?}");

    for node in &nodes {
        guard("bootstrap", node.handle.bootstrap()).await.expect("bootstrap");
    }
    // The count is only how many peers the record was sent to; it is not the proof.
    let sent = guard("start_providing", nodes[0].handle.start_providing(key.clone()))
        .await
        .expect("start_providing");
    eprintln!("start_providing sent the record to {sent} peers");

    // The proof: another node, at the far end of the line, finds node 0 with an address.
    let (found, requests, error) = lookup(&nodes[4], &key).await;
    assert_eq!(error, None, "the lookup failed");
    assert!(requests >= 1, "the lookup made no request: it did not go to the network");
    let zero = found.iter().find(|(p, _)| *p == nodes[0].id);
    let Some((_, addrs)) = zero else {
        panic!("node 0 not found as a provider; found {found:?}");
    };
    assert!(*addrs >= 1, "node 0 was found without an address");
    assert_eq!(found.len(), 1, "only node 0 provides the key: {found:?}");

    // A key nobody provides is still not found (the lookup discriminates).
    let (found, _, _) = lookup(&nodes[4], b"capability/nobody").await;
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provided_keys_cap_is_ours_not_libp2ps() {
    init_logs();
    // No peers: each query ends at once. Short query timeout so that a stuck one cannot hang.
    let big = Node::start(
        40,
        cfg().with_max_provided_keys(2000).with_query_timeout(Duration::from_secs(5)),
        &[],
    )
    .await;
    for i in 0..1100u32 {
        let key = format!("capability/{i}").into_bytes();
        match guard("start_providing", big.handle.start_providing(key)).await {
            Ok(_) | Err(NetError::Timeout(_)) => {}
            Err(e) => panic!("key {i} of 1100 with a cap of 2000: {e}"),
        }
    }

    let small = Node::start(41, cfg().with_max_provided_keys(10), &[]).await;
    for i in 0..10u32 {
        let key = format!("capability/{i}").into_bytes();
        let r = guard("start_providing", small.handle.start_providing(key)).await;
        assert!(matches!(r, Ok(_) | Err(NetError::Timeout(_))), "key {i} of 10: {r:?}");
    }
    let r = guard("11th key", small.handle.start_providing(b"capability/10".to_vec())).await;
    match r {
        Err(NetError::Kad(msg)) => assert!(msg.contains("cannot provide"), "{msg}"),
        other => panic!("the 11th key with a cap of 10: {other:?}"),
    }
    // Providing a key again is not a new key; stopping one frees its place.
    let r = guard("again", small.handle.start_providing(b"capability/3".to_vec())).await;
    assert!(matches!(r, Ok(_) | Err(NetError::Timeout(_))), "{r:?}");
    small.handle.stop_providing(b"capability/3".to_vec()).await.expect("stop_providing");
    let r = guard("after a stop", small.handle.start_providing(b"capability/10".to_vec())).await;
    assert!(matches!(r, Ok(_) | Err(NetError::Timeout(_))), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_answers_over_16_kib_need_the_raised_packet_cap() {
    init_logs();
    // Twenty providers of one key, each announcing 16 long (relay-circuit) addresses: every
    // GET_PROVIDERS answer is over 16 KiB, libp2p's default message cap.
    let hub = Node::start(100, cfg(), &[tcp()]).await;
    let key = b"capability/popular".to_vec();
    let relay = capmesh_types::NodeKey::from_seed([200; 32]).peer_id();
    let relay = capmesh_net::convert::to_libp2p(&relay);
    let mut providers = Vec::new();
    for i in 0..20u8 {
        let p = Node::start(101 + i, cfg(), &[tcp()]).await;
        p.connect(&hub).await;
        for port in 1..=16u16 {
            // Loopback, closed ports: nothing outside this machine is ever dialed.
            let addr: capmesh_net::Multiaddr =
                format!("/ip4/127.0.0.1/tcp/{port}/p2p/{relay}/p2p-circuit").parse().unwrap();
            p.handle.add_external_address(addr).await.unwrap();
        }
        providers.push(p);
    }
    for p in &providers {
        guard("bootstrap", p.handle.bootstrap()).await.expect("bootstrap");
        guard("start_providing", p.handle.start_providing(key.clone())).await.expect("provide");
    }
    let big = Node::start(130, cfg(), &[tcp()]).await;
    let small = Node::start(131, cfg().with_kad_max_packet(16 * 1024), &[tcp()]).await;
    big.connect(&hub).await;
    small.connect(&hub).await;
    for node in [&big, &small] {
        // Kademlia adds the hub once the connection confirmed its protocol, just after connect.
        wait_for("the hub in the searcher's routing table", GUARD, async || {
            let info = node.handle.info().await.map_err(|e| e.to_string())?;
            if info.routing_table_peers >= 1 { Ok(()) } else { Err(format!("{info:?}")) }
        })
        .await;
    }

    let (found, _, _) = lookup(&big, &key).await;
    let mut ids: Vec<_> = found.iter().map(|(p, _)| *p).collect();
    ids.sort_by_key(|p| p.to_string());
    ids.dedup();
    assert_eq!(ids.len(), 20, "with a 64 KiB cap every provider is found: {found:?}");
    let (found_small, _, _) = lookup(&small, &key).await;
    assert!(
        found_small.len() < 20,
        "with libp2p's 16 KiB cap the answers should not fit, yet all were found: {found_small:?}"
    );
}
