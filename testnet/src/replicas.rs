//! What the replicas see: publish-to-visible times (`[publish]`), and partitions with the
//! replica convergence time after the heal (`[partition]`).
//!
//! Both publish fresh capabilities named `tn.<run start ms>.…`, so one query by name prefix
//! tells which of them a node's replica holds.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use capmesh_api::{BlockRequest, Client, PublishRequest, QueryRequest};
use capmesh_types::{Cid, PeerId};
use capmesh_wire::Filter;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    rng::Rng,
    run::{self, Bucket, Event, Latency, Nodes, lock, percentile, push},
    scenario::{Partition, Publish},
};

/// Most pages read when listing what a replica holds of the run's capabilities.
const MAX_PAGES: usize = 64;
/// The API's largest query page (specs/api.md §3.6).
const QUERY_PAGE: u32 = 1000;
/// Nodes asked at once when the block lists change.
const BLOCK_FAN_OUT: usize = 16;

/// The run's fresh capabilities: the `[publish]` workload's and the partition's markers.
pub(crate) struct Fresh {
    prefix: String,
    counter: AtomicU64,
    /// Each capability with when its publish was acknowledged.
    published: Mutex<Vec<(Instant, Cid)>>,
}

impl Fresh {
    pub(crate) fn new(started_ms: u64) -> Self {
        Self {
            prefix: format!("tn.{started_ms}."),
            counter: AtomicU64::new(0),
            published: Mutex::new(Vec::new()),
        }
    }

    /// Publishes a fresh capability from `client` and returns its id.
    async fn publish(&self, client: &Client, what: &str) -> Result<Cid, capmesh_api::ClientError> {
        let name = format!("{}{what}{}", self.prefix, self.counter.fetch_add(1, Ordering::Relaxed));
        let contract = capmesh_contract::scaffold(&name)
            .ok()
            .and_then(|c| serde_json::to_value(c).ok())
            .unwrap_or_default();
        // Measures dissemination only: nothing serves these, on purpose.
        let req = PublishRequest {
            contract,
            price: None,
            limits: None,
            ttl_ms: None,
            announce_only: true,
        };
        let cap = client.publish(&req).await?.capability;
        lock(&self.published).push((Instant::now(), cap));
        Ok(cap)
    }

    /// The capabilities whose publish was acknowledged before `t`.
    fn before(&self, t: Instant) -> HashSet<Cid> {
        lock(&self.published).iter().filter(|(at, _)| *at <= t).map(|(_, c)| *c).collect()
    }

    /// Which of the run's capabilities the replica behind `client` holds a live advert of.
    async fn held(&self, client: &Client) -> Option<HashSet<Cid>> {
        let mut held = HashSet::new();
        let mut cursor = None;
        for _ in 0..MAX_PAGES {
            let req = QueryRequest {
                filter: Filter { name_prefix: Some(self.prefix.clone()), ..Filter::default() },
                limit: Some(QUERY_PAGE),
                cursor: cursor.take(),
                ..QueryRequest::default()
            };
            let page = client.query(&req).await.ok()?;
            held.extend(page.hits.iter().map(|h| h.capability));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Some(held),
            }
        }
        Some(held)
    }
}

/// What one publish did.
#[derive(Debug, Clone)]
pub(crate) struct PublishOp {
    pub(crate) second: u64,
    pub(crate) failure: Option<String>,
    /// For each watcher that saw the advert: ms from the publish request to it in the replica.
    pub(crate) visible: Vec<f64>,
    /// Watchers that did not see it within the timeout.
    pub(crate) not_visible: u64,
    /// Watchers churn killed while they were polled.
    pub(crate) lost: u64,
}

/// The `[publish]` figures of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishSummary {
    /// duration / every_ms.
    pub asked: u64,
    pub published: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    /// (publish, watcher) pairs polled.
    pub watched: u64,
    pub visible: u64,
    /// Pairs where the advert did not reach the watcher's replica within the timeout.
    pub not_visible: u64,
    /// Pairs whose watcher churn killed while it was polled.
    pub lost_with_their_node: u64,
    /// From the publish request to the advert in a watcher's replica, over the pairs that saw
    /// it (resolution: `poll_ms`).
    pub visible_ms: Latency,
    /// Per publish whose watchers all saw it: until the last one did.
    pub all_visible_ms: Latency,
    pub poll_ms: u64,
    pub histogram: Vec<Bucket>,
}

