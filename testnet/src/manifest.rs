//! The manifest of a testnet (`<dir>/testnet.json`): which processes run which nodes, where.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// File name of the manifest in the testnet directory.
pub const MANIFEST: &str = "testnet.json";

/// A testnet as `up` left it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The testnet directory (node directories are `node-000`, `node-001`, …).
    pub dir: PathBuf,
    /// The seed the node keys were derived from.
    pub seed: u64,
    /// The `capmesh` binary the nodes run.
    pub capmesh: PathBuf,
    /// When `up` started (unix ms).
    pub created_ms: u64,
    pub nodes: Vec<NodeEntry>,
}

/// One node process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeEntry {
    pub index: usize,
    /// Process id of its `capmesh run` (the last one started, after churn restarts).
    pub pid: u32,
    pub data_dir: PathBuf,
    pub peer_id: String,
    /// Its TCP listen multiaddr, ending in `/p2p/<peer id>`.
    pub addr: String,
    /// Builtins it serves (`echo`, `blake3`, `sleep`).
    pub serves: Vec<String>,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST)
    }

    /// Reads the manifest of the testnet in `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no testnet in {} (no {MANIFEST}); start one with `capmesh-testnet up`",
                dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a testnet manifest", path.display()))
    }

    /// Writes it atomically (a crash leaves the old or the new one, never half of one).
    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::path(&self.dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    /// Nodes serving `builtin`.
    pub fn providers_of(&self, builtin: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.serves.iter().any(|s| s == builtin))
            .map(|n| n.index)
            .collect()
    }
}

/// The data directory of node `index` in `dir`.
pub fn node_dir(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("node-{index:03}"))
}
