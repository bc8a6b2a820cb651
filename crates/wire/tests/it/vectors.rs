//! The test vectors of specs/vectors/ (format: specs/protocol.md §12).
//!
//! `generate()` builds every vector from the fixtures; the tests check that the files equal
//! what the code generates (no drift) and check each vector in the files on its own, the way an
//! implementation in another language would. `CAPMESH_WRITE_VECTORS=1 cargo test -p
//! capmesh-wire --test it vectors` rewrites the files.

use std::path::PathBuf;

use capmesh_types::{Cid, Codec, NodeKey, PeerId, PublicKey};
use capmesh_wire::{cbor::Limits, repr::FixedBytes, *};
use serde::Serialize;
use serde_json::{Value, json};

use crate::fixtures::{self, NOW};

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn unhex(s: &str) -> Vec<u8> {
    data_encoding::HEXLOWER.decode(s.as_bytes()).expect("vector hex")
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../specs/vectors")
}

fn file(description: &str, vectors: Vec<Value>) -> Value {
    json!({ "description": description, "vectors": vectors })
}

// ---------------------------------------------------------------------------------------------
// Generation

fn cbor_vectors() -> Value {
    let mut v = Vec::new();
    let valid = [
        ("uint-small", json!(23)),
        ("uint-1byte", json!(24)),
        ("uint-8byte", json!(u64::MAX)),
        ("nint", json!(-500)),
        ("nint-min-i64", json!(i64::MIN)),
        ("float-integral-reduced", json!(1.0)),
        ("float-negative-integral-reduced", json!(-2.0)),
        ("float-64bit", json!(0.5)),
        ("float-huge-integral-stays-float", json!(1e300)),
        ("text-unicode", json!("héllo ✓")),
        ("bool-null", json!([true, false, null])),
        ("map-length-first-order", json!({"bb": 1, "a": 2, "c": {"zz": [], "y": {}}})),
        ("nested-array", json!([[1, [2, [3]]], "x"])),
    ];
    for (name, value) in valid {
        let bytes = cbor::to_vec(&value).expect("canonical");
        v.push(json!({
            "name": name, "valid": true, "error": null, "json": value,
            "cbor_hex": hex(&bytes), "cid": Cid::of(Codec::DagCbor, &bytes).to_string(),
        }));
    }
    let link = {
        let mut b = vec![0xd8, 0x2a, 0x58, 0x25, 0x00];
        b.extend_from_slice(&fixtures::cid(1).to_bytes());
        b
    };
    v.push(json!({
        "name": "cid-link", "valid": true, "error": null,
        "cbor_hex": hex(&link), "cid": Cid::of(Codec::DagCbor, &link).to_string(),
        "link": fixtures::cid(1).to_string(),
    }));
    v.push(json!({
        "name": "raw-blob-cid", "valid": true, "error": null,
        "raw_hex": hex(b"hello"), "cid": Cid::of(Codec::Raw, b"hello").to_string(),
    }));
    let invalid: &[(&str, &str, String)] = &[
        ("non-shortest-uint", "NonCanonical", "1817".into()),
        ("non-shortest-length", "NonCanonical", "780161".into()),
        ("indefinite-bytes", "NonCanonical", "5f4101ff".into()),
        ("indefinite-map", "NonCanonical", "bf616101ff".into()),
        ("float16", "NonCanonical", "f93e00".into()),
        ("float32", "NonCanonical", "fa3fc00000".into()),
        ("float64-integral", "NonCanonical", "fb3ff0000000000000".into()),
        ("float64-nan", "NonCanonical", "fb7ff8000000000000".into()),
        ("float64-infinity", "NonCanonical", "fb7ff0000000000000".into()),
        ("keys-bytewise-unsorted", "NonCanonical", "a2616201616102".into()),
        ("keys-length-first-unsorted", "NonCanonical", "a262616101616202".into()),
        ("duplicate-key", "NonCanonical", "a2616101616102".into()),
        ("integer-key", "NonCanonical", "a10101".into()),
        ("tag-other-than-42", "NonCanonical", "c11a5f5e1000".into()),
        ("undefined", "NonCanonical", "f7".into()),
        ("truncated", "Malformed", "43aabb".into()),
        ("trailing-bytes", "Malformed", "0000".into()),
        ("invalid-utf8", "Malformed", "62c328".into()),
        (
            "link-without-multibase-prefix",
            "BadLink",
            hex(&link).replacen("d82a582500", "d82a582501", 1),
        ),
        ("too-deep", "TooDeep", format!("{}00", "81".repeat(65))),
    ];
    for (name, error, cbor_hex) in invalid {
        v.push(json!({"name": name, "valid": false, "error": error, "cbor_hex": cbor_hex}));
    }
    v.push(json!({
        "name": "too-large", "valid": false, "error": "TooLarge", "max_size": 4,
        "cbor_hex": hex(&cbor::to_vec(&json!("hello")).expect("canonical")),
    }));
    file(
        "Canonical CBOR (protocol.md §4): JSON values with their canonical bytes and CIDs, and byte \
         strings a strict decoder must refuse. Limits default to max_size 1048576 and max_depth \
         64 unless the vector names them.",
        v,
    )
}