/// Every `every_ms` from `started` until `duration`, a random up node publishes a fresh
/// capability and `watchers` other up nodes (of its group while partitioned) are polled until
/// they hold it. Waits for the last publish's watchers.
pub(crate) async fn publish_loop(
    p: Publish,
    nodes: Arc<Nodes>,
    fresh: Arc<Fresh>,
    started: Instant,
    duration: Duration,
    seed: u64,
) -> Vec<PublishOp> {
    let mut rng = Rng::new(seed ^ 0x9b11);
    let every = Duration::from_millis(p.every_ms);
    let total = duration.as_millis() / u128::from(p.every_ms);
    let mut set = tokio::task::JoinSet::new();
    let mut ops = Vec::new();
    for k in 0..total {
        let due = started + every * k as u32;
        tokio::time::sleep_until(due.into()).await;
        let second = due.duration_since(started).as_secs();
        let Some((i, client, _)) = nodes.random_up(&mut rng) else {
            ops.push(PublishOp::failed(second, "NoNodeUp"));
            continue;
        };
        let watchers = watchers(&nodes, i, p.watchers, &mut rng);
        let (fresh, nodes, p) = (fresh.clone(), nodes.clone(), p.clone());
        set.spawn(async move { one_publish(&client, watchers, &fresh, &nodes, &p, second).await });
        while let Some(done) = set.try_join_next() {
            ops.extend(done.ok());
        }
    }
    while let Some(done) = set.join_next().await {
        ops.extend(done.ok());
    }
    ops
}

impl PublishOp {
    fn failed(second: u64, why: &str) -> Self {
        Self { second, failure: Some(why.to_owned()), visible: vec![], not_visible: 0, lost: 0 }
    }
}

/// Up to `k` up nodes other than `publisher`, from its group while partitioned.
fn watchers(nodes: &Nodes, publisher: usize, k: usize, rng: &mut Rng) -> Vec<(usize, Client, u64)> {
    let groups = lock(&nodes.groups).clone();
    let same = |j: usize| groups.as_ref().is_none_or(|g| g[j] == g[publisher]);
    let candidates: Vec<usize> = {
        let up = lock(&nodes.up);
        (0..up.len()).filter(|&j| j != publisher && up[j].is_some() && same(j)).collect()
    };
    let incarnations = lock(&nodes.incarnation).clone();
    rng.choose(&candidates, k)
        .into_iter()
        .filter_map(|j| nodes.client(j).map(|c| (j, c, incarnations[j])))
        .collect()
}

async fn one_publish(
    client: &Client,
    watchers: Vec<(usize, Client, u64)>,
    fresh: &Fresh,
    nodes: &Nodes,
    p: &Publish,
    second: u64,
) -> PublishOp {
    let begun = Instant::now();
    let cap = match fresh.publish(client, "p").await {
        Ok(cap) => cap,
        Err(e) => return PublishOp::failed(second, &run::reason(&e)),
    };
    let timeout = Duration::from_millis(p.timeout_ms);
    let poll = Duration::from_millis(p.poll_ms);
    let seen = futures::future::join_all(watchers.iter().map(|(_, c, _)| async move {
        loop {
            let req =
                QueryRequest { capability: Some(cap), limit: Some(1), ..QueryRequest::default() };
            if c.query(&req).await.is_ok_and(|page| !page.hits.is_empty()) {
                return Some(begun.elapsed().as_secs_f64() * 1000.0);
            }
            if begun.elapsed() >= timeout {
                return None;
            }
            tokio::time::sleep(poll).await;
        }
    }))
    .await;
    let mut op = PublishOp { second, failure: None, visible: vec![], not_visible: 0, lost: 0 };
    for ((j, _, incarnation), seen) in watchers.iter().zip(seen) {
        match seen {
            Some(ms) => op.visible.push(ms),
            None if !nodes.same_incarnation(*j, *incarnation) => op.lost += 1,
            None => op.not_visible += 1,
        }
    }
    op
}

/// The `[publish]` summary of `ops`.
pub(crate) fn publish_summary(ops: &[PublishOp], asked: u64, poll_ms: u64) -> PublishSummary {
    let mut failed_by_reason = BTreeMap::new();
    for why in ops.iter().filter_map(|o| o.failure.as_ref()) {
        *failed_by_reason.entry(why.clone()).or_insert(0) += 1;
    }
    let published = ops.iter().filter(|o| o.failure.is_none()).collect::<Vec<_>>();
    let mut visible: Vec<f64> = published.iter().flat_map(|o| o.visible.iter().copied()).collect();
    visible.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = published
        .iter()
        .filter(|o| o.not_visible == 0 && o.lost == 0 && !o.visible.is_empty())
        .filter_map(|o| o.visible.iter().copied().max_by(f64::total_cmp))
        .collect();
    all.sort_by(f64::total_cmp);
    let not_visible: u64 = published.iter().map(|o| o.not_visible).sum();
    let lost: u64 = published.iter().map(|o| o.lost).sum();
    PublishSummary {
        asked,
        published: published.len() as u64,
        failed_by_reason,
        watched: visible.len() as u64 + not_visible + lost,
        visible: visible.len() as u64,
        not_visible,
        lost_with_their_node: lost,
        visible_ms: latency(&visible),
        all_visible_ms: latency(&all),
        poll_ms,
        histogram: run::histogram(&visible),
    }
}

