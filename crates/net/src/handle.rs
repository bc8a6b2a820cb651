//! The cloneable handle: every method sends one command over a bounded channel and awaits its
//! oneshot reply. All methods are cancel-safe: dropping the future drops the reply receiver and
//! the swarm task clears the pending entry when it finds the receiver gone or the timeout hits.

use std::time::Duration;

use capmesh_types::PeerId;
use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot, watch};

use crate::NetError;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

#[derive(Debug)]
pub(crate) enum Command {
    Listen { addr: Multiaddr, reply: Reply<Vec<Multiaddr>> },
    Dial { addr: Multiaddr, reply: Reply<PeerId> },
    AddAddress { peer: PeerId, addr: Multiaddr },
    AddExternal { addr: Multiaddr },
    Request { peer: PeerId, addrs: Vec<Multiaddr>, body: Vec<u8>, reply: Reply<Vec<u8>> },
    Publish { data: Vec<u8>, reply: Reply<()> },
    StartProviding { key: Vec<u8>, reply: Reply<u32> },
    StopProviding { key: Vec<u8> },
    GetProviders { key: Vec<u8>, events: mpsc::Sender<ProviderEvent> },
    Bootstrap { reply: Reply<()> },
    Info { reply: Reply<NetInfo> },
    Peers { reply: Reply<Vec<PeerSummary>> },
    Block { block: Vec<PeerId>, unblock: Vec<PeerId>, reply: Reply<Vec<PeerId>> },
}

/// Progress of a provider lookup. Kademlia reports providers step by step; the lookup ends
/// with exactly one `Done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderEvent {
    /// New providers, with the addresses known for them now, and the Kademlia requests the
    /// query had made when they were found.
    Found { providers: Vec<(PeerId, Vec<Multiaddr>)>, requests: u32 },
    /// The lookup is over (`error` set on timeout).
    Done { requests: u32, error: Option<NetError> },
}

/// A snapshot of the network state.
#[derive(Debug, Clone)]
pub struct NetInfo {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub external_addrs: Vec<Multiaddr>,
    pub connected_peers: u32,
    pub kad_server: bool,
    pub routing_table_peers: u32,
    /// Peers subscribed to the registry topic.
    pub gossip_peers: u32,
    pub gossip: GossipCounters,
    pub rpc_dropped: u64,
    /// Others' provider records refused because the provider store was full.
    pub providers_dropped: u64,
    /// Public, private (relay reservations needed) or unknown.
    pub reachability: crate::Reachability,
    /// Circuit addresses of the relay reservations the relays accepted
    /// (`<relay addr>/p2p/<relay>/p2p-circuit/p2p/<self>`).
    pub relay_reservations: Vec<Multiaddr>,
    pub hole_punch: HolePunchCounters,
}

/// DCUtR hole punches since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HolePunchCounters {
    /// Relayed connections this node accepted: DCUtR starts an upgrade on each.
    pub attempts: u64,
    /// Upgrades that made a direct connection (reported on either side).
    pub succeeded: u64,
    /// Upgrades that failed because no direct dial got through (after DCUtR's retries).
    pub failed_dial: u64,
    /// Upgrades that failed in the DCUtR exchange itself (the peer does not speak it, the
    /// stream failed).
    pub failed_protocol: u64,
}

/// Gossip verdicts and drops since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipCounters {
    pub accepted: u64,
    pub ignored: u64,
    pub rejected: u64,
    /// Ignored because the sending peer was over its rate.
    pub rate_limited: u64,
    /// Ignored because too many validations were in flight.
    pub overloaded: u64,
}

/// A peer as the node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSummary {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
    pub connected: bool,
    /// How it is connected (`None` when not connected).
    pub connection: Option<crate::ConnectionKind>,
}

/// Talks to the [`NetworkService`](crate::NetworkService). Cheap to clone.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) local: PeerId,
    /// The confirmed external addresses, as they change.
    pub(crate) addrs: watch::Receiver<Vec<Multiaddr>>,
    /// Bound on waiting for the swarm task to answer simple commands.
    pub(crate) timeout: Duration,
}

