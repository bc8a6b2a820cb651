//! Assembly and launch of a running node: replica, network service, registry protocol, local
//! API, metrics endpoint and the periodic sweep, under one cancellation tree. `capmesh run` and
//! the testkit both start nodes through [`Node::launch`].

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use capmesh_market::{Market, MarketConfig, ServeSpec};
use capmesh_mesh::{Mesh, MeshConfig};
use capmesh_net::{Multiaddr, NetworkHandle, NetworkService};
use capmesh_store::Store;
use capmesh_types::PeerId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Config, DataDir, api::NodeApi, registry};

/// Settings that tests and testnets need and operators do not set in config.toml.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// Gossipsub heartbeat (default 1 s).
    pub gossip_heartbeat: Option<Duration>,
    /// Find timeout (default 15 s).
    pub find_timeout: Option<Duration>,
    /// Outbound rpc timeout (default 30 s).
    pub rpc_timeout: Option<Duration>,
    /// Offer lifetime (default `market.offer_ttl_secs`).
    pub offer_ttl: Option<Duration>,
    /// How long an agent runtime's adverts outlive its socket (default 10 s).
    pub runtime_grace: Option<Duration>,
}

/// A running node. Dropping it without [`Node::shutdown`] cancels its tasks but does not wait
/// for them.
#[derive(Debug)]
pub struct Node {
    pub mesh: Mesh,
    pub market: Market,
    /// The call service the mesh refers to weakly (see `Mesh::set_calls`).
    _calls: Arc<dyn capmesh_mesh::Calls>,
    pub net: NetworkHandle,
    pub store: Store,
    pub api_addr: SocketAddr,
    pub api_token: String,
    /// Where `GET /metrics` is served (also in `<data dir>/metrics.addr`); `None` when
    /// `metrics.listen` is "".
    pub metrics_addr: Option<SocketAddr>,
    /// One per `[[import]]` table: MCP servers whose tools this node serves.
    pub importers: Vec<capmesh_mcp::Importer>,
    /// Agent sessions, their attached runtimes and the calls made through the API.
    pub agents: capmesh_agents::Agents,
    dir: DataDir,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    /// Stops everything if the node is dropped without [`Node::shutdown`].
    stop: Stop,
}

/// Cancels a node's token and removes the files that say it runs (`api.addr`, `api.token`,
/// `metrics.addr`) when dropped: by a `launch` that fails half-way, or with a [`Node`] dropped
/// without [`Node::shutdown`]. Every long-lived task of the node's services watches that token,
/// so they end, release the replica, and no stale file points at a dead API.
#[derive(Debug)]
struct Stop {
    cancel: CancellationToken,
    root: PathBuf,
}

impl Stop {
    /// Removes the files. Only this process can have written them: the replica's lock is held
    /// since before the token existed. Removing a file already gone is no error.
    fn remove_files(&self) {
        if let Err(e) = capmesh_api::remove_files(&self.root) {
            tracing::warn!(error = %e, "cannot remove the API files");
        }
        if let Err(e) = crate::metrics::remove_addr(&self.root) {
            tracing::warn!(error = %e, "cannot remove {}", crate::metrics::ADDR_FILE);
        }
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.cancel.cancel();
        // After a clean shutdown they are gone already.
        self.remove_files();
    }
}

