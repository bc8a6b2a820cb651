//! capmesh networking: one libp2p swarm (TCP + Noise + Yamux, QUIC, identify, ping, Kademlia
//! `/capmesh/kad/1.0.0`, gossipsub `capmesh/registry/1`, the `/capmesh/rpc/1.0.0`
//! request-response protocol, AutoNAT, relay client/server, DCUtR) owned by one task, the
//! [`NetworkService`], and driven through a cloneable [`NetworkHandle`].
//!
//! The crate moves bytes and knows no business rules: what a request means, whether a gossip
//! message is valid, is answered by the [`Handler`] the node plugs in. Every command has a
//! bounded queue, a oneshot reply and a timeout. Given a Prometheus registry
//! ([`Config::with_metrics`]), the service records libp2p's own metrics in it.
//!
//! ```no_run
//! # async fn example(key: capmesh_types::NodeKey, handler: impl capmesh_net::Handler) -> Result<(), capmesh_net::NetError> {
//! let config = capmesh_net::Config::default()
//!     .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")]);
//! let (service, handle) = capmesh_net::NetworkService::new(&key, config)?;
//! let cancel = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(service.run(handler, cancel.clone()));
//! let addrs = handle.listen_addrs().await?;
//! # Ok(()) }
//! ```

mod autorelay;
mod behaviour;
pub mod codec;
mod conns;
pub mod convert;
mod handle;
mod listen;
mod punch;
mod rate;
mod service;
mod trim;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub use behaviour::{IDENTIFY_PROTOCOL, KAD_PROTOCOL, REGISTRY_TOPIC, kademlia};
pub use handle::{
    GossipCounters, HolePunchCounters, NetInfo, NetworkHandle, PeerSummary, ProviderEvent,
};
pub use libp2p::{Multiaddr, metrics::Registry, multiaddr::Protocol};
pub use service::NetworkService;

use capmesh_types::PeerId;

/// Most peers on a node's block list ([`NetworkHandle::block`]).
pub const MAX_BLOCKED: usize = 16_384;

/// A Prometheus registry shared between the network service, which registers libp2p's metrics
/// in it at start, and whoever serves it (the node encodes it at each scrape).
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Computes a gossip message's id from its data.
pub type MessageIdFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// What the node answers on the network. Implemented by the node's registry/call logic.
pub trait Handler: Send + Sync + 'static {
    /// One rpc request (the frame's bytes). The reply is the response frame (empty = an
    /// acknowledgement); `None` resets the stream without an answer.
    fn request(
        &self,
        peer: PeerId,
        request: Vec<u8>,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;

    /// One gossip message, before it is forwarded: the verdict decides whether it is.
    /// `source` is the peer that passed it on (the author is inside the signed data).
    fn gossip(&self, source: PeerId, data: Vec<u8>) -> impl Future<Output = Verdict> + Send;

    /// The first connection to `peer` was established. Must not block (runs on the swarm task).
    fn connected(&self, _peer: PeerId) {}
}

/// Gossip validation result (libp2p's `MessageAcceptance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid and new: store and forward.
    Accept,
    /// Not forwarded, no penalty (stale, duplicate, over a cap).
    Ignore,
    /// Invalid: not forwarded, the sender is penalised.
    Reject,
}

/// Whether the node can be reached from outside: what [`NetworkHandle::info`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reachability {
    /// Reachable at its own addresses (configured, or AutoNAT's probes succeeded).
    Public,
    /// Not reachable directly: others reach it through its relay reservations.
    Private,
    /// Not known yet (AutoNAT has not decided).
    #[default]
    Unknown,
}

impl Reachability {
    /// `"public"`, `"private"` or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
            Self::Unknown => "unknown",
        }
    }
}

/// How the node decides its [`Reachability`] (`network.reachability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReachabilityMode {
    /// As AutoNAT finds.
    #[default]
    Auto,
    /// Always public: no relay reservations are made automatically.
    Public,
    /// Always private: relay reservations are made whatever AutoNAT says.
    Private,
}

/// How a connected peer is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// A direct connection (TCP or QUIC).
    Direct,
    /// Through a relay circuit.
    Relayed,
    /// A direct connection DCUtR made to replace a relayed one (a hole punch).
    HolePunched,
}

impl ConnectionKind {
    /// `"direct"`, `"relayed"` or `"hole_punched"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
            Self::HolePunched => "hole_punched",
        }
    }
}

/// Kademlia mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KadMode {
    /// Server when this node announces addresses (configured external addresses or
    /// `announce_listen_addrs`); otherwise libp2p's automatic mode (server once AutoNAT confirms
    /// an external address).
    #[default]
    Auto,
    Client,
    Server,
}

