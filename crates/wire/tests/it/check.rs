//! Checks every vector in specs/vectors/ on its own terms, as another implementation would:
//! from the hex and JSON in the file, not from the fixtures.

use std::collections::BTreeSet;

use capmesh_types::{Cid, Codec, NodeKey, PeerId};
use capmesh_wire::{cbor::Limits, *};
use serde_json::Value;

fn load(name: &str) -> Vec<Value> {
    let path = format!("{}/../../specs/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let file: Value = serde_json::from_str(&text).expect("vector file is JSON");
    assert!(file["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}: description");
    let vectors = file["vectors"].as_array().expect("vectors array").clone();
    let names: BTreeSet<_> = vectors.iter().map(|v| v["name"].as_str().expect("name")).collect();
    assert_eq!(names.len(), vectors.len(), "{name}: vector names are unique");
    vectors
}

fn unhex(v: &Value, field: &str) -> Vec<u8> {
    let s = v[field].as_str().unwrap_or_else(|| panic!("{}: no {field}", v["name"]));
    data_encoding::HEXLOWER.decode(s.as_bytes()).expect("hex")
}

fn limits(v: &Value) -> Limits {
    let mut l = Limits::default();
    if let Some(n) = v["max_size"].as_u64() {
        l = l.with_max_size(n as usize);
    }
    if let Some(n) = v["max_depth"].as_u64() {
        l = l.with_max_depth(n as usize);
    }
    l
}

fn is_valid(v: &Value) -> bool {
    let valid = v["valid"].as_bool().expect("valid flag");
    assert_eq!(valid, v["error"].is_null(), "{}: error is null exactly when valid", v["name"]);
    valid
}

#[test]
fn cbor_vectors() {
    for v in load("cbor.json") {
        let name = &v["name"];
        if !is_valid(&v) {
            let err = cbor::check(&unhex(&v, "cbor_hex"), limits(&v)).expect_err(&name.to_string());
            assert_eq!(err.code(), v["error"], "{name}: {err}");
            continue;
        }
        if let Some(link) = v["link"].as_str() {
            let cid: Cid = link.parse().expect("link is a CID");
            let mut expected = vec![0xd8, 0x2a, 0x58, 0x25, 0x00];
            expected.extend_from_slice(&cid.to_bytes());
            assert_eq!(unhex(&v, "cbor_hex"), expected, "{name}: tag 42 over 0x00 || binary CID");
        }
        if v.get("raw_hex").is_some() {
            assert_eq!(Cid::of(Codec::Raw, &unhex(&v, "raw_hex")).to_string(), v["cid"], "{name}");
            continue;
        }
        let bytes = unhex(&v, "cbor_hex");
        cbor::check(&bytes, Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Cid::of(Codec::DagCbor, &bytes).to_string(), v["cid"], "{name}");
        if let Some(json) = v.get("json") {
            assert_eq!(
                cbor::to_vec(json).expect("encodes"),
                bytes,
                "{name}: json encodes to cbor_hex"
            );
            let decoded: Value =
                cbor::from_slice(&bytes, Limits::default(), "JSON value").expect("decodes");
            assert_eq!(
                cbor::to_vec(&decoded).expect("encodes"),
                bytes,
                "{name}: decode re-encodes"
            );
        }
    }
}

#[test]
fn identity_vectors() {
    for v in load("identity.json") {
        assert!(is_valid(&v));
        let key = NodeKey::from_seed(unhex(&v, "seed_hex").try_into().expect("32 bytes"));
        assert_eq!(key.public().as_bytes().to_vec(), unhex(&v, "public_key_hex"));
        assert_eq!(key.peer_id().to_string(), v["peer_id"]);
        assert_eq!(key.peer_id().to_bytes().to_vec(), unhex(&v, "peer_id_hex"));
        let domain = v["domain"].as_str().expect("domain");
        let sig = key.sign(domain.as_bytes(), &unhex(&v, "message_hex"));
        assert_eq!(sig.to_vec(), unhex(&v, "signature_hex"), "ed25519 is deterministic");
    }
}

/// Checks a positive signed vector's bytes, signature and id; returns the decoded `Signed`.
fn check_signed_parts<T: Payload>(
    v: &Value,
    json_to_payload: impl Fn(&Value) -> Vec<u8>,
) -> Signed<T> {
    let name = &v["name"];
    let payload = unhex(v, "payload_hex");
    assert_eq!(json_to_payload(&v["json"]), payload, "{name}: json encodes to payload_hex");
    let key = NodeKey::from_seed(unhex(v, "seed_hex").try_into().expect("32 bytes"));
    assert_eq!(key.public().as_bytes().to_vec(), unhex(v, "public_key_hex"), "{name}");
    assert_eq!(key.peer_id().to_string(), v["peer_id"], "{name}");
    let domain = v["domain"].as_str().expect("domain");
    assert_eq!(key.sign(domain.as_bytes(), &payload).to_vec(), unhex(v, "signature_hex"), "{name}");
    let signed =
        Signed::<T>::from_bytes(&unhex(v, "signed_hex"), Limits::default()).expect("signed parses");
    assert_eq!(signed.payload(), payload.as_slice(), "{name}");
    assert_eq!(signed.to_bytes(), unhex(v, "signed_hex"), "{name}: signed_hex is canonical");
    assert_eq!(signed.id().to_string(), v["id"], "{name}");
    assert_eq!(Cid::of(Codec::DagCbor, &payload).to_string(), v["id"], "{name}");
    signed
}

fn json_to_cbor<T: serde::de::DeserializeOwned + serde::Serialize>(json: &Value) -> Vec<u8> {
    let typed: T = serde_json::from_value(json.clone()).expect("json projection parses");
    cbor::to_vec(&typed).expect("encodes")
}

fn record_case<T: Record>(v: &Value) {
    let name = &v["name"];
    let now = v["now_ms"].as_u64().expect("now_ms");
    if is_valid(v) {
        let signed = check_signed_parts::<T>(v, json_to_cbor::<T>);
        let verified =
            signed.verify(now, &Rules::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(verified.record.signer().to_string(), v["peer_id"], "{name}: signer");
        assert_eq!(
            serde_json::to_value(&verified.record).expect("json"),
            v["json"],
            "{name}: projection"
        );
        return;
    }
    let rules = Rules { limits: limits(v), ..Rules::default() };
    let result = Signed::<T>::from_bytes(&unhex(v, "signed_hex"), limits(v)).and_then(|s| {
        match v["expected_id"].as_str() {
            Some(id) => s.verify_as(&id.parse().expect("cid"), now, &rules),
            None => s.verify(now, &rules),
        }
    });
    let err = result.expect_err(&format!("{name} must be refused"));
    assert_eq!(err.code(), v["error"], "{name}: {err}");
}

#[test]
fn record_vectors() {
    for v in load("records.json") {
        match v["type"].as_str().expect("type") {
            "Contract" => {
                assert!(is_valid(&v));
                let bytes = unhex(&v, "cbor_hex");
                assert_eq!(json_to_cbor::<Contract>(&v["json"]), bytes);
                let decoded: Contract =
                    cbor::from_slice(&bytes, Limits::default(), "Contract").expect("decodes");
                assert_eq!(serde_json::to_value(&decoded).expect("json"), v["json"]);
                assert_eq!(Cid::of(Codec::DagCbor, &bytes).to_string(), v["cid"]);
            }
            "Advert" => record_case::<Advert>(&v),
            "Retirement" => record_case::<Retirement>(&v),
            "Attestation" => record_case::<Attestation>(&v),
            "Receipt" => record_case::<Receipt>(&v),
            "Countersignature" => record_case::<Countersignature>(&v),
            "LedgerHead" => record_case::<LedgerHead>(&v),
            other => panic!("unknown record type {other}"),
        }
    }
}

fn receiver(v: &Value) -> Receiver {
    let me: PeerId = v["receiver"].as_str().expect("receiver").parse().expect("peer id");
    let rules = Rules { limits: limits(v), ..Rules::default() };
    let capacity =
        v["replay_capacity"].as_u64().map_or(Receiver::DEFAULT_REPLAY_CAPACITY, |n| n as usize);
    Receiver::with_rules(me, rules, capacity)
}

#[test]
fn envelope_vectors() {
    for v in load("envelopes.json") {
        let name = &v["name"];
        let now = v["now_ms"].as_u64().expect("now_ms");
        let mut rx = receiver(&v);
        for earlier in v["deliver_first"].as_array().into_iter().flatten() {
            let bytes = data_encoding::HEXLOWER
                .decode(earlier.as_str().expect("hex").as_bytes())
                .expect("hex");
            rx.accept(&bytes, now)
                .unwrap_or_else(|e| panic!("{name}: earlier delivery refused: {e}"));
        }
        let result = rx.accept(&unhex(&v, "signed_hex"), now);
        if !is_valid(&v) {
            let err = result.expect_err(&format!("{name} must be refused"));
            assert_eq!(err.code(), v["error"], "{name}: {err}");
            continue;
        }
        let opened = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        check_signed_parts::<EnvelopePayload>(&v, json_to_cbor::<EnvelopePayload>);
        assert_eq!(opened.id.to_string(), v["id"], "{name}");
        assert_eq!(opened.payload.kind().name(), v["kind"], "{name}");
        assert_eq!(opened.payload.schema.to_string(), v["schema"], "{name}");
        assert_eq!(
            serde_json::to_value(&opened.payload).expect("json"),
            v["json"],
            "{name}: projection"
        );
    }
}

#[test]
fn coverage_of_kinds_records_and_error_classes() {
    let envelopes = load("envelopes.json");
    for kind in Kind::ALL {
        assert!(
            envelopes.iter().any(|v| v["valid"] == true && v["kind"] == kind.name()),
            "no valid envelope vector of kind {kind:?}"
        );
    }
    let records = load("records.json");
    for ty in [
        "Contract",
        "Advert",
        "Retirement",
        "Attestation",
        "Receipt",
        "Countersignature",
        "LedgerHead",
    ] {
        assert!(
            records.iter().any(|v| v["valid"] == true && v["type"] == ty),
            "no valid {ty} vector"
        );
    }
    let errors: BTreeSet<String> = ["cbor.json", "records.json", "envelopes.json"]
        .iter()
        .flat_map(|f| load(f))
        .filter_map(|v| v["error"].as_str().map(str::to_owned))
        .collect();
    let classes = [
        "TooLarge",
        "TooDeep",
        "Malformed",
        "NonCanonical",
        "BadLink",
        "InvalidObject",
        "BadKey",
        "BadSignature",
        "CidMismatch",
        "Expired",
        "FutureDated",
        "TtlTooLong",
        "Replay",
        "ReplayCacheFull",
        "Misaddressed",
        "UnknownSchema",
        "UnsupportedVersion",
    ];
    for class in classes {
        assert!(errors.contains(class), "no negative vector for {class}");
    }
}
