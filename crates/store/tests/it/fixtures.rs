//! Seeded keys, contracts and signed records for store tests.

use capmesh_store::{Config, Item, Store};
use capmesh_types::{Cid, Codec, NodeKey, PeerId};
use capmesh_wire::*;
use serde_json::json;

pub const NOW: u64 = 1_760_000_000_000;
pub const HOUR: u64 = 3_600_000;

pub fn key(n: u8) -> NodeKey {
    NodeKey::from_seed([n; 32])
}

pub fn contract(name: &str, tags: &[&str], description: &str) -> Contract {
    Contract {
        name: name.into(),
        version: "1.0.0".into(),
        description: description.into(),
        input: json!({"type": "object"}),
        output: json!({"type": "object"}),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        read_only: true,
        idempotent: true,
        streaming: false,
    }
}

pub fn cap_id(c: &Contract) -> Cid {
    Cid::of(Codec::DagCbor, &cbor::to_vec(c).unwrap())
}

pub struct AdvertSpec {
    pub seq: u64,
    pub amount: u64,
    pub unit: &'static str,
    pub issued: u64,
    pub expires: u64,
}

impl Default for AdvertSpec {
    fn default() -> Self {
        Self { seq: 1, amount: 100, unit: "usd-micro", issued: NOW - 1_000, expires: NOW + HOUR }
    }
}

pub fn advert(provider: &NodeKey, contract: &Contract, spec: AdvertSpec) -> Item {
    let advert = Advert {
        capability: cap_id(contract),
        provider: provider.peer_id(),
        addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        price: Price { amount: spec.amount, unit: spec.unit.into() },
        limits: CallLimits { timeout_ms: 30_000, max_input_bytes: 65_536, concurrency: 4 },
        attestations: vec![],
        seq: spec.seq,
        issued: spec.issued,
        expires: spec.expires,
    };
    Item::Advert { advert: Signed::sign(provider, &advert).unwrap(), contract: contract.clone() }
}

pub fn retirement(provider: &NodeKey, contract: &Contract, seq: u64) -> Item {
    let r = Retirement {
        provider: provider.peer_id(),
        capability: cap_id(contract),
        seq,
        issued: NOW - 500,
    };
    Item::Retirement(Signed::sign(provider, &r).unwrap())
}

pub fn attestation(issuer: &NodeKey, subject: PeerId, claim: &str, expires: u64) -> Item {
    let a = Attestation {
        issuer: issuer.peer_id(),
        subject: Subject::Peer(subject),
        claim: claim.into(),
        issued: NOW - 10,
        expires,
    };
    Item::Attestation(Signed::sign(issuer, &a).unwrap())
}

pub fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, Config::default()).unwrap()
}
