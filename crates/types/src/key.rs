use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::PeerId;

/// Length of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An ed25519 signature.
pub type Signature = [u8; SIGNATURE_LEN];

/// A node's ed25519 signing key: its libp2p identity, signer of its envelopes and records.
///
/// The key file holds the 32-byte seed and nothing else, with mode 0600. `Debug` is redacted.
#[derive(Clone)]
pub struct NodeKey(SigningKey);

/// Why a key could not be created, saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("the operating system gave no randomness for a new key: {0}")]
    Randomness(String),
    #[error("key file {} already exists; refusing to overwrite a node identity", .0.display())]
    Exists(PathBuf),
    #[error("key file {} is readable by group or others (mode {mode:o}); run `chmod 600 {}`", .path.display(), .path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("key file {} holds {len} bytes, expected a 32-byte ed25519 seed", .path.display())]
    Length { path: PathBuf, len: usize },
    #[error("key file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl NodeKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Randomness(e.to_string()))?;
        Ok(Self::from_seed(*seed))
    }

    /// The key whose RFC 8032 secret seed is `seed` (tests, vectors and seeded testnets).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The 32-byte seed. Handle with care: it is the node's identity.
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    pub fn peer_id(&self) -> PeerId {
        PeerId::from_public_key(self.public())
    }

    /// Signs `domain || message` (domain separation: one tag per signed type).
    pub fn sign(&self, domain: &[u8], message: &[u8]) -> Signature {
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        self.0.sign(&buf).to_bytes()
    }

    /// Writes the seed to `path` with mode 0600, creating parent directories; never
    /// overwrites. The seed goes to a temporary file first, synced, then is linked into place,
    /// so a crash never leaves a partial key under `path`.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io_err = |source| KeyError::Io { path: path.to_owned(), source };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::create_dir_all(dir).map_err(io_err)?;
        if path.exists() {
            return Err(KeyError::Exists(path.to_owned()));
        }
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| KeyError::Randomness(e.to_string()))?;
        let tmp = dir.join(format!(".key-{}.tmp", data_encoding::HEXLOWER.encode(&suffix)));
        let result = write_new(&tmp, self.seed().as_ref()).and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        result.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeyError::Exists(path.to_owned()),
            _ => io_err(e),
        })?;
        // Make the new directory entry durable too.
        #[cfg(unix)]
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        Ok(())
    }

    /// Reads a key written by [`NodeKey::save`], refusing a file that group or others can read.
    /// Permission and content come from one open file, and at most 33 bytes are read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io_err = |source| KeyError::Io { path: path.to_owned(), source };
        let file = fs::File::open(path).map_err(io_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io_err)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path: path.to_owned(), mode });
            }
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(33));
        file.take(33).read_to_end(&mut bytes).map_err(io_err)?;
        let seed: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length { path: path.to_owned(), len: bytes.len() })?;
        Ok(Self::from_seed(seed))
    }
}

/// Creates `path` (mode 0600 on unix; it must not exist), writes `bytes` and syncs.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("peer_id", &self.peer_id())
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An ed25519 public key: 32 bytes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

/// A signature that does not verify, or a key that cannot verify anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("public key is not a valid ed25519 point")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
}

impl PublicKey {
    pub const LEN: usize = 32;

    /// Wraps 32 bytes; whether they are a valid point is checked when verifying.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Verifies `sig` over `domain || message` with ed25519's strict rules (no small-order
    /// keys, canonical signatures only), so a signature has exactly one valid form.
    pub fn verify(
        &self,
        domain: &[u8],
        message: &[u8],
        sig: &Signature,
    ) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::BadKey)?;
        let mut buf = Vec::with_capacity(domain.len() + message.len());
        buf.extend_from_slice(domain);
        buf.extend_from_slice(message);
        key.verify_strict(&buf, &ed25519_dalek::Signature::from_bytes(sig))
            .map_err(|_| SignatureError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", data_encoding::HEXLOWER.encode(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_with_domain_separation() {
        let key = NodeKey::from_seed([1; 32]);
        let sig = key.sign(b"a/", b"msg");
        assert_eq!(key.public().verify(b"a/", b"msg", &sig), Ok(()));
        assert_eq!(key.public().verify(b"b/", b"msg", &sig), Err(SignatureError::BadSignature));
        assert_eq!(key.public().verify(b"a/", b"msh", &sig), Err(SignatureError::BadSignature));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = NodeKey::from_seed([0xab; 32]);
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.to_lowercase().contains("abab"), "{debug}");
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let key = NodeKey::generate().unwrap();
        key.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(NodeKey::load(&path).unwrap().public(), key.public());
        assert!(matches!(key.save(&path), Err(KeyError::Exists(_))));
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_a_key_others_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::from_seed([2; 32]).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn load_refuses_a_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::from_seed([3; 32]).save(&path).unwrap();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"x").unwrap();
        assert!(matches!(NodeKey::load(&path), Err(KeyError::Length { len: 33, .. })));
        // Reading is bounded: a huge file is not read whole.
        let big = dir.path().join("big.key");
        write_new(&big, &vec![0; 1 << 20]).unwrap();
        assert!(matches!(NodeKey::load(&big), Err(KeyError::Length { len: 33, .. })));
        // No temporary files are left behind.
        let names: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
