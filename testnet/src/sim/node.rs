//! One simulated node: a libp2p swarm on the memory transport (Noise, Yamux) whose only behaviour
//! is the node's own Kademlia (`capmesh_net::kademlia`). One task owns the swarm; the simulator
//! drives it through a bounded command channel, each command with a oneshot for its reply.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport,
    core::{transport::MemoryTransport, upgrade},
    identity, kad,
    kad::store::{MemoryStore, RecordStore},
    noise,
    swarm::{self, SwarmEvent},
    yamux,
};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
};

/// Connections stay open for the whole run: a peer once dialed is not dialed again, so
/// connections do not flap between lookups.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Commands queued to one node.
const COMMAND_QUEUE: usize = 16;

/// Every node's listen address, known before any node starts (the ports are chosen up front).
pub(crate) type Book = Arc<HashMap<PeerId, Multiaddr>>;

/// The lookup being measured, published to every node: libp2p's inbound GET_PROVIDERS event
/// names neither the key nor the sender, so the responder takes both from here.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) lookup: u64,
    pub(crate) key: kad::RecordKey,
    pub(crate) querier: PeerId,
}

/// What nodes report to the simulator as it happens.
#[derive(Debug)]
pub(crate) enum Observation {
    /// A GET_PROVIDERS request was answered.
    Asked(Asked),
    /// A GET_PROVIDERS request arrived while no lookup was published.
    Stray,
    /// An inbound ADD_PROVIDER record was stored.
    Stored { key: kad::RecordKey },
}

/// One answered GET_PROVIDERS request of a lookup.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    pub(crate) lookup: u64,
    pub(crate) at: Instant,
    pub(crate) responder: PeerId,
    /// The peers the answer names: the responder's closest local peers to the key (the querier
    /// left out, as libp2p does) and the providers it holds records of; the querier's query
    /// takes both as candidates.
    pub(crate) learned: Vec<PeerId>,
    /// The responder held a provider record for the key.
    pub(crate) has_record: bool,
}

/// What every node of one simulated network shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) book: Book,
    pub(crate) probe: watch::Receiver<Option<Probe>>,
    /// `None`: the node is not instrumented (the baseline pair).
    pub(crate) observations: Option<mpsc::Sender<Observation>>,
    /// Observations lost to a full queue.
    pub(crate) dropped: Arc<AtomicU64>,
}

/// What the querier saw of one `get_providers`.
#[derive(Debug, Clone)]
pub(crate) struct Lookup {
    /// The query's first candidates: the querier's K closest local peers to the key.
    pub(crate) initial: Vec<PeerId>,
    /// The querier held a provider record for the key itself.
    pub(crate) held_record: bool,
    /// Issued → first `FoundProviders`.
    pub(crate) first_provider: Option<Duration>,
    /// Issued → the query's last step.
    pub(crate) finished: Duration,
    pub(crate) providers: usize,
    pub(crate) stats: Stats,
    /// Connections the querier dialed while the query ran (peers it had no connection to).
    pub(crate) dials: u64,
    pub(crate) error: Option<String>,
}

/// libp2p's `QueryStats` counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    pub(crate) requests: u32,
    pub(crate) successes: u32,
    pub(crate) failures: u32,
}

/// One node's routing table, connections, and FIND_NODE requests answered so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeStats {
    pub(crate) routing_table: usize,
    pub(crate) connected: usize,
    pub(crate) find_node_served: u64,
}

#[derive(Debug)]
enum Command {
    Bootstrap { peers: Vec<PeerId>, muted: bool, reply: oneshot::Sender<Result<(), String>> },
    StartProviding { key: kad::RecordKey, reply: oneshot::Sender<Result<(), String>> },
    GetProviders { key: kad::RecordKey, reply: oneshot::Sender<Lookup> },
    Stats { reply: oneshot::Sender<NodeStats> },
    Disconnect { peer: PeerId, reply: oneshot::Sender<()> },
}