fn identity_vectors() -> Value {
    let mut v = Vec::new();
    for (name, seed) in [
        ("seed-zero", [0u8; 32]),
        ("seed-11", [0x11; 32]),
        ("seed-counting", core::array::from_fn(|i| i as u8)),
    ] {
        let key = NodeKey::from_seed(seed);
        let message = b"capmesh";
        v.push(json!({
            "name": name, "valid": true, "error": null,
            "seed_hex": hex(&seed), "public_key_hex": hex(key.public().as_bytes()),
            "peer_id": key.peer_id().to_string(), "peer_id_hex": hex(&key.peer_id().to_bytes()),
            "domain": domain::ENVELOPE, "message_hex": hex(message),
            "signature_hex": hex(&key.sign(domain::ENVELOPE.as_bytes(), message)),
        }));
    }
    file(
        "Node identity: ed25519 seed to public key to libp2p PeerId (identity multihash of the \
         protobuf key, base58btc), and a domain-separated signature over domain || message.",
        v,
    )
}

fn record_vector<T: Record>(name: &str, seed: [u8; 32], record: &T) -> Value {
    let key = NodeKey::from_seed(seed);
    let signed = Signed::sign(&key, record).expect("fixture signer");
    json!({
        "name": name, "type": <T as Payload>::NAME, "valid": true, "error": null, "now_ms": NOW,
        "json": serde_json::to_value(record).expect("projection"),
        "domain": T::DOMAIN, "seed_hex": hex(&seed), "public_key_hex": hex(key.public().as_bytes()),
        "peer_id": key.peer_id().to_string(),
        "payload_hex": hex(signed.payload()), "signature_hex": hex(signed.sig()),
        "signed_hex": hex(&signed.to_bytes()), "id": signed.id().to_string(),
    })
}

/// A negative record vector from raw payload bytes signed under `domain`.
fn bad_record(
    name: &str,
    ty: &str,
    error: &str,
    now: u64,
    key: &NodeKey,
    dom: &str,
    payload: &[u8],
) -> Value {
    let sig = key.sign(dom.as_bytes(), payload);
    let signed = Signed::<Advert>::from_parts(payload.to_vec(), sig);
    json!({
        "name": name, "type": ty, "valid": false, "error": error, "now_ms": now, "domain": dom,
        "payload_hex": hex(payload), "signature_hex": hex(&sig), "signed_hex": hex(&signed.to_bytes()),
        "id": signed.id().to_string(),
    })
}

fn seed(key: &NodeKey) -> [u8; 32] {
    *key.seed()
}

