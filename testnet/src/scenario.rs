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
            self.discovery.is_some() || self.calls.is_some() || self.churn.is_some(),
            "the scenario has no workload: add [discovery], [calls] or [churn]"
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
        assert!(n >= 3, "scenarios shipped: {n}");
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
        ] {
            let s: Scenario = toml::from_str(bad).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.check().is_err(), "{bad}");
        }
        assert!(
            toml::from_str::<Scenario>("name = \"x\"\nduration_secs = 5\nspeed = 1\n").is_err()
        );
    }
}
