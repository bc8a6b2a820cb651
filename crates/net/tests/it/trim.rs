//! Connection trimming: above the high mark, the quietest peers are disconnected.

use std::time::Duration;

use crate::{
    init_logs,
    util::{GUARD, Node, cfg, guard, tcp, wait_for},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_beyond_the_high_mark_are_trimmed_quietest_first() {
    init_logs();
    // Gossip off: no mesh to protect anyone, so only activity decides.
    let trimmed = cfg().with_gossip(false).with_peer_trim(1, 1, Duration::from_millis(500));
    let a = Node::start(1, trimmed, &[tcp()]).await;
    let others = [
        Node::start(2, cfg().with_gossip(false), &[tcp()]).await,
        Node::start(3, cfg().with_gossip(false), &[tcp()]).await,
        Node::start(4, cfg().with_gossip(false), &[tcp()]).await,
    ];
    for o in &others {
        a.connect(o).await;
    }
    // Node 3 stays busy; the others fall quiet.
    let busy = &others[1];
    let connected = |a: &Node| {
        let handle = a.handle.clone();
        async move {
            let peers = guard("peers", handle.peers()).await.expect("peers");
            peers.into_iter().filter(|p| p.connected).map(|p| p.peer).collect::<Vec<_>>()
        }
    };
    let left = wait_for("trimmed down to one peer", GUARD, async || {
        guard("request", a.handle.request(busy.id, vec![], b"busy".to_vec()))
            .await
            .expect("request to the busy peer");
        let now = connected(&a).await;
        if now.len() == 1 { Ok(now) } else { Err(now) }
    })
    .await;
    assert_eq!(left, [busy.id], "the busy peer stays");
}
