use capmesh_types::{Cid, PeerId};

use crate::{Kind, cbor::DecodeError};

/// Why a signed record or an envelope was refused. [`VerifyError::code`] is the stable name
/// used in `Error` bodies and in the test vectors of specs/.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("the signer's public key is not a valid ed25519 key")]
    BadKey,
    #[error("the signature does not verify over the payload with the {domain} domain tag")]
    BadSignature { domain: &'static str },
    #[error("content id is {actual}, expected {expected}")]
    CidMismatch { expected: Cid, actual: Cid },
    #[error("expired at {expires} ms, now is {now} ms")]
    Expired { expires: u64, now: u64 },
    #[error("dated {at} ms, beyond the allowed clock skew from now ({now} ms)")]
    FutureDated { at: u64, now: u64 },
    #[error("valid for {ttl_ms} ms, longer than the {max_ms} ms this node accepts")]
    TtlTooLong { ttl_ms: u64, max_ms: u64 },
    #[error("envelope {0} was already received")]
    Replay(Cid),
    #[error("replay cache is full of unexpired envelopes; retry later")]
    ReplayCacheFull,
    #[error("addressed to {to:?}, this node is {me}")]
    Misaddressed { to: Option<PeerId>, me: PeerId },
    #[error("schema {schema} is not a known schema for {kind:?}")]
    UnknownSchema { kind: Kind, schema: Cid },
    #[error("unsupported protocol version {0}; this node speaks version 1")]
    UnsupportedVersion(u64),
}

impl VerifyError {
    /// Stable machine name of the error class.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Decode(e) => e.code(),
            Self::BadKey => "BadKey",
            Self::BadSignature { .. } => "BadSignature",
            Self::CidMismatch { .. } => "CidMismatch",
            Self::Expired { .. } => "Expired",
            Self::FutureDated { .. } => "FutureDated",
            Self::TtlTooLong { .. } => "TtlTooLong",
            Self::Replay(_) => "Replay",
            Self::ReplayCacheFull => "ReplayCacheFull",
            Self::Misaddressed { .. } => "Misaddressed",
            Self::UnknownSchema { .. } => "UnknownSchema",
            Self::UnsupportedVersion(_) => "UnsupportedVersion",
        }
    }

    /// Whether the same envelope may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::ReplayCacheFull)
    }
}

impl DecodeError {
    /// Stable machine name of the error class.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "TooLarge",
            Self::TooDeep { .. } => "TooDeep",
            Self::Truncated | Self::Malformed(_) => "Malformed",
            Self::NonCanonical { .. } => "NonCanonical",
            Self::BadLink { .. } => "BadLink",
            Self::Invalid { .. } => "InvalidObject",
        }
    }
}

/// Why something could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error(transparent)]
    Encode(#[from] crate::cbor::EncodeError),
    #[error("the record names {named} as its signer, but the key is {key}")]
    WrongSigner { named: PeerId, key: PeerId },
    #[error("the operating system gave no randomness for a nonce")]
    Randomness,
}
