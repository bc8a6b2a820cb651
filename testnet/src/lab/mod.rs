//! The NAT lab: hosts in Linux network namespaces, one `capmesh run` process each, on a public
//! segment or behind routers that NAT with nftables (see the README's "Lab" section).
//!
//! - [`topology`]: the `scenarios/lab/*.toml` format and the address plan (198.18.0.0/15 only);
//! - [`net`]: namespaces, bridges, veth pairs, NAT rules, netem, cuts — all through `ip`,
//!   `nft`, `tc`;
//! - [`delay`]: the userspace delay line that shapes links where the kernel has no netem;
//! - [`run`]: `lab run`, a topology's `[run]` workload and its report;
//! - this module: `up` (network, node directories, processes, the manifest `lab.json` written
//!   atomically before anything is made and after each step), `down` (processes by pid with
//!   their command line checked, then every namespace named with the run's prefix), `status`,
//!   and [`cli`], which runs the `capmesh` CLI inside a host's namespace (its API listens on
//!   127.0.0.1 there).
//!
//! **Invariant:** nothing is made outside namespaces named `cmlab-<run>-…`, no address outside
//! 198.18.0.0/15 is assigned, no namespace has a default route, and nothing is attached to the
//! machine's own interfaces; `down` leaves no namespace of the run and no process of its hosts.

pub mod delay;
pub mod net;
pub mod run;
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
use net::{Link, Shaper, ShaperChoice};
use topology::{Nat, Topology};

/// File name of the lab's manifest in its directory.
pub const MANIFEST: &str = "lab.json";
/// The port every node listens on (TCP and QUIC): each host has its own namespace.
pub const PORT: u16 = 4701;
/// Longest wait for a node's API to answer after its start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a node to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the delay line to open its sockets.
const DELAY_START_TIMEOUT: Duration = Duration::from_secs(20);

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
    #[error(
        "{0:?} is not on the public segment: `lab cut` takes public hosts and routers (a host behind a router goes with it)"
    )]
    NotPublic(String),
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

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
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
    /// How links with latency or loss are shaped.
    #[serde(default)]
    pub shaper: Shaper,
    /// The delay line's pid (`capmesh-testnet --dir <dir> lab delay`), when it shapes links.
    #[serde(default)]
    pub delay_pid: Option<u32>,
    /// The public-segment members cut off from the rest (`lab cut`); empty: no cut.
    #[serde(default)]
    pub cut: Vec<String>,
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

    /// The public segment's namespace.
    pub fn public_ns(&self) -> String {
        net::ns_pub(&self.run)
    }

    /// The public segment's bridge port of public host or router `name`.
    pub fn public_port(&self, name: &str) -> Result<String, LabError> {
        let ns = match (
            self.hosts.iter().find(|h| h.name == name),
            self.routers.iter().find(|r| r.name == name),
        ) {
            (Some(h), _) if h.behind.is_none() => h.ns.clone(),
            (Some(_), _) => return Err(LabError::NotPublic(name.into())),
            (None, Some(r)) => r.ns.clone(),
            (None, None) => return Err(LabError::NoHost(name.into())),
        };
        let public = self.public_ns();
        self.links
            .iter()
            .find(|l| l.a_ns == public && l.b_ns == ns)
            .map(|l| l.a_dev.clone())
            .ok_or_else(|| LabError::NoHost(name.into()))
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
        // Public by construction. Left to AutoNAT, a public lab host was seen to conclude
        // `private` (its dial-back probes failing) and then reserve on the relays and announce
        // circuits through them, which nested every circuit made through it.
        c.push_str(
            "announce_listen_addrs = true\nkad_mode = \"server\"\nreachability = \"public\"\n",
        );
        if host.relay_server {
            c.push_str("relay_server = true\n");
        }
    }
    if !host.gossip {
        c.push_str("gossip = false\n");
    }
    if let Some(n) = host.relay_reservations {
        c.push_str(&format!("relay_reservations = {n}\n"));
    }
    if let Some(n) = host.max_connections_per_peer {
        c.push_str(&format!("max_connections_per_peer = {n}\n"));
    }
    if !host.sync {
        c.push_str("\n[registry]\nsync = false\n");
    }
    c.push_str("\n[api]\nlisten = \"127.0.0.1:0\"\n");
    for name in &host.serve {
        let contract = if host.named {
            format!("contract = \"{}\"\n", named_contract_file(name))
        } else {
            String::new()
        };
        c.push_str(&format!(
            "\n[[serve]]\n{contract}runtime = {{ type = \"builtin\", name = \"{name}\" }}\n"
        ));
    }
    c
}

/// The file (in the node directory) of builtin `name`'s own contract on a `named` host.
fn named_contract_file(name: &str) -> String {
    format!("lab-{name}.json")
}

