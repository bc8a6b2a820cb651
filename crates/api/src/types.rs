//! The JSON bodies of the API, field for field as in `specs/api.md`.
//!
//! Requests refuse unknown fields (a misspelt option is an error, not a silent default);
//! responses accept them, so a client keeps working against a newer node that adds fields.
//! Every response field is always present, `null` when it has no value; optional request fields
//! may be left out (or be `null`).

use capmesh_types::{Cid, Digest, PeerId};
use capmesh_wire::{
    Attestation, CallId, CallLimits, Countersignature, Filter, Price, Receipt, Signed, Subject,
    cbor::Limits, repr::Bytes,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Serde for the ids of `capmesh-types` in their text form, through the wire crate's
/// [`Repr`](capmesh_wire::repr::Repr) (the same implementation the wire types use).
pub(crate) mod repr {
    use capmesh_wire::repr::Repr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<T: Repr, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        value.ser(s)
    }

    pub(crate) fn deserialize<'de, T: Repr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        T::de(d)
    }

    struct De<T>(T);
    impl<'de, T: Repr> Deserialize<'de> for De<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            T::de(d).map(De)
        }
    }

    /// An optional id of a request: absent or `null` is `None`.
    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<T: Repr, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            value.ser(s)
        }

        pub(crate) fn deserialize<'de, T: Repr, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            Ok(Option::<De<T>>::deserialize(d)?.map(|De(v)| v))
        }
    }
}

/// An optional request field without an `Option`: `null` means the default, as absence does.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What the node is and how it is doing: `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::PeerId")]
    pub peer_id: PeerId,
    /// The node's software version.
    pub version: String,
    /// Multiaddrs the node listens on.
    #[schemars(with = "Vec<crate::openapi::Multiaddr>")]
    pub listen_addrs: Vec<String>,
    /// Multiaddrs other peers have confirmed reach the node.
    #[schemars(with = "Vec<crate::openapi::Multiaddr>")]
    pub external_addrs: Vec<String>,
    pub connected_peers: u32,
    /// `"client"` or `"server"`.
    pub kad_mode: String,
    pub routing_table_peers: u32,
    pub replica: ReplicaStatus,
    pub gossip: GossipStatus,
    /// Capability ids this node currently advertises.
    #[serde(with = "repr")]
    #[schemars(with = "Vec<crate::openapi::Cid>")]
    pub published: Vec<Cid>,
    pub uptime_ms: u64,
    /// `"public"`, `"private"` (reachable through relay reservations) or `"unknown"` (AutoNAT
    /// has not decided). Empty from nodes older than this field.
    #[serde(default)]
    pub reachability: String,
    /// Circuit addresses of the relay reservations held
    /// (`<relay addr>/p2p/<relay id>/p2p-circuit/p2p/<own id>`).
    #[serde(default)]
    #[schemars(with = "Vec<crate::openapi::Multiaddr>")]
    pub relay_reservations: Vec<String>,
}

/// Counters of the registry replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ReplicaStatus {
    /// Records held now.
    pub records: u64,
    /// Records stored since the replica was created.
    pub stored: u64,
    /// Records received again.
    pub duplicates: u64,
    /// Records refused (verification failed).
    pub refused: u64,
    /// Records dropped by a cap.
    pub dropped: u64,
    /// Records removed on expiry.
    pub expired: u64,
}

/// Counters of the registry gossip topic since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct GossipStatus {
    pub accepted: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub rate_limited: u64,
}

/// A peer the node knows: `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PeerInfo {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::PeerId")]
    pub peer_id: PeerId,
    /// Multiaddrs known for the peer.
    #[schemars(with = "Vec<crate::openapi::Multiaddr>")]
    pub addrs: Vec<String>,
    /// A connection is open now.
    pub connected: bool,
    /// When the peer was last heard from (unix ms).
    pub last_seen: u64,
    /// `"direct"`, `"relayed"` (through a relay circuit), `"hole_punched"` (direct, after DCUtR
    /// replaced a relayed connection) or `"none"` (not connected). Empty from older nodes.
    #[serde(default)]
    pub connection: String,
}