/// Drives one node. Dropping every handle ends the node's task.
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub(crate) peer: PeerId,
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// Adds `peers` (their addresses from the book) and runs a Kademlia bootstrap to its end.
    pub(crate) async fn bootstrap(&self, peers: Vec<PeerId>) -> anyhow::Result<()> {
        self.ask(|reply| Command::Bootstrap { peers, muted: false, reply })
            .await?
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("bootstrap of {}", self.peer))
    }

    /// Announces the node as a provider of `key`: returns once the announcement query ends (the
    /// ADD_PROVIDER messages are then queued, not necessarily stored).
    pub(crate) async fn start_providing(&self, key: kad::RecordKey) -> anyhow::Result<()> {
        self.ask(|reply| Command::StartProviding { key, reply })
            .await?
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("start_providing at {}", self.peer))
    }

    /// Runs `get_providers(key)` to its end.
    pub(crate) async fn get_providers(&self, key: kad::RecordKey) -> anyhow::Result<Lookup> {
        self.ask(|reply| Command::GetProviders { key, reply }).await
    }

    pub(crate) async fn stats(&self) -> anyhow::Result<NodeStats> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Puts `peers` (their addresses from the book) in the routing table, without connecting,
    /// as if the node had joined long ago. Filling a table from empty schedules libp2p's
    /// automatic bootstrap (its throttle is crate-private in libp2p-kad 0.49): a bootstrap
    /// ended before it sends anything clears it, and restarts the periodic one's 5 minutes.
    pub(crate) async fn seed_table(&self, peers: Vec<PeerId>) -> anyhow::Result<()> {
        self.ask(|reply| Command::Bootstrap { peers, muted: true, reply })
            .await?
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("table of {}", self.peer))
    }

    /// Closes the connection to `peer`; returns once Kademlia knows it closed.
    pub(crate) async fn disconnect(&self, peer: PeerId) -> anyhow::Result<()> {
        self.ask(|reply| Command::Disconnect { peer, reply }).await
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> anyhow::Result<T> {
        let (reply, rx) = oneshot::channel();
        let gone = || anyhow::anyhow!("simulated node {} stopped", self.peer);
        self.tx.send(command(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// Node `seed`'s identity (an ed25519 seed, as `capmesh` key files hold).
pub(crate) fn peer_id(seed: [u8; 32]) -> anyhow::Result<PeerId> {
    Ok(keypair(seed)?.public().to_peer_id())
}

fn keypair(mut seed: [u8; 32]) -> anyhow::Result<identity::Keypair> {
    identity::Keypair::ed25519_from_bytes(&mut seed).context("node key")
}

/// Starts a node listening on `addr` (its address in the book) on a task of `tasks`.
pub(crate) fn spawn(
    seed: [u8; 32],
    addr: Multiaddr,
    config: &capmesh_net::Config,
    shared: Shared,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<Handle> {
    let key = keypair(seed)?;
    let peer = key.public().to_peer_id();
    let transport = MemoryTransport::default()
        .upgrade(upgrade::Version::V1)
        .authenticate(noise::Config::new(&key).context("noise")?)
        .multiplex(yamux::Config::default())
        .boxed();
    let mut swarm = Swarm::new(
        transport,
        capmesh_net::kademlia(peer, config),
        peer,
        swarm::Config::with_tokio_executor().with_idle_connection_timeout(IDLE_TIMEOUT),
    );
    // The memory transport registers the port now: peers may dial before the task first runs.
    swarm.listen_on(addr.clone()).with_context(|| format!("listen on {addr}"))?;
    // As loopback testnet nodes do (`announce_listen_addrs`): provider records carry it.
    swarm.add_external_address(addr);
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let node = Node {
        swarm,
        shared,
        bootstraps: HashMap::new(),
        providing: HashMap::new(),
        lookups: HashMap::new(),
        dials: 0,
        disconnecting: HashMap::new(),
        muted: HashSet::new(),
        find_node_served: 0,
    };
    tasks.spawn(node.run(rx));
    Ok(Handle { peer, tx })
}

struct Node {
    swarm: Swarm<kad::Behaviour<MemoryStore>>,
    shared: Shared,
    bootstraps: HashMap<kad::QueryId, oneshot::Sender<Result<(), String>>>,
    providing: HashMap<kad::QueryId, oneshot::Sender<Result<(), String>>>,
    lookups: HashMap<kad::QueryId, PendingLookup>,
    /// Outbound connections established so far.
    dials: u64,
    disconnecting: HashMap<PeerId, oneshot::Sender<()>>,
    /// Bootstraps ended as they start (`seed_table`).
    muted: HashSet<kad::QueryId>,
    /// FIND_NODE requests answered (joining, announcements).
    find_node_served: u64,
}

struct PendingLookup {
    started: Instant,
    dials_before: u64,
    initial: Vec<PeerId>,
    held_record: bool,
    first_provider: Option<Duration>,
    providers: HashSet<PeerId>,
    error: Option<String>,
    reply: oneshot::Sender<Lookup>,
}

impl Node {
    /// Every pending reply ends with its query: libp2p's query timeout bounds each one.
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Bootstrap { peers, muted, reply } => self.bootstrap(peers, muted, reply),
            Command::StartProviding { key, reply } => {
                match self.swarm.behaviour_mut().start_providing(key) {
                    Ok(id) => {
                        self.providing.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::GetProviders { key, reply } => self.get_providers(key, reply),
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Disconnect { peer, reply } => {
                if self.swarm.disconnect_peer_id(peer).is_ok() {
                    self.disconnecting.insert(peer, reply);
                } else {
                    // Not connected: nothing to wait for.
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Adds `peers` from the book and starts a bootstrap; a `muted` one is ended at once.
    fn bootstrap(
        &mut self,
        peers: Vec<PeerId>,
        muted: bool,
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        let kad = self.swarm.behaviour_mut();
        for peer in peers {
            if let Some(addr) = self.shared.book.get(&peer) {
                kad.add_address(&peer, addr.clone());
            }
        }
        match kad.bootstrap() {
            Ok(id) => {
                if muted && let Some(mut query) = kad.query_mut(&id) {
                    // Before the swarm polls it again: no request goes out.
                    query.finish();
                    self.muted.insert(id);
                }
                self.bootstraps.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    fn stats(&mut self) -> NodeStats {
        let routing_table = self.swarm.behaviour_mut().kbuckets().map(|b| b.num_entries()).sum();
        let connected = self.swarm.connected_peers().count();
        NodeStats { routing_table, connected, find_node_served: self.find_node_served }
    }

    /// Notes the query's first candidates (what `get_providers` starts from) and issues it.
    fn get_providers(&mut self, key: kad::RecordKey, reply: oneshot::Sender<Lookup>) {
        let kad = self.swarm.behaviour_mut();
        let target = kad::KBucketKey::new(key.clone());
        let initial = kad
            .get_closest_local_peers(&target)
            .take(kad::K_VALUE.get())
            .map(|k| *k.preimage())
            .collect();
        let held_record = !kad.store_mut().providers(&key).is_empty();
        let started = Instant::now();
        let id = kad.get_providers(key);
        let pending = PendingLookup {
            started,
            dials_before: self.dials,
            initial,
            held_record,
            first_provider: None,
            providers: HashSet::new(),
            error: None,
            reply,
        };
        self.lookups.insert(id, pending);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<kad::Event>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_kad_event(event),
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                self.dials += u64::from(endpoint.is_dialer());
                self.learn(peer_id);
            }
            // The swarm tells Kademlia first: it now counts the peer disconnected.
            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                if let Some(reply) = self.disconnecting.remove(&peer_id) {
                    let _ = reply.send(());
                }
            }
            _ => {}
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request: kad::InboundRequest::GetProvider { .. } } => {
                self.observe_get_providers();
            }
            kad::Event::InboundRequest { request: kad::InboundRequest::FindNode { .. } } => {
                self.find_node_served += 1;
            }
            // `StoreInserts::FilterBoth`: the node stores inbound provider records itself (as
            // capmesh-net's service does).
            kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            } => {
                let key = record.key.clone();
                match self.swarm.behaviour_mut().store_mut().add_provider(record) {
                    Ok(()) => self.observe(Observation::Stored { key }),
                    Err(e) => tracing::debug!(error = %e, "provider record not stored"),
                }
            }
            kad::Event::OutboundQueryProgressed { id, result, stats, step } => {
                self.on_progress(id, result, &stats, step.last);
            }
            _ => {}
        }
    }

    fn on_progress(
        &mut self,
        id: kad::QueryId,
        result: kad::QueryResult,
        stats: &kad::QueryStats,
        last: bool,
    ) {
        match result {
            kad::QueryResult::GetProviders(result) => {
                let Some(lookup) = self.lookups.get_mut(&id) else { return };
                match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        lookup.first_provider.get_or_insert_with(|| lookup.started.elapsed());
                        lookup.providers.extend(providers);
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => lookup.error = Some(e.to_string()),
                }
                if last && let Some(lookup) = self.lookups.remove(&id) {
                    lookup.finish(stats, self.dials);
                }
            }
            kad::QueryResult::StartProviding(result) if last => {
                if let Some(reply) = self.providing.remove(&id) {
                    let _ = reply.send(result.map(|_| ()).map_err(|e| e.to_string()));
                }
            }
            // A muted bootstrap goes on with one lookup per bucket: each is ended as it starts.
            kad::QueryResult::Bootstrap(_) if !last => {
                if self.muted.contains(&id)
                    && let Some(mut query) = self.swarm.behaviour_mut().query_mut(&id)
                {
                    query.finish();
                }
            }
            kad::QueryResult::Bootstrap(result) => {
                self.muted.remove(&id);
                if let Some(reply) = self.bootstraps.remove(&id) {
                    let _ = reply.send(result.map(|_| ()).map_err(|e| e.to_string()));
                }
            }
            _ => {}
        }
    }

    /// Stands in for identify (which the node runs and the simulator leaves out): the node
    /// puts a connected peer's listen address in its routing table. Only into a bucket with
    /// room: into a full one, libp2p dials the bucket's oldest disconnected peer to see if it
    /// is still there, whose own bucket may be full… With connections that never close, that
    /// chain reaction went on until most routing-table entries of the network were connected,
    /// and took most of a run's CPU and memory.
    fn learn(&mut self, peer: PeerId) {
        let Some(addr) = self.shared.book.get(&peer) else { return };
        let kad = self.swarm.behaviour_mut();
        if kad.kbucket(peer).is_some_and(|b| b.num_entries() < kad::K_VALUE.get()) {
            kad.add_address(&peer, addr.clone());
        }
    }

    /// Recomputes the answer just sent: libp2p builds it from the same routing table and store
    /// in the same poll, before this event reaches us (see the module doc for what can differ).
    fn observe_get_providers(&mut self) {
        let probe = self.shared.probe.borrow().clone();
        let Some(probe) = probe else {
            self.observe(Observation::Stray);
            return;
        };
        let responder = *self.swarm.local_peer_id();
        let kad = self.swarm.behaviour_mut();
        let target = kad::KBucketKey::new(probe.key.clone());
        let mut learned: Vec<PeerId> =
            kad.find_closest_local_peers(&target, &probe.querier).map(|p| p.node_id).collect();
        let holders: Vec<PeerId> = kad
            .store_mut()
            .providers(&probe.key)
            .into_iter()
            .map(|r| r.provider)
            .filter(|p| *p != probe.querier)
            .collect();
        let has_record = !holders.is_empty();
        learned.extend(holders);
        let at = Instant::now();
        self.observe(Observation::Asked(Asked {
            lookup: probe.lookup,
            at,
            responder,
            learned,
            has_record,
        }));
    }

    /// Never waits: a full queue drops the observation and counts it.
    fn observe(&self, observation: Observation) {
        if let Some(tx) = &self.shared.observations
            && tx.try_send(observation).is_err()
        {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl PendingLookup {
    fn finish(self, stats: &kad::QueryStats, dials: u64) {
        let lookup = Lookup {
            initial: self.initial,
            held_record: self.held_record,
            first_provider: self.first_provider,
            finished: self.started.elapsed(),
            providers: self.providers.len(),
            stats: Stats {
                requests: stats.num_requests(),
                successes: stats.num_successes(),
                failures: stats.num_failures(),
            },
            dials: dials - self.dials_before,
            error: self.error,
        };
        let _ = self.reply.send(lookup);
    }
}