/// Builtin `builtin`'s contract renamed `lab.<builtin>.<host>` (JSON): the same schemas, a
/// capability id of the host's own.
pub fn named_contract(builtin: &str, host: &str) -> Result<String, LabError> {
    let b = capmesh_exec::Builtin::ALL
        .iter()
        .find(|b| b.name() == builtin)
        .ok_or_else(|| LabError::Topology(format!("host {host}: no builtin {builtin:?}")))?;
    let mut contract = b.contract();
    contract.name = format!("lab.{builtin}.{host}");
    serde_json::to_string_pretty(&contract).map_err(|e| LabError::Io {
        what: "cannot encode a contract".into(),
        source: std::io::Error::other(e),
    })
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// `lab up`: builds the network of `topology`, writes every host's node directory
/// (`<dir>/node-<host>`, keys derived from the host's position), starts the public hosts (the
/// first one first: it is everyone's bootstrap peer), then the others. The manifest is written
/// before anything is made; if `up` fails, what it made is taken down before it returns.
pub async fn up(
    dir: &Path,
    topology_path: &Path,
    capmesh: &Path,
    shaper: ShaperChoice,
) -> Result<LabManifest, LabError> {
    let t = Topology::load(topology_path)?;
    net::preflight(t.shaped() && shaper == ShaperChoice::Netem).await?;
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
    let shaper = match shaper {
        _ if !t.shaped() => Shaper::None,
        ShaperChoice::Netem => Shaper::Netem,
        ShaperChoice::DelayLine => Shaper::DelayLine,
        ShaperChoice::Auto if net::netem_available(&run).await => Shaper::Netem,
        ShaperChoice::Auto => Shaper::DelayLine,
    };
    let mut manifest = LabManifest {
        dir: dir.clone(),
        run: run.clone(),
        capmesh: capmesh.to_path_buf(),
        created_ms: procs::now_ms(),
        namespaces: net::planned(&run, &t, shaper),
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
        shaper,
        delay_pid: None,
        cut: Vec::new(),
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
    m.links = net::build(&m.run, t, m.shaper).await?;
    m.save()?;
    if m.shaper == Shaper::DelayLine {
        m.delay_pid = Some(start_delay(m).await?);
        m.save()?;
    }
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
        if spec.named {
            for name in &spec.serve {
                let path = data_dir.join(named_contract_file(name));
                std::fs::write(&path, named_contract(name, &spec.name)?)
                    .map_err(io(format!("cannot write {}", path.display())))?;
            }
        }
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

/// Starts the delay line (`capmesh-testnet --dir <dir> lab delay`, this binary) inside the
/// public segment's namespace, in its own process group, output to `delay.log`; waits until
/// it says every wire is open.
async fn start_delay(m: &LabManifest) -> Result<u32, LabError> {
    let fail = |detail: String| LabError::Tool { tool: "lab delay".into(), detail };
    let exe = std::env::current_exe().map_err(io("cannot find this program"))?;
    let _ = std::fs::remove_file(delay::DelayStatus::path(&m.dir));
    let log_path = m.dir.join("delay.log");
    let log = std::fs::File::create(&log_path)
        .map_err(io(format!("cannot open {}", log_path.display())))?;
    let log2 = log.try_clone().map_err(io("cannot duplicate the log file"))?;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", &m.public_ns()])
        .arg(exe)
        .arg("--dir")
        .arg(&m.dir)
        .args(["lab", "delay"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let pid = child.id().ok_or_else(|| fail("exited at once".into()))?;
    let mut guard = StartGuard(Some(pid));
    let started = Instant::now();
    loop {
        if delay::DelayStatus::load(&m.dir).is_some_and(|s| s.ready && s.pid == pid) {
            guard.0 = None;
            drop(child);
            return Ok(pid);
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(fail(format!("exited ({exit}); see {}", log_path.display())));
        }
        if started.elapsed() > DELAY_START_TIMEOUT {
            return Err(fail(format!(
                "not ready within {DELAY_START_TIMEOUT:?}; see {}",
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    if let Some(pid) = m.delay_pid {
        targets.push((pid, m.dir.clone()));
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

/// `lab status`: how links are shaped, the cut if any, and each host.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub run: String,
    pub shaper: Shaper,
    /// The delay line's counters, when it shapes links.
    pub delay: Option<delay::DelayStatus>,
    pub delay_running: bool,
    pub cut: Vec<String>,
    pub hosts: Vec<HostStatus>,
}

/// `lab status`: each host, running or not, and what its node says.
pub async fn status(dir: &Path) -> Result<LabStatus, LabError> {
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
    Ok(LabStatus {
        run: m.run.clone(),
        shaper: m.shaper,
        delay: (m.shaper == Shaper::DelayLine).then(|| delay::DelayStatus::load(&m.dir)).flatten(),
        delay_running: m.delay_pid.is_some_and(|p| procs::alive(p, &m.dir)),
        cut: m.cut.clone(),
        hosts: rows,
    })
}

/// `lab stop HOST`: stops its node (SIGTERM, SIGKILL after [`STOP_TIMEOUT`]; `kill`: SIGKILL at
/// once, as a crash). Returns whether it was running.
pub async fn stop_host(dir: &Path, host: &str, kill: bool) -> Result<bool, LabError> {
    let mut m = LabManifest::load(dir)?;
    let h = m.host(host)?.clone();
    let Some(pid) = h.pid else { return Ok(false) };
    let was = procs::alive(pid, &h.data_dir);
    if was {
        let first = if kill { Signal::SIGKILL } else { Signal::SIGTERM };
        procs::signal(pid, &h.data_dir, first);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline && procs::alive(pid, &h.data_dir) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        procs::signal(pid, &h.data_dir, Signal::SIGKILL);
        if procs::alive(pid, &h.data_dir) {
            return Err(LabError::Leftover(format!("process {pid} of host {host}")));
        }
    }
    if let Some(entry) = m.hosts.iter_mut().find(|e| e.name == host) {
        entry.pid = None;
    }
    m.save()?;
    Ok(was)
}

/// `lab cut NAME…`: cuts the public segment in two — the named public hosts and routers
/// (with everything behind them) on one side, the rest on the other — by dropping frames
/// between their bridge ports (nftables, bridge family, in the public segment's namespace).
/// Replaces an earlier cut. No link goes down: connections across it just stop hearing back.
pub async fn cut(dir: &Path, names: &[String]) -> Result<(), LabError> {
    let mut m = LabManifest::load(dir)?;
    if names.is_empty() {
        return Err(LabError::Topology("`lab cut` needs at least one name".into()));
    }
    let ports = names.iter().map(|n| m.public_port(n)).collect::<Result<Vec<_>, _>>()?;
    net::cut(&m.public_ns(), &ports).await?;
    m.cut = names.to_vec();
    m.save()
}

/// `lab heal`: removes the cut.
pub async fn heal(dir: &Path) -> Result<(), LabError> {
    let mut m = LabManifest::load(dir)?;
    net::heal(&m.public_ns()).await?;
    m.cut.clear();
    m.save()
}

/// TCP handshake times from inside `from`'s namespace to `to`'s node (its port [`PORT`]): each
/// a `connect` (SYN out, SYN-ACK back: one round trip), on a thread that entered the namespace.
pub async fn tcp_rtt(
    dir: &Path,
    from: &str,
    to: &str,
    count: usize,
) -> Result<Vec<Duration>, LabError> {
    let m = LabManifest::load(dir)?;
    let ns = m.host(from)?.ns.clone();
    let addr: std::net::SocketAddr = format!("{}:{PORT}", m.host(to)?.addr)
        .parse()
        .map_err(|e| LabError::Topology(format!("host {to}: {e}")))?;
    let fail = |detail: String| LabError::Tool { tool: "lab rtt".into(), detail };
    tokio::task::spawn_blocking(move || {
        // This blocking-pool thread leaves the namespace again before it is reused.
        let home =
            std::fs::File::open("/proc/self/ns/net").map_err(io("cannot open own namespace"))?;
        let target = std::fs::File::open(format!("/run/netns/{ns}"))
            .map_err(io(format!("cannot open {ns}")))?;
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail(format!("setns {ns}: {e}")))?;
        let mut times = Vec::with_capacity(count);
        let mut result = Ok(());
        for _ in 0..count {
            let t = std::time::Instant::now();
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(stream) => {
                    times.push(t.elapsed());
                    drop(stream);
                }
                Err(e) => {
                    result = Err(fail(format!("connect to {addr} from {ns}: {e}")));
                    break;
                }
            }
        }
        nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| fail(format!("setns back: {e}")))?;
        result.map(|()| times)
    })
    .await
    .map_err(|e| fail(e.to_string()))?
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
        /// How links with latency_ms / loss_pct are shaped: netem where the kernel has it,
        /// else the userspace delay line (auto), or either by force.
        #[arg(long, value_enum, default_value_t = ShaperChoice::Auto)]
        shaper: ShaperChoice,
    },
    /// Each host: running or not, reachability, relay reservations, peers; how links are
    /// shaped; the cut.
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
    /// Stop HOST's node (SIGTERM; --kill: SIGKILL, as a crash).
    Stop {
        host: String,
        #[arg(long)]
        kill: bool,
    },
    /// Cut the public segment in two: the named public hosts and routers (and what is behind
    /// them) on one side, the rest on the other (nftables drop rules; replaces a cut).
    Cut {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove the cut.
    Heal,
    /// TCP handshake round trips from host FROM to host TO's node port, in ms.
    Rtt {
        from: String,
        to: String,
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        count: u16,
    },
    /// Build a topology with a `[run]` table, run its workload, write the report (JSON and
    /// markdown) to OUT, take the lab down.
    Run {
        scenario: PathBuf,
        /// Report directory (default: <dir>/report).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_name = "PATH")]
        capmesh: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = ShaperChoice::Auto)]
        shaper: ShaperChoice,
    },
    /// Stop every node and remove every namespace of the lab.
    Down {
        /// Instead: remove every `cmlab-…` namespace of any run (leftovers of a crashed run).
        #[arg(long)]
        leftovers: bool,
    },
    /// The delay line (started by `up`; not for use by hand).
    #[command(hide = true)]
    Delay {
        /// Most frames queued per direction of a wire; more are dropped (counted).
        #[arg(long, default_value_t = delay::QueueLimit::default().frames)]
        max_frames: std::num::NonZeroUsize,
        /// Most bytes queued per direction of a wire; more are dropped (counted).
        #[arg(long, default_value_t = delay::QueueLimit::default().bytes)]
        max_bytes: std::num::NonZeroUsize,
    },
}

/// Runs a `lab` subcommand; returns the exit code.
#[allow(clippy::print_stdout)]
pub async fn command(dir: &Path, command: LabCommand) -> anyhow::Result<i32> {
    match command {
        LabCommand::Up { topology, capmesh, shaper } => {
            let capmesh = procs::find_capmesh(capmesh)?;
            let m = up(dir, &topology, &capmesh, shaper).await?;
            println!(
                "lab {} up in {}: {} hosts, {} routers, {} namespaces, links shaped by {}; manifest {}",
                m.run,
                m.dir.display(),
                m.hosts.len(),
                m.routers.len(),
                m.namespaces.len(),
                shaper_name(m.shaper),
                LabManifest::path(&m.dir).display()
            );
        }
        LabCommand::Status { json } => {
            let s = status(dir).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        LabCommand::Cli { host, args } => return Ok(cli(dir, &host, &args).await?),
        LabCommand::Stop { host, kill } => {
            let was = stop_host(dir, &host, kill).await?;
            println!("{host}: {}", if was { "stopped" } else { "was not running" });
        }
        LabCommand::Cut { names } => {
            cut(dir, &names).await?;
            println!("public segment cut: {} | the rest", names.join(" "));
        }
        LabCommand::Heal => {
            heal(dir).await?;
            println!("cut removed");
        }
        LabCommand::Rtt { from, to, count } => {
            let times = tcp_rtt(dir, &from, &to, usize::from(count)).await?;
            let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1000.0).collect();
            println!("{}", serde_json::to_string(&ms)?);
        }
        LabCommand::Run { scenario, out, capmesh, shaper } => {
            let capmesh = procs::find_capmesh(capmesh)?;
            let out = out.unwrap_or_else(|| dir.join("report"));
            let report = run::run(dir, &scenario, &capmesh, shaper, &out).await?;
            println!("{}", run::markdown(&report));
            println!("report: {}", out.display());
        }
        LabCommand::Down { leftovers } => {
            if leftovers {
                let n = down_leftovers().await?;
                println!("{n} leftover lab namespaces removed");
            } else {
                let r = down(dir).await?;
                println!(
                    "{} processes stopped ({} needed SIGKILL), {} namespaces removed; nothing left",
                    r.stopped, r.killed, r.namespaces_removed
                );
            }
        }
        LabCommand::Delay { max_frames, max_bytes } => {
            delay::serve(dir, delay::QueueLimit { frames: max_frames, bytes: max_bytes }).await?;
        }
    }
    Ok(0)
}

fn shaper_name(s: Shaper) -> &'static str {
    match s {
        Shaper::None => "nothing (no latency or loss)",
        Shaper::Netem => "netem",
        Shaper::DelayLine => "the userspace delay line (no netem in this kernel)",
    }
}

#[allow(clippy::print_stdout)]
fn print_status(s: &LabStatus) {
    println!("lab {}: links shaped by {}", s.run, shaper_name(s.shaper));
    if let Some(d) = &s.delay {
        let (forwarded, dropped) = d.totals();
        println!(
            "  delay line {}: {} wires, {forwarded} frames carried, {dropped} dropped (queue bound {} frames / {} bytes per direction)",
            if s.delay_running { "running" } else { "NOT RUNNING" },
            d.wires.len(),
            d.limit.frames,
            d.limit.bytes
        );
    }
    if !s.cut.is_empty() {
        println!("  public segment cut: {} | the rest", s.cut.join(" "));
    }
    for r in &s.hosts {
        let st = r.status.as_ref();
        let field = |k: &str| st.map(|s| s[k].to_string()).unwrap_or_else(|| "-".into());
        let reservations = st
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