fn record_vectors() -> Value {
    let (p, i, c) = (fixtures::provider(), fixtures::issuer(), fixtures::caller());
    let mut v = Vec::new();
    for (name, full) in [("contract-full", true), ("contract-no-tags", false)] {
        let contract = fixtures::contract(full);
        let bytes = cbor::to_vec(&contract).expect("canonical");
        v.push(json!({
            "name": name, "type": "Contract", "valid": true, "error": null,
            "json": serde_json::to_value(&contract).expect("projection"),
            "cbor_hex": hex(&bytes), "cid": Cid::of(Codec::DagCbor, &bytes).to_string(),
        }));
    }
    v.push(record_vector("advert-full", seed(&p), &fixtures::advert(true)));
    v.push(record_vector("advert-minimal", seed(&p), &fixtures::advert(false)));
    v.push(record_vector("retirement", seed(&p), &fixtures::retirement()));
    v.push(record_vector("attestation-of-peer", seed(&i), &fixtures::attestation(false)));
    v.push(record_vector("attestation-of-cid", seed(&i), &fixtures::attestation(true)));
    v.push(record_vector("receipt-ok", seed(&p), &fixtures::receipt(true)));
    v.push(record_vector("receipt-failed", seed(&p), &fixtures::receipt(false)));
    v.push(record_vector("countersignature", seed(&c), &fixtures::countersignature()));
    v.push(record_vector("ledger-head", seed(&p), &fixtures::ledger_head(true)));
    v.push(record_vector("ledger-head-empty", seed(&p), &fixtures::ledger_head(false)));

    let advert = cbor::to_vec(&fixtures::advert(true)).expect("canonical");
    let retirement = cbor::to_vec(&fixtures::retirement()).expect("canonical");
    let mut flipped =
        bad_record("bad-signature", "Advert", "BadSignature", NOW, &p, domain::ADVERT, &advert);
    let mut sig = unhex(flipped["signature_hex"].as_str().expect("hex"));
    sig[0] ^= 1;
    let signed = Signed::<Advert>::from_parts(advert.clone(), sig.clone().try_into().expect("64"));
    flipped["signature_hex"] = hex(&sig).into();
    flipped["signed_hex"] = hex(&signed.to_bytes()).into();
    v.push(flipped);
    v.push(bad_record(
        "wrong-domain",
        "Advert",
        "BadSignature",
        NOW,
        &p,
        domain::ATTESTATION,
        &advert,
    ));
    v.push(bad_record(
        "signed-by-another-key",
        "Advert",
        "BadSignature",
        NOW,
        &i,
        domain::ADVERT,
        &advert,
    ));
    v.push(bad_record(
        "advert-expired",
        "Advert",
        "Expired",
        NOW + 3_600_001,
        &p,
        domain::ADVERT,
        &advert,
    ));
    v.push(bad_record(
        "retirement-future-dated",
        "Retirement",
        "FutureDated",
        NOW - 60_000,
        &p,
        domain::RETIREMENT,
        &retirement,
    ));
    let mut mismatch = bad_record(
        "id-mismatch",
        "Retirement",
        "CidMismatch",
        NOW,
        &p,
        domain::RETIREMENT,
        &retirement,
    );
    mismatch["expected_id"] = fixtures::cid(77).to_string().into();
    v.push(mismatch);
    // Declaration order instead of canonical key order.
    let mut unsorted = Vec::new();
    ciborium::into_writer(&fixtures::retirement(), &mut unsorted).expect("ciborium writes");
    v.push(bad_record(
        "payload-keys-unsorted",
        "Retirement",
        "NonCanonical",
        NOW,
        &p,
        domain::RETIREMENT,
        &unsorted,
    ));
    let extra = cbor::value_to_vec(
        &ciborium::Value::serialized(&ExtraField(&fixtures::retirement())).expect("value"),
    )
    .expect("canonical");
    v.push(bad_record(
        "payload-unknown-field",
        "Retirement",
        "InvalidObject",
        NOW,
        &p,
        domain::RETIREMENT,
        &extra,
    ));
    let bad_link = {
        let at = retirement
            .windows(5)
            .position(|w| w == [0xd8, 0x2a, 0x58, 0x25, 0x00])
            .expect("a link");
        let mut b = retirement.clone();
        b[at + 4] = 0x01;
        b
    };
    v.push(bad_record(
        "payload-bad-cid-link",
        "Retirement",
        "BadLink",
        NOW,
        &p,
        domain::RETIREMENT,
        &bad_link,
    ));
    // A provider whose 32 key bytes are not a curve point.
    let not_a_point = (0u8..=255)
        .map(|b| [b; 32])
        .find(|k| {
            PublicKey::from_bytes(*k).verify(b"", b"", &[0; 64])
                == Err(capmesh_types::SignatureError::BadKey)
        })
        .expect("some constant byte string is not a point");
    let bad_key = Retirement {
        provider: PeerId::from_public_key(PublicKey::from_bytes(not_a_point)),
        ..fixtures::retirement()
    };
    v.push(bad_record(
        "signer-key-not-a-point",
        "Retirement",
        "BadKey",
        NOW,
        &p,
        domain::RETIREMENT,
        &cbor::to_vec(&bad_key).expect("canonical"),
    ));
    // A unit enum variant must be its name; the same variant as a one-entry map is refused.
    let enum_as_map = replace_field(&fixtures::receipt(true), "validation", |v| {
        ciborium::Value::Map(vec![(v.clone(), ciborium::Value::Integer(0.into()))])
    });
    v.push(bad_record(
        "receipt-enum-variant-as-map",
        "Receipt",
        "InvalidObject",
        NOW,
        &p,
        domain::RECEIPT,
        &enum_as_map,
    ));
    // Ledger heads: a flipped signature bit, a head signed under the receipt domain, and a head
    // naming the provider but signed by another key.
    let head = cbor::to_vec(&fixtures::ledger_head(true)).expect("canonical");
    let mut flipped = bad_record(
        "ledger-head-bad-signature",
        "LedgerHead",
        "BadSignature",
        NOW,
        &p,
        domain::LEDGER_HEAD,
        &head,
    );
    let mut sig = unhex(flipped["signature_hex"].as_str().expect("hex"));
    sig[63] ^= 0x10;
    let signed =
        Signed::<LedgerHead>::from_parts(head.clone(), sig.clone().try_into().expect("64"));
    flipped["signature_hex"] = hex(&sig).into();
    flipped["signed_hex"] = hex(&signed.to_bytes()).into();
    v.push(flipped);
    v.push(bad_record(
        "ledger-head-wrong-domain",
        "LedgerHead",
        "BadSignature",
        NOW,
        &p,
        domain::RECEIPT,
        &head,
    ));
    v.push(bad_record(
        "ledger-head-signed-by-another-key",
        "LedgerHead",
        "BadSignature",
        NOW,
        &c,
        domain::LEDGER_HEAD,
        &head,
    ));
    let mut truncated = bad_record(
        "signed-truncated",
        "Retirement",
        "Malformed",
        NOW,
        &p,
        domain::RETIREMENT,
        &retirement,
    );
    let full = truncated["signed_hex"].as_str().expect("hex").to_string();
    truncated["signed_hex"] = full[..full.len() - 2].into();
    v.push(truncated);
    file(
        "Contracts (capability id = CID of the canonical contract) and signed records: payload = \
         canonical CBOR of the record, signature = ed25519 over domain || payload, signed = \
         canonical CBOR of {payload, sig}, id = CID of the payload. `json` is the payload's JSON \
         projection. Negative vectors are judged at now_ms; `expected_id`, when present, is the id \
         the record was fetched by.",
        v,
    )
}

