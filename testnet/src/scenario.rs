//! Scenarios (`SCENARIO.toml`): a workload driven against a running testnet for a duration.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// A scenario: any of its workloads run together for `duration_secs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Names the report.
    pub name: String,
    /// How long the workloads run, in seconds (at least 1).
    pub duration_secs: u64,
    /// Finds by capability id.
    #[serde(default)]
    pub discovery: Option<Discovery>,
    /// Calls of a builtin.
    #[serde(default)]
    pub calls: Option<Calls>,
    /// Nodes killed and restarted.
    #[serde(default)]
    pub churn: Option<Churn>,
    /// Fresh capabilities published, and the time until other nodes see them.
    #[serde(default)]
    pub publish: Option<Publish>,
    /// The nodes split into groups that refuse each other's connections, then healed.
    #[serde(default)]
    pub partition: Option<Partition>,
}

/// Discovery load: `rate` finds a second, each from a random node for a random served builtin.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    pub rate: u32,
    /// Most finds in flight; beyond, issuing waits (and the report says how late it ran).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A find gives up after this long, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Call load: `rate` calls a second of the builtin `capability` from random nodes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Calls {
    pub rate: u32,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Bytes of padding in each call's arguments (echo only).
    #[serde(default)]
    pub payload_bytes: usize,
    /// `echo` (default) or `blake3`.
    #[serde(default = "echo")]
    pub capability: String,
    /// Each call's deadline, failovers included, in ms.
    #[serde(default = "default_timeout_ms")]
    pub deadline_ms: u64,
}

/// Churn: once every `every_secs` (in the middle of each period), kill (SIGKILL) `fraction` of
/// the nodes other than node 0 (the bootstrap), chosen at random, and start them again after
/// `down_secs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    pub fraction: f64,
    pub every_secs: u64,
    #[serde(default = "default_down_secs")]
    pub down_secs: u64,
}

/// Publish-to-visible: every `every_ms`, a random node publishes a fresh capability and
/// `watchers` random other nodes (of its group, while partitioned) are polled every `poll_ms`
/// until their replica holds the advert, for at most `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    pub every_ms: u64,
    #[serde(default = "default_watchers")]
    pub watchers: usize,
    /// The resolution of the figures: polling more often loads the nodes more.
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default = "default_visible_timeout_ms")]
    pub timeout_ms: u64,
}

/// Partition: at `at_secs`, the nodes are split at random into `groups` groups of equal size
/// (node 0 in the first) whose members block every node of the other groups (each node's block
/// list, through its API); one node of each group then publishes a fresh capability, so the
/// replicas differ. At `heal_secs` the blocks are lifted, and every node is polled every
/// `poll_ms` until its replica holds every advert published anywhere before the heal — the
/// replica convergence time — for at most `converge_timeout_secs`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    #[serde(default = "two")]
    pub groups: usize,
    pub at_secs: u64,
    pub heal_secs: u64,
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default = "default_converge_timeout_secs")]
    pub converge_timeout_secs: u64,
}

/// Longest scenario: a day.
pub const MAX_DURATION_SECS: u64 = 86_400;
/// Most operations a second of one workload.
pub const MAX_RATE: u32 = 10_000;
/// Longest find timeout or call deadline: ten minutes.
pub const MAX_TIMEOUT_MS: u64 = 600_000;

