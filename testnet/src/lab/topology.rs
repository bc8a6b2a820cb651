//! The lab's topology file (`scenarios/lab/*.toml`) and the address plan made from it.
//!
//! ```toml
//! [[router]]
//! name = "nat1"
//! nat = "eim"          # "eim" (endpoint-independent mapping) or "symmetric"
//! latency_ms = 10      # one-way delay of its link to the public segment (optional)
//! loss_pct = 0.0       # packet loss on that link, each way (optional)
//!
//! [[host]]
//! name = "relay"       # no `behind`: a public host, on the public segment
//! relay_server = true
//!
//! [[host]]
//! name = "a"
//! behind = "nat1"      # on nat1's private segment
//! serve = ["echo"]     # builtins it serves
//! named = true         # each under a contract of its own, `lab.<builtin>.<host>` (optional)
//! gossip = false       # no registry gossip and no sync: finds go through Kademlia (optional)
//! sync = false
//! relay_reservations = 1   # most relay reservations it holds (optional; the node's default 2)
//! max_connections_per_peer = 4   # (optional; the node's default 4)
//! ```
//!
//! A `[run]` table (optional, read by `lab run`) adds a workload: see [`super::run::RunSpec`].
//!
//! Addresses (all inside 198.18.0.0/15, RFC 2544's benchmarking range): the public segment is
//! 198.18.0.0/24, public hosts 198.18.0.10 and up, routers' public legs 198.18.0.100 and up;
//! router number N (1-based, in file order) has the private segment 198.18.N.0/24, its own
//! address there 198.18.N.1 and its hosts 198.18.N.10 and up.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::LabError;

/// Most hosts on one segment and most routers (the plan's address ranges).
const MAX_PER_SEGMENT: usize = 80;
const MAX_ROUTERS: usize = 120;
/// The node's own bound on `network.relay_reservations`.
const MAX_RELAY_RESERVATIONS: usize = 8;

/// How a router maps its hosts' connections to its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nat {
    /// Endpoint-independent mapping: each host's node port keeps one public port of its own for
    /// every destination (a static nftables `snat` map, `masquerade` for other sockets).
    Eim,
    /// Address-and-port-dependent mapping: every new connection gets a random external port
    /// (nftables `masquerade fully-random`).
    Symmetric,
}

/// A router: one leg on the public segment, one on a private segment of its own, NAT between.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSpec {
    pub name: String,
    pub nat: Nat,
    /// One-way delay of the router's public link, in ms.
    #[serde(default)]
    pub latency_ms: u32,
    /// Packet loss on the router's public link, in percent, each way.
    #[serde(default)]
    pub loss_pct: f64,
}

/// A host: one `capmesh run` process in a namespace of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    /// The router it sits behind; none: a public host on the public segment.
    #[serde(default)]
    pub behind: Option<String>,
    /// Serve as a relay for others (public hosts).
    #[serde(default)]
    pub relay_server: bool,
    /// Builtins it serves (`echo`, `blake3`, `sleep`, …).
    #[serde(default)]
    pub serve: Vec<String>,
    /// Serve each builtin under a contract of its own named `lab.<builtin>.<host>`, so every
    /// provider has a capability id of its own (a caller then picks the provider by id).
    #[serde(default)]
    pub named: bool,
    /// `network.gossip`: take part in registry gossip.
    #[serde(default = "yes")]
    pub gossip: bool,
    /// `registry.sync`: catch up with peers through Sync. With `gossip = false` too, the
    /// replica holds only what the node's own finds brought back, so a find by id goes
    /// through Kademlia.
    #[serde(default = "yes")]
    pub sync: bool,
    /// `network.relay_reservations` (absent: the node's default).
    #[serde(default)]
    pub relay_reservations: Option<usize>,
    /// `network.max_connections_per_peer` (absent: the node's default).
    #[serde(default)]
    pub max_connections_per_peer: Option<u32>,
    /// One-way delay of the host's own link, in ms.
    #[serde(default)]
    pub latency_ms: u32,
    /// Packet loss on the host's own link, in percent, each way.
    #[serde(default)]
    pub loss_pct: f64,
}

