//! `run`: drives a [`Scenario`] against a running testnet and reports what happened, second by
//! second, as JSON.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use capmesh_api::{CallRequest, Client, ClientError, FindEvent, FindRequest};
use capmesh_exec::Builtin;
use capmesh_types::Cid;
use futures::StreamExt;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::{
    baseline::Baseline,
    manifest::Manifest,
    procs,
    replicas::{self, Fresh, PartitionSummary, PublishSummary},
    rng::Rng,
    scenario::{Churn, Scenario},
};

/// What one find or call did.
#[derive(Debug, Clone)]
struct Op {
    /// Second of the run it was issued in.
    second: u64,
    /// How late it was issued against its schedule (concurrency cap reached), in ms.
    late_ms: u64,
    latency_ms: f64,
    /// `None`: it succeeded; else the reason.
    failure: Option<String>,
    kad_requests: Option<u32>,
    /// Finds: the hit came from the asked node's own replica (not from Kademlia).
    from_replica: Option<bool>,
}

/// An event of the run: churn (`kill`, `restart`, `restart_failed`) and partition (`partition`,
/// `heal`, `converged`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the start.
    pub t: f64,
    pub kind: String,
    /// The node it concerns; none for events of the whole testnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Latency figures, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Figures of one workload over the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// What the scenario asked for: rate × duration.
    pub asked: u64,
    pub issued: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Operations whose node was killed by churn while they ran (not the mesh's failure).
    pub lost_with_their_node: u64,
    /// succeeded / (issued − lost_with_their_node).
    pub success_rate: f64,
    /// Latency of the successful ones.
    pub latency_ms: Latency,
    /// Worst lateness against the schedule (concurrency cap reached), in ms.
    pub max_late_ms: u64,
    /// Latency distribution of the successful ones: log-spaced buckets from 0.1 ms to 100 s (ten
    /// a decade), each counting latencies above the previous bound and at or under `le_ms`; the
    /// last bucket (`le_ms` infinite, written `null`) holds the rest.
    pub histogram: Vec<Bucket>,
    /// Finds only: answered from the asked node's own replica, and through Kademlia (with gossip
    /// on, most finds of a settled testnet are replica hits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_from: Option<BTreeMap<String, u64>>,
    /// Finds only: Kademlia requests per answered find (mean, p50, p99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kad_requests_per_find: Option<serde_json::Value>,
}

/// One bucket of a latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound; the last bucket's is infinite (JSON `null`).
    #[serde(deserialize_with = "null_is_infinite")]
    pub le_ms: f64,
    pub count: u64,
}

fn null_is_infinite<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

/// Counts of sorted `latencies` in log-spaced buckets (see [`Summary::histogram`]).
pub fn histogram(latencies: &[f64]) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> =
        (-10..=50).map(|k| Bucket { le_ms: 10f64.powf(f64::from(k) / 10.0), count: 0 }).collect();
    buckets.push(Bucket { le_ms: f64::INFINITY, count: 0 });
    for &l in latencies {
        let i = buckets.partition_point(|b| b.le_ms < l);
        let last = buckets.len() - 1;
        buckets[i.min(last)].count += 1;
    }
    buckets
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Second {
    /// The second (from the start) the operations were *scheduled* in: one issued late
    /// (concurrency cap reached) still counts here; see the summaries' `max_late_ms`.
    pub t: u64,
    pub finds_issued: u64,
    pub finds_answered: u64,
    /// Finds whose node churn killed while they ran (not the mesh's failure).
    pub finds_lost: u64,
    pub find_p50_ms: Option<f64>,
    pub find_p99_ms: Option<f64>,
    pub calls_issued: u64,
    pub calls_succeeded: u64,
    /// Calls whose node churn killed while they ran.
    pub calls_lost: u64,
    pub call_p50_ms: Option<f64>,
    pub call_p99_ms: Option<f64>,
    pub nodes_up: usize,
    /// Mean resident memory of the running nodes, MiB.
    pub rss_mib_mean: f64,
    /// CPU of all nodes together, percent of one core (nodes just started, with no earlier
    /// sample, are left out; `null` when no node had one).
    pub cpu_percent: Option<f64>,
    /// Fresh capabilities published (`[publish]`) this second, and the p50 of their
    /// publish-to-visible times.
    #[serde(default)]
    pub published: u64,
    #[serde(default)]
    pub visible_p50_ms: Option<f64>,
}

