//! Shared helpers: a recording test handler, in-process nodes on 127.0.0.1, bounded waits.

use std::{
    fmt::Debug,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_net::{
    Config, Handler, Multiaddr, NetworkHandle, NetworkService, Protocol, Verdict, convert,
};
use capmesh_types::{NodeKey, PeerId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Hang guard for anything a test awaits. Never an assertion on speed.
pub(crate) const GUARD: Duration = Duration::from_secs(20);
/// How often [`wait_for`] re-checks its condition.
const POLL: Duration = Duration::from_millis(25);

pub(crate) fn tcp() -> Multiaddr {
    "/ip4/127.0.0.1/tcp/0".parse().expect("tcp multiaddr")
}

pub(crate) fn quic() -> Multiaddr {
    "/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("quic multiaddr")
}

/// The base configuration of the tests: announced loopback addresses, a fast gossip heartbeat.
pub(crate) fn cfg() -> Config {
    Config::default()
        .with_announce_listen_addrs(true)
        .with_gossip_heartbeat(Duration::from_millis(100))
}

/// `addr/p2p/<peer>`.
pub(crate) fn with_peer(addr: &Multiaddr, peer: &PeerId) -> Multiaddr {
    addr.clone().with(Protocol::P2p(convert::to_libp2p(peer)))
}

/// What the test handler saw, shared between the handler (moved into the service) and the test.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    requests: Mutex<Vec<(PeerId, Vec<u8>)>>,
    gossip: Mutex<Vec<(PeerId, Vec<u8>)>>,
    notify: Notify,
}

impl Recorder {
    pub(crate) fn requests(&self) -> Vec<(PeerId, Vec<u8>)> {
        self.requests.lock().expect("requests lock").clone()
    }

    pub(crate) fn gossip(&self) -> Vec<Vec<u8>> {
        self.gossip.lock().expect("gossip lock").iter().map(|(_, d)| d.clone()).collect()
    }

    pub(crate) fn saw_gossip(&self, data: &[u8]) -> bool {
        self.gossip.lock().expect("gossip lock").iter().any(|(_, d)| d == data)
    }

    /// Waits (woken by the handler, re-checked at least every [`POLL`]) until `pred` holds for
    /// the gossip seen so far; panics with what was seen after [`GUARD`].
    pub(crate) async fn wait_gossip(&self, what: &str, pred: impl Fn(&[Vec<u8>]) -> bool) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let notified = self.notify.notified();
            let seen = self.gossip();
            if pred(&seen) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {GUARD:?} waiting for {what}; gossip seen: {:?}",
                    show(&seen)
                );
            }
            let _ = tokio::time::timeout(POLL, notified).await;
        }
    }
}

/// Gossip payloads as text for panic messages.
pub(crate) fn show(msgs: &[Vec<u8>]) -> Vec<String> {
    msgs.iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect()
}

/// Echoes rpc requests (`ack…` is answered with an empty frame, `none…` with no answer);
/// judges gossip by its first byte: `A` accept, `I` ignore, anything else reject.
#[derive(Debug, Clone)]
pub(crate) struct TestHandler(pub(crate) Arc<Recorder>);

impl Handler for TestHandler {
    async fn request(&self, peer: PeerId, request: Vec<u8>) -> Option<Vec<u8>> {
        self.0.requests.lock().expect("requests lock").push((peer, request.clone()));
        self.0.notify.notify_waiters();
        if request.starts_with(b"ack") {
            Some(Vec::new())
        } else if request.starts_with(b"none") {
            None
        } else {
            Some(request)
        }
    }

    async fn gossip(&self, source: PeerId, data: Vec<u8>) -> Verdict {
        let verdict = match data.first() {
            Some(b'A') => Verdict::Accept,
            Some(b'I') => Verdict::Ignore,
            _ => Verdict::Reject,
        };
        self.0.gossip.lock().expect("gossip lock").push((source, data));
        self.0.notify.notify_waiters();
        verdict
    }
}

/// One running node. Dropping it stops its service.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) handle: NetworkHandle,
    pub(crate) id: PeerId,
    pub(crate) seen: Arc<Recorder>,
    /// Resolved listen addresses (no `/p2p` suffix), in the order they were asked for.
    pub(crate) addrs: Vec<Multiaddr>,
    cancel: CancellationToken,
}

impl Node {
    /// Starts a node with key `NodeKey::from_seed([seed; 32])` listening on `listen`.
    pub(crate) async fn start(seed: u8, config: Config, listen: &[Multiaddr]) -> Node {
        let key = NodeKey::from_seed([seed; 32]);
        let (service, handle) = NetworkService::new(&key, config).expect("network service");
        let seen = Arc::new(Recorder::default());
        let cancel = CancellationToken::new();
        tokio::spawn(service.run(TestHandler(seen.clone()), cancel.clone()));
        let mut addrs = Vec::new();
        for addr in listen {
            let got = guard("listen", handle.listen(addr.clone())).await.expect("listen");
            assert!(!got.is_empty(), "listen on {addr} resolved no address");
            addrs.extend(got);
        }
        assert_eq!(handle.peer_id(), key.peer_id());
        Node { id: key.peer_id(), handle, seen, addrs, cancel }
    }

    /// The first listen address with `/p2p/<id>`.
    pub(crate) fn addr(&self) -> Multiaddr {
        with_peer(self.addrs.first().expect("the node listens"), &self.id)
    }

    /// Dials `other` and checks the dial reached the right peer.
    pub(crate) async fn connect(&self, other: &Node) {
        let peer = guard("dial", self.handle.dial(other.addr())).await.expect("dial");
        assert_eq!(peer, other.id);
    }

    /// Whether this node has a connection to `peer` now.
    pub(crate) async fn connected_to(&self, peer: &PeerId) -> bool {
        let peers = guard("peers", self.handle.peers()).await.expect("peers");
        peers.iter().any(|p| p.peer == *peer && p.connected)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Awaits `fut`, panicking if it takes longer than [`GUARD`] (a hang guard, not a speed test).
pub(crate) async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {GUARD:?}"),
    }
}

/// Polls `check` until it returns `Ok`, and returns that value. Panics after `timeout` with
/// what the last check saw.
pub(crate) async fn wait_for<T, E: Debug>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(last)) => format!("{last:?}"),
            Err(_) => "(the check itself did not finish)".to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last saw: {last}");
        }
        tokio::time::sleep(POLL).await;
    }
}
