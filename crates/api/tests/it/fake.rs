//! A fake [`Backend`] that records its calls, and a server running it.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use capmesh_api::{
    ApiError, Backend, Client, FindDone, FindEvent, FindHit, FindRequest, GossipStatus, PeerInfo,
    PublishRequest, Published, QueryHit, QueryPage, QueryRequest, ReplicaStatus, Retired, Source,
    Status, Token, bind, serve, write_files,
};
use capmesh_types::{Cid, Codec, NodeKey, PeerId};
use capmesh_wire::Price;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

/// Bound on anything a test awaits: a guard against hangs, never a measurement.
pub(crate) const HANG: Duration = Duration::from_secs(20);

pub(crate) async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {HANG:?}"),
    }
}

pub(crate) fn cid(n: u8) -> Cid {
    Cid::of(Codec::DagCbor, &[n])
}

pub(crate) fn peer(n: u8) -> PeerId {
    NodeKey::from_seed([n; 32]).peer_id()
}

/// A call the backend received.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Call {
    Status,
    Peers,
    Publish(PublishRequest),
    Retire(Cid),
    Find(FindRequest),
    Query(QueryRequest),
}

/// Between the first and the second hit of a find, the fake waits for this gate (if set).
pub(crate) type Gate = oneshot::Receiver<()>;

#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) calls: Mutex<Vec<Call>>,
    pub(crate) find_gate: Mutex<Option<Gate>>,
    /// When set, find sends its first hit and then holds the channel open until the gate opens.
    pub(crate) find_hold: Mutex<Option<Gate>>,
}

impl Fake {
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

pub(crate) fn status() -> Status {
    Status {
        peer_id: peer(1),
        version: "0.1.0".into(),
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        external_addrs: vec![],
        connected_peers: 2,
        kad_mode: "server".into(),
        routing_table_peers: 3,
        replica: ReplicaStatus {
            records: 4,
            stored: 5,
            duplicates: 6,
            refused: 7,
            dropped: 8,
            expired: 9,
        },
        gossip: GossipStatus { accepted: 10, ignored: 11, rejected: 12, rate_limited: 13 },
        published: vec![cid(1), cid(2)],
        uptime_ms: 14,
    }
}

pub(crate) fn peers() -> Vec<PeerInfo> {
    vec![
        PeerInfo {
            peer_id: peer(2),
            addrs: vec!["/ip4/127.0.0.1/tcp/4002".into()],
            connected: true,
            last_seen: 1,
        },
        PeerInfo { peer_id: peer(3), addrs: vec![], connected: false, last_seen: 2 },
    ]
}

pub(crate) fn free() -> Price {
    Price { amount: 0, unit: "free".into() }
}

pub(crate) fn hit(capability: Cid, n: u8) -> FindHit {
    FindHit {
        source: if n == 1 { Source::Replica } else { Source::Kademlia },
        kad_requests: u32::from(n),
        provider: peer(n + 10),
        addrs: vec![format!("/ip4/127.0.0.1/tcp/{}", 5000 + u16::from(n))],
        capability,
        advert_id: cid(n + 100),
        name: "echo".into(),
        version: "1.0.0".into(),
        price: free(),
        expires: 1_000,
        elapsed_ms: u64::from(n),
    }
}

pub(crate) fn done() -> FindDone {
    FindDone { hits: 2, kad_requests: 2, elapsed_ms: 3, error: None }
}

/// A capability the fake refuses to retire, with `Conflict`.
pub(crate) fn conflicting() -> Cid {
    cid(99)
}

impl Backend for Fake {
    async fn status(&self) -> Result<Status, ApiError> {
        self.record(Call::Status);
        Ok(status())
    }

    async fn peers(&self) -> Result<Vec<PeerInfo>, ApiError> {
        self.record(Call::Peers);
        Ok(peers())
    }

    async fn publish(&self, req: PublishRequest) -> Result<Published, ApiError> {
        self.record(Call::Publish(req));
        Ok(Published { capability: cid(1), advert_id: cid(2), seq: 3, expires: 4 })
    }

    async fn retire(&self, capability: Cid) -> Result<Retired, ApiError> {
        self.record(Call::Retire(capability));
        if capability == conflicting() {
            return Err(ApiError::conflict("not published by this node"));
        }
        Ok(Retired { capability, retirement_id: cid(5), seq: 6 })
    }

    async fn find(&self, req: FindRequest) -> Result<mpsc::Receiver<FindEvent>, ApiError> {
        self.record(Call::Find(req.clone()));
        let gate = self.find_gate.lock().unwrap().take();
        let hold = self.find_hold.lock().unwrap().take();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(FindEvent::Hit(hit(req.capability, 1))).await;
            if let Some(hold) = hold {
                let _ = hold.await;
                return;
            }
            if let Some(gate) = gate {
                let _ = gate.await;
            }
            tokio::task::yield_now().await;
            let _ = tx.send(FindEvent::Hit(hit(req.capability, 2))).await;
            tokio::task::yield_now().await;
            let _ = tx.send(FindEvent::Done(done())).await;
            // Anything after the `done` must not reach the client.
            let _ = tx.send(FindEvent::Hit(hit(req.capability, 3))).await;
        });
        Ok(rx)
    }

    async fn query(&self, req: QueryRequest) -> Result<QueryPage, ApiError> {
        self.record(Call::Query(req));
        Ok(QueryPage {
            hits: vec![QueryHit {
                id: cid(7),
                capability: cid(1),
                name: "echo".into(),
                provider: peer(2),
                price: Price { amount: 100, unit: "usd-micro".into() },
                issued: 1,
                expires: 2,
            }],
            next: Some("00ff".into()),
        })
    }
}

/// A server running [`Fake`] on 127.0.0.1:0.
pub(crate) struct Server {
    pub(crate) fake: Arc<Fake>,
    pub(crate) addr: SocketAddr,
    pub(crate) token: Token,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub(crate) async fn start() -> Self {
        let fake = Arc::new(Fake::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = Token::generate().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, fake.clone(), token.clone(), shutdown.clone()));
        Server { fake, addr, token, shutdown, task }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.addr, self.token.as_str().to_owned()).unwrap()
    }

    pub(crate) fn write_files(&self, dir: &Path) {
        write_files(dir, self.addr, &self.token).unwrap();
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels the server and waits for it to return.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        guard("server shutdown", self.task).await.unwrap().unwrap();
    }
}
