//! Joining a network: listen ports checked before listening, bootstrap peers named by DNS.
//!
//! `localhost` is answered by the resolver itself (RFC 6761), from no server: these tests
//! reach 127.0.0.1 only.

use std::net::TcpListener;

use capmesh_net::{Multiaddr, NetError, NetworkService, Protocol, convert};
use capmesh_types::NodeKey;
use tokio_util::sync::CancellationToken;

use crate::{
    init_logs,
    util::{GUARD, Node, TestHandler, cfg, guard, quic, tcp, wait_for},
};

/// A port free a moment ago (bound at port 0, then released).
fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// `/dns4/localhost/<transport>/<port of addr>…/p2p/<peer>`: `addr` with its IP replaced by
/// the name.
fn by_name(addr: &Multiaddr, peer: &capmesh_types::PeerId) -> Multiaddr {
    let mut named = Multiaddr::empty().with(Protocol::Dns4("localhost".into()));
    for p in addr.iter().skip(1) {
        named.push(p);
    }
    named.with(Protocol::P2p(convert::to_libp2p(peer)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_port_another_socket_holds_refuses_the_service() {
    init_logs();
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("local addr").port();
    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("multiaddr");
    let key = NodeKey::from_seed([70; 32]);
    let err = NetworkService::new(&key, cfg().with_listen(vec![addr.clone()]))
        .map(|_| ())
        .expect_err("the port is held");
    assert_eq!(err, NetError::AddrInUse { addr: addr.to_string() });
    let twice = cfg().with_listen(vec![tcp(), quic(), addr.clone(), addr.clone()]);
    let err = NetworkService::new(&key, twice).map(|_| ()).expect_err("listed twice");
    assert!(matches!(err, NetError::ListenTwice { .. }), "{err}");
}

/// A node that stopped with connections open may leave them on its port (in `TIME_WAIT`):
/// started again on that port, it must not take them for another process. (The unit test
/// beside the check makes `TIME_WAIT` certain; here it depends on who closed first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_on_its_fixed_port_is_not_refused() {
    init_logs();
    let port = free_tcp_port();
    let listen: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("multiaddr");
    let key = NodeKey::from_seed([71; 32]);
    let b = Node::start(72, cfg(), &[tcp()]).await;
    for run in 0..2 {
        let (service, handle) = NetworkService::new(&key, cfg().with_listen(vec![listen.clone()]))
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(service.run(TestHandler(Default::default()), cancel.clone()));
        wait_for("listening on the fixed port", GUARD, async || {
            let addrs = handle.listen_addrs().await.map_err(|e| e.to_string())?;
            if addrs.contains(&listen) { Ok(()) } else { Err(format!("{addrs:?}")) }
        })
        .await;
        // Both directions: B dials the port, and the node dials B (from its port: port reuse).
        let peer = guard(
            "dial",
            b.handle.dial(listen.clone().with(Protocol::P2p(convert::to_libp2p(&key.peer_id())))),
        )
        .await
        .expect("B reaches the node");
        assert_eq!(peer, key.peer_id());
        // Without the peer id: a second connection, dialed (not just found connected).
        let back = guard("dial back", handle.dial(b.addrs[0].clone())).await;
        assert_eq!(back.expect("the node reaches B"), b.id);
        cancel.cancel();
        guard("stop", task).await.expect("the service stops");
        wait_for("B sees the node gone", GUARD, async || {
            if b.connected_to(&key.peer_id()).await { Err("connected") } else { Ok(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_dialed_by_dns4_name_over_tcp_and_quic() {
    init_logs();
    let a = Node::start(73, cfg(), &[tcp(), quic()]).await;
    for (i, addr) in a.addrs.iter().enumerate() {
        let b = Node::start(74 + i as u8, cfg(), &[tcp()]).await;
        let named = by_name(addr, &a.id);
        assert!(named.to_string().starts_with("/dns4/localhost/"), "{named}");
        let peer = guard("dial by name", b.handle.dial(named.clone()))
            .await
            .unwrap_or_else(|e| panic!("{named}: {e}"));
        assert_eq!(peer, a.id, "{named}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns4_bootstrap_address_connects_at_start() {
    init_logs();
    let a = Node::start(76, cfg(), &[tcp()]).await;
    let named = by_name(&a.addrs[0], &a.id);
    let b = Node::start(77, cfg().with_bootstrap(vec![named.clone()]), &[tcp()]).await;
    wait_for("the bootstrap peer connected", GUARD, async || {
        if b.connected_to(&a.id).await { Ok(()) } else { Err(format!("not connected to {named}")) }
    })
    .await;
    // A's swarm sees the connection in its own time (each side handles its event apart).
    wait_for("A sees the connection too", GUARD, async || {
        if a.connected_to(&b.id).await { Ok(()) } else { Err("A not connected to B") }
    })
    .await;
}

/// Dials racing each other (both sides, several at once, as a bootstrap and a test's own dial
/// do) exceed the per-peer connection limit; the denied ones still end with the peer connected,
/// so each `dial` reports success. A fresh-clone CI run once failed on this race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_racing_past_the_per_peer_limit_all_report_the_peer() {
    init_logs();
    for round in 0..5u8 {
        let a = Node::start(80 + 2 * round, cfg(), &[tcp()]).await;
        let b = Node::start(81 + 2 * round, cfg(), &[tcp()]).await;
        let mut dials = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let (ha, addr_b) = (a.handle.clone(), b.addr());
            dials.spawn(async move { ha.dial(addr_b).await });
            let (hb, addr_a) = (b.handle.clone(), a.addr());
            dials.spawn(async move { hb.dial(addr_a).await });
        }
        let mut reached = Vec::new();
        while let Some(res) = guard("racing dials", dials.join_next()).await {
            reached.push(res.expect("dial task").expect("every racing dial succeeds"));
        }
        assert_eq!(reached.iter().filter(|p| **p == b.id).count(), 3, "round {round}");
        assert_eq!(reached.iter().filter(|p| **p == a.id).count(), 3, "round {round}");
    }
}