impl Node {
    /// Initializes `dir` on first use, then starts everything `config` asks for.
    pub async fn launch(dir: DataDir, config: Config, tuning: Tuning) -> anyhow::Result<Node> {
        config.validate()?;
        if let Some(created) = dir.ensure_init()? {
            tracing::info!(peer_id = %created.peer_id, dir = %dir.root().display(), "initialized data directory");
        }
        let key = dir.load_key()?;
        tracing::info!(peer_id = %key.peer_id(), dir = %dir.root().display(), version = env!("CARGO_PKG_VERSION"), "starting");
        let store = {
            let (dir, config) = (dir.clone(), config.clone());
            let root = dir.root().to_path_buf();
            match tokio::task::spawn_blocking(move || registry::open(&dir, &config)).await? {
                Err(registry::ReplicaError::InUse { .. }) => anyhow::bail!(
                    "another capmesh node is running on the data directory {}: stop it, or \
                     start this one with another --data-dir",
                    root.display()
                ),
                opened => opened?,
            }
        };
        let metrics_listen = config.metrics.addr()?;
        // libp2p's metrics are registered by the network service as it builds the swarm.
        let registry = metrics_listen.map(|_| crate::metrics::new_registry());
        let mut net_config = net_config(&config, &tuning)?;
        if let Some(registry) = &registry {
            net_config = net_config.with_metrics(registry.clone());
        }
        // Peers remembered from earlier runs are dialed too (most recent first, bounded).
        net_config.bootstrap.extend(remembered_peers(&store, &net_config.bootstrap));
        let (service, net) = NetworkService::new(&key, net_config)?;
        let cancel = CancellationToken::new();
        // From here on, an early return cancels what was started and removes the API files.
        let stop = Stop { cancel: cancel.clone(), root: dir.root().to_path_buf() };
        let mut mesh_config = MeshConfig::default()
            .with_advert_ttl(
                Duration::from_secs(config.registry.advert_ttl_secs),
                Duration::from_secs(config.registry.republish_secs),
            )
            .with_sync(config.registry.sync)
            .with_sync_every(Duration::from_secs(config.registry.sync_every_secs))
            .with_rules(config.envelope.rules());
        if let Some(t) = tuning.find_timeout {
            mesh_config = mesh_config.with_find_timeout(t);
        }
        let mesh =
            Mesh::new(key.clone(), store.clone(), net.clone(), mesh_config, cancel.child_token());
        let policy_path = dir.root().join(&config.market.policy_file);
        let policy = capmesh_policy::PolicyHandle::open(&policy_path)
            .with_context(|| format!("invalid call policy {}", policy_path.display()))?;
        let api_key = key.clone();
        let market = Market::new(
            key,
            mesh.clone(),
            policy.clone(),
            market_config(&config, &tuning),
            cancel.child_token(),
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(service.run(mesh.clone(), cancel.child_token()));
        mesh.start()?;
        let calls = {
            let market = market.clone();
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                let _entered = runtime.enter();
                market.start()
            })
            .await??
        };
        let poll = Duration::from_millis(config.market.policy_poll_ms);
        let watcher = policy.watch(poll, cancel.child_token());
        tasks.spawn(async move {
            let _ = watcher.await;
        });
        wait_listening(&net, config.network.listen.len()).await?;

        for relay in &config.network.relays {
            let relay: Multiaddr = relay.parse()?;
            net.dial(relay.clone()).await.with_context(|| format!("cannot reach relay {relay}"))?;
            let circuit = relay.with(capmesh_net::Protocol::P2pCircuit);
            net.listen(circuit.clone())
                .await
                .with_context(|| format!("no reservation on relay {circuit}"))?;
        }
        // Peers to join through: configured or remembered (the network service books both), or
        // already connected (a relay, a peer that dialed in).
        let peers = tokio::time::timeout(Duration::from_secs(10), net.peers())
            .await
            .context("the network task did not answer within 10 s")??;
        if !config.network.bootstrap.is_empty() || !peers.is_empty() {
            let net = net.clone();
            tasks.spawn(async move {
                let outcome = net.bootstrap().await;
                let connected =
                    net.peers().await.map_or(0, |p| p.iter().filter(|p| p.connected).count());
                match outcome {
                    Ok(()) => tracing::info!(connected, "bootstrap done"),
                    // Kademlia's bootstrap fails when no peer answers; the node keeps redialing.
                    Err(e) => tracing::warn!(connected, error = %e, "bootstrap found no peers yet"),
                }
            });
        } else {
            tracing::warn!(
                "no bootstrap peers configured and none remembered: this node is alone until a \
                 peer dials it; set network.bootstrap in config.toml or pass --bootstrap"
            );
        }
        tasks.spawn(sweep(store.clone(), config.registry.sweep_secs, cancel.child_token()));

