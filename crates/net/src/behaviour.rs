//! The composed behaviour. Gatekeepers first: connection limits decide before anything else
//! spends work on a connection (Lighthouse's order).

use std::time::Duration;

use libp2p::{
    StreamProtocol, allow_block_list, autonat, connection_limits, gossipsub, identify, identity,
    kad, ping, relay, request_response, swarm::NetworkBehaviour, swarm::behaviour::toggle::Toggle,
};

use crate::{Config, codec, punch};

/// The Kademlia protocol name: capmesh's own DHT, separate from IPFS's.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/capmesh/kad/1.0.0");
/// The registry gossip topic.
pub const REGISTRY_TOPIC: &str = "capmesh/registry/1";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/capmesh/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    /// Peers the operator blocked (a partition in a testnet): refused before anything else.
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) rpc: request_response::Behaviour<codec::Codec>,
    pub(crate) autonat: autonat::Behaviour,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    /// DCUtR, told the raw addresses peers observed ([`crate::punch`]).
    pub(crate) dcutr: punch::Behaviour,
}

impl Behaviour {
    /// With `metrics`, gossipsub records its own (mesh, scores, queues) under
    /// `libp2p_gossipsub_`.
    pub(crate) fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        config: &Config,
        metrics: Option<&mut libp2p::metrics::Registry>,
    ) -> Result<Self, String> {
        let peer_id = key.public().to_peer_id();
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.max_connections_per_peer))
                .with_max_pending_incoming(Some(config.max_pending_incoming))
                .with_max_pending_outgoing(Some(config.max_pending_outgoing)),
        );
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(format!("capmesh/{}", env!("CARGO_PKG_VERSION")))
                // Addresses learned from identify and Kademlia are offered when dialing by PeerId.
                .with_cache_size(config.address_book_peers)
                .with_push_listen_addr_updates(true),
        );

        let kad = kademlia(peer_id, config);

        let message_id = config.message_id.clone();
        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .message_id_fn(move |m: &gossipsub::Message| {
                gossipsub::MessageId::new(&message_id(&m.data))
            })
            .max_transmit_size(config.max_frame + 64 * 1024)
            .heartbeat_interval(config.gossip_heartbeat)
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| format!("gossipsub: {e}"))?;
        if let Some(registry) = metrics {
            let registry =
                registry.sub_registry_with_prefix("libp2p").sub_registry_with_prefix("gossipsub");
            gossipsub = gossipsub.with_metrics(registry, gossipsub::MetricsConfig::default());
        }

        let rpc = request_response::Behaviour::with_codec(
            codec::Codec::new(config.max_frame),
            [(codec::PROTOCOL_NAME, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.rpc_timeout)
                .with_max_concurrent_streams(config.max_inbound_rpc),
        );
        let autonat = autonat::Behaviour::new(
            peer_id,
            autonat::Config {
                // Servers refuse, and clients skip, non-global addresses by default: a
                // loopback testnet or a lab on private ranges needs them.
                only_global_ips: !(config.announces_addresses() || config.autonat_allow_private),
                ..Default::default()
            },
        );
        let relay_server =
            config.relay_server.then(|| relay::Behaviour::new(peer_id, relay_config())).into();
        Ok(Self {
            blocked: allow_block_list::Behaviour::default(),
            limits,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            kad,
            gossipsub,
            rpc,
            autonat,
            relay_client,
            relay_server,
            dcutr: punch::Behaviour::new(peer_id),
        })
    }
}

/// The node's Kademlia behaviour, built from `config` (protocol, timeouts, record limits, mode).
/// Public so the in-process simulator (capmesh-testnet) measures the same DHT the node runs.
pub fn kademlia(
    peer_id: libp2p::PeerId,
    config: &Config,
) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kad_config = kad::Config::new(KAD_PROTOCOL);
    kad_config
        .set_query_timeout(config.query_timeout)
        // Provider records carry many addresses (relay circuits are long); 16 KiB, libp2p's
        // default, fails GET_PROVIDERS answers for popular capabilities.
        .set_max_packet_size(config.kad_max_packet)
        .set_provider_record_ttl(Some(config.provider_ttl))
        // The node re-announces with each advert refresh; no second timer.
        .set_provider_publication_interval(None)
        // Inbound records reach the service first: provider records are stored there,
        // values never (v1 stores no values in the DHT).
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(300)));
    let store = kad::store::MemoryStore::with_config(
        peer_id,
        kad::store::MemoryStoreConfig {
            max_records: 0,
            max_value_bytes: 0,
            max_providers_per_key: config.max_providers_per_key,
            // Counts every key in the provider map, ours and those stored for others
            // (libp2p's default, 1 024, would make our own `start_providing` fail once
            // others' records fill it). Sized for both.
            max_provided_keys: config.max_provided_keys,
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
    // Explicit mode (libp2p's default is client until an external address is confirmed,
    // and a client neither answers queries nor is put in others' routing tables).
    kad.set_mode(match config.kad_mode {
        crate::KadMode::Server => Some(kad::Mode::Server),
        crate::KadMode::Client => Some(kad::Mode::Client),
        crate::KadMode::Auto if config.announces_addresses() => Some(kad::Mode::Server),
        crate::KadMode::Auto => None,
    });
    kad
}

/// The relay server's limits. libp2p's defaults suit a relay that only bootstraps hole
/// punches (16 circuits, 2 min and 128 KiB each, one new circuit per source IP a minute); a
/// capmesh relay carries whole calls for private nodes that cannot punch (symmetric NATs), and
/// the hosts behind one NAT share an IP. Still bounded: circuits, their life and bytes, and the
/// rate each source peer and IP may open them at.
fn relay_config() -> relay::Config {
    let nz = |n: u32| std::num::NonZeroU32::new(n).expect("a positive constant");
    relay::Config {
        max_reservations: 128,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(60 * 60),
        reservation_rate_limiters: Vec::new(),
        max_circuits: 256,
        max_circuits_per_peer: 16,
        max_circuit_duration: Duration::from_secs(10 * 60),
        max_circuit_bytes: 16 << 20,
        circuit_src_rate_limiters: Vec::new(),
    }
    // As libp2p's defaults: a reservation is renewed about every 30 min.
    .reservation_rate_per_peer(nz(30), Duration::from_secs(2 * 60))
    .reservation_rate_per_ip(nz(60), Duration::from_secs(60))
    // Bursts of calls from one peer, and from the hosts behind one NAT.
    .circuit_src_per_peer(nz(120), Duration::from_secs(1))
    .circuit_src_per_ip(nz(600), Duration::from_millis(200))
}
