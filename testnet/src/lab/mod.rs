//! The NAT lab: hosts in Linux network namespaces, one `capmesh run` process each, on a public
//! segment or behind routers that NAT with nftables (see the README's "Lab" section).
//!
//! - [`topology`]: the `scenarios/lab/*.toml` format and the address plan (198.18.0.0/15 only);
//! - [`net`]: namespaces, bridges, veth pairs, NAT rules, netem — all through `ip`, `nft`, `tc`;
//! - this module: `up` (network, node directories, processes, the manifest `lab.json` written
//!   atomically before anything is made and after each step), `down` (processes by pid with
//!   their command line checked, then every namespace named with the run's prefix), `status`,
//!   and [`cli`], which runs the `capmesh` CLI inside a host's namespace (its API listens on
//!   127.0.0.1 there).
//!
//! **Invariant:** nothing is made outside namespaces named `cmlab-<run>-…`, no address outside
//! 198.18.0.0/15 is assigned, no namespace has a default route, and nothing is attached to the
//! machine's own interfaces; `down` leaves no namespace of the run and no process of its hosts.

pub mod net;
pub mod topology;

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::procs;
use net::Link;
use topology::{Nat, Topology};

/// File name of the lab's manifest in its directory.
pub const MANIFEST: &str = "lab.json";
/// The port every node listens on (TCP and QUIC): each host has its own namespace.
pub const PORT: u16 = 4701;
/// Longest wait for a node's API to answer after its start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a node to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong in the lab; each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    #[error("the lab needs root (network namespaces, nftables): run it as root, e.g. with sudo")]
    NotRoot,
    #[error("`{tool}` is missing: install {package} (apt-get install -y {package}); .ci/run does")]
    Missing { tool: String, package: String },
    #[error("cannot run `{tool}`: {detail}")]
    Tool { tool: String, detail: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error(
        "this kernel has no netem qdisc (sch_netem): `modprobe sch_netem`, or remove latency_ms / loss_pct from the topology"
    )]
    NoNetem,
    #[error("bad topology: {0}")]
    Topology(String),
    #[error("{0} already holds a lab: `capmesh-testnet lab down --dir {0}` first")]
    AlreadyUp(String),
    #[error("{0} is a node directory of an earlier lab: remove it (or pick another --dir)")]
    Stale(String),
    #[error(
        "no lab in {0} (no lab.json): start one with `capmesh-testnet lab up TOPOLOGY.toml --dir {0}`"
    )]
    NoLab(String),
    #[error("no host {0:?} in this lab; `capmesh-testnet lab status` lists them")]
    NoHost(String),
    #[error("host {host}: {detail}")]
    Start { host: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "down left {0} behind; remove it by hand (`ip netns delete NAME`, `kill PID`) and report it"
    )]
    Leftover(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// The lab as `up` left it (`<dir>/lab.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabManifest {
    pub dir: PathBuf,
    /// Short id in every namespace name: `cmlab-<run>-…`.
    pub run: String,
    pub capmesh: PathBuf,
    pub created_ms: u64,
    /// Every namespace `up` makes (recorded before it makes them).
    pub namespaces: Vec<String>,
    pub links: Vec<Link>,
    pub routers: Vec<RouterEntry>,
    pub hosts: Vec<HostEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterEntry {
    pub name: String,
    pub ns: String,
    pub nat: Nat,
    pub public_addr: String,
    pub private_net: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostEntry {
    pub name: String,
    pub ns: String,
    /// Its address on its segment.
    pub addr: String,
    /// The router it is behind; none: public.
    pub behind: Option<String>,
    pub data_dir: PathBuf,
    pub peer_id: String,
    /// `capmesh run`'s pid, once started.
    pub pid: Option<u32>,
    pub serves: Vec<String>,
    pub relay_server: bool,
}

impl LabManifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST)
    }

    pub fn load(dir: &Path) -> Result<Self, LabError> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|_| LabError::NoLab(dir.display().to_string()))?;
        serde_json::from_str(&text).map_err(|e| LabError::Io {
            what: format!("{} is not a lab manifest", path.display()),
            source: std::io::Error::other(e),
        })
    }

    /// Writes it atomically (a crash leaves the old or the new one).
    pub fn save(&self) -> Result<(), LabError> {
        let path = Self::path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| LabError::Io {
            what: "cannot encode the lab manifest".into(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, bytes).map_err(io(format!("cannot write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("cannot write {}", path.display())))
    }

    pub fn host(&self, name: &str) -> Result<&HostEntry, LabError> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| LabError::NoHost(name.into()))
    }
}

/// A run id: 6 hex digits from the time and this process.
fn run_id() -> String {
    let mut h = blake3::Hasher::new();
    h.update(&procs::now_ms().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.finalize().to_hex()[..6].to_string()
}

/// The config.toml of a lab host.
pub fn host_config(t: &Topology, host: &topology::HostSpec, bootstrap: &[String]) -> String {
    let addr = t.host_addr(&host.name).unwrap_or_default();
    let mut c = format!(
        "[network]\nlisten = [\"/ip4/{addr}/tcp/{PORT}\", \"/ip4/{addr}/udp/{PORT}/quic-v1\"]\n\
         bootstrap = {}\n\
         # The lab is on private ranges: AutoNAT must probe them.\nautonat_allow_private = true\n",
        toml_list(bootstrap)
    );
    if host.behind.is_none() {
        c.push_str("announce_listen_addrs = true\nkad_mode = \"server\"\n");
        if host.relay_server {
            c.push_str("relay_server = true\n");
        }
    }
    c.push_str("\n[api]\nlisten = \"127.0.0.1:0\"\n");
    for name in &host.serve {
        c.push_str(&format!(
            "\n[[serve]]\nruntime = {{ type = \"builtin\", name = \"{name}\" }}\n"
        ));
    }
    c
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `lab up`: builds the network of `topology`, writes every host's node directory
/// (`<dir>/node-<host>`, keys derived from the host's position), starts the public hosts (the
/// first one first: it is everyone's bootstrap peer), then the others. The manifest is written
/// before anything is made; if `up` fails, what it made is taken down before it returns.
pub async fn up(dir: &Path, topology_path: &Path, capmesh: &Path) -> Result<LabManifest, LabError> {
    let t = Topology::load(topology_path)?;
    net::preflight(t.uses_netem()).await?;
    if LabManifest::path(dir).exists() {
        return Err(LabError::AlreadyUp(dir.display().to_string()));
    }
    // A node directory of an earlier lab would bring its key and replica (stale adverts) in.
    if let Ok(entries) = std::fs::read_dir(dir)
        && let Some(old) =
            entries.flatten().find(|e| e.file_name().to_string_lossy().starts_with("node-"))
    {
        return Err(LabError::Stale(old.path().display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let dir = dir.canonicalize().map_err(io(format!("cannot resolve {}", dir.display())))?;
    let run = run_id();
    let seed = u64::from_str_radix(&run, 16).unwrap_or_default();
    let mut manifest = LabManifest {
        dir: dir.clone(),
        run: run.clone(),
        capmesh: capmesh.to_path_buf(),
        created_ms: procs::now_ms(),
        namespaces: net::planned(&run, &t),
        links: Vec::new(),
        routers: t
            .routers
            .iter()
            .map(|r| {
                let n = t.router_number(&r.name).unwrap_or_default();
                RouterEntry {
                    name: r.name.clone(),
                    ns: net::ns_router(&run, &r.name),
                    nat: r.nat,
                    public_addr: t.router_public_addr(&r.name).unwrap_or_default(),
                    private_net: format!("198.18.{n}.0/24"),
                }
            })
            .collect(),
        hosts: t
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| HostEntry {
                name: h.name.clone(),
                ns: net::ns_host(&run, &h.name),
                addr: t.host_addr(&h.name).unwrap_or_default(),
                behind: h.behind.clone(),
                data_dir: dir.join(format!("node-{}", h.name)),
                peer_id: procs::node_key(seed, i).peer_id().to_string(),
                pid: None,
                serves: h.serve.clone(),
                relay_server: h.relay_server,
            })
            .collect(),
    };
    manifest.save()?;
    match bring_up(&mut manifest, &t, seed).await {
        Ok(()) => Ok(manifest),
        Err(e) => {
            let _ = manifest.save();
            if let Err(down_error) = down(&dir).await {
                tracing::warn!("taking the failed lab down: {down_error}");
            }
            Err(e)
        }
    }
}

async fn bring_up(m: &mut LabManifest, t: &Topology, seed: u64) -> Result<(), LabError> {
    m.links = net::build(&m.run, t).await?;
    m.save()?;
    let boot = t.bootstrap_host().map(|h| h.name.clone()).unwrap_or_default();
    let boot_entry = m.host(&boot)?.clone();
    let bootstrap = [
        format!("/ip4/{}/tcp/{PORT}/p2p/{}", boot_entry.addr, boot_entry.peer_id),
        format!("/ip4/{}/udp/{PORT}/quic-v1/p2p/{}", boot_entry.addr, boot_entry.peer_id),
    ];
    for (i, spec) in t.hosts.iter().enumerate() {
        let entry = &m.hosts[i];
        let data_dir = &entry.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(io(format!("cannot create {}", data_dir.display())))?;
        let key_path = data_dir.join("node.key");
        if !key_path.exists() {
            procs::node_key(seed, i).save(&key_path).map_err(|e| LabError::Io {
                what: format!("cannot write {}", key_path.display()),
                source: std::io::Error::other(e),
            })?;
        }
        let own = if spec.name == boot { &[][..] } else { &bootstrap[..] };
        let config = host_config(t, spec, own);
        std::fs::write(data_dir.join("config.toml"), config)
            .map_err(io(format!("cannot write {}", data_dir.display())))?;
    }
    // The bootstrap host first, then the other public hosts, then the rest (all at once).
    let order: Vec<Vec<usize>> = {
        let public: Vec<usize> = (0..t.hosts.len())
            .filter(|&i| t.hosts[i].behind.is_none() && t.hosts[i].name != boot)
            .collect();
        let private: Vec<usize> =
            (0..t.hosts.len()).filter(|&i| t.hosts[i].behind.is_some()).collect();
        let first: Vec<usize> = (0..t.hosts.len()).filter(|&i| t.hosts[i].name == boot).collect();
        vec![first, public, private]
    };
    for batch in order {
        let starts = batch.iter().map(|&i| {
            let (host, capmesh) = (m.hosts[i].clone(), m.capmesh.clone());
            async move { (i, start_host(&capmesh, &host).await) }
        });
        let mut failed = None;
        for (i, r) in futures::future::join_all(starts).await {
            match r {
                Ok(pid) => m.hosts[i].pid = Some(pid),
                Err(e) => failed = Some(e),
            }
        }
        m.save()?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// Kills a process group when dropped unless disarmed (a start that failed or was dropped).
struct StartGuard(Option<u32>);

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Starts `capmesh run` for `host` inside its namespace (`ip netns exec` replaces itself with
/// capmesh, so the pid is the node's and its command line names its data directory), in its
/// own process group, output to `node.log`; waits until its API answers inside the namespace.
async fn start_host(capmesh: &Path, host: &HostEntry) -> Result<u32, LabError> {
    let fail = |detail: String| LabError::Start { host: host.name.clone(), detail };
    for stale in ["api.addr", "api.token", "metrics.addr"] {
        let _ = std::fs::remove_file(host.data_dir.join(stale));
    }
    let log_path = host.data_dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("cannot open {}", log_path.display())))?;
    let log2 = log.try_clone().map_err(io("cannot duplicate the log file"))?;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &host.ns])
        .arg(capmesh)
        .arg("--data-dir")
        .arg(&host.data_dir)
        .arg("run")
        .env("RUST_LOG", std::env::var("CAPMESH_LAB_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start {}: {e}", capmesh.display())))?;
    let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
    let mut guard = StartGuard(Some(pid));
    let started = Instant::now();
    loop {
        if cli_output(capmesh, host, &["status", "--json"]).await.is_ok_and(|o| o.status.success())
        {
            guard.0 = None;
            drop(child);
            return Ok(pid);
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(fail(format!(
                "exited ({exit}) before answering; see {}",
                log_path.display()
            )));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(fail(format!(
                "did not answer within {START_TIMEOUT:?}; see {}",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the `capmesh` CLI for `host` inside its namespace and returns its output.
pub async fn cli_output(
    capmesh: &Path,
    host: &HostEntry,
    args: &[&str],
) -> Result<std::process::Output, LabError> {
    tokio::process::Command::new("ip")
        .args(["netns", "exec", &host.ns])
        .arg(capmesh)
        .arg("--data-dir")
        .arg(&host.data_dir)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| LabError::Tool { tool: "ip netns exec".into(), detail: e.to_string() })
}

/// `lab cli HOST ARGS…`: the capmesh CLI for `host`, in its namespace, with this process's
/// stdio; returns its exit code.
pub async fn cli(dir: &Path, host: &str, args: &[String]) -> Result<i32, LabError> {
    let m = LabManifest::load(dir)?;
    let h = m.host(host)?;
    let status = tokio::process::Command::new("ip")
        .args(["netns", "exec", &h.ns])
        .arg(&m.capmesh)
        .arg("--data-dir")
        .arg(&h.data_dir)
        .args(args)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| LabError::Tool { tool: "ip netns exec".into(), detail: e.to_string() })?;
    Ok(status.code().unwrap_or(1))
}

/// What `down` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub stopped: usize,
    pub killed: usize,
    pub namespaces_removed: usize,
}

/// `lab down`: SIGTERM to every host's node (by pid, its command line checked), SIGKILL after
/// [`STOP_TIMEOUT`]; SIGKILL to anything else still inside a namespace of the run; then every
/// namespace named `cmlab-<run>-…` is deleted (their veth pairs go with them). Fails if a
/// process or namespace is left; removes the manifest otherwise.
pub async fn down(dir: &Path) -> Result<DownReport, LabError> {
    let m = LabManifest::load(dir)?;
    let mut report = DownReport::default();
    let mut targets: Vec<(u32, PathBuf)> =
        m.hosts.iter().filter_map(|h| h.pid.map(|p| (p, h.data_dir.clone()))).collect();
    for stray in procs::strays(&m.dir) {
        if !targets.contains(&stray) {
            targets.push(stray);
        }
    }
    let stopping: Vec<&(u32, PathBuf)> =
        targets.iter().filter(|(pid, d)| procs::signal(*pid, d, Signal::SIGTERM)).collect();
    report.stopped = stopping.len();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline && stopping.iter().any(|(pid, d)| procs::alive(*pid, d)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (pid, d) in &stopping {
        if procs::signal(*pid, d, Signal::SIGKILL) {
            report.killed += 1;
        }
    }
    let prefix = format!("{}{}-", net::PREFIX, m.run);
    report.namespaces_removed = remove_namespaces(&prefix).await?;
    let left: Vec<u32> =
        targets.iter().filter(|(p, d)| procs::alive(*p, d)).map(|(p, _)| *p).collect();
    if !left.is_empty() {
        return Err(LabError::Leftover(format!("processes {left:?}")));
    }
    let _ = std::fs::remove_file(LabManifest::path(&m.dir));
    Ok(report)
}

/// Kills what runs inside each namespace whose name starts with `prefix` (only processes in
/// the lab's own namespaces), deletes the namespaces, and checks none is left.
async fn remove_namespaces(prefix: &str) -> Result<usize, LabError> {
    let found = net::namespaces(prefix).await?;
    for ns in &found {
        for pid in net::pids_in(ns).await {
            if let Ok(raw) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
    }
    // A killed process leaves its namespace when it is reaped; delete once they are gone.
    let deadline = Instant::now() + STOP_TIMEOUT;
    for ns in &found {
        while Instant::now() < deadline && !net::pids_in(ns).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        net::delete_ns(ns).await?;
    }
    let left = net::namespaces(prefix).await?;
    if !left.is_empty() {
        return Err(LabError::Leftover(format!("namespaces {left:?}")));
    }
    Ok(found.len())
}

/// `lab down --leftovers`: every `cmlab-…` namespace of any run (a crashed run whose directory
/// is gone), with whatever runs inside them.
pub async fn down_leftovers() -> Result<usize, LabError> {
    remove_namespaces(net::PREFIX).await
}

/// One host in `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub ns: String,
    pub addr: String,
    pub behind: Option<String>,
    pub nat: Option<Nat>,
    pub pid: Option<u32>,
    pub running: bool,
    pub peer_id: String,
    /// `capmesh status --json` inside its namespace, when it answered.
    pub status: Option<serde_json::Value>,
}

/// `lab status`: each host, running or not, and what its node says.
pub async fn status(dir: &Path) -> Result<Vec<HostStatus>, LabError> {
    let m = LabManifest::load(dir)?;
    let mut rows = Vec::with_capacity(m.hosts.len());
    for h in &m.hosts {
        let running = h.pid.is_some_and(|p| procs::alive(p, &h.data_dir));
        let status = if running {
            match cli_output(&m.capmesh, h, &["status", "--json"]).await {
                Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
                _ => None,
            }
        } else {
            None
        };
        let nat =
            h.behind.as_ref().and_then(|b| m.routers.iter().find(|r| &r.name == b)).map(|r| r.nat);
        rows.push(HostStatus {
            name: h.name.clone(),
            ns: h.ns.clone(),
            addr: h.addr.clone(),
            behind: h.behind.clone(),
            nat,
            pid: h.pid,
            running,
            peer_id: h.peer_id.clone(),
            status,
        });
    }
    Ok(rows)
}

/// The `lab` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Build the network of TOPOLOGY.toml in namespaces and start one node per host.
    Up {
        topology: PathBuf,
        /// The capmesh binary (default: beside this one, else on PATH).
        #[arg(long, value_name = "PATH")]
        capmesh: Option<PathBuf>,
    },
    /// Each host: running or not, reachability, relay reservations, peers.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the capmesh CLI for HOST inside its namespace (e.g. `lab cli a -- peers --json`).
    Cli {
        host: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stop every node and remove every namespace of the lab.
    Down {
        /// Instead: remove every `cmlab-…` namespace of any run (leftovers of a crashed run).
        #[arg(long)]
        leftovers: bool,
    },
}

/// Runs a `lab` subcommand; returns the exit code.
#[allow(clippy::print_stdout)]
pub async fn command(dir: &Path, command: LabCommand) -> anyhow::Result<i32> {
    match command {
        LabCommand::Up { topology, capmesh } => {
            let capmesh = procs::find_capmesh(capmesh)?;
            let m = up(dir, &topology, &capmesh).await?;
            println!(
                "lab {} up in {}: {} hosts, {} routers, {} namespaces; manifest {}",
                m.run,
                m.dir.display(),
                m.hosts.len(),
                m.routers.len(),
                m.namespaces.len(),
                LabManifest::path(&m.dir).display()
            );
        }
        LabCommand::Status { json } => {
            let rows = status(dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in &rows {
                    let s = r.status.as_ref();
                    let field = |k: &str| s.map(|s| s[k].to_string()).unwrap_or_else(|| "-".into());
                    let reservations = s
                        .and_then(|s| s["relay_reservations"].as_array().map(|a| a.len()))
                        .unwrap_or_default();
                    println!(
                        "{:<12} {:<14} {:<10} {:<8} reachability {:<10} reservations {} peers {}",
                        r.name,
                        r.addr,
                        r.nat.map_or("public".into(), |n| format!("{n:?}").to_lowercase()),
                        if r.running { "running" } else { "down" },
                        field("reachability"),
                        reservations,
                        field("connected_peers"),
                    );
                }
            }
        }
        LabCommand::Cli { host, args } => return Ok(cli(dir, &host, &args).await?),
        LabCommand::Down { leftovers } => {
            if leftovers {
                let n = down_leftovers().await?;
                println!("{n} leftover lab namespaces removed");
            } else {
                let r = down(dir).await?;
                println!(
                    "{} nodes stopped ({} needed SIGKILL), {} namespaces removed; nothing left",
                    r.stopped, r.killed, r.namespaces_removed
                );
            }
        }
    }
    Ok(0)
}