/// Figures of sorted `v`.
pub(crate) fn latency(v: &[f64]) -> Latency {
    Latency {
        p50: percentile(v, 0.5).unwrap_or(0.0),
        p90: percentile(v, 0.9).unwrap_or(0.0),
        p99: percentile(v, 0.99).unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
    }
}

/// The `[partition]` figures of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSummary {
    /// Nodes in each group.
    pub groups: Vec<usize>,
    /// Seconds from the start.
    pub split_at: f64,
    pub healed_at: f64,
    /// Nodes whose block list could not be changed (down, or refused) at the split or the heal.
    pub block_failures: u64,
    /// Fresh capabilities every replica must hold after the heal: each group's marker and what
    /// `[publish]` published before the heal.
    pub expected_adverts: usize,
    /// Groups' markers that could not be published.
    pub markers_failed: usize,
    /// Nodes whose replica held every expected advert within `converge_timeout_secs`.
    pub converged: usize,
    pub not_converged: Vec<usize>,
    /// From the heal to a node's replica holding every expected advert, over the converged
    /// nodes (resolution: `poll_ms`).
    pub convergence_ms: Latency,
    /// From the heal until the last node converged; `null` if one did not.
    pub all_converged_ms: Option<f64>,
    pub poll_ms: u64,
}

/// Splits the nodes at `at_secs`, publishes one marker in each group, heals at `heal_secs` and
/// polls every node until its replica holds every expected advert.
pub(crate) async fn partition(
    p: Partition,
    nodes: Arc<Nodes>,
    fresh: Arc<Fresh>,
    events: Arc<Mutex<Vec<Event>>>,
    started: Instant,
    seed: u64,
) -> anyhow::Result<PartitionSummary> {
    let n = nodes.len();
    let peers = peer_ids(&nodes)?;
    let mut rng = Rng::new(seed ^ 0x5917);
    tokio::time::sleep_until((started + Duration::from_secs(p.at_secs)).into()).await;
    let groups = split(n, p.groups, &mut rng);
    *lock(&nodes.groups) = Some(groups.clone());
    let mut block_failures = set_blocks(&nodes, &groups, &peers, true).await;
    let sizes: Vec<usize> =
        (0..p.groups).map(|g| groups.iter().filter(|&&x| x == g).count()).collect();
    let split_at = started.elapsed().as_secs_f64();
    push(&events, started, "partition", None, Some(format!("groups of {sizes:?}")));

    let mut markers_failed = 0;
    for g in 0..p.groups {
        let members: Vec<usize> = (0..n).filter(|&i| groups[i] == g).collect();
        let publisher =
            rng.choose(&members, members.len()).into_iter().find_map(|i| nodes.client(i));
        let published = match publisher {
            Some(client) => fresh.publish(&client, &format!("g{g}.")).await.is_ok(),
            None => false,
        };
        markers_failed += usize::from(!published);
    }

    tokio::time::sleep_until((started + Duration::from_secs(p.heal_secs)).into()).await;
    *lock(&nodes.groups) = None;
    block_failures += set_blocks(&nodes, &groups, &peers, false).await;
    let healed = Instant::now();
    let healed_at = started.elapsed().as_secs_f64();
    push(&events, started, "heal", None, None);

    let expected = fresh.before(healed);
    let timeout = Duration::from_secs(p.converge_timeout_secs);
    let poll = Duration::from_millis(p.poll_ms);
    let times: Vec<Option<f64>> = futures::future::join_all((0..n).map(|i| {
        let (nodes, fresh, expected) = (nodes.clone(), fresh.clone(), &expected);
        async move {
            loop {
                if let Some(client) = nodes.client(i)
                    && fresh.held(&client).await.is_some_and(|held| held.is_superset(expected))
                {
                    return Some(healed.elapsed().as_secs_f64() * 1000.0);
                }
                if healed.elapsed() >= timeout {
                    return None;
                }
                tokio::time::sleep(poll).await;
            }
        }
    }))
    .await;
    let not_converged: Vec<usize> = (0..n).filter(|&i| times[i].is_none()).collect();
    let mut converged: Vec<f64> = times.iter().flatten().copied().collect();
    converged.sort_by(f64::total_cmp);
    let all_converged_ms =
        not_converged.is_empty().then(|| converged.last().copied().unwrap_or(0.0));
    if let Some(ms) = all_converged_ms {
        lock(&events).push(Event {
            t: healed_at + ms / 1000.0,
            kind: "converged".into(),
            node: None,
            detail: Some(format!("{} adverts on every node", expected.len())),
        });
    }
    Ok(PartitionSummary {
        groups: sizes,
        split_at,
        healed_at,
        block_failures,
        expected_adverts: expected.len(),
        markers_failed,
        converged: converged.len(),
        not_converged,
        convergence_ms: latency(&converged),
        all_converged_ms,
        poll_ms: p.poll_ms,
    })
}

