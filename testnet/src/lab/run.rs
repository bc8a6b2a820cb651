//! `lab run SCENARIO.toml`: a topology with a `[run]` table is brought up, its private hosts are
//! waited for (private, a relay reservation, their capability published), then a bare libp2p
//! request-response baseline is measured between two public hosts over the lab's own links, then
//! finds and calls are issued on a fixed schedule from random hosts to the `named` capability of
//! random other hosts (so every call's NAT pair is known), and the lab is taken down. The report
//! (`report.json`, `report.md` in the output directory) gives find and call p50 / p99, finds by
//! source (replica / Kademlia), calls by path (direct between public nodes, hole-punched,
//! relayed), hole-punch success by NAT pair, and those figures as ratios to the baseline.
//!
//! Everything goes through the nodes' CLI inside their namespaces (`lab cli`), as an operator's
//! would; a call's and a find's time is what the node reports (`elapsed_ms`), not the CLI's
//! process start.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    HostEntry, LabError, LabManifest, cli_output, io,
    net::{Shaper, ShaperChoice},
    topology::Nat,
};
use crate::{baseline::Baseline, replicas::latency, rng::Rng, run::Latency};

/// The `[run]` table of a lab scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// How long finds and calls are issued, in seconds.
    pub duration_secs: u32,
    /// Finds per second (by capability id).
    pub find_rate: f64,
    /// Calls per second.
    pub call_rate: f64,
    /// Most operations in flight.
    #[serde(default = "eight")]
    pub concurrency: u32,
    /// Longest wait for every private host to be private with a reservation, in seconds.
    #[serde(default = "five_minutes")]
    pub ready_timeout_secs: u32,
    /// Bare request-response round trips measured for the baseline.
    #[serde(default = "two_hundred")]
    pub baseline_samples: u32,
    /// Picks callers and providers.
    #[serde(default = "one")]
    pub seed: u64,
}

fn eight() -> u32 {
    8
}
fn five_minutes() -> u32 {
    300
}
fn two_hundred() -> u32 {
    200
}
fn one() -> u64 {
    1
}

impl RunSpec {
    /// Checks the bounds (the error says what to fix).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.duration_secs) {
            return Err("[run] duration_secs: 1 to 3600".into());
        }
        for (name, rate) in [("find_rate", self.find_rate), ("call_rate", self.call_rate)] {
            if !(0.0..=100.0).contains(&rate) {
                return Err(format!("[run] {name}: 0 to 100 per second"));
            }
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err("[run] concurrency: 1 to 256".into());
        }
        if !(1..=10_000).contains(&self.baseline_samples) {
            return Err("[run] baseline_samples: 1 to 10000".into());
        }
        Ok(())
    }
}

/// Where a host is: on the public segment, or behind a NAT of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    Public,
    Eim,
    Symmetric,
}

/// Operation counts and times.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpSummary {
    pub asked: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failures by their first line (CLI error or reason), most common first.
    pub errors: Vec<(String, u64)>,
    pub ms: Option<Latency>,
}

/// Calls over one kind of path.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PathSummary {
    pub calls: u64,
    pub ms: Option<Latency>,
}

/// Hole punching between hosts behind NATs of two kinds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PunchSummary {
    /// Host pairs (behind different routers) that had a call between them.
    pub pairs: u64,
    /// Of those, connected directly by a hole punch by the end of the load.
    pub punched: u64,
    pub share: f64,
}