/// Network configuration. Every default is documented on its field.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Listen addresses. Default: none (the node assembles its own).
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start (each with a `/p2p/<id>` suffix).
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses others can reach this node at, announced as confirmed. Default none.
    pub external_addrs: Vec<Multiaddr>,
    /// Announce every listen address as a confirmed external address (loopback testnets, and
    /// relay circuits). Default false.
    pub announce_listen_addrs: bool,
    /// Default [`KadMode::Auto`].
    pub kad_mode: KadMode,
    /// Serve as a relay for others. Default false.
    pub relay_server: bool,
    /// How reachability is decided. Default [`ReachabilityMode::Auto`] (AutoNAT).
    pub reachability: ReachabilityMode,
    /// Relay reservations a private node holds, on relays chosen among its connected peers
    /// (`autorelay.rs`). Circuits listened on through [`NetworkHandle::listen`] count. 0: none
    /// are made automatically. Default 2.
    pub relay_reservations: usize,
    /// AutoNAT probes to and from private (non-global) addresses: a lab on private ranges.
    /// Always on when the node announces its addresses (loopback testnets). Default false.
    pub autonat_allow_private: bool,
    /// Subscribe to the registry topic. Default true.
    pub gossip: bool,
    /// Gossip messages accepted per second per peer, after a burst. Default 100 / burst 400.
    pub gossip_rate: u32,
    pub gossip_burst: u32,
    /// Gossipsub heartbeat. Default 1 s (libp2p's default; testkits lower it).
    pub gossip_heartbeat: Duration,
    /// Gossip validations in flight; over it, messages are ignored and counted. Default 1024.
    pub max_pending_validations: usize,
    /// Message id of a gossip message: the node supplies the envelope id. Default BLAKE3.
    pub message_id: MessageIdFn,
    /// Largest rpc frame (and gossip message). Default 1 MiB.
    pub max_frame: usize,
    /// Outbound rpc timeout. Default 30 s.
    pub rpc_timeout: Duration,
    /// Inbound rpc requests handled at once; more are reset. Default 256.
    pub max_inbound_rpc: usize,
    /// Kademlia query timeout. Default 30 s.
    pub query_timeout: Duration,
    /// Kademlia message size cap. Default 64 KiB (libp2p's 16 KiB is too small for provider
    /// answers with relay addresses).
    pub kad_max_packet: usize,
    /// Capabilities this node can provide at once. Default 65 536.
    pub max_provided_keys: usize,
    /// Providers remembered per key. Default 20 (the replication factor).
    pub max_providers_per_key: usize,
    /// How long others keep our provider records. Default 2 h.
    pub provider_ttl: Duration,
    /// Connection limits. Defaults: 256 established, 4 per peer (a relayed connection, the
    /// direct one a hole punch makes, and the punch's simultaneous open from both sides: with 2,
    /// punches over 20 ms links were denied and closed), 64 pending each way.
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    pub max_pending_outgoing: u32,
    /// Peers whose addresses are remembered in memory. Default 4096.
    pub address_book_peers: usize,
    /// Idle connections are closed after this. Default 60 s.
    pub idle_timeout: Duration,
    /// Connection trimming: above `peers_high` connected peers, the least recently active
    /// ones outside the gossip mesh, with no request in flight and quiet for `trim_grace`, are
    /// disconnected down to `peers_low` (gossipsub's open streams would otherwise keep every
    /// connection ever made). Defaults 32 / 48, grace 60 s.
    pub peers_low: u32,
    pub peers_high: u32,
    pub trim_grace: Duration,
    /// Commands queued to the swarm task. Default 1024.
    pub command_queue: usize,
    /// Where libp2p's metrics are registered (prefix `libp2p_`: swarm, identify, ping, Kademlia,
    /// gossipsub, relay server, DCUtR events, gossipsub's own mesh metrics and bandwidth by
    /// transport). Default none: nothing is recorded.
    pub metrics: Option<SharedRegistry>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("external_addrs", &self.external_addrs)
            .field("announce_listen_addrs", &self.announce_listen_addrs)
            .field("kad_mode", &self.kad_mode)
            .field("relay_server", &self.relay_server)
            .field("reachability", &self.reachability)
            .field("relay_reservations", &self.relay_reservations)
            .field("autonat_allow_private", &self.autonat_allow_private)
            .field("gossip", &self.gossip)
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            announce_listen_addrs: false,
            kad_mode: KadMode::Auto,
            relay_server: false,
            reachability: ReachabilityMode::Auto,
            relay_reservations: 2,
            autonat_allow_private: false,
            gossip: true,
            gossip_rate: 100,
            gossip_burst: 400,
            gossip_heartbeat: Duration::from_secs(1),
            max_pending_validations: 1024,
            message_id: Arc::new(|data| blake3::hash(data).as_bytes().to_vec()),
            max_frame: codec::DEFAULT_MAX_FRAME,
            rpc_timeout: Duration::from_secs(30),
            max_inbound_rpc: 256,
            query_timeout: Duration::from_secs(30),
            kad_max_packet: 64 * 1024,
            max_provided_keys: 65_536,
            max_providers_per_key: 20,
            provider_ttl: Duration::from_secs(2 * 3600),
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            max_pending_outgoing: 64,
            address_book_peers: 4096,
            idle_timeout: Duration::from_secs(60),
            peers_low: 32,
            peers_high: 48,
            trim_grace: Duration::from_secs(60),
            command_queue: 1024,
            metrics: None,
        }
    }
}

