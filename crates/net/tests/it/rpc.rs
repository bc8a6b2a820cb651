//! The `/capmesh/rpc/1.0.0` request-response protocol end to end.

use capmesh_net::{Multiaddr, NetError, codec::DEFAULT_MAX_FRAME};
use capmesh_types::NodeKey;

use crate::{
    init_logs,
    util::{GUARD, Node, cfg, guard, quic, tcp, with_peer},
};

fn is_request_or_dial_error(e: &NetError) -> bool {
    matches!(e, NetError::Request { .. } | NetError::Dial { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trip_over_tcp() {
    init_logs();
    let a = Node::start(1, cfg(), &[tcp()]).await;
    let b = Node::start(2, cfg(), &[tcp()]).await;
    b.connect(&a).await;

    let resp = guard("request", b.handle.request(a.id, vec![], b"hello".to_vec())).await;
    assert_eq!(resp.expect("echo"), b"hello".to_vec());
    // The handler saw the request, from the right peer.
    assert_eq!(a.seen.requests(), vec![(b.id, b"hello".to_vec())]);

    // A zero-length response is an acknowledgement, not a failure.
    let ack = guard("ack", b.handle.request(a.id, vec![], b"ack please".to_vec())).await;
    assert_eq!(ack.expect("ack"), Vec::<u8>::new());

    // A handler that answers nothing resets the stream: the requester gets an error, not a
    // hang and not an empty acknowledgement.
    let none = guard("no answer", b.handle.request(a.id, vec![], b"none".to_vec())).await;
    assert!(matches!(none, Err(NetError::Request { .. })), "{none:?}");

    // A zero-length request is refused by the codec (it is only ever an acknowledgement).
    let empty = guard("empty request", b.handle.request(a.id, vec![], Vec::new())).await;
    assert!(empty.is_err(), "an empty request was answered: {empty:?}");

    // Bodies larger than one transport write, and the other direction on the same connection.
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let resp = guard("big request", a.handle.request(b.id, vec![], big.clone())).await;
    assert_eq!(resp.expect("big echo"), big);
    assert_eq!(b.seen.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trip_over_quic() {
    init_logs();
    let a = Node::start(3, cfg(), &[quic()]).await;
    let b = Node::start(4, cfg(), &[quic()]).await;
    assert!(a.addrs[0].iter().any(|p| matches!(p, capmesh_net::Protocol::QuicV1)), "{:?}", a.addrs);
    // Not connected yet: the request dials with the address it is given. A listens on QUIC only.
    let resp =
        guard("request", b.handle.request(a.id, vec![a.addrs[0].clone()], b"over quic".to_vec()))
            .await;
    assert_eq!(resp.expect("echo over quic"), b"over quic".to_vec());
    assert_eq!(a.seen.requests(), vec![(b.id, b"over quic".to_vec())]);
    let ack = guard("ack", b.handle.request(a.id, vec![], b"ack".to_vec())).await;
    assert_eq!(ack.expect("ack over quic"), Vec::<u8>::new());
    assert!(b.connected_to(&a.id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_an_unreachable_or_unknown_peer_fails_and_is_cleared() {
    init_logs();
    let a = Node::start(5, cfg(), &[tcp()]).await;
    let b = Node::start(6, cfg(), &[tcp()]).await;

    // No address known at all. The default rpc timeout (30 s) is longer than the guard: an
    // answer inside the guard is the dial failure, not the request timing out.
    assert!(cfg().rpc_timeout > GUARD);
    let unknown = NodeKey::from_seed([200; 32]).peer_id();
    let r = guard("request to unknown", b.handle.request(unknown, vec![], b"x".to_vec())).await;
    assert!(r.as_ref().is_err_and(is_request_or_dial_error), "{r:?}");

    // An address where nobody listens (a port bound then released).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("local addr").port()
    };
    let dead: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr");
    let unreachable = NodeKey::from_seed([201; 32]).peer_id();
    let r = guard(
        "request to unreachable",
        b.handle.request(unreachable, vec![dead.clone()], b"x".to_vec()),
    )
    .await;
    assert!(r.as_ref().is_err_and(is_request_or_dial_error), "{r:?}");
    // Again: a second failure must be reported as well (nothing stuck for that peer).
    let r = guard(
        "second request to unreachable",
        b.handle.request(unreachable, vec![dead], b"y".to_vec()),
    )
    .await;
    assert!(r.as_ref().is_err_and(is_request_or_dial_error), "{r:?}");

    // The node still works: a request to a live peer, by address, is answered.
    let r = guard(
        "request to live peer",
        b.handle.request(a.id, vec![a.addrs[0].clone()], b"alive".to_vec()),
    )
    .await;
    assert_eq!(r.expect("echo from live peer"), b"alive".to_vec());
    // Asking this very node is refused, not dialed.
    let r = guard("request to self", b.handle.request(b.id, vec![], b"me".to_vec())).await;
    assert!(matches!(r, Err(NetError::Request { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialing_an_address_with_the_wrong_peer_id_fails_and_the_node_keeps_serving() {
    init_logs();
    let a = Node::start(7, cfg(), &[tcp()]).await;
    let b = Node::start(8, cfg(), &[tcp()]).await;
    let wrong = NodeKey::from_seed([202; 32]).peer_id();

    let r = guard("dial with wrong id", b.handle.dial(with_peer(&a.addrs[0], &wrong))).await;
    assert!(matches!(r, Err(NetError::Dial { .. })), "{r:?}");

    // Both nodes keep serving, in both directions.
    let r =
        guard("request b→a", b.handle.request(a.id, vec![a.addrs[0].clone()], b"after".to_vec()))
            .await;
    assert_eq!(r.expect("echo from a"), b"after".to_vec());
    let r = guard("request a→b", a.handle.request(b.id, vec![], b"back".to_vec())).await;
    assert_eq!(r.expect("echo from b"), b"back".to_vec());
    // And the right id on the same address dials fine.
    assert_eq!(guard("dial", b.handle.dial(a.addr())).await.expect("dial"), a.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_cap_holds_end_to_end_and_the_receiver_keeps_answering() {
    init_logs();
    const SMALL: usize = 64 * 1024;
    // `Config` is non_exhaustive: not constructible with a literal, but its fields are public.
    let mut small = cfg();
    small.max_frame = SMALL;
    let a = Node::start(9, small, &[tcp()]).await; // receiver with a small cap
    let b = Node::start(10, cfg(), &[tcp()]).await; // sender with the default 1 MiB cap
    b.connect(&a).await;

    // Over the sender's own cap: refused before it leaves.
    let r = guard(
        "request over the sender's cap",
        b.handle.request(a.id, vec![], vec![b'x'; DEFAULT_MAX_FRAME + 1]),
    )
    .await;
    assert!(matches!(r, Err(NetError::Request { .. })), "{r:?}");

    // Under the sender's cap but over the receiver's: the receiver refuses it.
    let r = guard(
        "request over the receiver's cap",
        b.handle.request(a.id, vec![], vec![b'y'; SMALL + 1]),
    )
    .await;
    assert!(matches!(r, Err(NetError::Request { .. })), "{r:?}");
    assert!(a.seen.requests().is_empty(), "an oversized request reached the handler");

    // The receiver keeps answering: exactly at its cap, then a small request.
    let at_cap: Vec<u8> = (0..SMALL).map(|i| (i % 253) as u8).collect();
    let r = guard("request at the cap", b.handle.request(a.id, vec![], at_cap.clone())).await;
    assert_eq!(r.expect("echo at the cap"), at_cap);
    let r = guard("normal request", b.handle.request(a.id, vec![], b"normal".to_vec())).await;
    assert_eq!(r.expect("echo"), b"normal".to_vec());
    assert_eq!(a.seen.requests().len(), 2);
}
