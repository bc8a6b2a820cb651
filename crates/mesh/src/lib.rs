//! The registry protocol between nodes (protocol.md §8.2–8.4, §10.3): gossip of adverts,
//! retirements and attestations validated into the replica before they are forwarded;
//! `Discover` and `Sync` served from the replica; `find` by capability id through the replica
//! and Kademlia in parallel; publishing, refreshing and retiring this node's capabilities.
//!
//! [`Mesh`] is the [`capmesh_net::Handler`] the node plugs into the network service, and the
//! object the local API calls. It holds no socket and no sled handle of its own: bytes move
//! through `capmesh-net`, records live in `capmesh-store`.
//!
//! ```no_run
//! # async fn example(mesh: capmesh_mesh::Mesh, cap: capmesh_types::Cid) {
//! let mut results = mesh.find(cap, 10, None);
//! while let Some(event) = results.recv().await {
//!     println!("{event:?}");
//! }
//! # }
//! ```

mod calls;
mod find;
mod latency;
mod publish;
mod serve;
mod sync;
pub mod trace;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use capmesh_net::NetworkHandle;
use capmesh_store::Store;
use capmesh_types::{Cid, NodeKey, PeerId};
use capmesh_wire::{Body, Code, Envelope, ErrorBody, Opened, Receiver, Rules};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use calls::{BoxFuture, Calls, Exchange, Served, Thread};
pub use capmesh_net::{Multiaddr, NetError};
pub use find::{FindEvent, Found, Source};
pub use latency::{LATENCY_BOUNDS_US, Latency};
pub use publish::{Published, Retired, default_limits};

/// Mesh settings. Every default is documented on its field.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Lifetime of this node's adverts. Default 1 h.
    pub advert_ttl: Duration,
    /// Adverts and provider records are refreshed this often (well inside `advert_ttl`).
    /// Default 20 min.
    pub republish_every: Duration,
    /// Catch up with each peer on connect, and every `sync_every` with the next few connected
    /// peers in turn.
    /// Default on, every 60 s.
    pub sync: bool,
    pub sync_every: Duration,
    /// Change-log entries asked per `Sync`. Default 512.
    pub sync_batch: u32,
    /// Longest a `find` runs. Default 15 s.
    pub find_timeout: Duration,
    /// Providers asked with `Discover` at once per find. Default 8.
    pub discover_parallelism: usize,
    /// Lifetime of envelopes this node sends. Default 60 s.
    pub envelope_ttl_ms: u64,
    /// Envelope receiver rules.
    pub rules: Rules,
    /// Peers queued for catch-up; more are dropped (the periodic sync covers them).
    pub sync_queue: usize,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            advert_ttl: Duration::from_secs(3600),
            republish_every: Duration::from_secs(20 * 60),
            sync: true,
            sync_every: Duration::from_secs(60),
            sync_batch: 512,
            find_timeout: Duration::from_secs(15),
            discover_parallelism: 8,
            envelope_ttl_ms: 60_000,
            rules: Rules::default(),
            sync_queue: 256,
        }
    }
}

impl MeshConfig {
    pub fn with_advert_ttl(mut self, ttl: Duration, republish_every: Duration) -> Self {
        self.advert_ttl = ttl;
        self.republish_every = republish_every;
        self
    }
    pub fn with_sync(mut self, on: bool) -> Self {
        self.sync = on;
        self
    }
    pub fn with_sync_every(mut self, every: Duration) -> Self {
        self.sync_every = every;
        self
    }
    pub fn with_find_timeout(mut self, t: Duration) -> Self {
        self.find_timeout = t;
        self
    }
    pub fn with_rules(mut self, rules: Rules) -> Self {
        self.rules = rules;
        self
    }
}

