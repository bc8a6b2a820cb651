//! One simulated network: its nodes, the baseline pair, and the lookups run on it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::future::{join_all, try_join_all};
use libp2p::{Multiaddr, PeerId, kad};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{
    Join, Rng,
    node::{self, Asked, Handle, Lookup, NodeStats, Observation, Probe, Shared},
    random_key, table,
};
use crate::procs;

/// Nodes bootstrapped at once (`Join::Bootstrap`).
const BATCH: usize = 50;
/// Earlier nodes each joining node is told of: at least this many…
const BOOTSTRAP_MIN: usize = 3;
/// …and at most this many.
const BOOTSTRAP_MAX: usize = 8;
/// Longest wait for every routing table to hold min(k, N − 1) peers.
const POPULATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a lookup's provider records to be stored before it is issued anyway.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// Observations queued to the simulator (a lookup makes a few hundred at most).
const OBSERVATION_QUEUE: usize = 65_536;
/// After the last lookup: the quiet time that ends the wait for its requests still in flight.
const LAST_QUIET: Duration = Duration::from_millis(200);

/// One lookup as measured, before its path is rebuilt.
#[derive(Debug)]
pub(crate) struct Measured {
    pub(crate) lookup: Lookup,
    /// The baseline pair's query over its open connection, and after closing it.
    pub(crate) warm: Lookup,
    pub(crate) cold: Lookup,
    pub(crate) stored: usize,
    pub(crate) expected: usize,
    pub(crate) failed: usize,
}

/// What the nodes reported besides the querier's replies.
#[derive(Debug)]
pub(crate) struct Observed {
    pub(crate) asked: HashMap<u64, Vec<Asked>>,
    pub(crate) stray: u64,
    pub(crate) dropped: u64,
}

/// The running network of one simulation.
#[derive(Debug)]
pub(crate) struct Network {
    nodes: Vec<Handle>,
    /// The baseline pair, wired only to each other.
    pair: [Handle; 2],
    probe: watch::Sender<Option<Probe>>,
    observations: mpsc::Receiver<Observation>,
    dropped: Arc<AtomicU64>,
    tasks: JoinSet<()>,
    asked: HashMap<u64, Vec<Asked>>,
    stray: u64,
}