/// Canonical bytes of `value` with the top-level field `field` rewritten by `f`.
fn replace_field<T: Serialize>(
    value: &T,
    field: &str,
    f: impl Fn(&ciborium::Value) -> ciborium::Value,
) -> Vec<u8> {
    let mut value = ciborium::Value::serialized(value).expect("value");
    if let ciborium::Value::Map(entries) = &mut value {
        for (k, v) in entries.iter_mut() {
            if k.as_text() == Some(field) {
                *v = f(v);
            }
        }
    }
    cbor::value_to_vec(&value).expect("canonical")
}

/// Serializes a record with one field more than its schema allows.
struct ExtraField<'a, T>(&'a T);
impl<T: Serialize> Serialize for ExtraField<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error, SerializeMap};
        let ciborium::Value::Map(entries) =
            ciborium::Value::serialized(self.0).map_err(S::Error::custom)?
        else {
            return Err(S::Error::custom("a struct"));
        };
        let mut map = s.serialize_map(Some(entries.len() + 1))?;
        for (k, v) in &entries {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("note", "x")?;
        map.end()
    }
}

fn envelope_vector(name: &str, envelope: &Envelope, receiver: Option<PeerId>, now: u64) -> Value {
    let payload = envelope.decode(Limits::default()).expect("fixture decodes");
    let key = fixtures::parties(payload.kind()).0;
    json!({
        "name": name, "kind": payload.kind().name(), "valid": true, "error": null, "now_ms": now,
        "receiver": receiver.map(|r| r.to_string()),
        "json": serde_json::to_value(&payload).expect("projection"),
        "domain": domain::ENVELOPE, "seed_hex": hex(&*key.seed()),
        "public_key_hex": hex(key.public().as_bytes()), "peer_id": key.peer_id().to_string(),
        "payload_hex": hex(envelope.payload()), "signature_hex": hex(envelope.sig()),
        "signed_hex": hex(&envelope.to_bytes()), "id": envelope.id().to_string(),
        "schema": payload.schema.to_string(),
    })
}