/// A topology file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default, rename = "router")]
    pub routers: Vec<RouterSpec>,
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// The workload of `lab run` (ignored by `lab up`).
    #[serde(default)]
    pub run: Option<super::run::RunSpec>,
}

fn yes() -> bool {
    true
}

impl Topology {
    /// Reads and checks a topology file.
    pub fn load(path: &Path) -> Result<Self, LabError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabError::Io {
            what: format!("cannot read the topology {}", path.display()),
            source,
        })?;
        Self::parse(&text).map_err(|e| LabError::Topology(format!("{}: {e}", path.display())))
    }

    /// Parses and checks a topology (the error says what to fix).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t: Topology = toml::from_str(text).map_err(|e| e.to_string())?;
        t.check()?;
        Ok(t)
    }

    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for name in self.routers.iter().map(|r| &r.name).chain(self.hosts.iter().map(|h| &h.name)) {
            let ok = (1..=12).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!(
                    "name {name:?}: use 1 to 12 characters of a-z, 0-9 and '-' (it becomes part of a namespace name)"
                ));
            }
            if !names.insert(name.clone()) {
                return Err(format!(
                    "name {name:?} is used twice: hosts and routers need distinct names"
                ));
            }
        }
        if let Some(run) = &self.run {
            run.check()?;
        }
        for h in &self.hosts {
            if let Some(bad) = h
                .serve
                .iter()
                .find(|s| !capmesh_exec::Builtin::ALL.iter().any(|b| b.name() == s.as_str()))
            {
                return Err(format!(
                    "host {}: serve = {bad:?} is no builtin (echo, blake3, sleep, fail, stream)",
                    h.name
                ));
            }
        }
        if self.routers.len() > MAX_ROUTERS {
            return Err(format!("{} routers: at most {MAX_ROUTERS}", self.routers.len()));
        }
        let public = self.hosts.iter().filter(|h| h.behind.is_none()).count();
        if public == 0 {
            return Err("no public host (a [[host]] without `behind`): the first one is every node's bootstrap peer".into());
        }
        if public > MAX_PER_SEGMENT {
            return Err(format!("{public} public hosts: at most {MAX_PER_SEGMENT}"));
        }
        for r in &self.routers {
            check_link(&r.name, r.latency_ms, r.loss_pct)?;
            let behind = self.hosts.iter().filter(|h| h.behind.as_ref() == Some(&r.name)).count();
            if behind > MAX_PER_SEGMENT {
                return Err(format!("{behind} hosts behind {}: at most {MAX_PER_SEGMENT}", r.name));
            }
        }
        for h in &self.hosts {
            check_link(&h.name, h.latency_ms, h.loss_pct)?;
            if h.relay_reservations.is_some_and(|n| n > MAX_RELAY_RESERVATIONS) {
                return Err(format!(
                    "host {}: relay_reservations: at most {MAX_RELAY_RESERVATIONS} (the node's limit)",
                    h.name
                ));
            }
            if let Some(router) = &h.behind
                && !self.routers.iter().any(|r| &r.name == router)
            {
                return Err(format!(
                    "host {}: behind = {router:?} names no [[router]]; add the router or fix the name",
                    h.name
                ));
            }
        }
        Ok(())
    }

    /// The first public host: every other node bootstraps from it.
    pub fn bootstrap_host(&self) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.behind.is_none())
    }

    /// The public address of public host `name`, or its private address behind its router.
    pub fn host_addr(&self, name: &str) -> Option<String> {
        let host = self.hosts.iter().find(|h| h.name == name)?;
        match &host.behind {
            None => {
                let i = self
                    .hosts
                    .iter()
                    .filter(|h| h.behind.is_none())
                    .position(|h| h.name == name)?;
                Some(format!("198.18.0.{}", 10 + i))
            }
            Some(router) => {
                let n = self.router_number(router)?;
                let i = self
                    .hosts
                    .iter()
                    .filter(|h| h.behind.as_deref() == Some(router))
                    .position(|h| h.name == name)?;
                Some(format!("198.18.{n}.{}", 10 + i))
            }
        }
    }

    /// Router `name`'s number N (1-based): its private segment is 198.18.N.0/24.
    pub fn router_number(&self, name: &str) -> Option<usize> {
        self.routers.iter().position(|r| r.name == name).map(|i| i + 1)
    }

    /// Router `name`'s address on the public segment.
    pub fn router_public_addr(&self, name: &str) -> Option<String> {
        self.router_number(name).map(|n| format!("198.18.0.{}", 99 + n))
    }

    /// Whether any link has latency or loss (netem or the delay line shapes it).
    pub fn shaped(&self) -> bool {
        self.routers.iter().any(|r| r.latency_ms > 0 || r.loss_pct > 0.0)
            || self.hosts.iter().any(|h| h.latency_ms > 0 || h.loss_pct > 0.0)
    }
}

