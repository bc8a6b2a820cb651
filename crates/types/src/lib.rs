//! Identities and ids of capmesh, with no I/O beyond the key file and nothing async.
//!
//! - [`NodeKey`]: a node's ed25519 signing key (its libp2p identity); generated, saved with mode
//!   0600 and loaded with a permission check. Its `Debug` never shows the secret.
//! - [`PublicKey`] and [`PeerId`]: the verifying key and its libp2p PeerId (identity multihash of
//!   the protobuf-encoded key), derived exactly as libp2p-identity derives it.
//! - [`Digest`]: a BLAKE3-256 digest.
//! - [`Cid`]: CIDv1 with a BLAKE3-256 multihash over dag-cbor or raw bytes, printed in base32.
//!
//! ```
//! use capmesh_types::{Cid, Codec, NodeKey};
//! let key = NodeKey::from_seed([7; 32]);
//! let peer = key.peer_id();
//! assert!(peer.to_string().starts_with("12D3KooW"));
//! let cid = Cid::of(Codec::Raw, b"hello");
//! assert_eq!(cid.to_string().parse::<Cid>().unwrap(), cid);
//! ```

mod cid;
mod digest;
mod key;
mod peer_id;

pub use cid::{Cid, CidError, Codec};
pub use digest::Digest;
pub use key::{KeyError, NodeKey, PublicKey, SIGNATURE_LEN, Signature, SignatureError};
pub use peer_id::{PeerId, PeerIdError};

/// Lower-case base32 (RFC 4648 alphabet, no padding): the multibase `b` encoding of CIDs.
pub(crate) fn base32_lower() -> &'static data_encoding::Encoding {
    static ENCODING: std::sync::LazyLock<data_encoding::Encoding> =
        std::sync::LazyLock::new(|| {
            let mut spec = data_encoding::Specification::new();
            spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
            spec.encoding().expect("the base32 alphabet is a valid specification")
        });
    &ENCODING
}