impl Config {
    pub fn with_listen(mut self, listen: Vec<Multiaddr>) -> Self {
        self.listen = listen;
        self
    }
    pub fn with_bootstrap(mut self, peers: Vec<Multiaddr>) -> Self {
        self.bootstrap = peers;
        self
    }
    pub fn with_external_addrs(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.external_addrs = addrs;
        self
    }
    pub fn with_announce_listen_addrs(mut self, on: bool) -> Self {
        self.announce_listen_addrs = on;
        self
    }
    pub fn with_kad_mode(mut self, mode: KadMode) -> Self {
        self.kad_mode = mode;
        self
    }
    pub fn with_relay_server(mut self, on: bool) -> Self {
        self.relay_server = on;
        self
    }
    pub fn with_reachability(mut self, mode: ReachabilityMode) -> Self {
        self.reachability = mode;
        self
    }
    pub fn with_relay_reservations(mut self, n: usize) -> Self {
        self.relay_reservations = n;
        self
    }
    pub fn with_autonat_allow_private(mut self, on: bool) -> Self {
        self.autonat_allow_private = on;
        self
    }
    pub fn with_gossip(mut self, on: bool) -> Self {
        self.gossip = on;
        self
    }
    pub fn with_gossip_rate(mut self, per_sec: u32, burst: u32) -> Self {
        self.gossip_rate = per_sec;
        self.gossip_burst = burst;
        self
    }
    pub fn with_gossip_heartbeat(mut self, every: Duration) -> Self {
        self.gossip_heartbeat = every;
        self
    }
    pub fn with_message_id(mut self, f: MessageIdFn) -> Self {
        self.message_id = f;
        self
    }
    pub fn with_max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }
    pub fn with_rpc_timeout(mut self, t: Duration) -> Self {
        self.rpc_timeout = t;
        self
    }
    pub fn with_query_timeout(mut self, t: Duration) -> Self {
        self.query_timeout = t;
        self
    }
    pub fn with_max_provided_keys(mut self, n: usize) -> Self {
        self.max_provided_keys = n;
        self
    }
    pub fn with_kad_max_packet(mut self, n: usize) -> Self {
        self.kad_max_packet = n;
        self
    }
    pub fn with_provider_ttl(mut self, t: Duration) -> Self {
        self.provider_ttl = t;
        self
    }
    pub fn with_max_connections(mut self, total: u32, per_peer: u32) -> Self {
        self.max_connections = total;
        self.max_connections_per_peer = per_peer;
        self
    }

    /// Records libp2p's metrics into `registry` (see [`Config::metrics`]).
    /// Trims connected peers above `high` down to `low` (see [`Config::peers_low`]); `low` is
    /// raised to at most `high`.
    pub fn with_peer_trim(mut self, low: u32, high: u32, grace: Duration) -> Self {
        self.peers_low = low.min(high);
        self.peers_high = high;
        self.trim_grace = grace;
        self
    }

    pub fn with_metrics(mut self, registry: SharedRegistry) -> Self {
        self.metrics = Some(registry);
        self
    }

    pub(crate) fn announces_addresses(&self) -> bool {
        self.announce_listen_addrs || !self.external_addrs.is_empty()
    }
}

/// Why a network operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    #[error("the network task has stopped")]
    Stopped,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    /// A listen address with a fixed port that another process already holds (found before
    /// listening: see [`NetworkService::new`]).
    #[error(
        "cannot listen on {addr}: the address is in use by another process (another capmesh \
         node?); stop it, or choose another port with --listen or network.listen in config.toml"
    )]
    AddrInUse { addr: String },
    /// Two listen addresses of this node bind one socket (the same address and port, or a
    /// wildcard address and one it covers).
    #[error(
        "the listen addresses {first} and {second} bind the same port: list each socket once \
         (--listen or network.listen in config.toml)"
    )]
    ListenTwice { first: String, second: String },
    #[error("cannot dial {target}: {reason}")]
    Dial { target: String, reason: String },
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("gossip publish failed: {0}")]
    Publish(String),
    #[error("kademlia: {0}")]
    Kad(String),
    #[error("{0}")]
    Config(String),
    #[error("at most {max} peers can be blocked")]
    TooManyBlocked { max: usize },
}
