//! Relay: a node reachable only through a relay circuit answers rpc requests.

use capmesh_net::Protocol;

use crate::{
    init_logs,
    util::{Node, cfg, guard, tcp},
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