fn default_concurrency() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_down_secs() -> u64 {
    2
}
fn default_watchers() -> usize {
    8
}
fn default_poll_ms() -> u64 {
    50
}
fn default_visible_timeout_ms() -> u64 {
    30_000
}
fn two() -> usize {
    2
}
fn default_converge_timeout_secs() -> u64 {
    120
}
fn echo() -> String {
    "echo".into()
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let s: Scenario = toml::from_str(&text)
            .with_context(|| format!("invalid scenario {}", path.display()))?;
        s.check().with_context(|| format!("invalid scenario {}", path.display()))?;
        Ok(s)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.name.is_empty()
                && self.name.len() <= 64
                && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "name must be 1 to 64 characters of [A-Za-z0-9_-] (it names the report file)"
        );
        anyhow::ensure!(
            (1..=MAX_DURATION_SECS).contains(&self.duration_secs),
            "duration_secs must be 1 to {MAX_DURATION_SECS}"
        );
        anyhow::ensure!(
            self.discovery.is_some()
                || self.calls.is_some()
                || self.churn.is_some()
                || self.publish.is_some()
                || self.partition.is_some(),
            "the scenario has no workload: add [discovery], [calls], [churn], [publish] or [partition]"
        );
        if let Some(d) = &self.discovery {
            anyhow::ensure!(
                (1..=MAX_RATE).contains(&d.rate),
                "[discovery] rate must be 1 to {MAX_RATE}"
            );
            anyhow::ensure!(d.concurrency > 0, "[discovery] concurrency must be positive");
            anyhow::ensure!(
                (1..=MAX_TIMEOUT_MS).contains(&d.timeout_ms),
                "[discovery] timeout_ms must be 1 to {MAX_TIMEOUT_MS}"
            );
        }
        if let Some(c) = &self.calls {
            anyhow::ensure!(
                (1..=MAX_RATE).contains(&c.rate),
                "[calls] rate must be 1 to {MAX_RATE}"
            );
            anyhow::ensure!(c.concurrency > 0, "[calls] concurrency must be positive");
            anyhow::ensure!(
                (1..=MAX_TIMEOUT_MS).contains(&c.deadline_ms),
                "[calls] deadline_ms must be 1 to {MAX_TIMEOUT_MS}"
            );
            anyhow::ensure!(
                ["echo", "blake3"].contains(&c.capability.as_str()),
                "[calls] capability must be \"echo\" or \"blake3\""
            );
            anyhow::ensure!(
                c.payload_bytes <= 512 * 1024,
                "[calls] payload_bytes is at most 524288"
            );
        }
        if let Some(c) = &self.churn {
            anyhow::ensure!(
                (0.0..=1.0).contains(&c.fraction),
                "[churn] fraction is between 0 and 1"
            );
            anyhow::ensure!(c.every_secs > 0, "[churn] every_secs must be positive");
        }
        let poll = 10..=10_000;
        if let Some(p) = &self.publish {
            anyhow::ensure!(
                (10..=MAX_TIMEOUT_MS).contains(&p.every_ms),
                "[publish] every_ms must be 10 to {MAX_TIMEOUT_MS}"
            );
            anyhow::ensure!((1..=64).contains(&p.watchers), "[publish] watchers must be 1 to 64");
            anyhow::ensure!(poll.contains(&p.poll_ms), "[publish] poll_ms must be 10 to 10000");
            anyhow::ensure!(
                (1..=MAX_TIMEOUT_MS).contains(&p.timeout_ms),
                "[publish] timeout_ms must be 1 to {MAX_TIMEOUT_MS}"
            );
        }
        if let Some(p) = &self.partition {
            anyhow::ensure!((2..=16).contains(&p.groups), "[partition] groups must be 2 to 16");
            anyhow::ensure!(
                p.at_secs < p.heal_secs && p.heal_secs <= self.duration_secs,
                "[partition] needs at_secs < heal_secs <= duration_secs"
            );
            anyhow::ensure!(poll.contains(&p.poll_ms), "[partition] poll_ms must be 10 to 10000");
            anyhow::ensure!(
                (1..=3_600).contains(&p.converge_timeout_secs),
                "[partition] converge_timeout_secs must be 1 to 3600"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{e}")) {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 4, "scenarios shipped: {n}");
    }

    #[test]
    fn bad_scenarios_are_refused() {
        for bad in [
            "name = \"x\"\nduration_secs = 0\n[discovery]\nrate = 1\n",
            "name = \"x\"\nduration_secs = 5\n",
            "name = \"x\"\nduration_secs = 5\n[calls]\nrate = 1\ncapability = \"fail\"\n",
            "name = \"x\"\nduration_secs = 5\n[churn]\nfraction = 2.0\nevery_secs = 10\n",
            "name = \"x\"\nduration_secs = 5\n[discovery]\nrate = 0\n",
            "name = \"../x\"\nduration_secs = 5\n[discovery]\nrate = 1\n",
            "name = \"x\"\nduration_secs = 99999999\n[discovery]\nrate = 1\n",
            "name = \"x\"\nduration_secs = 5\n[calls]\nrate = 1\ndeadline_ms = 18446744073709551615\n",
            "name = \"x\"\nduration_secs = 5\n[partition]\nat_secs = 3\nheal_secs = 2\n",
            "name = \"x\"\nduration_secs = 5\n[partition]\nat_secs = 1\nheal_secs = 6\n",
            "name = \"x\"\nduration_secs = 5\n[partition]\ngroups = 1\nat_secs = 1\nheal_secs = 2\n",
            "name = \"x\"\nduration_secs = 5\n[publish]\nevery_ms = 1000\nwatchers = 0\n",
            "name = \"x\"\nduration_secs = 5\n[publish]\nevery_ms = 1\n",
        ] {
            let s: Scenario = toml::from_str(bad).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.check().is_err(), "{bad}");
        }
        assert!(
            toml::from_str::<Scenario>("name = \"x\"\nduration_secs = 5\nspeed = 1\n").is_err()
        );
    }
}
