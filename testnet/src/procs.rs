//! Node processes: start (`up`), look at (`status`), stop (`down`), and what they use.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context;
use capmesh_types::NodeKey;
use nix::{
    sys::signal::{Signal, kill, killpg},
    unistd::Pid,
};

use crate::manifest::{Manifest, NodeEntry, node_dir};

/// The builtins a providing node serves.
pub const SERVED: [&str; 3] = ["echo", "blake3", "sleep"];

/// Longest wait for one node to answer on its API after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a node to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Nodes started at once.
const START_BATCH: usize = 8;

/// How `up` lays out a testnet.
#[derive(Debug, Clone)]
pub struct Layout {
    pub nodes: usize,
    pub seed: u64,
    /// Share of the nodes serving the builtins (at least two when there are two nodes).
    pub serve_share: f64,
}

impl Layout {
    /// How many nodes serve the builtins (they are the first ones).
    pub fn providers(&self) -> usize {
        let n = (self.nodes as f64 * self.serve_share).ceil() as usize;
        n.max(2.min(self.nodes)).min(self.nodes)
    }
}

/// Node `index`'s key: derived from the seed, so a testnet with the same seed has the same ids.
pub fn node_key(seed: u64, index: usize) -> NodeKey {
    let mut hasher = blake3::Hasher::new_derive_key("capmesh-testnet 2026 node key");
    hasher.update(&seed.to_le_bytes());
    hasher.update(&(index as u64).to_le_bytes());
    NodeKey::from_seed(*hasher.finalize().as_bytes())
}

