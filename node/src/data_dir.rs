//! The data directory: the node key, the configuration, and the replica.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use capmesh_types::{KeyError, NodeKey, PeerId};

use crate::Config;

/// A node's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

/// What [`DataDir::init`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initialized {
    pub peer_id: PeerId,
    pub key_file: PathBuf,
    pub config_file: PathBuf,
}

impl DataDir {
    pub const CONFIG_FILE: &'static str = "config.toml";
    /// The replica's directory (sled), relative to the data directory.
    pub const REPLICA_DIR: &'static str = "replica";

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$CAPMESH_DATA_DIR` is handled by the CLI; this is the platform default
    /// (e.g. `~/.local/share/capmesh` on Linux).
    pub fn platform_default() -> anyhow::Result<PathBuf> {
        dirs::data_dir()
            .map(|d| d.join("capmesh"))
            .context("no platform data directory; pass --data-dir or set CAPMESH_DATA_DIR")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join(Self::CONFIG_FILE)
    }

    /// The registry replica (`<data dir>/replica`), opened by `capmesh_store::Store::open`.
    pub fn replica_dir(&self) -> PathBuf {
        self.root.join(Self::REPLICA_DIR)
    }

    pub fn config(&self) -> anyhow::Result<Config> {
        Config::load(&self.config_file())
    }

    pub fn key_file(&self, config: &Config) -> PathBuf {
        self.root.join(&config.identity.key_file)
    }

    /// Creates the key and a commented default configuration. Refuses to touch a directory
    /// that already holds either, so an identity is never overwritten.
    pub fn init(&self) -> anyhow::Result<Initialized> {
        let config_file = self.config_file();
        if config_file.exists() {
            bail!(
                "{} already exists: this data directory is initialized (use another --data-dir)",
                config_file.display()
            );
        }
        let config = Config::default();
        let key_file = self.key_file(&config);
        let key = NodeKey::generate()?;
        key.save(&key_file).map_err(|e| match e {
            KeyError::Exists(path) => anyhow::anyhow!(
                "{} already exists: refusing to overwrite a node identity",
                path.display()
            ),
            e => e.into(),
        })?;
        fs::write(&config_file, Config::DEFAULT_TOML)
            .with_context(|| format!("cannot write {}", config_file.display()))?;
        Ok(Initialized { peer_id: key.peer_id(), key_file, config_file })
    }

    /// Initializes the directory unless it already holds a configuration (first run of
    /// `capmesh run`). Returns what was created, if anything.
    pub fn ensure_init(&self) -> anyhow::Result<Option<Initialized>> {
        if self.config_file().exists() {
            return Ok(None);
        }
        fs::create_dir_all(&self.root)
            .with_context(|| format!("cannot create {}", self.root.display()))?;
        self.init().map(Some)
    }

    /// Loads the node key, with a hint when the directory was never initialized.
    pub fn load_key(&self) -> anyhow::Result<NodeKey> {
        let config = self.config()?;
        let path = self.key_file(&config);
        if !path.exists() {
            bail!(
                "no node key at {}; run `capmesh init` (or pass the right --data-dir)",
                path.display()
            );
        }
        Ok(NodeKey::load(&path)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_refuse_second_init() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("node"));
        let created = dir.init().unwrap();
        assert_eq!(dir.load_key().unwrap().peer_id(), created.peer_id);
        assert_eq!(dir.config().unwrap(), Config::default());
        let err = dir.init().unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(dir.load_key().unwrap().peer_id(), created.peer_id);
    }

    #[test]
    fn missing_key_says_how_to_fix_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = DataDir::new(tmp.path()).load_key().unwrap_err().to_string();
        assert!(err.contains("capmesh init"), "{err}");
    }
}