/// Resources of one node over the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResources {
    pub index: usize,
    pub rss_mib: Vec<Option<f64>>,
    pub cpu_percent: Vec<Option<f64>>,
}

/// The report `run` writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    pub nodes: usize,
    pub started_ms: u64,
    pub finds: Option<Summary>,
    pub calls: Option<Summary>,
    #[serde(default)]
    pub publish: Option<PublishSummary>,
    #[serde(default)]
    pub partition: Option<PartitionSummary>,
    /// Bare libp2p request-response on 127.0.0.1, measured just before the workload.
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// p50 latencies over the baseline's p50 round trip.
    #[serde(default)]
    pub ratios: BTreeMap<String, f64>,
    pub events: Vec<Event>,
    pub series: Vec<Second>,
    pub resources: Vec<NodeResources>,
    /// Over the run: mean and largest resident memory of a node, MiB.
    pub rss_mib: serde_json::Value,
}

/// The nodes as the run sees them: up or not, and a client for the up ones.
pub(crate) struct Nodes {
    pub(crate) manifest: Mutex<Manifest>,
    pub(crate) up: Mutex<Vec<Option<Client>>>,
    /// Bumped when a node is killed, so an op knows its node went away under it.
    pub(crate) incarnation: Mutex<Vec<u64>>,
    /// While partitioned: the group of each node (a restarted node blocks the others again).
    pub(crate) groups: Mutex<Option<Vec<usize>>>,
}

impl Nodes {
    pub(crate) fn random_up(&self, rng: &mut Rng) -> Option<(usize, Client, u64)> {
        let up = lock(&self.up);
        let candidates: Vec<usize> = (0..up.len()).filter(|&i| up[i].is_some()).collect();
        if candidates.is_empty() {
            return None;
        }
        let i = candidates[rng.below(candidates.len())];
        let incarnation = lock(&self.incarnation)[i];
        up[i].clone().map(|c| (i, c, incarnation))
    }

    pub(crate) fn same_incarnation(&self, i: usize, incarnation: u64) -> bool {
        lock(&self.incarnation)[i] == incarnation
    }

    /// The client of node `i` if it is up.
    pub(crate) fn client(&self, i: usize) -> Option<Client> {
        lock(&self.up).get(i).cloned().flatten()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.up).len()
    }
}

