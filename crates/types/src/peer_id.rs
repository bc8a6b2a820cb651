use std::{fmt, str::FromStr};

use crate::PublicKey;

/// Identity multihash (0x00, length 36) of the protobuf `PublicKey { Type: Ed25519, Data: 32 }`.
const PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

/// A libp2p PeerId of an ed25519 key, the only key type capmesh nodes have.
///
/// Binary form: the identity multihash of the protobuf-encoded public key (38 bytes), exactly as
/// libp2p-identity builds it; text form: base58btc (`12D3KooW…`). Because the key is inside the
/// id, a signature by a PeerId can be verified without any lookup.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerId(PublicKey);

/// Why bytes or text are not an ed25519 PeerId.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerIdError {
    #[error("invalid base58 in PeerId")]
    Base58,
    #[error("not the PeerId of an ed25519 key (capmesh nodes use ed25519 only)")]
    NotEd25519,
}

impl PeerId {
    pub const BINARY_LEN: usize = 38;

    pub const fn from_public_key(key: PublicKey) -> Self {
        Self(key)
    }

    pub const fn public_key(&self) -> &PublicKey {
        &self.0
    }

    pub fn to_bytes(&self) -> [u8; Self::BINARY_LEN] {
        let mut out = [0u8; Self::BINARY_LEN];
        out[..6].copy_from_slice(&PREFIX);
        out[6..].copy_from_slice(self.0.as_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PeerIdError> {
        let key = bytes
            .strip_prefix(&PREFIX)
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
            .ok_or(PeerIdError::NotEd25519)?;
        Ok(Self(PublicKey::from_bytes(key)))
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.to_bytes()).into_string())
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut buf = [0u8; Self::BINARY_LEN + 1];
        let len = bs58::decode(s).onto(&mut buf[..]).map_err(|e| match e {
            bs58::decode::Error::BufferTooSmall => PeerIdError::NotEd25519,
            _ => PeerIdError::Base58,
        })?;
        Self::from_bytes(&buf[..len])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::NodeKey;

    fn libp2p_peer_id(seed: [u8; 32]) -> libp2p_identity::PeerId {
        let secret = libp2p_identity::ed25519::SecretKey::try_from_bytes(seed).unwrap();
        let keypair = libp2p_identity::ed25519::Keypair::from(secret);
        libp2p_identity::PublicKey::from(keypair.public()).to_peer_id()
    }

    proptest! {
        #[test]
        fn identical_to_libp2p_identity(seed in any::<[u8; 32]>()) {
            let ours = NodeKey::from_seed(seed).peer_id();
            let theirs = libp2p_peer_id(seed);
            prop_assert_eq!(ours.to_bytes().to_vec(), theirs.to_bytes());
            prop_assert_eq!(ours.to_string(), theirs.to_base58());
            prop_assert_eq!(ours.to_string().parse::<PeerId>().unwrap(), ours);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<PeerId>();
        }
    }

    #[test]
    fn refuses_other_key_types() {
        // A sha2-256 multihash PeerId (RSA keys look like this: "Qm…").
        let rsa_like = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N";
        assert_eq!(rsa_like.parse::<PeerId>(), Err(PeerIdError::NotEd25519));
        assert_eq!("0OIl".parse::<PeerId>(), Err(PeerIdError::Base58));
    }
}