/// Changes the block list: `POST /v1/blocked`. Unblocking comes first, so a peer in both
/// lists ends blocked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockRequest {
    /// Peers to block: their connections are closed and new ones refused, both ways.
    #[serde(default, with = "repr")]
    #[schemars(with = "Vec<crate::openapi::PeerId>")]
    pub block: Vec<PeerId>,
    /// Peers to unblock: those a block disconnected are dialed again.
    #[serde(default, with = "repr")]
    #[schemars(with = "Vec<crate::openapi::PeerId>")]
    pub unblock: Vec<PeerId>,
}

/// The peers blocked now: `GET /v1/blocked`, and the answer to `POST /v1/blocked`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Blocked {
    #[serde(with = "repr")]
    #[schemars(with = "Vec<crate::openapi::PeerId>")]
    pub peers: Vec<PeerId>,
}

/// Publish a capability from its contract: `POST /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The contract (specs/schemas/records/Contract.json).
    #[schemars(with = "crate::openapi::Contract")]
    pub contract: serde_json::Value,
    /// Price per call; absent: free (`{"amount": 0, "unit": "free"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Price>")]
    pub price: Option<Price>,
    /// What the provider bears per call; absent: the node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Limits>")]
    pub limits: Option<CallLimits>,
    /// Lifetime of the advert; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// Advertise it although nothing on this node serves it (calls to it then fail with
    /// `NotFound` at this provider). Absent or `false`: a capability this node does not serve
    /// is refused (`409 Conflict`).
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    #[schemars(with = "Option<bool>")]
    pub announce_only: bool,
}

/// The advert a publish produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Published {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub advert_id: Cid,
    pub seq: u64,
    /// Expiry of the advert (unix ms).
    pub expires: u64,
}

/// The retirement a `DELETE /v1/capabilities/{capability}` produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Retired {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub retirement_id: Cid,
    pub seq: u64,
}

/// Find providers of a capability: `GET /v1/find/{capability}?limit=&timeout_ms=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindRequest {
    #[serde(with = "repr")]
    pub capability: Cid,
    /// Stop after this many hits; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Stop searching after this long; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl FindRequest {
    /// A search for `capability` with the node's default limit and timeout.
    pub fn new(capability: Cid) -> Self {
        Self { capability, limit: None, timeout_ms: None }
    }
}

/// One line of the find stream: `{"hit": …}` per provider found, then one `{"done": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FindEvent {
    Hit(FindHit),
    Done(FindDone),
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The node's own registry replica.
    Replica,
    /// A Kademlia provider lookup.
    Kademlia,
}

/// A provider of the capability, with the terms of its advert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FindHit {
    pub source: Source,
    /// Kademlia requests sent so far in this search.
    pub kad_requests: u32,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::PeerId")]
    pub provider: PeerId,
    /// Multiaddrs of the provider.
    #[schemars(with = "Vec<crate::openapi::Multiaddr>")]
    pub addrs: Vec<String>,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub advert_id: Cid,
    /// Contract name.
    pub name: String,
    /// Contract version.
    pub version: String,
    #[schemars(with = "crate::openapi::Price")]
    pub price: Price,
    /// Expiry of the advert (unix ms).
    pub expires: u64,
    /// Time from the start of the search to this hit.
    pub elapsed_ms: u64,
}

/// The end of a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FindDone {
    pub hits: u32,
    pub kad_requests: u32,
    pub elapsed_ms: u64,
    /// Why the search ended early, if it did (hits sent before still stand).
    #[serde(default)]
    pub error: Option<String>,
}

/// A capability's contract: `GET /v1/contracts/{capability}`.
///
/// The capability id is the CID of the contract, and the node checked that it is before
/// answering, so `contract` is exactly what the id names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContractInfo {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    /// The contract's JSON projection (specs/schemas/records/Contract.json).
    #[schemars(with = "crate::openapi::Contract")]
    pub contract: serde_json::Value,
    /// Where the node found it: its own replica, or a provider found through Kademlia.
    pub source: Source,
}

/// A replica query: `POST /v1/registry/query`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Only adverts of this capability.
    #[serde(with = "repr::option", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Cid>")]
    pub capability: Option<Cid>,
    /// Conditions that must all hold; absent: none.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(with = "Option<crate::openapi::Filter>")]
    pub filter: Filter,
    /// Newest first (default: oldest first).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(with = "Option<bool>")]
    pub newest: bool,
    /// Page size; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Where to go on: the `next` of the previous page (lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A page of query results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueryPage {
    pub hits: Vec<QueryHit>,
    /// Cursor of the next page (lowercase hex); `null` on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

