//! In-process multi-node harness: real capmesh nodes (libp2p on 127.0.0.1, port 0, seeded
//! keys, temporary data directories) started through the same [`capmesh::Node::launch`] as
//! `capmesh run`, and [`wait_for`], which fails with what it last saw.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let net = capmesh_testkit::Testnet::line(3, |_, opts| opts).await?;
//! let cap = net.node(0).publish_contract("echo").await?;
//! capmesh_testkit::wait_for("advert at node 2", std::time::Duration::from_secs(20), || async {
//!     net.node(2).has_capability(&cap).then_some(()).ok_or("not yet")
//! })
//! .await;
//! # Ok(()) }
//! ```

pub mod overload;

use std::{future::Future, path::PathBuf, time::Duration};

use anyhow::Context;
use capmesh::{Config, DataDir, Node, config::ServeEntry, launch::Tuning};
use capmesh_net::Multiaddr;
use capmesh_types::{Cid, NodeKey, PeerId};

/// How one node of a testnet is configured.
#[derive(Debug, Clone)]
pub struct NodeOpts {
    pub config: Config,
    /// Indexes of earlier nodes to bootstrap from.
    pub bootstrap: Vec<usize>,
    /// Indexes of earlier nodes to use as relays (then the node listens only on circuits).
    pub relays: Vec<usize>,
    pub tuning: Tuning,
}

impl Default for NodeOpts {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeOpts {
    /// Loopback TCP on port 0, listen addresses announced, a 100 ms gossip heartbeat.
    pub fn new() -> Self {
        let mut config = Config::default();
        config.network.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        config.network.announce_listen_addrs = true;
        // Short periods so tests see refreshes and syncs; correctness never depends on them.
        config.registry.sync_every_secs = 3600;
        Self {
            config,
            bootstrap: Vec::new(),
            relays: Vec::new(),
            tuning: Tuning {
                gossip_heartbeat: Some(Duration::from_millis(100)),
                find_timeout: Some(Duration::from_secs(20)),
                rpc_timeout: Some(Duration::from_secs(10)),
                offer_ttl: None,
                runtime_grace: None,
            },
        }
    }

    /// Serves a builtin capability (its own contract) at `price` "credit" per call, quoting
    /// `latency_ms` in offers.
    pub fn serve_builtin(
        self,
        builtin: capmesh_exec::Builtin,
        price: u64,
        latency_ms: u64,
    ) -> Self {
        self.serve(ServeEntry {
            contract: None,
            runtime: capmesh_exec::Runtime::Builtin { name: builtin },
            price_amount: price,
            price_unit: "credit".into(),
            latency_ms: Some(latency_ms),
            timeout_ms: 30_000,
            max_input_bytes: 1 << 20,
            concurrency: 8,
        })
    }

    pub fn serve(mut self, entry: ServeEntry) -> Self {
        self.config.serve.push(entry);
        self
    }

    /// Calls ending within `window` are answered inline.
    pub fn inline_window(mut self, window: Duration) -> Self {
        self.config.market.inline_window_ms = window.as_millis() as u64;
        self
    }

    /// How long an agent runtime's adverts outlive its socket.
    pub fn runtime_grace(mut self, grace: Duration) -> Self {
        self.tuning.runtime_grace = Some(grace);
        self
    }

    pub fn rpc_timeout(mut self, t: Duration) -> Self {
        self.tuning.rpc_timeout = Some(t);
        self
    }

