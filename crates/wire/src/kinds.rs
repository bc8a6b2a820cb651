//! The v1 kinds (DESIGN §2) and their bodies. Each body mirrors `specs/schemas/kinds/<Kind>.json`.

use capmesh_types::{Cid, Digest, PeerId};
use serde::{Deserialize, Serialize};

use crate::{
    Advert, Attestation, CallId, Contract, Countersignature, Price, Receipt, Retirement,
    cbor::{self, DecodeError},
    error::VerifyError,
    repr::{self, Bytes},
    signed::{Signed, Verified},
};

/// How a kind travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Carrier {
    /// Gossip on `capmesh/registry/1`, or rpc; `to` may be absent.
    Gossip,
    /// Request-response `/capmesh/rpc/1.0.0` only; `to` is required.
    Rpc,
}

macro_rules! kinds {
    ($($kind:ident($body:ident) $carrier:ident,)*) => {
        /// An envelope's kind: its PascalCase name is its wire form.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Kind { $($kind,)* }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind,)*];

            pub const fn name(self) -> &'static str {
                match self { $(Kind::$kind => stringify!($kind),)* }
            }

            pub const fn carrier(self) -> Carrier {
                match self { $(Kind::$kind => Carrier::$carrier,)* }
            }

            /// Rust name of the body type (the JSON Schema's `title`).
            pub const fn body_type(self) -> &'static str {
                match self { $(Kind::$kind => stringify!($body),)* }
            }
        }

        /// An envelope's body, one variant per kind.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Body { $($kind($body),)* }

        impl Body {
            pub fn kind(&self) -> Kind {
                match self { $(Body::$kind(_) => Kind::$kind,)* }
            }

            /// Typed decode of a body's bytes, already checked canonical, for `kind`.
            pub(crate) fn decode_checked(kind: Kind, bytes: &[u8]) -> Result<Self, DecodeError> {
                Ok(match kind {
                    $(Kind::$kind => Body::$kind(cbor::decode_checked(bytes, stringify!($body))?),)*
                })
            }

            /// Decode of a body's JSON projection for `kind`, with the body's rules
            /// ([`Body::check`]) as in the CBOR form.
            pub fn from_json(kind: Kind, json: serde_json::Value) -> Result<Self, serde_json::Error> {
                let body = match kind {
                    $(Kind::$kind => Body::$kind(serde_json::from_value(json)?),)*
                };
                body.check(cbor::Limits::default()).map_err(serde::de::Error::custom)?;
                Ok(body)
            }
        }

        $(impl From<$body> for Body {
            fn from(body: $body) -> Self { Body::$kind(body) }
        })*
    };
}

kinds! {
    AdvertiseCapability(AdvertiseCapability) Gossip,
    Retire(Retire) Gossip,
    Attest(Attest) Gossip,
    Discover(Discover) Rpc,
    DiscoverResult(DiscoverResult) Rpc,
    Sync(Sync) Rpc,
    SyncResult(SyncResult) Rpc,
    Intent(Intent) Rpc,
    Offer(Offer) Rpc,
    Negotiate(Negotiate) Rpc,
    TaskStart(TaskStart) Rpc,
    TaskAccepted(TaskAccepted) Rpc,
    TaskProgress(TaskProgress) Rpc,
    TaskDone(TaskDone) Rpc,
    TaskCancel(TaskCancel) Rpc,
    Receipt(ReceiptCountersign) Rpc,
    Error(ErrorBody) Rpc,
}

/// A signed Advert with the contract it names, so every replica can index tags and text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertiseCapability {
    pub advert: Signed<Advert>,
    pub contract: Contract,
}

