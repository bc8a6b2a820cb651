//! Deterministic sample values of every wire type: `full` with every optional field present
//! (that the body rules of protocol.md §8.8 allow together), `min` with none, and
//! [`more_bodies`] for the forms in between. Used by the vector generator and the schema drift
//! guard. Every body obeys the rules of protocol.md §8.

use capmesh_types::{Cid, Codec, Digest, NodeKey, PeerId};
use capmesh_wire::{repr::Bytes, repr::FixedBytes, *};
use serde_json::json;

pub const NOW: u64 = 1_760_000_000_000;

pub fn provider() -> NodeKey {
    NodeKey::from_seed([0x11; 32])
}
pub fn caller() -> NodeKey {
    NodeKey::from_seed([0x22; 32])
}
pub fn issuer() -> NodeKey {
    NodeKey::from_seed([0x33; 32])
}

pub fn contract(full: bool) -> Contract {
    Contract {
        name: "text.summarize".into(),
        version: "1.2.0".into(),
        description: "Summarize a text in at most n words.".into(),
        input: json!({
            "type": "object",
            "properties": {"text": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
            "required": ["text"],
            "additionalProperties": false
        }),
        output: json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}),
        tags: if full { vec!["nlp".into(), "summarize".into()] } else { vec![] },
        read_only: true,
        idempotent: true,
        streaming: false,
    }
}

/// The capability id of `contract(true)`.
pub fn capability() -> Cid {
    capability_of(true)
}

pub fn capability_of(full: bool) -> Cid {
    Cid::of(Codec::DagCbor, &cbor::to_vec(&contract(full)).expect("canonical"))
}

pub fn cid(n: u8) -> Cid {
    Cid::of(Codec::DagCbor, &[n])
}

pub fn price() -> Price {
    Price { amount: 250, unit: "usd-micro".into() }
}

/// An advert of `contract(full)`.
pub fn advert(full: bool) -> Advert {
    Advert {
        capability: capability_of(full),
        provider: provider().peer_id(),
        addrs: if full { vec!["/ip4/127.0.0.1/tcp/4001".into()] } else { vec![] },
        price: price(),
        limits: CallLimits { timeout_ms: 30_000, max_input_bytes: 65_536, concurrency: 8 },
        attestations: if full { vec![cid(1)] } else { vec![] },
        seq: 3,
        issued: NOW - 1_000,
        expires: NOW + 3_600_000,
    }
}

pub fn retirement() -> Retirement {
    Retirement {
        provider: provider().peer_id(),
        capability: capability(),
        seq: 4,
        issued: NOW - 500,
    }
}

pub fn attestation(subject_cid: bool) -> Attestation {
    Attestation {
        issuer: issuer().peer_id(),
        subject: if subject_cid {
            Subject::Cid(capability())
        } else {
            Subject::Peer(provider().peer_id())
        },
        claim: "audited".into(),
        issued: NOW - 2_000,
        expires: NOW + 86_400_000,
    }
}

pub fn call_id() -> CallId {
    FixedBytes([0xca; 16])
}

/// The arguments of the `TaskStart` fixture.
pub fn args() -> serde_json::Value {
    json!({"text": "The quick brown fox jumps over the lazy dog.", "n": 3})
}

/// The output of the `TaskDone` fixture that succeeded.
pub fn output() -> serde_json::Value {
    json!({"summary": "Fox jumps dog."})
}

/// The one chunk of the streamed output in the fixtures.
pub const CHUNK: &[u8] = b"chunk";

/// The chain value of [`CHUNK`] as chunk 0, which is also the stream's root.
pub fn chunk_chain() -> Digest {
    Digest::of(&[[0u8; 32].as_slice(), CHUNK].concat())
}

fn json_digest(value: &serde_json::Value) -> Digest {
    Digest::of(&cbor::to_vec(value).expect("canonical"))
}

/// `full`: the receipt of a call that returned [`output`]; otherwise of one that failed.
pub fn receipt(full: bool) -> Receipt {
    Receipt {
        call: call_id(),
        capability: capability(),
        caller: caller().peer_id(),
        provider: provider().peer_id(),
        offer: cid(2),
        input: json_digest(&args()),
        output: full.then(|| json_digest(&output())),
        price: price(),
        started: NOW - 300,
        ended: NOW - 100,
        status: if full { CallStatus::Ok } else { CallStatus::Failed },
        validation: if full { Validation::Passed } else { Validation::Skipped },
    }
}

/// The receipt of a call whose output was streamed as the one chunk [`CHUNK`].
pub fn receipt_streamed() -> Receipt {
    Receipt { output: Some(chunk_chain()), validation: Validation::Skipped, ..receipt(true) }
}

pub fn countersignature() -> Countersignature {
    Countersignature { receipt: cid(3), caller: caller().peer_id(), signed: NOW - 50 }
}

/// The provider's ledger head: `full`, three entries; otherwise an empty ledger.
pub fn ledger_head(full: bool) -> LedgerHead {
    LedgerHead {
        node: provider().peer_id(),
        len: if full { 3 } else { 0 },
        hash: if full { Digest::of(b"ledger entry 2") } else { Digest::from_bytes([0; 32]) },
        issued: NOW - 10,
    }
}

pub fn signed<T: Record>(key: &NodeKey, record: &T) -> Signed<T> {
    Signed::sign(key, record).expect("fixture signer matches")
}

pub fn error_body(full: bool) -> ErrorBody {
    ErrorBody {
        code: "RateLimited".into(),
        message: "too many calls from this peer".into(),
        retryable: true,
        retry_after_ms: full.then_some(1_500),
    }
}

pub fn range() -> SyncRange {
    SyncRange {
        lower: Bytes(vec![]),
        upper: Bytes(cid(9).to_bytes().to_vec()),
        count: 12,
        fingerprint: Digest::of(b"fp"),
    }
}

