//! The task that owns the swarm. One `select!` loop, each arm one method call; local work
//! (finished handler tasks, commands) before remote events. Every pending entry — listen, dial,
//! request, Kademlia query — is cleared on success, failure and timeout.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use capmesh_types::NodeKey;
use futures::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, dcutr, gossipsub, identify, kad,
    metrics::{Metrics, Recorder},
    multiaddr::Protocol,
    noise, request_response,
    swarm::{ConnectionId, SwarmEvent, dial_opts::DialOpts},
    tcp, yamux,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Config, Handler, KadMode, NetError, Reachability, Verdict,
    autorelay::{self, AutoRelay},
    behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, REGISTRY_TOPIC},
    conns::Connections,
    convert,
    handle::{
        Command, GossipCounters, HolePunchCounters, NetInfo, NetworkHandle, PeerSummary,
        ProviderEvent, Reply,
    },
    rate::RateLimiter,
    trim::Activity,
};

/// Most addresses remembered per peer.
const ADDRS_PER_PEER: usize = 16;
/// How often pending entries are checked for their deadline.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// How often connected peers are trimmed (see `trim.rs`).
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// How long a failed dial to a known peer waits for a racing connection to that peer (the
/// peer's own dial, a bootstrap) before it reports its failure: the per-peer limit denies, or
/// the remote closes, whichever connection comes second.
const DIAL_RACE_GRACE: Duration = Duration::from_millis(500);
/// Requests waiting for a connection to their peer, over all peers; more are refused.
const MAX_AWAITING_REQUESTS: usize = 1024;

/// Owns the swarm; consumed by [`NetworkService::run`].
pub struct NetworkService {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    config: Config,
    topic: gossipsub::IdentTopic,
    pending: Pending,
    book: AddressBook,
    rate: RateLimiter<PeerId>,
    counters: GossipCounters,
    rpc_dropped: u64,
    /// Provider records from others refused by the store's caps.
    providers_dropped: u64,
    validations: usize,
    inbound_rpc: usize,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    tasks: JoinSet<()>,
    /// libp2p's event metrics, when the config names a registry.
    metrics: Option<Metrics>,
    /// Blocked peers a block disconnected: redialed when the block is lifted.
    cut: HashSet<PeerId>,
    activity: Activity,
    last_trim: Instant,
    /// Relay reservations while private (`autorelay.rs`).
    relays: AutoRelay,
    /// The reachability Kademlia's mode was last set for.
    kad_reachability: Reachability,
    /// How each peer is connected.
    conns: Connections,
    hole_punch: HolePunchCounters,
    /// Confirmed external addresses, for [`NetworkHandle::external_addrs`].
    addrs: watch::Sender<Vec<Multiaddr>>,
}

impl std::fmt::Debug for NetworkService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkService")
            .field("peer_id", self.swarm.local_peer_id())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Pending {
    listen: HashMap<libp2p::core::transport::ListenerId, (Reply<Vec<Multiaddr>>, Instant)>,
    dial: HashMap<ConnectionId, (Reply<capmesh_types::PeerId>, Instant)>,
    requests: HashMap<request_response::OutboundRequestId, (capmesh_types::PeerId, Reply<Vec<u8>>)>,
    providing: HashMap<kad::QueryId, (Reply<u32>, Instant)>,
    providers: HashMap<kad::QueryId, Lookup>,
    bootstrap: HashMap<kad::QueryId, (Reply<()>, Instant)>,
    /// Failed dials waiting [`DIAL_RACE_GRACE`] for another connection to their peer.
    raced: HashMap<PeerId, Vec<RacedDial>>,
    /// Requests to peers not connected yet, sent when a connection comes up.
    awaiting: Awaiting,
}

/// Requests held back until their peer is connected. request-response fails every request it
/// holds for a peer on *any* dial failure to that peer (a stale address book entry tried by
/// another behaviour, a DCUtR attempt), even while another dial is about to succeed; so
/// requests go to it only once a connection is up, and fail only when the service's own dial
/// (`dials`) fails, with that dial's reason.
#[derive(Default)]
struct Awaiting {
    requests: HashMap<PeerId, Vec<AwaitingRequest>>,
    dials: HashMap<ConnectionId, PeerId>,
    len: usize,
}

struct AwaitingRequest {
    peer: capmesh_types::PeerId,
    body: Vec<u8>,
    reply: Reply<Vec<u8>>,
    until: Instant,
}

/// A dial that failed while another connection to the same peer may still succeed.
struct RacedDial {
    reply: Reply<capmesh_types::PeerId>,
    error: NetError,
    until: Instant,
}

struct Lookup {
    events: mpsc::Sender<ProviderEvent>,
    deadline: Instant,
    seen: HashSet<PeerId>,
}

/// What a handler task reports back to the swarm task.
enum Done {
    Response { channel: request_response::ResponseChannel<Vec<u8>>, body: Option<Vec<u8>> },
    Verdict { id: gossipsub::MessageId, source: PeerId, verdict: Verdict },
}

