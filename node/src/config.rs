//! `config.toml`: every setting with its documented default. Flags override the file.

use std::path::{Path, PathBuf};

use anyhow::Context;
use capmesh_wire::{Rules, cbor::Limits};
use serde::Deserialize;

/// The node's configuration. Unknown keys are refused so a typo never silently does nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub identity: Identity,
    pub envelope: EnvelopeConfig,
    pub network: NetworkConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub registry: RegistryConfig,
    pub publish: PublishConfig,
    pub market: MarketSection,
    /// `[[serve]]`: capabilities served with a runtime (published at start). Default none.
    pub serve: Vec<ServeEntry>,
    /// `[mcp]`: what `capmesh mcp` offers MCP clients.
    pub mcp: McpSection,
    /// `[[import]]`: MCP servers whose tools this node serves as capabilities. Default none.
    pub import: Vec<ImportEntry>,
}

/// `[mcp]`: the MCP server `capmesh mcp` runs over this node (flags override).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct McpSection {
    /// Capability ids always listed as tools. Default none.
    pub pinned: Vec<String>,
    /// List the live capabilities of the replica that carry all these tags. Default none.
    pub tags: Vec<String>,
    /// List the live capabilities whose name, description or tags match these words. Default
    /// "" (none). With no pin, tag or search, every live capability is listed (up to max_tools).
    pub search: String,
    /// Most capability tools listed. Default 64.
    pub max_tools: usize,
    /// Deadline of a call made through MCP, in ms; 0: `market.call_deadline_ms`. Default 0.
    pub deadline_ms: u64,
    /// Address of `capmesh mcp --http` (loopback only). Default "127.0.0.1:4702".
    pub http_listen: String,
}

impl Default for McpSection {
    fn default() -> Self {
        Self {
            pinned: Vec::new(),
            tags: Vec::new(),
            search: String::new(),
            max_tools: 64,
            deadline_ms: 0,
            http_listen: "127.0.0.1:4702".into(),
        }
    }
}

/// One `[[import]]` table: an MCP server whose tools this node serves, each as a capability
/// with an `mcp` runtime (see capmesh-mcp).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportEntry {
    /// Names the import: contract names are `<name>.<tool>`, `<name>` is a tag of each.
    pub name: String,
    /// A program speaking MCP on stdin/stdout (argv, no shell), run with a cleared environment.
    #[serde(default)]
    pub command: Vec<String>,
    /// The program's whole environment. Default empty.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// The program's working directory (relative to the data directory). Default: the node's.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Or: a streamable HTTP MCP endpoint.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding a bearer token for `url` (relative to the data directory). Default none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// More tags on every imported contract. Default none.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only these tools (MCP names). Default: all.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Terms of every imported capability, as in `[[serve]]`.
    #[serde(default)]
    pub price_amount: u64,
    #[serde(default = "free")]
    pub price_unit: String,
    #[serde(default)]
    pub latency_ms: Option<u64>,
    #[serde(default = "thirty_seconds")]
    pub timeout_ms: u64,
    #[serde(default = "one_mib")]
    pub max_input_bytes: u64,
    #[serde(default = "eight")]
    pub concurrency: u32,
    /// How often the tools are listed again when the server does not notify changes, in s.
    /// Default 60.
    #[serde(default = "sixty")]
    pub refresh_secs: u64,
}

fn sixty() -> u64 {
    60
}

/// `[market]`: calls, offers and the call policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MarketSection {
    /// Call policy file (TOML, relative to the data directory; reloaded when it changes and on
    /// SIGHUP). A missing file allows every caller with the default limits. Default
    /// `policy.toml`.
    pub policy_file: PathBuf,
    /// How often the policy file is checked for changes, in ms. Default 1000.
    pub policy_poll_ms: u64,
    /// Calls ending within this window are answered inline, in ms. Default 2000.
    pub inline_window_ms: u64,
    /// Lifetime of the offers this node issues, in seconds. Default 300.
    pub offer_ttl_secs: u64,
    /// Most calls one offer covers. Default 1000.
    pub offer_calls: u32,
    /// Providers asked for offers at once. Default 3.
    pub intent_fanout: usize,
    /// Most providers one call contacts over all its fan-outs before it gives up (it also stops
    /// at its deadline). Default 12.
    pub max_providers: usize,
    /// Deadline of a call that names none, in ms. Default 30000.
    pub call_deadline_ms: u64,
}