/// A live advert matching a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QueryHit {
    /// The advert's id.
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub id: Cid,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    /// Contract name.
    pub name: String,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::PeerId")]
    pub provider: PeerId,
    #[schemars(with = "crate::openapi::Price")]
    pub price: Price,
    pub issued: u64,
    pub expires: u64,
}

/// Default page size of `GET /v1/receipts`.
pub const LEDGER_PAGE_DEFAULT: u32 = 100;
/// Largest page size of `GET /v1/receipts`.
pub const LEDGER_PAGE_MAX: u32 = 1000;

/// A page of the receipt ledger: `GET /v1/receipts?from=&limit=` (the query string).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerRequest {
    /// First sequence number; absent: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Most entries, 1 to [`LEDGER_PAGE_MAX`]; absent: [`LEDGER_PAGE_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// What a ledger entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum LedgerKind {
    /// A provider's signed `Receipt`.
    Receipt,
    /// A caller's signed `Countersignature` of a receipt.
    Countersignature,
}

/// One entry of a node's receipt ledger, as the API serves it and `capmesh receipts export`
/// writes it (one per line).
///
/// `seq`, `hash`, `kind` and `signed` are the entry: what verification reads. `id` and `record`
/// are derived from `signed` for people and carry no trust of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "LedgerEntry")]
pub struct LedgerEntryJson {
    /// Position in the ledger, from 0, without gaps.
    pub seq: u64,
    /// Chain hash: BLAKE3(previous entry's hash ‖ kind byte ‖ signed), the first entry chaining
    /// from 32 zero bytes (unpadded base64url).
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Digest")]
    pub hash: Digest,
    pub kind: LedgerKind,
    /// The record's id (CID of its payload); `null` if `signed` is not a signed object.
    #[serde(with = "repr::option", default)]
    #[schemars(with = "Option<crate::openapi::Cid>")]
    pub id: Option<Cid>,
    /// The canonical CBOR `{payload, sig}` of the record (unpadded base64url).
    #[schemars(with = "crate::openapi::Bytes")]
    pub signed: Bytes,
    /// The record's JSON projection `{"payload": …, "sig": …}` (`specs/schemas/records/Signed.json`
    /// over `Receipt.json` or `Countersignature.json`); `null` if the bytes do not decode as
    /// that record.
    #[serde(default)]
    #[schemars(with = "Option<crate::openapi::LedgerRecord>")]
    pub record: Option<serde_json::Value>,
    /// What this node knows locally about the call (not signed, not part of the chain):
    /// its trace id and the agent session it was made or served under. `null` when none.
    #[serde(default)]
    pub note: Option<LedgerNoteJson>,
}

/// The ledger's head, signed now by the node (protocol.md §6.9): `GET /v1/receipts/head`. It
/// is also the last line of an export (§6.10): the entries `0..len` followed by this line
/// verify with `capmesh receipts verify FILE`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LedgerHeadLine {
    pub kind: HeadKind,
    /// The canonical CBOR `{payload, sig}` of the signed `LedgerHead` (unpadded base64url).
    #[schemars(with = "crate::openapi::Bytes")]
    pub signed: Bytes,
    /// Its JSON projection `{"payload": LedgerHead, "sig": …}`.
    pub record: serde_json::Value,
}

/// The `kind` of a head line, which no ledger entry has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HeadKind {
    Head,
}

/// The local context of a ledger entry's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "LedgerNote")]
pub struct LedgerNoteJson {
    /// The call's trace id; `null` if unknown.
    #[serde(default)]
    pub trace: Option<crate::agents::TraceId>,
    /// The session's id and name; `null` for calls outside sessions.
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub session_name: Option<String>,
}

impl LedgerEntryJson {
    /// The entry at `seq` with chain hash `hash` holding `signed`, with its id and JSON
    /// projection derived from the bytes (nothing is verified).
    pub fn new(seq: u64, hash: Digest, kind: LedgerKind, signed: Vec<u8>) -> Self {
        let (id, record) = match kind {
            LedgerKind::Receipt => project::<Receipt>(&signed),
            LedgerKind::Countersignature => project::<Countersignature>(&signed),
        };
        Self { seq, hash, kind, id, signed: Bytes(signed), record, note: None }
    }
}