/// A lab run's report (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabReport {
    pub scenario: String,
    pub run: String,
    pub shaper: Shaper,
    pub hosts: usize,
    pub routers: BTreeMap<String, usize>,
    pub spec: RunSpec,
    /// Private hosts private with a reservation (and providers published) when the load began.
    pub ready: usize,
    pub private_hosts: usize,
    pub ready_secs: f64,
    /// TCP handshake round trip between the baseline's two public hosts, ms.
    pub tcp_rtt_ms: Option<Latency>,
    /// Bare libp2p request-response between the same two hosts, over the same links.
    pub baseline: Option<Baseline>,
    pub baseline_hosts: (String, String),
    pub finds: OpSummary,
    /// Finds by the source of their first hit.
    pub finds_by_source: BTreeMap<String, PathSummary>,
    pub calls: OpSummary,
    /// Successful calls by the caller's connection to the provider when the call started:
    /// `public` (a direct connection, at least one side public), `hole_punched`, `relayed`,
    /// `lan` (two hosts behind one router), `new` (none: the call connected), `unknown`.
    pub calls_by_path: BTreeMap<String, PathSummary>,
    /// Calls by where caller and provider are (`public→eim`, `eim→symmetric`, …): asked, ok.
    pub calls_by_places: BTreeMap<String, (u64, u64)>,
    /// The relay hosts' relay counters at the end (`libp2p_relay_*` lines of their metrics
    /// that are not zero): circuits and reservations accepted and denied.
    pub relay_metrics: BTreeMap<String, Vec<String>>,
    /// Hole-punch success by NAT pair (`eim-eim`, `eim-symmetric`, `symmetric-symmetric`).
    pub hole_punch: BTreeMap<String, PunchSummary>,
    /// Figures over the baseline's p50 (or over the public call p50): see `markdown`.
    pub ratios: BTreeMap<String, f64>,
    /// Frames the delay line carried and dropped, when it shaped the links.
    pub delay_frames: Option<(u64, u64)>,
    pub wall_secs: f64,
}

/// One finished operation.
#[derive(Debug, Clone)]
struct Done {
    find: bool,
    caller: usize,
    provider: usize,
    ok: bool,
    ms: f64,
    /// Find: the first hit's source; call: the path (the caller's connection to the provider
    /// before the call; `new` if there was none).
    kind: String,
    /// Call: the caller's connection to the provider right after the call.
    after: String,
    error: String,
}

impl Done {
    /// A find (`find`) or a call from `caller` to `provider`, not done yet.
    fn new(find: bool, caller: usize, provider: usize) -> Self {
        Self {
            find,
            caller,
            provider,
            ok: false,
            ms: 0.0,
            kind: String::new(),
            after: String::new(),
            error: String::new(),
        }
    }
}

/// `lab run`: up, wait, baseline, load, report, down (also when something fails).
pub async fn run(
    dir: &Path,
    scenario: &Path,
    capmesh: &Path,
    shaper: ShaperChoice,
    out: &Path,
) -> Result<LabReport, LabError> {
    let t = super::topology::Topology::load(scenario)?;
    let spec = t.run.clone().ok_or_else(|| {
        LabError::Topology(format!("{}: no [run] table (lab run needs one)", scenario.display()))
    })?;
    let started = Instant::now();
    let m = match super::up(dir, scenario, capmesh, shaper).await {
        Ok(m) => m,
        Err(e) => return Err(e),
    };
    let result = measure(&m, scenario, spec, started).await;
    let down = super::down(&m.dir).await;
    let report = result?;
    down?;
    std::fs::create_dir_all(out).map_err(io(format!("cannot create {}", out.display())))?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| LabError::Io {
        what: "cannot encode the report".into(),
        source: std::io::Error::other(e),
    })?;
    let path = out.join("report.json");
    std::fs::write(&path, json).map_err(io(format!("cannot write {}", path.display())))?;
    let path = out.join("report.md");
    std::fs::write(&path, markdown(&report))
        .map_err(io(format!("cannot write {}", path.display())))?;
    Ok(report)
}

fn place(m: &LabManifest, h: &HostEntry) -> Place {
    match h.behind.as_ref().and_then(|b| m.routers.iter().find(|r| &r.name == b)).map(|r| r.nat) {
        None => Place::Public,
        Some(Nat::Eim) => Place::Eim,
        Some(Nat::Symmetric) => Place::Symmetric,
    }
}