impl Default for MarketSection {
    fn default() -> Self {
        Self {
            policy_file: PathBuf::from("policy.toml"),
            policy_poll_ms: 1000,
            inline_window_ms: 2000,
            offer_ttl_secs: 300,
            offer_calls: 1000,
            intent_fanout: 3,
            max_providers: 12,
            call_deadline_ms: 30_000,
        }
    }
}

/// One `[[serve]]` table: a capability and the runtime that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeEntry {
    /// Contract file (JSON, relative to the data directory). Optional for a builtin runtime,
    /// which then serves its own contract.
    #[serde(default)]
    pub contract: Option<PathBuf>,
    /// `{ type = "builtin", name = "echo" }`, `{ type = "command", argv = [...] }` or
    /// `{ type = "http", url = "http://127.0.0.1:8080/run" }` (see capmesh-exec).
    pub runtime: capmesh_exec::Runtime,
    /// Price per call. Default 0 "free".
    #[serde(default)]
    pub price_amount: u64,
    #[serde(default = "free")]
    pub price_unit: String,
    /// Latency quoted in offers, in ms. Default: the running average of past runs.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// Longest a call may run, in ms. Default 30000.
    #[serde(default = "thirty_seconds")]
    pub timeout_ms: u64,
    /// Largest accepted arguments (canonical CBOR bytes). Default 1048576.
    #[serde(default = "one_mib")]
    pub max_input_bytes: u64,
    /// Calls run at once for all callers. Default 8.
    #[serde(default = "eight")]
    pub concurrency: u32,
}

fn free() -> String {
    "free".into()
}
fn thirty_seconds() -> u64 {
    30_000
}
fn one_mib() -> u64 {
    1 << 20
}
fn eight() -> u32 {
    8
}

/// `[network]`: how the node joins the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Listen multiaddrs. Default TCP and QUIC on port 4701 of every interface.
    pub listen: Vec<String>,
    /// Peers dialed at start, each ending in `/p2p/<peer id>`. Default none.
    pub bootstrap: Vec<String>,
    /// Addresses others reach this node at (announced in adverts and provider records).
    /// Default none: AutoNAT finds them.
    pub external_addrs: Vec<String>,
    /// Announce the listen addresses as reachable (loopback testnets). Default false.
    pub announce_listen_addrs: bool,
    /// Kademlia mode: "auto", "client" or "server". Default "auto" (server when addresses
    /// are announced, else once AutoNAT confirms one).
    pub kad_mode: KadMode,
    /// Serve as a relay for nodes behind NATs. Default false.
    pub relay_server: bool,
    /// Relays to hold a reservation on, each ending in `/p2p/<relay id>` (the node is then
    /// reachable at `<relay>/p2p-circuit/p2p/<own id>`). Default none.
    pub relays: Vec<String>,
    /// Whether the node is reachable from outside: "auto" (as AutoNAT finds), "public" or
    /// "private". A private node reserves relay slots by itself. Default "auto".
    pub reachability: Reachability,
    /// Relay reservations a private node holds, on relays chosen among its connected peers
    /// (configured `relays` count). 0: none made automatically. Default 2.
    pub relay_reservations: usize,
    /// AutoNAT probes to and from private addresses (a lab on private ranges). Default false.
    pub autonat_allow_private: bool,
    /// Take part in registry gossip. Default true.
    pub gossip: bool,
    /// Registry gossip each peer may send: messages a second after a burst. Beyond it a peer's
    /// messages are ignored (not forwarded, not stored) until its bucket refills; a refusal
    /// does not lower the peer's score, so a merely busy publisher is served again. Defaults 100
    /// and 400.
    pub gossip_rate_per_sec: u32,
    pub gossip_burst: u32,
    /// Most established connections, and per peer. Defaults 256 and 4.
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    /// Connection trimming: above `peers_high` connected peers, the quietest ones outside the
    /// gossip mesh are disconnected down to `peers_low`. Defaults 32 and 48.
    pub peers_low: u32,
    pub peers_high: u32,
}