fn bad_envelope(name: &str, error: &str, signed: &[u8], receiver: PeerId, now: u64) -> Value {
    json!({
        "name": name, "valid": false, "error": error, "now_ms": now, "domain": domain::ENVELOPE,
        "receiver": receiver.to_string(), "signed_hex": hex(signed),
    })
}

fn envelope_vectors() -> Value {
    let (p, c) = (fixtures::provider(), fixtures::caller());
    let mut v = Vec::new();
    for (full, suffix) in [(true, "full"), (false, "minimal")] {
        for body in fixtures::bodies(full) {
            let kind = body.kind();
            let (_, to) = fixtures::parties(kind);
            let receiver = to.or(Some(c.peer_id()));
            let env = fixtures::envelope(body);
            v.push(envelope_vector(
                &format!("{}-{suffix}", kind.name()),
                &env,
                receiver,
                NOW + 1_000,
            ));
        }
    }
    for (name, body) in fixtures::more_bodies() {
        let (_, to) = fixtures::parties(body.kind());
        v.push(envelope_vector(name, &fixtures::envelope(body), to, NOW + 1_000));
    }
    let cancel = || fixtures::bodies(false).swap_remove(Kind::TaskCancel as usize);
    let at_provider = p.peer_id();
    let good = fixtures::envelope(cancel());
    let seal_with = |f: &dyn Fn(&mut EnvelopePayload)| {
        let mut payload = Envelope::builder(cancel())
            .to(at_provider)
            .nonce(FixedBytes([1; 8]))
            .trace(FixedBytes([2; 16]))
            .payload(&c, NOW)
            .expect("payload");
        f(&mut payload);
        seal(&c, &payload).expect("seal").to_bytes()
    };
    v.push(bad_envelope("expired", "Expired", &good.to_bytes(), at_provider, NOW + 60_001));
    v.push(bad_envelope(
        "future-dated",
        "FutureDated",
        &good.to_bytes(),
        at_provider,
        NOW - 30_001,
    ));
    v.push(bad_envelope(
        "ttl-too-long",
        "TtlTooLong",
        &seal_with(&|p| p.exp = p.ts + 3_600_000),
        at_provider,
        NOW,
    ));
    v.push(bad_envelope(
        "misaddressed",
        "Misaddressed",
        &good.to_bytes(),
        fixtures::issuer().peer_id(),
        NOW,
    ));
    v.push(bad_envelope(
        "rpc-kind-without-recipient",
        "Misaddressed",
        &seal_with(&|p| p.to = None),
        at_provider,
        NOW,
    ));
    v.push(bad_envelope(
        "unknown-schema",
        "UnknownSchema",
        &seal_with(&|p| p.schema = fixtures::cid(99)),
        at_provider,
        NOW,
    ));
    v.push(bad_envelope(
        "unsupported-version",
        "UnsupportedVersion",
        &seal_with(&|p| p.v = 2),
        at_provider,
        NOW,
    ));
    let mut tampered = good.payload().to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01; // inside the nonce/trace/ts bytes; still canonical
    let tampered = Envelope::from_parts(tampered, *good.sig());
    v.push(bad_envelope(
        "payload-tampered",
        "BadSignature",
        &tampered.to_bytes(),
        at_provider,
        NOW,
    ));
    let mut replay = bad_envelope("replay", "Replay", &good.to_bytes(), at_provider, NOW);
    replay["deliver_first"] = json!([hex(&good.to_bytes())]);
    v.push(replay);
    let mut full_cache =
        bad_envelope("replay-cache-full", "ReplayCacheFull", &good.to_bytes(), at_provider, NOW);
    full_cache["replay_capacity"] = 1.into();
    full_cache["deliver_first"] = json!([hex(&seal_with(&|_| {}))]);
    v.push(full_cache);
    let mut large = bad_envelope("too-large", "TooLarge", &good.to_bytes(), at_provider, NOW);
    large["max_size"] = 128.into();
    v.push(large);
    let deep_args = (0..10).fold(json!(0), |acc, _| json!([acc]));
    let deep = fixtures::envelope(
        TaskStart {
            call: fixtures::call_id(),
            capability: fixtures::capability(),
            offer: fixtures::cid(2),
            args: deep_args,
            deadline: NOW + 1,
        }
        .into(),
    );
    let mut too_deep = bad_envelope("too-deep", "TooDeep", &deep.to_bytes(), at_provider, NOW);
    too_deep["max_depth"] = 8.into();
    v.push(too_deep);
    let mut unsorted = vec![0xa2];
    unsorted.extend_from_slice(b"\x67payload");
    let body = cbor::to_vec(&capmesh_wire::repr::Bytes(good.payload().to_vec())).expect("bytes");
    unsorted.extend_from_slice(&body);
    unsorted.extend_from_slice(&[0x63, b's', b'i', b'g', 0x58, 0x40]);
    unsorted.extend_from_slice(good.sig());
    v.push(bad_envelope("outer-keys-unsorted", "NonCanonical", &unsorted, at_provider, NOW));
    let missing = {
        let payload = Envelope::builder(cancel())
            .to(at_provider)
            .nonce(FixedBytes([3; 8]))
            .trace(FixedBytes([4; 16]))
            .payload(&c, NOW)
            .expect("payload");
        let mut value = ciborium::Value::serialized(&payload).expect("value");
        if let ciborium::Value::Map(entries) = &mut value {
            for (k, val) in entries.iter_mut() {
                if k.as_text() == Some("body") {
                    *val = ciborium::Value::Map(vec![]);
                }
            }
        }
        let bytes = cbor::value_to_vec(&value).expect("canonical");
        let sig = c.sign(domain::ENVELOPE.as_bytes(), &bytes);
        Envelope::from_parts(bytes, sig).to_bytes()
    };
    v.push(bad_envelope("body-missing-field", "InvalidObject", &missing, at_provider, NOW));
    let kind_as_map = {
        let payload = Envelope::builder(cancel())
            .to(at_provider)
            .nonce(FixedBytes([5; 8]))
            .trace(FixedBytes([6; 16]))
            .payload(&c, NOW)
            .expect("payload");
        let bytes = replace_field(&payload, "kind", |k| {
            ciborium::Value::Map(vec![(k.clone(), ciborium::Value::Null)])
        });
        let sig = c.sign(domain::ENVELOPE.as_bytes(), &bytes);
        Envelope::from_parts(bytes, sig).to_bytes()
    };
    v.push(bad_envelope("kind-as-map", "InvalidObject", &kind_as_map, at_provider, NOW));
    v.extend(broken_bodies());
    file(
        "Envelopes: valid vectors of every kind (with every optional field, with none, and the \
         forms that the body rules of protocol.md §8.8 allow only apart), and one per refusal, \
         including one per body rule. A receiver runs every check of protocol.md §7.2 in order \
         (check 4 is the full typed decode, body rules included) at now_ms as the peer \
         `receiver`, with max_size 1048576, max_depth 64, skew 30000 ms, max TTL 600000 ms and \
         an empty replay cache of capacity 100000 unless the vector says otherwise (`max_size`, \
         `max_depth`, `replay_capacity`); `deliver_first` lists envelopes (hex) it accepted \
         before this one.",
        v,
    )
}