        let api_listen: SocketAddr = config.api.listen.parse()?;
        let listener = capmesh_api::bind(api_listen)
            .await
            .with_context(|| format!("cannot serve the API on {api_listen}"))?;
        let api_addr = listener.local_addr()?;
        let token = capmesh_api::Token::generate()
            .map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
        let mut agents_config = capmesh_agents::AgentsConfig::default()
            .with_served_file(dir.root().join(AGENT_CAPABILITIES_FILE));
        if let Some(grace) = tuning.runtime_grace {
            agents_config = agents_config.with_runtime_grace(grace);
        }
        let agents =
            capmesh_agents::Agents::new(market.clone(), agents_config, cancel.child_token());
        let backend = Arc::new(NodeApi::new(
            api_key,
            mesh.clone(),
            store.clone(),
            market.clone(),
            agents.clone(),
        ));
        {
            let (token, cancel) = (token.clone(), cancel.child_token());
            tasks.spawn(async move {
                if let Err(e) = capmesh_api::serve(listener, backend, token, cancel).await {
                    tracing::error!(error = %e, "the API server stopped");
                }
            });
        }
        capmesh_api::write_files(dir.root(), api_addr, &token)
            .with_context(|| format!("cannot write the API files into {}", dir.root().display()))?;
        let metrics_addr = match (metrics_listen, registry) {
            (Some(listen), Some(registry)) => {
                let listener = crate::metrics::bind(listen)
                    .await
                    .with_context(|| format!("cannot serve metrics on {listen}"))?;
                let addr = listener.local_addr()?;
                let exporter = Arc::new(crate::metrics::Exporter::new(
                    registry,
                    market.clone(),
                    mesh.clone(),
                    store.clone(),
                    net.clone(),
                ));
                let cancel = cancel.child_token();
                tasks.spawn(async move {
                    if let Err(e) = crate::metrics::serve(listener, exporter, cancel).await {
                        tracing::error!(error = %e, "the metrics server stopped");
                    }
                });
                crate::metrics::write_addr(dir.root(), addr).with_context(|| {
                    format!(
                        "cannot write {} into {}",
                        crate::metrics::ADDR_FILE,
                        dir.root().display()
                    )
                })?;
                Some(addr)
            }
            _ => None,
        };

        for file in &config.publish.contracts {
            let path = dir.root().join(file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let contract =
                crate::cap::parse_contract(&bytes).with_context(|| path.display().to_string())?;
            let price = capmesh_wire::Price {
                amount: config.publish.price_amount,
                unit: config.publish.price_unit.clone(),
            };
            let published = mesh
                .publish(contract, Some(price), None, None)
                .await
                .with_context(|| format!("cannot publish {}", path.display()))?;
            tracing::info!(capability = %published.capability, file = %path.display(), "published");
        }
        for (i, entry) in config.serve.iter().enumerate() {
            let spec = serve_spec(&dir, entry).with_context(|| format!("serve[{i}]"))?;
            let contract = spec.executor.contract();
            let (name, version) = (contract.name.clone(), contract.version.clone());
            let published =
                market.serve(spec).await.with_context(|| format!("cannot serve serve[{i}]"))?;
            tracing::info!(capability = %published.capability, %name, %version, "serving");
        }
        // Sessions end with the node: adverts an earlier run served for them and could not
        // retire (it was killed) are retired now.
        agents.retire_leftovers().await;
        // Imports connect and publish in the background: a server that is down must not keep
        // the node from starting (its tools appear when it comes up).
        let importers =
            crate::mcp::start_imports(&dir, &config.import, &market, &mesh, &cancel, &mut tasks)
                .await?;
        match metrics_addr {
            Some(metrics) => {
                tracing::info!(peer_id = %mesh.peer_id(), api = %format!("http://{api_addr}"), metrics = %format!("http://{metrics}/metrics"), "node running")
            }
            None => {
                tracing::info!(peer_id = %mesh.peer_id(), api = %format!("http://{api_addr}"), "node running")
            }
        }
        Ok(Node {
            mesh,
            market,
            _calls: calls,
            net,
            store,
            api_addr,
            api_token: token.as_str().to_string(),
            metrics_addr,
            importers,
            agents,
            dir,
            cancel,
            tasks,
            stop,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.mesh.peer_id()
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.dir
    }

    /// Stops every task, waits for them (bounded), removes the API files and closes the
    /// replica (everything acknowledged is already flushed).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        // First, while the mesh still runs: sessions end and their adverts are retired.
        self.agents.shutdown(Duration::from_secs(10)).await;
        self.mesh.remember_peers().await;
        self.cancel.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            tracing::warn!("tasks did not stop within 10 s; aborting them");
            self.tasks.shutdown().await;
        }
        if tokio::time::timeout(Duration::from_secs(10), self.market.stopped()).await.is_err() {
            tracing::warn!("the ledger did not finish its last batch within 10 s");
        }
        self.stop.remove_files();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await?;
        Ok(())
    }
}

/// Capabilities served for agent sessions, one id a line (see `Agents::retire_leftovers`).
const AGENT_CAPABILITIES_FILE: &str = "agent-capabilities";

/// Most peers from the peer book dialed at start.
const REMEMBERED_PEERS: usize = 32;