/// Runs `scenario` against the testnet of `manifest` and returns the report (the manifest is
/// saved again if churn restarted nodes: their pids changed).
pub async fn run(
    manifest: Manifest,
    scenario: &Scenario,
    seed: u64,
) -> anyhow::Result<(Report, Manifest)> {
    scenario.check()?;
    let n = manifest.nodes.len();
    anyhow::ensure!(n > 0, "the testnet has no nodes");
    anyhow::ensure!(
        manifest.nodes.iter().enumerate().all(|(i, node)| node.index == i),
        "the manifest has gaps (an interrupted `up`?): `capmesh-testnet down`, then `up` again"
    );
    let mut clients = Vec::with_capacity(n);
    for node in &manifest.nodes {
        anyhow::ensure!(
            procs::alive(node.pid, &node.data_dir),
            "node {} (pid {}) is not running: `capmesh-testnet status`",
            node.index,
            node.pid
        );
        clients.push(Some(
            Client::from_data_dir(&node.data_dir)?.with_timeout(Duration::from_secs(30)),
        ));
    }
    let nodes = Arc::new(Nodes {
        manifest: Mutex::new(manifest),
        up: Mutex::new(clients),
        incarnation: Mutex::new(vec![0; n]),
        groups: Mutex::new(None),
    });
    let caps: Vec<Cid> = procs::SERVED
        .iter()
        .filter_map(|name| builtin(name))
        .map(|b| capmesh_contract::check(&b.contract()))
        .collect::<Result<_, _>>()?;
    let baseline = crate::baseline::measure().await?;
    let started = Instant::now();
    let started_ms = procs::now_ms();
    let duration = Duration::from_secs(scenario.duration_secs);
    let events = Arc::new(Mutex::new(Vec::new()));
    let finds = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();

    if let Some(d) = scenario.discovery.clone() {
        let (nodes, ops, caps) = (nodes.clone(), finds.clone(), caps.clone());
        tasks.spawn(async move {
            let limit = Arc::new(Semaphore::new(d.concurrency));
            let total = u64::from(d.rate) * duration.as_secs();
            let mut rng = Rng::new(seed ^ 0xd15c);
            drive(total, d.rate, started, limit, |k| {
                let pick = nodes.random_up(&mut rng);
                let cap = caps[rng.below(caps.len())];
                let (nodes, ops) = (nodes.clone(), ops.clone());
                let timeout_ms = d.timeout_ms;
                async move {
                    let op = match pick {
                        Some((i, client, inc)) => {
                            let mut op = find(&client, cap, timeout_ms, k.0, k.1).await;
                            if op.failure.is_some() && !nodes.same_incarnation(i, inc) {
                                op.failure = Some(LOST.into());
                            }
                            op
                        }
                        None => failed(k.0, k.1, "NoNodeUp"),
                    };
                    lock(&ops).push(op);
                }
            })
            .await;
        });
    }
    if let Some(c) = scenario.calls.clone() {
        let (nodes, ops) = (nodes.clone(), calls.clone());
        let cap = builtin(&c.capability).map(|b| capmesh_contract::check(&b.contract()));
        let cap = match cap {
            Some(Ok(cap)) => cap,
            _ => anyhow::bail!("[calls] capability {:?} is not a served builtin", c.capability),
        };
        let args = match c.capability.as_str() {
            "blake3" => json!({"text": "x".repeat(c.payload_bytes)}),
            _ => json!({"pad": "x".repeat(c.payload_bytes)}),
        };
        tasks.spawn(async move {
            let limit = Arc::new(Semaphore::new(c.concurrency));
            let total = u64::from(c.rate) * duration.as_secs();
            let mut rng = Rng::new(seed ^ 0xca11);
            drive(total, c.rate, started, limit, |k| {
                let pick = nodes.random_up(&mut rng);
                let (nodes, ops, args) = (nodes.clone(), ops.clone(), args.clone());
                let deadline_ms = c.deadline_ms;
                async move {
                    let op = match pick {
                        Some((i, client, inc)) => {
                            let mut op = call(&client, cap, args, deadline_ms, k.0, k.1).await;
                            if op.failure.is_some() && !nodes.same_incarnation(i, inc) {
                                op.failure = Some(LOST.into());
                            }
                            op
                        }
                        None => failed(k.0, k.1, "NoNodeUp"),
                    };
                    lock(&ops).push(op);
                }
            })
            .await;
        });
    }
    let fresh = Arc::new(Fresh::new(started_ms));
    let publishes = scenario.publish.clone().map(|p| {
        let (nodes, fresh) = (nodes.clone(), fresh.clone());
        tokio::spawn(replicas::publish_loop(p, nodes, fresh, started, duration, seed))
    });
    let partition = scenario.partition.clone().map(|p| {
        let (nodes, fresh, events) = (nodes.clone(), fresh.clone(), events.clone());
        tokio::spawn(replicas::partition(p, nodes, fresh, events, started, seed))
    });
    if let Some(churn) = scenario.churn.clone() {
        let (nodes, events) = (nodes.clone(), events.clone());
        tasks.spawn(async move { churn_loop(churn, nodes, events, started, duration, seed).await });
    }
    let usage = {
        let nodes = nodes.clone();
        tokio::spawn(async move { sample(nodes, started, duration).await })
    };
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let publishes = match publishes {
        Some(task) => task.await?,
        None => Vec::new(),
    };
    let partition = match partition {
        Some(task) => Some(task.await??),
        None => None,
    };
    let (per_second, resources) = usage.await?;
    let nodes =
        Arc::try_unwrap(nodes).map_err(|_| anyhow::anyhow!("a task still holds the nodes"))?;
    let manifest = nodes.manifest.into_inner().unwrap_or_else(|e| e.into_inner());
    let finds = take(finds);
    let calls = take(calls);
    let secs = scenario.duration_secs;
    let mut series: Vec<Second> = (0..secs).map(|t| Second { t, ..Second::default() }).collect();
    fill(&mut series, &finds, |s, f| {
        s.finds_issued = f.issued;
        s.finds_answered = f.ok;
        s.finds_lost = f.lost;
        s.find_p50_ms = f.p50;
        s.find_p99_ms = f.p99;
    });
    fill(&mut series, &calls, |s, f| {
        s.calls_issued = f.issued;
        s.calls_succeeded = f.ok;
        s.calls_lost = f.lost;
        s.call_p50_ms = f.p50;
        s.call_p99_ms = f.p99;
    });
    // One pass over the publishes (a day's run has tens of thousands).
    let mut visible: Vec<Vec<f64>> = vec![Vec::new(); series.len()];
    for op in publishes.iter().filter(|o| o.failure.is_none()) {
        let slot = op.second as usize;
        if let (Some(s), Some(v)) = (series.get_mut(slot), visible.get_mut(slot)) {
            s.published += 1;
            v.extend(&op.visible);
        }
    }
    for (s, mut v) in series.iter_mut().zip(visible) {
        v.sort_by(f64::total_cmp);
        s.visible_p50_ms = percentile(&v, 0.5);
    }
    for (s, (up, rss, cpu)) in series.iter_mut().zip(per_second) {
        s.nodes_up = up;
        s.rss_mib_mean = rss;
        s.cpu_percent = cpu;
    }
    let all_rss: Vec<f64> =
        resources.iter().flat_map(|r| r.rss_mib.iter().flatten().copied()).collect();
    let rss_mib = json!({
        "mean": mean(&all_rss),
        "max": all_rss.iter().copied().fold(0.0, f64::max),
    });
    let finds =
        scenario.discovery.as_ref().map(|d| summary(&finds, u64::from(d.rate) * secs, true));
    let calls = scenario.calls.as_ref().map(|c| summary(&calls, u64::from(c.rate) * secs, false));
    let publish = scenario
        .publish
        .as_ref()
        .map(|p| replicas::publish_summary(&publishes, secs * 1000 / p.every_ms, p.poll_ms));
    let bare = baseline.bare_rpc_ms.p50;
    let mut ratios = BTreeMap::new();
    for (name, p50) in [
        ("find_p50_over_bare_rpc_p50", finds.as_ref().map(|f| f.latency_ms.p50)),
        ("call_p50_over_bare_rpc_p50", calls.as_ref().map(|c| c.latency_ms.p50)),
        ("visible_p50_over_bare_rpc_p50", publish.as_ref().map(|p| p.visible_ms.p50)),
    ] {
        if let Some(p50) = p50.filter(|&v| v > 0.0 && bare > 0.0) {
            ratios.insert(name.to_owned(), p50 / bare);
        }
    }
    let report = Report {
        scenario: scenario.clone(),
        nodes: n,
        started_ms,
        finds,
        calls,
        publish,
        partition,
        baseline: Some(baseline),
        ratios,
        events: take(events),
        series,
        resources,
        rss_mib,
    };
    Ok((report, manifest))
}