/// The id and JSON projection of signed bytes, as far as they decode.
fn project<T: capmesh_wire::Payload>(bytes: &[u8]) -> (Option<Cid>, Option<serde_json::Value>) {
    match Signed::<T>::from_bytes(bytes, Limits::default()) {
        // The projection decodes the payload; a payload that does not decode has none.
        Ok(signed) => (Some(signed.id()), serde_json::to_value(&signed).ok()),
        Err(_) => (None, None),
    }
}

/// A page of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LedgerPage {
    /// Entries in sequence order, from `from` on.
    pub entries: Vec<LedgerEntryJson>,
    /// `from` of the next page; `null` when this page reaches the end of the ledger.
    #[serde(default)]
    pub next: Option<u64>,
    /// Number of entries in the whole ledger (the next sequence number).
    pub len: u64,
}

/// A receipt and its countersignature: `GET /v1/receipts/{receipt_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReceiptEntries {
    pub receipt: LedgerEntryJson,
    /// The caller's countersignature, if the ledger holds one.
    #[serde(default)]
    pub countersignature: Option<LedgerEntryJson>,
}

/// Most bytes of a streaming call's chunks returned in [`CallResult::stream`] (1 MiB); the
/// rest are counted in `chunks` and covered by `stream_root`, but not returned.
pub const MAX_STREAM_BYTES: usize = 1 << 20;

/// Make a call: `POST /v1/call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallRequest {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    /// The arguments, checked against the contract's input schema before anything leaves the
    /// node.
    pub args: serde_json::Value,
    /// The call's id (16 bytes, unpadded base64url): an idempotency key, and what
    /// `POST /v1/calls/{call_id}/cancel` names. Absent: the node picks one at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::CallId>")]
    pub call_id: Option<CallId>,
    /// How offers are ranked; absent: the node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimize: Option<Optimize>,
    /// The most the call may cost; offers above it or in another unit are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Price>")]
    pub max_price: Option<Price>,
    /// How long the call may take, failovers included; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

impl CallRequest {
    /// A call of `capability` with `args` and the node's defaults for everything else.
    pub fn new(capability: Cid, args: serde_json::Value) -> Self {
        Self { capability, args, call_id: None, optimize: None, max_price: None, deadline_ms: None }
    }
}

/// Weights of offer selection (DESIGN §5 `select.optimize`): each a finite number ≥ 0, not all
/// 0; only their ratios matter. A weight left out is 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Optimize {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reputation: Option<f64>,
}

/// A call that succeeded: the answer of `POST /v1/call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallResult {
    /// The id the call ended under: the request's, unless a failover to a provider of a
    /// non-idempotent capability needed a fresh one.
    #[schemars(with = "crate::openapi::CallId")]
    pub call_id: CallId,
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub capability: Cid,
    /// The provider that ran it.
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::PeerId")]
    pub provider: PeerId,
    /// The output (valid against the contract's output schema); `null` for a streaming
    /// capability, whose output is its chunks.
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// Chunks received (streaming capabilities; 0 otherwise).
    pub chunks: u64,
    /// The chain root over the chunks, as the receipt names it (unpadded base64url); `null`
    /// unless streaming.
    #[serde(with = "repr::option", default)]
    #[schemars(with = "Option<crate::openapi::Digest>")]
    pub stream_root: Option<Digest>,
    /// The chunks' bytes, in order (unpadded base64url each), at most [`MAX_STREAM_BYTES`] in
    /// all.
    #[schemars(with = "Vec<crate::openapi::Bytes>")]
    pub stream: Vec<Bytes>,
    /// Whether chunks were left out of `stream` to keep it within [`MAX_STREAM_BYTES`].
    pub stream_truncated: bool,
    /// The receipt's id (the CID of its payload), as `GET /v1/receipts/{receipt_id}` knows it.
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub receipt_id: Cid,
    /// The provider's signed receipt, verified by the node: its JSON projection
    /// `{"payload": Receipt, "sig": …}`.
    #[schemars(with = "crate::openapi::SignedReceipt")]
    pub receipt: Signed<Receipt>,
    /// Where the receipt is in the node's ledger.
    pub ledger_seq: u64,
    /// What the call cost.
    #[schemars(with = "crate::openapi::Price")]
    pub price: Price,
    /// Made under a standing offer, without asking for terms first.
    pub warm: bool,
    /// Requests the node sent for the call (a warm call sends one).
    pub requests: u32,
    /// Time from the request to the result.
    pub elapsed_ms: u64,
    /// Tries that failed before the one that succeeded.
    pub attempts: Vec<Attempt>,
    /// The trace id every envelope of the call carried: the agent's `traceparent` trace id,
    /// or one the node chose.
    #[serde(default)]
    pub trace: Option<crate::agents::TraceId>,
}