    pub fn gossip(mut self, on: bool) -> Self {
        self.config.network.gossip = on;
        self
    }
    pub fn sync(mut self, on: bool) -> Self {
        self.config.registry.sync = on;
        self
    }
    pub fn relay_server(mut self) -> Self {
        self.config.network.relay_server = true;
        self
    }
    pub fn bootstrap(mut self, from: &[usize]) -> Self {
        self.bootstrap = from.to_vec();
        self
    }
    /// `network.reachability`: a private node reserves relay slots by itself.
    pub fn reachability(mut self, r: capmesh::config::Reachability) -> Self {
        self.config.network.reachability = r;
        self
    }
    /// `network.relay_reservations`.
    pub fn relay_reservations(mut self, n: usize) -> Self {
        self.config.network.relay_reservations = n;
        self
    }
    /// Listens on nothing: others reach the node only through relay circuits, as behind a NAT.
    pub fn no_listen(mut self) -> Self {
        self.config.network.listen.clear();
        self
    }
    /// `network.announce_listen_addrs` (on by default in testnets).
    pub fn announce(mut self, on: bool) -> Self {
        self.config.network.announce_listen_addrs = on;
        self
    }
    /// `network.kad_mode`.
    pub fn kad_mode(mut self, mode: capmesh::config::KadMode) -> Self {
        self.config.network.kad_mode = mode;
        self
    }
    /// `network.gossip_rate_per_sec` and `network.gossip_burst`: registry gossip taken from
    /// each peer.
    pub fn gossip_rate(mut self, per_sec: u32, burst: u32) -> Self {
        self.config.network.gossip_rate_per_sec = per_sec;
        self.config.network.gossip_burst = burst;
        self
    }
    pub fn relayed_through(mut self, relays: &[usize]) -> Self {
        self.relays = relays.to_vec();
        self.config.network.listen.clear();
        self
    }
}

/// One running node and its directory.
#[derive(Debug)]
pub struct TestNode {
    pub node: Node,
    pub index: usize,
    dir: tempfile::TempDir,
    opts: NodeOpts,
}

impl TestNode {
    pub fn peer_id(&self) -> PeerId {
        self.node.peer_id()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The node's first listen address with `/p2p/<id>`.
    pub async fn addr(&self) -> anyhow::Result<Multiaddr> {
        let info = self.node.net.info().await?;
        let addr = info
            .external_addrs
            .first()
            .or(info.listen_addrs.first())
            .cloned()
            .context("the node has no address")?;
        Ok(addr.with(capmesh_net::Protocol::P2p(capmesh_net::convert::to_libp2p(&self.peer_id()))))
    }

    /// Publishes a fresh contract named `name` and returns its capability id.
    pub async fn publish_contract(&self, name: &str) -> anyhow::Result<Cid> {
        let contract = capmesh_contract::scaffold(name)?;
        Ok(self.node.mesh.publish(contract, None, None, None).await?.capability)
    }

    /// Whether the replica holds a live advert for `cap`.
    pub fn has_capability(&self, cap: &Cid) -> bool {
        self.adverts(cap) > 0
    }

    /// Live adverts for `cap` in the replica.
    pub fn adverts(&self, cap: &Cid) -> usize {
        let q = capmesh_store::Query { capability: Some(*cap), ..Default::default() };
        self.node.store.query(&q, capmesh::now_ms()).map(|p| p.hits.len()).unwrap_or(0)
    }
}

/// N nodes.
#[derive(Debug, Default)]
pub struct Testnet {
    nodes: Vec<Option<TestNode>>,
}

impl Testnet {
    /// Nodes `0..n`, node `i` bootstrapping from node `i - 1` (a line).
    pub async fn line(
        n: usize,
        opts: impl Fn(usize, NodeOpts) -> NodeOpts,
    ) -> anyhow::Result<Self> {
        let mut net = Testnet::default();
        for i in 0..n {
            let base = if i == 0 { NodeOpts::new() } else { NodeOpts::new().bootstrap(&[i - 1]) };
            net.add(opts(i, base)).await?;
        }
        Ok(net)
    }

    /// Starts one more node (index = number of nodes so far) with seed `[index + 1; 32]`.
    pub async fn add(&mut self, opts: NodeOpts) -> anyhow::Result<usize> {
        let index = self.nodes.len();
        let dir = tempfile::tempdir()?;
        let node = self.launch(index, dir.path().to_path_buf(), &opts).await?;
        self.nodes.push(Some(TestNode { node, index, dir, opts }));
        Ok(index)
    }

    async fn launch(&self, index: usize, path: PathBuf, opts: &NodeOpts) -> anyhow::Result<Node> {
        let dir = DataDir::new(path.clone());
        if !path.join("node.key").exists() {
            let seed = [u8::try_from(index + 1).context("at most 255 nodes")?; 32];
            NodeKey::from_seed(seed).save(&path.join("node.key"))?;
            std::fs::write(path.join("config.toml"), Config::DEFAULT_TOML)?;
        }
        let mut config = opts.config.clone();
        for &b in &opts.bootstrap {
            config.network.bootstrap.push(self.node(b).addr().await?.to_string());
        }
        for &r in &opts.relays {
            config.network.relays.push(self.node(r).addr().await?.to_string());
            config.network.announce_listen_addrs = true;
        }
        Node::launch(dir, config, opts.tuning.clone()).await
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`; panics if it is stopped.
    pub fn node(&self, i: usize) -> &TestNode {
        self.nodes[i].as_ref().unwrap_or_else(|| panic!("node {i} is stopped"))
    }

    /// Running nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter().flatten()
    }

    /// Stops node `i` cleanly, keeping its data directory for [`Testnet::restart`].
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<(tempfile::TempDir, NodeOpts)> {
        let node = self.nodes[i].take().context("already stopped")?;
        node.node.shutdown().await?;
        Ok((node.dir, node.opts))
    }

    /// Starts node `i` again on its old directory (same key, same replica).
    pub async fn restart(
        &mut self,
        i: usize,
        dir: tempfile::TempDir,
        opts: NodeOpts,
    ) -> anyhow::Result<()> {
        // sled releases its lock asynchronously after close; retry briefly.
        let mut last = None;
        for _ in 0..50 {
            match self.launch(i, dir.path().to_path_buf(), &opts).await {
                Ok(node) => {
                    self.nodes[i] = Some(TestNode { node, index: i, dir, opts });
                    return Ok(());
                }
                Err(e) if format!("{e:#}").contains("in use") => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("restart failed")))
    }

    /// Stops every node.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for node in self.nodes.drain(..).flatten() {
            node.node.shutdown().await?;
        }
        Ok(())
    }
}

/// Polls `check` until it returns `Ok`, at most `timeout`; panics with `what` and the last
/// `Err` it saw.
pub async fn wait_for<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => {
                if tokio::time::Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last saw: {seen:?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