/// One body per kind, in `Kind::ALL` order; `full` sets every optional field the body rules allow
/// together (a `TaskDone` has its output, not an error).
pub fn bodies(full: bool) -> Vec<Body> {
    let advert = signed(&provider(), &advert(full));
    let attestation = signed(&issuer(), &attestation(full));
    let retirement = signed(&provider(), &retirement());
    vec![
        AdvertiseCapability { advert: advert.clone(), contract: contract(full) }.into(),
        Retire { retirement: retirement.clone() }.into(),
        Attest { attestation: attestation.clone() }.into(),
        Discover {
            ids: if full { vec![capability()] } else { vec![] },
            filter: full.then(|| Filter {
                tags: vec!["nlp".into()],
                name_prefix: Some("text.".into()),
                text: Some("summarize".into()),
                provider: Some(provider().peer_id()),
                max_price: Some(price()),
                claim: Some("audited".into()),
                issuer: Some(issuer().peer_id()),
                issued_after: Some(NOW - 86_400_000),
            }),
            limit: 50,
            cursor: full.then(|| Bytes(vec![1, 2, 3])),
        }
        .into(),
        DiscoverResult {
            contracts: if full { vec![contract(true)] } else { vec![] },
            adverts: if full { vec![advert.clone()] } else { vec![] },
            attestations: if full { vec![attestation.clone()] } else { vec![] },
            retirements: if full { vec![retirement.clone()] } else { vec![] },
            cursor: full.then(|| Bytes(vec![4, 5])),
        }
        .into(),
        if full {
            Sync::Reconcile { ranges: vec![range()] }.into()
        } else {
            Sync::Log { from: 0, limit: 500 }.into()
        },
        SyncResult {
            records: if full {
                vec![
                    AnyRecord::Advert(advert.clone()),
                    AnyRecord::Retirement(retirement),
                    AnyRecord::Attestation(attestation),
                ]
            } else {
                vec![]
            },
            contracts: if full { vec![contract(true)] } else { vec![] },
            // Reconcile mode (`full`, with ranges) sends `next` 0; log mode no ranges.
            next: if full { 0 } else { 42 },
            head: 42,
            ranges: if full { vec![range()] } else { vec![] },
        }
        .into(),
        Intent {
            capability: capability(),
            max_price: full.then(price),
            calls: 10,
            deadline: NOW + 30_000,
        }
        .into(),
        Offer {
            capability: capability(),
            price: price(),
            latency_ms: 120,
            calls: 10,
            expires: NOW + 60_000,
        }
        .into(),
        Negotiate {
            action: if full { NegotiateAction::Counter } else { NegotiateAction::Decline },
            offer: full.then(|| cid(2)),
            price: full.then(|| Price { amount: 200, unit: "usd-micro".into() }),
            reason: full.then(|| "budget".into()),
        }
        .into(),
        TaskStart {
            call: call_id(),
            capability: capability(),
            offer: cid(2),
            args: args(),
            deadline: NOW + 30_000,
        }
        .into(),
        TaskAccepted { call: call_id() }.into(),
        TaskProgress { call: call_id(), seq: 0, data: Bytes(CHUNK.to_vec()), chain: chunk_chain() }
            .into(),
        // `full`: a call that returned its output; otherwise one that streamed it (neither
        // output nor error). The one that failed is in `more_bodies`.
        TaskDone {
            call: call_id(),
            output: full.then(output),
            error: None,
            receipt: signed(&provider(), &if full { receipt(true) } else { receipt_streamed() }),
        }
        .into(),
        TaskCancel { call: call_id(), reason: full.then(|| "user pressed ctrl-c".into()) }.into(),
        ReceiptCountersign { countersignature: signed(&caller(), &countersignature()) }.into(),
        error_body(full).into(),
    ]
}

/// Valid bodies of the forms `bodies` leaves out, where the rules of protocol.md §8.8 allow a
/// field only with or without others: a call that timed out, and an offer accepted.
pub fn more_bodies() -> Vec<(&'static str, Body)> {
    vec![
        (
            "TaskDone-error",
            TaskDone {
                call: call_id(),
                output: None,
                error: Some(ErrorBody {
                    code: "Timeout".into(),
                    message: "the tool ran past 30000 ms".into(),
                    retryable: true,
                    retry_after_ms: Some(5_000),
                }),
                receipt: signed(
                    &provider(),
                    &Receipt { status: CallStatus::TimedOut, ..receipt(false) },
                ),
            }
            .into(),
        ),
        (
            "Negotiate-accept",
            Negotiate {
                action: NegotiateAction::Accept,
                offer: Some(cid(2)),
                price: None,
                reason: None,
            }
            .into(),
        ),
    ]
}

/// Who sends each kind in the fixtures, and to whom (`None` for gossip).
pub fn parties(kind: Kind) -> (NodeKey, Option<PeerId>) {
    use Kind::*;
    match kind {
        AdvertiseCapability | Retire => (provider(), None),
        Attest => (issuer(), None),
        Discover | Sync | Intent | Negotiate | TaskStart | TaskCancel | Receipt => {
            (caller(), Some(provider().peer_id()))
        }
        _ => (provider(), Some(caller().peer_id())),
    }
}

/// A signed envelope for `body` at `NOW` with fixed nonce and trace.
pub fn envelope(body: Body) -> Envelope {
    let (key, to) = parties(body.kind());
    let mut builder =
        Envelope::builder(body).nonce(FixedBytes([7; 8])).trace(FixedBytes([9; 16])).ttl_ms(60_000);
    if let Some(to) = to {
        builder = builder.to(to).re(cid(5));
    }
    builder.sign(&key, NOW).expect("fixture envelope signs")
}
