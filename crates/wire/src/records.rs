//! Contracts and the signed records: Advert, Retirement, Attestation, Receipt, the caller's
//! Countersignature (DESIGN §2, §3, §5, §6), and the LedgerHead that closes a ledger export.
//! Field by field these mirror `specs/schemas/`.

use capmesh_types::{Cid, Digest, PeerId};
use serde::{Deserialize, Serialize};

use crate::repr::{self, FixedBytes};

/// A 16-byte call id, chosen by the caller, reused on failover of idempotent calls.
pub type CallId = FixedBytes<16>;

/// What a capability is: its JSON Schema contract. Its CID is the capability id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// Lower-case tool name, `^[a-z][a-z0-9_.-]{0,63}$`.
    pub name: String,
    /// Semantic version of the contract.
    pub version: String,
    pub description: String,
    /// JSON Schema 2020-12 of the arguments (an object or a boolean).
    #[serde(deserialize_with = "json_schema")]
    pub input: serde_json::Value,
    /// JSON Schema 2020-12 of the output (an object or a boolean).
    #[serde(deserialize_with = "json_schema")]
    pub output: serde_json::Value,
    pub tags: Vec<String>,
    /// Calling it changes nothing.
    pub read_only: bool,
    /// Running it twice with the same arguments has the effect of running it once.
    pub idempotent: bool,
    /// The output arrives as `TaskProgress` chunks.
    pub streaming: bool,
}

/// A JSON Schema is an object or a boolean; anything else cannot be one. (Whether it is a valid
/// 2020-12 schema is checked where contracts are admitted, with the meta-schema.)
fn json_schema<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    if value.is_object() || value.is_boolean() {
        Ok(value)
    } else {
        Err(serde::de::Error::custom("a JSON Schema must be an object or a boolean"))
    }
}

/// A price: an unsigned amount in a unit the caller may or may not accept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub amount: u64,
    pub unit: String,
}

/// What a provider promises to bear per call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    /// Longest a call may run, in milliseconds.
    pub timeout_ms: u64,
    /// Largest accepted canonical CBOR size of the arguments.
    pub max_input_bytes: u64,
    /// Calls run at once for all callers.
    pub concurrency: u32,
}

/// A provider's signed offer to serve a capability on these terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advert {
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr")]
    pub provider: PeerId,
    /// Multiaddrs where the provider listens.
    pub addrs: Vec<String>,
    pub price: Price,
    pub limits: CallLimits,
    /// Ids of attestations about the provider or the capability.
    #[serde(with = "repr")]
    pub attestations: Vec<Cid>,
    /// For each (provider, capability) the highest `seq` wins.
    pub seq: u64,
    pub issued: u64,
    pub expires: u64,
}

/// A provider withdraws a capability; an advert with a higher `seq` brings it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retirement {
    #[serde(with = "repr")]
    pub provider: PeerId,
    #[serde(with = "repr")]
    pub capability: Cid,
    pub seq: u64,
    pub issued: u64,
}

/// What an attestation speaks about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Subject {
    #[serde(rename = "peer")]
    Peer(#[serde(with = "repr")] PeerId),
    #[serde(rename = "cid")]
    Cid(#[serde(with = "repr")] Cid),
}

/// An issuer's signed claim about a peer or a content id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    #[serde(with = "repr")]
    pub issuer: PeerId,
    pub subject: Subject,
    /// The claim, `^[a-z0-9][a-z0-9_.:/-]{0,127}$` (e.g. `audited`, `org:acme/member`).
    pub claim: String,
    pub issued: u64,
    pub expires: u64,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CallStatus {
    Ok,
    Failed,
    Cancelled,
    TimedOut,
}

/// Whether the provider's output matched the contract's output schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Validation {
    Passed,
    Failed,
    /// No output to check (the call failed, was cancelled or timed out).
    Skipped,
}

/// The provider's signed account of one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub call: CallId,
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr")]
    pub caller: PeerId,
    #[serde(with = "repr")]
    pub provider: PeerId,
    /// Id of the `Offer` envelope the call was made under.
    #[serde(with = "repr")]
    pub offer: Cid,
    /// BLAKE3 of the canonical CBOR of the arguments.
    #[serde(with = "repr")]
    pub input: Digest,
    /// BLAKE3 of the canonical CBOR of the output, or the last link of the `TaskProgress`
    /// chain for a streaming capability; absent when there is no output.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Digest>,
    pub price: Price,
    pub started: u64,
    pub ended: u64,
    pub status: CallStatus,
    pub validation: Validation,
}

/// The caller's signature over a receipt id: the second party of a two-party receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Countersignature {
    #[serde(with = "repr")]
    pub receipt: Cid,
    #[serde(with = "repr")]
    pub caller: PeerId,
    pub signed: u64,
}

/// A node's signed statement of its receipt ledger's length and last chain hash: the last line of
/// an export (protocol.md §6.9), so that a truncated, extended or emptied export is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerHead {
    /// The node whose ledger this is; the signer.
    #[serde(with = "repr")]
    pub node: PeerId,
    /// Number of entries (the next sequence number).
    pub len: u64,
    /// Chain hash of the last entry (`seq = len - 1`); 32 zero bytes when `len` is 0.
    #[serde(with = "repr")]
    pub hash: Digest,
    /// When the head was signed (unix ms).
    pub issued: u64,
}

impl LedgerHead {
    /// The chain hash an empty ledger starts from, and its head carries.
    pub const EMPTY_HASH: [u8; 32] = [0; 32];
}