fn peer_ids(nodes: &Nodes) -> anyhow::Result<Vec<PeerId>> {
    lock(&nodes.manifest)
        .nodes
        .iter()
        .map(|node| node.peer_id.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("a peer id in the manifest: {e}"))
}

/// A node restarted while the testnet is partitioned blocks the other groups again (its block
/// list did not survive the restart).
pub(crate) async fn reblock(nodes: &Nodes, i: usize, client: &Client) {
    let groups = lock(&nodes.groups).clone();
    if let (Some(groups), Ok(peers)) = (groups, peer_ids(nodes))
        && !block_others(client, i, &groups, &peers, true).await
    {
        tracing::warn!(node = i, "a restarted node did not take its block list");
    }
}

/// The group of each node: node 0 in group 0, the others dealt round-robin in random order.
fn split(n: usize, groups: usize, rng: &mut Rng) -> Vec<usize> {
    let mut of = vec![0; n];
    let others: Vec<usize> = (1..n).collect();
    for (k, i) in rng.choose(&others, others.len()).into_iter().enumerate() {
        of[i] = (k + 1) % groups;
    }
    of
}

/// Blocks (or unblocks) on every up node the nodes of the other groups; returns how many nodes
/// could not be asked or refused.
async fn set_blocks(nodes: &Nodes, groups: &[usize], peers: &[PeerId], block: bool) -> u64 {
    let failed = futures::stream::iter(0..groups.len())
        .map(|i| async move {
            match nodes.client(i) {
                Some(client) => !block_others(&client, i, groups, peers, block).await,
                None => true,
            }
        })
        .buffer_unordered(BLOCK_FAN_OUT)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    failed as u64
}

/// Makes node `i` block (or unblock) every node outside its group; whether it did.
pub(crate) async fn block_others(
    client: &Client,
    i: usize,
    groups: &[usize],
    peers: &[PeerId],
    block: bool,
) -> bool {
    let others: Vec<PeerId> =
        (0..groups.len()).filter(|&j| groups[j] != groups[i]).map(|j| peers[j]).collect();
    let req = if block {
        BlockRequest { block: others, unblock: vec![] }
    } else {
        BlockRequest { block: vec![], unblock: others }
    };
    client.block(&req).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_keeps_node_0_in_the_first_group_and_balances() {
        let mut rng = Rng::new(7);
        let groups = split(11, 3, &mut rng);
        assert_eq!(groups[0], 0);
        let sizes: Vec<usize> =
            (0..3).map(|g| groups.iter().filter(|&&x| x == g).count()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 11);
        assert!(
            sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1,
            "{sizes:?}"
        );
    }

    #[test]
    fn the_publish_summary_counts_pairs_and_publishes() {
        let op = |visible: Vec<f64>, not_visible, lost| PublishOp {
            second: 0,
            failure: None,
            visible,
            not_visible,
            lost,
        };
        let ops = vec![
            op(vec![10.0, 30.0], 0, 0),
            op(vec![20.0], 1, 0),
            op(vec![5.0], 0, 1),
            PublishOp::failed(1, "Unreachable"),
        ];
        let s = publish_summary(&ops, 5, 50);
        assert_eq!((s.asked, s.published, s.watched, s.visible), (5, 3, 6, 4));
        assert_eq!((s.not_visible, s.lost_with_their_node), (1, 1));
        assert_eq!(s.failed_by_reason.get("Unreachable"), Some(&1));
        // Only the first publish reached all of its watchers: until the last one, 30 ms.
        assert_eq!(s.all_visible_ms.max, 30.0);
        assert_eq!(s.visible_ms.max, 30.0);
        assert_eq!(s.histogram.iter().map(|b| b.count).sum::<u64>(), 4);
    }
}
