//! Relay: a node reachable only through a relay circuit answers rpc requests.

use capmesh_net::{Config, Protocol};

use crate::{
    init_logs,
    util::{GUARD, Node, cfg, guard, tcp, wait_for},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_request_reaches_a_peer_through_its_relay_circuit() {
    init_logs();
    let r = Node::start(60, cfg().with_relay_server(true), &[tcp()]).await;
    // P listens on nothing but the circuit: it cannot be reached directly.
    let p = Node::start(61, cfg(), &[]).await;
    let s = Node::start(62, cfg(), &[tcp()]).await;

    p.connect(&r).await;
    let circuit =
        guard("listen on the circuit", p.handle.listen(r.addr().with(Protocol::P2pCircuit)))
            .await
            .expect("relay reservation");
    let circuit = circuit.first().expect("a circuit address").clone();
    assert!(circuit.iter().any(|p| p == Protocol::P2pCircuit), "{circuit}");
    eprintln!("P is reachable at {circuit}");

    s.connect(&r).await;
    assert!(!s.connected_to(&p.id).await);
    let resp = guard(
        "request through the relay",
        s.handle.request(p.id, vec![circuit], b"via relay".to_vec()),
    )
    .await
    .expect("echo through the relay");
    assert_eq!(resp, b"via relay".to_vec());
    assert_eq!(p.seen.requests(), vec![(s.id, b"via relay".to_vec())]);
    // P never listened on anything else: the connection went through R.
    assert!(
        p.handle
            .info()
            .await
            .expect("info")
            .listen_addrs
            .iter()
            .all(|a| a.iter().any(|x| x == Protocol::P2pCircuit))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_node_reserves_by_itself_and_its_relayed_peers_show_as_relayed() {
    use capmesh_net::{ConnectionKind, Reachability, ReachabilityMode};
    init_logs();
    let r = Node::start(63, cfg().with_relay_server(true), &[tcp()]).await;
    // P: private, listening on nothing, no relay configured; it only dials R.
    let p =
        Node::start(64, Config::default().with_reachability(ReachabilityMode::Private), &[]).await;
    let s = Node::start(65, cfg(), &[tcp()]).await;
    p.connect(&r).await;
    let circuit = wait_for("a reservation on R", GUARD, async || {
        let info = p.handle.info().await.map_err(|e| e.to_string())?;
        match info.relay_reservations.first() {
            Some(c) if info.reachability == Reachability::Private => Ok(c.clone()),
            _ => Err(format!("{info:?}")),
        }
    })
    .await;
    assert!(circuit.to_string().contains(&r.id.to_string()), "{circuit}");
    let info = p.handle.info().await.expect("info");
    assert!(info.external_addrs.contains(&circuit), "{info:?}");

    s.connect(&r).await;
    let resp =
        guard("request through the relay", s.handle.request(p.id, vec![circuit], b"hi".to_vec()))
            .await
            .expect("echo through the auto relay");
    assert_eq!(resp, b"hi".to_vec());
    let kind = |node: &Node, peer| {
        let handle = node.handle.clone();
        async move {
            let peers = handle.peers().await.expect("peers");
            peers.into_iter().find(|x| x.peer == peer).and_then(|x| x.connection)
        }
    };
    assert_eq!(kind(&p, s.id).await, Some(ConnectionKind::Relayed));
    assert_eq!(kind(&p, r.id).await, Some(ConnectionKind::Direct));
    // DCUtR starts an upgrade on the relayed connection P accepted.
    let info = p.handle.info().await.expect("info");
    assert_eq!(info.hole_punch.attempts, 1, "{info:?}");
    // P listens on nothing, so it has no address to offer S for a punch: DCUtR ends (with a
    // protocol failure, "no addresses", on both sides) and the connection stays relayed. Real
    // punches need a NAT (the namespace lab of issue 13 item 1).
    let punch = wait_for("the end of DCUtR's attempt", GUARD, async || {
        let h = p.handle.info().await.map_err(|e| e.to_string())?.hole_punch;
        if h.succeeded + h.failed_dial + h.failed_protocol > 0 {
            Ok(h)
        } else {
            Err(format!("{h:?}"))
        }
    })
    .await;
    assert_eq!(punch.succeeded, 0, "{punch:?}");
    assert_eq!(kind(&p, s.id).await, Some(ConnectionKind::Relayed));
}