impl AdvertiseCapability {
    /// Verifies the advert and that the contract is the one it names: the contract's CID must
    /// be the advert's capability id.
    pub fn verify(
        &self,
        now_ms: u64,
        rules: &crate::Rules,
    ) -> Result<Verified<Advert>, VerifyError> {
        let advert = self.advert.verify(now_ms, rules)?;
        self.check_contract(&advert.record.capability)?;
        Ok(advert)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retire {
    pub retirement: Signed<Retirement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attest {
    pub attestation: Signed<Attestation>,
}

/// Filters of a replica query; all present filters must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Every tag must be on the contract.
    pub tags: Vec<String>,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub name_prefix: Option<String>,
    /// Words searched in name, description and tags.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<PeerId>,
    /// Only adverts in this unit at or below this amount.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<Price>,
    /// The provider must hold an unexpired attestation with this claim …
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// … issued by this peer.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<PeerId>,
    /// Only adverts issued at or after this time (unix ms).
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub issued_after: Option<u64>,
}

/// Ask a peer's replica by ids (contracts, adverts, attestations) or by filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discover {
    /// Capability ids or record ids to fetch.
    #[serde(with = "repr")]
    pub ids: Vec<Cid>,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Most adverts to return.
    pub limit: u32,
    /// Opaque position from a previous `DiscoverResult`.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverResult {
    pub contracts: Vec<Contract>,
    pub adverts: Vec<Signed<Advert>>,
    pub attestations: Vec<Signed<Attestation>>,
    pub retirements: Vec<Signed<Retirement>>,
    /// Present when more results follow.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Bytes>,
}

/// A range of record ids for set reconciliation: ids in `[lower, upper)` (binary CIDs; an empty
/// `lower` means from the lowest, an empty `upper` no bound), how many the sender holds, and the
/// XOR of their BLAKE3 digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncRange {
    /// Empty or 36 bytes, else the range is refused.
    #[serde(deserialize_with = "crate::body_rules::sync_bound")]
    pub lower: Bytes,
    #[serde(deserialize_with = "crate::body_rules::sync_bound")]
    pub upper: Bytes,
    pub count: u64,
    #[serde(with = "repr")]
    pub fingerprint: Digest,
}

/// Catch-up: a range of the peer's change log, or reconciliation over record ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum Sync {
    #[serde(rename = "log")]
    Log { from: u64, limit: u32 },
    #[serde(rename = "reconcile")]
    Reconcile { ranges: Vec<SyncRange> },
}

/// Any record a replica replicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AnyRecord {
    #[serde(rename = "advert")]
    Advert(Signed<Advert>),
    #[serde(rename = "retirement")]
    Retirement(Signed<Retirement>),
    #[serde(rename = "attestation")]
    Attestation(Signed<Attestation>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncResult {
    pub records: Vec<AnyRecord>,
    /// Contracts named by the adverts in `records`.
    pub contracts: Vec<Contract>,
    /// Log mode: the sequence number to ask from next.
    pub next: u64,
    /// The sender's latest change-log sequence number.
    pub head: u64,
    /// Reconcile mode: sub-ranges whose fingerprints still differ.
    pub ranges: Vec<SyncRange>,
}

/// Ask a provider for terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<Price>,
    /// How many calls the caller expects to make under one offer.
    pub calls: u32,
    /// When the caller gives up (unix ms).
    pub deadline: u64,
}

/// A provider's terms. The id of the envelope carrying it is the offer id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    #[serde(with = "repr")]
    pub capability: Cid,
    pub price: Price,
    /// Expected latency of one call, in milliseconds.
    pub latency_ms: u64,
    /// How many calls the offer covers.
    pub calls: u32,
    pub expires: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NegotiateAction {
    Accept,
    Counter,
    Decline,
}

/// Accept, counter or decline an offer (or decline an intent, with no offer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Negotiate {
    pub action: NegotiateAction,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Cid>,
    /// The counter price.
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskStart {
    pub call: CallId,
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr")]
    pub offer: Cid,
    pub args: serde_json::Value,
    pub deadline: u64,
}

/// The call runs longer than the inline window; `TaskProgress` and `TaskDone` follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskAccepted {
    pub call: CallId,
}

/// A chunk of a streaming output. `chain` = BLAKE3(previous chain || data), starting from 32
/// zero bytes; the last chain value is the receipt's `output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskProgress {
    pub call: CallId,
    pub seq: u64,
    pub data: Bytes,
    #[serde(with = "repr")]
    pub chain: Digest,
}

/// The outcome, with the provider's signed receipt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskDone {
    pub call: CallId,
    /// Present when the call succeeded (not for a streamed output).
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    pub receipt: Signed<Receipt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCancel {
    pub call: CallId,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The caller's countersignature of a receipt (kind `Receipt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptCountersign {
    pub countersignature: Signed<Countersignature>,
}

/// A refusal or failure (kind `Error`, and `TaskDone.error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Machine code (`Expired`, `PolicyDenied`, … specs/protocol.md §11); a code this node does
    /// not know is [`Code::Unknown`](crate::Code::Unknown).
    pub code: crate::Code,
    pub message: String,
    pub retryable: bool,
    #[serde(with = "repr", default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