/// Failure reason of an op whose node churn killed while it ran.
const LOST: &str = "NodeKilled";

/// Issues `total` operations at `rate` a second from `started`, at most `limit` in flight; waits
/// for the last to end.
async fn drive<F, Fut>(total: u64, rate: u32, started: Instant, limit: Arc<Semaphore>, mut op: F)
where
    F: FnMut((u64, u64)) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let capacity = limit.available_permits();
    let mut set = tokio::task::JoinSet::new();
    for k in 0..total {
        let due = started + Duration::from_secs_f64(k as f64 / f64::from(rate.max(1)));
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let late = Instant::now().saturating_duration_since(due).as_millis() as u64;
        let second = due.duration_since(started).as_secs();
        let fut = op((second, late));
        set.spawn(async move {
            fut.await;
            drop(permit);
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
    debug_assert_eq!(limit.available_permits(), capacity);
}

async fn find(client: &Client, cap: Cid, timeout_ms: u64, second: u64, late_ms: u64) -> Op {
    let begun = Instant::now();
    let mut req = FindRequest::new(cap);
    req.limit = Some(1);
    req.timeout_ms = Some(timeout_ms);
    let bound = Duration::from_millis(timeout_ms + 5_000);
    let search = async {
        let mut events = client.find(&req).await?;
        // The first event says it: a hit, or the end of a search that found nothing.
        match events.next().await.transpose()? {
            Some(FindEvent::Hit(hit)) => {
                Ok(Some((hit.kad_requests, hit.source == capmesh_api::Source::Replica)))
            }
            Some(FindEvent::Done(_)) | None => Ok::<_, ClientError>(None),
        }
    };
    let outcome = tokio::time::timeout(bound, search).await;
    let latency_ms = begun.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(Ok(Some((kad, replica)))) => Op {
            second,
            late_ms,
            latency_ms,
            failure: None,
            kad_requests: Some(kad),
            from_replica: Some(replica),
        },
        Ok(Ok(None)) => failed(second, late_ms, "NotFound"),
        Ok(Err(e)) => failed(second, late_ms, &reason(&e)),
        Err(_) => failed(second, late_ms, "Timeout"),
    }
}

async fn call(
    client: &Client,
    cap: Cid,
    args: serde_json::Value,
    deadline_ms: u64,
    second: u64,
    late_ms: u64,
) -> Op {
    let begun = Instant::now();
    let mut req = CallRequest::new(cap, args);
    req.deadline_ms = Some(deadline_ms);
    let outcome = client.call(&req).await;
    let latency_ms = begun.elapsed().as_secs_f64() * 1000.0;
    match outcome {
        Ok(_) => Op {
            second,
            late_ms,
            latency_ms,
            failure: None,
            kad_requests: None,
            from_replica: None,
        },
        Err(e) => failed(second, late_ms, &reason(&e)),
    }
}

fn failed(second: u64, late_ms: u64, why: &str) -> Op {
    Op {
        second,
        late_ms,
        latency_ms: 0.0,
        failure: Some(why.to_owned()),
        kad_requests: None,
        from_replica: None,
    }
}

/// A failure's code: the call's own code, the API's, or the transport's.
pub(crate) fn reason(e: &ClientError) -> String {
    match e {
        ClientError::Api(api) => match &api.call {
            Some(failure) => failure.code.clone(),
            None => api.code.to_string(),
        },
        ClientError::Unreachable { .. } | ClientError::NotRunning { .. } => "Unreachable".into(),
        ClientError::TimedOut { .. } => "Timeout".into(),
        ClientError::Incomplete => "Incomplete".into(),
        _ => "Transport".into(),
    }
}

/// Once every `every_secs` (in the middle of each period), kills a fraction of the nodes other
/// than node 0 and restarts each after `down_secs`; the last restarts are waited for, so the
/// testnet is whole at the end.
async fn churn_loop(
    churn: Churn,
    nodes: Arc<Nodes>,
    events: Arc<Mutex<Vec<Event>>>,
    started: Instant,
    duration: Duration,
    seed: u64,
) {
    let mut rng = Rng::new(seed ^ 0xc4u64);
    let n = lock(&nodes.up).len();
    // At least one node a round when the fraction is above zero (a small testnet still churns).
    let per_round = ((n.saturating_sub(1)) as f64 * churn.fraction).round() as usize;
    let per_round = if churn.fraction > 0.0 { per_round.max(1) } else { 0 };
    let mut restarts = tokio::task::JoinSet::new();
    let mut round = 1;
    loop {
        // Rounds in the middle of each period: a 60 s run with a 15 s period has four.
        let at = started + Duration::from_secs_f64(churn.every_secs as f64 * (round as f64 - 0.5));
        if at >= started + duration {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        round += 1;
        let candidates: Vec<usize> = {
            let up = lock(&nodes.up);
            (1..n).filter(|&i| up[i].is_some()).collect()
        };
        for i in rng.choose(&candidates, per_round) {
            let (pid, dir) = {
                let m = lock(&nodes.manifest);
                (m.nodes[i].pid, m.nodes[i].data_dir.clone())
            };
            lock(&nodes.up)[i] = None;
            lock(&nodes.incarnation)[i] += 1;
            procs::signal(pid, &dir, Signal::SIGKILL);
            push(&events, started, "kill", Some(i), None);
            let (nodes, events, capmesh) =
                (nodes.clone(), events.clone(), lock(&nodes.manifest).capmesh.clone());
            let down = Duration::from_secs(churn.down_secs);
            restarts
                .spawn(async move { restart(i, dir, capmesh, down, nodes, events, started).await });
        }
    }
    while restarts.join_next().await.is_some() {}
}

async fn restart(
    i: usize,
    dir: PathBuf,
    capmesh: PathBuf,
    down: Duration,
    nodes: Arc<Nodes>,
    events: Arc<Mutex<Vec<Event>>>,
    started: Instant,
) {
    tokio::time::sleep(down).await;
    // The killed process may take a moment to release its replica's lock.
    let mut last = None;
    for _ in 0..3 {
        match procs::start_node(&capmesh, &dir).await {
            Ok((pid, _)) => {
                let client =
                    Client::from_data_dir(&dir).map(|c| c.with_timeout(Duration::from_secs(30)));
                let snapshot = {
                    let mut m = lock(&nodes.manifest);
                    m.nodes[i].pid = pid;
                    m.clone()
                };
                // Saved at once (off the runtime's threads), so `down` knows the new pid even if
                // the run is interrupted.
                let saved = tokio::task::spawn_blocking(move || snapshot.save()).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!(error = %e, "cannot save the manifest");
                }
                if let Ok(client) = &client {
                    replicas::reblock(&nodes, i, client).await;
                }
                lock(&nodes.up)[i] = client.ok();
                push(&events, started, "restart", Some(i), None);
                return;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    push(&events, started, "restart_failed", Some(i), last.map(|e| format!("{e:#}")));
}

pub(crate) fn push(
    events: &Mutex<Vec<Event>>,
    started: Instant,
    kind: &'static str,
    node: Option<usize>,
    detail: Option<String>,
) {
    lock(events).push(Event {
        t: started.elapsed().as_secs_f64(),
        kind: kind.to_owned(),
        node,
        detail,
    });
}

/// Samples every node's memory and CPU once a second; returns per second (nodes up, mean RSS
/// MiB, total CPU %) and per node series.
async fn sample(
    nodes: Arc<Nodes>,
    started: Instant,
    duration: Duration,
) -> (Vec<(usize, f64, Option<f64>)>, Vec<NodeResources>) {
    let ticks = procs::ticks_per_second() as f64;
    let n = lock(&nodes.up).len();
    let mut last: Vec<Option<(u32, u64)>> = vec![None; n];
    let mut resources: Vec<NodeResources> = (0..n)
        .map(|index| NodeResources { index, rss_mib: Vec::new(), cpu_percent: Vec::new() })
        .collect();
    let mut per_second = Vec::new();
    for t in 0..duration.as_secs() {
        tokio::time::sleep_until((started + Duration::from_secs(t + 1)).into()).await;
        let pids: Vec<(u32, bool)> = {
            let m = lock(&nodes.manifest);
            let up = lock(&nodes.up);
            m.nodes.iter().zip(up.iter()).map(|(node, up)| (node.pid, up.is_some())).collect()
        };
        // /proc reads, off the runtime's threads (a hundred nodes, twice a second each).
        let usages: Vec<Option<procs::Usage>> = tokio::task::spawn_blocking(move || {
            pids.iter().map(|&(pid, up)| if up { procs::usage(pid) } else { None }).collect()
        })
        .await
        .unwrap_or_default();
        let pids: Vec<u32> = lock(&nodes.manifest).nodes.iter().map(|n| n.pid).collect();
        let (mut up_count, mut rss_sum, mut cpu_sum, mut cpu_known) = (0, 0.0, 0.0, false);
        for (i, (pid, u)) in pids.into_iter().zip(usages).enumerate() {
            let rss = u.map(|u| u.rss_kib as f64 / 1024.0);
            let cpu = match (u, last[i]) {
                (Some(u), Some((p, before))) if p == pid => {
                    Some((u.cpu_ticks.saturating_sub(before)) as f64 / ticks * 100.0)
                }
                _ => None,
            };
            last[i] = u.map(|u| (pid, u.cpu_ticks));
            if let Some(r) = rss {
                up_count += 1;
                rss_sum += r;
            }
            if let Some(c) = cpu {
                cpu_sum += c;
                cpu_known = true;
            }
            resources[i].rss_mib.push(rss);
            resources[i].cpu_percent.push(cpu);
        }
        let mean_rss = if up_count > 0 { rss_sum / up_count as f64 } else { 0.0 };
        per_second.push((up_count, mean_rss, cpu_known.then_some(cpu_sum)));
    }
    (per_second, resources)
}

/// What one second's operations did: issued, succeeded, lost with their node, p50, p99.
struct PerSecond {
    issued: u64,
    ok: u64,
    lost: u64,
    p50: Option<f64>,
    p99: Option<f64>,
}

/// Groups `ops` by second in one pass and hands each second's figures to `set`.
fn fill(series: &mut [Second], ops: &[Op], mut set: impl FnMut(&mut Second, PerSecond)) {
    let mut by_second: Vec<(u64, u64, Vec<f64>)> = vec![(0, 0, Vec::new()); series.len()];
    for o in ops {
        let Some(slot) = by_second.get_mut(o.second as usize) else { continue };
        slot.0 += 1;
        match o.failure.as_deref() {
            None => slot.2.push(o.latency_ms),
            Some(LOST) => slot.1 += 1,
            Some(_) => {}
        }
    }
    for (s, (issued, lost, mut ok)) in series.iter_mut().zip(by_second) {
        ok.sort_by(f64::total_cmp);
        let figures = PerSecond {
            issued,
            ok: ok.len() as u64,
            lost,
            p50: percentile(&ok, 0.5),
            p99: percentile(&ok, 0.99),
        };
        set(s, figures);
    }
}

fn summary(ops: &[Op], asked: u64, finds: bool) -> Summary {
    let mut ok: Vec<f64> =
        ops.iter().filter(|o| o.failure.is_none()).map(|o| o.latency_ms).collect();
    ok.sort_by(f64::total_cmp);
    let mut failed_by_reason = BTreeMap::new();
    for o in ops {
        if let Some(why) = &o.failure {
            *failed_by_reason.entry(why.clone()).or_insert(0) += 1;
        }
    }
    let lost = failed_by_reason.get(LOST).copied().unwrap_or(0);
    let issued = ops.len() as u64;
    let succeeded = ok.len() as u64;
    let counted = issued.saturating_sub(lost);
    let kad = finds.then(|| {
        let mut k: Vec<f64> = ops.iter().filter_map(|o| o.kad_requests).map(f64::from).collect();
        k.sort_by(f64::total_cmp);
        json!({"mean": mean(&k), "p50": percentile(&k, 0.5), "p99": percentile(&k, 0.99)})
    });
    Summary {
        asked,
        issued,
        succeeded,
        failed: issued - succeeded,
        failed_by_reason,
        lost_with_their_node: lost,
        success_rate: if counted == 0 { 0.0 } else { succeeded as f64 / counted as f64 },
        latency_ms: Latency {
            p50: percentile(&ok, 0.5).unwrap_or(0.0),
            p90: percentile(&ok, 0.9).unwrap_or(0.0),
            p99: percentile(&ok, 0.99).unwrap_or(0.0),
            max: ok.last().copied().unwrap_or(0.0),
        },
        max_late_ms: ops.iter().map(|o| o.late_ms).max().unwrap_or(0),
        histogram: histogram(&ok),
        answered_from: finds.then(|| {
            let replica = ops.iter().filter(|o| o.from_replica == Some(true)).count() as u64;
            let kademlia = ops.iter().filter(|o| o.from_replica == Some(false)).count() as u64;
            BTreeMap::from([("replica".to_owned(), replica), ("kademlia".to_owned(), kademlia)])
        }),
        kad_requests_per_find: kad,
    }
}

/// The nearest-rank percentile of sorted `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn builtin(name: &str) -> Option<Builtin> {
    Builtin::ALL.iter().copied().find(|b| b.name() == name)
}

pub(crate) fn take<T>(m: Arc<Mutex<Vec<T>>>) -> Vec<T> {
    std::mem::take(&mut *lock(&m))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn summaries_count_what_happened() {
        let op = |second, failure: Option<&str>, latency_ms| Op {
            second,
            late_ms: 0,
            latency_ms,
            failure: failure.map(str::to_owned),
            kad_requests: Some(2),
            from_replica: Some(true),
        };
        let ops = vec![
            op(0, None, 5.0),
            op(0, Some("Timeout"), 0.0),
            op(1, Some(LOST), 0.0),
            op(1, None, 7.0),
        ];
        let s = summary(&ops, 4, true);
        assert_eq!(
            (s.asked, s.issued, s.succeeded, s.failed, s.lost_with_their_node),
            (4, 4, 2, 2, 1)
        );
        assert!((s.success_rate - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.failed_by_reason.get("Timeout"), Some(&1));
        assert_eq!(s.latency_ms.max, 7.0);
        let mut series: Vec<Second> = (0..2).map(|t| Second { t, ..Second::default() }).collect();
        fill(&mut series, &ops, |s, f| {
            s.calls_issued = f.issued;
            s.calls_succeeded = f.ok;
            s.calls_lost = f.lost;
            s.call_p50_ms = f.p50;
        });
        assert_eq!(
            (series[0].calls_issued, series[0].calls_succeeded, series[0].call_p50_ms),
            (2, 1, Some(5.0))
        );
        assert_eq!(
            (series[1].calls_issued, series[1].calls_succeeded, series[1].calls_lost),
            (2, 1, 1)
        );
    }

    #[test]
    fn histograms_put_each_latency_in_one_bucket() {
        let h = histogram(&[0.05, 0.1, 0.11, 5.0, 1e9]);
        assert_eq!(h.len(), 62);
        assert_eq!(h.iter().map(|b| b.count).sum::<u64>(), 5);
        assert_eq!(h[0].count, 2, "0.05 and 0.1 are at or under 0.1 ms");
        assert_eq!(h[1].count, 1);
        assert_eq!(h.last().map(|b| b.count), Some(1));
        let five = h.iter().position(|b| b.le_ms >= 5.0).unwrap_or(0);
        assert_eq!(h[five].count, 1);
    }

    #[test]
    fn choose_picks_distinct_items() {
        let mut rng = Rng::new(3);
        let picked = rng.choose(&[1, 2, 3, 4, 5], 3);
        assert_eq!(picked.len(), 3);
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 3);
        assert_eq!(rng.choose(&[1], 3), [1]);
    }
}