impl NetworkService {
    /// Builds the swarm (transports, behaviour), starts listening on `config.listen` and
    /// dialing `config.bootstrap`.
    ///
    /// Listen addresses are checked first: a fixed TCP or UDP port another process holds is
    /// [`NetError::AddrInUse`] and one socket listed twice [`NetError::ListenTwice`]. (The TCP
    /// listeners use `SO_REUSEPORT`, which would otherwise let two nodes share a port
    /// silently.) Addresses given later to [`NetworkHandle::listen`] are not checked.
    pub fn new(key: &NodeKey, config: Config) -> Result<(Self, NetworkHandle), NetError> {
        crate::listen::check_listen_addrs(&config.listen)?;
        let keypair = convert::keypair(key);
        let cfg = config.clone();
        let err = |e: &dyn std::fmt::Display| NetError::Config(e.to_string());
        let builder = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| err(&e))?
            .with_quic()
            .with_dns()
            .map_err(|e| err(&e))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| err(&e))?;
        // V1Lazy: an outbound stream proposing one protocol sends its first frame together with
        // the proposal instead of waiting a round trip for the listener's echo, which saves a
        // whole RTT per request. A peer that does not speak the protocol still fails the stream;
        // only the error comes with the read instead of the negotiation.
        let idle = |c: libp2p::swarm::Config| {
            c.with_idle_connection_timeout(cfg.idle_timeout)
                .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
        };
        let (mut swarm, metrics) = match &config.metrics {
            // Bandwidth wraps the whole transport (TCP, QUIC, relay circuits alike).
            Some(registry) => {
                let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
                let swarm = builder
                    .with_bandwidth_metrics(&mut registry)
                    .with_behaviour(|key, relay_client| {
                        Behaviour::new(key, relay_client, &cfg, Some(&mut registry))
                            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
                    })
                    .map_err(|e| err(&e))?
                    .with_swarm_config(idle)
                    .build();
                (swarm, Some(Metrics::new(&mut registry)))
            }
            None => {
                let swarm = builder
                    .with_behaviour(|key, relay_client| {
                        Behaviour::new(key, relay_client, &cfg, None)
                            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
                    })
                    .map_err(|e| err(&e))?
                    .with_swarm_config(idle)
                    .build();
                (swarm, None)
            }
        };

        let topic = gossipsub::IdentTopic::new(REGISTRY_TOPIC);
        if config.gossip {
            swarm.behaviour_mut().gossipsub.subscribe(&topic).map_err(|e| err(&e))?;
        }
        for addr in &config.external_addrs {
            swarm.add_external_address(addr.clone());
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| NetError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
        }
        let mut book = AddressBook::new(config.address_book_peers);
        for addr in &config.bootstrap {
            if let Some(peer) = peer_of(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                book.add(peer, addr.clone());
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "bootstrap dial failed");
            }
        }

        let local = convert::from_libp2p(swarm.local_peer_id()).expect("the local key is ed25519");
        let (tx, commands) = mpsc::channel(config.command_queue.max(1));
        let (done_tx, done_rx) =
            mpsc::channel(config.max_inbound_rpc + config.max_pending_validations + 1);
        let rate = RateLimiter::new(
            config.gossip_rate,
            config.gossip_burst,
            config.max_connections as usize,
        );
        let (addrs, addrs_rx) = watch::channel(swarm.external_addresses().cloned().collect());
        let handle = NetworkHandle { tx, local, addrs: addrs_rx, timeout: Duration::from_secs(10) };
        Ok((
            Self {
                swarm,
                commands,
                topic,
                pending: Pending::default(),
                book,
                rate,
                counters: GossipCounters::default(),
                rpc_dropped: 0,
                providers_dropped: 0,
                validations: 0,
                inbound_rpc: 0,
                done_tx,
                done_rx,
                tasks: JoinSet::new(),
                metrics,
                cut: HashSet::new(),
                activity: Activity::default(),
                last_trim: Instant::now(),
                relays: AutoRelay::new(config.reachability, config.relay_reservations),
                kad_reachability: Reachability::Unknown,
                conns: Connections::default(),
                hole_punch: HolePunchCounters::default(),
                addrs,
                config,
            },
            handle,
        ))
    }

    /// Runs until `cancel` fires or every handle is dropped. Handler tasks still running are
    /// aborted on the way out.
    pub async fn run<H: Handler>(mut self, handler: H, cancel: CancellationToken) {
        let handler = Arc::new(handler);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = self.done_rx.recv() => self.on_done(done),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event, &handler),
                _ = sweep.tick() => self.expire(),
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
            }
        }
        self.tasks.shutdown().await;
        tracing::debug!("network task stopped");
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Response { channel, body } => {
                self.inbound_rpc -= 1;
                if let Some(body) = body
                    && self.swarm.behaviour_mut().rpc.send_response(channel, body).is_err()
                {
                    tracing::debug!("rpc response not sent: the stream is gone");
                }
            }
            Done::Verdict { id, source, verdict } => {
                self.validations -= 1;
                let acceptance = match verdict {
                    Verdict::Accept => {
                        self.counters.accepted += 1;
                        gossipsub::MessageAcceptance::Accept
                    }
                    Verdict::Ignore => {
                        self.counters.ignored += 1;
                        gossipsub::MessageAcceptance::Ignore
                    }
                    Verdict::Reject => {
                        self.counters.rejected += 1;
                        gossipsub::MessageAcceptance::Reject
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        let deadline = now + self.config.query_timeout;
        match cmd {
            Command::Listen { addr, reply } => match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    if let Some(relay) = autorelay::relay_of(&addr) {
                        self.relays.own_listener(relay, id);
                    }
                    self.pending.listen.insert(id, (reply, deadline));
                }
                Err(e) => {
                    let _ = reply.send(Err(NetError::Listen {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    }));
                }
            },
            Command::Dial { addr, reply } => self.dial(addr, reply, deadline),
            Command::AddAddress { peer, addr } => {
                let peer = convert::to_libp2p(&peer);
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                self.book.add(peer, addr);
            }
            Command::AddExternal { addr } => self.swarm.add_external_address(addr),
            Command::Request { peer, addrs, body, reply } => self.request(peer, addrs, body, reply),
            Command::Publish { data, reply } => {
                let result =
                    match self.swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), data) {
                        Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
                        // Our own message already seen (published twice): nothing to do.
                        Err(gossipsub::PublishError::Duplicate) => Ok(()),
                        Err(e) => Err(NetError::Publish(e.to_string())),
                    };
                let _ = reply.send(result);
            }
            Command::StartProviding { key, reply } => {
                match self.swarm.behaviour_mut().kad.start_providing(kad::RecordKey::new(&key)) {
                    Ok(id) => {
                        self.pending.providing.insert(id, (reply, deadline));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Kad(format!("cannot provide: {e}"))));
                    }
                }
            }
            Command::StopProviding { key } => {
                self.swarm.behaviour_mut().kad.stop_providing(&kad::RecordKey::new(&key));
            }
            Command::GetProviders { key, events } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(kad::RecordKey::new(&key));
                self.pending
                    .providers
                    .insert(id, Lookup { events, deadline, seen: HashSet::new() });
            }
            Command::Bootstrap { reply } => match self.swarm.behaviour_mut().kad.bootstrap() {
                Ok(id) => {
                    self.pending.bootstrap.insert(id, (reply, deadline));
                }
                Err(e) => {
                    let _ = reply.send(Err(NetError::Kad(e.to_string())));
                }
            },
            Command::Info { reply } => {
                let _ = reply.send(Ok(self.info()));
            }
            Command::Peers { reply } => {
                let _ = reply.send(Ok(self.peers()));
            }
            Command::Block { block, unblock, reply } => {
                let _ = reply.send(self.block(block, unblock));
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: Reply<capmesh_types::PeerId>, deadline: Instant) {
        let opts = match peer_of(&addr) {
            Some(peer) => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(convert::from_libp2p(&peer).ok_or_else(|| NetError::Dial {
                        target: addr.to_string(),
                        reason: "not an ed25519 peer".into(),
                    }));
                    return;
                }
                // Booked only once connected (ConnectionEstablished): a wrong id must not
                // leave another node's address under it.
                // A dial already under way (bootstrap) must not make this one fail.
                DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                    .build()
            }
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.pending.dial.insert(id, (reply, deadline));
            }
            Err(e) => {
                let _ = reply
                    .send(Err(NetError::Dial { target: addr.to_string(), reason: e.to_string() }));
            }
        }
    }

    fn request(
        &mut self,
        peer: capmesh_types::PeerId,
        addrs: Vec<Multiaddr>,
        body: Vec<u8>,
        reply: Reply<Vec<u8>>,
    ) {
        let target = convert::to_libp2p(&peer);
        if &target == self.swarm.local_peer_id() {
            let _ = reply.send(Err(NetError::Request { peer, reason: "that is this node".into() }));
            return;
        }
        for addr in addrs {
            self.book.add(target, addr);
        }
        if self.swarm.is_connected(&target) {
            let id = self.swarm.behaviour_mut().rpc.send_request(&target, body);
            self.pending.requests.insert(id, (peer, reply));
            return;
        }
        let awaiting = &mut self.pending.awaiting;
        if awaiting.len >= MAX_AWAITING_REQUESTS {
            let reason = format!("{MAX_AWAITING_REQUESTS} requests already wait for connections");
            let _ = reply.send(Err(NetError::Request { peer, reason }));
            return;
        }
        let until = Instant::now() + self.config.query_timeout;
        let first = !awaiting.requests.contains_key(&target);
        awaiting.requests.entry(target).or_default().push(AwaitingRequest {
            peer,
            body,
            reply,
            until,
        });
        awaiting.len += 1;
        if first {
            // Addresses from adverts and provider answers; the behaviours add theirs.
            let opts = DialOpts::peer_id(target)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(self.book.get(&target))
                .extend_addresses_through_behaviour()
                .build();
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.pending.awaiting.dials.insert(connection, target);
                }
                Err(e) => self.fail_awaiting(target, &dial_reason(&e)),
            }
        }
    }

    /// Sends the requests that waited for `peer`, now connected.
    fn flush_awaiting(&mut self, peer: PeerId) {
        let Some(waiting) = self.pending.awaiting.requests.remove(&peer) else { return };
        self.pending.awaiting.len -= waiting.len();
        self.pending.awaiting.dials.retain(|_, p| *p != peer);
        for r in waiting {
            let id = self.swarm.behaviour_mut().rpc.send_request(&peer, r.body);
            self.pending.requests.insert(id, (r.peer, r.reply));
        }
    }

    /// Fails the requests that waited for `peer`: the service's dial failed for `reason`.
    fn fail_awaiting(&mut self, peer: PeerId, reason: &str) {
        let Some(waiting) = self.pending.awaiting.requests.remove(&peer) else { return };
        self.pending.awaiting.len -= waiting.len();
        self.pending.awaiting.dials.retain(|_, p| *p != peer);
        for r in waiting {
            let reason = format!("cannot reach the peer: {reason}");
            let _ = r.reply.send(Err(NetError::Request { peer: r.peer, reason }));
        }
    }

    fn on_swarm_event<H: Handler>(&mut self, event: SwarmEvent<BehaviourEvent>, handler: &Arc<H>) {
        if let Some(metrics) = &self.metrics {
            record(metrics, &event);
        }
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event, handler),
            SwarmEvent::NewListenAddr { listener_id, address } => {
                tracing::info!(%address, "listening");
                self.relays.listen_addr(listener_id, &address);
                if self.config.announce_listen_addrs {
                    self.swarm.add_external_address(address.clone());
                }
                if let Some((reply, _)) = self.pending.listen.remove(&listener_id) {
                    let _ = reply.send(Ok(vec![address]));
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                tracing::debug!(?listener_id, ?reason, "listener closed");
                self.relays.listener_closed(listener_id, Instant::now());
                if let Some((reply, _)) = self.pending.listen.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let _ = reply.send(Err(NetError::Listen { addr: String::new(), reason }));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some((reply, _)) = self.pending.listen.remove(&listener_id) {
                    let _ = reply.send(Err(NetError::Listen {
                        addr: String::new(),
                        reason: error.to_string(),
                    }));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if endpoint.is_dialer() {
                    self.book.add(peer_id, endpoint.get_remote_address().clone());
                }
                self.conns.established(peer_id, connection_id, endpoint.is_relayed());
                if endpoint.is_relayed() && !endpoint.is_dialer() {
                    // DCUtR starts an upgrade on every relayed connection it accepts.
                    self.hole_punch.attempts += 1;
                }
                let capmesh_peer = convert::from_libp2p(&peer_id);
                let as_dialed = || {
                    capmesh_peer.ok_or_else(|| NetError::Dial {
                        target: peer_id.to_string(),
                        reason: "not an ed25519 peer".into(),
                    })
                };
                if let Some((reply, _)) = self.pending.dial.remove(&connection_id) {
                    let _ = reply.send(as_dialed());
                }
                for raced in self.pending.raced.remove(&peer_id).unwrap_or_default() {
                    let _ = raced.reply.send(as_dialed());
                }
                self.flush_awaiting(peer_id);
                self.activity.touch(peer_id, Instant::now());
                if num_established.get() == 1 {
                    tracing::debug!(peer = %peer_id, "connected");
                    if let Some(p) = capmesh_peer {
                        handler.connected(p);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { connection_id, peer_id, error } => {
                tracing::debug!(peer = ?peer_id, error = %error, "outgoing connection failed");
                if let Some(peer) = self.pending.awaiting.dials.remove(&connection_id)
                    && !self.swarm.is_connected(&peer)
                {
                    self.fail_awaiting(peer, &dial_reason(&error));
                }
                if let Some((reply, _)) = self.pending.dial.remove(&connection_id) {
                    let target = peer_id.map(|p| p.to_string()).unwrap_or_default();
                    let error = NetError::Dial { target, reason: dial_reason(&error) };
                    match peer_id {
                        // A dial that lost a race to another connection to the same peer has
                        // done what was asked if that one is up, or comes up soon.
                        Some(peer) if self.swarm.is_connected(&peer) => {
                            let _ = reply.send(convert::from_libp2p(&peer).ok_or(error));
                        }
                        Some(peer) => {
                            let until = Instant::now() + DIAL_RACE_GRACE;
                            let raced = self.pending.raced.entry(peer).or_default();
                            raced.push(RacedDial { reply, error, until });
                        }
                        None => {
                            let _ = reply.send(Err(error));
                        }
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
                self.conns.closed(&peer_id, connection_id);
                if num_established == 0 {
                    self.rate.remove(&peer_id);
                    self.activity.forget(&peer_id);
                }
                if !self.conns.has_direct(&peer_id) {
                    for action in self.relays.relay_gone(&peer_id, Instant::now()) {
                        self.act(action);
                    }
                }
            }
            SwarmEvent::NewExternalAddrOfPeer { peer_id, address } => {
                self.book.add(peer_id, address)
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.publish_addrs();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.publish_addrs();
            }
            _ => {}
        }
        self.drive_relays();
    }

    /// Carries out what the auto-relay state asks for, and keeps Kademlia's mode in line with
    /// the reachability.
    fn drive_relays(&mut self) {
        let reachability = self.relays.reachability();
        if reachability != self.kad_reachability {
            self.kad_reachability = reachability;
            tracing::info!(reachability = reachability.as_str(), "reachability");
            // A private node answers no Kademlia queries: it would be queried through its
            // relays (libp2p's automatic mode would make it a server, circuits being
            // confirmed external addresses). Explicit modes are left alone.
            if self.config.kad_mode == KadMode::Auto && !self.config.announces_addresses() {
                let mode = (reachability == Reachability::Private).then_some(kad::Mode::Client);
                self.swarm.behaviour_mut().kad.set_mode(mode);
            }
        }
        for action in self.relays.poll(Instant::now()) {
            self.act(action);
        }
    }

    fn act(&mut self, action: autorelay::Action) {
        match action {
            autorelay::Action::Reserve { relay, addr } => {
                let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
                match self.swarm.listen_on(circuit.clone()) {
                    Ok(id) => {
                        tracing::info!(%circuit, "reserving a relay slot");
                        self.relays.listening(relay, id);
                    }
                    Err(e) => {
                        tracing::debug!(%circuit, error = %e, "relay reservation not started");
                        self.relays.reserve_failed(relay, Instant::now());
                    }
                }
            }
            autorelay::Action::Release { listener } => {
                self.swarm.remove_listener(listener);
            }
        }
    }

    /// Sends the confirmed external addresses to [`NetworkHandle::external_addrs`] readers
    /// when they changed.
    fn publish_addrs(&mut self) {
        let now: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        self.addrs.send_if_modified(|old| {
            let changed = *old != now;
            if changed {
                *old = now;
            }
            changed
        });
    }

    fn on_behaviour_event<H: Handler>(&mut self, event: BehaviourEvent, handler: &Arc<H>) {
        match event {
            // Without this a peer that dialed us never enters our routing table: Kademlia
            // only learns addresses of peers it dialed itself.
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            }) => self.on_identify(peer_id, connection_id, info),
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                self.activity.touch(propagation_source, Instant::now());
                self.on_gossip(propagation_source, message_id, message.data, handler);
            }
            BehaviourEvent::Rpc(event) => self.on_rpc_event(event, handler),
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { old, new }) => {
                tracing::info!(?old, ?new, "NAT status changed");
                self.relays.nat_status(match new {
                    autonat::NatStatus::Public(_) => Reachability::Public,
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                });
            }
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(connection) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched");
                    self.hole_punch.succeeded += 1;
                    self.conns.punched(&remote_peer_id, connection);
                }
                Err(e) => {
                    tracing::debug!(peer = %remote_peer_id, error = %e, "hole punch failed");
                    // DCUtR's error kinds are private; its message names them.
                    if e.to_string().contains("dial attempts") {
                        self.hole_punch.failed_dial += 1;
                    } else {
                        self.hole_punch.failed_protocol += 1;
                    }
                }
            },
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, connection: ConnectionId, info: identify::Info) {
        // Where this peer sees us, unrewritten, for DCUtR (crate::punch): only a direct
        // connection's observation says anything about our NAT.
        if self.conns.is_direct(&peer, connection) {
            self.swarm.behaviour_mut().dcutr.observed(&info.observed_addr);
        }
        // Without this a peer that dialed us never enters our routing table: Kademlia
        // only learns addresses of peers it dialed itself.
        if info.protocols.contains(&KAD_PROTOCOL) {
            for addr in info.listen_addrs.iter().take(ADDRS_PER_PEER) {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                self.book.add(peer, addr.clone());
            }
        }
        // A relay we reach directly is a candidate for a reservation: at the address we
        // dialed it at first (our book holds dialed addresses first), then those it listens on.
        if info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME)
            && self.conns.is_direct(&peer, connection)
        {
            let mut addrs = self.book.get(&peer);
            addrs.extend(info.listen_addrs.into_iter().take(ADDRS_PER_PEER));
            self.relays.relay_found(peer, addrs);
        }
    }

    fn on_gossip<H: Handler>(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        data: Vec<u8>,
        handler: &Arc<H>,
    ) {
        let ignore = |this: &mut Self| {
            this.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &id,
                &source,
                gossipsub::MessageAcceptance::Ignore,
            );
        };
        if !self.rate.allow(&source, Instant::now()) {
            self.counters.rate_limited += 1;
            self.counters.ignored += 1;
            return ignore(self);
        }
        if self.validations >= self.config.max_pending_validations {
            self.counters.overloaded += 1;
            self.counters.ignored += 1;
            return ignore(self);
        }
        let Some(from) = convert::from_libp2p(&source) else {
            self.counters.rejected += 1;
            self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                &id,
                &source,
                gossipsub::MessageAcceptance::Reject,
            );
            return;
        };
        self.validations += 1;
        let handler = handler.clone();
        let done = self.done_tx.clone();
        self.tasks.spawn(async move {
            // A handler that panics still yields a verdict (and frees its slot).
            let verdict = tokio::spawn(async move { handler.gossip(from, data).await })
                .await
                .unwrap_or(Verdict::Ignore);
            let _ = done.send(Done::Verdict { id, source, verdict }).await;
        });
    }

    fn on_rpc_event<H: Handler>(
        &mut self,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
        handler: &Arc<H>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                connection_id,
                message: Message::Request { request, channel, .. },
            } => {
                self.activity.touch(peer, Instant::now());
                let Some(from) = convert::from_libp2p(&peer) else { return };
                if self.inbound_rpc >= self.config.max_inbound_rpc {
                    // Dropping the channel resets the stream: the requester sees a failure.
                    self.rpc_dropped += 1;
                    return;
                }
                self.inbound_rpc += 1;
                self.conns.inbound_started(connection_id);
                let handler = handler.clone();
                let done = self.done_tx.clone();
                self.tasks.spawn(async move {
                    // A handler that panics resets the stream (and frees its slot).
                    let body = tokio::spawn(async move { handler.request(from, request).await })
                        .await
                        .unwrap_or(None);
                    let _ = done.send(Done::Response { channel, body }).await;
                });
            }
            Event::Message {
                peer, message: Message::Response { request_id, response }, ..
            } => {
                self.activity.touch(peer, Instant::now());
                if let Some((_, reply)) = self.pending.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            Event::OutboundFailure { request_id, error, .. } => {
                if let Some((peer, reply)) = self.pending.requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request { peer, reason: error.to_string() }));
                }
            }
            Event::InboundFailure { peer, connection_id, error, .. } => {
                tracing::debug!(%peer, %error, "inbound rpc failed");
                self.conns.inbound_finished(connection_id);
            }
            Event::ResponseSent { connection_id, .. } => self.conns.inbound_finished(connection_id),
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        let (id, result, stats, step) = match event {
            kad::Event::OutboundQueryProgressed { id, result, stats, step } => {
                (id, result, stats, step)
            }
            // With `StoreInserts::FilterBoth` nothing inbound is stored by libp2p itself:
            // provider records (whose provider is the sending peer) are stored here, values
            // never (v1 keeps no values in the DHT).
            kad::Event::InboundRequest {
                request: kad::InboundRequest::AddProvider { record: Some(record) },
            } => {
                use kad::store::RecordStore;
                if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().add_provider(record) {
                    self.providers_dropped += 1;
                    tracing::debug!(error = %e, "provider record not stored");
                }
                return;
            }
            _ => return,
        };
        let requests = stats.num_requests();
        match result {
            kad::QueryResult::GetProviders(result) => {
                let Some(lookup) = self.pending.providers.get_mut(&id) else { return };
                let mut error = None;
                match result {
                    Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                        let fresh: Vec<PeerId> =
                            providers.into_iter().filter(|p| lookup.seen.insert(*p)).collect();
                        for p in &fresh {
                            // The addresses of the DHT answer live only as long as the query:
                            // connect now, so the caller's request finds the peer reachable.
                            if !self.swarm.is_connected(p) && p != self.swarm.local_peer_id() {
                                let opts = DialOpts::peer_id(*p)
                                    .addresses(self.book.get(p))
                                    .extend_addresses_through_behaviour()
                                    .build();
                                if let Err(e) = self.swarm.dial(opts) {
                                    tracing::debug!(peer = %p, error = %e, "dial of a found provider");
                                }
                            }
                        }
                        let Some(lookup) = self.pending.providers.get_mut(&id) else { return };
                        let fresh: Vec<_> = fresh
                            .into_iter()
                            .filter_map(|p| Some((convert::from_libp2p(&p)?, self.book.get(&p))))
                            .collect();
                        if !fresh.is_empty()
                            && lookup
                                .events
                                .try_send(ProviderEvent::Found { providers: fresh, requests })
                                .is_err()
                        {
                            // The caller stopped listening (or cannot keep up): end the query.
                            self.finish_lookup(id, None);
                            return;
                        }
                    }
                    Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(e) => error = Some(NetError::Kad(e.to_string())),
                }
                if step.last {
                    self.finish_lookup(id, Some(ProviderEvent::Done { requests, error }));
                }
            }
            kad::QueryResult::StartProviding(result) if step.last => {
                if let Some((reply, _)) = self.pending.providing.remove(&id) {
                    let _ = reply.send(match result {
                        Ok(_) => Ok(stats.num_successes()),
                        Err(e) => Err(NetError::Kad(e.to_string())),
                    });
                }
            }
            kad::QueryResult::RepublishProvider(_) => {}
            kad::QueryResult::Bootstrap(result) if step.last => {
                if let Some((reply, _)) = self.pending.bootstrap.remove(&id) {
                    let _ =
                        reply.send(result.map(|_| ()).map_err(|e| NetError::Kad(e.to_string())));
                }
            }
            _ => {}
        }
    }

    /// Removes a provider lookup, stops its query and sends its last event if any.
    fn finish_lookup(&mut self, id: kad::QueryId, last: Option<ProviderEvent>) {
        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
            query.finish();
        }
        if let (Some(lookup), Some(last)) = (self.pending.providers.remove(&id), last) {
            let _ = lookup.events.try_send(last);
        }
    }

    /// Times out whatever passed its deadline, and drops lookups nobody listens to.
    /// Disconnects the peers [`Activity::victims`] names.
    fn trim(&mut self, now: Instant) {
        self.last_trim = now;
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut protected: HashSet<PeerId> =
            self.swarm.behaviour().gossipsub.all_mesh_peers().copied().collect();
        protected.extend(self.pending.requests.values().map(|(p, _)| convert::to_libp2p(p)));
        let bounds = (self.config.peers_low as usize, self.config.peers_high as usize);
        for peer in
            self.activity.victims(&connected, &protected, bounds, self.config.trim_grace, now)
        {
            tracing::debug!(%peer, "trimmed");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Closes relayed connections a direct one has replaced (conns.rs).
    fn retire_relayed(&mut self) {
        let requests = &self.pending.requests;
        let busy = |peer: &PeerId| {
            let peer = convert::from_libp2p(peer);
            requests.values().any(|(p, _)| Some(*p) == peer)
        };
        for (peer, id) in self.conns.relayed_to_retire(busy) {
            tracing::debug!(%peer, connection = ?id, "closing a relayed connection: a direct one replaced it");
            self.swarm.close_connection(id);
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_trim) >= TRIM_EVERY {
            self.trim(now);
        }
        self.drive_relays();
        self.retire_relayed();
        self.publish_addrs();
        let timeout = NetError::Timeout(self.config.query_timeout);
        let p = &mut self.pending;
        expire_map(&mut p.listen, now, &timeout);
        expire_map(&mut p.dial, now, &timeout);
        let mut gave_up = 0;
        p.awaiting.requests.retain(|_, waiting| {
            for r in waiting.extract_if(.., |r| r.until <= now || r.reply.is_closed()) {
                gave_up += 1;
                let _ = r.reply.send(Err(timeout.clone()));
            }
            !waiting.is_empty()
        });
        p.awaiting.len -= gave_up;
        let awaiting = &p.awaiting.requests;
        p.awaiting.dials.retain(|_, peer| awaiting.contains_key(peer));
        p.raced.retain(|_, dials| {
            for raced in dials.extract_if(.., |d| d.until <= now || d.reply.is_closed()) {
                let _ = raced.reply.send(Err(raced.error));
            }
            !dials.is_empty()
        });
        let mut queries = expire_map(&mut p.providing, now, &timeout);
        queries.extend(expire_map(&mut p.bootstrap, now, &timeout));
        for id in queries {
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
        }
        let lookups: Vec<_> = self
            .pending
            .providers
            .iter()
            .filter(|(_, l)| l.deadline <= now || l.events.is_closed())
            .map(|(k, _)| *k)
            .collect();
        for id in lookups {
            let requests = self
                .swarm
                .behaviour_mut()
                .kad
                .query(&id)
                .map(|q| q.stats().num_requests())
                .unwrap_or(0);
            self.finish_lookup(
                id,
                Some(ProviderEvent::Done { requests, error: Some(timeout.clone()) }),
            );
        }
        // Requests carry request-response's own timeout; replies nobody awaits are dropped.
        self.pending.requests.retain(|_, (_, reply)| !reply.is_closed());
    }

    fn info(&mut self) -> NetInfo {
        let swarm = &mut self.swarm;
        let routing_table_peers =
            swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum::<usize>() as u32;
        // Peers known to be subscribed to the registry topic (publishing reaches them).
        let topic = self.topic.hash();
        let gossip_peers = swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .filter(|(_, topics)| topics.contains(&&topic))
            .count() as u32;
        NetInfo {
            peer_id: convert::from_libp2p(swarm.local_peer_id()).expect("local key is ed25519"),
            listen_addrs: swarm.listeners().cloned().collect(),
            external_addrs: swarm.external_addresses().cloned().collect(),
            connected_peers: swarm.connected_peers().count() as u32,
            kad_server: swarm.behaviour().kad.mode() == kad::Mode::Server,
            routing_table_peers,
            gossip_peers,
            gossip: self.counters,
            rpc_dropped: self.rpc_dropped,
            providers_dropped: self.providers_dropped,
            reachability: self.relays.reachability(),
            relay_reservations: self.relays.reserved_addrs(),
            hole_punch: self.hole_punch,
        }
    }

    /// Unblocks first, so a peer in both lists ends blocked. All or nothing: over
    /// [`MAX_BLOCKED`](crate::MAX_BLOCKED) peers, nothing changes.
    fn block(
        &mut self,
        block: Vec<capmesh_types::PeerId>,
        unblock: Vec<capmesh_types::PeerId>,
    ) -> Result<Vec<capmesh_types::PeerId>, NetError> {
        let me = *self.swarm.local_peer_id();
        let block: HashSet<PeerId> =
            block.iter().map(convert::to_libp2p).filter(|p| *p != me).collect();
        let unblock: HashSet<PeerId> = unblock.iter().map(convert::to_libp2p).collect();
        let blocked = self.swarm.behaviour().blocked.blocked_peers();
        let after = blocked.difference(&unblock).chain(block.iter()).collect::<HashSet<_>>().len();
        if after > crate::MAX_BLOCKED {
            return Err(NetError::TooManyBlocked { max: crate::MAX_BLOCKED });
        }
        for peer in unblock {
            if self.swarm.behaviour_mut().blocked.unblock_peer(peer) && self.cut.remove(&peer) {
                // What the block cut comes back; Kademlia and gossip take it from there.
                let opts = DialOpts::peer_id(peer)
                    .addresses(self.book.get(&peer))
                    .extend_addresses_through_behaviour()
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%peer, error = %e, "redial after unblock");
                }
            }
        }
        for peer in block {
            if self.swarm.behaviour_mut().blocked.block_peer(peer) {
                tracing::info!(%peer, "peer blocked");
                if self.swarm.is_connected(&peer) {
                    self.cut.insert(peer);
                }
            }
        }
        let mut now: Vec<capmesh_types::PeerId> = self
            .swarm
            .behaviour()
            .blocked
            .blocked_peers()
            .iter()
            .filter_map(convert::from_libp2p)
            .collect();
        now.sort_by_key(|p| p.to_string());
        Ok(now)
    }

    fn peers(&self) -> Vec<PeerSummary> {
        let connected: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
        let mut peers: Vec<PeerSummary> = self
            .book
            .peers
            .iter()
            .filter_map(|(p, addrs)| {
                Some(PeerSummary {
                    peer: convert::from_libp2p(p)?,
                    addrs: addrs.clone(),
                    connected: connected.contains(p),
                    connection: self.conns.kind(p),
                })
            })
            .collect();
        for p in connected.iter().filter(|p| !self.book.peers.contains_key(p)) {
            if let Some(peer) = convert::from_libp2p(p) {
                peers.push(PeerSummary {
                    peer,
                    addrs: Vec::new(),
                    connected: true,
                    connection: self.conns.kind(p),
                });
            }
        }
        peers.sort_by(|a, b| {
            b.connected.cmp(&a.connected).then(a.peer.to_string().cmp(&b.peer.to_string()))
        });
        peers
    }
}