/// Why a call failed: the `call` member of an error of `POST /v1/call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CallFailure {
    /// The call's id (the one the request named or the node chose).
    #[schemars(with = "crate::openapi::CallId")]
    pub call_id: CallId,
    /// The call's protocol code (protocol.md §11.2: `InvalidArgs`, `PolicyDenied`,
    /// `RateLimited`, …), or `Exhausted` when the providers failed for different reasons.
    pub code: String,
    /// Each try that did not succeed, in order.
    pub attempts: Vec<Attempt>,
    /// The shortest wait any provider asked for, in ms (also sent as `Retry-After`, in
    /// seconds rounded up); `null` if none did.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

/// One try at one provider that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attempt {
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::PeerId")]
    pub provider: PeerId,
    /// The provider's protocol code (protocol.md §11), or one the caller gave the try:
    /// `Unreachable`, `Declined`, `BadReceipt`, `OutputInvalid`, `InvalidObject`, …
    pub code: String,
    pub message: String,
    /// Where it failed: `"policy"` (this node's policy refused the provider), `"intent"`
    /// (asking for an offer) or `"task"` (running the call).
    pub stage: String,
    /// The wait the provider asked for, in ms; `null` if none.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}: {} ({})", self.stage, self.provider, self.message, self.code)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, ", retry after {ms} ms")?;
        }
        Ok(())
    }
}

/// Whether a call was cancelled: the answer of `POST /v1/calls/{call_id}/cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Cancelled {
    /// Always `true` (a call not in flight is `404 NotFound`).
    pub cancelled: bool,
}

/// Issue an attestation: `POST /v1/attest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// What the claim is about: a peer id (`12D3KooW…`) or a CID (`b…`), as text.
    #[serde(with = "subject_text")]
    #[schemars(with = "crate::openapi::SubjectText")]
    pub subject: Subject,
    /// The claim, `^[a-z0-9][a-z0-9_.:/-]{0,127}$` (e.g. `member`, `org:acme/audited`).
    #[schemars(with = "crate::openapi::Claim")]
    pub claim: String,
    /// When the attestation expires (unix ms); absent: 30 days from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// The attestation `POST /v1/attest` signed, stored and gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attested {
    /// Its id (the CID of its payload).
    #[serde(with = "repr")]
    #[schemars(with = "crate::openapi::Cid")]
    pub id: Cid,
    /// Its JSON projection `{"payload": Attestation, "sig": …}`.
    #[schemars(with = "crate::openapi::SignedAttestation")]
    pub attestation: Signed<Attestation>,
}

/// Attestations the node holds (its own and those gossiped to it): `GET /v1/attestations`.
/// Every filter given must match; expired attestations are never listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AttestationsRequest {
    /// Only about this subject: a peer id (`12D3KooW…`) or a CID (`b…`), as text.
    #[serde(default, with = "subject_text::optional", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::SubjectText>")]
    pub subject: Option<Subject>,
    /// Only issued by this peer.
    #[serde(default, with = "repr", skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::PeerId>")]
    pub issuer: Option<PeerId>,
    /// Only with this claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<crate::openapi::Claim>")]
    pub claim: Option<String>,
    /// Most attestations, 1 to [`ATTESTATIONS_MAX`]; absent: [`ATTESTATIONS_DEFAULT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// Most attestations one `GET /v1/attestations` lists.
pub const ATTESTATIONS_MAX: u32 = 1000;
/// Attestations listed when `limit` is absent.
pub const ATTESTATIONS_DEFAULT: u32 = 100;

