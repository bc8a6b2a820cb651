use std::{fmt, path::PathBuf};

/// Why a policy could not be loaded. The previous policy, if any, stays in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file exists but could not be read (or, on reload, no longer exists).
    #[error("cannot read policy file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not TOML, or does not have the shape of a policy (an unknown key, a wrong type).
    /// `message` is the TOML parser's, with the line, column and key.
    #[error("cannot parse policy{}: {message}", InFile(path.as_ref()))]
    Parse { path: Option<PathBuf>, message: String },
    /// A value is well-formed TOML but not acceptable: a bad PeerId or CID, a zero limit, ….
    /// `field` is its dotted path, e.g. `provider.capability[0].allow[2]`.
    #[error("invalid policy value at {field}: {message}")]
    Invalid { field: String, message: String },
}

/// Displays " file <path>" when there is a path.
struct InFile<'a>(Option<&'a PathBuf>);

impl fmt::Display for InFile<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, " file {}", path.display()),
            None => Ok(()),
        }
    }
}