/// The config.toml of node `index`: loopback TCP on any port, addresses announced, Kademlia
/// server, bootstrap from `bootstrap`, and the builtins if it is a provider (prices differ by
/// node so that selection has something to choose).
pub fn node_config(index: usize, provider: bool, bootstrap: &[String]) -> String {
    let mut c = String::new();
    c.push_str("[network]\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nannounce_listen_addrs = true\nkad_mode = \"server\"\n");
    c.push_str(&format!("bootstrap = {}\n", toml_list(bootstrap)));
    c.push_str("\n[api]\nlisten = \"127.0.0.1:0\"\n");
    if provider {
        for name in SERVED {
            c.push_str(&format!(
                "\n[[serve]]\nruntime = {{ type = \"builtin\", name = \"{name}\" }}\nprice_amount = {}\nprice_unit = \"credit\"\nconcurrency = 64\n",
                1 + index % 5
            ));
        }
    }
    c
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Kills a node's process group when dropped, unless disarmed: a node that was started but
/// never handed over (an error, a cancelled start, ctrl-c) does not outlive the start.
struct StartGuard {
    pid: Option<u32>,
}

impl StartGuard {
    fn disarm(mut self) {
        self.pid = None;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Starts `capmesh run` for the node in `data_dir` (its own process group, so a ctrl-c in the
/// terminal of `up` does not reach it; output to `node.log`), and waits until its API answers.
/// Returns its pid and its status. If this fails, or the future is dropped before it returns,
/// the process group is killed.
pub async fn start_node(
    capmesh: &Path,
    data_dir: &Path,
) -> anyhow::Result<(u32, capmesh_api::Status)> {
    for stale in ["api.addr", "api.token", "metrics.addr"] {
        let _ = std::fs::remove_file(data_dir.join(stale));
    }
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("node.log"))?;
    let mut command = tokio::process::Command::new(capmesh);
    command
        .arg("--data-dir")
        .arg(data_dir)
        .arg("run")
        .env("RUST_LOG", std::env::var("CAPMESH_TESTNET_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let mut child =
        command.spawn().with_context(|| format!("cannot start {}", capmesh.display()))?;
    let pid = child.id().context("the node exited at once")?;
    let guard = StartGuard { pid: Some(pid) };
    let started = Instant::now();
    loop {
        if let Ok(client) = capmesh_api::Client::from_data_dir(data_dir)
            && let Ok(status) = client.status().await
        {
            // The child runs on: nobody waits for it but `down` (tokio does not kill it).
            guard.disarm();
            drop(child);
            return Ok((pid, status));
        }
        if let Some(exit) = child.try_wait()? {
            anyhow::bail!(
                "the node in {} exited ({exit}) before answering; see {}",
                data_dir.display(),
                data_dir.join("node.log").display()
            );
        }
        if started.elapsed() > START_TIMEOUT {
            anyhow::bail!(
                "the node in {} did not answer within {START_TIMEOUT:?}",
                data_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `up`: N node directories and processes, wired to bootstrap from node 0 (and a second,
/// earlier node), the first [`Layout::providers`] serving the builtins; the manifest is
/// written after every batch, so `down` can stop what started even if `up` fails midway.
pub async fn up(dir: &Path, capmesh: &Path, layout: &Layout) -> anyhow::Result<Manifest> {
    anyhow::ensure!(layout.nodes > 0, "a testnet needs at least one node");
    anyhow::ensure!(
        !Manifest::path(dir).exists(),
        "{} already holds a testnet: `capmesh-testnet down --dir {}` first",
        dir.display(),
        dir.display()
    );
    // A node directory left from an earlier testnet would bring its key, replica and peer book
    // (with stale ports) into this one.
    if dir.join("node-000").exists() {
        anyhow::bail!(
            "{} holds node directories of an earlier testnet: remove them (or pick another --dir)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let mut manifest = Manifest {
        dir: dir.clone(),
        seed: layout.seed,
        capmesh: capmesh.to_path_buf(),
        created_ms: now_ms(),
        nodes: Vec::with_capacity(layout.nodes),
    };
    let providers = layout.providers();
    let first = start_one(&dir, capmesh, layout, 0, providers, &[]).await?;
    manifest.nodes.push(first);
    manifest.save()?;
    eprintln!("started 1/{}", layout.nodes);
    let mut index = 1;
    while index < layout.nodes {
        let batch: Vec<usize> = (index..layout.nodes.min(index + START_BATCH)).collect();
        let starts = batch.iter().map(|&i| {
            let mut bootstrap = vec![manifest.nodes[0].addr.clone()];
            // A second, already running node, so not every node hangs off node 0 alone.
            let second = (i / 2) % index;
            if second > 0 {
                bootstrap.push(manifest.nodes[second].addr.clone());
            }
            let (dir, capmesh, layout) = (dir.clone(), capmesh.to_path_buf(), layout.clone());
            async move { start_one(&dir, &capmesh, &layout, i, providers, &bootstrap).await }
        });
        let results = futures::future::join_all(starts).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(entry) => manifest.nodes.push(entry),
                Err(e) => failed = Some(e),
            }
        }
        manifest.nodes.sort_by_key(|n| n.index);
        manifest.save()?;
        if let Some(e) = failed {
            return Err(e.context("a node did not start; `capmesh-testnet down` stops the others"));
        }
        index += batch.len();
        eprintln!("started {index}/{}", layout.nodes);
    }
    Ok(manifest)
}

async fn start_one(
    dir: &Path,
    capmesh: &Path,
    layout: &Layout,
    index: usize,
    providers: usize,
    bootstrap: &[String],
) -> anyhow::Result<NodeEntry> {
    let data_dir = node_dir(dir, index);
    std::fs::create_dir_all(&data_dir)?;
    let key = node_key(layout.seed, index);
    let key_path = data_dir.join("node.key");
    if !key_path.exists() {
        key.save(&key_path)?;
    }
    let provider = index < providers;
    std::fs::write(data_dir.join("config.toml"), node_config(index, provider, bootstrap))?;
    let (pid, status) = start_node(capmesh, &data_dir).await?;
    let tcp = status
        .listen_addrs
        .iter()
        .find(|a| a.contains("/tcp/"))
        .with_context(|| format!("node {index} listens on no TCP address"))?;
    Ok(NodeEntry {
        index,
        pid,
        data_dir,
        peer_id: status.peer_id.to_string(),
        addr: format!("{tcp}/p2p/{}", status.peer_id),
        serves: if provider { SERVED.iter().map(|s| s.to_string()).collect() } else { Vec::new() },
    })
}

/// Waits until every node's replica holds at least `records` records (the providers' adverts
/// have reached everyone), polling each node's API; returns how long that took, or `None` if
/// it did not happen within `limit`.
pub async fn settle(manifest: &Manifest, records: u64, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let clients: Vec<_> = manifest
        .nodes
        .iter()
        .filter_map(|n| capmesh_api::Client::from_data_dir(&n.data_dir).ok())
        .collect();
    while started.elapsed() < limit {
        let statuses = futures::future::join_all(clients.iter().map(|c| c.status())).await;
        let done = statuses.len() == manifest.nodes.len()
            && statuses.iter().all(|s| s.as_ref().is_ok_and(|s| s.replica.records >= records));
        if done {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Whether `pid` is a live `capmesh` process of `data_dir` (not a reused pid).
pub fn alive(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (state Z) has exited.
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) {
            return false;
        }
    }
    let needle = data_dir.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == needle)
}

/// Sends `signal` to node `pid`'s process group (it leads one) if `pid` is still the node of
/// `data_dir`.
pub fn signal(pid: u32, data_dir: &Path, signal: Signal) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    alive(pid, data_dir)
        && (killpg(Pid::from_raw(raw), signal).is_ok() || kill(Pid::from_raw(raw), signal).is_ok())
}

/// Processes whose command line runs a node of the testnet in `dir` (`--data-dir <dir>/node-…`),
/// known to the manifest or not: the catch-all of `down`.
pub fn strays(dir: &Path) -> Vec<(u32, PathBuf)> {
    let prefix = dir.join("node-");
    let prefix = prefix.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return found };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        for pair in args.windows(2) {
            if pair[0] == b"--data-dir" && pair[1].starts_with(prefix) {
                let data_dir = PathBuf::from(String::from_utf8_lossy(pair[1]).into_owned());
                if alive(pid, &data_dir) {
                    found.push((pid, data_dir));
                }
            }
        }
    }
    found
}

/// `down`: SIGTERM to every node, SIGKILL to those still there after [`STOP_TIMEOUT`]; then
/// checks that none is left and removes the manifest. Returns how many were stopped and how
/// many had to be killed.
pub async fn down(dir: &Path) -> anyhow::Result<(usize, usize)> {
    let manifest = Manifest::load(dir)?;
    // The manifest's nodes, and any node process of this testnet it does not know (one whose
    // start was interrupted).
    let mut targets: Vec<(u32, PathBuf)> =
        manifest.nodes.iter().map(|n| (n.pid, n.data_dir.clone())).collect();
    for stray in strays(&manifest.dir) {
        if !targets.contains(&stray) {
            targets.push(stray);
        }
    }
    let stopping: Vec<&(u32, PathBuf)> =
        targets.iter().filter(|(pid, dir)| signal(*pid, dir, Signal::SIGTERM)).collect();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && stopping.iter().any(|(pid, dir)| alive(*pid, dir)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut killed = 0;
    for (pid, dir) in &stopping {
        if signal(*pid, dir, Signal::SIGKILL) {
            killed += 1;
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && targets.iter().any(|(pid, dir)| alive(*pid, dir)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut left: Vec<u32> =
        targets.iter().filter(|(pid, dir)| alive(*pid, dir)).map(|(pid, _)| *pid).collect();
    left.extend(strays(&manifest.dir).into_iter().map(|(pid, _)| pid));
    anyhow::ensure!(left.is_empty(), "processes still running after SIGKILL: {left:?}");
    std::fs::remove_file(Manifest::path(dir))?;
    Ok((stopping.len(), killed))
}

/// What `/proc` says a process uses: resident memory (KiB) and CPU time (clock ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub cpu_ticks: u64,
}

/// The usage of `pid` now, if it runs.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the state (field 3).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Usage { rss_kib, cpu_ticks: utime + stime })
}

/// Clock ticks per second of `/proc/<pid>/stat` times: Linux reports them in USER_HZ, which is
/// 100 on every architecture it runs capmesh on.
pub fn ticks_per_second() -> u64 {
    100
}

/// The `capmesh` binary to run: `explicit`, else `capmesh` beside this executable, else the
/// one on `PATH`.
pub fn find_capmesh(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.exists(), "{} does not exist", p.display());
        return Ok(p);
    }
    let beside =
        std::env::current_exe()?.with_file_name(format!("capmesh{}", std::env::consts::EXE_SUFFIX));
    if beside.exists() {
        return Ok(beside);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("capmesh");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no capmesh binary beside {} or on PATH: build it (`cargo build --release -p capmesh`) or pass --capmesh",
        std::env::current_exe()?.display()
    )
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_seeded_and_distinct() {
        assert_eq!(node_key(7, 3).peer_id(), node_key(7, 3).peer_id());
        assert_ne!(node_key(7, 3).peer_id(), node_key(7, 4).peer_id());
        assert_ne!(node_key(7, 3).peer_id(), node_key(8, 3).peer_id());
    }

    #[test]
    fn providers_are_a_share_but_at_least_two() {
        let l = |nodes, serve_share| Layout { nodes, seed: 0, serve_share };
        assert_eq!(l(100, 0.2).providers(), 20);
        assert_eq!(l(3, 0.2).providers(), 2);
        assert_eq!(l(1, 0.2).providers(), 1);
        assert_eq!(l(10, 1.0).providers(), 10);
    }

    #[test]
    fn configs_parse_as_toml() {
        let text = node_config(2, true, &["/ip4/127.0.0.1/tcp/1/p2p/x".into()]);
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["serve"].as_array().map(|a| a.len()), Some(3));
        assert_eq!(v["network"]["bootstrap"][0].as_str(), Some("/ip4/127.0.0.1/tcp/1/p2p/x"));
    }

    #[test]
    fn this_process_has_usage() {
        let u = usage(std::process::id()).unwrap_or_else(|| panic!("no /proc usage"));
        assert!(u.rss_kib > 0);
        assert!(ticks_per_second() > 0);
    }
}