/// Why a mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    #[error("network: {0}")]
    Net(#[from] capmesh_net::NetError),
    #[error("replica: {0}")]
    Store(#[from] capmesh_store::StoreError),
    #[error("contract refused ({code}): {0}", code = .0.code())]
    Contract(#[from] capmesh_contract::ContractError),
    #[error("the answer was refused ({code}): {0}", code = .0.code())]
    Verify(#[from] capmesh_wire::VerifyError),
    #[error("{peer} answered {code}: {message}")]
    Remote {
        peer: PeerId,
        code: Code,
        message: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
    },
    #[error("{peer} sent an unexpected answer: {0}", peer = .1)]
    Unexpected(String, PeerId),
    #[error("capability {0} is not published by this node")]
    NotPublished(Cid),
    #[error("cannot sign: {0}")]
    Sign(#[from] capmesh_wire::SignError),
    #[error("the node is shutting down")]
    Stopped,
}

impl MeshError {
    fn remote(peer: PeerId, e: &ErrorBody) -> Self {
        MeshError::Remote {
            peer,
            code: e.code.clone(),
            message: e.message.clone(),
            retryable: e.retryable,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

/// Counters of what the mesh did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    pub syncs: u64,
    pub synced_records: u64,
    pub sync_failures: u64,
    pub sync_dropped: u64,
    pub discover_served: u64,
    pub sync_served: u64,
    pub refused_requests: u64,
    /// Finds, from the call of [`Mesh::find`] to the first result reported (finds without one
    /// are not counted here).
    pub find_first_hit: Latency,
    /// Finds, from the call to the end: `Done` sent, or the reader gone.
    pub find_duration: Latency,
}

/// The registry protocol of one node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mesh {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    key: NodeKey,
    me: PeerId,
    store: Store,
    net: NetworkHandle,
    config: MeshConfig,
    /// Rpc envelopes (requests and answers to ours): recipient and replay checks. Verified
    /// under the read lock (in parallel), remembered under the write lock.
    receiver: RwLock<Receiver>,
    published: Mutex<HashMap<Cid, publish::Own>>,
    /// Per peer: the change-log position to ask from next.
    sync_from: Mutex<HashMap<PeerId, u64>>,
    sync_tx: mpsc::Sender<PeerId>,
    sync_rx: Mutex<Option<mpsc::Receiver<PeerId>>>,
    /// Held weakly: the call service holds the mesh (see [`Mesh::set_calls`]).
    calls: std::sync::OnceLock<std::sync::Weak<dyn Calls>>,
    stats: Mutex<MeshStats>,
    cancel: CancellationToken,
}

impl Mesh {
    /// A mesh over this store and network. Call [`Mesh::start`] once the network runs.
    pub fn new(
        key: NodeKey,
        store: Store,
        net: NetworkHandle,
        config: MeshConfig,
        cancel: CancellationToken,
    ) -> Self {
        let me = key.peer_id();
        let (sync_tx, sync_rx) = mpsc::channel(config.sync_queue.max(1));
        let receiver = Receiver::with_rules(me, config.rules, Receiver::DEFAULT_REPLAY_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                key,
                me,
                store,
                net,
                receiver: RwLock::new(receiver),
                published: Mutex::new(HashMap::new()),
                sync_from: Mutex::new(HashMap::new()),
                sync_tx,
                sync_rx: Mutex::new(Some(sync_rx)),
                calls: std::sync::OnceLock::new(),
                stats: Mutex::new(MeshStats::default()),
                cancel,
                config,
            }),
        }
    }

    /// Starts the background work: catch-up with peers, periodic sync, and the refresh of this
    /// node's adverts (resumed from the replica: adverts it signed earlier and that are still
    /// live are refreshed again after a restart).
    pub fn start(&self) -> Result<(), MeshError> {
        self.resume_published()?;
        if let Some(rx) = lock(&self.inner.sync_rx).take() {
            tokio::spawn(sync::run(self.clone(), rx));
        }
        tokio::spawn(publish::refresh_loop(self.clone()));
        Ok(())
    }

    pub fn peer_id(&self) -> PeerId {
        self.inner.me
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn net(&self) -> &NetworkHandle {
        &self.inner.net
    }

    pub fn stats(&self) -> MeshStats {
        *lock(&self.inner.stats)
    }

    /// Spawns background work owned by the node's cancellation token: stopping or dropping
    /// the node ends it, so nothing outlives the node holding its store.
    pub(crate) fn spawn_owned(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        tokio::spawn(self.inner.cancel.clone().run_until_cancelled_owned(work));
    }

    fn bump(&self, f: impl FnOnce(&mut MeshStats)) {
        f(&mut lock(&self.inner.stats));
    }

    /// The answer to `request`: addressed to its sender, `re` its id, same trace.
    pub fn answer_to(
        &self,
        request: &Opened,
        body: impl Into<Body>,
    ) -> Result<Envelope, MeshError> {
        Ok(Envelope::builder(body)
            .to(request.payload.sender())
            .re(request.id)
            .trace(request.payload.trace)
            .ttl_ms(self.inner.config.envelope_ttl_ms)
            .sign(&self.inner.key, now_ms())?)
    }

    /// [`Mesh::answer_to`] as bytes; `None` (the stream is reset) if it cannot be signed.
    fn answer(&self, request: &Opened, body: impl Into<Body>) -> Option<Vec<u8>> {
        match self.answer_to(request, body) {
            Ok(e) => Some(e.to_bytes()),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign an answer");
                None
            }
        }
    }

    /// Sends `body` to `peer` and opens the answer (see [`Mesh::request`]). An empty answer
    /// (acknowledgement) is `Ok(None)`.
    async fn rpc(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        body: impl Into<Body>,
    ) -> Result<Option<Opened>, MeshError> {
        Ok(self.request(peer, addrs, body, Thread::default()).await?.answer)
    }
}

/// The Kademlia key of a capability: its multihash bytes (protocol.md §3.1).
pub fn kad_key(cap: &Cid) -> Vec<u8> {
    cap.multihash().to_vec()
}

/// The gossipsub message id of an envelope: its binary envelope id (protocol.md §10.3), or a
/// BLAKE3 hash of bytes that are not an envelope (they will be rejected anyway).
pub fn message_id(data: &[u8]) -> Vec<u8> {
    match Envelope::from_bytes(data, capmesh_wire::cbor::Limits::default()) {
        Ok(envelope) => envelope.id().to_bytes().to_vec(),
        Err(_) => blake3_fallback(data),
    }
}

fn blake3_fallback(data: &[u8]) -> Vec<u8> {
    capmesh_types::Digest::of(data).as_bytes().to_vec()
}

impl Mesh {
    /// Opens received rpc bytes: signature and checks in parallel, the replay record serialized.
    fn accept(&self, bytes: &[u8]) -> Result<Opened, capmesh_wire::VerifyError> {
        let now = now_ms();
        let opened =
            self.inner.receiver.read().unwrap_or_else(|e| e.into_inner()).check(bytes, now)?;
        self.inner.receiver.write().unwrap_or_else(|e| e.into_inner()).remember(&opened, now)?;
        Ok(opened)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An `Error` body for a refusal.
fn error_body(code: Code, message: impl Into<String>, retryable: bool) -> ErrorBody {
    ErrorBody { code, message: message.into(), retryable, retry_after_ms: None }
}