impl Network {
    /// Starts `n` nodes (keys from `seed`, as `up`'s) and fills their routing tables as `join`
    /// says.
    pub(crate) async fn build(
        n: usize,
        seed: u64,
        join: Join,
        config: &capmesh_net::Config,
        rng: &mut Rng,
    ) -> anyhow::Result<Self> {
        let seeds: Vec<[u8; 32]> = (0..n + 2).map(|i| *procs::node_key(seed, i).seed()).collect();
        let ids = seeds.iter().map(|s| Ok((node::peer_id(*s)?, super::memory_addr())));
        let ids: Vec<(PeerId, Multiaddr)> = ids.collect::<anyhow::Result<_>>()?;
        let (probe, probe_rx) = watch::channel(None);
        let (tx, observations) = mpsc::channel(OBSERVATION_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let shared = Shared {
            book: Arc::new(ids[..n].iter().cloned().collect()),
            probe: probe_rx.clone(),
            observations: Some(tx),
            dropped: dropped.clone(),
        };
        let mut tasks = JoinSet::new();
        let pair = pair(&seeds[n..], &ids[n..], config, probe_rx, &mut tasks).await?;
        let nodes = (0..n)
            .map(|i| node::spawn(seeds[i], ids[i].1.clone(), config, shared.clone(), &mut tasks))
            .collect::<anyhow::Result<Vec<_>>>()?;
        match join {
            Join::Table => join_table(&nodes, rng).await?,
            Join::Bootstrap => join_bootstrap(&nodes, rng).await?,
        }
        let asked = HashMap::new();
        Ok(Self { nodes, pair, probe, observations, dropped, tasks, asked, stray: 0 })
    }

    /// Waits until every routing table holds min(k, N − 1) peers; every node's figures then.
    pub(crate) async fn populated(&self) -> anyhow::Result<Vec<NodeStats>> {
        let want = kad::K_VALUE.get().min(self.nodes.len() - 1);
        let deadline = Instant::now() + POPULATE_TIMEOUT;
        loop {
            let stats = try_join_all(self.nodes.iter().map(Handle::stats)).await?;
            let least = stats.iter().map(|s| s.routing_table).min().unwrap_or(0);
            if least >= want {
                return Ok(stats);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "routing tables not populated after {POPULATE_TIMEOUT:?}: the smallest holds {least} peers, {want} wanted"
            );
            // No event says "populated": look again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Announces a fresh key at `providers` nodes, looks it up from another one, then measures
    /// the baseline.
    pub(crate) async fn lookup(
        &mut self,
        index: u64,
        rng: &mut Rng,
        providers: usize,
    ) -> anyhow::Result<Measured> {
        let n = self.nodes.len();
        let key = random_key(rng);
        let chosen = rng.choose_below(n, providers.min(n - 1));
        let announced =
            join_all(chosen.iter().map(|&i| self.nodes[i].start_providing(key.clone()))).await;
        let failed = announced.iter().filter(|r| r.is_err()).count();
        let expected = (chosen.len() - failed) * kad::K_VALUE.get().min(n - 1);
        let stored = self.await_stored(&key, expected).await;
        let querier = loop {
            let q = rng.below(n);
            if !chosen.contains(&q) {
                break &self.nodes[q];
            }
        };
        let probe = Probe { lookup: index, key: key.clone(), querier: querier.peer };
        self.probe.send_replace(Some(probe));
        let lookup = querier.get_providers(key).await?;
        let [a, b] = &self.pair;
        a.disconnect(b.peer).await?;
        let cold = a.get_providers(random_key(rng)).await?;
        let warm = a.get_providers(random_key(rng)).await?;
        self.drain();
        Ok(Measured { lookup, warm, cold, stored, expected, failed })
    }

    /// Takes observations until `expected` records of `key` are stored or [`STORE_TIMEOUT`]
    /// passes; the number stored.
    async fn await_stored(&mut self, key: &kad::RecordKey, expected: usize) -> usize {
        let deadline = tokio::time::Instant::now() + STORE_TIMEOUT;
        let mut stored = 0;
        while stored < expected {
            match tokio::time::timeout_at(deadline, self.observations.recv()).await {
                Ok(Some(Observation::Stored { key: k })) if k == *key => stored += 1,
                Ok(Some(other)) => self.absorb(other),
                Ok(None) | Err(_) => break,
            }
        }
        stored
    }

    fn drain(&mut self) {
        while let Ok(o) = self.observations.try_recv() {
            self.absorb(o);
        }
    }

    fn absorb(&mut self, observation: Observation) {
        match observation {
            Observation::Asked(a) => self.asked.entry(a.lookup).or_default().push(a),
            Observation::Stray => self.stray += 1,
            // A record of an earlier key, stored after its lookup stopped waiting.
            Observation::Stored { .. } => {}
        }
    }

    /// Waits for the last lookup's requests still in flight (until a quiet [`LAST_QUIET`]),
    /// then stops every node.
    pub(crate) async fn finish(mut self) -> Observed {
        while let Ok(Some(o)) = tokio::time::timeout(LAST_QUIET, self.observations.recv()).await {
            self.absorb(o);
        }
        let observed = Observed {
            asked: std::mem::take(&mut self.asked),
            stray: self.stray,
            dropped: self.dropped.load(Ordering::Relaxed),
        };
        let Self { nodes, pair, mut tasks, .. } = self;
        // Dropping the handles closes the command channels: each task ends its loop.
        drop((nodes, pair));
        while tasks.join_next().await.is_some() {}
        observed
    }
}

/// Two nodes that know only each other, not instrumented.
async fn pair(
    seeds: &[[u8; 32]],
    ids: &[(PeerId, Multiaddr)],
    config: &capmesh_net::Config,
    probe: watch::Receiver<Option<Probe>>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<[Handle; 2]> {
    let shared = Shared {
        book: Arc::new(ids.iter().cloned().collect()),
        probe,
        observations: None,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    let a = node::spawn(seeds[0], ids[0].1.clone(), config, shared.clone(), tasks)?;
    let b = node::spawn(seeds[1], ids[1].1.clone(), config, shared, tasks)?;
    a.bootstrap(vec![b.peer]).await.context("baseline pair")?;
    Ok([a, b])
}

/// `Join::Table`: every routing table filled at once, no traffic.
async fn join_table(nodes: &[Handle], rng: &mut Rng) -> anyhow::Result<()> {
    let peers: Vec<PeerId> = nodes.iter().map(|h| h.peer).collect();
    let tables = table::converged(&peers, kad::K_VALUE.get(), rng);
    try_join_all(nodes.iter().zip(tables).map(|(h, t)| h.seed_table(t))).await?;
    Ok(())
}

/// `Join::Bootstrap`: in batches, each node told of a few earlier ones runs a bootstrap.
async fn join_bootstrap(nodes: &[Handle], rng: &mut Rng) -> anyhow::Result<()> {
    let started = Instant::now();
    let n = nodes.len();
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let boots = (start.max(1)..end).map(|i| {
            let count = (BOOTSTRAP_MIN + rng.below(BOOTSTRAP_MAX - BOOTSTRAP_MIN + 1)).min(i);
            let peers = rng.choose_below(i, count).into_iter().map(|j| nodes[j].peer).collect();
            nodes[i].bootstrap(peers)
        });
        try_join_all(boots).await?;
        if end.is_multiple_of(250) || end == n {
            eprintln!("N = {n}: {end} nodes joined ({:.1} s)", started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}