impl NetworkHandle {
    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.local
    }

    /// The confirmed external addresses (configured, confirmed by AutoNAT, relay circuits),
    /// updated as they change: what adverts and provider records should carry.
    pub fn external_addrs(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.addrs.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Starts listening and returns the concrete addresses (port 0 resolved) once known.
    pub async fn listen(&self, addr: Multiaddr) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::Listen { addr, reply }).await
    }

    /// Dials an address (with or without `/p2p/<id>`) and returns the peer once connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await
    }

    /// Remembers an address of a peer (address book and Kademlia routing table).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), NetError> {
        self.tx.send(Command::AddAddress { peer, addr }).await.map_err(|_| NetError::Stopped)
    }

    /// Announces an address as a confirmed external address.
    pub async fn add_external_address(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.tx.send(Command::AddExternal { addr }).await.map_err(|_| NetError::Stopped)
    }

    /// Sends one rpc request and returns the response frame (empty = acknowledgement). Dials
    /// the peer first when not connected, with `addrs` added to what is known of it.
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        self.call(|reply| Command::Request { peer, addrs, body, reply }).await
    }

    /// Publishes on the registry topic. Having no gossip peers is not an error (the message
    /// reaches others through `Sync`).
    pub async fn publish(&self, data: Vec<u8>) -> Result<(), NetError> {
        self.call(|reply| Command::Publish { data, reply }).await
    }

    /// Announces this node as a provider of `key` and returns how many Kademlia requests
    /// succeeded (the closest-peer lookup plus the ADD_PROVIDER sends). Sent is not stored:
    /// only a `get_providers` from another node proves it.
    pub async fn start_providing(&self, key: Vec<u8>) -> Result<u32, NetError> {
        self.call(|reply| Command::StartProviding { key, reply }).await
    }

    /// Stops announcing `key` (records already stored elsewhere expire with their TTL).
    pub async fn stop_providing(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.tx.send(Command::StopProviding { key }).await.map_err(|_| NetError::Stopped)
    }

    /// Looks up providers of `key`; events arrive on the returned channel as Kademlia reports
    /// them, ending with one [`ProviderEvent::Done`]. Dropping the receiver ends the query.
    pub async fn get_providers(
        &self,
        key: Vec<u8>,
    ) -> Result<mpsc::Receiver<ProviderEvent>, NetError> {
        let (events, rx) = mpsc::channel(64);
        self.tx.send(Command::GetProviders { key, events }).await.map_err(|_| NetError::Stopped)?;
        Ok(rx)
    }

    /// Runs a Kademlia bootstrap (fills the routing table) and waits for it to finish.
    pub async fn bootstrap(&self) -> Result<(), NetError> {
        self.call(|reply| Command::Bootstrap { reply }).await
    }

    pub async fn info(&self) -> Result<NetInfo, NetError> {
        tokio::time::timeout(self.timeout, self.call(|reply| Command::Info { reply }))
            .await
            .map_err(|_| NetError::Timeout(self.timeout))?
    }

    /// Listen addresses (after `listen` returned, these include the resolved ports).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        Ok(self.info().await?.listen_addrs)
    }

    pub async fn peers(&self) -> Result<Vec<PeerSummary>, NetError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// Blocks the peers in `block` (their connections are closed, new ones refused both ways)
    /// and lifts the block on those in `unblock` (redialing those a block had disconnected);
    /// returns the peers blocked afterwards. The list lives in memory only: a restart clears
    /// it. At most [`MAX_BLOCKED`](crate::MAX_BLOCKED) peers; beyond, nothing changes and the
    /// answer is [`NetError::TooManyBlocked`].
    pub async fn block(
        &self,
        block: Vec<PeerId>,
        unblock: Vec<PeerId>,
    ) -> Result<Vec<PeerId>, NetError> {
        self.call(|reply| Command::Block { block, unblock, reply }).await
    }
}