/// One body per rule of protocol.md §8.8 that breaks it and nothing else: (name, error, body).
fn broken_body_cases() -> Vec<(&'static str, &'static str, Body)> {
    let broken = |name, error, body| (name, error, body);
    let provider = fixtures::provider();
    let receipt = |r: &Receipt| fixtures::signed(&provider, r);
    let done = |output: Option<Value>, error: Option<ErrorBody>, r: &Receipt| -> Body {
        TaskDone { call: fixtures::call_id(), output, error, receipt: receipt(r) }.into()
    };
    let offer = Some(fixtures::cid(2));
    let counter_price = Some(Price { amount: 200, unit: "usd-micro".into() });
    let negotiate = |action, offer: Option<Cid>, price: Option<Price>| -> Body {
        Negotiate { action, offer, price, reason: None }.into()
    };
    let range = fixtures::range();
    let sync_result = |next: u64, ranges: Vec<SyncRange>| -> Body {
        SyncResult { records: vec![], contracts: vec![], next, head: 42, ranges }.into()
    };
    // Signed bytes of a Retirement, where an Advert or a Receipt belongs.
    let retirement = fixtures::signed(&provider, &fixtures::retirement());
    let not_an_advert =
        Signed::<Advert>::from_parts(retirement.payload().to_vec(), *retirement.sig());
    let not_a_receipt =
        Signed::<Receipt>::from_parts(retirement.payload().to_vec(), *retirement.sig());
    vec![
        broken(
            "advertise-advert-payload-not-an-advert",
            "InvalidObject",
            AdvertiseCapability { advert: not_an_advert, contract: fixtures::contract(true) }
                .into(),
        ),
        broken(
            "advertise-contract-not-the-advertised-one",
            "CidMismatch",
            AdvertiseCapability {
                advert: fixtures::signed(&provider, &fixtures::advert(true)),
                contract: fixtures::contract(false),
            }
            .into(),
        ),
        broken(
            "sync-range-lower-35-bytes",
            "InvalidObject",
            Sync::Reconcile {
                ranges: vec![SyncRange { lower: repr::Bytes(vec![1; 35]), ..range.clone() }],
            }
            .into(),
        ),
        broken(
            "sync-result-range-upper-37-bytes",
            "InvalidObject",
            sync_result(0, vec![SyncRange { upper: repr::Bytes(vec![1; 37]), ..range.clone() }]),
        ),
        broken("sync-result-ranges-with-next", "InvalidObject", sync_result(7, vec![range])),
        broken(
            "negotiate-accept-without-offer",
            "InvalidObject",
            negotiate(NegotiateAction::Accept, None, None),
        ),
        broken(
            "negotiate-counter-without-offer",
            "InvalidObject",
            negotiate(NegotiateAction::Counter, None, counter_price.clone()),
        ),
        broken(
            "negotiate-counter-without-price",
            "InvalidObject",
            negotiate(NegotiateAction::Counter, offer, None),
        ),
        broken(
            "task-progress-chunk-0-chain-not-from-zero",
            "InvalidObject",
            TaskProgress {
                call: fixtures::call_id(),
                seq: 0,
                data: repr::Bytes(fixtures::CHUNK.to_vec()),
                chain: capmesh_types::Digest::of(fixtures::CHUNK),
            }
            .into(),
        ),
        broken(
            "task-done-output-and-error",
            "InvalidObject",
            done(
                Some(fixtures::output()),
                Some(fixtures::error_body(false)),
                &fixtures::receipt(true),
            ),
        ),
        broken(
            "task-done-error-with-status-ok",
            "InvalidObject",
            done(None, Some(fixtures::error_body(false)), &fixtures::receipt(true)),
        ),
        broken(
            "task-done-no-error-with-status-failed",
            "InvalidObject",
            done(None, None, &fixtures::receipt(false)),
        ),
        broken(
            "task-done-receipt-of-another-call",
            "InvalidObject",
            done(
                Some(fixtures::output()),
                None,
                &Receipt { call: FixedBytes([0xcb; 16]), ..fixtures::receipt(true) },
            ),
        ),
        broken(
            "task-done-receipt-payload-not-a-receipt",
            "InvalidObject",
            TaskDone {
                call: fixtures::call_id(),
                output: Some(fixtures::output()),
                error: None,
                receipt: not_a_receipt,
            }
            .into(),
        ),
    ]
}

