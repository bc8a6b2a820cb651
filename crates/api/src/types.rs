//! The JSON bodies of the API, field for field as in `specs/api.md`.
//!
//! Requests refuse unknown fields (a misspelt option is an error, not a silent default);
//! responses accept them, so a client keeps working against a newer node that adds fields.
//! Every response field is always present, `null` when it has no value; optional request fields
//! may be left out (or be `null`).

use capmesh_types::{Cid, PeerId};
use capmesh_wire::{CallLimits, Filter, Price};
use serde::{Deserialize, Serialize};

/// Serde for the ids of `capmesh-types` in their text form, through the wire crate's
/// [`Repr`](capmesh_wire::repr::Repr) (the same implementation the wire types use).
mod repr {
    use capmesh_wire::repr::Repr;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<T: Repr, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        value.ser(s)
    }

    pub(super) fn deserialize<'de, T: Repr, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        T::de(d)
    }

    struct De<T>(T);
    impl<'de, T: Repr> Deserialize<'de> for De<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            T::de(d).map(De)
        }
    }

    /// An optional id of a request: absent or `null` is `None`.
    pub(super) mod option {
        use super::*;

        pub(in super::super) fn serialize<T: Repr, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            value.ser(s)
        }

        pub(in super::super) fn deserialize<'de, T: Repr, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            Ok(Option::<De<T>>::deserialize(d)?.map(|De(v)| v))
        }
    }
}

/// An optional request field without an `Option`: `null` means the default, as absence does.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What the node is and how it is doing: `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(with = "repr")]
    pub peer_id: PeerId,
    /// The node's software version.
    pub version: String,
    /// Multiaddrs the node listens on.
    pub listen_addrs: Vec<String>,
    /// Multiaddrs other peers have confirmed reach the node.
    pub external_addrs: Vec<String>,
    pub connected_peers: u32,
    /// `"client"` or `"server"`.
    pub kad_mode: String,
    pub routing_table_peers: u32,
    pub replica: ReplicaStatus,
    pub gossip: GossipStatus,
    /// Capability ids this node currently advertises.
    #[serde(with = "repr")]
    pub published: Vec<Cid>,
    pub uptime_ms: u64,
}

/// Counters of the registry replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GossipStatus {
    pub accepted: u64,
    pub ignored: u64,
    pub rejected: u64,
    pub rate_limited: u64,
}

/// A peer the node knows: `GET /v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    #[serde(with = "repr")]
    pub peer_id: PeerId,
    /// Multiaddrs known for the peer.
    pub addrs: Vec<String>,
    /// A connection is open now.
    pub connected: bool,
    /// When the peer was last heard from (unix ms).
    pub last_seen: u64,
}

/// Publish a capability from its contract: `POST /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// The contract (specs/schemas/records/Contract.json).
    pub contract: serde_json::Value,
    /// Price per call; absent: free (`{"amount": 0, "unit": "free"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// What the provider bears per call; absent: the node's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<CallLimits>,
    /// Lifetime of the advert; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// The advert a publish produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr")]
    pub advert_id: Cid,
    pub seq: u64,
    /// Expiry of the advert (unix ms).
    pub expires: u64,
}

/// The retirement a `DELETE /v1/capabilities/{capability}` produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindEvent {
    Hit(FindHit),
    Done(FindDone),
}

/// Where a hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The node's own registry replica.
    Replica,
    /// A Kademlia provider lookup.
    Kademlia,
}

/// A provider of the capability, with the terms of its advert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindHit {
    pub source: Source,
    /// Kademlia requests sent so far in this search.
    pub kad_requests: u32,
    #[serde(with = "repr")]
    pub provider: PeerId,
    /// Multiaddrs of the provider.
    pub addrs: Vec<String>,
    #[serde(with = "repr")]
    pub capability: Cid,
    #[serde(with = "repr")]
    pub advert_id: Cid,
    /// Contract name.
    pub name: String,
    /// Contract version.
    pub version: String,
    pub price: Price,
    /// Expiry of the advert (unix ms).
    pub expires: u64,
    /// Time from the start of the search to this hit.
    pub elapsed_ms: u64,
}

/// The end of a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindDone {
    pub hits: u32,
    pub kad_requests: u32,
    pub elapsed_ms: u64,
    /// Why the search ended early, if it did (hits sent before still stand).
    #[serde(default)]
    pub error: Option<String>,
}

/// A replica query: `POST /v1/registry/query`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// Only adverts of this capability.
    #[serde(with = "repr::option", default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<Cid>,
    /// Conditions that must all hold; absent: none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub filter: Filter,
    /// Newest first (default: oldest first).
    #[serde(default, deserialize_with = "null_as_default")]
    pub newest: bool,
    /// Page size; absent: the node's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Where to go on: the `next` of the previous page (lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// A page of query results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryPage {
    pub hits: Vec<QueryHit>,
    /// Cursor of the next page (lowercase hex); `null` on the last page.
    #[serde(default)]
    pub next: Option<String>,
}

/// A live advert matching a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryHit {
    /// The advert's id.
    #[serde(with = "repr")]
    pub id: Cid,
    #[serde(with = "repr")]
    pub capability: Cid,
    /// Contract name.
    pub name: String,
    #[serde(with = "repr")]
    pub provider: PeerId,
    pub price: Price,
    pub issued: u64,
    pub expires: u64,
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