/// The answer of `GET /v1/attestations`, in the replica's key order (by subject).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AttestationList {
    pub attestations: Vec<Attested>,
}

/// A [`Subject`] as the text of a peer id or of a CID.
mod subject_text {
    use capmesh_types::{Cid, PeerId};
    use capmesh_wire::Subject;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(subject: &Subject, s: S) -> Result<S::Ok, S::Error> {
        match subject {
            Subject::Peer(peer) => s.collect_str(peer),
            Subject::Cid(cid) => s.collect_str(cid),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Subject, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| {
            D::Error::custom(format!(
                "subject {text:?} is neither a peer id (12D3KooW…) nor a CID (b…)"
            ))
        })
    }

    fn parse(text: &str) -> Option<Subject> {
        if let Ok(peer) = text.parse::<PeerId>() {
            return Some(Subject::Peer(peer));
        }
        text.parse::<Cid>().ok().map(Subject::Cid)
    }

    /// The same for an optional field.
    pub(super) mod optional {
        use capmesh_wire::Subject;
        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            subject: &Option<Subject>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match subject {
                Some(subject) => super::serialize(subject, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Subject>, D::Error> {
            #[derive(Deserialize)]
            struct Text(#[serde(deserialize_with = "super::deserialize")] Subject);
            Ok(Option::<Text>::deserialize(d)?.map(|Text(s)| s))
        }
    }
}

#[cfg(test)]
mod tests {
    use capmesh_types::{Codec, NodeKey};
    use serde_json::json;

    use super::*;

    fn cid(n: u8) -> Cid {
        Cid::of(Codec::DagCbor, &[n])
    }

    #[test]
    fn find_events_are_externally_tagged_snake_case() {
        let done =
            FindEvent::Done(FindDone { hits: 1, kad_requests: 2, elapsed_ms: 3, error: None });
        assert_eq!(
            serde_json::to_value(&done).unwrap(),
            json!({"done": {"hits": 1, "kad_requests": 2, "elapsed_ms": 3, "error": null}})
        );
        let hit = FindEvent::Hit(FindHit {
            source: Source::Kademlia,
            kad_requests: 1,
            provider: NodeKey::from_seed([1; 32]).peer_id(),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            capability: cid(1),
            advert_id: cid(2),
            name: "echo".into(),
            version: "1.0.0".into(),
            price: Price { amount: 0, unit: "free".into() },
            expires: 9,
            elapsed_ms: 4,
        });
        let value = serde_json::to_value(&hit).unwrap();
        assert_eq!(value["hit"]["source"], "kademlia");
        assert_eq!(value["hit"]["capability"], cid(1).to_string());
        assert_eq!(serde_json::from_value::<FindEvent>(value).unwrap(), hit);
    }

    #[test]
    fn requests_refuse_unknown_fields_and_take_defaults() {
        let q: QueryRequest = serde_json::from_value(json!({})).unwrap();
        assert_eq!(q, QueryRequest::default());
        let q: QueryRequest = serde_json::from_value(
            json!({"capability": null, "limit": null, "filter": null, "newest": null}),
        )
        .unwrap();
        assert_eq!(q, QueryRequest::default());
        let q: QueryRequest =
            serde_json::from_value(json!({"capability": cid(3).to_string(), "newest": true}))
                .unwrap();
        assert_eq!(q.capability, Some(cid(3)));
        assert_eq!(serde_json::to_value(&q).unwrap()["capability"], cid(3).to_string());
        assert!(serde_json::from_value::<QueryRequest>(json!({"newset": true})).is_err());
        assert!(serde_json::from_value::<QueryRequest>(json!({"capability": "nope"})).is_err());

        let p: PublishRequest = serde_json::from_value(json!({"contract": {}})).unwrap();
        assert_eq!((&p.price, &p.limits, p.ttl_ms), (&None, &None, None));
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"contract": {}}));
        assert!(
            serde_json::from_value::<PublishRequest>(json!({"contract": {}, "ttl": 1})).is_err()
        );
    }

    #[test]
    fn query_page_has_the_cli_shape() {
        let page = QueryPage { hits: vec![], next: None };
        assert_eq!(serde_json::to_value(&page).unwrap(), json!({"hits": [], "next": null}));
    }
}