/// One negative vector per rule of protocol.md §8.8: an envelope that is valid in every other
/// way (signed by the fixture sender, addressed to the fixture recipient, judged at `NOW`).
fn broken_bodies() -> Vec<Value> {
    let mut v: Vec<Value> = broken_body_cases()
        .into_iter()
        .map(|(name, error, body)| {
            let (_, to) = fixtures::parties(body.kind());
            let receiver = to.unwrap_or_else(|| fixtures::caller().peer_id());
            bad_envelope(name, error, &fixtures::envelope(body).to_bytes(), receiver, NOW)
        })
        .collect();
    let negotiate =
        |action, offer, price| -> Body { Negotiate { action, offer, price, reason: None }.into() };
    // The body rules belong to the typed decode (§7.2 check 4), before the version (check 5).
    let (caller, to) = fixtures::parties(Kind::Negotiate);
    let mut payload = Envelope::builder(negotiate(NegotiateAction::Accept, None, None))
        .to(to.expect("an rpc kind"))
        .nonce(FixedBytes([8; 8]))
        .trace(FixedBytes([9; 16]))
        .payload(&caller, NOW)
        .expect("payload");
    payload.v = 2;
    v.push(bad_envelope(
        "body-rule-before-version",
        "InvalidObject",
        &seal(&caller, &payload).expect("seal").to_bytes(),
        to.expect("an rpc kind"),
        NOW,
    ));
    v
}

