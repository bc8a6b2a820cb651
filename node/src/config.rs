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
    fn a_depth_above_the_supported_maximum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[envelope]\nmax_depth = 1000\n").unwrap();
        let err = format!("{:#}", Config::load(&path).unwrap_err());
        assert!(err.contains("max_depth = 1000"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[envelope]\nmax_sise = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_sise"), "{err}");
    }
}