fn check_link(name: &str, latency_ms: u32, loss_pct: f64) -> Result<(), String> {
    if latency_ms > 10_000 {
        return Err(format!("{name}: latency_ms = {latency_ms}: at most 10000"));
    }
    if !(0.0..=100.0).contains(&loss_pct) {
        return Err(format!("{name}: loss_pct = {loss_pct}: between 0 and 100"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[router]]
name = "nat1"
nat = "eim"
[[router]]
name = "nat2"
nat = "symmetric"
latency_ms = 10
[[host]]
name = "relay"
relay_server = true
[[host]]
name = "a"
behind = "nat1"
serve = ["echo"]
[[host]]
name = "b"
behind = "nat2"
[[host]]
name = "c"
behind = "nat2"
"#;

    #[test]
    fn addresses_follow_the_plan() {
        let t = Topology::parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.host_addr("relay").as_deref(), Some("198.18.0.10"));
        assert_eq!(t.host_addr("a").as_deref(), Some("198.18.1.10"));
        assert_eq!(t.host_addr("b").as_deref(), Some("198.18.2.10"));
        assert_eq!(t.host_addr("c").as_deref(), Some("198.18.2.11"));
        assert_eq!(t.router_public_addr("nat2").as_deref(), Some("198.18.0.101"));
        assert_eq!(t.routers[1].nat, Nat::Symmetric);
        assert!(t.shaped());
        assert_eq!(t.bootstrap_host().map(|h| h.name.as_str()), Some("relay"));
    }

    #[test]
    fn the_shipped_topologies_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join("lab");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            Topology::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n >= 2, "topologies shipped: {n}");
    }

    #[test]
    fn bad_topologies_say_what_to_fix() {
        let no_public =
            "[[router]]\nname = \"r\"\nnat = \"eim\"\n[[host]]\nname = \"a\"\nbehind = \"r\"\n";
        assert!(Topology::parse(no_public).unwrap_err().contains("no public host"));
        let unknown = "[[host]]\nname = \"p\"\n[[host]]\nname = \"a\"\nbehind = \"x\"\n";
        assert!(Topology::parse(unknown).unwrap_err().contains("names no [[router]]"));
        let bad_name = "[[host]]\nname = \"Big_Name\"\n";
        assert!(Topology::parse(bad_name).unwrap_err().contains("a-z"));
        let twice = "[[host]]\nname = \"p\"\n[[host]]\nname = \"p\"\n";
        assert!(Topology::parse(twice).unwrap_err().contains("twice"));
        let nat = "[[router]]\nname = \"r\"\nnat = \"cone\"\n[[host]]\nname = \"p\"\n";
        assert!(Topology::parse(nat).is_err());
    }
}