async fn json(m: &LabManifest, h: &HostEntry, args: &[&str]) -> Option<Value> {
    let out = cli_output(&m.capmesh, h, args).await.ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

async fn measure(
    m: &LabManifest,
    scenario: &Path,
    spec: RunSpec,
    started: Instant,
) -> Result<LabReport, LabError> {
    // 1. Ready: every private host private with a reservation, every named provider published.
    let ready_started = Instant::now();
    let deadline = ready_started + Duration::from_secs(u64::from(spec.ready_timeout_secs));
    let private: Vec<usize> = (0..m.hosts.len()).filter(|&i| m.hosts[i].behind.is_some()).collect();
    let mut caps: Vec<Option<String>> = vec![None; m.hosts.len()];
    let mut ready;
    loop {
        let (mut all, mut private_ready) = (0, 0);
        for (i, h) in m.hosts.iter().enumerate() {
            let Some(s) = json(m, h, &["status", "--json"]).await else { continue };
            if caps[i].is_none() && !h.serves.is_empty() {
                caps[i] = s["published"][0].as_str().map(String::from);
            }
            let reserved = s["relay_reservations"].as_array().is_some_and(|a| !a.is_empty());
            let reachable = h.behind.is_none() || (s["reachability"] == "private" && reserved);
            if reachable && (h.serves.is_empty() || caps[i].is_some()) {
                all += 1;
                private_ready += usize::from(h.behind.is_some());
            }
        }
        ready = private_ready;
        if all == m.hosts.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ready_secs = ready_started.elapsed().as_secs_f64();
    tracing::info!(ready, of = private.len(), secs = ready_secs, "lab run: hosts ready");

    // 2. Baseline between two public hosts, other than the bootstrap host if there are three.
    let public: Vec<usize> = (0..m.hosts.len()).filter(|&i| m.hosts[i].behind.is_none()).collect();
    let pair = match public.as_slice() {
        [_, a, b, ..] => Some((*a, *b)),
        [a, b] => Some((*a, *b)),
        _ => None,
    };
    let (mut baseline, mut tcp_rtt_ms, mut baseline_hosts) =
        (None, None, (String::new(), String::new()));
    if let Some((a, b)) = pair {
        let (ha, hb) = (&m.hosts[a], &m.hosts[b]);
        baseline_hosts = (ha.name.clone(), hb.name.clone());
        let rtt = super::tcp_rtt(&m.dir, &ha.name, &hb.name, 20).await?;
        let mut ms: Vec<f64> = rtt.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        tcp_rtt_ms = Some(latency(&ms));
        baseline = Some(bare_rpc(ha, hb, spec.baseline_samples as usize).await?);
    }

    // 3. The load: finds and calls on a fixed schedule.
    let providers: Vec<usize> = (0..m.hosts.len()).filter(|&i| caps[i].is_some()).collect();
    let mut rng = Rng::new(spec.seed);
    let mut schedule: Vec<(Duration, bool, usize, usize)> = Vec::new();
    let duration = f64::from(spec.duration_secs);
    for (find, rate) in [(true, spec.find_rate), (false, spec.call_rate)] {
        let n = (rate * duration).round() as u64;
        for k in 0..n {
            if providers.is_empty() || m.hosts.len() < 2 {
                break;
            }
            let provider = providers[rng.below(providers.len())];
            let mut caller = rng.below(m.hosts.len() - 1);
            if caller >= provider {
                caller += 1;
            }
            let at = Duration::from_secs_f64(k as f64 / rate);
            schedule.push((at, find, caller, provider));
        }
    }
    schedule.sort_by_key(|s| s.0);
    let limit = Arc::new(tokio::sync::Semaphore::new(spec.concurrency as usize));
    let caps = Arc::new(caps);
    let manifest = Arc::new(m.clone());
    let load_started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (at, find, caller, provider) in schedule {
        tokio::time::sleep_until(load_started + at).await;
        let Ok(permit) = limit.clone().acquire_owned().await else { break };
        let (m, caps) = (manifest.clone(), caps.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let cap = caps[provider].clone().unwrap_or_default();
            if find {
                one_find(&m, caller, provider, &cap).await
            } else {
                one_call(&m, caller, provider, &cap).await
            }
        });
    }
    let mut done = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(d) = r {
            done.push(d);
        }
    }

    // 4. Hole punching by NAT pair: each pair of hosts behind different routers that had a
    // call, punched if the caller saw a hole-punched connection to the provider after one of
    // its calls or sees one now (after the load; an idle connection may have closed since).
    let mut pairs: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for d in done.iter().filter(|d| !d.find && d.ok) {
        let (a, b) = (&m.hosts[d.caller], &m.hosts[d.provider]);
        if a.behind.is_some() && b.behind.is_some() && a.behind != b.behind {
            *pairs.entry((d.caller, d.provider)).or_default() |= d.after == "hole_punched";
        }
    }
    let mut hole_punch: BTreeMap<String, PunchSummary> = BTreeMap::new();
    for ((caller, provider), seen) in &pairs {
        let kind =
            if *seen { "hole_punched".into() } else { connection(m, *caller, *provider).await };
        let mut places = [place(m, &m.hosts[*caller]), place(m, &m.hosts[*provider])];
        places.sort();
        let key = format!("{}-{}", place_name(places[0]), place_name(places[1]));
        let s = hole_punch.entry(key).or_default();
        s.pairs += 1;
        if kind == "hole_punched" {
            s.punched += 1;
        }
    }
    for s in hole_punch.values_mut() {
        s.share = s.punched as f64 / s.pairs.max(1) as f64;
    }

    let mut relay_metrics = BTreeMap::new();
    for h in m.hosts.iter().filter(|h| h.relay_server) {
        let lines = metrics(h).await.unwrap_or_else(|e| vec![e]);
        relay_metrics.insert(h.name.clone(), lines);
    }
    let (finds, calls): (Vec<&Done>, Vec<&Done>) = done.iter().partition(|d| d.find);
    let mut calls_by_places: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for d in &calls {
        let key = format!(
            "{}→{}",
            place_name(place(m, &m.hosts[d.caller])),
            place_name(place(m, &m.hosts[d.provider]))
        );
        let e = calls_by_places.entry(key).or_default();
        e.0 += 1;
        e.1 += u64::from(d.ok);
    }
    let calls_by_path = by_kind(&calls, |d| d.kind.clone());
    let finds_by_source = by_kind(&finds, |d| d.kind.clone());
    let finds = summary(&finds);
    let calls = summary(&calls);
    let mut ratios = BTreeMap::new();
    if let Some(bare) = baseline.as_ref().map(|b| b.bare_rpc_ms.p50).filter(|p| *p > 0.0) {
        for (name, v) in [
            ("find_p50_over_bare_rpc_p50", finds.ms.as_ref().map(|l| l.p50)),
            ("call_p50_over_bare_rpc_p50", calls.ms.as_ref().map(|l| l.p50)),
        ] {
            if let Some(v) = v {
                ratios.insert(name.to_string(), v / bare);
            }
        }
        for (path, s) in &calls_by_path {
            if let Some(l) = &s.ms {
                ratios.insert(format!("call_{path}_p50_over_bare_rpc_p50"), l.p50 / bare);
            }
        }
    }
    let p50 = |k: &str| calls_by_path.get(k).and_then(|s| s.ms.as_ref()).map(|l| l.p50);
    if let (Some(public), Some(punched)) = (p50("public"), p50("hole_punched")) {
        ratios.insert("call_hole_punched_p50_over_call_public_p50".into(), punched / public);
    }
    if let (Some(public), Some(relayed)) = (p50("public"), p50("relayed")) {
        ratios.insert("call_relayed_p50_over_call_public_p50".into(), relayed / public);
    }
    let mut routers = BTreeMap::new();
    for r in &m.routers {
        *routers.entry(format!("{:?}", r.nat).to_lowercase()).or_insert(0) += 1;
    }
    Ok(LabReport {
        scenario: scenario.display().to_string(),
        run: m.run.clone(),
        shaper: m.shaper,
        hosts: m.hosts.len(),
        routers,
        spec,
        ready,
        private_hosts: private.len(),
        ready_secs,
        tcp_rtt_ms,
        baseline,
        baseline_hosts,
        finds,
        finds_by_source,
        calls,
        calls_by_path,
        calls_by_places,
        relay_metrics,
        hole_punch,
        ratios,
        delay_frames: super::delay::DelayStatus::load(&m.dir).map(|d| d.totals()),
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

/// The non-zero `libp2p_relay_*` counters of `host`'s metrics endpoint (its `metrics.addr`,
/// on 127.0.0.1 inside its namespace), fetched from a thread that entered the namespace.
async fn metrics(host: &HostEntry) -> Result<Vec<String>, String> {
    let addr = std::fs::read_to_string(host.data_dir.join("metrics.addr"))
        .map_err(|e| format!("no metrics.addr: {e}"))?;
    let addr: std::net::SocketAddr = addr.trim().parse().map_err(|e| format!("{addr}: {e}"))?;
    let ns = host.ns.clone();
    let text = tokio::task::spawn_blocking(move || -> Result<String, String> {
        use std::io::{Read, Write};
        let thread = std::thread::spawn(move || -> Result<String, String> {
            let target =
                std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
            nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| e.to_string())?;
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut body = String::new();
            s.take(1 << 22).read_to_string(&mut body).map_err(|e| e.to_string())?;
            Ok(body)
        });
        thread.join().map_err(|_| "the metrics thread panicked".to_string())?
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("libp2p_relay") && !l.ends_with(" 0"))
        .map(String::from)
        .collect())
}

fn place_name(p: Place) -> &'static str {
    match p {
        Place::Public => "public",
        Place::Eim => "eim",
        Place::Symmetric => "symmetric",
    }
}

/// How `caller` is connected to `provider` (`capmesh peers --json`): direct, relayed,
/// hole_punched or none.
async fn connection(m: &LabManifest, caller: usize, provider: usize) -> String {
    let peers = json(m, &m.hosts[caller], &["peers", "--json"]).await.unwrap_or(Value::Null);
    peers
        .as_array()
        .and_then(|a| a.iter().find(|p| p["peer_id"] == m.hosts[provider].peer_id.as_str()))
        .and_then(|p| p["connection"].as_str())
        .unwrap_or("none")
        .to_string()
}

async fn one_find(m: &LabManifest, caller: usize, provider: usize, cap: &str) -> Done {
    let mut d = Done::new(true, caller, provider);
    let out =
        cli_output(&m.capmesh, &m.hosts[caller], &["find", cap, "--timeout-ms", "10000", "--json"])
            .await;
    let Ok(out) = out else {
        d.error = "cli did not start".into();
        return d;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let hit = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["hit"]["provider"] == m.hosts[provider].peer_id.as_str());
    match hit {
        Some(v) => {
            d.ok = true;
            d.ms = v["hit"]["elapsed_ms"].as_f64().unwrap_or_default();
            d.kind = v["hit"]["source"].as_str().unwrap_or("unknown").to_string();
        }
        None => {
            d.error = first_line(&out.stderr).unwrap_or_else(|| "no hit naming the provider".into())
        }
    }
    d
}

async fn one_call(m: &LabManifest, caller: usize, provider: usize, cap: &str) -> Done {
    let mut d = Done::new(false, caller, provider);
    let args = ["call", cap, "--args", r#"{"text":"lab run"}"#, "--deadline", "30s", "--json"];
    // The path a call runs on is the connection it finds: one DCUtR makes during the call
    // serves the calls after it.
    let before = connection(m, caller, provider).await;
    let Ok(out) = cli_output(&m.capmesh, &m.hosts[caller], &args).await else {
        d.error = "cli did not start".into();
        return d;
    };
    let answer: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    match answer
        .filter(|a| out.status.success() && a["provider"] == m.hosts[provider].peer_id.as_str())
    {
        Some(a) => {
            d.ok = true;
            d.ms = a["elapsed_ms"].as_f64().unwrap_or_default();
            let (ca, pa) = (&m.hosts[caller], &m.hosts[provider]);
            d.after = connection(m, caller, provider).await;
            d.kind = match before.as_str() {
                "none" => "new".into(),
                "relayed" => "relayed".into(),
                "hole_punched" => "hole_punched".into(),
                "direct" if ca.behind.is_some() && ca.behind == pa.behind => "lan".into(),
                "direct" => "public".into(),
                _ => "unknown".into(),
            };
        }
        None => {
            d.error = first_line(&out.stderr)
                .unwrap_or_else(|| "the answer names another provider or is not JSON".into())
        }
    }
    d
}

/// The first line of an error, peer ids replaced by `<peer>` (so failures group), at most 300
/// characters.
fn first_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let words: Vec<&str> =
        line.split(' ')
            .map(|w| {
                if w.trim_end_matches([':', ',', ';']).starts_with("12D3KooW") {
                    "<peer>"
                } else {
                    w
                }
            })
            .collect();
    Some(words.join(" ").chars().take(300).collect())
}

fn summary(ops: &[&Done]) -> OpSummary {
    let mut ms: Vec<f64> = ops.iter().filter(|d| d.ok).map(|d| d.ms).collect();
    ms.sort_by(f64::total_cmp);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for d in ops.iter().filter(|d| !d.ok) {
        *errors.entry(d.error.clone()).or_default() += 1;
    }
    let mut errors: Vec<(String, u64)> = errors.into_iter().collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.1));
    OpSummary {
        asked: ops.len() as u64,
        succeeded: ms.len() as u64,
        failed: (ops.len() - ms.len()) as u64,
        errors,
        ms: (!ms.is_empty()).then(|| latency(&ms)),
    }
}