/// Every vector file, by name.
pub fn generate() -> Vec<(&'static str, Value)> {
    vec![
        ("cbor.json", cbor_vectors()),
        ("identity.json", identity_vectors()),
        ("records.json", record_vectors()),
        ("envelopes.json", envelope_vectors()),
    ]
}

fn render(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("json") + "\n"
}

#[test]
fn files_match_the_generator() {
    let write = std::env::var_os("CAPMESH_WRITE_VECTORS").is_some();
    for (name, value) in generate() {
        let path = vectors_dir().join(name);
        if write {
            std::fs::create_dir_all(vectors_dir()).expect("mkdir");
            std::fs::write(&path, render(&value)).expect("write vectors");
            continue;
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run with CAPMESH_WRITE_VECTORS=1", path.display())
        });
        assert!(
            on_disk == render(&value),
            "{name} differs from what the code generates; regenerate with CAPMESH_WRITE_VECTORS=1 and review the diff"
        );
    }
    // Writing is not checking: a run that rewrote the files says so by failing.
    assert!(!write, "vector files rewritten; unset CAPMESH_WRITE_VECTORS, review the diff, rerun");
}

#[test]
fn body_rules_hold_in_json_as_in_cbor() {
    for (name, _, body) in broken_body_cases() {
        // A carried record that does not decode has no JSON projection to test.
        let Ok(json) = serde_json::to_value(&body) else { continue };
        assert!(Body::from_json(body.kind(), json).is_err(), "{name}: the JSON form is accepted");
    }
}