/// `network.kad_mode`, parsed once from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KadMode {
    /// Server when addresses are announced, else once AutoNAT confirms one.
    #[default]
    Auto,
    /// Asks the DHT, never answers it.
    Client,
    /// Answers the DHT whatever AutoNAT says.
    Server,
}

impl From<KadMode> for capmesh_net::KadMode {
    fn from(m: KadMode) -> Self {
        match m {
            KadMode::Auto => Self::Auto,
            KadMode::Client => Self::Client,
            KadMode::Server => Self::Server,
        }
    }
}

/// `network.reachability`, parsed once from the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reachability {
    /// As AutoNAT finds.
    #[default]
    Auto,
    /// Reachable at its own addresses: no relay reservations made automatically.
    Public,
    /// Behind a NAT or firewall: relay reservations made whatever AutoNAT says.
    Private,
}

impl From<Reachability> for capmesh_net::ReachabilityMode {
    fn from(r: Reachability) -> Self {
        match r {
            Reachability::Auto => Self::Auto,
            Reachability::Public => Self::Public,
            Reachability::Private => Self::Private,
        }
    }
}

/// Most relay reservations a node may ask for (`network.relay_reservations`).
pub const MAX_RELAY_RESERVATIONS: usize = 8;

/// `[api]`: the local HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the local API; always loopback. Default "127.0.0.1:0" (any free port,
    /// written to `<data dir>/api.addr`).
    pub listen: String,
}

/// `[metrics]`: Prometheus metrics at `GET /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the metrics endpoint; always loopback; "" serves none. Default
    /// "127.0.0.1:0" (any free port, written to `<data dir>/metrics.addr`).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:0".into() }
    }
}

impl MetricsConfig {
    /// The address to serve metrics on, `None` when they are off.
    pub fn addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        if self.listen.is_empty() {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = self.listen.parse().with_context(|| {
            format!("metrics.listen = {:?} is not an address:port (or \"\" for none)", self.listen)
        })?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "metrics.listen must be a loopback address (put a proxy in front to scrape from elsewhere)"
        );
        Ok(Some(addr))
    }
}

/// `[registry]`: the replica and its replication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Lifetime of this node's adverts, in seconds. Default 3600.
    pub advert_ttl_secs: u64,
    /// Adverts and provider records are refreshed this often, in seconds. Default 1200.
    pub republish_secs: u64,
    /// Catch up with peers through Sync (on connect and periodically). Default true.
    pub sync: bool,
    /// Periodic sync interval, in seconds. Default 60.
    pub sync_every_secs: u64,
    /// Expired adverts are swept from the replica this often, in seconds. Default 300.
    pub sweep_secs: u64,
}

/// `[publish]`: capabilities published at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Contract files (JSON; relative to the data directory) published at start. Default none.
    pub contracts: Vec<PathBuf>,
    /// Price of each, as an amount in a unit. Default 0 "free".
    pub price_amount: u64,
    pub price_unit: String,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/4701".into(), "/ip4/0.0.0.0/udp/4701/quic-v1".into()],
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            announce_listen_addrs: false,
            kad_mode: KadMode::Auto,
            relay_server: false,
            relays: Vec::new(),
            reachability: Reachability::Auto,
            relay_reservations: 2,
            autonat_allow_private: false,
            gossip: true,
            gossip_rate_per_sec: 100,
            gossip_burst: 400,
            max_connections: 256,
            max_connections_per_peer: 4,
            peers_low: 32,
            peers_high: 48,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:0".into() }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            advert_ttl_secs: 3600,
            republish_secs: 1200,
            sync: true,
            sync_every_secs: 60,
            sweep_secs: 300,
        }
    }
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self { contracts: Vec::new(), price_amount: 0, price_unit: "free".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Identity {
    /// Key file, relative to the data directory. Default `node.key`.
    pub key_file: PathBuf,
}

/// How received envelopes and records are judged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvelopeConfig {
    /// Largest accepted envelope or record, in bytes. Default 1048576 (1 MiB).
    pub max_size: usize,
    /// Deepest accepted CBOR nesting. Default 64.
    pub max_depth: usize,
    /// Allowed clock skew for timestamps, in ms. Default 30000.
    pub skew_ms: u64,
    /// Longest accepted envelope lifetime (`exp - ts`), in ms. Default 600000.
    pub max_ttl_ms: u64,
}