fn by_kind(ops: &[&Done], kind: impl Fn(&Done) -> String) -> BTreeMap<String, PathSummary> {
    let mut groups: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for d in ops.iter().filter(|d| d.ok) {
        groups.entry(kind(d)).or_default().push(d.ms);
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            (k, PathSummary { calls: v.len() as u64, ms: Some(latency(&v)) })
        })
        .collect()
}

/// Bare libp2p request-response between `server` and `client`, each side's service on a
/// thread that entered its host's namespace (so its sockets are there): the baseline's
/// handler and message sizes (`baseline.rs`), over the lab's links.
async fn bare_rpc(
    client: &HostEntry,
    server: &HostEntry,
    samples: usize,
) -> Result<Baseline, LabError> {
    use capmesh_net::{Multiaddr, NetworkService};
    use capmesh_types::NodeKey;
    use tokio_util::sync::CancellationToken;

    use crate::baseline::{Fixed, REQUEST_BYTES, RESPONSE_BYTES};

    const BASELINE_PORT: u16 = super::PORT + 1;
    let fail = |detail: String| LabError::Tool { tool: "lab run baseline".into(), detail };
    let cancel = CancellationToken::new();
    let (server_key, client_key) = (NodeKey::from_seed([0xb2; 32]), NodeKey::from_seed([0xa1; 32]));
    let server_id = server_key.peer_id();
    let server_addr: Multiaddr = format!("/ip4/{}/tcp/{BASELINE_PORT}", server.addr)
        .parse()
        .map_err(|e| fail(format!("{e}")))?;
    let client_addr: Multiaddr = format!("/ip4/{}/tcp/{BASELINE_PORT}", client.addr)
        .parse()
        .map_err(|e| fail(format!("{e}")))?;
    let config = |listen: Multiaddr| {
        capmesh_net::Config::default().with_listen(vec![listen]).with_gossip(false)
    };
    let server_config = config(server_addr.clone());
    let server_cancel = cancel.clone();
    let server_thread = in_namespace(&server.ns, move || async move {
        let (svc, _handle) =
            NetworkService::new(&server_key, server_config).map_err(|e| e.to_string())?;
        svc.run(Fixed(Arc::new(vec![7; RESPONSE_BYTES])), server_cancel).await;
        Ok::<Vec<f64>, String>(Vec::new())
    });
    let client_config = config(client_addr);
    let client_cancel = cancel.clone();
    let client_thread = in_namespace(&client.ns, move || async move {
        let (svc, handle) =
            NetworkService::new(&client_key, client_config).map_err(|e| e.to_string())?;
        let run = tokio::spawn(svc.run(Fixed(Arc::new(Vec::new())), client_cancel.child_token()));
        let body = vec![5; REQUEST_BYTES];
        // The first request dials (the server may still be binding: a few tries).
        let mut connected = Err(String::from("not tried"));
        for _ in 0..50 {
            connected = handle
                .request(server_id, vec![server_addr.clone()], body.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
            if connected.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut rtt = Vec::with_capacity(samples);
        if connected.is_ok() {
            for _ in 0..samples {
                let t = Instant::now();
                if let Err(e) = handle.request(server_id, Vec::new(), body.clone()).await {
                    connected = Err(e.to_string());
                    break;
                }
                rtt.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        client_cancel.cancel();
        let _ = run.await;
        connected.map(|()| rtt)
    });
    let joined = tokio::task::spawn_blocking(move || {
        let client = client_thread.join().map_err(|_| "the client thread panicked".to_string());
        cancel.cancel();
        let server = server_thread.join().map_err(|_| "the server thread panicked".to_string());
        (client, server)
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    let mut rtt = joined.0.map_err(fail)?.map_err(fail)?;
    joined.1.map_err(fail)?.map_err(fail)?;
    rtt.sort_by(f64::total_cmp);
    Ok(Baseline {
        bare_rpc_ms: latency(&rtt),
        samples: rtt.len(),
        request_bytes: REQUEST_BYTES,
        response_bytes: RESPONSE_BYTES,
    })
}

/// Runs `work` on a new thread that entered namespace `ns` first, on a current-thread runtime
/// of its own (every socket it makes, and every thread it starts, is in `ns`).
fn in_namespace<F, Fut>(ns: &str, work: F) -> std::thread::JoinHandle<Result<Vec<f64>, String>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<f64>, String>>,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let target =
            std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| format!("{ns}: {e}"))?;
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {ns}: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(work())
    })
}

/// The report as markdown (`report.md`).
pub fn markdown(r: &LabReport) -> String {
    let f = |l: &Option<Latency>| {
        l.as_ref().map_or("-".into(), |l| format!("{:.1} / {:.1}", l.p50, l.p99))
    };
    let mut s = format!(
        "# Lab run {} ({})\n\n{} hosts, routers {:?}; links shaped by {:?}; {} of {} private hosts ready \
         after {:.0} s; load {} s: {} finds/s, {} calls/s, {} in flight at most; {:.0} s in all.\n\n",
        r.run,
        r.scenario,
        r.hosts,
        r.routers,
        r.shaper,
        r.ready,
        r.private_hosts,
        r.ready_secs,
        r.spec.duration_secs,
        r.spec.find_rate,
        r.spec.call_rate,
        r.spec.concurrency,
        r.wall_secs
    );
    s.push_str(&format!(
        "Baseline between public hosts {} and {} over the lab's links: TCP handshake p50 / p99 {} ms; \
         bare libp2p request-response p50 / p99 {} ms.\n\n",
        r.baseline_hosts.0,
        r.baseline_hosts.1,
        f(&r.tcp_rtt_ms),
        f(&r.baseline.as_ref().map(|b| b.bare_rpc_ms)),
    ));
    s.push_str("| operation | asked | ok | failed | p50 / p99 ms |\n|---|---|---|---|---|\n");
    for (name, o) in [("find", &r.finds), ("call", &r.calls)] {
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            o.asked,
            o.succeeded,
            o.failed,
            f(&o.ms)
        ));
    }
    s.push_str("\n| finds by source | n | p50 / p99 ms |\n|---|---|---|\n");
    for (k, p) in &r.finds_by_source {
        s.push_str(&format!("| {k} | {} | {} |\n", p.calls, f(&p.ms)));
    }
    let total: u64 = r.calls_by_path.values().map(|p| p.calls).sum();
    s.push_str("\n| calls by path | n | share | p50 / p99 ms |\n|---|---|---|---|\n");
    for (k, p) in &r.calls_by_path {
        s.push_str(&format!(
            "| {k} | {} | {:.0} % | {} |\n",
            p.calls,
            100.0 * p.calls as f64 / total.max(1) as f64,
            f(&p.ms)
        ));
    }
    s.push_str("\n| calls by places (caller→provider) | asked | ok |\n|---|---|---|\n");
    for (k, (asked, ok)) in &r.calls_by_places {
        s.push_str(&format!("| {k} | {asked} | {ok} |\n"));
    }
    s.push_str("\n| hole punch by NAT pair | pairs | punched | share |\n|---|---|---|---|\n");
    for (k, p) in &r.hole_punch {
        s.push_str(&format!("| {k} | {} | {} | {:.0} % |\n", p.pairs, p.punched, 100.0 * p.share));
    }
    s.push_str("\n| ratio | value |\n|---|---|\n");
    for (k, v) in &r.ratios {
        s.push_str(&format!("| {k} | {v:.2} |\n"));
    }
    for (what, o) in [("find", &r.finds), ("call", &r.calls)] {
        for (e, n) in &o.errors {
            s.push_str(&format!("\n{what} failure ×{n}: {e}"));
        }
    }
    for (relay, lines) in &r.relay_metrics {
        s.push_str(&format!("\n\nRelay {relay}: {}", lines.join("; ")));
    }
    if let Some((carried, dropped)) = r.delay_frames {
        s.push_str(&format!("\n\nDelay line: {carried} frames carried, {dropped} dropped.\n"));
    }
    s
}
