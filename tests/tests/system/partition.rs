//! A partition made with the nodes' block lists, through the local API, and healed.

use capmesh_api::{BlockRequest, Client};
use capmesh_testkit::{NodeOpts, Testnet, wait_for};
use capmesh_types::PeerId;

use crate::common::{T, sees};

fn client(net: &Testnet, i: usize) -> Client {
    Client::from_data_dir(net.node(i).data_dir()).unwrap()
}

/// Connections open now from each node of `left` to a node of `right`.
async fn across(net: &Testnet, left: &[usize], right: &[usize]) -> usize {
    let right: Vec<PeerId> = right.iter().map(|&j| net.node(j).peer_id()).collect();
    let mut n = 0;
    for &i in left {
        let peers = net.node(i).node.net.peers().await.unwrap();
        n += peers.iter().filter(|p| p.connected && right.contains(&p.peer)).count();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_keeps_adverts_apart_until_it_heals() {
    let mut net = Testnet::default();
    net.add(NodeOpts::new()).await.unwrap();
    for _ in 1..4 {
        net.add(NodeOpts::new().bootstrap(&[0])).await.unwrap();
    }
    let (left, right) = ([0, 1], [2, 3]);
    // Each side is connected within itself (1 and 2 bootstrapped from 0; 3 from 0 too), so the
    // split cuts only the links across.
    let addr3 = net.node(3).addr().await.unwrap();
    net.node(2).node.net.dial(addr3).await.unwrap();
    wait_for("node 0 connected across", T, || async {
        let n = across(&net, &left, &right).await;
        if n > 0 { Ok(()) } else { Err(n) }
    })
    .await;

    let ids = |group: &[usize]| -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = group.iter().map(|&j| net.node(j).peer_id()).collect();
        ids.sort_by_key(|p| p.to_string());
        ids
    };
    for (mine, theirs) in [(left, right), (right, left)] {
        for i in mine {
            let req = BlockRequest { block: ids(&theirs), unblock: vec![] };
            let blocked = client(&net, i).block(&req).await.unwrap();
            assert_eq!(blocked.peers, ids(&theirs), "node {i}");
        }
    }
    wait_for("no connection across the partition", T, || async {
        let n = across(&net, &left, &right).await + across(&net, &right, &left).await;
        if n == 0 { Ok(()) } else { Err(n) }
    })
    .await;
    // A dial across is refused, whoever asks for it.
    let addr = net.node(0).addr().await.unwrap();
    assert!(net.node(2).node.net.dial(addr).await.is_err());

    let x = net.node(1).publish_contract("left-side").await.unwrap();
    let y = net.node(3).publish_contract("right-side").await.unwrap();
    sees(net.node(0), x, 1).await;
    sees(net.node(2), y, 1).await;
    // No connection across means no path for gossip, Sync or Discover.
    for i in right {
        assert!(!net.node(i).has_capability(&x), "node {i} saw the left side's advert");
    }
    for i in left {
        assert!(!net.node(i).has_capability(&y), "node {i} saw the right side's advert");
    }
    assert_eq!(across(&net, &left, &right).await + across(&net, &right, &left).await, 0);

    // Heal: the nodes redial what the blocks cut and catch up with Sync.
    for (mine, theirs) in [(left, right), (right, left)] {
        for i in mine {
            let req = BlockRequest { block: vec![], unblock: ids(&theirs) };
            assert!(client(&net, i).block(&req).await.unwrap().peers.is_empty());
        }
    }
    for i in 0..4 {
        sees(net.node(i), x, 1).await;
        sees(net.node(i), y, 1).await;
        assert!(client(&net, i).blocked().await.unwrap().peers.is_empty());
    }
    assert!(across(&net, &left, &right).await > 0);
    net.shutdown().await.unwrap();
}