/// `<addr>/p2p/<id>` of the most recently seen peers in the peer book, except those already in
/// `configured`.
fn remembered_peers(store: &Store, configured: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut peers = match store.peers() {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer book");
            return Vec::new();
        }
    };
    peers.sort_by_key(|p| std::cmp::Reverse(p.last_seen));
    let mut out = Vec::new();
    for entry in peers.into_iter().take(REMEMBERED_PEERS) {
        let id = capmesh_net::convert::to_libp2p(&entry.peer);
        let known =
            configured.iter().any(|a| a.iter().any(|p| p == capmesh_net::Protocol::P2p(id)));
        if known {
            continue;
        }
        if let Some(addr) = entry.addrs.iter().find_map(|a| a.parse::<Multiaddr>().ok()) {
            out.push(addr.with(capmesh_net::Protocol::P2p(id)));
        }
    }
    out
}

/// Waits until every listen address is bound (so `status` and peers see real ports at once).
async fn wait_listening(net: &NetworkHandle, want: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let have = net.info().await?.listen_addrs.len();
        if have >= want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "listening on {have} of {want} addresses after 10 s (is a port taken? see network.listen)"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn net_config(config: &Config, tuning: &Tuning) -> anyhow::Result<capmesh_net::Config> {
    let parse = |list: &[String]| -> anyhow::Result<Vec<Multiaddr>> {
        list.iter()
            .map(|a| a.parse().with_context(|| format!("{a:?} is not a multiaddr")))
            .collect()
    };
    let n = &config.network;
    let rules = config.envelope.rules();
    let mut c = capmesh_net::Config::default()
        .with_listen(parse(&n.listen)?)
        .with_bootstrap(parse(&n.bootstrap)?)
        .with_external_addrs(parse(&n.external_addrs)?)
        .with_announce_listen_addrs(n.announce_listen_addrs)
        .with_kad_mode(n.kad_mode.into())
        .with_relay_server(n.relay_server)
        .with_reachability(n.reachability.into())
        .with_relay_reservations(n.relay_reservations)
        .with_autonat_allow_private(n.autonat_allow_private)
        .with_gossip(n.gossip)
        .with_gossip_rate(n.gossip_rate_per_sec, n.gossip_burst)
        .with_max_connections(n.max_connections, n.max_connections_per_peer)
        .with_peer_trim(n.peers_low, n.peers_high, Duration::from_secs(60))
        .with_max_frame(rules.limits.max_size)
        .with_message_id(Arc::new(capmesh_mesh::message_id));
    if let Some(h) = tuning.gossip_heartbeat {
        c = c.with_gossip_heartbeat(h);
    }
    if let Some(t) = tuning.rpc_timeout {
        c = c.with_rpc_timeout(t);
    }
    Ok(c)
}

fn market_config(config: &Config, tuning: &Tuning) -> MarketConfig {
    let m = &config.market;
    let ttl = tuning.offer_ttl.unwrap_or(Duration::from_secs(m.offer_ttl_secs));
    MarketConfig::default()
        .with_inline_window(Duration::from_millis(m.inline_window_ms))
        .with_offer_ttl(ttl, m.offer_calls)
        .with_intent_fanout(m.intent_fanout)
        .with_max_providers(m.max_providers)
        .with_default_deadline(Duration::from_millis(m.call_deadline_ms))
}

/// The runtime and terms of one `[[serve]]` entry.
pub fn serve_spec(dir: &DataDir, entry: &crate::config::ServeEntry) -> anyhow::Result<ServeSpec> {
    let contract = match (&entry.contract, &entry.runtime) {
        (Some(file), _) => {
            let path = dir.root().join(file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            crate::cap::parse_contract(&bytes).with_context(|| path.display().to_string())?
        }
        (None, capmesh_exec::Runtime::Builtin { name }) => name.contract(),
        (None, _) => anyhow::bail!("a command or http runtime needs a contract file"),
    };
    let executor = capmesh_exec::Executor::new(contract, entry.runtime.clone())?;
    Ok(ServeSpec {
        executor: Arc::new(executor),
        price: capmesh_wire::Price { amount: entry.price_amount, unit: entry.price_unit.clone() },
        limits: capmesh_wire::CallLimits {
            timeout_ms: entry.timeout_ms,
            max_input_bytes: entry.max_input_bytes,
            concurrency: entry.concurrency,
        },
        latency_ms: entry.latency_ms,
        ttl: None,
        session: None,
    })
}

async fn sweep(store: Store, every_secs: u64, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(every_secs.max(1)));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.sweep(crate::now_ms())).await {
                    Ok(Ok(n)) if n > 0 => tracing::debug!(swept = n, "expired adverts swept"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "sweep failed"),
                    _ => {}
                }
            }
        }
    }
}