impl Default for Identity {
    fn default() -> Self {
        Self { key_file: PathBuf::from("node.key") }
    }
}

impl Default for EnvelopeConfig {
    fn default() -> Self {
        let rules = Rules::default();
        Self {
            max_size: rules.limits.max_size,
            max_depth: rules.limits.max_depth,
            skew_ms: rules.skew_ms,
            max_ttl_ms: rules.max_ttl_ms,
        }
    }
}

impl EnvelopeConfig {
    pub fn rules(&self) -> Rules {
        Rules {
            limits: Limits::default().with_max_size(self.max_size).with_max_depth(self.max_depth),
            skew_ms: self.skew_ms,
            max_ttl_ms: self.max_ttl_ms,
        }
    }
}

/// The rpc timeout callers use (capmesh-net's default).
const RPC_TIMEOUT_MS: u64 = 30_000;

impl Config {
    /// The file `capmesh init` writes: every setting, commented out at its default.
    pub const DEFAULT_TOML: &'static str = include_str!("default-config.toml");

    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let config: Self = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("invalid configuration in {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        config
            .validate()
            .with_context(|| format!("invalid configuration in {}", path.display()))?;
        Ok(config)
    }

    /// Refuses values the node could not honour (rather than silently changing them).
    pub fn validate(&self) -> anyhow::Result<()> {
        let max = Limits::MAX_DEPTH;
        anyhow::ensure!(
            self.envelope.max_depth <= max,
            "envelope.max_depth = {} is above the largest supported depth {max}",
            self.envelope.max_depth
        );
        for addr in self
            .network
            .listen
            .iter()
            .chain(&self.network.bootstrap)
            .chain(&self.network.external_addrs)
            .chain(&self.network.relays)
        {
            addr.parse::<capmesh_net::Multiaddr>()
                .with_context(|| format!("network: {addr:?} is not a multiaddr"))?;
        }
        anyhow::ensure!(
            self.network.peers_low <= self.network.peers_high && self.network.peers_high >= 1,
            "network.peers_low = {} must be at most network.peers_high = {} (at least 1)",
            self.network.peers_low,
            self.network.peers_high
        );
        anyhow::ensure!(
            self.network.relay_reservations <= MAX_RELAY_RESERVATIONS,
            "network.relay_reservations = {} is above {MAX_RELAY_RESERVATIONS}: a few relays are enough to stay reachable",
            self.network.relay_reservations
        );
        anyhow::ensure!(
            self.network.gossip_rate_per_sec >= 1 && self.network.gossip_burst >= 1,
            "network.gossip_rate_per_sec = {} and network.gossip_burst = {} must be at least 1 \
             (0 would refuse every advert: turn gossip off with network.gossip = false)",
            self.network.gossip_rate_per_sec,
            self.network.gossip_burst
        );
        let api: std::net::SocketAddr = self.api.listen.parse().with_context(|| {
            format!("api.listen = {:?} is not an address:port", self.api.listen)
        })?;
        anyhow::ensure!(
            api.ip().is_loopback(),
            "api.listen must be a loopback address (the API has no TLS)"
        );
        self.metrics.addr()?;
        anyhow::ensure!(
            self.registry.republish_secs > 0
                && self.registry.republish_secs * 2 <= self.registry.advert_ttl_secs,
            "registry.republish_secs must be at most half of registry.advert_ttl_secs, so adverts are refreshed well before they expire"
        );
        anyhow::ensure!(
            self.registry.sync_every_secs > 0 && self.registry.sweep_secs > 0,
            "registry intervals must be positive"
        );
        let http: std::net::SocketAddr = self.mcp.http_listen.parse().with_context(|| {
            format!("mcp.http_listen = {:?} is not an address:port", self.mcp.http_listen)
        })?;
        anyhow::ensure!(
            http.ip().is_loopback(),
            "mcp.http_listen must be a loopback address (MCP over HTTP has no TLS)"
        );
        for id in &self.mcp.pinned {
            id.parse::<capmesh_types::Cid>()
                .map_err(|e| anyhow::anyhow!("mcp.pinned: {id:?} is not a capability id: {e}"))?;
        }
        anyhow::ensure!(self.mcp.max_tools > 0, "mcp.max_tools must be at least 1");
        let mut names = std::collections::HashSet::new();
        for (i, import) in self.import.iter().enumerate() {
            capmesh_mcp::names::check_prefix(&import.name)
                .with_context(|| format!("import[{i}].name"))?;
            anyhow::ensure!(
                names.insert(&import.name),
                "import[{i}]: the name {:?} is used twice",
                import.name
            );
            anyhow::ensure!(
                import.command.is_empty() != import.url.is_none(),
                "import[{i}] ({}): give either command or url",
                import.name
            );
            if let Some(url) = &import.url {
                anyhow::ensure!(
                    url.starts_with("http://"),
                    "import[{i}] ({}): url must be http:// (TLS is not compiled in; put a local TLS-terminating proxy in front)",
                    import.name
                );
            }
            anyhow::ensure!(
                import.refresh_secs > 0 && import.timeout_ms > 0 && import.concurrency > 0,
                "import[{i}] ({}): refresh_secs, timeout_ms and concurrency must be positive",
                import.name
            );
        }
        let m = &self.market;
        anyhow::ensure!(
            m.policy_poll_ms > 0
                && m.offer_ttl_secs > 0
                && m.offer_calls > 0
                && m.intent_fanout > 0
                && m.max_providers > 0
                && m.call_deadline_ms > 0,
            "market: policy_poll_ms, offer_ttl_secs, offer_calls, intent_fanout, max_providers and call_deadline_ms must be positive"
        );
        // A caller's rpc times out after 30 s: an answer held longer would look like a dead
        // provider and the call would be failed over while it still runs.
        anyhow::ensure!(
            m.inline_window_ms > 0 && m.inline_window_ms < RPC_TIMEOUT_MS,
            "market.inline_window_ms = {} must be above 0 and below the rpc timeout ({RPC_TIMEOUT_MS} ms)",
            m.inline_window_ms
        );
        for (i, entry) in self.serve.iter().enumerate() {
            anyhow::ensure!(
                entry.contract.is_some()
                    || matches!(entry.runtime, capmesh_exec::Runtime::Builtin { .. }),
                "serve[{i}]: a command or http runtime needs a contract file"
            );
            anyhow::ensure!(
                entry.timeout_ms > 0 && entry.concurrency > 0,
                "serve[{i}]: timeout_ms and concurrency must be positive"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_matches_defaults_when_uncommented() {
        // Uncommenting every `# key = value` line of the shipped file must give the defaults,
        // so the documentation in the file cannot drift from the code.
        let uncommented: String = Config::DEFAULT_TOML
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ if l.starts_with('[') => l,
                _ => "",
            })
            .collect::<Vec<_>>()
            .join("\n");
        let parsed: Config = toml::from_str(&uncommented).unwrap();
        assert_eq!(parsed, Config::default());
        assert!(uncommented.contains("max_ttl_ms"), "{uncommented}");
        let empty: Config = toml::from_str(Config::DEFAULT_TOML).unwrap();
        assert_eq!(empty, Config::default());
    }

    #[test]
    fn imports_and_the_mcp_section_are_checked() {
        let ok = r#"
[mcp]
tags = ["builtin"]
http_listen = "127.0.0.1:0"

[[import]]
name = "files"
command = ["/usr/bin/node", "server.js"]
env = { HOME = "/srv" }

[[import]]
name = "search"
url = "http://127.0.0.1:8931/mcp"
tools = ["web_search"]
price_amount = 2
"#;
        let config: Config = toml::from_str(ok).unwrap();
        config.validate().unwrap();
        assert_eq!(config.import.len(), 2);
        assert_eq!(config.import[1].refresh_secs, 60);
        assert_eq!(config.import[1].price_unit, "free");
        for (bad, why) in [
            ("[[import]]\nname = \"x\"\n", "either command or url"),
            (
                "[[import]]\nname = \"x\"\ncommand = [\"/bin/a\"]\nurl = \"http://h/\"\n",
                "either command or url",
            ),
            ("[[import]]\nname = \"X\"\nurl = \"http://h/\"\n", "import[0].name"),
            (
                "[[import]]\nname = \"a\"\nurl = \"http://h/\"\n[[import]]\nname = \"a\"\nurl = \"http://g/\"\n",
                "used twice",
            ),
            ("[mcp]\nhttp_listen = \"0.0.0.0:4702\"\n", "loopback"),
            ("[[import]]\nname = \"s\"\nurl = \"https://h/mcp\"\n", "http://"),
            ("[mcp]\npinned = [\"nope\"]\n", "capability id"),
        ] {
            let config: Config = toml::from_str(bad).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn metrics_listen_on_loopback_or_not_at_all() {
        let config = |listen: &str| Config {
            metrics: MetricsConfig { listen: listen.into() },
            ..Config::default()
        };
        assert_eq!(Config::default().metrics.addr().unwrap(), Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config("").metrics.addr().unwrap(), None);
        config("").validate().unwrap();
        config("[::1]:9464").validate().unwrap();
        for (bad, why) in [("0.0.0.0:9464", "loopback"), ("localhost:9464", "address:port")] {
            let err = format!("{:#}", config(bad).validate().unwrap_err());
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_depth_above_the_supported_maximum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[envelope]\nmax_depth = 1000\n").unwrap();
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(err.contains("max_depth = 1000"), "{err}");
    }

    #[test]
    fn reachability_is_one_of_three_words_and_reservations_are_bounded() {
        let config: Config =
            toml::from_str("[network]\nreachability = \"private\"\nrelay_reservations = 3\n")
                .unwrap();
        config.validate().unwrap();
        assert_eq!(config.network.reachability, Reachability::Private);
        let err = toml::from_str::<Config>("[network]\nreachability = \"nat\"\n").unwrap_err();
        assert!(err.to_string().contains("auto"), "{err}");
        let config: Config = toml::from_str("[network]\nrelay_reservations = 100\n").unwrap();
        let err = format!("{:#}", config.validate().unwrap_err());
        assert!(err.contains("relay_reservations = 100"), "{err}");
    }

    #[test]
    fn kad_mode_is_one_of_three_words_and_the_gossip_limit_is_positive() {
        let config: Config = toml::from_str(
            "[network]\nkad_mode = \"client\"\ngossip_rate_per_sec = 5\ngossip_burst = 20\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.network.kad_mode, KadMode::Client);
        assert_eq!((config.network.gossip_rate_per_sec, config.network.gossip_burst), (5, 20));
        let err = toml::from_str::<Config>("[network]\nkad_mode = \"both\"\n").unwrap_err();
        assert!(err.to_string().contains("server"), "{err}");
        let config: Config = toml::from_str("[network]\ngossip_rate_per_sec = 0\n").unwrap();
        let err = format!("{:#}", config.validate().unwrap_err());
        assert!(err.contains("gossip_rate_per_sec = 0"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[envelope]\nmax_sise = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_sise"), "{err}");
    }
}