/// Records a swarm event, and the behaviour event inside it, in libp2p's metrics. Events of
/// behaviours libp2p-metrics has no recorder for (request-response, AutoNAT, relay client,
/// connection limits) count only as swarm events.
fn record(metrics: &Metrics, event: &SwarmEvent<BehaviourEvent>) {
    metrics.record(event);
    match event {
        SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => metrics.record(e),
        SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => metrics.record(e),
        _ => {}
    }
}

/// Removes entries past their deadline (answering `Timeout`) or whose caller is gone; returns
/// their keys.
fn expire_map<K: Copy + Eq + std::hash::Hash, T>(
    map: &mut HashMap<K, (Reply<T>, Instant)>,
    now: Instant,
    timeout: &NetError,
) -> Vec<K> {
    let expired: Vec<K> =
        map.iter().filter(|(_, (r, d))| *d <= now || r.is_closed()).map(|(k, _)| *k).collect();
    for k in &expired {
        if let Some((reply, _)) = map.remove(k) {
            let _ = reply.send(Err(timeout.clone()));
        }
    }
    expired
}

/// The peer named by a trailing `/p2p/<id>`.
fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last()? {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    }
}

/// Addresses of peers, bounded in peers and per peer.
struct AddressBook {
    max_peers: usize,
    peers: HashMap<PeerId, Vec<Multiaddr>>,
}

impl AddressBook {
    fn new(max_peers: usize) -> Self {
        Self { max_peers: max_peers.max(1), peers: HashMap::new() }
    }

    fn add(&mut self, peer: PeerId, mut addr: Multiaddr) {
        if peer_of(&addr) == Some(peer) {
            addr.pop();
        }
        if !self.peers.contains_key(&peer)
            && self.peers.len() >= self.max_peers
            && let Some(victim) = self.peers.keys().next().copied()
        {
            self.peers.remove(&victim);
        }
        let addrs = self.peers.entry(peer).or_default();
        if !addrs.contains(&addr) {
            if addrs.len() >= ADDRS_PER_PEER {
                addrs.remove(0);
            }
            addrs.push(addr);
        }
    }

    fn get(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers.get(peer).cloned().unwrap_or_default()
    }
}

/// A dial error with its cause: libp2p prints a denial as bare "Dial error", the behaviour
/// that denied it (limits, block list) is in the source chain.
fn dial_reason(error: &libp2p::swarm::DialError) -> String {
    match error {
        libp2p::swarm::DialError::Denied { cause } => match std::error::Error::source(cause) {
            Some(inner) => format!("denied: {inner}"),
            None => "denied".into(),
        },
        other => other.to_string(),
    }
}
